"""A seeder with an upload rate limit serves through its token buckets (real host, loopback)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from peerstack.content.bitswap.service import Bitswap
from peerstack.content.blockstore import Blockstore, FsyncPolicy
from peerstack.core.identity import PrivateKey
from peerstack.errors import UsageError
from peerstack.host.host import BasicHost
from tests.content.content_testkit import pattern

MIB = 1024 * 1024


async def test_limited_seeder_paces_every_block_it_sends(tmp_path: Path) -> None:
    data = pattern(3 * MIB + 17)
    src = tmp_path / "three.bin"
    src.write_bytes(data)
    async with AsyncExitStack() as stack:
        nodes: list[tuple[BasicHost, Bitswap]] = []
        for i, rate in enumerate((256.0 * MIB, None)):
            host = BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
            await host.start()
            stack.push_async_callback(host.close)
            store = stack.enter_context(Blockstore(tmp_path / f"repo{i}", FsyncPolicy.NEVER))
            bitswap = await stack.enter_async_context(
                Bitswap(host, store, upload_rate=rate, upload_rate_per_peer=rate)
            )
            nodes.append((host, bitswap))
        (ha, seeder), (hb, leecher) = nodes
        added = await seeder.add(src, provide=False)
        await hb.connect(ha.peer_id, ha.listen_addrs())
        out = tmp_path / "out.bin"
        result = await asyncio.wait_for(leecher.get_file(added.cid, out), 60)
        assert out.read_bytes() == data
        # every block byte (leaves and the root node) went through the limiter, and only those
        assert result.fetched_bytes > len(data)
        assert seeder.upload_limit.bytes == result.fetched_bytes
        assert not leecher.upload_limit.active


def test_a_nonsense_rate_is_a_usage_error(tmp_path: Path) -> None:
    host = BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    with Blockstore(tmp_path / "repo", FsyncPolicy.NEVER) as store, pytest.raises(UsageError):
        Bitswap(host, store, upload_rate=0.0)

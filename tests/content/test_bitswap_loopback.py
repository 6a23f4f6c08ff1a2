"""Bitswap over the real host (TCP + Noise + Yamux) on 127.0.0.1."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

from peerstack.content.bitswap.service import Bitswap
from peerstack.content.blockstore import Blockstore, FsyncPolicy
from peerstack.core.identity import PrivateKey
from peerstack.host.host import BasicHost
from tests.content.content_testkit import pattern


async def test_five_mib_to_two_peers_in_parallel(tmp_path: Path) -> None:
    data = pattern(5 * 1024 * 1024)
    src = tmp_path / "five.bin"
    src.write_bytes(data)
    async with AsyncExitStack() as stack:
        nodes: list[tuple[BasicHost, Blockstore, Bitswap]] = []
        for i in range(3):
            host = BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
            await host.start()
            stack.push_async_callback(host.close)
            store = stack.enter_context(Blockstore(tmp_path / f"repo{i}", FsyncPolicy.NEVER))
            bitswap = await stack.enter_async_context(Bitswap(host, store))
            nodes.append((host, store, bitswap))
        (ha, _sa, ba), (hb, sb, bb), (hc, sc, bc) = nodes
        added = await ba.add(src, provide=False)
        for host in (hb, hc):
            await host.connect(ha.peer_id, ha.listen_addrs())
        out_b, out_c = tmp_path / "b.bin", tmp_path / "c.bin"
        rb, rc = await asyncio.wait_for(
            asyncio.gather(bb.get_file(added.cid, out_b), bc.get_file(added.cid, out_c)), 60
        )
        assert out_b.read_bytes() == data
        assert out_c.read_bytes() == data
        assert rb.blocks == rc.blocks == 6
        assert rb.fetched_bytes == rb.bytes
        assert (await sb.verify()).ok
        assert (await sc.verify()).ok
        assert ba.engine.ledgers[hb.peer_id].blocks_sent == 6
        assert ba.engine.ledgers[hc.peer_id].blocks_sent == 6

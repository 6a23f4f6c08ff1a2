"""Bitswap downloads when seeders die: real hosts, seeders in their own processes (SIGKILL).

* Three seeders hold a 32 MiB file; the one that has sent us the most is killed a third of the
  way through: the download completes from the other two and its bytes are right.
* Every seeder is killed mid-transfer: the fetch fails with ``BlocksUnavailable`` naming what is
  missing; the verified blocks stay in the store (even through a GC); a seeder comes back and a
  second fetch asks it only for the blocks still missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from peerstack.content.bitswap.service import Bitswap, BitswapConfig, BlocksUnavailable
from peerstack.content.bitswap.session import SessionConfig
from peerstack.content.blockstore import Blockstore, FsyncPolicy
from peerstack.core.cid import CID
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.host.host import BasicHost
from tests.content.content_testkit import MemNetwork

MiB = 1024 * 1024
FILE_SIZE = 32 * MiB
# 128 KiB chunks and 174 links a node: 256 leaves under two inner nodes and a root, enough
# blocks for a kill to land in the middle of the transfer.
CHUNK_SIZE = 128 * 1024
MAX_LINKS = 174
REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)


@dataclass
class Seeder:
    proc: asyncio.subprocess.Process
    peer: PeerId
    addr: Multiaddr
    cid: CID
    blocks: int

    def kill(self) -> None:
        """SIGKILL: the kernel closes the sockets, no libp2p goodbye of any kind."""
        if self.proc.returncode is None:
            self.proc.kill()


async def start_seeder(repo: Path, src: Path) -> Seeder:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.content.fault_seeder",
        str(repo),
        str(src),
        str(CHUNK_SIZE),
        str(MAX_LINKS),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(REPO_ROOT),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = await proc.stdout.readline()
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert line, "the seeder exited before it was ready"
    info = json.loads(line)
    return Seeder(
        proc,
        PeerId.from_string(info["peer_id"]),
        Multiaddr(info["addr"]),
        CID.parse(info["cid"]),
        int(info["blocks"]),
    )


async def stop_seeder(seeder: Seeder) -> None:
    if seeder.proc.returncode is None:
        if seeder.proc.stdin is not None:
            seeder.proc.stdin.close()
        try:
            await asyncio.wait_for(seeder.proc.wait(), 10)
        except TimeoutError:
            seeder.kill()
    await seeder.proc.wait()


@dataclass
class Leecher:
    host: BasicHost
    store: Blockstore
    bitswap: Bitswap

    def received_from(self, peer: PeerId) -> int:
        led = self.bitswap.engine.ledgers.get(peer)
        return 0 if led is None else led.blocks_received


@asynccontextmanager
async def leecher_node(repo: Path) -> AsyncIterator[Leecher]:
    async with AsyncExitStack() as stack:
        host = BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
        await host.start()
        stack.push_async_callback(host.close)
        store = stack.enter_context(Blockstore(repo, FsyncPolicy.NEVER))
        # A few blocks in flight per seeder: when the seeders die most of the file is still to
        # come, not already sitting in our socket buffers.
        config = BitswapConfig(session=SessionConfig(initial_window=4, max_window=8))
        bitswap = await stack.enter_async_context(Bitswap(host, store, config=config))
        yield Leecher(host, store, bitswap)


def write_data(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for i in range(0, size, MiB):
            piece = hashlib.shake_128(b"fault" + i.to_bytes(8, "big")).digest(min(MiB, size - i))
            out.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


async def when_received(
    me: Leecher, peers: list[PeerId], count: float, action: Callable[[], None]
) -> None:
    """Run ``action`` as soon as ``count`` blocks came in from ``peers`` over the network.

    Watched on our ledgers, not on the fetch's progress: the fetch loop consumes blocks a while
    after they are stored, so by the time progress says 40% most of the file may be here.
    """
    # The ledgers have no event to wait on: poll them (2 ms, test-only).
    while sum(me.received_from(p) for p in peers) < count:  # noqa: ASYNC110
        await asyncio.sleep(0.002)
    action()


@asynccontextmanager
async def watching(
    me: Leecher, peers: list[PeerId], count: float, action: Callable[[], None]
) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(when_received(me, peers, count, action))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "data.bin"
    return src, write_data(src, FILE_SIZE)


@asynccontextmanager
async def seeders(tmp_path: Path, src: Path, n: int) -> AsyncIterator[list[Seeder]]:
    started = await asyncio.gather(*(start_seeder(tmp_path / f"seeder{i}", src) for i in range(n)))
    try:
        yield list(started)
    finally:
        for s in started:
            await stop_seeder(s)


async def test_seeder_killed_mid_transfer_download_completes(
    tmp_path: Path, data_file: tuple[Path, str]
) -> None:
    src, sha = data_file
    async with seeders(tmp_path, src, 3) as seeds, leecher_node(tmp_path / "leecher") as me:
        root, total = seeds[0].cid, seeds[0].blocks
        assert all(s.cid == root and s.blocks == total for s in seeds)
        for s in seeds:
            await me.host.connect(s.peer, [s.addr])
        killed: list[Seeder] = []
        delivered_before_kill: list[int] = []
        survivors_at_kill: list[int] = []

        def kill_busiest() -> None:
            victim = max(seeds, key=lambda s: me.received_from(s.peer))
            delivered_before_kill.append(me.received_from(victim.peer))
            survivors_at_kill.append(
                sum(me.received_from(s.peer) for s in seeds if s is not victim)
            )
            victim.kill()
            killed.append(victim)

        out = tmp_path / "out.bin"
        async with watching(me, [s.peer for s in seeds], total / 3, kill_busiest):
            result = await me.bitswap.get_file(root, out, idle_timeout=30)
        assert killed, "the seeder was never killed: the transfer had no middle"
        assert file_sha256(out) == sha
        assert result.blocks == total
        assert result.fetched_bytes == result.bytes
        assert delivered_before_kill[0] > 0  # the killed seeder was carrying part of the load
        await killed[0].proc.wait()
        # The rest came from the other two (the killed peer's ledger went with its connection).
        survivors = [s for s in seeds if s is not killed[0]]
        assert sum(me.received_from(s.peer) for s in survivors) > survivors_at_kill[0]
        print(
            f"\n[fault] {total} blocks; killed a seeder that had sent {delivered_before_kill[0]}; "
            f"the other two sent {survivors_at_kill[0]} before and "
            f"{sum(me.received_from(s.peer) for s in survivors)} in all"
        )
        assert killed[0].peer not in me.host.connected_peers()
        assert (await me.store.verify()).ok


async def test_all_providers_gone_then_resume(tmp_path: Path, data_file: tuple[Path, str]) -> None:
    src, sha = data_file
    out = tmp_path / "out.bin"
    async with leecher_node(tmp_path / "leecher") as me:
        async with seeders(tmp_path, src, 3) as seeds:
            root, total = seeds[0].cid, seeds[0].blocks
            for s in seeds:
                await me.host.connect(s.peer, [s.addr])

            def kill_all() -> None:
                for s in seeds:
                    s.kill()

            with pytest.raises(BlocksUnavailable) as caught:
                async with watching(me, [s.peer for s in seeds], 0.4 * total, kill_all):
                    await me.bitswap.get_file(root, out, idle_timeout=3)
        err = caught.value
        assert err.root == root
        assert err.missing, "the error names no missing block"
        assert str(err.missing[0]) in str(err)
        assert f"{len(err.missing)} block(s) still missing" in str(err)
        assert not await asyncio.to_thread(out.exists)

        # What was verified stays, and survives a GC (the transfer is recorded).
        kept = sum(1 for _ in me.store.iter_keys())
        assert 0.4 * total <= kept < 0.9 * total  # a real middle: most of the rest was not sent
        assert err.kept == kept
        for cid in err.missing:
            assert not await me.store.has(cid)
        await me.store.gc()
        assert sum(1 for _ in me.store.iter_keys()) == kept
        report = await me.store.verify()
        assert report.ok

        # One seeder comes back (same repo, new identity and port): only the rest is fetched.
        async with seeders(tmp_path, src, 1) as (back,):
            assert back.cid == root
            await me.host.connect(back.peer, [back.addr])
            result = await me.bitswap.get_file(root, out, idle_timeout=30)
            assert me.received_from(back.peer) == total - kept
            print(f"\n[fault] {err}\n[fault] resumed: {total - kept} of {total} blocks fetched")
            assert result.blocks == total
            assert result.fetched_bytes < result.bytes
        assert file_sha256(out) == sha
        assert sum(1 for _ in me.store.iter_keys()) == total


async def test_nobody_has_it_names_the_root(tmp_path: Path, net: MemNetwork) -> None:
    """In memory, no provider at all: the error names the root, nothing is kept, no hang."""
    host, other = net.add_host(), net.add_host()
    with (
        Blockstore(tmp_path / "repo", FsyncPolicy.NEVER) as store,
        Blockstore(tmp_path / "other", FsyncPolicy.NEVER) as other_store,
    ):
        async with Bitswap(host, store) as bitswap, Bitswap(other, other_store):
            await host.connect(other.peer_id)  # connected, but it has nothing
            root = CID.hash_of(b"a block nobody has")
            with pytest.raises(BlocksUnavailable) as caught:
                await bitswap.fetch(root, idle_timeout=0.5)
            assert caught.value.missing == [root]
            assert caught.value.kept == 0
            assert str(root) in str(caught.value)
            assert not bitswap.sessions  # the session ended with the error

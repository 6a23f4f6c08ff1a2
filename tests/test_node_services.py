"""Node with a repo: DHT, Bitswap, blockstore, pins, GC, IPNS on real hosts on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peerstack.config import Config
from peerstack.core.cid import CID, RAW
from peerstack.dht.service import ValueNotFound
from peerstack.errors import DialError, UsageError
from peerstack.node import Node, NotFound, TransferProgress
from peerstack.repo import RepoLocked

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
SIZE = 3 * 1024 * 1024 + 12345  # a few 1 MiB chunks and a ragged end


def make_node(root: Path, name: str, boot: Node | None = None) -> Node:
    return Node(
        repo=root / name,
        listen=LOOPBACK,
        bootstrap=[str(boot.addrs[0])] if boot is not None else [],
        background=False,
    )


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[list[Node]]:
    """Three repo nodes; 1 and 2 know only node 0 and join through the DHT."""
    nodes: list[Node] = []
    try:
        boot = make_node(tmp_path, "n0")
        await boot.start()
        nodes.append(boot)
        for i in (1, 2):
            node = make_node(tmp_path, f"n{i}", boot)
            await node.start()
            nodes.append(node)
            assert await node.bootstrap() >= 1
        yield nodes
    finally:
        for node in nodes:
            await node.close()


def hidden(folder: Path) -> list[str]:
    """Hidden entries: where a get keeps its temporary output."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def random_file(path: Path, size: int = SIZE) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


async def test_add_then_get_and_cat_elsewhere(net: list[Node], tmp_path: Path) -> None:
    _, a, b = net
    data = random_file(tmp_path / "f")
    seen: list[TransferProgress] = []
    cid = await a.add(tmp_path / "f", progress=seen.append)
    assert seen[-1].done
    assert seen[-1].bytes_done == SIZE
    assert [c for c, _ in await a.pin_ls()] == [cid]
    # b finds a through the DHT's provider records and fetches from it.
    providers = await b.dht.find_providers(cid)
    assert a.peer_id in {p.peer_id for p in providers}
    got: list[TransferProgress] = []
    res = await b.get(cid, tmp_path / "out", progress=got.append)
    assert (tmp_path / "out").read_bytes() == data
    assert res.fetched_bytes == SIZE
    assert got[-1].done
    assert got[0].bytes_total is not None
    assert got[0].bytes_total >= SIZE
    assert hidden(tmp_path) == []
    piece = b"".join([p async for p in b.cat(cid, offset=1_000_000, length=100_000)])
    assert piece == data[1_000_000:1_100_000]
    assert b"".join([p async for p in a.cat(str(cid))]) == data


async def test_directory_round_trip_and_profiles(net: list[Node], tmp_path: Path) -> None:
    _, a, b = net
    src = tmp_path / "dir"
    (src / "sub").mkdir(parents=True)
    (src / "x.txt").write_bytes(b"hello")
    (src / "sub" / "y.bin").write_bytes(os.urandom(300_000))
    with pytest.raises(UsageError, match="-r"):
        await a.add(src)
    seen: list[TransferProgress] = []
    cid = await a.add(src, recursive=True, progress=seen.append)
    counts = [p.bytes_done for p in seen]
    assert counts == sorted(counts)  # one import, bytes only grow across its files
    assert counts[-1] == seen[-1].bytes_total == 300_005
    legacy = await a.add(src / "x.txt", profile="legacy")
    assert str(legacy).startswith("Qm")
    await b.get(cid, tmp_path / "copy")
    assert (tmp_path / "copy" / "x.txt").read_bytes() == b"hello"
    assert (tmp_path / "copy" / "sub" / "y.bin").read_bytes() == (
        src / "sub" / "y.bin"
    ).read_bytes()
    with pytest.raises(UsageError, match="profile"):
        await a.add(src / "x.txt", profile="fancy")


async def test_user_errors(net: list[Node], tmp_path: Path) -> None:
    _, a, _ = net
    with pytest.raises(UsageError, match="no such file"):
        await a.add(tmp_path / "missing")
    with pytest.raises(UsageError, match="bad CID"):
        await a.get("not-a-cid", tmp_path / "o")
    (tmp_path / "exists").write_bytes(b"x")
    cid = await a.add(tmp_path / "exists")
    with pytest.raises(UsageError, match="already exists"):
        await a.get(cid, tmp_path / "exists")
    with pytest.raises(UsageError, match="no such directory"):
        await a.get(cid, tmp_path / "nope" / "o")
    with pytest.raises(UsageError, match="not pinned"):
        await a.pin_rm(CID.hash_of(b"never added", 0x55))
    # A valid CID that nobody has: a clear NotFound after the search time.
    absent = CID.hash_of(os.urandom(32), 0x55)
    with pytest.raises(NotFound):
        await a.get(absent, tmp_path / "absent", find_timeout=0.5)
    assert not (tmp_path / "absent").exists()
    assert await a.blockstore.transfers() == []


async def test_interrupted_get_resumes(net: list[Node], tmp_path: Path) -> None:
    _, a, b = net
    size = 8 * 1024 * 1024
    data = random_file(tmp_path / "big", size)
    cid = await a.add(tmp_path / "big")
    dest = tmp_path / "big.out"
    task: asyncio.Task[object] | None = None

    def stop_midway(p: TransferProgress) -> None:
        if task is not None and p.bytes_done >= size // 3 and not p.done:
            task.cancel()

    task = asyncio.ensure_future(b.get(cid, dest, progress=stop_midway))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not dest.exists()
    assert [c for c, _ in await b.blockstore.transfers()] == [cid]
    res = await b.get(cid, dest)
    assert dest.read_bytes() == data
    assert 0 < res.fetched_bytes < size  # what the first run stored was not fetched again
    assert await b.blockstore.transfers() == []
    assert hidden(tmp_path) == []


async def test_gc_keeps_pinned_and_waits_for_imports(net: list[Node], tmp_path: Path) -> None:
    _, a, _ = net
    keep = random_file(tmp_path / "keep")
    random_file(tmp_path / "drop", 100_000)
    kept = await a.add(tmp_path / "keep")
    await a.add(tmp_path / "drop", pin=False)
    before = await a.repo_stat()
    result = await a.repo_gc()
    assert result.removed == 1
    after = await a.repo_stat()
    assert after["blocks"] == before["blocks"] - 1
    assert b"".join([p async for p in a.cat(kept)]) == keep

    # A GC started while an import writes its (not yet pinned) blocks waits for the import.
    random_file(tmp_path / "new")
    gc_tasks: list[asyncio.Task[object]] = []

    def start_gc(p: TransferProgress) -> None:
        if not gc_tasks:
            gc_tasks.append(asyncio.ensure_future(a.repo_gc()))

    new = await a.add(tmp_path / "new", progress=start_gc)
    await gc_tasks[0]
    assert a.gc_lock.busy == 0
    report = await a.repo_verify()
    assert report.ok
    assert hashlib.sha256(b"".join([p async for p in a.cat(new)])).digest() == (
        hashlib.sha256((tmp_path / "new").read_bytes()).digest()
    )
    # Unpinned, it goes at the next GC.
    await a.pin_rm(new)
    assert (await a.repo_gc()).removed > 0
    assert [c for c, _ in await a.pin_ls()] == [kept]


async def test_repo_verify_reports_damage(net: list[Node], tmp_path: Path) -> None:
    _, a, _ = net
    random_file(tmp_path / "f", 200_000)
    cid = await a.add(tmp_path / "f")
    path = a.blockstore.path_for(cid)
    blob = bytearray(path.read_bytes())
    blob[10] ^= 0xFF
    path.write_bytes(bytes(blob))
    report = await a.repo_verify()
    assert not report.ok
    assert len(report.damaged) == 1


async def test_dht_values_and_names(net: list[Node]) -> None:
    boot, a, b = net
    assert await a.dht.put("greeting", b"hello") >= 1
    assert await b.dht.get("greeting") == b"hello"
    await a.dht.put("greeting", b"newer")
    assert await b.dht.get("greeting") == b"newer"  # the newest write wins
    with pytest.raises(ValueNotFound):
        await b.dht.get("nobody-wrote-this")
    with pytest.raises(UsageError):
        await a.dht.put("/ipns/whatever", b"x")

    target = CID.hash_of(b"some content", 0x55)
    name, seq = await a.name_publish(str(target))
    assert name == a.peer_id
    assert await b.name_resolve(str(name)) == f"/ipfs/{target}"
    _, seq2 = await a.name_publish(f"/ipfs/{target}/other")
    assert seq2 == seq + 1
    assert await boot.name_resolve(f"/ipns/{name}") == f"/ipfs/{target}/other"
    with pytest.raises(UsageError, match="IPNS name"):
        await b.name_resolve("not-a-name")
    for bad in ("/garbage", "/ipfs/not-a-cid", "/ipns/nobody", "/ipfs"):
        with pytest.raises(UsageError):
            await a.name_publish(bad)
    _, seq3 = await a.name_publish(f"/ipns/{b.peer_id}/x")
    assert seq3 == seq2 + 1

    found = await b.dht.find_peer(a.peer_id)
    assert set(found.addrs) >= {addr.decapsulate_p2p()[0] for addr in a.addrs}


async def test_repo_lock_and_routing_table_persist(tmp_path: Path) -> None:
    async with make_node(tmp_path, "boot") as boot:
        node = make_node(tmp_path, "a", boot)
        await node.start()
        try:
            await node.bootstrap()
            with pytest.raises(RepoLocked):
                await make_node(tmp_path, "a").start()
        finally:
            await node.close()
        # Restarted without any bootstrap peer: the saved routing table brings boot back.
        async with make_node(tmp_path, "a") as again:
            assert boot.peer_id in again.kad.routing_table


async def test_unreachable_bootstrap_is_a_dial_error(tmp_path: Path) -> None:
    dead = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    async with make_node(tmp_path, "a") as node:
        with pytest.raises(DialError):
            await node.join([dead])
    with pytest.raises(UsageError):
        Node(repo=tmp_path / "b", bootstrap=["/ip4/127.0.0.1/tcp/1"])  # no /p2p/ part


async def test_bare_node_has_no_content_services() -> None:
    async with Node() as node:
        with pytest.raises(UsageError):
            _ = node.dht
        with pytest.raises(UsageError):
            _ = node.blockstore
    with pytest.raises(UsageError):
        Node(content=True)


async def test_provide_all_and_the_reprovider(net: list[Node], tmp_path: Path) -> None:
    boot, a, b = net
    random_file(tmp_path / "f", 2 * 1024 * 1024 + 1)
    cid = await a.add(tmp_path / "f", provide="all")
    leaves = [c for c in await a._dag_cids(cid) if c != cid]
    assert len(leaves) == 3
    for leaf in leaves:
        assert a.peer_id in {p.peer_id for p in await b.dht.find_providers(leaf)}

    # A node whose reprovider runs every 0.2 s announces its pins without being asked.
    cfg = Config(listen=tuple(LOOPBACK), reprovide_interval=0.2, bootstrap=(str(boot.addrs[0]),))
    async with Node(repo=tmp_path / "re", config=cfg) as node:
        random_file(tmp_path / "g", 1000)
        quiet = await node.add(tmp_path / "g", provide="none")
        for _ in range(200):
            if node.peer_id in {p.peer_id for p in await b.dht.find_providers(quiet)}:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the reprovider never announced the pinned root")


async def test_background_bootstrap_retries_until_a_peer_answers(tmp_path: Path) -> None:
    async with make_node(tmp_path, "boot") as boot:
        addr = str(boot.addrs[0])
        port = boot.addrs[0].value_for("tcp")
    # boot is gone; a node configured with it keeps trying; boot comes back on the same port.
    cfg = Config(listen=tuple(LOOPBACK), bootstrap=(addr,))
    async with Node(repo=tmp_path / "n", config=cfg) as node:
        await asyncio.sleep(0.3)
        assert len(node.kad.routing_table) == 0
        async with Node(repo=tmp_path / "boot", listen=[f"/ip4/127.0.0.1/tcp/{port}"]):
            for _ in range(400):
                if len(node.kad.routing_table):
                    break
                await asyncio.sleep(0.05)
            assert len(node.kad.routing_table) == 1


async def test_client_mode_asks_but_does_not_serve(net: list[Node], tmp_path: Path) -> None:
    from peerstack.dht.messages import PROTOCOL_ID

    boot, a, _ = net
    node = Node(
        repo=tmp_path / "client",
        listen=LOOPBACK,
        dht_mode="client",
        bootstrap=[str(boot.addrs[0])],
        background=False,
    )
    async with node:
        assert await node.bootstrap() >= 1
        assert PROTOCOL_ID not in node.protocols()
        found = await node.dht.find_peer(a.peer_id)
        assert found.peer_id == a.peer_id
        assert node.peer_id not in boot.kad.routing_table
        assert node.peer_id not in a.kad.routing_table


async def test_a_peer_waiting_for_an_added_file_is_served_when_add_returns(
    net: list[Node], tmp_path: Path
) -> None:
    """b wants a block a does not have yet; once ``a.add`` returns, a has already queued it for
    b (the recheck of waiting wants is part of add, not left to a background task)."""
    _, a, b = net
    data = os.urandom(1000)  # one chunk: the file's CID is the raw leaf's
    (tmp_path / "late").write_bytes(data)
    cid = CID.hash_of(data, RAW)
    await b.connect(a.addrs[0])
    want = asyncio.create_task(b.bitswap.get_block(cid))
    try:
        for _ in range(400):
            if cid in a.bitswap.engine.unavailable():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("a never saw b's want")
        assert await a.add(tmp_path / "late", provide="none") == cid
        assert cid not in a.bitswap.engine.unavailable()
        async with asyncio.timeout(10):
            assert await want == data
    finally:
        want.cancel()


async def test_a_failing_step_of_close_still_releases_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bitswap failing to stop must not leave the host listening, SQLite open or the repo
    locked: close raises the failure after every other step ran."""
    node = make_node(tmp_path, "n")
    await node.start()
    blockstore, host = node.blockstore, node.host

    async def broken_stop() -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(node.bitswap, "stop", broken_stop)
    with pytest.raises(OSError, match="disk gone"):
        await node.close()
    with pytest.raises(UsageError):
        await blockstore.pins()  # its SQLite handle is closed
    assert host.listen_addrs() == []
    async with make_node(tmp_path, "n") as again:  # the repo lock was released
        assert again.peer_id == node.peer_id


async def test_a_pinned_root_is_announced_once_per_interval(
    net: list[Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DHT republishes what it provides; the node's periodic round only hands it pins it
    does not provide yet. A root announced by add is not announced again by that round, and a
    quiet pin is announced once, not every round."""
    boot = net[0]
    cfg = Config(listen=tuple(LOOPBACK), reprovide_interval=0.05, bootstrap=(str(boot.addrs[0]),))
    async with Node(repo=tmp_path / "re", config=cfg) as node:
        announced: list[bytes] = []
        provide = node.kad.provide

        async def counting_provide(key: bytes) -> int:
            announced.append(key)
            return await provide(key)

        monkeypatch.setattr(node.kad, "provide", counting_provide)
        for _ in range(400):
            if len(node.kad.routing_table):
                break
            await asyncio.sleep(0.02)
        random_file(tmp_path / "loud", 1000)
        random_file(tmp_path / "quiet", 1001)
        loud = await node.add(tmp_path / "loud")
        quiet = await node.add(tmp_path / "quiet", provide="none")
        reprovider = node._reprovider
        assert reprovider is not None
        start = reprovider.rounds
        for _ in range(400):
            if reprovider.rounds >= start + 4:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the reprovide rounds did not run")
        assert announced.count(loud.multihash.to_bytes()) == 1  # by add only
        assert announced.count(quiet.multihash.to_bytes()) == 1  # by the first round only
        assert node.peer_id in {p.peer_id for p in await net[1].dht.find_providers(quiet)}

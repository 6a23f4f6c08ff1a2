"""A get's output holds its leaves: the store references them in the file instead of copying
them (no block file per leaf), serves them from there, and never serves bytes the user changed.
Real files, real SQLite, real Bitswap services on in-memory hosts."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from peerstack.config import Config
from peerstack.content import dagpb, filesink
from peerstack.content.bitswap.service import Bitswap, BitswapConfig, BlocksUnavailable
from peerstack.content.blockstore import BlockNotFound, Blockstore, FsyncPolicy
from peerstack.content.dagpb import MalformedDagPb
from peerstack.content.filesink import FileSink, partial_path
from peerstack.content.importer import ImportProfile, import_bytes
from peerstack.content.unixfs import DataType, UnixFSData
from peerstack.core.cid import CID, DAG_PB, RAW
from peerstack.node import Node
from tests.content.content_testkit import (
    MemHost,
    MemNetwork,
    interrupt_after,
    page_cached,
    pattern,
)

SMALL = ImportProfile(chunk_size=1000, max_links=4)


def cid_key(store: Blockstore, cid: CID) -> str:
    return store.path_for(cid).stem


class Peer:
    def __init__(self, host: MemHost, store: Blockstore, bitswap: Bitswap) -> None:
        self.host, self.store, self.bitswap = host, store, bitswap

    def received_from(self, other: Peer) -> int:
        ledger = self.bitswap.engine.ledgers.get(other.host.peer_id)
        return 0 if ledger is None else ledger.blocks_received


@pytest.fixture
async def peers(net: MemNetwork, tmp_path: Path) -> AsyncIterator[list[Peer]]:
    async with AsyncExitStack() as stack:
        out = []
        for name in ("seed", "leech", "third"):
            host = net.add_host()
            store = stack.enter_context(Blockstore(tmp_path / name, FsyncPolicy.NEVER))
            out.append(Peer(host, store, await stack.enter_async_context(Bitswap(host, store))))
        yield out


async def _leaves(store: Blockstore, root: CID) -> list[CID]:
    """The DAG's leaves in file order."""
    out: list[CID] = []
    stack = [root]
    while stack:
        cid = stack.pop()
        if cid.codec == DAG_PB:
            stack.extend(reversed(await store.children(cid)))
        else:
            out.append(cid)
    return out


async def _offer(peers: list[Peer], size: int) -> tuple[bytes, CID, list[CID]]:
    """The seed adds ``size`` bytes and the leech connects to it: the bytes, root, leaves."""
    seed, leech = peers[0], peers[1]
    data = pattern(size)
    root = (await import_bytes(seed.store, data, SMALL)).cid
    await leech.host.connect(seed.host.peer_id)
    return data, root, await _leaves(seed.store, root)


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


async def test_a_get_stores_no_block_files_for_its_leaves(
    peers: list[Peer], tmp_path: Path
) -> None:
    seed, leech, third = peers
    data = pattern(60_000) + bytes(5000)  # the zeros: 5 places of one leaf
    res = await import_bytes(seed.store, data, SMALL)
    leaves = await _leaves(seed.store, res.cid)
    distinct = set(leaves)
    assert len(distinct) < len(leaves)
    await leech.host.connect(seed.host.peer_id)
    out = tmp_path / "out.bin"
    result = await asyncio.wait_for(leech.bitswap.get_file(res.cid, out), 30)
    assert out.read_bytes() == data
    for leaf in distinct:
        assert not leech.store.path_for(leaf).exists()
        ref = leech.store.ref_sync(leaf)
        assert ref is not None
        assert ref.path == str(out.absolute())
        assert await leech.store.has(leaf)
        assert await leech.store.get(leaf) == data[ref.offset : ref.offset + ref.length]
    stat = leech.store.stat_sync()
    assert stat.referenced_blocks == len(distinct)  # one reference for the repeated leaf
    assert stat.blocks == result.blocks - len(distinct)  # the dag-pb nodes only
    assert (await leech.store.verify()).ok
    assert await leech.store.transfers() == []

    # another peer fetches the file from the getter alone: served from the references
    await third.host.connect(leech.host.peer_id)
    out3 = tmp_path / "third.bin"
    await asyncio.wait_for(third.bitswap.get_file(res.cid, out3), 30)
    assert out3.read_bytes() == data
    assert third.received_from(leech) == result.blocks
    assert third.received_from(seed) == 0

    # GC: the get is over and nothing is pinned, so the references go; the file stays
    gc = await leech.store.gc()
    assert gc.refs_dropped == len(distinct)
    assert out.read_bytes() == data
    assert leech.store.stat_sync().referenced_blocks == 0


async def test_keep_copies_stores_every_leaf_as_well(
    net: MemNetwork, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The zeros: one leaf at five places, some filled from the store's copy (see
    # test_filesink's keep_copies test). Had the sink given up, the exporter would still
    # have made the file: only the log tells.
    data = pattern(20_000) + bytes(5000)
    caplog.set_level(logging.DEBUG, logger="peerstack.content.filesink")
    async with AsyncExitStack() as stack:
        seed_host, leech_host = net.add_host(), net.add_host()
        seed_store = stack.enter_context(Blockstore(tmp_path / "s", FsyncPolicy.NEVER))
        leech_store = stack.enter_context(Blockstore(tmp_path / "l", FsyncPolicy.NEVER))
        await stack.enter_async_context(Bitswap(seed_host, seed_store))
        copies = BitswapConfig(get_keeps_copies=True)
        leech = await stack.enter_async_context(Bitswap(leech_host, leech_store, config=copies))
        res = await import_bytes(seed_store, data, SMALL)
        await leech_host.connect(seed_host.peer_id)
        out = tmp_path / "out.bin"
        result = await asyncio.wait_for(leech.get_file(res.cid, out), 30)
        assert out.read_bytes() == data
        stat = leech_store.stat_sync()
        assert (stat.blocks, stat.referenced_blocks) == (result.blocks, 0)
    assert not [r for r in caplog.records if "as it arrives stopped" in r.getMessage()]


async def test_a_tampered_output_block_is_absent_and_fetched_elsewhere(
    peers: list[Peer], tmp_path: Path
) -> None:
    seed, leech, third = peers
    data, root, leaves = await _offer(peers, 30_000)
    out = tmp_path / "out.bin"
    await asyncio.wait_for(leech.bitswap.get_file(root, out), 30)
    _flip(out, 5 * 1000 + 7)  # inside leaf 5
    bad = leaves[5]
    report = await leech.store.verify()
    assert [d.key for d in report.damaged_refs] == [cid_key(leech.store, bad)]
    assert await leech.store.has(bad)  # has() is a cheap check: the file is long enough

    # a third peer that can only ask the getter: DONT_HAVE for that block, nothing wrong served
    await third.host.connect(leech.host.peer_id)
    with pytest.raises(BlocksUnavailable) as caught:
        await asyncio.wait_for(third.bitswap.fetch(root, idle_timeout=1.5), 30)
    assert caught.value.missing == [bad]
    assert leech.store.ref_sync(bad) is None  # the read while serving dropped it
    assert not await leech.store.has(bad)
    assert (await third.store.verify()).ok
    # another source has it
    await third.host.connect(seed.host.peer_id)
    await asyncio.wait_for(third.bitswap.fetch(root), 30)
    assert third.received_from(seed) == 1
    assert await third.store.get(bad) == data[5000:6000]


@pytest.mark.parametrize("how", ["truncate", "delete"])
async def test_a_truncated_or_deleted_output_is_absent_and_refetched(
    peers: list[Peer], tmp_path: Path, how: str
) -> None:
    seed, leech, _third = peers
    data, root, leaves = await _offer(peers, 25_000)
    out = tmp_path / "out.bin"
    await asyncio.wait_for(leech.bitswap.get_file(root, out), 30)
    before = leech.received_from(seed)
    if how == "truncate":
        os.truncate(out, 10_500)  # leaves 0-9 whole, 10 cut
        gone = leaves[10:]
    else:
        out.unlink()
        gone = leaves
    for leaf in gone:
        assert not await leech.store.has(leaf)
        with pytest.raises(BlockNotFound):
            await leech.store.get(leaf)
    assert (await leech.store.verify()).ok  # the reads above dropped those references
    # the same content again, to another file: only what is gone is fetched
    again = tmp_path / "again.bin"
    await asyncio.wait_for(leech.bitswap.get_file(root, again), 30)
    assert again.read_bytes() == data
    assert leech.received_from(seed) - before == len(gone)


async def test_an_interrupted_get_continues_in_its_partial_file(
    peers: list[Peer], tmp_path: Path
) -> None:
    seed, leech, _third = peers
    data, root, leaves = await _offer(peers, 400_000)
    out = tmp_path / "resumed.bin"
    await interrupt_after(150, lambda watch: leech.bitswap.get_file(root, out, watch))
    partial = partial_path(out)
    assert not out.exists()
    assert partial.exists()  # kept: it holds verified leaves
    in_partial = [leaf for leaf in leaves if leech.store.ref_sync(leaf) is not None]
    assert 0 < len(in_partial) < len(leaves)
    assert leech.store.refs_in_sync(partial) == len(in_partial)
    assert (await leech.store.gc()).refs_dropped == 0  # the transfer keeps them
    # one of them is damaged meanwhile: that one is fetched again, the rest is not
    tampered = in_partial[len(in_partial) // 2]
    ref = leech.store.ref_sync(tampered)
    assert ref is not None
    _flip(partial, ref.offset)
    # another is damaged in the partial file but also stored as a block file: the file's
    # bytes are what must be right, so it is written again from the block file
    copied = in_partial[0]
    ref = leech.store.ref_sync(copied)
    assert ref is not None
    await leech.store.put(copied, data[ref.offset : ref.offset + ref.length])
    _flip(partial, ref.offset + ref.length - 1)
    held = sum(1 for _ in leech.store.iter_keys())
    sent_before = seed.bitswap.engine.ledgers[leech.host.peer_id].blocks_sent
    result = await asyncio.wait_for(leech.bitswap.get_file(root, out), 30)
    assert out.read_bytes() == data
    assert not partial.exists()
    sent = seed.bitswap.engine.ledgers[leech.host.peer_id].blocks_sent - sent_before
    assert sent == result.blocks - held + 1  # only what was missing, and the tampered leaf
    assert result.fetched_bytes < result.bytes
    assert leech.store.refs_in_sync(out) == len(set(leaves)) - 1  # copied: a block file
    assert (await leech.store.verify()).ok


async def test_a_partial_file_without_references_is_rehashed_in_place(
    peers: list[Peer], tmp_path: Path
) -> None:
    """A get killed before its references were written (they go to the store in batches)
    leaves verified leaves in the partial file that the store does not name: each is
    re-hashed at its place and kept; what does not match is fetched."""
    seed, leech, _third = peers
    data, root, leaves = await _offer(peers, 12_000)
    out = tmp_path / "out.bin"
    partial = partial_path(out)
    partial.write_bytes(
        data[:5000] + b"\xee" * 9000
    )  # leaves 0-4 right, the rest garbage, too long
    _flip(partial, 2 * 1000 + 3)  # ...but leaf 2 damaged
    assert leech.store.refs_in_sync(partial) == 0
    result = await asyncio.wait_for(leech.bitswap.get_file(root, out), 30)
    assert out.read_bytes() == data
    kept = {leaves[i] for i in (0, 1, 3, 4)}
    assert leech.received_from(seed) == result.blocks - len(kept)
    assert result.fetched_bytes == result.bytes - 4000
    assert leech.store.refs_in_sync(out) == len(set(leaves))
    assert (await leech.store.verify()).ok


async def test_content_that_can_never_complete_removes_the_partial_file(
    peers: list[Peer], tmp_path: Path
) -> None:
    seed, leech, _third = peers
    leaf = await seed.store.put_data(pattern(1000), RAW)
    bad_bytes = b"\xff\xff\xff"  # not dag-pb: the seed has it under a dag-pb CID anyway
    bad = CID.hash_of(bad_bytes, DAG_PB)
    seed.store.path_for(bad).parent.mkdir(parents=True, exist_ok=True)
    seed.store.path_for(bad).write_bytes(bad_bytes)
    top = UnixFSData(DataType.FILE, blocksizes=(1000, 3))
    links = (dagpb.PBLink(leaf, "", 1000), dagpb.PBLink(bad, "", 3))
    root = await seed.store.put_data(dagpb.encode(dagpb.PBNode(links, top.encode())), DAG_PB)
    await leech.host.connect(seed.host.peer_id)
    out = tmp_path / "out.bin"
    with pytest.raises(MalformedDagPb):
        await asyncio.wait_for(leech.bitswap.get_file(root, out), 30)
    assert not partial_path(out).exists()
    assert leech.store.refs_in_sync(partial_path(out)) == 0
    assert leech.store.ref_sync(leaf) is None


@asynccontextmanager
async def _node_got(tmp_path: Path, data: bytes, cfg: Config) -> AsyncIterator[tuple[Node, Path]]:
    """A node with ``cfg`` that got ``data`` (added on another node) into a file: real nodes,
    TCP on loopback; both stay up until the block ends."""
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    async with (
        Node(repo=tmp_path / "seed", listen=cfg.listen, dht=False, background=False) as seed,
        Node(repo=tmp_path / "get", config=cfg, dht=False, background=False) as getter,
    ):
        cid = await seed.add(src, provide="none")
        await getter.connect(seed.addrs[0].encapsulate(f"/p2p/{seed.peer_id}"))
        out = tmp_path / "out.bin"
        await getter.get(cid, out)
        yield getter, out
        assert out.read_bytes() == data  # after the caller looked at the file as the get left it
        assert (await getter.repo_verify()).ok


LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)


@pytest.mark.parametrize("keep_copies", [False, True])
async def test_node_get_honours_get_keeps_copies(tmp_path: Path, keep_copies: bool) -> None:
    """The ``[content] get_keeps_copies`` option reaches the get, and ``repo_stat`` tells
    stored blocks from referenced ones."""
    data = pattern(3 * 1024 * 1024 + 5)  # 4 leaves of 1 MiB (one short) and a root
    cfg = Config(listen=LOOPBACK, get_keeps_copies=keep_copies)
    async with _node_got(tmp_path, data, cfg) as (getter, _out):
        stat = await getter.repo_stat()
        if keep_copies:
            assert (stat["blocks"], stat["referenced_blocks"]) == (5, 0)
        else:
            assert (stat["blocks"], stat["referenced_blocks"]) == (1, 4)
            assert stat["referenced_size"] == len(data)


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="no RWF_NOWAIT to look at the cache")
@pytest.mark.parametrize("direct_io", [True, False])
async def test_node_get_honours_get_direct_io(tmp_path: Path, direct_io: bool) -> None:
    """The ``[content] get_direct_io`` option reaches the get: a 16 MiB file is written past
    the page cache, or through it."""
    cfg = Config(listen=LOOPBACK, get_direct_io=direct_io)
    async with _node_got(tmp_path, pattern(filesink.DIRECT_FILE_MIN + 5), cfg) as (_getter, out):
        assert page_cached(out, 0, 1 << 20) is not direct_io


async def test_a_duplicate_leaf_is_not_stored_as_a_block_file(tmp_path: Path) -> None:
    """A leaf that comes twice (a duplicate from the network, verified before the first copy
    was delivered) is held by the first copy's reference: the sink says so, no copy."""
    with (
        Blockstore(tmp_path / "src", FsyncPolicy.NEVER) as src,
        Blockstore(tmp_path / "dst", FsyncPolicy.NEVER) as dst,
    ):
        data = pattern(3000)
        root = (await import_bytes(src, data, SMALL)).cid
        leaves = await _leaves(src, root)
        sink = FileSink.open(tmp_path / "out.bin", dst, root)
        sink.node(root, dagpb.decode(src.read_sync(root)))
        first = src.read_sync(leaves[0])
        assert sink.leaf(leaves[0], first)
        assert sink.leaf(leaves[0], first)  # again: held already
        assert not sink.leaf(CID.hash_of(b"not in this file"), b"not in this file")
        # two copies at once, on two threads: one writes, the other waits for its outcome
        second = src.read_sync(leaves[1])
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(lambda _: sink.leaf(leaves[1], second), range(2)))
        assert both == [True, True]
        assert not dst.path_for(leaves[1]).exists()
        for leaf in leaves[2:]:
            assert sink.leaf(leaf, src.read_sync(leaf))
        assert sink.finish()
        assert not sink.leaf(leaves[0], first)  # finished: the caller stores what it got
        assert dst.stat_sync().referenced_blocks == len(leaves)
        assert (tmp_path / "out.bin").read_bytes() == data

"""get_file writes a file as its blocks arrive (FileSink): any order, resumes, and its limits."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerstack.content import chunks, dagpb, exporter, filesink
from peerstack.content.bitswap.service import Bitswap
from peerstack.content.blockstore import Blockstore, FsyncPolicy
from peerstack.content.filesink import FileSink, OutputWriteError, partial_path
from peerstack.content.importer import ImportProfile, import_bytes
from peerstack.content.unixfs import DataType, MalformedUnixFS, UnixFSData
from peerstack.core.cid import CID, DAG_PB, RAW
from tests.content.content_testkit import MemHost, MemNetwork, page_cached, pattern

SMALL = ImportProfile(chunk_size=1000, max_links=4)


async def _dag(store: Blockstore, root: CID) -> tuple[list[CID], list[CID]]:
    """The DAG's dag-pb nodes (parents before children) and its leaves (in file order)."""
    nodes: list[CID] = []
    leaves: list[CID] = []
    stack = [root]
    while stack:
        cid = stack.pop()
        if cid.codec == DAG_PB:
            kids = await store.children(cid)
            if kids:
                nodes.append(cid)
                stack.extend(reversed(kids))
                continue
            nodes.append(cid)  # a dag-pb leaf: its bytes are inline
        else:
            leaves.append(cid)
    return nodes, leaves


def _feed(sink: FileSink, store: Blockstore, nodes: list[CID], leaves: list[CID]) -> None:
    """Hand the sink every node (parents first), then every leaf, as the fetch would."""
    for cid in nodes:
        sink.node(cid, dagpb.decode(store.read_sync(cid)))
    for cid in leaves:
        sink.leaf(cid, store.read_sync(cid))


async def _import(tmp: Path, data: bytes, profile: ImportProfile) -> tuple[Blockstore, CID]:
    store = Blockstore(tmp / "repo", FsyncPolicy.NEVER)
    return store, (await import_bytes(store, data, profile)).cid


async def test_leaves_in_any_order_make_the_file(tmp_path: Path) -> None:
    data = pattern(37_000)
    store, root = await _import(tmp_path, data, SMALL)
    with store:
        nodes, leaves = await _dag(store, root)
        assert len(leaves) == 37
        assert len(nodes) > 3
        random.Random(7).shuffle(leaves)
        out = tmp_path / "out.bin"
        sink = FileSink.open(out, store, root)
        assert partial_path(out).exists()
        assert not out.exists()
        _feed(sink, store, nodes, leaves)
        assert sink.finish()
        assert out.read_bytes() == data
        assert not partial_path(out).exists()


async def test_a_leaf_before_a_sibling_subtree_is_placed(tmp_path: Path) -> None:
    # Ranges of leaves arrive while other parts of the tree are not expanded yet.
    data = pattern(20_000)
    store, root = await _import(tmp_path, data, SMALL)
    with store:
        nodes, leaves = await _dag(store, root)
        out = tmp_path / "out.bin"
        sink = FileSink.open(out, store, root)
        todo = list(nodes)
        while todo:  # the last expandable node first: later parts of the file come first
            cid = next(c for c in reversed(todo) if sink.wants_bytes(c))
            todo.remove(cid)
            sink.node(cid, dagpb.decode(store.read_sync(cid)))
            for leaf in reversed(leaves):  # its leaves (and any placed so far), last first
                if sink.wants_bytes(leaf):
                    sink.leaf(leaf, store.read_sync(leaf))
        assert sink.finish()
        assert out.read_bytes() == data


async def test_repeated_leaves_are_written_at_every_place(tmp_path: Path) -> None:
    # A file of zeros: every leaf is the same block, some placed after it was written.
    data = bytes(10_500)
    store, root = await _import(tmp_path, data, SMALL)
    with store:
        nodes, leaves = await _dag(store, root)
        assert len(set(leaves)) == 2  # 1000 zeros, and the 500 at the end
        out = tmp_path / "out.bin"
        sink = FileSink.open(out, store, root)
        sink.node(nodes[0], dagpb.decode(store.read_sync(nodes[0])))
        sink.node(nodes[1], dagpb.decode(store.read_sync(nodes[1])))
        sink.leaf(leaves[0], store.read_sync(leaves[0]))  # written before its other places
        _feed(sink, store, nodes[2:], leaves)
        assert sink.finish()
        assert out.read_bytes() == data


async def test_keep_copies_holds_a_leaf_before_its_later_places_come(tmp_path: Path) -> None:
    # keep_copies: the sink stores each leaf's copy itself, before leaf() returns. A place of
    # that leaf found right after (another worker thread handling a node) is written from
    # the store; when the caller stored the copy after leaf() returned, such a place could
    # come first, find nothing, and the sink gave up.
    data = bytes(10_500)
    src, root = await _import(tmp_path, data, SMALL)
    with src, Blockstore(tmp_path / "dst", FsyncPolicy.NEVER) as dst:
        nodes, leaves = await _dag(src, root)
        out = tmp_path / "out.bin"
        sink = FileSink.open(out, dst, root, keep_copies=True)
        for cid in nodes[:2]:
            sink.node(cid, dagpb.decode(src.read_sync(cid)))
        first = src.read_sync(leaves[0])
        assert sink.leaf(leaves[0], first)  # held: nothing left for the caller to store
        assert dst.read_sync(leaves[0]) == first
        for cid in nodes[2:]:  # later places of that leaf among them
            sink.node(cid, dagpb.decode(src.read_sync(cid)))
        for cid in leaves[1:]:
            if not sink.leaf(cid, src.read_sync(cid)):
                dst.put_sync(cid, src.read_sync(cid))
        assert not sink.abandoned
        assert sink.finish()
        assert out.read_bytes() == data
        assert dst.stat_sync().referenced_blocks == 0  # copies, no references


async def _file_node(store: Blockstore, kids: list[tuple[CID, int]]) -> CID:
    data = UnixFSData(DataType.FILE, blocksizes=tuple(size for _, size in kids))
    links = tuple(dagpb.PBLink(cid, "", size) for cid, size in kids)
    return await store.put_data(dagpb.encode(dagpb.PBNode(links, data.encode())), DAG_PB)


async def test_a_repeated_subtree_is_written_or_left_to_the_exporter(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "repo", FsyncPolicy.NEVER)
    with store:
        leaf = await store.put_data(b"abc", RAW)
        sub = await _file_node(store, [(leaf, 3)])
        # both places of the subtree known before it is expanded: written
        root = await _file_node(store, [(sub, 3), (sub, 3)])
        out = tmp_path / "twice.bin"
        sink = FileSink.open(out, store, root)
        _feed(sink, store, [root, sub], [leaf])
        assert sink.finish()
        assert out.read_bytes() == b"abcabc"
        # its second place learned after it was expanded: the sink gives up, the exporter
        # (get_file's fallback) makes the file
        other = await _file_node(store, [(sub, 3), (leaf, 3)])
        root = await _file_node(store, [(sub, 3), (other, 6)])
        out = tmp_path / "late.bin"
        sink = FileSink.open(out, store, root)
        _feed(sink, store, [root, sub, other], [leaf])
        assert "twice" in sink.abandoned
        assert not sink.finish()
        sink.discard()
        assert not partial_path(out).exists()
        await exporter.export(store, root, out)
        assert out.read_bytes() == b"abcabcabc"


async def test_a_node_that_contradicts_its_parent_is_given_up(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "repo", FsyncPolicy.NEVER)
    with store:
        leaf = await store.put_data(b"abcd", RAW)
        top = UnixFSData(DataType.FILE, blocksizes=(3,))  # says 3 bytes, the leaf holds 4
        links = (dagpb.PBLink(leaf, "", 4),)
        root = await store.put_data(dagpb.encode(dagpb.PBNode(links, top.encode())), DAG_PB)
        out = tmp_path / "out.bin"
        sink = FileSink.open(out, store, root)
        sink.node(root, dagpb.decode(store.read_sync(root)))
        sink.leaf(leaf, b"abcd")
        assert "parent says 3" in sink.abandoned
        assert not sink.finish()
        sink.discard()
        with pytest.raises(MalformedUnixFS):  # and the exporter says why, as before
            await exporter.export(store, root, out)


async def test_a_directory_root_is_given_up_at_once(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "repo", FsyncPolicy.NEVER)
    with store:
        d = UnixFSData(DataType.DIRECTORY)
        root = await store.put_data(dagpb.encode(dagpb.PBNode((), d.encode())), DAG_PB)
        sink = FileSink.open(tmp_path / "out", store, root)
        sink.node(root, dagpb.decode(store.read_sync(root)))
        assert sink.abandoned
        assert not sink.finish()
        sink.discard()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    size=st.integers(0, 3000),
    chunk=st.sampled_from([5, 64, 700]),
    links=st.sampled_from([2, 3, 16]),
    raw=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_property_any_dag_any_order_gives_the_file(
    size: int, chunk: int, links: int, raw: bool, seed: int
) -> None:
    data = random.Random(seed).randbytes(size) if seed % 2 else bytes(size)
    profile = ImportProfile(chunk_size=chunk, max_links=links, raw_leaves=raw)

    async def main(tmp: Path) -> None:
        store, root = await _import(tmp, data, profile)
        with store:
            nodes, leaves = await _dag(store, root)
            leaves = list(dict.fromkeys(leaves))  # each block comes once, as over the network
            random.Random(seed).shuffle(leaves)
            out = tmp / "out.bin"
            sink = FileSink.open(out, store, root)
            _feed(sink, store, nodes, leaves)
            if sink.finish():
                assert out.read_bytes() == data
            else:  # only a DAG with a repeated subtree is left to the exporter
                assert "twice" in sink.abandoned
                sink.discard()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))


# -- through Bitswap.get_file ------------------------------------------------------------------


class Peer:
    def __init__(self, host: MemHost, store: Blockstore, bitswap: Bitswap) -> None:
        self.host, self.store, self.bitswap = host, store, bitswap


@pytest.fixture
async def pair(net: MemNetwork, tmp_path: Path) -> AsyncIterator[tuple[Peer, Peer]]:
    async with AsyncExitStack() as stack:
        peers = []
        for name in ("seed", "leech"):
            host = net.add_host()
            store = stack.enter_context(Blockstore(tmp_path / name, FsyncPolicy.NEVER))
            peers.append(Peer(host, store, await stack.enter_async_context(Bitswap(host, store))))
        await peers[1].host.connect(peers[0].host.peer_id)
        yield peers[0], peers[1]


async def test_get_file_does_not_export_a_file(
    pair: tuple[Peer, Peer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed, leech = pair
    data = pattern(300_000)
    res = await import_bytes(seed.store, data, SMALL)

    async def no_export(*args: object) -> None:
        raise AssertionError("a file must be written as it arrives, not exported")

    monkeypatch.setattr(exporter, "export", no_export)
    out = tmp_path / "out.bin"
    result = await asyncio.wait_for(leech.bitswap.get_file(res.cid, out), 30)
    assert out.read_bytes() == data
    assert result.bytes == result.fetched_bytes
    assert (await leech.store.verify()).ok  # every block is in the store too
    assert sum(1 for _ in leech.store.iter_keys()) == result.blocks
    assert not partial_path(out).exists()


async def test_get_file_resumes_over_a_stale_partial_file(
    pair: tuple[Peer, Peer], tmp_path: Path
) -> None:
    seed, leech = pair
    data = pattern(200_000)
    res = await import_bytes(seed.store, data, SMALL)
    _nodes, leaves = await _dag(seed.store, res.cid)
    for cid in leaves[::2]:  # half the leaves were verified and stored before a crash
        await leech.store.put(cid, await seed.store.get(cid))
    out = tmp_path / "out.bin"
    # ...which left a partial output with garbage where nothing was written, and too long
    partial_path(out).write_bytes(b"\xee" * 250_000)
    result = await asyncio.wait_for(leech.bitswap.get_file(res.cid, out), 30)
    assert out.read_bytes() == data
    assert 0 < result.fetched_bytes < result.bytes
    assert not partial_path(out).exists()


async def test_get_file_of_a_single_raw_block(pair: tuple[Peer, Peer], tmp_path: Path) -> None:
    seed, leech = pair
    cid = await seed.store.put_data(b"just one block", RAW)
    out = tmp_path / "one.txt"
    await asyncio.wait_for(leech.bitswap.get_file(cid, out), 30)
    assert out.read_bytes() == b"just one block"


async def test_get_file_of_repeated_content(pair: tuple[Peer, Peer], tmp_path: Path) -> None:
    seed, leech = pair
    data = bytes(50_000) + pattern(3000) + bytes(20_000)
    res = await import_bytes(seed.store, data, SMALL)
    out = tmp_path / "zeros.bin"
    await asyncio.wait_for(leech.bitswap.get_file(res.cid, out), 30)
    assert out.read_bytes() == data


async def test_a_directory_get_is_exported(pair: tuple[Peer, Peer], tmp_path: Path) -> None:
    seed, leech = pair
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.bin").write_bytes(pattern(5000))
    (src / "b.txt").write_text("bee")
    added = await seed.bitswap.add(src, SMALL, provide=False)
    out = tmp_path / "copy"
    await asyncio.wait_for(leech.bitswap.get_file(added.cid, out), 30)
    assert (out / "sub" / "a.bin").read_bytes() == pattern(5000)
    assert (out / "b.txt").read_text() == "bee"
    assert not partial_path(out).exists()


async def test_a_full_disk_under_the_output_fails_clearly_and_resumes(
    pair: tuple[Peer, Peer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed, leech = pair
    data = pattern(100_000)
    res = await import_bytes(seed.store, data, SMALL)
    real_pwritev = os.pwritev
    writes = [0]

    def full(fd: int, buffers: list[memoryview], offset: int) -> int:
        writes[0] += 1
        if writes[0] > 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", full)
    out = tmp_path / "out.bin"
    with pytest.raises(OutputWriteError, match="disk full while writing"):
        await asyncio.wait_for(leech.bitswap.get_file(res.cid, out), 30)
    monkeypatch.undo()
    assert not out.exists()
    # The partial output is kept for the resume: the leaves written before the disk filled
    # are referenced in it (and nothing unwritten is).
    assert partial_path(out).exists()
    held = leech.store.refs_in_sync(partial_path(out))
    assert 0 < held <= 20
    assert not leech.bitswap.is_banned(seed.host.peer_id)  # our disk, not the peer's fault
    report = await leech.store.verify()
    assert report.ok
    assert report.checked_refs == held
    assert await leech.store.transfers() == [(res.cid, str(out))]
    result = await asyncio.wait_for(leech.bitswap.get_file(res.cid, out), 30)
    assert out.read_bytes() == data
    assert result.fetched_bytes < result.bytes  # the verified blocks were kept
    assert not partial_path(out).exists()


BIG = ImportProfile(chunk_size=256 * 1024, max_links=8)


async def test_a_big_output_is_allocated_on_disk_once_its_size_is_known(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT)
    try:
        supported = chunks.reserve(fd, 1 << 20)
    finally:
        os.close(fd)
    data = pattern(3 * 1024 * 1024 + 5)
    store, root = await _import(tmp_path, data, BIG)
    with store:
        nodes, leaves = await _dag(store, root)
        out = tmp_path / "out.bin"
        sink = FileSink.open(out, store, root)
        sink.node(root, dagpb.decode(store.read_sync(root)))
        st = os.stat(partial_path(out))
        if supported:  # the whole file has its blocks before any leaf came
            assert st.st_size == len(data)
            assert st.st_blocks * 512 >= len(data)
        else:
            assert st.st_size == 0
        _feed(sink, store, nodes[1:], list(reversed(leaves)))
        assert sink.finish()
        assert out.read_bytes() == data


async def test_a_disk_too_full_for_the_output_fails_at_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, size: int) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filesink, "reserve", full)
    data = pattern(2 * 1024 * 1024)
    store, root = await _import(tmp_path, data, BIG)
    with store:
        out = tmp_path / "out.bin"
        sink = FileSink.open(out, store, root)
        sink.node(root, dagpb.decode(store.read_sync(root)))
        assert isinstance(sink.error, OutputWriteError)
        assert "disk full" in str(sink.error)
        with pytest.raises(OutputWriteError, match="disk full"):
            sink.finish()
        sink.suspend()


# -- direct_io: a big output past the page cache -------------------------------------------

DIRECT_SIZE = filesink.DIRECT_FILE_MIN + 5  # 64 leaves of 256 KiB and a 5-byte one


async def _feed_shuffled(
    tmp: Path, store: Blockstore, direct: bool
) -> tuple[FileSink, Path, bytes]:
    """A DIRECT_SIZE file imported into ``store``, its leaves fed in random order."""
    data = pattern(DIRECT_SIZE)
    root = (await import_bytes(store, data, BIG)).cid
    nodes, leaves = await _dag(store, root)
    random.Random(3).shuffle(leaves)
    out = tmp / "out.bin"
    sink = FileSink.open(out, store, root, direct_io=direct)
    _feed(sink, store, nodes, leaves)
    return sink, out, data


@pytest.mark.skipif(not chunks.O_DIRECT, reason="no O_DIRECT on this platform")
async def test_a_big_output_is_written_past_the_page_cache(
    store: Blockstore, tmp_path: Path
) -> None:
    sink, out, data = await _feed_shuffled(tmp_path, store, direct=True)
    # every whole leaf went past the cache; the 5-byte last one through it
    assert sink.direct_bytes == DIRECT_SIZE - 5
    assert sink.finish()
    if hasattr(os, "RWF_NOWAIT"):
        assert not page_cached(out, 0, 256 * 1024)
    assert out.read_bytes() == data


async def test_a_small_output_or_direct_io_off_goes_through_the_cache(
    store: Blockstore, tmp_path: Path
) -> None:
    sink, out, data = await _feed_shuffled(tmp_path, store, direct=False)
    assert sink.direct_bytes == 0
    assert sink.finish()
    assert out.read_bytes() == data
    small = pattern(3 * 1024 * 1024)
    root = (await import_bytes(store, small, BIG)).cid
    nodes, leaves = await _dag(store, root)
    sink = FileSink.open(tmp_path / "small.bin", store, root, direct_io=True)
    _feed(sink, store, nodes, leaves)
    assert sink.direct_bytes == 0  # under DIRECT_FILE_MIN
    assert sink.finish()
    assert (tmp_path / "small.bin").read_bytes() == small


async def test_a_file_system_without_o_direct_gets_the_file_through_the_cache(
    store: Blockstore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real_open = os.open

    def no_direct(path: str, flags: int, *args: int) -> int:
        if flags & chunks.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    with caplog.at_level("INFO", logger="peerstack.content.filesink"):
        sink, out, data = await _feed_shuffled(tmp_path, store, direct=True)
    assert sink.direct_bytes == 0
    assert sum("no O_DIRECT here" in r.getMessage() for r in caplog.records) == 1
    assert sink.finish()
    assert out.read_bytes() == data


async def test_a_direct_write_refused_midway_is_written_through_the_cache(
    store: Blockstore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = chunks.pwrite_direct
    calls = 0

    def refuse_third(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(filesink, "pwrite_direct", refuse_third)
    sink, out, data = await _feed_shuffled(tmp_path, store, direct=True)
    assert sink.direct_bytes == 2 * 256 * 1024  # two went past the cache, then it stopped
    assert calls == 3
    assert sink.finish()
    assert out.read_bytes() == data


async def test_get_file_of_a_big_file_writes_it_past_the_cache_and_resumes_from_it(
    pair: tuple[Peer, Peer], tmp_path: Path
) -> None:
    seed, leech = pair
    assert leech.bitswap.config.get_direct_io
    data = pattern(DIRECT_SIZE)
    res = await import_bytes(seed.store, data, BIG)
    out = tmp_path / "big.bin"
    result = await asyncio.wait_for(leech.bitswap.get_file(res.cid, out), 60)
    assert out.read_bytes() == data
    assert result.fetched_bytes == result.bytes
    # the leaves are held by reference in the output written past the cache: re-hashed there
    report = await leech.store.verify()
    assert report.ok
    assert report.checked_refs == 65
    again = tmp_path / "again.bin"
    second = await asyncio.wait_for(leech.bitswap.get_file(res.cid, again), 60)
    assert again.read_bytes() == data
    assert second.fetched_bytes == 0

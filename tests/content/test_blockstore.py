"""The on-disk blockstore: layout, atomic writes, pins, GC, verify, a full disk."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from peerstack.content.blockstore import (
    BlockNotFound,
    Blockstore,
    BlockstoreFull,
    FsyncPolicy,
    HashMismatch,
    PinKind,
    mh_key,
)
from peerstack.content.chunks import Chunks
from peerstack.content.dagpb import MalformedDagPb, PBLink, PBNode, encode
from peerstack.content.importer import import_bytes
from peerstack.core.cid import CID, DAG_PB, RAW
from peerstack.errors import UsageError
from tests.content.content_testkit import pattern


async def test_put_get_layout(store: Blockstore) -> None:
    cid = CID.hash_of(b"hello")
    assert await store.put(cid, b"hello")
    assert not await store.put(cid, b"hello")  # already there
    assert await store.get(cid) == b"hello"
    assert await store.has(cid)
    assert await store.size(cid) == 5
    key = mh_key(cid.multihash)
    assert key.startswith("CIQ")  # kubo's key form for sha2-256
    path = store.path_for(cid)
    assert path == store.root / "blocks" / key[-3:-1] / f"{key}.data"
    assert path.read_bytes() == b"hello"
    # the same multihash under another CID is the same block
    assert await store.has(CID(1, DAG_PB, cid.multihash))
    assert list(store.iter_keys()) == [key]


async def test_wrong_hash_is_refused_and_nothing_stored(store: Blockstore) -> None:
    cid = CID.hash_of(b"hello")
    with pytest.raises(HashMismatch):
        await store.put(cid, b"hellO")
    assert not await store.has(cid)
    assert list((store.root / "tmp").iterdir()) == []


async def test_malformed_dag_pb_is_refused(store: Blockstore) -> None:
    junk = b"\x0a\x00\x12\x00"
    with pytest.raises(MalformedDagPb):
        await store.put(CID.hash_of(junk, DAG_PB), junk)
    assert list(store.iter_keys()) == []


async def test_oversized_block_is_refused(tmp_path: Path) -> None:
    with (
        Blockstore(tmp_path / "r", FsyncPolicy.NEVER, max_block_size=10) as small,
        pytest.raises(UsageError),
    ):
        await small.put(CID.hash_of(bytes(11)), bytes(11))


async def test_missing_block(store: Blockstore) -> None:
    with pytest.raises(BlockNotFound):
        await store.get(CID.hash_of(b"nope"))
    with pytest.raises(BlockNotFound):
        async for _ in store.read_stream(CID.hash_of(b"nope")):
            pass


async def test_streaming_read(store: Blockstore) -> None:
    data = pattern(100_000)
    cid = await store.put_data(data, RAW)
    pieces = [p async for p in store.read_stream(cid, 30_000)]
    assert [len(p) for p in pieces] == [30_000, 30_000, 30_000, 10_000]
    assert b"".join(pieces) == data


@pytest.mark.parametrize("policy", list(FsyncPolicy))
async def test_fsync_policies_write_the_same(tmp_path: Path, policy: FsyncPolicy) -> None:
    with Blockstore(tmp_path / policy.value, policy) as bs:
        cid = await bs.put_data(b"x" * 1000, RAW)
        assert await bs.get(cid) == b"x" * 1000


async def test_full_disk_is_a_clear_error_and_leaves_no_temp(
    store: Blockstore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev

    def full(fd: int, buffers: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    cid = CID.hash_of(b"data")
    with pytest.raises(BlockstoreFull):
        await store.put(cid, b"data")
    monkeypatch.setattr(os, "writev", real_writev)
    assert list((store.root / "tmp").iterdir()) == []
    assert not await store.has(cid)
    # the store keeps working once there is room again
    assert await store.put(cid, b"data")
    assert (await store.verify()).ok


async def test_stale_temp_files_are_cleared_on_open(tmp_path: Path) -> None:
    Blockstore(tmp_path / "r").close()
    (tmp_path / "r" / "tmp" / "junk.tmp").write_bytes(b"half a block")
    Blockstore(tmp_path / "r").close()
    assert list((tmp_path / "r" / "tmp").iterdir()) == []


async def test_pins_and_gc(store: Blockstore) -> None:
    kept = await import_bytes(store, pattern(3 * 1024 * 1024))  # 3 leaves + root
    dropped = await import_bytes(store, pattern(2 * 1024 * 1024 + 1)[::-1])  # 3 leaves + root
    direct = await store.put_data(b"direct", RAW)
    loose = await store.put_data(b"loose", RAW)
    await store.pin(kept.cid)
    await store.pin(direct, PinKind.DIRECT)
    assert {c for c, _ in await store.pins()} == {kept.cid, direct}
    result = await store.gc()
    assert result.removed == 5
    assert result.kept == 5
    assert await store.has(kept.cid)
    assert await store.has(direct)
    assert not await store.has(dropped.cid)
    assert not await store.has(loose)
    for child in await store.children(kept.cid):
        assert await store.has(child)
    assert await store.unpin(kept.cid)
    assert not await store.unpin(kept.cid)
    assert (await store.gc()).removed == 4


async def test_transfers_protect_partial_dags(store: Blockstore) -> None:
    res = await import_bytes(store, pattern(2 * 1024 * 1024 + 7))
    kids = await store.children(res.cid)
    await store.delete(kids[0])  # as if the transfer had not fetched it yet
    await store.begin_transfer(res.cid, "/tmp/out")
    assert await store.transfers() == [(res.cid, "/tmp/out")]
    assert (await store.gc()).removed == 0
    await store.end_transfer(res.cid)
    assert (await store.gc()).removed == 3


async def test_refs_survive_reopen(tmp_path: Path) -> None:
    with Blockstore(tmp_path / "r") as bs:
        res = await import_bytes(bs, pattern(2 * 1024 * 1024 + 7))
        await bs.pin(res.cid)
        await bs.set_meta("k", "v")
    with Blockstore(tmp_path / "r") as bs:
        assert len(await bs.children(res.cid)) == 3
        assert (await bs.gc()).removed == 0
        assert await bs.get_meta("k") == "v"
        assert await bs.get_meta("other") is None


async def test_verify_reports_damage(store: Blockstore) -> None:
    good = await store.put_data(b"good", RAW)
    bad = await store.put_data(b"bad!", RAW)
    store.path_for(bad).write_bytes(b"rot!")
    await store.pin(CID.hash_of(b"never stored"), PinKind.DIRECT)
    (store.root / "blocks" / "stray.txt").write_text("?")
    report = await store.verify()
    assert report.checked == 2
    assert not report.ok
    assert report.damaged == [mh_key(bad.multihash)]
    assert report.missing_pinned == [str(CID.hash_of(b"never stored"))]
    assert report.foreign == ["blocks/stray.txt"]
    report = await store.verify(remove_damaged=True)
    assert not await store.has(bad)
    assert await store.has(good)
    assert (await store.verify()).damaged == []


async def test_closed_store_is_a_usage_error(tmp_path: Path) -> None:
    bs = Blockstore(tmp_path / "r")
    bs.close()
    with pytest.raises(UsageError):
        await bs.pins()


async def test_held_roots_survive_gc(store: Blockstore) -> None:
    res = await import_bytes(store, pattern(2 * 1024 * 1024 + 1))
    with store.hold(res.cid), store.hold(res.cid):
        assert (await store.gc()).removed == 0
    assert (await store.gc()).removed == 4


def _fail_on(store: Blockstore, when: str) -> sqlite3.Connection:
    """A second connection that makes SQLite abort ``when`` (e.g. "INSERT ON dagpb")."""
    other = sqlite3.connect(store.root / "store.sqlite", isolation_level=None)
    verb, table = when.split(" ON ")
    other.execute(
        f"CREATE TRIGGER fail BEFORE {verb} ON {table} BEGIN SELECT RAISE(ABORT, 'injected'); END"
    )
    return other


async def _dag_pb_node(store: Blockstore, tag: bytes) -> tuple[CID, CID, bytes]:
    leaf = await store.put_data(tag, RAW)
    block = encode(PBNode((PBLink(leaf, "x", len(tag)),), b"\x08\x01"))
    return CID.hash_of(block, DAG_PB), leaf, block


async def test_failed_link_index_is_rolled_back_and_store_keeps_working(store: Blockstore) -> None:
    node, leaf, block = await _dag_pb_node(store, b"one")
    other = _fail_on(store, "INSERT ON dagpb")
    with pytest.raises(sqlite3.IntegrityError):
        await store.put(node, block)  # refs rows were written before the failing insert
    assert other.execute("SELECT COUNT(*) FROM refs").fetchone() == (0,)
    other.execute("DROP TRIGGER fail")
    # the shared connection is not stuck inside the failed transaction
    node2, leaf2, block2 = await _dag_pb_node(store, b"two")
    assert await store.put(node2, block2)
    assert await store.children(node2) == [leaf2]
    assert await store.children(node) == [leaf]  # indexed now from the stored block
    await store.pin(node2)
    other.close()


async def test_failed_link_forget_is_rolled_back_and_store_keeps_working(store: Blockstore) -> None:
    node, _leaf, block = await _dag_pb_node(store, b"one")
    await store.put(node, block)
    other = _fail_on(store, "DELETE ON dagpb")
    with pytest.raises(sqlite3.IntegrityError):
        await store.delete(node)  # refs rows were deleted before the failing delete
    assert other.execute("SELECT COUNT(*) FROM refs").fetchone() == (1,)
    other.execute("DROP TRIGGER fail")
    node2, leaf2, block2 = await _dag_pb_node(store, b"two")
    assert await store.put(node2, block2)
    assert await store.children(node2) == [leaf2]
    assert await store.delete(node2)
    assert (await store.gc()).removed == 2  # the two leaves; nothing is pinned
    other.close()


@pytest.mark.parametrize("size", [64 * 1024, 64 * 1024 + 1, 1024 * 1024, 1024 * 1024 + 4095])
async def test_direct_io_writes_the_same_bytes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    pieces = Chunks([data[i : i + 65519] for i in range(0, size, 65519)])
    with Blockstore(tmp_path / "d", FsyncPolicy.FILE, direct_io=True) as bs:
        cid = CID.hash_of(data, RAW)
        assert bs.put_sync(cid, pieces, verify=True)
        assert await bs.get(cid) == data
        small = await bs.put_data(b"small blocks go through the page cache", RAW)
        assert await bs.get(small) == b"small blocks go through the page cache"
        assert (await bs.verify()).ok
        assert list((tmp_path / "d" / "tmp").iterdir()) == []


async def test_direct_io_falls_back_where_the_file_system_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fcntl = fcntl.fcntl

    def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")  # as some file systems answer
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", no_direct)
    with Blockstore(tmp_path / "d", FsyncPolicy.NEVER, direct_io=True) as bs:
        data = os.urandom(256 * 1024)
        cid = await bs.put_data(data, RAW)
        assert await bs.get(cid) == data
        assert not bs.direct_io  # it stopped trying
        assert (await bs.verify()).ok


async def test_direct_io_full_disk_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Blockstore(tmp_path / "d", FsyncPolicy.NEVER, direct_io=True) as bs:

        def full(fd: int, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", full)
        data = os.urandom(128 * 1024)
        with pytest.raises(BlockstoreFull):
            await bs.put(CID.hash_of(data, RAW), data)
        monkeypatch.undo()
        assert list((tmp_path / "d" / "tmp").iterdir()) == []
        assert await bs.put(CID.hash_of(data, RAW), data)


def _evict(path: Path) -> bool:
    """Drop ``path`` from the page cache; False where the file system keeps it anyway."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            return True
        return False
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="no RWF_NOWAIT here")
async def test_read_cached_reads_only_what_the_page_cache_holds(
    store: Blockstore, tmp_path: Path
) -> None:
    data = pattern(300_000)
    cid = CID.hash_of(data, RAW)
    await store.put(cid, data)
    got = store.read_cached(cid)
    assert got == data
    assert type(got) is bytes
    assert store.read_cached(CID.hash_of(b"nope")) is None  # missing: get() says why
    if _evict(store.path_for(cid)):
        assert store.read_cached(cid) is None  # would wait for the disk: not read
        assert await store.get(cid) == data
        assert store.read_cached(cid) == data  # cached again by that read
    # a block held by reference is re-hashed when read: never read here
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 10 + data[:1000])
    ref = CID.hash_of(data[:1000], RAW)
    store.put_ref_sync(ref, outside, 10, 1000)
    assert await store.get(ref) == data[:1000]
    assert store.read_cached(ref) is None


def test_the_aligned_buffer_is_one_per_thread_and_store(store: Blockstore) -> None:
    """O_DIRECT writes (the store's and every get's output file's) share one page-aligned
    buffer per thread: concurrent gets add no memory."""
    mine = store.aligned_buffer()
    assert store.aligned_buffer() is mine
    assert len(mine) >= store.max_block_size
    assert ctypes.addressof(ctypes.c_char.from_buffer(mine)) % 4096 == 0
    with ThreadPoolExecutor(1) as pool:
        theirs = pool.submit(store.aligned_buffer).result()
    assert theirs is not mine

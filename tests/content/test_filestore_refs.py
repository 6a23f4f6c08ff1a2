"""Blocks held by reference to a file outside the store (filestore): served like stored blocks,
re-hashed on every read, dropped (never served) when the file no longer holds them, never
deleted by the store. Real files, real SQLite."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from peerstack.content.blockstore import (
    _REF_WRITE_BATCH,
    BlockNotFound,
    Blockstore,
    FsyncPolicy,
    PinKind,
)
from peerstack.core.cid import CID, DAG_PB, RAW
from peerstack.errors import UsageError
from tests.content.content_testkit import pattern

# -- the blockstore alone ----------------------------------------------------------------------


def _file_with_block(tmp: Path, data: bytes, before: int = 100) -> tuple[Path, CID, int]:
    """A user file holding ``data`` at offset ``before`` (other bytes around it)."""
    path = tmp / "user.bin"
    path.write_bytes(b"x" * before + data + b"y" * 50)
    return path, CID.hash_of(data, RAW), before


async def test_a_referenced_block_is_served_like_a_stored_one(
    store: Blockstore, tmp_path: Path
) -> None:
    data = pattern(3000)
    path, cid, offset = _file_with_block(tmp_path, data)
    store.put_ref_sync(cid, path, offset, len(data))
    assert not store.path_for(cid).exists()  # no block file: the bytes stay in the user's file
    assert await store.has(cid)
    assert await store.get(cid) == data
    assert store.read_sync(cid.multihash) == data
    assert await store.size(cid) == len(data)
    assert store.sizes_sync([cid]) == {cid: len(data)}
    assert store.lookup_many_sync([cid]) == {cid: (len(data), None)}
    assert await store.has_many([cid]) == {cid: (len(data), None)}
    assert b"".join([p async for p in store.read_stream(cid, chunk_size=700)]) == data
    assert await store.children(cid) == []
    assert list(store.iter_keys()) == [cid_key(store, cid)]
    stat = store.stat_sync()
    assert (stat.blocks, stat.size) == (0, 0)
    assert (stat.referenced_blocks, stat.referenced_size) == (1, len(data))
    report = await store.verify()
    assert report.ok
    assert (report.checked, report.checked_refs) == (0, 1)
    # the CIDv0/v1 rule of the store holds for references too: the key is the multihash
    assert await store.get(CID(1, DAG_PB, cid.multihash)) == data
    # so CIDs of one multihash asked together are each answered (one lookup of their key)
    twin = CID(1, DAG_PB, cid.multihash)
    absent = CID.hash_of(b"not held", RAW)
    assert store.sizes_sync([cid, twin, absent]) == {cid: len(data), twin: len(data), absent: None}


def cid_key(store: Blockstore, cid: CID) -> str:
    return store.path_for(cid).stem


async def test_references_survive_a_reopen_and_old_repos_get_the_table(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    with Blockstore(root, FsyncPolicy.NEVER):
        pass
    # a repo from before file references: no such table
    db = sqlite3.connect(root / "store.sqlite")
    db.execute("DROP TABLE filestore")
    db.commit()
    db.close()
    data = pattern(500)
    path, cid, offset = _file_with_block(tmp_path, data)
    with Blockstore(root, FsyncPolicy.NEVER) as store:
        store.put_ref_sync(cid, path, offset, len(data))
    with Blockstore(root, FsyncPolicy.NEVER) as store:
        assert store.read_sync(cid) == data
        assert store.refs_in_sync(path) == 1


async def test_only_raw_blocks_of_a_sane_size_are_referenced(
    store: Blockstore, tmp_path: Path
) -> None:
    path, cid, offset = _file_with_block(tmp_path, b"abc")
    with pytest.raises(UsageError):
        store.put_ref_sync(CID(1, DAG_PB, cid.multihash), path, offset, 3)
    with pytest.raises(UsageError):
        store.put_ref_sync(cid, path, -1, 3)
    with pytest.raises(UsageError):
        store.put_ref_sync(cid, path, 0, store.max_block_size + 1)
    assert store.refs_in_sync(path) == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "directory"])
async def test_a_reference_whose_bytes_changed_is_dropped_never_served(
    store: Blockstore, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = pattern(4000)
    path, cid, offset = _file_with_block(tmp_path, data)
    store.put_ref_sync(cid, path, offset, len(data))
    if damage == "flip":
        with path.open("r+b") as fh:
            fh.seek(offset + 1234)
            byte = fh.read(1)
            fh.seek(offset + 1234)
            fh.write(bytes([byte[0] ^ 1]))
    elif damage == "truncate":
        os.truncate(path, offset + len(data) - 1)
    elif damage == "delete":
        path.unlink()
    else:
        path.unlink()
        path.mkdir()
    # verify reports it first (and leaves it: no --remove-damaged)
    report = await store.verify()
    assert not report.ok
    assert [d.key for d in report.damaged_refs] == [cid_key(store, cid)]
    assert report.damaged_refs[0].ref.path == str(path)
    assert store.ref_sync(cid) is not None
    with (
        caplog.at_level(logging.WARNING, logger="peerstack.content.blockstore"),
        pytest.raises(BlockNotFound),
    ):
        await store.get(cid)
    assert "reference dropped" in caplog.text
    assert store.ref_sync(cid) is None  # dropped on that read
    assert not await store.has(cid)
    assert await store.size(cid) is None
    assert store.lookup_many_sync([cid]) == {}
    with pytest.raises(BlockNotFound):
        async for _piece in store.read_stream(cid):
            pass
    assert (await store.verify()).ok
    assert path.exists() == (damage != "delete")  # what the user left stays


async def test_verify_can_drop_damaged_references(store: Blockstore, tmp_path: Path) -> None:
    data = pattern(2000)
    path, cid, offset = _file_with_block(tmp_path, data)
    store.put_ref_sync(cid, path, offset, len(data))
    os.truncate(path, offset)
    report = await store.verify(remove_damaged=True)
    assert len(report.damaged_refs) == 1
    assert "ends before" in report.damaged_refs[0].why
    assert store.ref_sync(cid) is None
    assert path.exists()


async def test_a_block_file_is_preferred_to_a_reference(store: Blockstore, tmp_path: Path) -> None:
    data = pattern(1500)
    path, cid, offset = _file_with_block(tmp_path, data)
    store.put_ref_sync(cid, path, offset, len(data))
    await store.put(cid, data)
    path.write_bytes(b"the user rewrote the file")  # the reference no longer holds
    assert await store.get(cid) == data  # from the block file; the reference is not read
    assert store.ref_sync(cid) is not None
    assert list(store.iter_keys()) == [cid_key(store, cid)]  # once, not twice


async def test_delete_drops_the_reference_never_the_file(store: Blockstore, tmp_path: Path) -> None:
    data = pattern(1500)
    path, cid, offset = _file_with_block(tmp_path, data)
    before = path.read_bytes()
    store.put_ref_sync(cid, path, offset, len(data))
    assert await store.delete(cid)
    assert not await store.has(cid)
    assert not await store.delete(cid)
    assert path.read_bytes() == before


async def test_gc_drops_unreachable_references_and_keeps_pinned_ones(
    store: Blockstore, tmp_path: Path
) -> None:
    kept_data, dropped_data = pattern(1200), pattern(1300)[100:]
    path = tmp_path / "user.bin"
    path.write_bytes(kept_data + dropped_data)
    before = path.read_bytes()
    kept, dropped = CID.hash_of(kept_data), CID.hash_of(dropped_data)
    store.put_ref_sync(kept, path, 0, len(kept_data))
    store.put_ref_sync(dropped, path, len(kept_data), len(dropped_data))
    await store.pin(kept, PinKind.DIRECT)
    result = await store.gc()
    assert (result.refs_dropped, result.refs_kept, result.removed) == (1, 1, 0)
    assert await store.get(kept) == kept_data
    assert not await store.has(dropped)
    assert path.read_bytes() == before  # GC never touches the user's file


async def test_renaming_a_file_moves_its_references(store: Blockstore, tmp_path: Path) -> None:
    data = pattern(800)
    path, cid, offset = _file_with_block(tmp_path, data)
    store.put_ref_sync(cid, path, offset, len(data))
    moved = tmp_path / "moved.bin"
    assert store.move_file_sync(path, moved) == 1
    assert not path.exists()
    assert store.read_sync(cid) == data
    assert store.refs_in_sync(moved) == 1
    os.replace(moved, path)  # renamed back behind the store's back...
    assert store.rename_refs_sync(moved, path) == 1  # ...and told
    assert store.read_sync(cid) == data


async def test_copying_references_makes_block_files(store: Blockstore, tmp_path: Path) -> None:
    data = pattern(900)
    path, cid, offset = _file_with_block(tmp_path, data)
    store.put_ref_sync(cid, path, offset, len(data))
    assert store.copy_refs_sync(path) == 1
    assert store.ref_sync(cid) is None
    path.unlink()
    assert await store.get(cid) == data
    assert store.stat_sync().blocks == 1


async def test_many_references_walk_in_batches(store: Blockstore, tmp_path: Path) -> None:
    """More references than one batch of the walks (iter_keys, stat, verify, gc)."""
    count = 1234
    blocks = [i.to_bytes(8, "big") for i in range(count)]
    path = tmp_path / "many.bin"
    path.write_bytes(b"".join(blocks))
    cids = [CID.hash_of(b, RAW) for b in blocks]
    for i, cid in enumerate(cids):
        store.put_ref_sync(cid, path, 8 * i, 8)
    assert sorted(store.iter_keys()) == sorted(cid_key(store, c) for c in cids)
    assert store.stat_sync().referenced_blocks == count
    assert (await store.verify()).checked_refs == count
    for cid in cids[:3]:
        await store.pin(cid, PinKind.DIRECT)
    result = await store.gc()
    assert (result.refs_dropped, result.refs_kept) == (count - 3, 3)
    assert store.refs_in_sync(path) == 3
    assert path.stat().st_size == 8 * count


def _rows_on_disk(root: Path) -> int:
    """File references in the database as another connection sees it (not the store's)."""
    db = sqlite3.connect(root / "store.sqlite")
    try:
        return int(db.execute("SELECT COUNT(*) FROM filestore").fetchone()[0])
    finally:
        db.close()


async def test_new_references_are_written_in_batches_and_seen_at_once(tmp_path: Path) -> None:
    """References wait in memory for a batch (one transaction), yet every reader of the store
    sees them at once, and a close or flush_refs_sync writes what is left."""
    root = tmp_path / "repo"
    count = _REF_WRITE_BATCH + 3
    blocks = [i.to_bytes(8, "big") for i in range(count)]
    path = tmp_path / "many.bin"
    path.write_bytes(b"".join(blocks))
    cids = [CID.hash_of(b, RAW) for b in blocks]
    with Blockstore(root, FsyncPolicy.NEVER) as store:
        for i, cid in enumerate(cids[: _REF_WRITE_BATCH - 1]):
            store.put_ref_sync(cid, path, 8 * i, 8)
        assert _rows_on_disk(root) == 0  # all still waiting
        store.put_ref_sync(cids[_REF_WRITE_BATCH - 1], path, 8 * (_REF_WRITE_BATCH - 1), 8)
        assert _rows_on_disk(root) == _REF_WRITE_BATCH  # a full batch went in one go
        store.put_ref_sync(cids[-3], path, 8 * (count - 3), 8)
        assert _rows_on_disk(root) == _REF_WRITE_BATCH
        # readers of every kind see the waiting one (each writes the batch first)
        assert store.read_sync(cids[-3]) == blocks[-3]
        assert _rows_on_disk(root) == _REF_WRITE_BATCH + 1
        store.put_ref_sync(cids[-2], path, 8 * (count - 2), 8)
        assert store.sizes_sync([cids[-2]]) == {cids[-2]: 8}
        store.put_ref_sync(cids[-1], path, 8 * (count - 1), 8)
        store.flush_refs_sync()
        assert _rows_on_disk(root) == count
        # a waiting reference replaced by a newer place of the same block: the newest wins
        store.put_ref_sync(cids[0], path, 8 * 5, 8)  # wrong bytes there: dropped when read
        store.put_ref_sync(cids[0], path, 0, 8)
    assert _rows_on_disk(root) == count  # close wrote the last one
    with Blockstore(root, FsyncPolicy.NEVER) as store:
        assert store.refs_in_sync(path) == count
        assert store.read_sync(cids[0]) == blocks[0]
        assert store.stat_sync().referenced_blocks == count


async def test_a_waiting_reference_is_seen_by_moves_and_drops(tmp_path: Path) -> None:
    """Renaming or forgetting a file's references covers those not written yet."""
    data = pattern(700)
    with Blockstore(tmp_path / "repo", FsyncPolicy.NEVER) as store:
        path, cid, offset = _file_with_block(tmp_path, data)
        store.put_ref_sync(cid, path, offset, len(data))
        moved = tmp_path / "moved.bin"
        assert store.move_file_sync(path, moved) == 1
        ref = store.ref_sync(cid)
        assert ref is not None
        assert Path(ref.path) == moved
        assert store.read_sync(cid) == data
        other = CID.hash_of(b"z" * 10, RAW)
        moved.write_bytes(moved.read_bytes() + b"z" * 10)
        store.put_ref_sync(other, moved, moved.stat().st_size - 10, 10)
        assert store.drop_refs_sync(moved) == 2
        assert store.ref_sync(other) is None
        with pytest.raises(BlockNotFound):
            store.read_sync(other)

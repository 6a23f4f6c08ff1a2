"""The exporter: whole files, byte ranges, directories, and refusal of hostile DAGs."""

from __future__ import annotations

import base64
import os
import random
from pathlib import Path
from typing import Any

import pytest

from peerstack.content import dagpb, unixfs
from peerstack.content.blockstore import BlockNotFound, Blockstore
from peerstack.content.exporter import (
    DirectoryTooLarge,
    NotAFile,
    TooManyEntries,
    UnsafeName,
    cat,
    check_name,
    export,
    ls,
)
from peerstack.content.importer import (
    LEGACY_PROFILE,
    ImportProfile,
    import_bytes,
    import_path,
    make_directory,
)
from peerstack.content.unixfs import DataType, MalformedUnixFS, UnixFSData
from peerstack.core.cid import CID, DAG_PB
from peerstack.errors import PeerError, UsageError
from tests.content.content_testkit import pattern

SMALL = ImportProfile(chunk_size=1000, max_links=4)


async def read_all(
    store: Blockstore, cid: CID, offset: int = 0, length: int | None = None
) -> bytes:
    return b"".join([p async for p in cat(store, cid, offset, length)])


@pytest.mark.parametrize(
    "profile", [SMALL, ImportProfile(chunk_size=1000, max_links=4, cid_version=0, raw_leaves=False)]
)
async def test_cat_whole_and_ranges(store: Blockstore, profile: ImportProfile) -> None:
    data = pattern(17_345)
    res = await import_bytes(store, data, profile)
    assert await read_all(store, res.cid) == data
    for off, n in [(0, 1), (999, 2), (1000, 1000), (5_123, 7_777), (17_000, 1000), (17_345, 5)]:
        assert await read_all(store, res.cid, off, n) == data[off : off + n]
    assert await read_all(store, res.cid, 16_000) == data[16_000:]
    with pytest.raises(UsageError):
        await read_all(store, res.cid, -1)


class CountingGetter:
    def __init__(self, store: Blockstore) -> None:
        self.store = store
        self.fetched: list[CID] = []

    async def get(self, cid: CID) -> bytes:
        self.fetched.append(cid)
        return await self.store.get(cid)


async def test_range_reads_skip_subtrees(store: Blockstore) -> None:
    res = await import_bytes(store, pattern(64_000), SMALL)
    getter = CountingGetter(store)
    got = b"".join([p async for p in cat(getter, res.cid, 63_500, 100)])
    assert got == pattern(64_000)[63_500:63_600]
    assert len(getter.fetched) <= 4  # root, two inner nodes, one leaf


async def test_export_directory(store: Blockstore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello")
    (src / "sub" / "big.bin").write_bytes(pattern(300_000))
    (src / "empty").mkdir()
    res = await import_path(store, src, LEGACY_PROFILE)
    out = tmp_path / "out"
    await export(store, res.cid, out)
    assert (out / "a.txt").read_text() == "hello"
    assert (out / "sub" / "big.bin").read_bytes() == pattern(300_000)
    assert (out / "empty").is_dir()
    assert not [p for p in out.rglob("*.part")]
    names = [e.name for e in await ls(store, res.cid)]
    assert names == ["a.txt", "empty", "sub"]
    with pytest.raises(UsageError):
        await export(store, res.cid, out)  # target exists
    with pytest.raises(NotAFile):
        await read_all(store, res.cid)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/etc", "a\\b", "C:x", "x\0y"])
def test_unsafe_names_refused(name: str) -> None:
    with pytest.raises(UnsafeName):
        check_name(name)


async def _dir_with_raw_name(store: Blockstore, name: str) -> CID:
    child = await store.put_data(b"evil", 0x55)
    node = dagpb.PBNode((dagpb.PBLink(child, name, 4),), UnixFSData(DataType.DIRECTORY).encode())
    return await store.put_data(dagpb.encode(node), DAG_PB)


@pytest.mark.parametrize("name", ["..", "../escape", "/abs"])
async def test_export_refuses_escaping_names(store: Blockstore, tmp_path: Path, name: str) -> None:
    cid = await _dir_with_raw_name(store, name)
    with pytest.raises(UnsafeName):
        await export(store, cid, tmp_path / "out")
    assert not (tmp_path / "escape").exists()
    with pytest.raises(UsageError):
        await make_directory(store, {name: await import_bytes(store, b"x")})


async def test_lying_blocksizes_are_refused(store: Blockstore) -> None:
    leaf = await store.put_data(b"abc", 0x55)
    for blocksizes in [(3, 3), (4,)]:
        data = UnixFSData(DataType.FILE, blocksizes=blocksizes).encode()
        node = dagpb.PBNode((dagpb.PBLink(leaf, "", 3),), data)
        cid = await store.put_data(dagpb.encode(node), DAG_PB)
        with pytest.raises(MalformedUnixFS):
            await read_all(store, cid)


async def test_failed_export_leaves_no_partial_file(store: Blockstore, tmp_path: Path) -> None:
    res = await import_bytes(store, pattern(5000), SMALL)
    kids = await store.children(res.cid)
    await store.delete(kids[-1])
    with pytest.raises(BlockNotFound):
        await export(store, res.cid, tmp_path / "f")
    assert sorted(p.name for p in os.scandir(tmp_path)) == ["repo"]


async def test_random_ranges(store: Blockstore) -> None:
    data = pattern(5_555)
    res = await import_bytes(store, data, SMALL)
    rng = random.Random(7)
    for _ in range(300):
        offset, length = rng.randrange(6000), rng.randrange(6000)
        assert await read_all(store, res.cid, offset, length) == data[offset : offset + length]


async def test_hamt_directory_made_by_helia(
    store: Blockstore, vectors: dict[str, Any], tmp_path: Path
) -> None:
    hamt = vectors["hamt"]
    for text, b64 in hamt["blocks"].items():
        await store.put(CID.parse(text), base64.b64decode(b64))  # verifies every hash
    root = CID.parse(hamt["root"])
    entries = await ls(store, root)
    assert len(entries) == hamt["count"]
    assert {e.name for e in entries} == {f"file-{i}.txt" for i in range(hamt["count"])}
    out = tmp_path / "hamt"
    await export(store, root, out)
    for i in (0, 17, 299):
        assert (out / f"file-{i}.txt").read_text() == f"entry {i}\n"


async def test_hamt_with_bad_names_or_fanout_is_refused(store: Blockstore) -> None:
    leaf = await store.put_data(b"x", 0x55)
    for fanout, name in [(256, "zz-file"), (256, "0"), (1000, "00a"), (4096, "000a")]:
        data = UnixFSData(DataType.HAMT_SHARD, fanout=fanout, hash_type=0x22)
        node = dagpb.PBNode((dagpb.PBLink(leaf, name, 1),), data.encode())
        cid = await store.put_data(dagpb.encode(node), DAG_PB)
        with pytest.raises(MalformedUnixFS):
            await ls(store, cid)


async def test_our_own_hamt_round_trips(store: Blockstore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    for i in range(120):
        (src / f"n{i}.txt").write_text(f"{i}")
    (src / "nested" / "deep.txt").write_text("deep")
    res = await import_path(store, src, ImportProfile(shard_threshold=500))
    node_data = dagpb.decode(await store.get(res.cid)).data
    assert node_data is not None
    assert unixfs.decode(node_data).type == DataType.HAMT_SHARD
    out = tmp_path / "out"
    await export(store, res.cid, out)
    assert sorted(os.listdir(out)) == sorted(os.listdir(src))
    assert (out / "n77.txt").read_text() == "77"
    assert (out / "nested" / "deep.txt").read_text() == "deep"


async def test_dag_bombs_are_bounded(store: Blockstore, tmp_path: Path) -> None:
    # each level links the level below 50 times: 50**6 paths, nearly all of them empty
    empty = UnixFSData(DataType.FILE).encode()
    cid = await store.put_data(dagpb.encode(dagpb.PBNode((), empty)), DAG_PB)
    for _ in range(6):
        data = UnixFSData(DataType.FILE, blocksizes=(0,) * 50).encode()
        links = tuple(dagpb.PBLink(cid, "", 1) for _ in range(50))
        cid = await store.put_data(dagpb.encode(dagpb.PBNode(links, data)), DAG_PB)
    getter = CountingGetter(store)
    assert b"".join([p async for p in cat(getter, cid)]) == b""
    assert len(getter.fetched) == 1
    # the same trick with directories runs into the entry budget
    leaf = await store.put_data(b"x", 0x55)
    entry = leaf
    for _level in range(4):
        links = tuple(dagpb.sort_links([dagpb.PBLink(entry, f"e{i}", 1) for i in range(20)]))
        node = dagpb.PBNode(links, UnixFSData(DataType.DIRECTORY).encode())
        entry = await store.put_data(dagpb.encode(node), DAG_PB)
    with pytest.raises(TooManyEntries):
        await export(store, entry, tmp_path / "bomb", max_entries=100)


def _shard(links: list[dagpb.PBLink], fanout: int = 256, tag: bytes = b"") -> bytes:
    """A HAMT shard node; ``tag`` (in the bitfield) makes otherwise equal shards distinct."""
    data = UnixFSData(DataType.HAMT_SHARD, data=tag, fanout=fanout, hash_type=0x22)
    return dagpb.encode(dagpb.PBNode(tuple(dagpb.sort_links(links)), data.encode()))


async def test_hamt_bomb_of_repeated_empty_shards_is_refused_at_once(store: Blockstore) -> None:
    # 5 blocks, each level linking the one below in all 256 buckets: 256**4 sub-shard visits
    # and not one entry, so no entry count ever stopped the walk
    cid = await store.put_data(_shard([]), DAG_PB)
    for _level in range(4):
        links = [dagpb.PBLink(cid, f"{i:02X}", 0) for i in range(256)]
        cid = await store.put_data(_shard(links), DAG_PB)
    getter = CountingGetter(store)
    with pytest.raises(MalformedUnixFS, match="more than once"):
        await ls(getter, cid)
    assert len(getter.fetched) <= 5
    with pytest.raises(MalformedUnixFS, match="more than once"):
        await export(getter, cid, store.root / "bomb")


async def test_hamt_sub_shards_count_against_a_budget(store: Blockstore, tmp_path: Path) -> None:
    # distinct empty sub-shards: no repeat, no depth, only the budget stops them
    subs = [await store.put_data(_shard([], tag=bytes([i])), DAG_PB) for i in range(200)]
    root = await store.put_data(
        _shard([dagpb.PBLink(c, f"{i:02X}", 0) for i, c in enumerate(subs)]), DAG_PB
    )
    getter = CountingGetter(store)
    with pytest.raises(DirectoryTooLarge) as info:
        await ls(getter, root, max_shards=50)
    assert isinstance(info.value, PeerError)  # blocks from a peer: the peer is to blame
    assert len(getter.fetched) <= 51
    assert await ls(store, root, max_shards=200) == []
    with pytest.raises(DirectoryTooLarge):
        await export(store, root, tmp_path / "out", max_entries=100)
    assert not (tmp_path / "out").exists()


async def test_hamt_deeper_than_its_hash_is_refused(store: Blockstore) -> None:
    leaf = await store.put_data(b"x", 0x55)
    # fanout 256 takes 8 bits a level: 8 levels use up the 64-bit hash
    cid = await store.put_data(_shard([dagpb.PBLink(leaf, "00file", 1)]), DAG_PB)
    for level in range(7):
        cid = await store.put_data(_shard([dagpb.PBLink(cid, "00", 1)], tag=bytes([level])), DAG_PB)
    assert [e.name for e in await ls(store, cid)] == ["file"]
    cid = await store.put_data(_shard([dagpb.PBLink(cid, "00", 1)], tag=b"top"), DAG_PB)
    with pytest.raises(MalformedUnixFS, match="deeper"):
        await ls(store, cid)


async def test_hamt_sub_shard_must_match_fanout_and_hash(store: Blockstore) -> None:
    leaf = await store.put_data(b"x", 0x55)
    small = await store.put_data(_shard([dagpb.PBLink(leaf, "0a", 1)], fanout=16), DAG_PB)
    root = await store.put_data(_shard([dagpb.PBLink(small, "00", 1)]), DAG_PB)
    with pytest.raises(MalformedUnixFS, match="fanout"):
        await ls(store, root)
    data = UnixFSData(DataType.HAMT_SHARD, fanout=256, hash_type=0x11)
    node = dagpb.PBNode((dagpb.PBLink(leaf, "00a", 1),), data.encode())
    with pytest.raises(MalformedUnixFS, match="hashType"):
        await ls(store, await store.put_data(dagpb.encode(node), DAG_PB))

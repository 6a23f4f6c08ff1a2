"""The importer reproduces helia's CIDs (vectors produced by helia, see helia_vectors.mjs)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from peerstack.content import dagpb, hamt
from peerstack.content.blockstore import Blockstore, mh_key
from peerstack.content.exporter import ls
from peerstack.content.hamt import murmur3_x64_128
from peerstack.content.importer import (
    DEFAULT_PROFILE,
    LEGACY_PROFILE,
    ImportProfile,
    ImportResult,
    import_bytes,
    import_file,
    import_path,
    make_directory,
)
from peerstack.core.cid import CID
from peerstack.errors import UsageError
from tests.content.content_testkit import pattern

PROFILES = {"default": DEFAULT_PROFILE, "legacy": LEGACY_PROFILE}
SMALL = ["empty", "one_byte", "one_mib", "one_mib_plus_one", "five_mib"]


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("profile", ["default", "legacy"])
async def test_file_cids_match_helia(
    store: Blockstore, vectors: dict[str, Any], name: str, profile: str
) -> None:
    vec = vectors["files"][name]
    res = await import_bytes(store, pattern(vec["size"]), PROFILES[profile])
    assert str(res.cid) == vec[profile]
    assert res.file_size == vec["size"]


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["default", "legacy"])
async def test_fifty_mib_file_streamed_from_disk(
    store: Blockstore, vectors: dict[str, Any], tmp_path: Path, profile: str
) -> None:
    """Two tree levels in the legacy profile (200 leaves > 174 links)."""
    vec = vectors["files"]["fifty_mib"]
    src = tmp_path / "big.bin"
    src.write_bytes(pattern(vec["size"]))
    res = await import_file(store, src, PROFILES[profile])
    assert str(res.cid) == vec[profile]


async def test_deep_trees_match_helia(store: Blockstore, vectors: dict[str, Any]) -> None:
    for case in vectors["custom"]:
        profile = ImportProfile(
            cid_version=case["cidVersion"],
            raw_leaves=case["rawLeaves"],
            chunk_size=case["chunkSize"],
            max_links=case["maxChildrenPerNode"],
        )
        res = await import_bytes(store, pattern(case["size"]), profile)
        assert str(res.cid) == case["cid"], case


def _build_tree(root: Path, vectors: dict[str, Any]) -> Path:
    for entry in vectors["tree"]["entries"]:
        path = root / entry["path"]
        if entry["kind"] == "dir":
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry["kind"] == "pattern":
            path.write_bytes(pattern(entry["size"]))
        else:
            path.write_text(entry["text"])
    return root / "tree"


@pytest.mark.parametrize("profile", ["default", "legacy"])
async def test_directory_cids_match_helia(
    store: Blockstore, vectors: dict[str, Any], tmp_path: Path, profile: str
) -> None:
    tree = _build_tree(tmp_path / "src", vectors)
    res = await import_path(store, tree, PROFILES[profile])
    cids = vectors["tree"]["cids"][profile]
    assert str(res.cid) == cids["tree"]
    assert res.is_dir
    sub = await import_path(store, tree / "sub", PROFILES[profile])
    assert str(sub.cid) == cids["tree/sub"]


async def test_import_is_idempotent_and_blocks_are_stored(store: Blockstore) -> None:
    data = pattern(3 * 1024 * 1024 + 5)
    a = await import_bytes(store, data)
    b = await import_bytes(store, data)
    assert a == b
    assert await store.has(a.cid)
    assert len(list(store.iter_keys())) == 5  # 4 raw leaves + 1 root


async def test_blake3_profile_changes_the_cid(store: Blockstore) -> None:
    pytest.importorskip("blake3")
    from peerstack.core.multihash import BLAKE3

    res = await import_bytes(store, b"hello", ImportProfile(hash_code=BLAKE3))
    assert res.cid.multihash.code == BLAKE3
    assert CID.parse(str(res.cid)) == res.cid
    assert await store.get(res.cid) == b"hello"


def test_bad_profiles_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        ImportProfile(cid_version=0, raw_leaves=True)
    with pytest.raises(UsageError):
        ImportProfile(max_links=1)
    with pytest.raises(UsageError):
        ImportProfile(chunk_size=0)


async def test_hamt_directory_matches_helia(store: Blockstore, vectors: dict[str, Any]) -> None:
    """helia sharded these 300 entries (threshold lowered to 1000 bytes): same root CID."""
    hamt_vec = vectors["hamt"]
    entries = {
        f"file-{i}.txt": await import_bytes(store, f"entry {i}\n".encode())
        for i in range(hamt_vec["count"])
    }
    profile = ImportProfile(shard_threshold=1000)
    res = await make_directory(store, entries, profile)
    assert str(res.cid) == hamt_vec["root"]
    # every block we wrote is one helia wrote, byte for byte
    helia_keys = {mh_key(CID.parse(c).multihash) for c in hamt_vec["blocks"]}
    assert set(store.iter_keys()) == helia_keys
    # under the threshold the same entries make a flat directory
    flat = await make_directory(store, entries)
    assert flat.cid != res.cid
    assert flat.entries == 300


def test_murmur3_known_values() -> None:
    assert murmur3_x64_128(b"hello") == (0xCBD8A7B341BD9B02, 0x5B1E906A48AE1D19)
    assert murmur3_x64_128(b"") == (0, 0)
    h1, _ = murmur3_x64_128(b"The quick brown fox jumps over the lazy dog")
    assert h1 == 0xE34BBC7BBC071B6C


@pytest.mark.parametrize("count", ["5600", "6000"])
async def test_big_directories_around_the_shard_threshold(
    store: Blockstore, vectors: dict[str, Any], count: str
) -> None:
    # a one-chunk file with raw leaves is its raw block: no need to store 6000 leaves here
    entries = {
        f"entry-{i}": ImportResult(CID.hash_of(str(i).encode()), len(str(i)), len(str(i)))
        for i in range(int(count))
    }
    assert entries["entry-7"] == await import_bytes(store, b"7")
    res = await make_directory(store, entries)
    assert str(res.cid) == vectors["big_dirs"][count]


async def test_big_directories_are_built_off_the_event_loop(
    store: Blockstore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spies that call through: they only note which thread the CPU-heavy work ran on.
    loop_thread = threading.get_ident()
    hashed_on_loop: list[str] = []
    encoded_on_loop: list[int] = []
    real_hash, real_encode = hamt.hamt_hash, dagpb.encode

    def hash_spy(name: str) -> int:
        if threading.get_ident() == loop_thread:
            hashed_on_loop.append(name)
        return real_hash(name)

    def encode_spy(node: dagpb.PBNode) -> bytes:
        if threading.get_ident() == loop_thread:
            encoded_on_loop.append(len(node.links))
        return real_encode(node)

    monkeypatch.setattr(hamt, "hamt_hash", hash_spy)
    monkeypatch.setattr(dagpb, "encode", encode_spy)
    entries = {
        f"entry-{i}": ImportResult(CID.hash_of(str(i).encode()), len(str(i)), len(str(i)))
        for i in range(3000)
    }
    flat = await make_directory(store, entries)
    sharded = await make_directory(store, entries, ImportProfile(shard_threshold=1000))
    assert flat.entries == sharded.entries == 3000
    assert len(await ls(store, flat.cid)) == len(await ls(store, sharded.cid)) == 3000
    assert hashed_on_loop == []
    assert max(encoded_on_loop, default=0) <= 256  # shard nodes, one at a time

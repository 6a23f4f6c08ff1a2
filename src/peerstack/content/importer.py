"""Import files and directories into a UnixFS DAG (dag-pb, balanced layout).

The CIDs match helia's (``@helia/unixfs``, ``ipfs-unixfs-importer``) for the same bytes and the same
profile; ``tests/content/helia_vectors.json`` holds CIDs helia produced.

How the balanced layout is built without holding the file: leaves are grouped ``max_links`` at
a time into parents, parents ``max_links`` at a time into grandparents, and so on. We keep one list
of pending links per level and reduce a level into a parent as soon as it holds ``max_links``
entries; at the end the partial levels are reduced bottom-up. That yields exactly the tree of the
js "batch, then batch the parents" algorithm, including a lone last leaf getting a one-link parent,
while memory stays at ``depth * max_links`` links plus one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path

from peerstack.content import chunker, dagpb, hamt
from peerstack.content.blockstore import Blockstore
from peerstack.content.unixfs import DataType, UnixFSData
from peerstack.core.cid import CID, DAG_PB, RAW
from peerstack.core.multihash import BLAKE3, SHA2_256
from peerstack.errors import PeerstackError, UsageError

log = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImportProfile:
    """How bytes become a DAG. Same bytes + same profile = same CID, on every implementation."""

    cid_version: int = 1
    raw_leaves: bool = True
    chunk_size: int = MiB
    max_links: int = 1024
    hash_code: int = SHA2_256
    # A directory becomes a HAMT when the names and CIDs of its entries (helia's and go's
    # "links-bytes" estimate) exceed this many bytes.
    shard_threshold: int = 256 * 1024

    def __post_init__(self) -> None:
        if self.cid_version not in (0, 1):
            raise UsageError("cid_version must be 0 or 1")
        if self.cid_version == 0 and (self.raw_leaves or self.hash_code != SHA2_256):
            raise UsageError("CIDv0 needs dag-pb leaves and sha2-256")
        if self.hash_code not in (SHA2_256, BLAKE3):
            raise UsageError("hash must be sha2-256 or blake3")
        if not 1 <= self.chunk_size <= chunker.MAX_CHUNK_SIZE:
            raise UsageError(f"chunk size must be 1..{chunker.MAX_CHUNK_SIZE}")
        if not 2 <= self.max_links <= 8192:
            raise UsageError("max_links must be 2..8192")


DEFAULT_PROFILE = ImportProfile()
LEGACY_PROFILE = ImportProfile(
    cid_version=0, raw_leaves=False, chunk_size=256 * 1024, max_links=174
)
PROFILES = {"default": DEFAULT_PROFILE, "kubo-legacy": LEGACY_PROFILE}


@dataclass(frozen=True, slots=True)
class ImportResult:
    cid: CID
    size: int  # cumulative DAG size (the Tsize a parent link carries)
    file_size: int  # bytes of file content (0 for directories)
    is_dir: bool = False
    entries: int = 0  # for a directory: how many entries it has


ProgressFn = Callable[[int, int], None]  # (bytes imported so far, blocks written so far)


@dataclass(slots=True)
class _Item:
    """A finished node waiting for its parent link."""

    cid: CID
    tsize: int
    file_size: int
    single: bool = False


# Leaves hashed and written at once (in worker threads): hashing overlaps with reading the next
# chunk and with other leaves, at the cost of this many chunks in memory.
PIPELINE_DEPTH = 2


class _FileBuilder:
    def __init__(self, store: Blockstore, profile: ImportProfile) -> None:
        self.store = store
        self.p = profile
        self.levels: list[list[_Item]] = [[]]
        self.count = 0
        self.bytes = 0
        self.blocks = 0
        self._pending: deque[tuple[asyncio.Task[tuple[CID, int]], int]] = deque()
        self._drained = 0

    async def _put_node(self, node: dagpb.PBNode) -> tuple[CID, int]:
        block = dagpb.encode(node)
        cid = await self.store.put_data(block, DAG_PB, self.p.cid_version, self.p.hash_code)
        self.blocks += 1
        return cid, len(block)

    async def _leaf(self, chunk: bytes) -> tuple[CID, int]:
        if self.p.raw_leaves:
            cid = await self.store.put_data(chunk, RAW, 1, self.p.hash_code)
            self.blocks += 1
            return cid, len(chunk)
        data = UnixFSData(DataType.FILE, data=chunk)
        return await self._put_node(dagpb.PBNode((), data.encode()))

    async def add_chunk(self, chunk: bytes) -> None:
        self.count += 1
        self.bytes += len(chunk)
        task = asyncio.get_running_loop().create_task(self._leaf(chunk))
        self._pending.append((task, len(chunk)))
        if len(self._pending) >= PIPELINE_DEPTH:
            await self._drain_one()

    async def _drain_one(self) -> None:
        task, size = self._pending.popleft()
        cid, tsize = await task
        item = _Item(cid, tsize, size, single=self._drained == 0)
        self._drained += 1
        await self._push(0, item)

    async def abort(self) -> None:
        """Stop the leaves still being written (the import failed or was cancelled)."""
        for task, _ in self._pending:
            task.cancel()
        for task, _ in self._pending:
            with contextlib.suppress(asyncio.CancelledError, PeerstackError):
                await task
        self._pending.clear()

    async def _push(self, level: int, item: _Item) -> None:
        while len(self.levels) <= level:
            self.levels.append([])
        self.levels[level].append(item)
        if len(self.levels[level]) == self.p.max_links:
            items = self.levels[level]
            self.levels[level] = []
            await self._push(level + 1, await self._reduce(items))

    async def _reduce(self, items: list[_Item]) -> _Item:
        # helia drops empty leaves from a parent (only an empty file has one, and that file is a
        # single leaf reduced to itself, so this only matters for odd chunkers).
        kept = [it for it in items if it.file_size > 0]
        links = tuple(dagpb.PBLink(it.cid, "", it.tsize) for it in kept)
        data = UnixFSData(DataType.FILE, blocksizes=tuple(it.file_size for it in kept))
        cid, n = await self._put_node(dagpb.PBNode(links, data.encode()))
        return _Item(cid, n + sum(it.tsize for it in kept), data.file_size())

    async def finish(self) -> _Item:
        while self._pending:
            await self._drain_one()
        level = 0
        while True:
            items = self.levels[level]
            higher = any(self.levels[j] for j in range(level + 1, len(self.levels)))
            if not higher:
                if len(items) == 1 and (level > 0 or items[0].single):
                    return items[0]
                return await self._reduce(items)
            if items:
                self.levels[level] = []
                await self._push(level + 1, await self._reduce(items))
            level += 1


async def import_stream(
    store: Blockstore,
    source: AsyncIterable[bytes],
    profile: ImportProfile = DEFAULT_PROFILE,
    progress: ProgressFn | None = None,
) -> ImportResult:
    """Import a byte stream as one UnixFS file; only one chunk is held at a time."""
    return await _build(profile, store, chunker.fixed_size(source, profile.chunk_size), progress)


async def import_bytes(
    store: Blockstore, data: bytes, profile: ImportProfile = DEFAULT_PROFILE
) -> ImportResult:
    return await import_stream(store, chunker.bytes_source(data, profile.chunk_size), profile)


async def import_file(
    store: Blockstore,
    path: str | os.PathLike[str],
    profile: ImportProfile = DEFAULT_PROFILE,
    progress: ProgressFn | None = None,
) -> ImportResult:
    return await _build(profile, store, chunker.file_chunks(path, profile.chunk_size), progress)


async def _build(
    profile: ImportProfile,
    store: Blockstore,
    chunks: AsyncIterable[bytes],
    progress: ProgressFn | None,
) -> ImportResult:
    builder = _FileBuilder(store, profile)
    try:
        async for chunk in chunks:
            await builder.add_chunk(chunk)
            if progress is not None:
                progress(builder.bytes, builder.blocks)
        root = await builder.finish()
    except BaseException:
        await builder.abort()
        raise
    return ImportResult(root.cid, root.tsize, root.file_size)


async def make_directory(
    store: Blockstore, entries: dict[str, ImportResult], profile: ImportProfile = DEFAULT_PROFILE
) -> ImportResult:
    """A UnixFS directory over already-imported entries: flat, or a HAMT when it is big.

    The size estimate counts what helia's importer counts: name bytes plus CID bytes of every
    entry except non-empty subdirectories (those have no CID yet when helia decides).
    """
    for name in entries:
        _check_name(name)
    estimate = sum(
        len(name.encode("utf-8")) + len(res.cid.to_bytes())
        for name, res in entries.items()
        if not (res.is_dir and res.entries)
    )
    if estimate > profile.shard_threshold:

        async def put(block: bytes) -> CID:
            return await store.put_data(block, DAG_PB, profile.cid_version, profile.hash_code)

        cid, size = await hamt.build_hamt(
            {name: (res.cid, res.size) for name, res in entries.items()}, put
        )
        return ImportResult(cid, size, 0, is_dir=True, entries=len(entries))
    links = [dagpb.PBLink(res.cid, name, res.size) for name, res in entries.items()]
    # Sorting and encoding up to a MiB of links is ~100 ms of CPU: not on the event loop.
    block = await asyncio.to_thread(_encode_directory, links)
    if len(block) > 1024 * 1024:
        # helia would switch to a HAMT-sharded directory well before this; we do not build
        # shards yet, and a block over 1 MiB would not travel well over Bitswap.
        raise UsageError(f"directory with {len(entries)} entries needs HAMT sharding (unsupported)")
    cid = await store.put_data(block, DAG_PB, profile.cid_version, profile.hash_code)
    size = len(block) + sum(link.tsize or 0 for link in links)
    return ImportResult(cid, size, 0, is_dir=True, entries=len(entries))


def _encode_directory(links: list[dagpb.PBLink]) -> bytes:
    node = dagpb.PBNode(tuple(dagpb.sort_links(links)), UnixFSData(DataType.DIRECTORY).encode())
    return dagpb.encode(node)


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UsageError(f"invalid entry name {name!r}")


async def import_path(
    store: Blockstore,
    path: str | os.PathLike[str],
    profile: ImportProfile = DEFAULT_PROFILE,
    progress: ProgressFn | None = None,
) -> ImportResult:
    """Import a file, or a directory tree (recursively; symbolic links are skipped)."""
    p = Path(path)
    kind, children = await asyncio.to_thread(_scan, p)
    if kind == "file":
        return await import_file(store, p, profile, progress)
    entries: dict[str, ImportResult] = {}
    for child in children:
        entries[child.name] = await import_path(store, child, profile, progress)
    return await make_directory(store, entries, profile)


def _scan(p: Path) -> tuple[str, list[Path]]:
    """What ``p`` is, and for a directory its entries (sorted, symbolic links left out)."""
    if p.is_symlink():
        raise UsageError(f"{p} is a symbolic link")
    if p.is_file():
        return "file", []
    if not p.is_dir():
        raise UsageError(f"{p} is neither a file nor a directory")
    children = []
    for child in sorted(p.iterdir()):
        if child.is_symlink():
            log.info("skipping symbolic link %s", child)
            continue
        children.append(child)
    return "dir", children

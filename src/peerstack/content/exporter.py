"""Read UnixFS content back: stream a file (or a byte range of it), list and export directories.

Blocks come from anything with ``async get(cid) -> bytes`` (the blockstore, or a Bitswap session
that fetches on demand). Every node is checked as it is read: the ``blocksizes`` must match the
links one to one and add up to ``filesize``, a child must hold as many bytes as its parent says,
and the tree depth is bounded, so a malicious DAG cannot make us loop, lie about sizes or buffer
without end. HAMT-sharded directories are bounded too (depth, sub-shard count, no sub-shard read
twice), since empty sub-shards add work without adding entries. Names that would escape an
export folder (``..``, absolute paths, separators) are refused with ``UnsafeName``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from peerstack.content import dagpb, unixfs
from peerstack.content.unixfs import DataType, MalformedUnixFS
from peerstack.core.cid import CID, DAG_PB, RAW
from peerstack.errors import DecodeError, LimitExceeded, PeerstackError, UsageError

MAX_DEPTH = 64


class BlockGetter(Protocol):
    async def get(self, cid: CID) -> bytes: ...


class UnsafeName(DecodeError):
    """A directory entry name that could escape the export target."""


class NotAFile(UsageError):
    """``cat`` on a directory, or ``ls`` on a file."""


class UnsupportedNode(DecodeError):
    """A node we cannot export (HAMT-sharded directories, symlinks, dag-cbor, ...)."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    cid: CID
    is_dir: bool
    size: int | None  # file size when known from the node itself


def check_name(name: str) -> str:
    """Return ``name`` if it is a plain single path component, else raise ``UnsafeName``."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or (len(name) >= 2 and name[1] == ":")  # a Windows drive: "C:evil"
    ):
        raise UnsafeName(f"refusing entry name {name!r}")
    return name


# dag-pb decoding is pure Python, ~0.4 ms per KiB of links (a 1024-link node takes ~20 ms): a
# node bigger than this is decoded in a worker thread, a smaller one faster than a thread trip.
DECODE_INLINE_MAX = 16 * 1024


async def decode_dagpb(block: bytes) -> dagpb.PBNode:
    """``dagpb.decode``, in a worker thread when the node is big enough to stall the loop."""
    if len(block) <= DECODE_INLINE_MAX:
        return dagpb.decode(block)
    return await asyncio.to_thread(dagpb.decode, block)


async def _node(getter: BlockGetter, cid: CID) -> tuple[dagpb.PBNode, unixfs.UnixFSData]:
    if cid.codec != DAG_PB:
        raise UnsupportedNode(f"{cid} is not dag-pb")
    block = await getter.get(cid)
    node = await decode_dagpb(block)
    if node.data is None:
        raise MalformedUnixFS(f"{cid}: dag-pb node without UnixFS data")
    return node, unixfs.decode(node.data)


async def stat(getter: BlockGetter, cid: CID) -> Entry:
    if cid.codec == RAW:
        return Entry("", cid, False, len(await getter.get(cid)))
    _, data = await _node(getter, cid)
    if data.type in (DataType.DIRECTORY, DataType.HAMT_SHARD):
        return Entry("", cid, True, None)
    if data.type in (DataType.FILE, DataType.RAW):
        return Entry("", cid, False, data.file_size())
    raise UnsupportedNode(f"UnixFS type {data.type.name} is not supported")


def _check_file_node(cid: CID, node: dagpb.PBNode, data: unixfs.UnixFSData) -> None:
    if data.type not in (DataType.FILE, DataType.RAW):
        raise NotAFile(f"{cid} is a {data.type.name.lower()}, not a file")
    if len(data.blocksizes) != len(node.links):
        raise MalformedUnixFS(
            f"{cid}: {len(data.blocksizes)} blocksizes for {len(node.links)} links"
        )
    if data.filesize is not None and data.filesize != data.file_size():
        raise MalformedUnixFS(f"{cid}: filesize {data.filesize} != data + blocksizes")


async def cat(
    getter: BlockGetter, cid: CID, offset: int = 0, length: int | None = None
) -> AsyncIterator[bytes]:
    """The bytes of the file at ``cid`` from ``offset``, at most ``length`` of them.

    Subtrees that lie wholly outside the range are never fetched.
    """
    if offset < 0 or (length is not None and length < 0):
        raise UsageError("offset and length must not be negative")
    end = None if length is None else offset + length
    async for piece in _cat(getter, cid, (offset, end), None, 0):
        yield piece


async def _cat(
    getter: BlockGetter, cid: CID, span: tuple[int, int | None], expected: int | None, depth: int
) -> AsyncIterator[bytes]:
    """Yield bytes [start, end) of the subtree at ``cid``, which must hold ``expected`` bytes."""
    start, end = span
    if depth > MAX_DEPTH:
        raise MalformedUnixFS("UnixFS tree too deep")
    if cid.codec == RAW:
        block = await getter.get(cid)
        if expected is not None and len(block) != expected:
            raise MalformedUnixFS(f"{cid}: raw leaf of {len(block)} bytes, parent says {expected}")
        piece = block[start:end]
        if piece:
            yield piece
        return
    node, data = await _node(getter, cid)
    _check_file_node(cid, node, data)
    if expected is not None and data.file_size() != expected:
        raise MalformedUnixFS(f"{cid}: holds {data.file_size()} bytes, parent says {expected}")
    pos = 0
    inline = data.data
    if inline:
        piece = inline[max(start, 0) : end]
        if piece:
            yield piece
        pos = len(inline)
    for link, size in zip(node.links, data.blocksizes, strict=True):
        child_start, child_end = pos, pos + size
        pos = child_end
        if child_end <= start:
            continue
        if end is not None and child_start >= end:
            break
        if size == 0:
            continue  # holds no bytes: never fetched, so links to empty nodes cost nothing
        sub_start = max(start - child_start, 0)
        sub_end = None if end is None else min(end - child_start, size)
        async for piece in _cat(getter, link.hash, (sub_start, sub_end), size, depth + 1):
            yield piece


MAX_HAMT_FANOUT = 1024  # the spec's bound (CVE-2023-23625)
MAX_DIRECTORY_ENTRIES = 1 << 20
# Sub-shard nodes one listing may read. A real HAMT has fewer shards than entries (each
# sub-shard holds at least two), so this bound never stops an honest directory that
# MAX_DIRECTORY_ENTRIES lets through; it stops a DAG of empty sub-shards, which adds no entries.
MAX_HAMT_SHARDS = MAX_DIRECTORY_ENTRIES
HAMT_HASH_BITS = 64  # murmur3-x64-64, the only hashType UnixFS defines
MURMUR3_X64_64 = 0x22
_HEX = frozenset("0123456789ABCDEF")


async def ls(getter: BlockGetter, cid: CID, *, max_shards: int = MAX_HAMT_SHARDS) -> list[Entry]:
    """The entries of a UnixFS directory (flat or HAMT-sharded), names checked.

    A sharded directory reads at most ``max_shards`` sub-shard nodes (``DirectoryTooLarge``
    past that).
    """
    return await _ls(getter, cid, [max_shards])


async def _ls(getter: BlockGetter, cid: CID, shard_budget: list[int]) -> list[Entry]:
    node, data = await _node(getter, cid)
    named: list[tuple[str, CID]] = []
    if data.type == DataType.DIRECTORY:
        named = [(link.name or "", link.hash) for link in node.links]
    elif data.type == DataType.HAMT_SHARD:
        walk = _HamtWalk(getter, _hamt_fanout(cid, data), shard_budget)
        walk.visited.add(cid)
        await walk.collect(cid, node, 0)
        named = walk.out
    else:
        raise NotAFile(f"{cid} is not a directory")
    if len(named) <= _CHECK_INLINE_MAX:
        return _entries(cid, named)
    return await asyncio.to_thread(_entries, cid, named)  # up to a million names to check


_CHECK_INLINE_MAX = 1024


def _entries(cid: CID, named: list[tuple[str, CID]]) -> list[Entry]:
    """Checked, de-duplicated entries, sorted by name bytes."""
    out = []
    seen: set[str] = set()
    for raw_name, child in named:
        name = check_name(raw_name)
        if name in seen:
            raise MalformedUnixFS(f"{cid}: duplicate entry {name!r}")
        seen.add(name)
        out.append(Entry(name, child, False, None))
    return sorted(out, key=lambda e: e.name.encode())


class DirectoryTooLarge(LimitExceeded):
    """A directory with more entries, or a HAMT with more sub-shards, than we read."""


def _hamt_fanout(cid: CID, data: unixfs.UnixFSData) -> int:
    fanout = data.fanout
    if fanout is None or fanout < 8 or fanout > MAX_HAMT_FANOUT or fanout & (fanout - 1):
        raise MalformedUnixFS(f"{cid}: invalid HAMT fanout {fanout}")
    if data.hash_type != MURMUR3_X64_64:
        raise MalformedUnixFS(f"{cid}: HAMT hashType {data.hash_type} is not murmur3-x64-64")
    return fanout


class _HamtWalk:
    """One walk over a HAMT-sharded directory, bounded however the shards are arranged.

    Each level of the trie takes the next log2(fanout) bits of a 64-bit hash, so a HAMT is at
    most ceil(64 / log2(fanout)) levels deep (8 for the usual 256). The sub-shards of one
    directory share its fanout, every sub-shard read counts against a budget, and a sub-shard
    CID seen twice in one walk is refused: a DAG that links the same few (possibly empty)
    shards many times over would otherwise make billions of reads from a handful of blocks.
    """

    def __init__(self, getter: BlockGetter, fanout: int, shard_budget: list[int]) -> None:
        self.getter = getter
        self.fanout = fanout
        self.width = len(f"{fanout - 1:X}")
        bits = fanout.bit_length() - 1
        self.max_levels = -(-HAMT_HASH_BITS // bits)
        self.budget = shard_budget
        self.visited: set[CID] = set()
        self.out: list[tuple[str, CID]] = []

    async def collect(self, cid: CID, node: dagpb.PBNode, depth: int) -> None:
        """Add the entries of the shard ``node`` (at ``depth``, the root being 0) and below.

        Every link name starts with the bucket index in upper-case hex, padded to the width
        of ``fanout - 1``: a name that is only the prefix points to a sub-shard, a longer one
        to an entry whose name follows the prefix.
        """
        width, fanout = self.width, self.fanout
        for link in node.links:
            name = link.name or ""
            prefix = name[:width]
            if len(prefix) != width or not set(prefix) <= _HEX or int(prefix, 16) >= fanout:
                raise MalformedUnixFS(f"{cid}: bad HAMT link name {name!r}")
            if len(name) > width:
                self.out.append((name[width:], link.hash))
                if len(self.out) > MAX_DIRECTORY_ENTRIES:
                    raise DirectoryTooLarge("directory has too many entries")
                continue
            sub = link.hash
            if depth + 1 >= self.max_levels:
                raise MalformedUnixFS(
                    f"{cid}: HAMT deeper than {self.max_levels} levels (64 hash bits)"
                )
            if sub in self.visited:
                raise MalformedUnixFS(f"{cid}: HAMT sub-shard {sub} linked more than once")
            self.visited.add(sub)
            self.budget[0] -= 1
            if self.budget[0] < 0:
                raise DirectoryTooLarge("HAMT has too many sub-shards")
            sub_node, sub_data = await _node(self.getter, sub)
            if sub_data.type != DataType.HAMT_SHARD:
                raise MalformedUnixFS(f"{sub}: HAMT sub-shard of type {sub_data.type.name}")
            if _hamt_fanout(sub, sub_data) != fanout:
                raise MalformedUnixFS(f"{sub}: sub-shard fanout differs from its parent's")
            await self.collect(sub, sub_node, depth + 1)


async def export(
    getter: BlockGetter, cid: CID, target: str | os.PathLike[str], max_entries: int = 1_000_000
) -> None:
    """Write the file or directory tree at ``cid`` to ``target`` (which must not exist).

    Files are written under a temporary name in the same folder and renamed when complete, so
    an interrupted export never leaves a truncated file under the final name.
    """
    dest = Path(target)
    if await asyncio.to_thread(os.path.lexists, dest):
        raise UsageError(f"{dest} already exists")
    await _export(getter, cid, dest, 0, [max_entries])


class TooManyEntries(PeerstackError):
    """An export would create more files and folders than allowed (a DAG can reuse subtrees)."""


async def _export(getter: BlockGetter, cid: CID, dest: Path, depth: int, budget: list[int]) -> None:
    if depth > MAX_DEPTH:
        raise MalformedUnixFS("directory tree too deep")
    budget[0] -= 1
    if budget[0] < 0:
        raise TooManyEntries("export would create too many files and folders")
    info = await stat(getter, cid)
    if not info.is_dir:
        await write_file(getter, cid, dest)
        return
    # Sub-shards of sharded directories count against the same budget as files and folders:
    # reading them is work a DAG can multiply without adding a single entry.
    entries = await _ls(getter, cid, budget)
    await asyncio.to_thread(dest.mkdir)
    for entry in entries:
        child = dest / entry.name
        # Belt and braces: the name check above already makes this impossible.
        if child.parent != dest:
            raise UnsafeName(f"refusing entry name {entry.name!r}")
        await _export(getter, entry.cid, child, depth + 1, budget)


async def write_file(getter: BlockGetter, cid: CID, dest: Path) -> int:
    """Stream the file at ``cid`` into ``dest`` via a temp file + rename; return its size."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    fh: BinaryIO = await asyncio.to_thread(open, tmp, "xb")
    total = 0
    try:
        async for piece in cat(getter, cid):
            await asyncio.to_thread(fh.write, piece)
            total += len(piece)
        await asyncio.to_thread(fh.flush)
        await asyncio.to_thread(os.fsync, fh.fileno())
    except BaseException:
        fh.close()
        tmp.unlink(missing_ok=True)
        raise
    fh.close()
    await asyncio.to_thread(os.replace, tmp, dest)
    return total

"""HAMT-sharded UnixFS directories (building them; the exporter reads them).

A directory whose entries would make too big a node is split into a hash array mapped trie:
each entry name is hashed with murmur3-x64-64 (the first 64 bits of murmur3-x64-128, seed 0),
and each level of the trie uses the next 8 bits (fanout 256), most significant byte first. A
bucket that one entry falls into holds a link named ``<2 hex digits><entry name>``; a bucket
that several entries fall into holds a sub-shard, linked under the 2 hex digits alone. The shard
node's UnixFS data carries the occupied buckets as a bitfield (big-endian, minimal length),
``fanout`` and ``hashType`` 0x22. This is the layout go-unixfs, kubo and helia produce, so the
same entries give the same CID.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from peerstack.content import dagpb
from peerstack.content.unixfs import DataType, UnixFSData
from peerstack.core.cid import CID
from peerstack.errors import UsageError

MURMUR3_X64_64 = 0x22
DEFAULT_FANOUT_BITS = 8
_M = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M
    k ^= k >> 33
    return k


def murmur3_x64_128(data: bytes, seed: int = 0) -> tuple[int, int]:
    """MurmurHash3 x64 128-bit: the pair (h1, h2)."""
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F
    h1 = h2 = seed
    n = len(data)
    nblocks = n // 16
    for i in range(nblocks):
        k1 = int.from_bytes(data[16 * i : 16 * i + 8], "little")
        k2 = int.from_bytes(data[16 * i + 8 : 16 * i + 16], "little")
        h1 ^= (_rotl((k1 * c1) & _M, 31) * c2) & _M
        h1 = (((_rotl(h1, 27) + h2) & _M) * 5 + 0x52DCE729) & _M
        h2 ^= (_rotl((k2 * c2) & _M, 33) * c1) & _M
        h2 = (((_rotl(h2, 31) + h1) & _M) * 5 + 0x38495AB5) & _M
    tail = data[nblocks * 16 :]
    if len(tail) > 8:
        h2 ^= (_rotl((int.from_bytes(tail[8:], "little") * c2) & _M, 33) * c1) & _M
    if tail:
        h1 ^= (_rotl((int.from_bytes(tail[:8], "little") * c1) & _M, 31) * c2) & _M
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    return h1, h2


def hamt_hash(name: str) -> int:
    """The 64-bit HAMT hash of an entry name."""
    return murmur3_x64_128(name.encode("utf-8"))[0]


@dataclass(slots=True)
class _Bucket:
    depth: int
    slots: dict[int, tuple[str, CID, int] | _Bucket] = field(default_factory=dict)


def _index(h: int, depth: int, bits: int) -> int:
    shift = 64 - bits * (depth + 1)
    if shift < 0:
        # 64 bits give 8 levels of 256: two names would need the same first 64 hash bits
        raise UsageError("HAMT deeper than the 64-bit hash allows")
    return (h >> shift) & ((1 << bits) - 1)


def _insert(bucket: _Bucket, name: str, h: int, entry: tuple[str, CID, int], bits: int) -> None:
    i = _index(h, bucket.depth, bits)
    current = bucket.slots.get(i)
    if current is None:
        bucket.slots[i] = entry
        return
    if isinstance(current, _Bucket):
        _insert(current, name, h, entry, bits)
        return
    # a collision on this level: both entries move down into a new sub-shard
    sub = _Bucket(bucket.depth + 1)
    bucket.slots[i] = sub
    _insert(sub, current[0], hamt_hash(current[0]), current, bits)
    _insert(sub, name, h, entry, bits)


PutNode = Callable[[bytes], Awaitable[CID]]


async def build_hamt(
    entries: dict[str, tuple[CID, int]], put: PutNode, bits: int = DEFAULT_FANOUT_BITS
) -> tuple[CID, int]:
    """Store the HAMT for ``entries`` (name -> (cid, tsize)); return its root CID and Tsize."""
    if not 3 <= bits <= 10:
        raise UsageError("HAMT fanout must be 2**3 .. 2**10")
    # Hashing every name (pure Python murmur3, ~7 us each) and building the trie is CPU work
    # that grows with the directory: about a second for 100,000 names, so off the event loop.
    # The shard nodes are then encoded one at a time (at most ``fanout`` links each).
    root = await asyncio.to_thread(_trie, entries, bits)
    return await _flush(root, put, bits)


def _trie(entries: dict[str, tuple[CID, int]], bits: int) -> _Bucket:
    root = _Bucket(0)
    for name, (cid, tsize) in entries.items():
        _insert(root, name, hamt_hash(name), (name, cid, tsize), bits)
    return root


async def _flush(bucket: _Bucket, put: PutNode, bits: int) -> tuple[CID, int]:
    fanout = 1 << bits
    width = len(f"{fanout - 1:X}")
    links: list[dagpb.PBLink] = []
    occupied = 0
    for i in sorted(bucket.slots):
        occupied |= 1 << i
        label = f"{i:0{width}X}"
        slot = bucket.slots[i]
        if isinstance(slot, _Bucket):
            cid, size = await _flush(slot, put, bits)
            links.append(dagpb.PBLink(cid, label, size))
        else:
            name, cid, size = slot
            links.append(dagpb.PBLink(cid, label + name, size))
    bitfield = occupied.to_bytes(max(1, (occupied.bit_length() + 7) // 8), "big")
    data = UnixFSData(DataType.HAMT_SHARD, data=bitfield, hash_type=MURMUR3_X64_64, fanout=fanout)
    block = dagpb.encode(dagpb.PBNode(tuple(dagpb.sort_links(links)), data.encode()))
    cid = await put(block)
    return cid, len(block) + sum(link.tsize or 0 for link in links)

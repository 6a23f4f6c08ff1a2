"""The UnixFS ``Data`` protobuf (the payload of every dag-pb UnixFS node), hand-encoded.

    message Data {
      // Type: Raw 0, Directory 1, File 2, Metadata 3, Symlink 4, HAMTShard 5
      required DataType Type = 1;
      optional bytes Data = 2;
      optional uint64 filesize = 3;
      repeated uint64 blocksizes = 4;  // one per link, in link order (not packed)
      optional uint64 hashType = 5;
      optional uint64 fanout = 6;
      optional uint32 mode = 7;
      optional UnixTime mtime = 8;
    }
    message UnixTime { required int64 Seconds = 1; optional fixed32 FractionalNanoseconds = 2; }

The encoder writes what helia's ``ipfs-unixfs`` writes: ``Data`` only when non-empty, ``filesize``
for files and raw nodes (even when zero), never for directories.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from peerstack.content import _pb
from peerstack.errors import DecodeError, UsageError

# A node with more block sizes than this cannot fit in a 2 MiB block anyway (each takes >= 2 bytes).
MAX_BLOCKSIZES = 1 << 20


class MalformedUnixFS(DecodeError):
    """A UnixFS Data message that does not parse or contradicts itself."""


class DataType(enum.IntEnum):
    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(frozen=True, slots=True)
class UnixTime:
    seconds: int
    nanos: int | None = None


@dataclass(frozen=True, slots=True)
class UnixFSData:
    type: DataType
    data: bytes = b""
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: UnixTime | None = None

    def file_size(self) -> int:
        """Size of the file bytes under this node (inline data plus its children)."""
        return len(self.data) + sum(self.blocksizes)

    def encode(self) -> bytes:
        out = bytearray()
        _pb.put_varint(out, 1, int(self.type))
        if self.data:
            _pb.put_bytes(out, 2, self.data)
        if self.type in (DataType.FILE, DataType.RAW):
            _pb.put_varint(out, 3, self.file_size() if self.filesize is None else self.filesize)
        elif self.filesize is not None:
            _pb.put_varint(out, 3, self.filesize)
        for size in self.blocksizes:
            _pb.put_varint(out, 4, size)
        if self.hash_type is not None:
            _pb.put_varint(out, 5, self.hash_type)
        if self.fanout is not None:
            _pb.put_varint(out, 6, self.fanout)
        if self.mode is not None:
            if not 0 <= self.mode < 1 << 32:
                raise UsageError("mode out of range")
            _pb.put_varint(out, 7, self.mode)
        if self.mtime is not None:
            t = bytearray()
            _pb.put_int(t, 1, self.mtime.seconds)
            if self.mtime.nanos is not None:
                t += _pb.key(2, _pb.I32)
                t += self.mtime.nanos.to_bytes(4, "little")
            _pb.put_bytes(out, 8, t)
        return bytes(out)


def _decode_mtime(data: memoryview) -> UnixTime:
    seconds: int | None = None
    nanos: int | None = None
    for field, wt, value in _pb.fields(data):
        if field == 1:
            seconds = _pb.to_int64(_pb.as_int(value, wt))
        elif field == 2:
            nanos = _pb.as_int(value, wt, _pb.I32)
            if not 1 <= nanos <= 999_999_999:
                raise MalformedUnixFS("mtime nanoseconds out of range")
    if seconds is None:
        raise MalformedUnixFS("mtime without Seconds")
    return UnixTime(seconds, nanos)


def decode(data: bytes | bytearray | memoryview) -> UnixFSData:
    """Parse a UnixFS Data message; unknown fields are skipped, as protobuf allows."""
    type_: int | None = None
    payload = b""
    filesize: int | None = None
    blocksizes: list[int] = []
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: UnixTime | None = None
    try:
        for field, wt, value in _pb.fields(data):
            if field == 1:
                type_ = _pb.as_int(value, wt)
            elif field == 2:
                payload = bytes(_pb.as_bytes(value, wt))
            elif field == 3:
                filesize = _pb.as_int(value, wt)
            elif field == 4:
                if wt == _pb.LEN:  # tolerate the packed encoding on input
                    for _f, _w, v in _packed(_pb.as_bytes(value, wt)):
                        blocksizes.append(v)
                else:
                    blocksizes.append(_pb.as_int(value, wt))
                if len(blocksizes) > MAX_BLOCKSIZES:
                    raise MalformedUnixFS("too many blocksizes")
            elif field == 5:
                hash_type = _pb.as_int(value, wt)
            elif field == 6:
                fanout = _pb.as_int(value, wt)
            elif field == 7:
                mode = _pb.as_int(value, wt)
                if mode >= 1 << 32:
                    raise MalformedUnixFS("mode out of range")
            elif field == 8:
                mtime = _decode_mtime(_pb.as_bytes(value, wt))
    except MalformedUnixFS:
        raise
    except DecodeError as exc:
        raise MalformedUnixFS(str(exc)) from None
    if type_ is None:
        raise MalformedUnixFS("UnixFS Data without Type")
    try:
        dtype = DataType(type_)
    except ValueError:
        raise MalformedUnixFS(f"unknown UnixFS type {type_}") from None
    return UnixFSData(dtype, payload, filesize, tuple(blocksizes), hash_type, fanout, mode, mtime)


def _packed(data: memoryview) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    i = 0
    while i < len(data):
        v, i = _pb.read_uvarint64(data, i)
        out.append((4, _pb.VARINT, v))
    return out

"""A minimal protobuf wire reader and writer for the hand-encoded messages of this package.

dag-pb needs a field order that generic encoders do not produce (Links before Data) and a strict
decoder, and UnixFS / Bitswap are small enough that hand-encoding is simpler than generated code.
The reader bounds everything: lengths are checked against the buffer before slicing.
"""

from __future__ import annotations

from collections.abc import Iterator

from peerstack.core import varint
from peerstack.errors import DecodeError

VARINT = 0
I64 = 1
LEN = 2
I32 = 5


def key(field: int, wire_type: int) -> bytes:
    return varint.encode((field << 3) | wire_type)


def put_varint(out: bytearray, field: int, value: int) -> None:
    out += key(field, VARINT)
    out += varint.encode(value)


def put_int(out: bytearray, field: int, value: int) -> None:
    """An int32/int64 field: negative values take ten bytes (two's complement), as protobuf does."""
    out += key(field, VARINT)
    if value < 0:
        value += 1 << 64
        enc = bytearray()
        while value >= 0x80:
            enc.append((value & 0x7F) | 0x80)
            value >>= 7
        enc.append(value)
        out += enc
    else:
        out += varint.encode(value)


def put_bytes(out: bytearray, field: int, value: bytes | bytearray | memoryview) -> None:
    out += key(field, LEN)
    out += varint.encode(len(value))
    out += value


def read_uvarint64(data: memoryview, i: int) -> tuple[int, int]:
    """A protobuf varint (up to 10 bytes, 64 bits); the 9-byte multiformats bound is too tight."""
    value = 0
    shift = 0
    start = i
    n = len(data)
    while True:
        if i >= n:
            raise DecodeError("truncated protobuf varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if value >= 1 << 64:
                raise DecodeError("protobuf varint overflows 64 bits")
            return value, i
        shift += 7
        if i - start >= 10:
            raise DecodeError("protobuf varint longer than 10 bytes")


Field = tuple[int, int, int | memoryview]


def fields(data: bytes | bytearray | memoryview) -> Iterator[Field]:
    """Yield ``(field_number, wire_type, value)``; value is an int or a memoryview slice.

    Raises ``DecodeError`` on truncation, field number 0, or group / unknown wire types.
    """
    mv = memoryview(data)
    i = 0
    n = len(mv)
    while i < n:
        tag, i = read_uvarint64(mv, i)
        field, wt = tag >> 3, tag & 7
        if field == 0 or field > (1 << 29) - 1:
            raise DecodeError(f"invalid protobuf field number {field}")
        if wt == VARINT:
            value, i = read_uvarint64(mv, i)
            yield field, wt, value
        elif wt == LEN:
            length, i = read_uvarint64(mv, i)
            if length > n - i:
                raise DecodeError("protobuf length runs past the end")
            yield field, wt, mv[i : i + length]
            i += length
        elif wt == I64:
            if i + 8 > n:
                raise DecodeError("truncated fixed64")
            yield field, wt, int.from_bytes(mv[i : i + 8], "little")
            i += 8
        elif wt == I32:
            if i + 4 > n:
                raise DecodeError("truncated fixed32")
            yield field, wt, int.from_bytes(mv[i : i + 4], "little")
            i += 4
        else:
            raise DecodeError(f"unsupported protobuf wire type {wt}")


def as_int(value: int | memoryview, wire_type: int, expected: int = VARINT) -> int:
    if wire_type != expected or not isinstance(value, int):
        raise DecodeError(f"expected wire type {expected}, got {wire_type}")
    return value


def as_bytes(value: int | memoryview, wire_type: int) -> memoryview:
    if wire_type != LEN or isinstance(value, int):
        raise DecodeError(f"expected a length-delimited field, got wire type {wire_type}")
    return value


def to_int32(value: int) -> int:
    """A decoded varint as a signed int32 (negatives arrive as 64-bit two's complement)."""
    if value >= 1 << 63:
        value -= 1 << 64
    if not -(1 << 31) <= value < 1 << 31:
        raise DecodeError("int32 field out of range")
    return value


def to_int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value

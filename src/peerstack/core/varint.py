"""Unsigned LEB128 varints (multiformats unsigned-varint), bounded to 9 bytes / 63 bits."""

from __future__ import annotations

from peerstack.errors import DecodeError, UsageError

# The multiformats spec caps varints at 9 bytes (63 bits) so that no parser has to deal with
# unbounded integers coming from a peer.
MAX_VARINT_BYTES = 9
MAX_VARINT = (1 << 63) - 1


def encode(value: int) -> bytes:
    """Encode a non-negative integer as an unsigned varint."""
    if value < 0 or value > MAX_VARINT:
        raise UsageError(f"varint out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Decode a varint at ``offset``; return ``(value, new_offset)``.

    Raises ``DecodeError`` when the varint is truncated, too long or not minimally encoded.
    """
    value, end = try_decode(data, offset)
    if end < 0:
        raise DecodeError("truncated varint")
    return value, end


def try_decode(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Like ``decode`` but return ``(0, -1)`` when more bytes are needed.

    Used by incremental parsers that buffer input: a missing tail is not an error yet, while an
    over-long or non-minimal varint is.
    """
    value = 0
    shift = 0
    n = len(data)
    i = offset
    while True:
        if i >= n:
            return 0, -1
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and i - offset > 1:
                raise DecodeError("varint is not minimally encoded")
            return value, i
        shift += 7
        if i - offset >= MAX_VARINT_BYTES:
            raise DecodeError("varint longer than 9 bytes")

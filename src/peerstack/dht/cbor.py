"""A minimal, strict DAG-CBOR encoder and decoder (the subset IPNS records need).

Supported: unsigned and negative integers (64-bit), byte strings, text strings, arrays, maps
with text keys, booleans and null. The encoder writes the canonical form (shortest integer
encodings, definite lengths, map keys sorted by length then bytewise); the decoder accepts only
that form, so signed bytes have exactly one meaning. Floats and tags (including CIDs) are
refused: IPNS data does not use them.
"""

from __future__ import annotations

from typing import TypeAlias

from peerstack.errors import DecodeError, UsageError

CborValue: TypeAlias = "int | bytes | str | bool | list[CborValue] | dict[str, CborValue] | None"

MAX_DEPTH = 16
_MAX_UINT = 2**64 - 1


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    if value < 0x100:
        return bytes([major << 5 | 24, value])
    if value < 0x10000:
        return bytes([major << 5 | 25]) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes([major << 5 | 26]) + value.to_bytes(4, "big")
    return bytes([major << 5 | 27]) + value.to_bytes(8, "big")


def _key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return (len(raw), raw)


def encode(value: CborValue) -> bytes:
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(value: CborValue, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise UsageError("CBOR value nested too deeply")
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        if value >= 0:
            if value > _MAX_UINT:
                raise UsageError("integer out of CBOR range")
            out += _head(0, value)
        else:
            if -1 - value > _MAX_UINT:
                raise UsageError("integer out of CBOR range")
            out += _head(1, -1 - value)
    elif isinstance(value, bytes):
        out += _head(2, len(value))
        out += value
    elif isinstance(value, str):
        raw = value.encode()
        out += _head(3, len(raw))
        out += raw
    elif isinstance(value, list):
        out += _head(4, len(value))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        out += _head(5, len(value))
        for key in sorted(value, key=_key_order):
            if not isinstance(key, str):
                raise UsageError("DAG-CBOR map keys must be strings")
            _encode(key, out, depth + 1)
            _encode(value[key], out, depth + 1)
    else:
        raise UsageError(f"cannot encode {type(value).__name__} as DAG-CBOR")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError("CBOR data ends early")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def head(self) -> tuple[int, int]:
        first = self.take(1)[0]
        major, info = first >> 5, first & 0x1F
        if major == 7:
            return major, info
        if info < 24:
            return major, info
        if info > 27:
            raise DecodeError("indefinite or reserved CBOR length")
        size = 1 << (info - 24)
        value = int.from_bytes(self.take(size), "big")
        minimum = 24 if size == 1 else 1 << (4 * size)
        if value < minimum:
            raise DecodeError("CBOR integer not in its shortest form")
        return major, value


def decode(data: bytes) -> CborValue:
    """Parse exactly one canonical DAG-CBOR value; raises ``DecodeError`` otherwise."""
    reader = _Reader(bytes(data))
    value = _decode(reader, 0)
    if reader.pos != len(reader.data):
        raise DecodeError("trailing bytes after CBOR value")
    return value


def _decode(r: _Reader, depth: int) -> CborValue:
    if depth > MAX_DEPTH:
        raise DecodeError("CBOR nested too deeply")
    major, arg = r.head()
    if major == 0:
        return arg
    if major == 1:
        return -1 - arg
    if major == 2:
        return r.take(arg)
    if major == 3:
        try:
            return r.take(arg).decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("CBOR text is not UTF-8") from None
    if major == 4:
        if arg > len(r.data) - r.pos:  # every item takes at least one byte
            raise DecodeError("CBOR array longer than the data")
        return [_decode(r, depth + 1) for _ in range(arg)]
    if major == 5:
        if 2 * arg > len(r.data) - r.pos:
            raise DecodeError("CBOR map longer than the data")
        out: dict[str, CborValue] = {}
        previous: tuple[int, bytes] | None = None
        for _ in range(arg):
            key = _decode(r, depth + 1)
            if not isinstance(key, str):
                raise DecodeError("DAG-CBOR map keys must be strings")
            order = _key_order(key)
            if previous is not None and order <= previous:
                raise DecodeError("DAG-CBOR map keys unsorted or repeated")
            previous = order
            out[key] = _decode(r, depth + 1)
        return out
    if major == 6:
        raise DecodeError("CBOR tags are not supported here")
    # major 7: simple values and floats
    if arg == 20:
        return False
    if arg == 21:
        return True
    if arg == 22:
        return None
    raise DecodeError(f"unsupported CBOR simple value or float ({arg})")

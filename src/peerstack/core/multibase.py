"""Multibase: a one-character prefix naming the base of the text that follows.

Supported: base58btc (``z``), base32 lower-case without padding (``b``), base36 lower-case
(``k``), base16 (``f``) and base64 without padding (``m``).
"""

from __future__ import annotations

import base64
import binascii

from peerstack.core import base58
from peerstack.errors import DecodeError, UsageError

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
MAX_ENCODED_LENGTH = 4096


def _b36_encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    chars = []
    while num:
        num, rem = divmod(num, 36)
        chars.append(_B36[rem])
    return "0" * zeros + "".join(reversed(chars))


def _b36_decode(text: str) -> bytes:
    text = text.lower()
    num = 0
    for c in text:
        v = _B36.find(c)
        if v < 0:
            raise DecodeError(f"invalid base36 character {c!r}")
        num = num * 36 + v
    zeros = len(text) - len(text.lstrip("0"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def encode(data: bytes, base: str = "base32") -> str:
    if base == "base32":
        return "b" + base64.b32encode(data).decode("ascii").rstrip("=").lower()
    if base == "base58btc":
        return "z" + base58.encode(data)
    if base == "base36":
        return "k" + _b36_encode(data)
    if base == "base16":
        return "f" + data.hex()
    if base == "base64":
        return "m" + base64.b64encode(data).decode("ascii").rstrip("=")
    raise UsageError(f"unsupported multibase {base!r}")


def decode(text: str) -> bytes:
    """Decode multibase text; raise ``DecodeError`` for an unknown prefix or bad characters."""
    if not text:
        raise DecodeError("empty multibase string")
    if len(text) > MAX_ENCODED_LENGTH:
        raise DecodeError("multibase string too long")
    prefix, body = text[0], text[1:]
    try:
        if prefix in "bB":
            body = body.upper()
            return base64.b32decode(body + "=" * (-len(body) % 8))
        if prefix == "z":
            return base58.decode(body)
        if prefix in "kK":
            return _b36_decode(body)
        if prefix in "fF":
            return bytes.fromhex(body)
        if prefix == "m":
            return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"invalid multibase text: {exc}") from None
    raise DecodeError(f"unsupported multibase prefix {prefix!r}")

"""base58btc (the Bitcoin alphabet), used for PeerIds and CIDv0."""

from __future__ import annotations

from peerstack.errors import DecodeError

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
# Strings longer than this are not identifiers we accept; the bound keeps the bignum work
# (quadratic in the length) cheap for anything a peer can send.
MAX_ENCODED_LENGTH = 1024


def encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    chars = []
    while num:
        num, rem = divmod(num, 58)
        chars.append(ALPHABET[rem])
    return "1" * zeros + "".join(reversed(chars))


def decode(text: str) -> bytes:
    if len(text) > MAX_ENCODED_LENGTH:
        raise DecodeError("base58 string too long")
    num = 0
    for c in text:
        try:
            num = num * 58 + _INDEX[c]
        except KeyError:
            raise DecodeError(f"invalid base58 character {c!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body

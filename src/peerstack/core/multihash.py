"""Multihash: ``varint(code) || varint(length) || digest``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from peerstack.core import varint
from peerstack.errors import DecodeError, UsageError

IDENTITY = 0x00
SHA2_256 = 0x12
SHA2_512 = 0x13
BLAKE3 = 0x1E

# Digests longer than this are refused from peers: no hash we know is longer, and the identity
# multihash (inline data) is only used for small public keys.
MAX_DIGEST_LENGTH = 128

NAMES = {IDENTITY: "identity", SHA2_256: "sha2-256", SHA2_512: "sha2-512", BLAKE3: "blake3"}


@dataclass(frozen=True, slots=True)
class Multihash:
    code: int
    digest: bytes

    def to_bytes(self) -> bytes:
        return varint.encode(self.code) + varint.encode(len(self.digest)) + self.digest

    @classmethod
    def from_bytes(cls, data: bytes) -> Multihash:
        mh, end = cls.parse(data, 0)
        if end != len(data):
            raise DecodeError("trailing bytes after multihash")
        return mh

    @classmethod
    def parse(cls, data: bytes | memoryview, offset: int = 0) -> tuple[Multihash, int]:
        """Parse a multihash starting at ``offset``; return it and the offset after it."""
        code, i = varint.decode(data, offset)
        length, i = varint.decode(data, i)
        if length > MAX_DIGEST_LENGTH:
            raise DecodeError(f"multihash digest too long: {length}")
        if i + length > len(data):
            raise DecodeError("truncated multihash digest")
        return cls(code, bytes(data[i : i + length])), i + length


def digest(data: bytes | memoryview, code: int = SHA2_256) -> Multihash:
    """Hash ``data`` with the named function and return the multihash."""
    if code == SHA2_256:
        return Multihash(code, hashlib.sha256(data).digest())
    if code == SHA2_512:
        return Multihash(code, hashlib.sha512(data).digest())
    if code == IDENTITY:
        return Multihash(code, bytes(data))
    raise UsageError(f"unsupported hash function 0x{code:x}")

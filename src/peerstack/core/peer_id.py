"""PeerId: the multihash of a peer's public key message.

Keys whose protobuf form is at most 42 bytes (Ed25519, secp256k1) are inlined with the identity
multihash (``12D3KooW...`` in base58btc); larger keys are hashed with sha2-256 (``Qm...``).
Text forms accepted: base58btc multihash, and CIDv1 with the ``libp2p-key`` codec in any
supported multibase (``bafz...``, ``k51...``).
"""

from __future__ import annotations

import functools
import hashlib

from peerstack.core import base58, multibase, multihash, varint
from peerstack.core.identity import PublicKey
from peerstack.errors import DecodeError

LIBP2P_KEY_CODEC = 0x72
MAX_INLINE_KEY_LENGTH = 42
# Longer than any PeerId text form (a sha2-256 id in base32 CID form is ~60 characters).
MAX_TEXT_LENGTH = 256
#: Parsed PeerId texts remembered (dialled addresses and DHT records repeat the same ids).
PARSE_CACHE_SIZE = 4096
_IDENTITY_PREFIX = bytes([multihash.IDENTITY])
_SHA256_PREFIX = bytes([multihash.SHA2_256, 32])


def _multihash_of_key(key: PublicKey) -> bytes:
    """The PeerId bytes of ``key``: identity multihash when short enough, else sha2-256."""
    encoded = key.to_protobuf()
    if len(encoded) <= MAX_INLINE_KEY_LENGTH:
        return _IDENTITY_PREFIX + varint.encode(len(encoded)) + encoded
    return _SHA256_PREFIX + hashlib.sha256(encoded).digest()


class PeerId:
    """An immutable, hashable peer identifier."""

    __slots__ = ("_bytes", "_hash", "_str")

    def __init__(self, mh_bytes: bytes) -> None:
        mh = multihash.Multihash.from_bytes(mh_bytes)
        if mh.code == multihash.SHA2_256:
            if len(mh.digest) != 32:
                raise DecodeError("sha2-256 PeerId must have a 32-byte digest")
        elif mh.code == multihash.IDENTITY:
            if len(mh.digest) > MAX_INLINE_KEY_LENGTH:
                raise DecodeError("inline PeerId key too long")
        else:
            raise DecodeError(f"PeerId multihash must be identity or sha2-256, not 0x{mh.code:x}")
        self._bytes = bytes(mh_bytes)
        self._hash = hash(self._bytes)
        self._str: str | None = None

    @classmethod
    def _trusted(cls, mh_bytes: bytes) -> PeerId:
        """A PeerId from multihash bytes we built ourselves (skips re-parsing them)."""
        obj = cls.__new__(cls)
        obj._bytes = mh_bytes
        obj._hash = hash(mh_bytes)
        obj._str = None
        return obj

    @classmethod
    def from_public_key(cls, key: PublicKey) -> PeerId:
        return cls._trusted(_multihash_of_key(key))

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse base58btc (``12D3KooW...``/``Qm...``) or a CIDv1 ``libp2p-key`` string."""
        if not isinstance(text, str):
            raise DecodeError(f"a PeerId text must be a str, not {type(text).__name__}")
        if len(text) > MAX_TEXT_LENGTH:
            raise DecodeError("PeerId text too long")
        return _parse_text(text)

    @classmethod
    def _from_string(cls, text: str) -> PeerId:
        if text.startswith(("1", "Qm")):
            pid = cls(base58.decode(text))
            # base58btc round-trips exactly, so the text is the canonical form: keep it.
            pid._str = text
            return pid
        raw = multibase.decode(text)
        version, i = varint.decode(raw)
        if version != 1:
            raise DecodeError("a PeerId CID must be CIDv1")
        codec, i = varint.decode(raw, i)
        if codec != LIBP2P_KEY_CODEC:
            raise DecodeError(f"CID codec 0x{codec:x} is not libp2p-key")
        return cls(raw[i:])

    def to_bytes(self) -> bytes:
        return self._bytes

    def to_cid_string(self) -> str:
        """The CIDv1 form in base32 (``bafz...``), as used in IPNS names."""
        return multibase.encode(
            varint.encode(1) + varint.encode(LIBP2P_KEY_CODEC) + self._bytes, "base32"
        )

    def extract_public_key(self) -> PublicKey | None:
        """The public key if it is inlined in the id, else ``None``."""
        mh = multihash.Multihash.from_bytes(self._bytes)
        if mh.code != multihash.IDENTITY:
            return None
        return PublicKey.from_protobuf(mh.digest)

    def matches(self, key: PublicKey) -> bool:
        """Whether ``key`` is this peer's key (compares bytes; no PeerId is built)."""
        return _multihash_of_key(key) == self._bytes

    def __str__(self) -> str:
        if self._str is None:
            self._str = base58.encode(self._bytes)
        return self._str

    def __repr__(self) -> str:
        return f"PeerId({self})"

    def short(self) -> str:
        s = str(self)
        return s[-8:]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerId) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return self._hash

    def __lt__(self, other: PeerId) -> bool:
        return self._bytes < other._bytes


# A bounded memo of ``from_string`` (PeerIds are immutable; failures are not cached).
_parse_text = functools.lru_cache(maxsize=PARSE_CACHE_SIZE)(PeerId._from_string)

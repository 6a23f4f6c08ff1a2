"""Cryptographic identities: key pairs, the libp2p key protobufs, signing and verifying.

Our own keys are always Ed25519. Remote keys may also be RSA, secp256k1 or ECDSA (P-256); we
can verify their signatures so that such peers can still authenticate to us.

The libp2p ``PublicKey``/``PrivateKey`` messages are ``{Type = 1 (enum), Data = 2 (bytes)}``.
They are encoded by hand here because the PeerId is derived from these exact bytes and the spec
demands the deterministic form (fields in order, no unknown fields, no defaults omitted).
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from peerstack.core import varint
from peerstack.core.files import write_private_file
from peerstack.errors import DecodeError, UsageError

# A public key message longer than this is not a key we accept (RSA-8192 in DER is ~1.1 KB).
MAX_KEY_MESSAGE = 2048
#: Parsed public keys remembered (by their protobuf bytes; keys are immutable).
KEY_CACHE_SIZE = 1024
MIN_RSA_BITS = 2048


class KeyType(enum.IntEnum):
    RSA = 0
    ED25519 = 1
    SECP256K1 = 2
    ECDSA = 3


def _encode_key_message(key_type: KeyType, data: bytes) -> bytes:
    return b"\x08" + varint.encode(int(key_type)) + b"\x12" + varint.encode(len(data)) + data


def _decode_key_message(buf: bytes) -> tuple[KeyType, bytes]:
    if len(buf) > MAX_KEY_MESSAGE:
        raise DecodeError("key message too long")
    key_type: int | None = None
    data: bytes | None = None
    i = 0
    while i < len(buf):
        tag, i = varint.decode(buf, i)
        field, wire = tag >> 3, tag & 7
        if field == 1 and wire == 0:
            key_type, i = varint.decode(buf, i)
        elif field == 2 and wire == 2:
            n, i = varint.decode(buf, i)
            if i + n > len(buf):
                raise DecodeError("truncated key data")
            data = buf[i : i + n]
            i += n
        else:
            raise DecodeError(f"unexpected field {field} (wire type {wire}) in key message")
    if key_type is None or data is None:
        raise DecodeError("key message lacks Type or Data")
    try:
        return KeyType(key_type), data
    except ValueError:
        raise DecodeError(f"unknown key type {key_type}") from None


@dataclass(frozen=True)
class PublicKey:
    """A public key of any supported type, kept in its libp2p wire form.

    The protobuf form and the loaded key object are made once and kept: a connection uses
    them several times (PeerId derivation, signature checks, peerstore, identify).
    """

    key_type: KeyType
    data: bytes
    _protobuf: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _loaded: object = field(default=None, init=False, repr=False, compare=False)

    def to_protobuf(self) -> bytes:
        encoded = self._protobuf
        if encoded is None:
            encoded = _encode_key_message(self.key_type, self.data)
            object.__setattr__(self, "_protobuf", encoded)  # a cache, not a change of value
        return encoded

    @classmethod
    def from_protobuf(cls, buf: bytes) -> PublicKey:
        """Parse and validate a ``PublicKey`` message from a peer (raises ``DecodeError``).

        Memoized (bounded, see ``KEY_CACHE_SIZE``): one connection brings the same key in the
        Noise handshake and in identify, and peers come back.
        """
        if len(buf) > MAX_KEY_MESSAGE:
            raise DecodeError("key message too long")
        if type(buf) is not bytes:
            buf = bytes(buf)
        return _parse_public_key(buf)

    @classmethod
    def _from_protobuf(cls, buf: bytes) -> PublicKey:
        key_type, data = _decode_key_message(buf)
        key = cls(key_type, bytes(data))
        key._load()  # reject keys that do not parse now, not at first use
        return key

    def _load(self) -> object:
        loaded = self._loaded
        if loaded is None:
            loaded = self._load_uncached()
            object.__setattr__(self, "_loaded", loaded)
        return loaded

    def _load_uncached(self) -> object:
        try:
            if self.key_type is KeyType.ED25519:
                if len(self.data) != 32:
                    raise DecodeError("Ed25519 public key must be 32 bytes")
                return ed25519.Ed25519PublicKey.from_public_bytes(self.data)
            if self.key_type is KeyType.SECP256K1:
                return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), self.data)
            loaded = serialization.load_der_public_key(self.data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise DecodeError(f"invalid {self.key_type.name} public key: {exc}") from None
        if self.key_type is KeyType.RSA:
            if not isinstance(loaded, rsa.RSAPublicKey):
                raise DecodeError("RSA key type with a non-RSA key")
            if loaded.key_size < MIN_RSA_BITS:
                raise DecodeError(f"RSA key of {loaded.key_size} bits is too small")
        elif not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
            loaded.curve, ec.SECP256R1
        ):
            raise DecodeError("ECDSA keys must be on P-256")
        return loaded

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Return whether ``signature`` is valid for ``message`` under this key."""
        key = self._load()
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            else:  # pragma: no cover - _load only returns the types above
                return False
        except InvalidSignature:
            return False
        return True


# A bounded memo of ``PublicKey.from_protobuf`` (failures are not cached).
_parse_public_key = functools.lru_cache(maxsize=KEY_CACHE_SIZE)(PublicKey._from_protobuf)


class PrivateKey:
    """Our own identity: an Ed25519 key pair."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._public = PublicKey(KeyType.ED25519, raw)

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> PrivateKey:
        if len(seed) != 32:
            raise UsageError("an Ed25519 seed is 32 bytes")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def to_protobuf(self) -> bytes:
        """The libp2p ``PrivateKey`` message (Ed25519 data is seed || public key, as go does)."""
        return _encode_key_message(KeyType.ED25519, self.seed() + self._public.data)

    @classmethod
    def from_protobuf(cls, buf: bytes) -> PrivateKey:
        key_type, data = _decode_key_message(buf)
        if key_type is not KeyType.ED25519 or len(data) not in (32, 64):
            raise DecodeError("only Ed25519 private keys are supported")
        key = cls.from_seed(data[:32])
        if len(data) == 64 and data[32:] != key.public_key.data:
            raise DecodeError("Ed25519 private key does not match its public half")
        return key


def load_or_create(path: Path) -> PrivateKey:
    """Load the identity key at ``path``, or create one there with mode 0600.

    The file is written under a temporary name and renamed, so a crash never leaves a
    half-written key behind.
    """
    if path.exists():
        return PrivateKey.from_protobuf(path.read_bytes())
    key = PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(path, key.to_protobuf())
    return key

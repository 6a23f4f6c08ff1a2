"""Content identifiers (CID v0 and v1).

CIDv0 is a bare sha2-256 multihash (34 bytes, written in base58btc, always dag-pb). CIDv1 is
``varint(1) || varint(codec) || multihash``, written as multibase text (base32 by default).

Only the codecs and hash functions we can actually handle are accepted from the outside: a CID
naming anything else is refused with ``UnsupportedCid`` (a ``DecodeError``), so a peer cannot
make us store or ask for blocks we could never verify or interpret.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from peerstack.core import base58, multibase, varint
from peerstack.core.multihash import BLAKE3, IDENTITY, SHA2_256, Multihash
from peerstack.errors import DecodeError, UsageError

RAW = 0x55
DAG_PB = 0x70
DAG_CBOR = 0x71
LIBP2P_KEY = 0x72

CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor", LIBP2P_KEY: "libp2p-key"}
CODECS_BY_NAME = {name: code for code, name in CODEC_NAMES.items()}

# Hash functions a CID may use, with the digest length each one must have. The identity hash is
# accepted only for libp2p-key CIDs (a PeerId as a CID); blocks are never inlined.
HASH_DIGEST_LENGTHS = {SHA2_256: 32, BLAKE3: 32}
HASHES_BY_NAME = {"sha2-256": SHA2_256, "blake3": BLAKE3}
MAX_IDENTITY_DIGEST = 42

# Longer CIDs are refused before any parsing (go-bitswap uses the same bound, 168 bytes).
MAX_CID_BYTES = 168


class UnsupportedCid(DecodeError):
    """A CID names a version, codec or hash function that we do not handle."""


def _blake3_module() -> Any:
    try:
        import blake3
    except ImportError:
        return None
    return blake3


def blake3_available() -> bool:
    return _blake3_module() is not None


def hash_bytes(data: bytes | bytearray | memoryview, code: int = SHA2_256) -> bytes:
    """The raw digest of ``data`` under the hash function ``code``.

    Raises ``UsageError`` for blake3 when the optional ``blake3`` package is not installed, and
    for any function we do not support.
    """
    if code == SHA2_256:
        return hashlib.sha256(data).digest()
    if code == BLAKE3:
        mod = _blake3_module()
        if mod is None:
            raise UsageError("blake3 needs the optional 'blake3' package (pip install blake3)")
        return bytes(mod.blake3(bytes(data)).digest())
    raise UsageError(f"unsupported hash function 0x{code:x}")


@dataclass(frozen=True, slots=True)
class CID:
    """An immutable, hashable CID. Compare and use as dict keys freely."""

    version: int
    codec: int
    multihash: Multihash
    # CIDs are dict and set keys everywhere on the transfer path (wantlists, ledgers, sessions):
    # the hash is computed once here instead of re-hashing the nested dataclasses per lookup.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.version == 0:
            if self.codec != DAG_PB or self.multihash.code != SHA2_256:
                raise UsageError("CIDv0 is only dag-pb with sha2-256")
        elif self.version != 1:
            raise UsageError(f"unsupported CID version {self.version}")
        object.__setattr__(
            self,
            "_hash",
            hash((self.version, self.codec, self.multihash.code, self.multihash.digest)),
        )

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[CID], tuple[int, int, Multihash]]:
        # bytes hash differently in another process (hash randomisation): rebuild, never copy
        # the cached hash.
        return (CID, (self.version, self.codec, self.multihash))

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def v0(cls, digest: bytes) -> CID:
        return cls(0, DAG_PB, Multihash(SHA2_256, digest))

    @classmethod
    def v1(cls, codec: int, multihash: Multihash) -> CID:
        return cls(1, codec, multihash)

    @classmethod
    def hash_of(
        cls,
        data: bytes | bytearray | memoryview,
        codec: int = RAW,
        version: int = 1,
        hash_code: int = SHA2_256,
    ) -> CID:
        """The CID of ``data`` (hashing it; call off the event loop for big blocks)."""
        mh = Multihash(hash_code, hash_bytes(data, hash_code))
        if version == 0:
            if codec != DAG_PB or hash_code != SHA2_256:
                raise UsageError("CIDv0 is only dag-pb with sha2-256")
            return cls(0, DAG_PB, mh)
        return cls(1, codec, mh)

    # -- binary form ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash.to_bytes()
        return varint.encode(1) + varint.encode(self.codec) + self.multihash.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> CID:
        """Parse a binary CID and check that we support its codec and hash function."""
        data = bytes(data)
        if len(data) > MAX_CID_BYTES:
            raise DecodeError(f"CID of {len(data)} bytes is too long")
        if len(data) == 34 and data[0] == SHA2_256 and data[1] == 32:
            return cls(0, DAG_PB, Multihash(SHA2_256, data[2:]))
        if (
            len(data) == 36
            and data[0] == 1
            and data[1] in CODEC_NAMES
            and data[2] == SHA2_256
            and data[3] == 32
        ):
            # The common v1 form (a codec we know, sha2-256) without the varint parsing: a node
            # of 1024 links or a wantlist of a thousand CIDs parses one per entry.
            return cls(1, data[1], Multihash(SHA2_256, data[4:]))
        version, i = varint.decode(data, 0)
        if version != 1:
            raise UnsupportedCid(f"unsupported CID version {version}")
        codec, i = varint.decode(data, i)
        mh, end = Multihash.parse(data, i)
        if end != len(data):
            raise DecodeError("trailing bytes after CID")
        cid = cls(1, codec, mh)
        cid.check_supported()
        return cid

    def check_supported(self) -> None:
        """Raise ``UnsupportedCid`` unless we know this CID's codec and hash function."""
        if self.codec not in CODEC_NAMES:
            raise UnsupportedCid(f"unsupported CID codec 0x{self.codec:x}")
        code = self.multihash.code
        n = len(self.multihash.digest)
        if code == IDENTITY:
            if self.codec != LIBP2P_KEY or n > MAX_IDENTITY_DIGEST:
                raise UnsupportedCid("identity multihash only for small libp2p-key CIDs")
            return
        expected = HASH_DIGEST_LENGTHS.get(code)
        if expected is None:
            raise UnsupportedCid(f"unsupported hash function 0x{code:x}")
        if n != expected:
            raise UnsupportedCid(f"digest of {n} bytes for hash 0x{code:x}")

    # -- text form ------------------------------------------------------------------------

    def encode(self, base: str = "base32") -> str:
        """Text form: base58btc for v0 (``Qm...``), multibase (``b...`` by default) for v1."""
        if self.version == 0:
            if base not in ("base58btc", "base32"):
                raise UsageError("CIDv0 is always base58btc")
            return base58.encode(self.to_bytes())
        return multibase.encode(self.to_bytes(), base)

    def __str__(self) -> str:
        return self.encode()

    def __repr__(self) -> str:
        return f"CID({self.encode()})"

    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse CID text (v0 base58btc or v1 multibase)."""
        if not isinstance(text, str):
            raise UsageError("CID text must be a str")
        if len(text) == 46 and text.startswith("Qm"):
            return cls.from_bytes(base58.decode(text))
        if len(text) > 2 * MAX_CID_BYTES:
            raise DecodeError("CID text too long")
        data = multibase.decode(text)
        if len(data) == 34 and data[0] == SHA2_256:
            # A v0 multihash dressed in a multibase prefix is not a valid CID.
            raise DecodeError("CIDv0 must be written in bare base58btc")
        return cls.from_bytes(data)

    # -- conversions ----------------------------------------------------------------------

    def to_v1(self) -> CID:
        return self if self.version == 1 else CID(1, self.codec, self.multihash)

    def prefix(self) -> bytes:
        """The Bitswap 1.1+ block prefix: version, codec, hash code, digest length."""
        return (
            varint.encode(self.version)
            + varint.encode(self.codec)
            + varint.encode(self.multihash.code)
            + varint.encode(len(self.multihash.digest))
        )

    def verify(self, data: bytes | bytearray | memoryview) -> bool:
        """True when ``data`` hashes to this CID's digest (hash off the loop for big blocks)."""
        return hash_bytes(data, self.multihash.code) == self.multihash.digest


@dataclass(frozen=True, slots=True)
class Prefix:
    """A decoded Bitswap block prefix: what CID a block's bytes should be given."""

    version: int
    codec: int
    hash_code: int
    digest_length: int

    @classmethod
    def from_bytes(cls, data: bytes) -> Prefix:
        if len(data) > 40:
            raise DecodeError("block prefix too long")
        version, i = varint.decode(data, 0)
        codec, i = varint.decode(data, i)
        hash_code, i = varint.decode(data, i)
        length, i = varint.decode(data, i)
        if i != len(data):
            raise DecodeError("trailing bytes after block prefix")
        if version not in (0, 1):
            raise UnsupportedCid(f"unsupported CID version {version}")
        if codec not in CODEC_NAMES or codec == LIBP2P_KEY:
            raise UnsupportedCid(f"unsupported block codec 0x{codec:x}")
        if HASH_DIGEST_LENGTHS.get(hash_code) != length:
            raise UnsupportedCid(f"unsupported block hash 0x{hash_code:x}/{length}")
        if version == 0 and (codec != DAG_PB or hash_code != SHA2_256):
            raise UnsupportedCid("CIDv0 prefix must be dag-pb sha2-256")
        return cls(version, codec, hash_code, length)

    def cid_for(self, data: bytes | bytearray | memoryview) -> CID:
        """Hash ``data`` and build the CID the sender claims it has."""
        if self.hash_code == BLAKE3 and not blake3_available():
            raise UnsupportedCid("blake3 blocks need the optional 'blake3' package")
        mh = Multihash(self.hash_code, hash_bytes(data, self.hash_code))
        return CID(self.version, self.codec, mh)

"""Noise XX for libp2p (``/noise``) as a sans-IO state machine, and the encrypted transport.

The handshake is ``Noise_XX_25519_ChaChaPoly_SHA256`` with an empty prologue::

    -> e
    <- e, ee, s, es      + responder payload
    -> s, se             + initiator payload

Every Noise message travels with a 2-byte big-endian length, so a message is at most 65535
bytes and a transport frame carries at most 65519 bytes of plaintext (16 bytes go to the tag).

The payload is the protobuf ``NoiseHandshakePayload`` (``core/pb/noise.proto``), encoded and
parsed by hand here: it is tiny, and a hand parser lets us be strict and bounded. The Noise
static key is a fresh X25519 key bound to the libp2p identity by ``identity_sig``, a signature
over ``"noise-libp2p-static-key:" || static public key``.

``NoiseTransport`` is the hot path of every byte peerstack moves: it frames and encrypts with
``encrypt_into``/``decrypt_into`` into a reused scratch buffer, so each call costs the cipher
plus one copy, and Python work is per frame, never per byte.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections import OrderedDict
from collections.abc import Iterator, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from peerstack.core import varint
from peerstack.core.identity import PrivateKey, PublicKey
from peerstack.core.peer_id import PeerId
from peerstack.errors import (
    DecodeError,
    HandshakeError,
    LimitExceeded,
    NoiseError,
    PeerError,
    PeerIdMismatch,
    UsageError,
)

PROTOCOL_ID = "/noise"
PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
SIGNATURE_PREFIX = b"noise-libp2p-static-key:"

MAX_MESSAGE = 65535
TAG_LENGTH = 16
MAX_PLAINTEXT = MAX_MESSAGE - TAG_LENGTH  # 65519
DH_LENGTH = 32
HASH_LENGTH = 32
# Noise reserves nonce 2**64 - 1; a CipherState must never reach it.
MAX_NONCE = 2**64 - 1
# The last nonce a transport may use is MAX_NONCE - 2 (so ``nonce + 1 >= MAX_NONCE`` refuses):
# the per-message paths compare with this constant instead of adding 1 first.
_LAST_NONCE = MAX_NONCE - 1

# Bounds on what we keep from a peer's handshake payload extensions.
MAX_MUXERS = 32
MAX_CERTHASHES = 32

# The transport keeps one scratch buffer per direction, grown to the largest call and never
# beyond this (16 full frames): bulk connections reuse it, idle ones never allocate it.
SCRATCH_LIMIT = 16 * (MAX_MESSAGE + 2)
# Below this many plaintext bytes a single frame is built by concatenation, so that connections
# that only send small frames (pings, window updates) never hold a scratch buffer.
SMALL_FRAME = 2048

_nonce = struct.Struct("<4xQ").pack
_length = struct.Struct(">H")


def _x25519_public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """The Noise framework's HKDF with two outputs (HMAC-SHA256, the chaining key as salt)."""
    temp_key = hmac.digest(chaining_key, ikm, "sha256")
    out1 = hmac.digest(temp_key, b"\x01", "sha256")
    out2 = hmac.digest(temp_key, out1 + b"\x02", "sha256")
    return out1, out2


class _SymmetricState:
    """Noise ``SymmetricState`` with its ``CipherState`` folded in (spec sections 5.1, 5.2)."""

    __slots__ = ("_aead", "_n", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_LENGTH:
            h = protocol_name.ljust(HASH_LENGTH, b"\x00")
        else:
            h = hashlib.sha256(protocol_name).digest()
        self.h = h
        self.ck = h
        self._aead: ChaCha20Poly1305 | None = None
        self._n = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self._aead = ChaCha20Poly1305(temp_k)
        self._n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self._aead is None:
            ciphertext = plaintext
        else:
            ciphertext = self._aead.encrypt(_nonce(self._n), plaintext, self.h)
            self._n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self._aead is None:
            plaintext = ciphertext
        else:
            try:
                plaintext = self._aead.decrypt(_nonce(self._n), ciphertext, self.h)
            except InvalidTag:
                raise NoiseError("handshake message failed authentication") from None
            self._n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf2(self.ck, b"")


class XXHandshakeState:
    """The Noise XX handshake pattern without any libp2p framing or payload semantics.

    Public so that it can be checked against published Noise test vectors (which use a prologue,
    fixed ephemeral keys and payloads in every message); libp2p uses it through
    ``NoiseHandshake``.
    """

    __slots__ = ("_e", "_e_pub", "_initiator", "_re", "_rs", "_s", "_s_pub", "_ss", "_step")

    def __init__(
        self,
        *,
        initiator: bool,
        static_key: X25519PrivateKey,
        prologue: bytes = b"",
        ephemeral_key: X25519PrivateKey | None = None,
        static_public: bytes | None = None,
        ephemeral_public: bytes | None = None,
    ) -> None:
        """``static_public`` / ``ephemeral_public``: the keys' public bytes when the caller
        already has them (they must belong to the keys given; the public half of a generated
        ephemeral key is always computed here)."""
        self._initiator = initiator
        self._s = static_key
        # Made now, not when message 1 or 2 is written: a responder is built before message 1
        # arrives, so the key generation (~45 us) overlaps that wait instead of delaying
        # message 2. Test vectors inject theirs; NoiseHandshake takes one made ahead.
        if ephemeral_key is None:
            ephemeral_key, ephemeral_public = X25519PrivateKey.generate(), None
        self._e: X25519PrivateKey = ephemeral_key
        self._e_pub = (
            ephemeral_public
            if ephemeral_public is not None
            else _x25519_public_bytes(ephemeral_key)
        )
        self._s_pub = (
            static_public if static_public is not None else _x25519_public_bytes(static_key)
        )
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._step = 0
        self._ss = _SymmetricState(PROTOCOL_NAME)
        self._ss.mix_hash(prologue)

    @property
    def finished(self) -> bool:
        return self._step == 3

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h

    @property
    def remote_static(self) -> bytes | None:
        """The peer's X25519 static public key, once its ``s`` token was read."""
        return self._rs

    def _dh(self, local: X25519PrivateKey, remote: bytes) -> bytes:
        try:
            return local.exchange(X25519PublicKey.from_public_bytes(remote))
        except ValueError:
            # cryptography refuses low-order points (an all-zero shared secret).
            raise NoiseError("peer sent an invalid X25519 public key") from None

    def _check_turn(self, writing: bool) -> None:
        if self._step >= 3:
            raise UsageError("handshake already finished")
        initiator_writes = self._step % 2 == 0
        if writing != (initiator_writes == self._initiator):
            raise UsageError("not this side's turn to " + ("write" if writing else "read"))

    def write_message(self, payload: bytes) -> bytes:
        """Produce the next handshake message carrying ``payload``."""
        self._check_turn(writing=True)
        ss = self._ss
        parts: list[bytes] = []
        if self._step == 0:  # -> e
            e_pub = self._e_pub
            parts.append(e_pub)
            ss.mix_hash(e_pub)
        elif self._step == 1:  # <- e, ee, s, es
            assert self._re is not None
            e = self._e
            e_pub = self._e_pub
            parts.append(e_pub)
            ss.mix_hash(e_pub)
            ss.mix_key(self._dh(e, self._re))
            parts.append(ss.encrypt_and_hash(self._s_pub))
            ss.mix_key(self._dh(self._s, self._re))
        else:  # -> s, se
            assert self._re is not None
            parts.append(ss.encrypt_and_hash(self._s_pub))
            ss.mix_key(self._dh(self._s, self._re))
        parts.append(ss.encrypt_and_hash(payload))
        self._step += 1
        return b"".join(parts)

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its payload."""
        self._check_turn(writing=False)
        ss = self._ss
        pos = 0
        if self._step == 0:  # -> e
            if len(message) < DH_LENGTH:
                raise NoiseError("handshake message 1 too short")
            self._re = message[:DH_LENGTH]
            ss.mix_hash(self._re)
            pos = DH_LENGTH
        elif self._step == 1:  # <- e, ee, s, es
            if len(message) < DH_LENGTH + DH_LENGTH + 2 * TAG_LENGTH:
                raise NoiseError("handshake message 2 too short")
            e = self._e
            self._re = message[:DH_LENGTH]
            ss.mix_hash(self._re)
            ss.mix_key(self._dh(e, self._re))
            pos = 2 * DH_LENGTH + TAG_LENGTH
            self._rs = ss.decrypt_and_hash(message[DH_LENGTH:pos])
            ss.mix_key(self._dh(e, self._rs))
        else:  # -> s, se
            if len(message) < DH_LENGTH + 2 * TAG_LENGTH:
                raise NoiseError("handshake message 3 too short")
            pos = DH_LENGTH + TAG_LENGTH
            self._rs = ss.decrypt_and_hash(message[:pos])
            ss.mix_key(self._dh(self._e, self._rs))
        payload = ss.decrypt_and_hash(message[pos:])
        self._step += 1
        return payload

    def split(self) -> tuple[bytes, bytes]:
        """``(send_key, receive_key)`` for this side once the handshake is finished."""
        if self._step != 3:
            raise UsageError("handshake not finished")
        k1, k2 = self._ss.split()
        return (k1, k2) if self._initiator else (k2, k1)


# --- the libp2p handshake payload ------------------------------------------------------------


def _field(number: int, value: bytes) -> bytes:
    return varint.encode(number << 3 | 2) + varint.encode(len(value)) + value


def encode_payload(
    identity_key: bytes,
    identity_sig: bytes,
    muxers: Sequence[str] = (),
    certhashes: Sequence[bytes] = (),
) -> bytes:
    """Encode ``NoiseHandshakePayload{identity_key=1, identity_sig=2, extensions=4}``."""
    out = _field(1, identity_key) + _field(2, identity_sig)
    if muxers or certhashes:
        ext = b"".join(_field(1, h) for h in certhashes) + b"".join(
            _field(2, m.encode()) for m in muxers
        )
        out += _field(4, ext)
    return out


def _iter_fields(buf: bytes) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield ``(field, wire_type, bytes_or_None)``; length-delimited fields carry their bytes.

    Unknown fields of the four wire types protobuf still uses are skipped (a newer peer may add
    fields); groups and undefined wire types are refused.
    """
    i = 0
    n = len(buf)
    while i < n:
        tag, i = varint.decode(buf, i)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise DecodeError("protobuf field number 0")
        if wire == 0:
            _, i = varint.decode(buf, i)
            yield field, wire, None
        elif wire == 1:
            i += 8
            if i > n:
                raise DecodeError("truncated fixed64 field")
            yield field, wire, None
        elif wire == 5:
            i += 4
            if i > n:
                raise DecodeError("truncated fixed32 field")
            yield field, wire, None
        elif wire == 2:
            length, i = varint.decode(buf, i)
            end = i + length
            if end > n:
                raise DecodeError("truncated length-delimited field")
            yield field, wire, buf[i:end]
            i = end
        else:
            raise DecodeError(f"unsupported protobuf wire type {wire}")


class HandshakePayload:
    """A decoded ``NoiseHandshakePayload`` (signature not yet checked)."""

    __slots__ = ("certhashes", "identity_key", "identity_sig", "muxers")

    def __init__(
        self,
        identity_key: bytes,
        identity_sig: bytes,
        muxers: list[str],
        certhashes: list[bytes],
    ) -> None:
        self.identity_key = identity_key
        self.identity_sig = identity_sig
        self.muxers = muxers
        self.certhashes = certhashes

    @classmethod
    def decode(cls, buf: bytes) -> HandshakePayload:
        """Parse a payload from a peer; raises ``DecodeError``/``LimitExceeded``."""
        key = b""
        sig = b""
        muxers: list[str] = []
        certhashes: list[bytes] = []
        for field, wire, value in _iter_fields(buf):
            if field in (1, 2, 4) and wire != 2:
                raise DecodeError(f"payload field {field} has wire type {wire}")
            if value is None:
                continue
            if field == 1:
                key = value  # protobuf semantics: the last occurrence wins
            elif field == 2:
                sig = value
            elif field == 4:  # NoiseExtensions; repeated occurrences merge
                cls._decode_extensions(value, muxers, certhashes)
        return cls(key, sig, muxers, certhashes)

    @staticmethod
    def _decode_extensions(buf: bytes, muxers: list[str], certhashes: list[bytes]) -> None:
        for field, wire, value in _iter_fields(buf):
            if field in (1, 2) and wire != 2:
                raise DecodeError(f"extensions field {field} has wire type {wire}")
            if value is None:
                continue
            if field == 1:
                if len(certhashes) >= MAX_CERTHASHES:
                    raise LimitExceeded("too many webtransport certhashes")
                certhashes.append(value)
            elif field == 2:
                if len(muxers) >= MAX_MUXERS:
                    raise LimitExceeded("too many stream muxers in noise extensions")
                try:
                    muxers.append(value.decode("utf-8"))
                except UnicodeDecodeError:
                    raise DecodeError("stream muxer id is not UTF-8") from None


# --- the libp2p handshake --------------------------------------------------------------------


class NoiseCredentials:
    """A Noise static key bound to a libp2p identity: the signed handshake payload, ready.

    Building it costs an X25519 key generation and an Ed25519 signature; a host that keeps one
    and passes it to every ``NoiseHandshake`` pays that once instead of per connection (as
    rust- and js-libp2p do: one static key per transport). Forward secrecy does not rest on
    the static key: every handshake mixes in fresh ephemeral keys (``ee``).
    """

    __slots__ = ("identity", "muxers", "payload", "static_key", "static_public")

    def __init__(
        self,
        identity: PrivateKey,
        muxers: Sequence[str] = (),
        static_key: X25519PrivateKey | None = None,
    ) -> None:
        if isinstance(muxers, str):
            raise UsageError("muxers must be a sequence of protocol ids, not one string")
        if len(muxers) > MAX_MUXERS:
            raise UsageError(f"at most {MAX_MUXERS} muxers can be announced")
        self.identity = identity
        self.muxers = tuple(muxers)
        self.static_key = static_key if static_key is not None else X25519PrivateKey.generate()
        self.static_public = _x25519_public_bytes(self.static_key)
        self.payload = encode_payload(
            identity.public_key.to_protobuf(),
            identity.sign(SIGNATURE_PREFIX + self.static_public),
            list(self.muxers),
        )
        # Message 2 (the larger one that carries a payload) must fit in one Noise message.
        if 2 * DH_LENGTH + 2 * TAG_LENGTH + len(self.payload) > MAX_MESSAGE:
            raise UsageError("handshake payload too large for one Noise message")


class VerifiedSignatures:
    """The handshake signatures this host has verified, so that a returning peer's is not
    verified again (bounded, least recently used first out).

    A peer's signature covers its Noise static key, and go, js and rust keep one static key
    per process (as we do, see ``NoiseCredentials``): every connection from the same peer
    process brings the same (identity key, static key, signature). Ed25519 verification is
    deterministic, so the memo of a triple that verified gives the same answer as verifying it
    again (~120 us on each side of a dial): nothing is accepted that a fresh check would
    refuse. Only successes are kept. Possession of the static key is still proved in every
    handshake by the DH it takes part in (``es``/``se``), and the PeerId is still checked
    against the one expected.

    The PeerId derived from the key is kept with the triple and handed out again: every
    connection from that peer then carries the same PeerId object, whose text (a base58
    encode, ~40 us, wanted in log and error messages) is made once, not per connection.
    """

    __slots__ = ("_max", "_seen")

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 0:
            raise UsageError("max_entries must be >= 0")
        self._max = max_entries
        self._seen: OrderedDict[bytes, PeerId] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    @staticmethod
    def _entry(identity_key: bytes, static_key: bytes, signature: bytes) -> bytes:
        # The static key is always DH_LENGTH bytes, so a length prefix on the identity key
        # makes the concatenation unambiguous.
        if len(static_key) != DH_LENGTH or len(identity_key) > 0xFFFF:
            raise UsageError("not a Noise static key, or an identity key over 64 KiB")
        return _length.pack(len(identity_key)) + identity_key + static_key + signature

    def verify(
        self, key: PublicKey, identity_key: bytes, static_key: bytes, signature: bytes
    ) -> PeerId | None:
        """The PeerId of ``key`` (whose protobuf form is ``identity_key``) if ``signature``
        by it covers ``static_key``, else None: remembered if it verified before, else checked
        (and remembered when valid)."""
        entry = self._entry(identity_key, static_key, signature)
        seen = self._seen
        peer = seen.get(entry)
        if peer is not None:
            seen.move_to_end(entry)
            return peer
        if not key.verify(signature, SIGNATURE_PREFIX + static_key):
            return None
        peer = PeerId.from_public_key(key)
        if self._max:
            seen[entry] = peer
            if len(seen) > self._max:
                seen.popitem(last=False)
        return peer


class EphemeralKeys:
    """One ephemeral X25519 key made ahead of the handshake that will use it.

    ``take()`` hands out the key made ahead (or a fresh one when none is ready) and forgets
    it, so no key ever serves two handshakes; ``refill()`` makes the next one. A handshake
    still costs one key generation (~45 us), but the caller chooses when: the upgrader refills
    right after sending a handshake message, while the peer works on it and this side would
    only wait, instead of before message 1 (dialler) or between message 1 and message 2
    (listener), where the peer waits for it. One supply per host; a spare made before a
    ``fork()`` is never used in the child (the parent may use it too).
    """

    __slots__ = ("_pid", "_spare")

    def __init__(self) -> None:
        self._spare: tuple[X25519PrivateKey, bytes] | None = None
        self._pid = 0

    @property
    def ready(self) -> bool:
        """Whether a key made ahead is waiting."""
        return self._spare is not None

    def refill(self) -> None:
        """Make the next key unless one is already waiting."""
        if self._spare is None:
            key = X25519PrivateKey.generate()
            self._spare = (key, _x25519_public_bytes(key))
            self._pid = os.getpid()

    def take(self) -> tuple[X25519PrivateKey, bytes]:
        """A key nobody else was given, and its public bytes."""
        spare, self._spare = self._spare, None
        if spare is not None and self._pid == os.getpid():
            return spare
        key = X25519PrivateKey.generate()
        return key, _x25519_public_bytes(key)


class NoiseHandshake:
    """One side of a libp2p Noise XX handshake, fed with bytes from the peer.

    ``data_to_send`` returns framed handshake messages; ``receive_data`` consumes the peer's.
    The initiator's first message is ready right after construction. Once ``complete``, use
    ``transport()`` for the encrypted channel and hand ``unused_data()`` to its ``decrypt``.
    """

    def __init__(
        self,
        identity: PrivateKey,
        *,
        initiator: bool,
        remote_peer: PeerId | None = None,
        muxers: Sequence[str] = (),
        static_key: X25519PrivateKey | None = None,
        credentials: NoiseCredentials | None = None,
        ephemeral_key: X25519PrivateKey | None = None,
        ephemeral_keys: EphemeralKeys | None = None,
        verified: VerifiedSignatures | None = None,
    ) -> None:
        if credentials is None:
            credentials = NoiseCredentials(identity, muxers, static_key)
        elif credentials.identity is not identity or credentials.muxers != tuple(muxers):
            raise UsageError("credentials were made for another identity or muxer list")
        elif static_key is not None:
            raise UsageError("pass either static_key or credentials, not both")
        self._initiator = initiator
        self._expected = remote_peer
        # The ephemeral key comes from the supply (made ahead), is given (tests), or is made
        # here: a responder is built before the peer's message 1 arrives, so that wait can
        # hide the key generation.
        ephemeral_public: bytes | None = None
        if ephemeral_keys is not None:
            if ephemeral_key is not None:
                raise UsageError("pass either ephemeral_key or ephemeral_keys, not both")
            ephemeral_key, ephemeral_public = ephemeral_keys.take()
        self._hs = XXHandshakeState(
            initiator=initiator,
            static_key=credentials.static_key,
            ephemeral_key=ephemeral_key,
            static_public=credentials.static_public,
            ephemeral_public=ephemeral_public,
        )
        self._payload = credentials.payload
        self._verified = verified
        self._out: list[bytes] = []
        self._buf = bytearray()
        self._unused = b""
        self._failed = False
        self._remote_key: PublicKey | None = None
        self._remote_peer: PeerId | None = None
        self._remote_muxers: list[str] = []
        self._transport: NoiseTransport | None = None
        if initiator:
            self._send(self._hs.write_message(b""))

    def _send(self, message: bytes) -> None:
        self._out.append(_length.pack(len(message)) + message)

    def data_to_send(self) -> bytes:
        """Drain the framed handshake messages that should be written to the peer."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer.

        Raises ``NoiseError`` (malformed or unauthenticated message), ``DecodeError`` (bad
        payload or key), ``HandshakeError`` (bad signature) or ``PeerIdMismatch``.
        """
        if self._failed:
            raise UsageError("handshake already failed")
        if self._transport is not None:
            raise UsageError("handshake complete; pass further bytes to the transport")
        buf = self._buf
        buf += data
        try:
            while self._transport is None and len(buf) >= 2:
                end = 2 + ((buf[0] << 8) | buf[1])
                if len(buf) < end:
                    break
                message = bytes(buf[2:end])
                del buf[:end]
                self._on_message(message)
        except PeerError:
            self._failed = True
            buf.clear()
            raise
        if self._transport is not None:
            self._unused = bytes(buf)
            buf.clear()

    def _on_message(self, message: bytes) -> None:
        hs = self._hs
        payload = hs.read_message(message)
        if self._initiator:  # message 2 read: authenticate the responder, answer, finish
            self._authenticate(payload)
            self._send(hs.write_message(self._payload))
            self._finish()
        elif not hs.finished:  # message 1 read; its (plaintext) payload is meaningless
            self._send(hs.write_message(self._payload))
        else:  # message 3 read
            self._authenticate(payload)
            self._finish()

    def _authenticate(self, payload_bytes: bytes) -> None:
        payload = HandshakePayload.decode(payload_bytes)
        if not payload.identity_key or not payload.identity_sig:
            raise HandshakeError("handshake payload lacks identity key or signature")
        key = PublicKey.from_protobuf(payload.identity_key)
        remote_static = self._hs.remote_static
        assert remote_static is not None
        verified = self._verified
        peer: PeerId | None
        if verified is not None:
            peer = verified.verify(key, payload.identity_key, remote_static, payload.identity_sig)
        elif key.verify(payload.identity_sig, SIGNATURE_PREFIX + remote_static):
            peer = PeerId.from_public_key(key)
        else:
            peer = None
        if peer is None:
            raise HandshakeError("invalid signature of the noise static key")
        expected = self._expected
        if expected is not None:
            if peer != expected:
                raise PeerIdMismatch(f"expected peer {expected}, met {peer}")
            peer = expected  # the caller's own object (equal; its text may be made already)
        self._remote_key = key
        self._remote_peer = peer
        self._remote_muxers = payload.muxers

    def _finish(self) -> None:
        send_key, recv_key = self._hs.split()
        self._transport = NoiseTransport(send_key, recv_key)

    @property
    def complete(self) -> bool:
        return self._transport is not None

    def _require_complete(self) -> NoiseTransport:
        if self._transport is None:
            raise UsageError("handshake not complete")
        return self._transport

    @property
    def remote_peer(self) -> PeerId:
        self._require_complete()
        assert self._remote_peer is not None
        return self._remote_peer

    @property
    def remote_public_key(self) -> PublicKey:
        self._require_complete()
        assert self._remote_key is not None
        return self._remote_key

    @property
    def remote_muxers(self) -> list[str]:
        """Stream muxers the peer announced in its extensions (early muxer negotiation)."""
        self._require_complete()
        return list(self._remote_muxers)

    @property
    def handshake_hash(self) -> bytes:
        """The Noise handshake hash ``h``: identical on both sides of one handshake."""
        return self._hs.handshake_hash

    def transport(self) -> NoiseTransport:
        return self._require_complete()

    def unused_data(self) -> bytes:
        """Ciphertext received after the last handshake message (feed it to ``decrypt``)."""
        self._require_complete()
        rest, self._unused = self._unused, b""
        return rest


# --- the transport ---------------------------------------------------------------------------


class _ShortFrame(Exception):
    """Internal: a frame too short to hold a tag (turned into ``NoiseError`` by the caller)."""


class NoiseTransport:
    """Encrypts and decrypts the Noise transport stream of one connection.

    ``encrypt`` splits into frames of at most 65519 plaintext bytes; ``decrypt`` accepts the
    stream in arbitrary pieces, returns the plaintext of every frame completed so far and keeps
    at most one partial frame (at most 65537 bytes) between calls.

    Allocation matters as much as the cipher here: a fresh multi-KiB buffer per frame makes the
    C allocator hand memory back to the kernel and fault it in again (page faults cost more
    than the copy). So the partial frame lives in one fixed 65537-byte buffer, made on first
    need and kept until :meth:`release_scratch`, and bulk senders encrypt straight into their
    own reusable buffers with :meth:`encrypt_into`.

    Zero-copy reads: when a frame is cut by the end of a read, :meth:`recv_buffer` names the
    exact place in the partial-frame buffer where its missing bytes go, so the caller can have
    the socket read them there (:meth:`recv_done` then decrypts it) instead of reading into its
    own buffer and copying. Reads then end on frame boundaries again.
    """

    __slots__ = (
        "_broken",
        "_dec",
        "_dec_into",
        "_enc",
        "_enc_into",
        "_in_scratch",
        "_out_scratch",
        "_partial",
        "_recv_n",
        "_send_n",
        "pending",
    )

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        send = ChaCha20Poly1305(send_key)
        recv = ChaCha20Poly1305(recv_key)
        self._enc = send.encrypt
        self._enc_into = send.encrypt_into
        self._dec = recv.decrypt
        self._dec_into = recv.decrypt_into
        self._send_n = 0
        self._recv_n = 0
        # The frame in progress: its first ``pending`` bytes (length prefix included) are held
        # in _partial (MAX_MESSAGE + 2 bytes once made; empty while never needed or released).
        self._partial = bytearray()
        #: Bytes of an incomplete frame held until the rest of it arrives (read it, never set
        #: it; a plain attribute, not a property, because it is read after every socket read).
        self.pending = 0
        self._out_scratch = bytearray()
        self._in_scratch = bytearray()
        self._broken = False

    @property
    def scratch_size(self) -> int:
        """Bytes of scratch buffer held for bulk calls (both directions, the partial frame's
        buffer included)."""
        return len(self._out_scratch) + len(self._in_scratch) + len(self._partial)

    def release_scratch(self) -> None:
        """Drop the scratch buffers (up to ~1 MiB each after a bulk transfer).

        Call when the connection goes quiet: an idle connection then holds no scratch, and
        the next bulk call grows it again (one allocation per burst, not per call). The
        partial-frame buffer goes too when no frame is in progress.
        """
        if self._out_scratch:
            self._out_scratch = bytearray()
        if self._in_scratch:
            self._in_scratch = bytearray()
        if self._partial and not self.pending:
            self._partial = bytearray()

    # -- sending ----------------------------------------------------------------------------

    @staticmethod
    def sealed_size(n: int) -> int:
        """Bytes on the wire for ``n`` plaintext bytes (what encrypt_into() writes)."""
        return n + ((n + MAX_PLAINTEXT - 1) // MAX_PLAINTEXT) * (2 + TAG_LENGTH)

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Frame and encrypt ``data``; returns the bytes to write (``b""`` for no data)."""
        t = type(data)
        n = len(data) if t is bytes or t is bytearray else memoryview(data).nbytes
        if n == 0:
            return b""
        if n <= SMALL_FRAME:
            nonce = self._send_n
            if nonce + 1 >= MAX_NONCE:
                raise NoiseError("send nonce exhausted; the connection must be closed")
            self._send_n = nonce + 1
            return _length.pack(n + TAG_LENGTH) + self._enc(_nonce(nonce), data, None)
        total = self.sealed_size(n)
        if total <= SCRATCH_LIMIT:
            out = self._out_scratch
            if len(out) < total:
                out = self._out_scratch = bytearray(total)
        else:
            out = bytearray(total)
        self.encrypt_into(data, out)
        with memoryview(out) as view:
            return bytes(view[:total])

    def seal(self, data: bytes) -> bytes:
        """One frame for 1 to MAX_PLAINTEXT bytes: encrypt() without its size dispatch, for
        the per-message path (a request, an answer, a ping)."""
        nonce = self._send_n
        if nonce >= _LAST_NONCE or not 0 < len(data) <= MAX_PLAINTEXT:
            if nonce >= _LAST_NONCE:
                raise NoiseError("send nonce exhausted; the connection must be closed")
            raise UsageError(f"seal() takes 1 to {MAX_PLAINTEXT} bytes, not {len(data)}")
        self._send_n = nonce + 1
        # The frame's length is the ciphertext's (plaintext + tag): one len() call, no sum.
        sealed = self._enc(_nonce(nonce), data, None)
        return _length.pack(len(sealed)) + sealed

    def encrypt_into(
        self, data: bytes | bytearray | memoryview, out: bytearray | memoryview, offset: int = 0
    ) -> int:
        """Frame and encrypt ``data`` into ``out`` at ``offset``; return the bytes written.

        ``out`` needs room for ``sealed_size(len(data))`` bytes from ``offset`` (else
        ``UsageError``, nothing written). The copy-free path for a sender that owns its
        output buffers and knows when the socket is done with them.
        """
        src = memoryview(data)
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        n = len(src)
        if n == 0:
            return 0
        frames = (n + MAX_PLAINTEXT - 1) // MAX_PLAINTEXT
        total = n + frames * (2 + TAG_LENGTH)
        if offset < 0 or offset + total > len(out):
            raise UsageError(f"encrypt_into needs {total} bytes of room at offset {offset}")
        nonce = self._send_n
        if nonce + frames >= MAX_NONCE:
            raise NoiseError("send nonce exhausted; the connection must be closed")
        with memoryview(out) as view:
            enc_into = self._enc_into
            pack_length = _length.pack_into
            i = 0
            o = offset
            while i < n:
                chunk = n - i if n - i < MAX_PLAINTEXT else MAX_PLAINTEXT
                pack_length(view, o, chunk + TAG_LENGTH)
                o += 2
                enc_into(_nonce(nonce), src[i : i + chunk], None, view[o : o + chunk + TAG_LENGTH])
                nonce += 1
                i += chunk
                o += chunk + TAG_LENGTH
        src.release()
        self._send_n = nonce
        return total

    # -- receiving --------------------------------------------------------------------------

    def decrypt(self, data: bytes | bytearray | memoryview, nbytes: int = -1) -> bytes:
        """Feed ciphertext; return the plaintext of all frames completed so far (maybe ``b""``).

        ``data``: bytes, a bytearray or a memoryview of integer items (a 1-D byte view, as
        TcpConnection passes, is taken as is; another is read byte for byte). ``nbytes``:
        only its first ``nbytes`` bytes are input (a reader's buffer after a read: the whole
        frame read is decrypted out of it without a slice of its own). Raises
        ``NoiseError`` when a frame fails authentication or is too short to be one; the
        transport is unusable afterwards.
        """
        if self._broken:
            raise NoiseError("noise transport failed earlier")
        if nbytes < 0:
            nbytes = len(data)
        try:
            # Fast path: the input is exactly one whole frame and nothing is held over (a
            # small message, or a read that met a frame boundary): decrypt it in place. It
            # reads the length prefix by item, so it is meant for bytes, a bytearray or a 1-D
            # byte view (what TcpConnection passes). A view of wider integer items fails the
            # test for every valid frame (its first item reads at least 256 times too large)
            # and is cast by _decrypt(); a signed byte view passes only when its prefix reads
            # as unsigned bytes do. 18: the length prefix and a tag.
            if not self.pending and 18 <= nbytes == ((data[0] << 8) | data[1]) + 2:
                nonce = self._recv_n
                if nonce >= _LAST_NONCE:
                    raise NoiseError("receive nonce exhausted; the connection must be closed")
                result = self._dec(_nonce(nonce), data[2:nbytes], None)
                self._recv_n = nonce + 1
                return result
            if nbytes != len(data):
                if nbytes > len(data):
                    raise UsageError(f"decrypt(): nbytes={nbytes} > {len(data)} bytes given")
                data = data[:nbytes]
            return self._decrypt(data)
        except InvalidTag:
            reason = "noise frame failed authentication"
        except _ShortFrame:
            reason = "noise frame shorter than its tag"
        if nbytes > len(data):
            # The fast path read past the input: our caller's mistake, not the peer's, and
            # nothing was consumed (checked here, off the path of every frame that is fine).
            raise UsageError(f"decrypt(): nbytes={nbytes} > {len(data)} bytes given")
        # Raised outside the except blocks on purpose: the original traceback (and with it the
        # memoryviews on the caller's buffer) is dropped, so the caller can still resize that
        # buffer while handling our error.
        self._broken = True
        raise NoiseError(reason)

    def recv_buffer(self) -> memoryview | None:
        """Where the missing bytes of the frame in progress go, or None.

        None when no frame is in progress or its length is not known yet (fewer than 2 bytes
        held): the caller then reads into its own buffer and calls decrypt(). Otherwise a
        writable view of exactly the missing bytes; after writing ``n`` bytes at its start,
        call ``recv_done(n)``. Any other call on the receive side invalidates the view.
        """
        plen = self.pending
        if plen < 2 or self._broken:
            return None
        buf = self._partial
        end = 2 + ((buf[0] << 8) | buf[1])
        if end < 2 + TAG_LENGTH:
            return None  # decrypt() reports it
        return memoryview(buf)[plen:end]

    def recv_done(self, nbytes: int) -> bytes:
        """``nbytes`` were written into the view recv_buffer() gave; returns the frame's
        plaintext once it is complete, else ``b""``."""
        if self._broken:
            raise NoiseError("noise transport failed earlier")
        plen = self.pending
        buf = self._partial
        if plen < 2:
            raise UsageError("recv_done() without a frame in progress")
        end = 2 + ((buf[0] << 8) | buf[1])
        plen += nbytes
        if nbytes < 0 or plen > end:
            raise UsageError(f"recv_done({nbytes}): more than the frame's missing bytes")
        self.pending = plen
        if plen < end:
            return b""
        nonce = self._recv_n
        if nonce + 1 >= MAX_NONCE:
            self._broken = True
            raise NoiseError("receive nonce exhausted; the connection must be closed")
        try:
            with memoryview(buf) as view:
                result = self._dec(_nonce(nonce), view[2:end], None)
        except InvalidTag:
            result = None
        if result is None:
            self._broken = True
            raise NoiseError("noise frame failed authentication")
        self._recv_n = nonce + 1
        self.pending = 0
        return result

    def _hold(self, src: memoryview, start: int, stop: int) -> None:
        """Append ``src[start:stop]`` to the partial frame (it always fits: see _decrypt)."""
        buf = self._partial
        if not buf:
            buf = self._partial = bytearray(MAX_MESSAGE + 2)
        plen = self.pending
        size = stop - start
        buf[plen : plen + size] = src[start:stop]
        self.pending = plen + size

    def _decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        src = memoryview(data)
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        n = len(src)
        pos = 0
        # Length (with its 2-byte prefix) of the frame left over from the previous call, once
        # this call has completed it; it is decrypted first, straight out of ``_partial``.
        first_end = 0
        if self.pending:
            if self.pending < 2:
                pos = min(2 - self.pending, n)
                self._hold(src, 0, pos)
                if self.pending < 2:
                    return b""
            buf = self._partial
            end = 2 + ((buf[0] << 8) | buf[1])
            if end < 2 + TAG_LENGTH:
                raise _ShortFrame
            take = min(end - self.pending, n - pos)
            self._hold(src, pos, pos + take)  # only the missing tail of that frame
            pos += take
            if self.pending < end:
                return b""
            first_end = end
        # Locate the whole frames in the rest of the input.
        starts: list[int] = []
        total = first_end - 2 - TAG_LENGTH if first_end else 0
        while pos + 2 <= n:
            length = (src[pos] << 8) | src[pos + 1]
            if length < TAG_LENGTH:
                raise _ShortFrame
            if pos + 2 + length > n:
                break
            starts.append(pos)
            total += length - TAG_LENGTH
            pos += 2 + length
        nonce = self._recv_n
        count = len(starts) + (1 if first_end else 0)
        if nonce + count >= MAX_NONCE:
            raise NoiseError("receive nonce exhausted; the connection must be closed")
        if count == 0:
            result = b""
        elif count == 1:  # one frame: the AEAD's own output is the result, no copy
            if first_end:
                with memoryview(self._partial) as pview:
                    result = self._dec(_nonce(nonce), pview[2:first_end], None)
            else:
                p = starts[0]
                length = (src[p] << 8) | src[p + 1]
                result = self._dec(_nonce(nonce), src[p + 2 : p + 2 + length], None)
        else:
            result = self._decrypt_many(src, starts, first_end, total, nonce)
        self._recv_n = nonce + count
        if first_end:
            self.pending = 0
        if pos < n:
            # An incomplete frame: fewer than 2 + its length bytes, so at most 65536.
            self._hold(src, pos, n)
        return result

    def _decrypt_many(
        self, src: memoryview, starts: list[int], first_end: int, total: int, nonce: int
    ) -> bytes:
        """Decrypt several frames into the scratch buffer and return one copy of the result."""
        if total <= SCRATCH_LIMIT:
            out = self._in_scratch
            if len(out) < total:
                out = self._in_scratch = bytearray(total)
        else:
            out = bytearray(total)
        dec_into = self._dec_into
        nonce_of = _nonce
        with memoryview(out) as view:
            o = 0
            if first_end:
                o = first_end - 2 - TAG_LENGTH
                with memoryview(self._partial) as pview:
                    dec_into(nonce_of(nonce), pview[2:first_end], None, view[:o])
                nonce += 1
            for p in starts:
                length = (src[p] << 8) | src[p + 1]
                size = length - TAG_LENGTH
                dec_into(nonce_of(nonce), src[p + 2 : p + 2 + length], None, view[o : o + size])
                nonce += 1
                o += size
            return bytes(view[:total])

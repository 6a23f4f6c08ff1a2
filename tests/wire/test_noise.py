"""Noise XX for libp2p: a published test vector, in-memory handshakes, failures, fuzzing."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core import varint
from peerstack.core.identity import PrivateKey
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
from peerstack.wire.noise import (
    MAX_MESSAGE,
    MAX_MUXERS,
    MAX_NONCE,
    MAX_PLAINTEXT,
    SIGNATURE_PREFIX,
    TAG_LENGTH,
    EphemeralKeys,
    HandshakePayload,
    NoiseCredentials,
    NoiseHandshake,
    NoiseTransport,
    VerifiedSignatures,
    XXHandshakeState,
    encode_payload,
)

# Noise_XX_25519_ChaChaPoly_SHA256 from the cacophony test vectors (as shipped with the snow
# Rust library, tests/vectors/cacophony.txt): prologue "John Galt", fixed keys, a payload in
# every message; messages 3.. are transport messages, alternating responder / initiator.
VECTOR = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "c8e5f64e846193be2a834104c2a009868d6c9f3bd3c186299888b488b2f1f58e",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
            "4c756477696720766f6e204d69736573",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
            "81cbad1f276e038c48378ffce2b65285e08d6b68aaa3629a5a8639392490e5b9"
            "bd5269c2f1e4f488ed8831161f19b7815528f8982ffe09be9b5c412f8a0db50f"
            "8814c7194e83f23dbd8d162c9326ad",
        ),
        (
            "462e20412e20486179656b",
            "c7195ffacac1307ff99046f219750fc47693e23c3cb08b89c2af808b444850a8"
            "0ae475b9df0f169ae80a89be0865b57f58c9fea0d4ec82a286427402f113e4b6"
            "ae769a1d95941d49b25030",
        ),
        ("4361726c204d656e676572", "96763ed773f8e47bb3712f0e29b3060ffc956ffc146cee53d5e1df"),
        (
            "4a65616e2d426170746973746520536179",
            "3e40f15f6f3a46ae446b253bf8b1d9ffb6ed9b174d272328ff91a7e2e5c79c07f5",
        ),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "eb3f3515110702e047a6c9da4478b6ead94873c11c0f2d710ddb3f09fce024b3a58502ae3f",
        ),
    ],
}


def _x(hexkey: object) -> X25519PrivateKey:
    assert isinstance(hexkey, str)
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hexkey))


def test_cacophony_vector() -> None:
    prologue = bytes.fromhex(str(VECTOR["prologue"]))
    init = XXHandshakeState(
        initiator=True,
        static_key=_x(VECTOR["init_static"]),
        ephemeral_key=_x(VECTOR["init_ephemeral"]),
        prologue=prologue,
    )
    resp = XXHandshakeState(
        initiator=False,
        static_key=_x(VECTOR["resp_static"]),
        ephemeral_key=_x(VECTOR["resp_ephemeral"]),
        prologue=prologue,
    )
    messages = VECTOR["messages"]
    assert isinstance(messages, list)
    for index, (payload_hex, ct_hex) in enumerate(messages[:3]):
        writer, reader = (init, resp) if index % 2 == 0 else (resp, init)
        payload = bytes.fromhex(payload_hex)
        message = writer.write_message(payload)
        assert message.hex() == ct_hex
        assert reader.read_message(message) == payload
    assert init.finished
    assert resp.finished
    assert init.handshake_hash.hex() == VECTOR["handshake_hash"]
    assert resp.handshake_hash == init.handshake_hash

    # Transport messages through our framed transport: strip the 2-byte length to compare.
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    assert (i_send, i_recv) == (r_recv, r_send)
    t_init = NoiseTransport(i_send, i_recv)
    t_resp = NoiseTransport(r_send, r_recv)
    for index, (payload_hex, ct_hex) in enumerate(messages[3:], start=3):
        sender, receiver = (t_resp, t_init) if index % 2 == 1 else (t_init, t_resp)
        payload = bytes.fromhex(payload_hex)
        framed = sender.encrypt(payload)
        assert framed[2:].hex() == ct_hex
        assert int.from_bytes(framed[:2], "big") == len(framed) - 2
        assert receiver.decrypt(framed) == payload


def test_xx_state_checks_turns() -> None:
    hs = XXHandshakeState(initiator=True, static_key=X25519PrivateKey.generate())
    with pytest.raises(UsageError):
        hs.read_message(b"\x00" * 32)
    with pytest.raises(UsageError):
        hs.split()


# --- the libp2p handshake --------------------------------------------------------------------


def shuttle(a: NoiseHandshake, b: NoiseHandshake, chunk: int | None = None) -> None:
    for _ in range(10):
        moved = False
        for src, dst in ((a, b), (b, a)):
            out = src.data_to_send()
            if not out:
                continue
            moved = True
            step = chunk or len(out)
            for i in range(0, len(out), step):
                dst.receive_data(out[i : i + step])
        if not moved:
            return
    raise AssertionError("handshake did not settle")


def pair(
    chunk: int | None = None, **init_kwargs: object
) -> tuple[NoiseHandshake, NoiseHandshake, PrivateKey, PrivateKey]:
    ka = PrivateKey.generate()
    kb = PrivateKey.generate()
    init = NoiseHandshake(
        ka,
        initiator=True,
        remote_peer=PeerId.from_public_key(kb.public_key),
        muxers=["/yamux/1.0.0"],
    )
    resp = NoiseHandshake(kb, initiator=False, muxers=["/yamux/1.0.0", "/mplex/6.7.0"])
    shuttle(init, resp, chunk)
    return init, resp, ka, kb


@pytest.mark.parametrize("chunk", [None, 1, 7, 100])
def test_handshake_in_memory(chunk: int | None) -> None:
    init, resp, ka, kb = pair(chunk)
    assert init.complete
    assert resp.complete
    assert init.remote_peer == PeerId.from_public_key(kb.public_key)
    assert resp.remote_peer == PeerId.from_public_key(ka.public_key)
    assert str(init.remote_peer).startswith("12D3KooW")
    assert init.remote_public_key == kb.public_key
    assert resp.remote_public_key == ka.public_key
    assert init.remote_muxers == ["/yamux/1.0.0", "/mplex/6.7.0"]
    assert resp.remote_muxers == ["/yamux/1.0.0"]
    assert init.handshake_hash == resp.handshake_hash
    ti, tr = init.transport(), resp.transport()
    assert tr.decrypt(ti.encrypt(b"hello")) == b"hello"
    assert ti.decrypt(tr.encrypt(b"world")) == b"world"


def test_injected_ephemeral_keys_are_the_ones_sent() -> None:
    """NoiseHandshake(ephemeral_key=...) uses that key (made at construction otherwise)."""
    ea, eb = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    init = NoiseHandshake(PrivateKey.generate(), initiator=True, ephemeral_key=ea)
    resp = NoiseHandshake(PrivateKey.generate(), initiator=False, ephemeral_key=eb)
    m1 = init.data_to_send()
    assert m1[2:] == ea.public_key().public_bytes_raw()
    resp.receive_data(m1)
    m2 = resp.data_to_send()
    assert m2[2:34] == eb.public_key().public_bytes_raw()
    init.receive_data(m2)
    resp.receive_data(init.data_to_send())
    assert init.complete
    assert resp.complete
    assert init.handshake_hash == resp.handshake_hash


def test_each_handshake_has_its_own_ephemeral_key() -> None:
    key = PrivateKey.generate()
    first = NoiseHandshake(key, initiator=True).data_to_send()
    second = NoiseHandshake(key, initiator=True).data_to_send()
    assert first != second


def test_ephemeral_keys_made_ahead_serve_one_handshake_each() -> None:
    keys = EphemeralKeys()
    key = PrivateKey.generate()
    assert not keys.ready
    keys.refill()
    assert keys.ready
    spare = keys._spare
    assert spare is not None
    keys.refill()  # one spare at most: a second refill keeps the first
    assert keys._spare is spare
    first = NoiseHandshake(key, initiator=True, ephemeral_keys=keys).data_to_send()
    assert first[2:] == spare[1] == spare[0].public_key().public_bytes_raw()
    assert not keys.ready  # handed out and forgotten
    # Without a spare a fresh key is made; either way no two handshakes share one.
    sent = {first[2:]}
    for refill in (False, True, False, True):
        if refill:
            keys.refill()
        msg = NoiseHandshake(key, initiator=True, ephemeral_keys=keys).data_to_send()
        assert msg[2:] not in sent
        sent.add(msg[2:])
    with pytest.raises(UsageError):
        NoiseHandshake(
            key, initiator=True, ephemeral_keys=keys, ephemeral_key=X25519PrivateKey.generate()
        )


def test_handshake_with_keys_made_ahead_on_both_sides() -> None:
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    supply_a, supply_b = EphemeralKeys(), EphemeralKeys()
    hashes = set()
    for _ in range(3):
        supply_a.refill()
        supply_b.refill()
        init = NoiseHandshake(ka, initiator=True, ephemeral_keys=supply_a)
        resp = NoiseHandshake(kb, initiator=False, ephemeral_keys=supply_b)
        shuttle(init, resp)
        assert init.complete
        assert resp.complete
        assert init.handshake_hash == resp.handshake_hash
        hashes.add(init.handshake_hash)
        ti, tr = init.transport(), resp.transport()
        assert tr.decrypt(ti.encrypt(b"ahead")) == b"ahead"
    assert len(hashes) == 3


def test_a_spare_key_made_before_fork_is_not_used_by_the_child() -> None:
    keys = EphemeralKeys()
    keys.refill()
    spare = keys._spare
    assert spare is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the key take() gives it, then leave at once
        try:
            os.write(write_end, keys.take()[1])
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        child_key = os.read(read_end, 64)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert len(child_key) == 32
    assert child_key != spare[1]
    assert keys.take() == spare  # the parent still uses its own spare


def _cached_pair(
    ka: PrivateKey, kb: PrivateKey, seen_a: VerifiedSignatures, seen_b: VerifiedSignatures
) -> tuple[NoiseHandshake, NoiseHandshake]:
    init = NoiseHandshake(ka, initiator=True, credentials=NoiseCredentials(ka), verified=seen_a)
    resp = NoiseHandshake(kb, initiator=False, credentials=NoiseCredentials(kb), verified=seen_b)
    return init, resp


def test_verified_signatures_are_remembered_per_static_key() -> None:
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    creds_a, creds_b = NoiseCredentials(ka), NoiseCredentials(kb)
    seen_a, seen_b = VerifiedSignatures(), VerifiedSignatures()
    peers_seen: set[int] = set()
    for _ in range(3):  # the same static keys each time: one entry per side
        init = NoiseHandshake(ka, initiator=True, credentials=creds_a, verified=seen_a)
        resp = NoiseHandshake(kb, initiator=False, credentials=creds_b, verified=seen_b)
        shuttle(init, resp)
        assert init.complete
        assert resp.complete
        assert init.remote_peer == PeerId.from_public_key(kb.public_key)
        assert resp.remote_peer == PeerId.from_public_key(ka.public_key)
        assert len(seen_a) == len(seen_b) == 1
        peers_seen.add(id(resp.remote_peer))
    assert len(peers_seen) == 1  # one PeerId object for the returning peer
    # New static keys (a restarted peer) are verified and remembered too.
    init, resp = _cached_pair(ka, kb, seen_a, seen_b)
    shuttle(init, resp)
    assert len(seen_a) == len(seen_b) == 2


def test_the_expected_peer_id_object_is_the_one_handed_back() -> None:
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    expected = PeerId.from_public_key(kb.public_key)
    for seen in (None, VerifiedSignatures()):
        init = NoiseHandshake(ka, initiator=True, remote_peer=expected, verified=seen)
        shuttle(init, NoiseHandshake(kb, initiator=False))
        assert init.remote_peer is expected


def test_a_remembered_signature_does_not_cover_another_static_key() -> None:
    """A valid signature seen before, replayed with another static key, is still refused."""
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    creds_b = NoiseCredentials(kb)
    seen_a = VerifiedSignatures()
    init = NoiseHandshake(ka, initiator=True, verified=seen_a)
    shuttle(init, NoiseHandshake(kb, initiator=False, credentials=creds_b))
    assert len(seen_a) == 1
    # Another static key presented with kb's remembered payload (key and signature).
    forged = NoiseHandshake(kb, initiator=False, static_key=X25519PrivateKey.generate())
    _with_payload(forged, creds_b.payload)
    init = NoiseHandshake(ka, initiator=True, verified=seen_a)
    with pytest.raises(HandshakeError):
        shuttle(init, forged)
    # The remembered static key with a signature that does not verify is refused as well.
    sig = HandshakePayload.decode(creds_b.payload).identity_sig
    bad_sig = bytes([sig[0] ^ 1]) + sig[1:]
    liar = NoiseHandshake(kb, initiator=False, credentials=creds_b)
    _with_payload(liar, encode_payload(kb.public_key.to_protobuf(), bad_sig))
    init = NoiseHandshake(ka, initiator=True, verified=seen_a)
    with pytest.raises(HandshakeError):
        shuttle(init, liar)
    assert len(seen_a) == 1  # failures are never remembered


def test_verified_signatures_are_bounded() -> None:
    key = PrivateKey.generate()
    seen = VerifiedSignatures(max_entries=2)
    statics = [X25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(3)]
    sigs = [key.sign(SIGNATURE_PREFIX + s) for s in statics]
    raw_key = key.public_key.to_protobuf()
    peer = PeerId.from_public_key(key.public_key)
    for static, sig in zip(statics, sigs, strict=True):
        assert seen.verify(key.public_key, raw_key, static, sig) == peer
    assert len(seen) == 2
    assert seen._entry(raw_key, statics[0], sigs[0]) not in seen._seen  # the oldest went
    assert seen.verify(key.public_key, raw_key, statics[0], sigs[1]) is None
    # A remembered triple hands out the same PeerId object (its text is made once).
    first = seen.verify(key.public_key, raw_key, statics[2], sigs[2])
    assert first is seen.verify(key.public_key, raw_key, statics[2], sigs[2])
    off = VerifiedSignatures(max_entries=0)
    assert off.verify(key.public_key, raw_key, statics[0], sigs[0]) == peer
    assert len(off) == 0
    with pytest.raises(UsageError):
        seen.verify(key.public_key, raw_key, statics[0][:31], sigs[0])
    with pytest.raises(UsageError):
        VerifiedSignatures(max_entries=-1)


def test_handshake_message_sizes_and_framing() -> None:
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    init = NoiseHandshake(ka, initiator=True)
    resp = NoiseHandshake(kb, initiator=False)
    m1 = init.data_to_send()
    assert m1[:2] == b"\x00\x20"  # the bare ephemeral key, no payload
    assert len(m1) == 34
    assert init.data_to_send() == b""
    assert resp.data_to_send() == b""
    resp.receive_data(m1)
    m2 = resp.data_to_send()
    assert int.from_bytes(m2[:2], "big") == len(m2) - 2
    init.receive_data(m2)
    assert init.complete  # the initiator is done once it has written message 3
    assert not resp.complete
    m3 = init.data_to_send()
    resp.receive_data(m3)
    assert resp.complete


def test_first_transport_frame_pipelined_after_message_3() -> None:
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    init = NoiseHandshake(ka, initiator=True)
    resp = NoiseHandshake(kb, initiator=False)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    pipelined = init.data_to_send() + init.transport().encrypt(b"/multistream/1.0.0 early")
    resp.receive_data(pipelined)
    assert resp.complete
    rest = resp.unused_data()
    assert resp.transport().decrypt(rest) == b"/multistream/1.0.0 early"
    assert resp.unused_data() == b""
    with pytest.raises(UsageError):
        resp.receive_data(b"more")


def test_wrong_expected_peer_id() -> None:
    ka, kb, kc = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    init = NoiseHandshake(ka, initiator=True, remote_peer=PeerId.from_public_key(kc.public_key))
    resp = NoiseHandshake(kb, initiator=False)
    with pytest.raises(PeerIdMismatch):
        shuttle(init, resp)
    assert not init.complete
    with pytest.raises(UsageError):
        init.receive_data(b"")
    with pytest.raises(UsageError):
        init.transport()


def _with_payload(hs: NoiseHandshake, payload: bytes) -> NoiseHandshake:
    hs._payload = payload  # the test plays a misbehaving peer
    return hs


def test_bad_signature() -> None:
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    other = X25519PrivateKey.generate().public_key().public_bytes_raw()
    bad = encode_payload(kb.public_key.to_protobuf(), kb.sign(SIGNATURE_PREFIX + other))
    init = NoiseHandshake(ka, initiator=True)
    resp = _with_payload(NoiseHandshake(kb, initiator=False), bad)
    with pytest.raises(HandshakeError):
        shuttle(init, resp)


def test_bad_signature_from_initiator() -> None:
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    static = X25519PrivateKey.generate()
    # Signed by another identity than the one announced.
    bad = encode_payload(
        ka.public_key.to_protobuf(),
        kb.sign(SIGNATURE_PREFIX + static.public_key().public_bytes_raw()),
    )
    init = _with_payload(NoiseHandshake(ka, initiator=True, static_key=static), bad)
    resp = NoiseHandshake(kb, initiator=False)
    with pytest.raises(HandshakeError):
        shuttle(init, resp)
    assert not resp.complete


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", HandshakeError),  # no key, no signature
        (encode_payload(b"", b"sig"), HandshakeError),
        (encode_payload(b"\x08\x01\x12\x03abc", b"sig"), DecodeError),  # 3-byte Ed25519 key
        (b"\x0a\x05abc", DecodeError),  # truncated field
        (b"\x0b", DecodeError),  # group wire type
        (b"\x08\x01", DecodeError),  # identity_key as a varint
    ],
)
def test_malformed_payload(payload: bytes, error: type[Exception]) -> None:
    init = NoiseHandshake(PrivateKey.generate(), initiator=True)
    resp = _with_payload(NoiseHandshake(PrivateKey.generate(), initiator=False), payload)
    with pytest.raises(error):
        shuttle(init, resp)


def test_payload_matches_protobuf_encoding() -> None:
    # Bytes produced by the protobuf runtime from core/pb/noise.proto for the same message.
    expected = bytes.fromhex("0a06080112026162120373696722120a021200120c2f79616d75782f312e302e30")
    ours = encode_payload(b"\x08\x01\x12\x02ab", b"sig", ["/yamux/1.0.0"], [b"\x12\x00"])
    assert ours == expected
    decoded = HandshakePayload.decode(expected)
    assert decoded.identity_key == b"\x08\x01\x12\x02ab"
    assert decoded.identity_sig == b"sig"
    assert decoded.muxers == ["/yamux/1.0.0"]
    assert decoded.certhashes == [b"\x12\x00"]


def test_payload_skips_unknown_fields_and_merges_extensions() -> None:
    buf = (
        encode_payload(b"key", b"sig", ["/a"])
        + b"\x1a\x03old"  # field 3 (removed early data)
        + b"\x28\x96\x01"  # field 5, varint
        + b"\x31"
        + b"\x00" * 8  # field 6, fixed64
        + b"\x3d"
        + b"\x00" * 4  # field 7, fixed32
        + encode_payload(b"key2", b"sig2", ["/b"])
    )
    decoded = HandshakePayload.decode(buf)
    assert decoded.identity_key == b"key2"
    assert decoded.identity_sig == b"sig2"
    assert decoded.muxers == ["/a", "/b"]


def test_payload_limits() -> None:
    with pytest.raises(LimitExceeded):
        HandshakePayload.decode(encode_payload(b"k", b"s", ["/m"] * (MAX_MUXERS + 1)))
    with pytest.raises(DecodeError):
        HandshakePayload.decode(b"\x22\x03\x12\x01\xff")  # muxer id not UTF-8
    with pytest.raises(UsageError):
        NoiseHandshake(PrivateKey.generate(), initiator=True, muxers=["/m"] * (MAX_MUXERS + 1))
    with pytest.raises(UsageError):
        NoiseHandshake(PrivateKey.generate(), initiator=True, muxers=["/m" * 40000])


def test_tampered_handshake_message() -> None:
    init = NoiseHandshake(PrivateKey.generate(), initiator=True)
    resp = NoiseHandshake(PrivateKey.generate(), initiator=False)
    resp.receive_data(init.data_to_send())
    m2 = bytearray(resp.data_to_send())
    m2[50] ^= 1
    with pytest.raises(NoiseError):
        init.receive_data(bytes(m2))


def test_short_handshake_messages() -> None:
    resp = NoiseHandshake(PrivateKey.generate(), initiator=False)
    with pytest.raises(NoiseError):
        resp.receive_data(b"\x00\x10" + b"\x01" * 16)
    init = NoiseHandshake(PrivateKey.generate(), initiator=True)
    with pytest.raises(NoiseError):
        init.receive_data(b"\x00\x40" + b"\x01" * 64)


def test_low_order_ephemeral_key_is_refused() -> None:
    resp = NoiseHandshake(PrivateKey.generate(), initiator=False)
    with pytest.raises(NoiseError):
        resp.receive_data(b"\x00\x20" + b"\x00" * 32)


# --- the transport ---------------------------------------------------------------------------


def transports() -> tuple[NoiseTransport, NoiseTransport]:
    k1, k2 = os.urandom(32), os.urandom(32)
    return NoiseTransport(k1, k2), NoiseTransport(k2, k1)


def frames_of(stream: bytes) -> list[int]:
    lengths = []
    i = 0
    while i < len(stream):
        length = int.from_bytes(stream[i : i + 2], "big")
        lengths.append(length)
        i += 2 + length
    assert i == len(stream)
    return lengths


def test_encrypt_splits_into_bounded_frames() -> None:
    a, b = transports()
    data = os.urandom(3 * MAX_PLAINTEXT + 5)
    wire = a.encrypt(data)
    assert frames_of(wire) == [MAX_MESSAGE, MAX_MESSAGE, MAX_MESSAGE, 5 + 16]
    assert b.decrypt(wire) == data
    assert a.encrypt(b"") == b""


def test_encrypt_beyond_scratch_and_mixed_sizes() -> None:
    a, b = transports()
    parts: list[bytes | bytearray] = [
        b"x",
        os.urandom(5000),
        os.urandom(2 << 20),
        b"",
        b"tail",
        bytearray(70000),
    ]
    wire = b"".join(a.encrypt(p) for p in parts)
    assert max(frames_of(wire)) <= MAX_MESSAGE
    assert b.decrypt(wire) == b"".join(parts)
    assert b.decrypt(memoryview(a.encrypt(memoryview(b"view")))) == b"view"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 140_000), min_size=1, max_size=4),
    st.lists(st.integers(1, 90_000), min_size=1, max_size=20),
)
def test_frames_split_across_reads(sizes: list[int], cuts: list[int]) -> None:
    a, b = transports()
    data = [os.urandom(s) for s in sizes]
    wire = b"".join(a.encrypt(d) for d in data)
    out = []
    i = 0
    k = 0
    while i < len(wire):
        step = cuts[k % len(cuts)]
        out.append(b.decrypt(wire[i : i + step]))
        assert b.pending <= MAX_MESSAGE + 2
        i += step
        k += 1
    assert b"".join(out) == b"".join(data)
    assert b.pending == 0


def test_one_byte_at_a_time() -> None:
    a, b = transports()
    wire = a.encrypt(b"abc") + a.encrypt(b"") + a.encrypt(os.urandom(3000))
    out = b"".join(b.decrypt(wire[i : i + 1]) for i in range(len(wire)))
    assert out[:3] == b"abc"
    assert len(out) == 3003


def test_empty_frame_is_valid() -> None:
    # Other implementations may send a zero-length plaintext frame (just the 16-byte tag).
    key = os.urandom(32)
    raw = ChaCha20Poly1305(key)
    nonce = [(n).to_bytes(8, "little").rjust(12, b"\x00") for n in range(3)]
    wire = b"\x00\x10" + raw.encrypt(nonce[0], b"", None)
    wire += b"\x00\x11" + raw.encrypt(nonce[1], b"x", None)
    wire += b"\x00\x10" + raw.encrypt(nonce[2], b"", None)
    b = NoiseTransport(os.urandom(32), key)
    assert b.decrypt(wire[:18]) == b""
    assert b.decrypt(wire[18:]) == b"x"
    assert b.pending == 0


def test_tampered_ciphertext() -> None:
    a, b = transports()
    wire = bytearray(a.encrypt(b"secret" * 100))
    wire[10] ^= 0x80
    with pytest.raises(NoiseError):
        b.decrypt(wire)
    # The caller's buffer is not pinned by our error, and the transport stays dead.
    wire.clear()
    with pytest.raises(NoiseError):
        b.decrypt(a.encrypt(b"again"))


def test_tampered_frame_among_several() -> None:
    a, b = transports()
    wire = bytearray(a.encrypt(os.urandom(200_000)))
    wire[-1] ^= 1
    buf = bytearray(wire)
    with pytest.raises(NoiseError):
        b.decrypt(memoryview(buf))
    buf += b"resizable"


def test_frame_shorter_than_tag() -> None:
    _, b = transports()
    with pytest.raises(NoiseError):
        b.decrypt(b"\x00\x0f" + b"\x00" * 15)
    _, b = transports()
    assert b.decrypt(b"\x00") == b""
    with pytest.raises(NoiseError):
        b.decrypt(b"\x05" + b"\x00" * 5)


def test_replayed_frame_fails() -> None:
    a, b = transports()
    frame = a.encrypt(b"once")
    assert b.decrypt(frame) == b"once"
    with pytest.raises(NoiseError):
        b.decrypt(frame)


# --- fuzzing ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=6), st.booleans())
def test_fuzz_handshake(chunks: list[bytes], initiator: bool) -> None:
    hs = NoiseHandshake(PrivateKey.generate(), initiator=initiator)
    try:
        for c in chunks:
            hs.receive_data(c)
            assert len(hs._buf) <= MAX_MESSAGE + 2
    except PeerError:
        assert not hs.complete
        return
    assert not hs.complete  # nobody can forge the peer's authenticated messages


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 65535), st.binary(max_size=300))
def test_fuzz_handshake_framed_messages(length: int, body: bytes) -> None:
    """A well-framed message of any length up to the maximum, with junk content."""
    hs = NoiseHandshake(PrivateKey.generate(), initiator=False)
    data = length.to_bytes(2, "big") + (body * (length // max(len(body), 1) + 1))[:length]
    try:
        hs.receive_data(data)
    except PeerError:
        return
    assert len(hs._buf) <= MAX_MESSAGE + 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=8))
def test_fuzz_transport_decrypt(chunks: list[bytes]) -> None:
    _, b = transports()
    try:
        for c in chunks:
            assert b.decrypt(c) == b""  # no frame can authenticate without the key
            assert b.pending <= MAX_MESSAGE + 2
    except NoiseError:
        return


def test_transport_partial_buffer_is_bounded() -> None:
    _, b = transports()
    assert b.decrypt(b"\xff\xff" + b"\x00" * 65534) == b""
    assert b.pending == MAX_MESSAGE + 1
    with pytest.raises(NoiseError):
        b.decrypt(b"\x00" * 100_000)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 4),
    st.binary(max_size=600),
    st.binary(max_size=300),
    st.lists(st.binary(max_size=40), max_size=4),
    st.binary(max_size=64),
)
def test_fuzz_authenticated_payload(
    key_type: int, key_data: bytes, sig: bytes, muxers: list[bytes], junk: bytes
) -> None:
    """Whatever an authenticated peer puts in its payload gives a typed error, never a crash."""
    key = b"\x08" + varint.encode(key_type) + b"\x12" + varint.encode(len(key_data)) + key_data
    ext = b"".join(b"\x12" + varint.encode(len(m)) + m for m in muxers)
    payload = b"\x0a" + varint.encode(len(key)) + key + b"\x12" + varint.encode(len(sig)) + sig
    payload += b"\x22" + varint.encode(len(ext)) + ext + junk
    init = NoiseHandshake(PrivateKey.generate(), initiator=True)
    resp = _with_payload(NoiseHandshake(PrivateKey.generate(), initiator=False), payload)
    with pytest.raises(PeerError):
        shuttle(init, resp)
    assert not init.complete


def test_message_1_payload_is_ignored_and_responder_checks_expected_peer() -> None:
    ka, kb, kc = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    init = NoiseHandshake(ka, initiator=True)
    resp = NoiseHandshake(kb, initiator=False, remote_peer=PeerId.from_public_key(kc.public_key))
    m1 = init.data_to_send()
    # Re-frame message 1 with a stray plaintext payload: the initiator's hash then differs
    # from the responder's, so message 2 cannot authenticate at the initiator.
    resp.receive_data((len(m1) - 2 + 3).to_bytes(2, "big") + m1[2:] + b"abc")
    with pytest.raises(NoiseError):
        init.receive_data(resp.data_to_send())
    # A responder told whom to expect refuses anyone else.
    init = NoiseHandshake(ka, initiator=True)
    resp = NoiseHandshake(kb, initiator=False, remote_peer=PeerId.from_public_key(kc.public_key))
    with pytest.raises(PeerIdMismatch):
        shuttle(init, resp)
    assert init.complete  # the initiator finished its side before the responder refused
    assert not resp.complete


def test_single_frame_fast_path_keeps_nonces_in_step_with_the_general_path() -> None:
    a, b = transports()
    msgs = [b"ping" * 8, os.urandom(3000), b"", b"x", os.urandom(70_000), b"tail"]
    for i, msg in enumerate(msgs):
        wire = a.encrypt(msg)
        # whole frames as bytes, bytearray, memoryview; and cut in two (the general path)
        if i % 3 == 0:
            assert b.decrypt(wire) == msg
        elif i % 3 == 1:
            assert b.decrypt(memoryview(bytearray(wire))) == msg
        else:
            assert b.decrypt(wire[:7]) + b.decrypt(memoryview(wire)[7:]) == msg
    assert b.pending == 0
    # a view of another item format is taken byte for byte
    wire = a.encrypt(b"abcd")
    assert len(wire) % 2 == 0
    assert b.decrypt(memoryview(wire).cast("H")) == b"abcd"


def test_tampered_single_frame_breaks_the_transport() -> None:
    a, b = transports()
    assert b.decrypt(a.encrypt(b"ok")) == b"ok"
    wire = bytearray(a.encrypt(b"small"))
    wire[-1] ^= 1
    with pytest.raises(NoiseError):
        b.decrypt(memoryview(wire))
    wire += b"resizable"  # no view on the caller's buffer survives the error
    with pytest.raises(NoiseError):
        b.decrypt(a.encrypt(b"next"))


def test_release_scratch_after_bulk() -> None:
    a, b = transports()
    bulk = os.urandom(8 * MAX_PLAINTEXT)
    wire = a.encrypt(bulk)
    assert b.decrypt(wire) == bulk
    assert a.scratch_size > 0
    assert b.scratch_size > 0
    a.release_scratch()
    b.release_scratch()
    assert a.scratch_size == 0
    assert b.scratch_size == 0
    # the transports go on working, growing the scratch again for the next burst
    wire = a.encrypt(bulk)
    assert b.decrypt(wire) == bulk
    assert b.decrypt(a.encrypt(b"small")) == b"small"


def _read_like_a_socket(b: NoiseTransport, wire: bytes, cuts: list[int]) -> bytes:
    """Feed ``wire`` the way net/ does: into recv_buffer() when Noise names one, else
    through decrypt(); each read is at most the next cut (and at most what the view holds)."""
    out = []
    i = 0
    k = 0
    while i < len(wire):
        step = cuts[k % len(cuts)]
        k += 1
        target = b.recv_buffer()
        if target is not None:
            step = min(step, len(target), len(wire) - i)
            target[:step] = wire[i : i + step]
            target.release()
            out.append(b.recv_done(step))
        else:
            out.append(b.decrypt(memoryview(wire)[i : i + step]))
            step = min(step, len(wire) - i)
        assert b.pending <= MAX_MESSAGE + 1
        i += step
    return b"".join(out)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 140_000), min_size=1, max_size=4),
    st.lists(st.integers(1, 90_000), min_size=1, max_size=20),
)
def test_reads_into_the_partial_frame_give_the_same_plaintext(
    sizes: list[int], cuts: list[int]
) -> None:
    a, b = transports()
    data = [os.urandom(s) for s in sizes]
    wire = b"".join(a.encrypt(d) for d in data)
    assert _read_like_a_socket(b, wire, cuts) == b"".join(data)
    assert b.pending == 0
    assert b.recv_buffer() is None


def test_recv_buffer_is_exactly_the_missing_tail() -> None:
    a, b = transports()
    msg = os.urandom(MAX_PLAINTEXT)
    wire = a.encrypt(msg) + a.encrypt(b"next")
    assert len(wire) == MAX_MESSAGE + 2 + 2 + TAG_LENGTH + 4
    assert b.recv_buffer() is None  # nothing held
    assert b.decrypt(wire[:1]) == b""
    assert b.recv_buffer() is None  # length not known yet
    assert b.decrypt(wire[1:1000]) == b""
    view = b.recv_buffer()
    assert view is not None
    assert len(view) == MAX_MESSAGE + 2 - 1000
    view[:10] = wire[1000:1010]
    assert b.recv_done(10) == b""
    view = b.recv_buffer()
    assert view is not None
    assert len(view) == MAX_MESSAGE + 2 - 1010
    view[:] = wire[1010 : MAX_MESSAGE + 2]
    assert b.recv_done(len(view)) == msg
    assert b.pending == 0
    assert b.recv_buffer() is None
    # the next frame, read from the caller's own buffer, stays in step
    assert b.decrypt(wire[MAX_MESSAGE + 2 :]) == b"next"
    with pytest.raises(UsageError):
        b.recv_done(1)  # no frame in progress


def test_recv_done_checks_the_tag_and_the_count() -> None:
    a, b = transports()
    wire = bytearray(a.encrypt(os.urandom(5000)))
    assert b.decrypt(wire[:100]) == b""
    view = b.recv_buffer()
    assert view is not None
    with pytest.raises(UsageError):
        b.recv_done(len(view) + 1)
    wire[-1] ^= 1
    view[:] = wire[100:]
    with pytest.raises(NoiseError):
        b.recv_done(len(view))
    assert b.recv_buffer() is None
    with pytest.raises(NoiseError):
        b.decrypt(a.encrypt(b"after"))


def test_encrypt_into_matches_encrypt_and_checks_room() -> None:
    a, b = transports()
    a2, b2 = transports()
    for size in (1, 100, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 3 * MAX_PLAINTEXT + 7):
        msg = os.urandom(size)
        out = bytearray(NoiseTransport.sealed_size(size) + 10)
        n = a.encrypt_into(msg, out, 10)
        assert n == NoiseTransport.sealed_size(size)
        assert b.decrypt(out[10 : 10 + n]) == msg
        assert b2.decrypt(a2.encrypt(msg)) == msg
    with pytest.raises(UsageError):
        a.encrypt_into(b"x" * 100, bytearray(100))
    assert a.encrypt_into(b"", bytearray()) == 0
    # the nonce did not move on the refused call
    assert b.decrypt(a.encrypt(b"still in step")) == b"still in step"


def test_release_scratch_keeps_a_frame_in_progress() -> None:
    a, b = transports()
    msg = os.urandom(40_000)
    wire = a.encrypt(msg)
    assert b.decrypt(wire[:20_000]) == b""
    b.release_scratch()  # the partial frame must survive
    assert b.pending == 20_000
    assert b.decrypt(wire[20_000:]) == msg
    b.release_scratch()
    assert b.scratch_size == 0


def test_seal_is_one_frame_like_encrypt() -> None:
    a, b = transports()
    a2, _ = transports()
    for msg in (b"x", os.urandom(32), os.urandom(MAX_PLAINTEXT)):
        sealed = a.seal(msg)
        assert len(sealed) == NoiseTransport.sealed_size(len(msg))
        assert b.decrypt(sealed) == msg
    for bad in (b"", bytes(MAX_PLAINTEXT + 1)):
        with pytest.raises(UsageError):
            a2.seal(bad)
    assert b.decrypt(a.encrypt(b"in step")) == b"in step"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000), st.lists(st.integers(1, 3000), min_size=1, max_size=8))
def test_fuzz_reads_into_the_partial_frame(junk: bytes, cuts: list[int]) -> None:
    """Garbage read the way net/ reads (into recv_buffer() when named): plaintext never, a
    NoiseError or nothing yet, and never more held than one frame."""
    _, b = transports()
    try:
        assert _read_like_a_socket(b, junk, cuts) == b""
    except NoiseError:
        assert b.recv_buffer() is None


def _receive(b: NoiseTransport, wire: bytes, how: str) -> bytes:
    """Feed one frame as a whole, in two pieces, or its rest read into recv_buffer()."""
    if how == "whole":
        return b.decrypt(wire)
    assert b.decrypt(wire[:5]) == b""
    if how == "pieces":
        return b.decrypt(memoryview(wire)[5:])
    view = b.recv_buffer()
    assert view is not None
    view[:] = wire[5:]
    return b.recv_done(len(wire) - 5)


@pytest.mark.parametrize("how", ["whole", "pieces", "direct"])
def test_last_nonce_is_refused_on_every_path(how: str) -> None:
    """Nonce 2**64 - 1 is reserved: seal(), encrypt() and each receive path use nonce
    2**64 - 2 and then refuse (the receive side before it even authenticates a frame)."""
    a, b = transports()
    a._send_n = b._recv_n = MAX_NONCE - 2
    assert _receive(b, a.seal(b"last"), how) == b"last"
    with pytest.raises(NoiseError, match="send nonce exhausted"):
        a.seal(b"more")
    with pytest.raises(NoiseError, match="send nonce exhausted"):
        a.encrypt(b"more")
    with pytest.raises(NoiseError, match="receive nonce exhausted"):
        _receive(b, b"\x00\x14" + bytes(20), how)


def test_decrypt_takes_the_first_nbytes_of_a_read_buffer() -> None:
    """decrypt(buffer, nbytes), as a reader passes its buffer after a read: a whole frame,
    two frames, a frame cut in two, each only from the first nbytes of a larger buffer."""
    a, b = transports()
    buf = bytearray(70_000)
    view = memoryview(buf)
    bulk = os.urandom(3000)
    one = a.encrypt(b"one")
    two = a.encrypt(b"two") + a.encrypt(b"three")
    cut = a.encrypt(bulk)
    cases = [(one, [len(one)], b"one"), (two, [len(two)], b"twothree")]
    cases.append((cut, [100, len(cut) - 100], bulk))
    for wire, pieces, plain in cases:
        got = b""
        pos = 0
        for size in pieces:
            buf[:size] = wire[pos : pos + size]
            buf[size : size + 40] = os.urandom(40)  # what lies past nbytes is never read
            got += b.decrypt(view, size)
            pos += size
        assert got == plain
    assert b.pending == 0
    # nbytes past the input: our mistake, refused without touching the transport
    frame = a.encrypt(b"next")
    for short in (frame[:-1], bytearray(frame[:-1])):
        with pytest.raises(UsageError):
            b.decrypt(short, len(frame))
    assert b.decrypt(memoryview(frame), len(frame)) == b"next"

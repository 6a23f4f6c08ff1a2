import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from peerstack.core.identity import KeyType, PrivateKey, PublicKey, load_or_create
from peerstack.core.peer_id import PeerId
from peerstack.errors import DecodeError, UsageError

# Test vector from libp2p/specs peer-ids/peer-ids.md (Ed25519 public key message).
SPEC_ED25519_PUB = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)


def test_sign_verify_roundtrip() -> None:
    key = PrivateKey.generate()
    sig = key.sign(b"hello")
    assert key.public_key.verify(sig, b"hello")
    assert not key.public_key.verify(sig, b"hellO")
    assert not key.public_key.verify(b"\0" * 64, b"hello")


def test_public_key_protobuf_is_deterministic_and_matches_spec_vector() -> None:
    pub = PublicKey.from_protobuf(SPEC_ED25519_PUB)
    assert pub.key_type is KeyType.ED25519
    assert pub.to_protobuf() == SPEC_ED25519_PUB
    pid = PeerId.from_public_key(pub)
    assert str(pid).startswith("12D3KooW")
    assert pid.extract_public_key() == pub


def test_private_key_roundtrip() -> None:
    key = PrivateKey.generate()
    again = PrivateKey.from_protobuf(key.to_protobuf())
    assert again.public_key == key.public_key
    corrupted = bytearray(key.to_protobuf())
    corrupted[-1] ^= 1
    with pytest.raises(DecodeError):
        PrivateKey.from_protobuf(bytes(corrupted))


def test_seed_length_is_checked() -> None:
    with pytest.raises(UsageError):
        PrivateKey.from_seed(b"short")


def test_verify_rsa_secp256k1_ecdsa() -> None:
    msg = b"noise-libp2p-static-key:" + os.urandom(32)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub = PublicKey.from_protobuf(PublicKey(KeyType.RSA, der).to_protobuf())
    assert pub.verify(rsa_key.sign(msg, padding.PKCS1v15(), hashes.SHA256()), msg)
    assert str(PeerId.from_public_key(pub)).startswith("Qm")

    k1 = ec.generate_private_key(ec.SECP256K1())
    point = k1.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    pub = PublicKey.from_protobuf(PublicKey(KeyType.SECP256K1, point).to_protobuf())
    assert pub.verify(k1.sign(msg, ec.ECDSA(hashes.SHA256())), msg)
    assert not pub.verify(k1.sign(msg + b"x", ec.ECDSA(hashes.SHA256())), msg)

    p256 = ec.generate_private_key(ec.SECP256R1())
    der = p256.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub = PublicKey.from_protobuf(PublicKey(KeyType.ECDSA, der).to_protobuf())
    assert pub.verify(p256.sign(msg, ec.ECDSA(hashes.SHA256())), msg)


def test_small_rsa_keys_are_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = weak.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(DecodeError):
        PublicKey.from_protobuf(PublicKey(KeyType.RSA, der).to_protobuf())


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "repo" / "identity.key"
    key = load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create(path).public_key == key.public_key


@given(st.binary(max_size=200))
def test_arbitrary_public_key_bytes(data: bytes) -> None:
    try:
        key = PublicKey.from_protobuf(data)
    except DecodeError:
        return
    assert key.verify(b"\0" * 64, b"m") in (True, False)


def test_key_file_ignores_planted_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"")
    os.chmod(decoy, 0o644)
    (tmp_path / "identity.key.tmp").symlink_to(decoy)
    load_or_create(path)
    assert decoy.read_bytes() == b""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.is_symlink()


def test_public_key_parsing_is_memoized_and_bounded() -> None:
    from peerstack.core import identity

    key = PrivateKey.generate().public_key
    encoded = key.to_protobuf()
    first = PublicKey.from_protobuf(encoded)
    assert PublicKey.from_protobuf(encoded) is first
    assert PublicKey.from_protobuf(bytearray(encoded)) is first  # type: ignore[arg-type]
    assert first == key
    assert first.verify(PrivateKey.generate().sign(b"x"), b"x") is False
    cache = identity._parse_public_key
    assert cache.cache_info().maxsize == identity.KEY_CACHE_SIZE
    before = cache.cache_info().currsize
    with pytest.raises(DecodeError):  # failures are not kept
        PublicKey.from_protobuf(b"\x08\x01\x12\x03abc")
    with pytest.raises(DecodeError):  # nor is anything over the size limit looked at
        PublicKey.from_protobuf(b"\x08" * (identity.MAX_KEY_MESSAGE + 1))
    assert cache.cache_info().currsize == before

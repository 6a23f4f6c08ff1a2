"""CID parsing and formatting, v0 and v1, with typed errors for anything else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core import multibase
from peerstack.core.cid import CID, DAG_CBOR, DAG_PB, LIBP2P_KEY, RAW, Prefix, UnsupportedCid
from peerstack.core.multihash import BLAKE3, SHA2_256, Multihash
from peerstack.core.varint import encode as varint_encode
from peerstack.errors import DecodeError, UsageError

EMPTY_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
EMPTY_FILE_V0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"


def test_known_cids_round_trip() -> None:
    raw = CID.parse(EMPTY_RAW)
    assert raw.version == 1
    assert raw.codec == RAW
    assert raw.multihash.code == SHA2_256
    assert raw == CID.hash_of(b"")
    assert str(raw) == EMPTY_RAW
    v0 = CID.parse(EMPTY_FILE_V0)
    assert v0.version == 0
    assert v0.codec == DAG_PB
    assert str(v0) == EMPTY_FILE_V0
    assert CID.from_bytes(v0.to_bytes()) == v0
    assert v0.to_bytes() == v0.multihash.to_bytes()


def test_v0_to_v1_and_bases() -> None:
    v0 = CID.parse(EMPTY_FILE_V0)
    v1 = v0.to_v1()
    assert str(v1).startswith("bafybei")
    assert v1.multihash == v0.multihash
    z = v1.encode("base58btc")
    assert z.startswith("z")
    assert CID.parse(z) == v1
    assert v0.encode("base58btc") == EMPTY_FILE_V0


def test_all_codecs_accepted() -> None:
    mh = Multihash(SHA2_256, bytes(32))
    for codec in (RAW, DAG_PB, DAG_CBOR, LIBP2P_KEY):
        cid = CID.v1(codec, mh)
        assert CID.parse(str(cid)) == cid


def test_libp2p_key_identity_cid() -> None:
    cid = CID.v1(LIBP2P_KEY, Multihash(0, bytes(36)))
    assert CID.from_bytes(cid.to_bytes()) == cid


def test_unknown_codec_and_hash_are_typed_errors() -> None:
    with pytest.raises(UnsupportedCid):
        CID.from_bytes(CID.v1(0x0129, Multihash(SHA2_256, bytes(32))).to_bytes())
    with pytest.raises(UnsupportedCid):
        CID.from_bytes(CID.v1(RAW, Multihash(0x13, bytes(64))).to_bytes())
    with pytest.raises(UnsupportedCid):
        CID.from_bytes(CID.v1(RAW, Multihash(SHA2_256, bytes(31))).to_bytes())
    with pytest.raises(UnsupportedCid):
        CID.from_bytes(CID.v1(RAW, Multihash(0, b"inline")).to_bytes())
    with pytest.raises(UnsupportedCid):
        CID.from_bytes(b"\x02\x55\x12\x20" + bytes(32))
    with pytest.raises(DecodeError):
        CID.parse(multibase.encode(CID.parse(EMPTY_FILE_V0).to_bytes()))
    with pytest.raises(DecodeError):
        CID.parse("bafy")


def test_v0_is_only_dag_pb_sha256() -> None:
    with pytest.raises(UsageError):
        CID(0, RAW, Multihash(SHA2_256, bytes(32)))
    with pytest.raises(UsageError):
        CID.hash_of(b"x", RAW, version=0)


def test_blake3() -> None:
    pytest.importorskip("blake3")
    cid = CID.hash_of(b"abc", RAW, hash_code=BLAKE3)
    assert cid.multihash.code == BLAKE3
    assert len(cid.multihash.digest) == 32
    # the blake3 test vector of "abc"
    assert cid.multihash.digest.hex().startswith("6437b3ac38465133ffb63b75273a8db5")
    assert CID.parse(str(cid)) == cid
    assert cid.verify(b"abc")
    assert not cid.verify(b"abd")


def test_prefix_round_trip() -> None:
    for cid in (CID.hash_of(b"x"), CID.hash_of(b"x", DAG_PB, 0)):
        assert Prefix.from_bytes(cid.prefix()).cid_for(b"x") == cid
    with pytest.raises(UnsupportedCid):
        Prefix.from_bytes(bytes([1, 0x55, 0x13, 64]))
    with pytest.raises(UnsupportedCid):
        Prefix.from_bytes(bytes([0, 0x55, 0x12, 32]))


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_from_bytes_never_crashes(data: bytes) -> None:
    try:
        cid = CID.from_bytes(data)
    except DecodeError:
        return
    assert CID.from_bytes(cid.to_bytes()) == cid


@settings(max_examples=400)
@given(
    st.sampled_from([1, 0, 2]),
    st.integers(0, 0x1FF),
    st.sampled_from([SHA2_256, BLAKE3, 0x13]),
    st.binary(min_size=32, max_size=32),
)
def test_the_short_v1_form_parses_as_the_varint_form_does(
    version: int, codec: int, code: int, digest: bytes
) -> None:
    # 36 bytes with a one-byte codec and sha2-256 take a shortcut past the varint parsing: it
    # must accept and refuse exactly what the general path does
    data = bytes([version]) + varint_encode(codec) + bytes([code, 32]) + digest
    supported = (
        version == 1 and codec in (RAW, DAG_PB, DAG_CBOR, LIBP2P_KEY) and code in (SHA2_256, BLAKE3)
    )
    try:
        cid = CID.from_bytes(data)
    except DecodeError:
        assert not supported
        return
    assert supported
    assert (cid.version, cid.codec, cid.multihash) == (1, codec, Multihash(code, digest))
    assert cid.to_bytes() == data


@settings(max_examples=300)
@given(st.text(max_size=120))
def test_parse_never_crashes(text: str) -> None:
    try:
        cid = CID.parse(text)
    except DecodeError:
        return
    assert CID.parse(str(cid)) == cid


@settings(max_examples=300)
@given(st.binary(max_size=12))
def test_prefix_never_crashes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Prefix.from_bytes(data)


def test_cached_hash_matches_equality_and_survives_pickling() -> None:
    import pickle

    a = CID.hash_of(b"block")
    b = CID.from_bytes(a.to_bytes())
    assert a == b
    assert hash(a) == hash(b)
    assert {a: 1}[b] == 1
    c = pickle.loads(pickle.dumps(a))
    assert c == a
    assert hash(c) == hash(a)
    assert CID.hash_of(b"other") != a

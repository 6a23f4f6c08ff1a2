"""Record validation: /pk/, /ipns/ (V2 signatures, V1 copies, expiry, sequence), registry."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.dht import cbor
from peerstack.dht.pb import ipns_pb2
from peerstack.dht.records import (
    IPNS_SIGNATURE_PREFIX,
    RecordError,
    Validators,
    create_ipns_record,
    format_rfc3339_ns,
    ipns_key,
    parse_ipns_record,
    parse_rfc3339_ns,
    pk_key,
)
from peerstack.errors import DecodeError, UsageError

NOW = 1_700_000_000.0
DAY_NS = 86_400 * 10**9
KEY = PrivateKey.from_seed(bytes(range(32)))
PEER = PeerId.from_public_key(KEY.public_key)


def record(seq: int = 1, eol_ns: int | None = None, **kw: object) -> bytes:
    eol = int(NOW * 1e9) + DAY_NS if eol_ns is None else eol_ns
    return create_ipns_record(KEY, b"/ipfs/bafkqaddwgevxmmraojswg33smq", seq, eol, **kw)  # type: ignore[arg-type]


def test_rfc3339() -> None:
    assert parse_rfc3339_ns(b"1970-01-01T00:00:00.000000001Z") == 1
    assert parse_rfc3339_ns(b"2000-01-01T01:00:00+01:00") == 946684800 * 10**9
    assert format_rfc3339_ns(1) == b"1970-01-01T00:00:00.000000001Z"
    ns = 1_234_567_890_123_456_789
    assert parse_rfc3339_ns(format_rfc3339_ns(ns)) == ns
    for bad in (b"", b"2020-13-01T00:00:00Z", b"yesterday", b"2020-01-01 00:00:00Z"):
        with pytest.raises(DecodeError):
            parse_rfc3339_ns(bad)


def test_pk_records() -> None:
    v = Validators()
    v.validate(pk_key(PEER), KEY.public_key.to_protobuf(), NOW)
    other = PrivateKey.from_seed(b"\x01" * 32).public_key.to_protobuf()
    with pytest.raises(RecordError):
        v.validate(pk_key(PEER), other, NOW)
    with pytest.raises(RecordError):
        v.validate(pk_key(PEER), b"garbage", NOW)
    assert v.select(pk_key(PEER), [KEY.public_key.to_protobuf()]) == 0


def test_ipns_valid_record_and_its_cbor() -> None:
    raw = record(seq=7)
    rec = parse_ipns_record(PEER, raw, NOW)
    assert rec.sequence == 7
    assert rec.value == b"/ipfs/bafkqaddwgevxmmraojswg33smq"
    entry = ipns_pb2.IpnsEntry()
    entry.ParseFromString(raw)
    # The signed data is canonical DAG-CBOR with the five fields in spec order.
    data = entry.data
    assert [
        data.index(k) for k in (b"TTL", b"Value", b"Sequence", b"Validity", b"ValidityType")
    ] == sorted(
        data.index(k) for k in (b"TTL", b"Value", b"Sequence", b"Validity", b"ValidityType")
    )
    assert cbor.encode(cbor.decode(data)) == data
    assert KEY.public_key.verify(entry.signatureV2, IPNS_SIGNATURE_PREFIX + data)
    assert not entry.HasField("pubKey")  # Ed25519 keys are inlined in the name
    Validators().validate(ipns_key(PEER), raw, NOW)
    parse_ipns_record(PEER, record(v1_fields=False), NOW)


def _mutate(raw: bytes, **fields: object) -> bytes:
    entry = ipns_pb2.IpnsEntry()
    entry.ParseFromString(raw)
    for name, value in fields.items():
        setattr(entry, name, value)
    return entry.SerializeToString()


def test_ipns_rejections() -> None:
    good = record()
    other = PrivateKey.from_seed(b"\x02" * 32)
    other_peer = PeerId.from_public_key(other.public_key)
    cases = {
        "wrong name": (other_peer, good),
        "expired": (PEER, record(eol_ns=int(NOW * 1e9) - 1)),
        "bad signature": (PEER, _mutate(good, signatureV2=b"\x00" * 64)),
        "v1 value differs": (PEER, _mutate(good, value=b"/ipfs/other")),
        "v1 sequence differs": (PEER, _mutate(good, sequence=99)),
        "no data": (PEER, _mutate(good, data=b"")),
        "not protobuf": (PEER, b"\xff\xff\xff"),
        "too big": (PEER, good + b"\x00" * 11_000),
        "wrong pubKey": (PEER, _mutate(good, pubKey=other.public_key.to_protobuf())),
    }
    for name, (peer, raw) in cases.items():
        with pytest.raises(RecordError):
            parse_ipns_record(peer, raw, NOW)
        assert name


def test_ipns_data_must_be_signed_cbor() -> None:
    data = cbor.encode(
        {"Value": b"x", "Validity": b"bad", "ValidityType": 0, "Sequence": 1, "TTL": 1}
    )
    entry = ipns_pb2.IpnsEntry(data=data, signatureV2=KEY.sign(IPNS_SIGNATURE_PREFIX + data))
    with pytest.raises(RecordError):
        parse_ipns_record(PEER, entry.SerializeToString(), NOW)  # validity is no timestamp
    data2 = cbor.encode({"Value": 5, "Validity": b"x", "ValidityType": 0, "Sequence": 1, "TTL": 1})
    entry2 = ipns_pb2.IpnsEntry(data=data2, signatureV2=KEY.sign(IPNS_SIGNATURE_PREFIX + data2))
    with pytest.raises(RecordError):
        parse_ipns_record(PEER, entry2.SerializeToString(), NOW)  # Value must be bytes


def test_ipns_select_highest_sequence_then_latest_eol() -> None:
    v = Validators()
    key = ipns_key(PEER)
    base = int(NOW * 1e9)
    recs = [record(seq=3), record(seq=5), record(seq=4)]
    assert v.select(key, recs) == 1
    same_seq = [record(seq=5, eol_ns=base + DAY_NS), record(seq=5, eol_ns=base + 2 * DAY_NS)]
    assert v.select(key, same_seq) == 1


def test_registry() -> None:
    v = Validators()
    assert v.namespaces() == ["ipns", "pk"]
    with pytest.raises(RecordError):
        v.validate(b"/nope/x", b"v", NOW)
    with pytest.raises(RecordError):
        v.validate(b"no-slash", b"v", NOW)

    class Longest:
        def validate(self, key: bytes, value: bytes, now: float) -> None:
            if not value:
                raise RecordError("empty")

        def select(self, key: bytes, values: Sequence[bytes]) -> int:
            return max(range(len(values)), key=lambda i: len(values[i]))

    v.register("app", Longest())
    v.validate(b"/app/thing", b"v", NOW)
    with pytest.raises(RecordError):
        v.validate(b"/app/thing", b"", NOW)
    assert v.select(b"/app/thing", [b"a", b"abc", b"ab"]) == 1
    with pytest.raises(UsageError):
        v.register("a/b", Longest())
    with pytest.raises(UsageError):
        v.select(b"/app/thing", [])


def test_records_made_now_validate_with_the_wall_clock() -> None:
    raw = create_ipns_record(KEY, b"/ipfs/x", 1, time.time_ns() + DAY_NS)
    Validators().validate(ipns_key(PEER), raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_a_record_error(data: bytes) -> None:
    v = Validators()
    for key in (ipns_key(PEER), pk_key(PEER)):
        with pytest.raises(RecordError):
            v.validate(key, data, NOW)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=40)
    | st.from_regex(rb"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)\Z")
)
def test_rfc3339_parser_total(data: bytes) -> None:
    try:
        ns = parse_rfc3339_ns(data)
    except DecodeError:
        return
    assert isinstance(ns, int)

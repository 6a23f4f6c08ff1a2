"""The strict DAG-CBOR subset: canonical bytes out, only canonical bytes in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.dht import cbor
from peerstack.errors import DecodeError, UsageError


def test_known_encodings() -> None:
    # RFC 8949 appendix A examples.
    assert cbor.encode(0) == bytes.fromhex("00")
    assert cbor.encode(23) == bytes.fromhex("17")
    assert cbor.encode(24) == bytes.fromhex("1818")
    assert cbor.encode(1000) == bytes.fromhex("1903e8")
    assert cbor.encode(1000000) == bytes.fromhex("1a000f4240")
    assert cbor.encode(1000000000000) == bytes.fromhex("1b000000e8d4a51000")
    assert cbor.encode(-1) == bytes.fromhex("20")
    assert cbor.encode(-1000) == bytes.fromhex("3903e7")
    assert cbor.encode(b"\x01\x02\x03\x04") == bytes.fromhex("4401020304")
    assert cbor.encode("IETF") == bytes.fromhex("6449455446")
    assert cbor.encode([1, [2, 3]]) == bytes.fromhex("820182020 3".replace(" ", ""))
    assert cbor.encode(True) == b"\xf5"
    assert cbor.encode(None) == b"\xf6"


def test_map_keys_sorted_length_first() -> None:
    data: dict[str, cbor.CborValue] = {
        "Value": 1,
        "TTL": 2,
        "Sequence": 3,
        "Validity": 4,
        "ValidityType": 5,
    }
    raw = cbor.encode(data)
    order = [k for k in ("TTL", "Value", "Sequence", "Validity", "ValidityType")]
    positions = [raw.index(k.encode()) for k in order]
    assert positions == sorted(positions)
    assert cbor.decode(raw) == data


@pytest.mark.parametrize(
    "hexdata",
    [
        "1800",  # 0 in a two-byte form: not shortest
        "190017",  # 23 in three bytes
        "5f4100ff",  # indefinite-length byte string
        "a2616201616101",  # keys out of order ("b" before "a")
        "a2616101616102",  # repeated key
        "a1010203",  # integer key
        "0000",  # trailing byte
        "f93c00",  # a half float
        "fb3ff0000000000000",  # a double
        "d82a4100",  # a tag (CID)
        "62ff00",  # text that is not UTF-8
        "9a ffffffff".replace(" ", ""),  # array longer than the data
        "44 0102".replace(" ", ""),  # bytes longer than the data
    ],
)
def test_non_canonical_or_unsupported_is_refused(hexdata: str) -> None:
    with pytest.raises(DecodeError):
        cbor.decode(bytes.fromhex(hexdata))


def test_nesting_limit() -> None:
    deep: cbor.CborValue = 1
    for _ in range(cbor.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(UsageError):
        cbor.encode(deep)
    with pytest.raises(DecodeError):
        cbor.decode(b"\x81" * (cbor.MAX_DEPTH + 2) + b"\x01")


values = st.recursive(
    st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=20)
    | st.text(max_size=10)
    | st.booleans()
    | st.none(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_round_trip(value: cbor.CborValue) -> None:
    raw = cbor.encode(value)
    assert cbor.decode(raw) == value
    assert cbor.encode(cbor.decode(raw)) == raw


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        value = cbor.decode(data)
    except DecodeError:
        return
    assert cbor.encode(value) == data  # accepted input is exactly the canonical form

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerstack.core import varint
from peerstack.errors import DecodeError, UsageError


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16384, b"\x80\x80\x01"),
    ],
)
def test_known_encodings(value: int, encoded: bytes) -> None:
    assert varint.encode(value) == encoded
    assert varint.decode(encoded) == (value, len(encoded))


@given(st.integers(min_value=0, max_value=varint.MAX_VARINT))
def test_roundtrip(value: int) -> None:
    data = varint.encode(value)
    assert varint.decode(data + b"tail") == (value, len(data))


def test_rejects_negative_and_huge() -> None:
    with pytest.raises(UsageError):
        varint.encode(-1)
    with pytest.raises(UsageError):
        varint.encode(1 << 63)


def test_rejects_non_minimal_and_overlong() -> None:
    with pytest.raises(DecodeError):
        varint.decode(b"\x80\x00")
    with pytest.raises(DecodeError):
        varint.decode(b"\xff" * 10)
    with pytest.raises(DecodeError):
        varint.decode(b"\x80")
    assert varint.try_decode(b"\x80") == (0, -1)


@given(st.binary(max_size=16))
def test_arbitrary_bytes_give_value_or_decode_error(data: bytes) -> None:
    try:
        value, end = varint.decode(data)
    except DecodeError:
        return
    assert 0 < end <= varint.MAX_VARINT_BYTES
    assert varint.encode(value) == data[:end]

import contextlib
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerstack.core import base58, multibase, multihash
from peerstack.errors import DecodeError


@pytest.mark.parametrize("base", ["base32", "base58btc", "base36", "base16", "base64"])
@given(data=st.binary(max_size=64))
def test_multibase_roundtrip(base: str, data: bytes) -> None:
    assert multibase.decode(multibase.encode(data, base)) == data


def test_base58_known() -> None:
    assert base58.encode(b"hello world") == "StV1DL6CwTryKyV"
    assert base58.decode("StV1DL6CwTryKyV") == b"hello world"
    assert base58.encode(b"\0\0a") == "112g"


@given(st.text(max_size=64))
def test_multibase_arbitrary_text(text: str) -> None:
    with contextlib.suppress(DecodeError):
        multibase.decode(text)


def test_multihash_sha256() -> None:
    mh = multihash.digest(b"abc")
    assert mh.to_bytes() == b"\x12\x20" + hashlib.sha256(b"abc").digest()
    assert multihash.Multihash.from_bytes(mh.to_bytes()) == mh


@given(st.binary(max_size=80))
def test_multihash_arbitrary(data: bytes) -> None:
    try:
        mh = multihash.Multihash.from_bytes(data)
    except DecodeError:
        return
    assert mh.to_bytes() == data

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.errors import DecodeError

# From libp2p/specs peer-ids: the same Ed25519 peer in base58 and CIDv1 forms.
B58 = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
CID = "bafzaajaiaejcalj543iwv2d7pkjt7ykvefrkfu7ecn6gpe7ydgc5fbqlc3hqqvz3"


def test_generated_ids_roundtrip() -> None:
    pid = PeerId.from_public_key(PrivateKey.generate().public_key)
    assert str(pid).startswith("12D3KooW")
    assert PeerId.from_string(str(pid)) == pid
    assert PeerId.from_string(pid.to_cid_string()) == pid
    assert PeerId(pid.to_bytes()) == pid
    assert len({pid, PeerId(pid.to_bytes())}) == 1


def test_cid_form_of_known_peer() -> None:
    pid = PeerId.from_string(B58)
    assert pid.to_cid_string().startswith("bafz")
    assert PeerId.from_string(pid.to_cid_string()) == pid
    key = pid.extract_public_key()
    assert key is not None
    assert pid.matches(key)


def test_spec_cid_string_parses() -> None:
    assert PeerId.from_string(CID).to_cid_string() == CID


@pytest.mark.parametrize("bad", ["", "12D3KooW0OIl", "bafy" + "a" * 20, "Qm", "zzz"])
def test_bad_strings(bad: str) -> None:
    with pytest.raises(DecodeError):
        PeerId.from_string(bad)


@given(st.text(max_size=80))
def test_arbitrary_text(text: str) -> None:
    with contextlib.suppress(DecodeError):
        PeerId.from_string(text)


@given(st.binary(max_size=80))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        pid = PeerId(data)
    except DecodeError:
        return
    assert PeerId.from_string(str(pid)) == pid


def test_derivation_agrees_with_the_multihash_form() -> None:
    """``from_public_key``/``matches`` build bytes by hand: they equal the parsed multihash."""
    from peerstack.core import multihash
    from peerstack.core.identity import KeyType, PublicKey

    ed = PrivateKey.generate().public_key
    pid = PeerId.from_public_key(ed)
    assert pid == PeerId(multihash.Multihash(multihash.IDENTITY, ed.to_protobuf()).to_bytes())
    assert pid.matches(ed)
    assert not pid.matches(PrivateKey.generate().public_key)
    # A key whose protobuf is over 42 bytes is hashed (sha2-256); no need for a valid RSA key
    # to check the derivation.
    big = PublicKey(KeyType.RSA, b"\x01" * 300)
    digest = multihash.digest(big.to_protobuf(), multihash.SHA2_256)
    assert PeerId.from_public_key(big) == PeerId(digest.to_bytes())
    assert PeerId.from_public_key(big).matches(big)
    assert str(PeerId.from_public_key(big)).startswith("Qm")


def test_text_parsing_is_memoized_and_bounded() -> None:
    from peerstack.core import peer_id

    cache = peer_id._parse_text
    assert cache.cache_info().maxsize == peer_id.PARSE_CACHE_SIZE
    pid = PeerId.from_string(B58)
    assert PeerId.from_string(B58) is pid  # the same immutable object
    assert str(pid) == B58
    # failures are not cached, and overlong text is refused before the cache
    before = cache.cache_info().currsize
    with pytest.raises(DecodeError):
        PeerId.from_string("1" + "0" * 60)
    with pytest.raises(DecodeError):
        PeerId.from_string("1" * (peer_id.MAX_TEXT_LENGTH + 1))
    assert cache.cache_info().currsize == before
    for _ in range(3):
        PeerId.from_string(str(PeerId.from_public_key(PrivateKey.generate().public_key)))
    assert cache.cache_info().currsize <= peer_id.PARSE_CACHE_SIZE

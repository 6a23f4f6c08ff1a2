"""Kad wire messages: round trips, the spec's field numbers, limits, and fuzzing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core import varint
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.messages import (
    KadMessage,
    KadRecord,
    MessageLimits,
    MessageType,
    PeerInfo,
    decode,
    encode,
)
from peerstack.errors import DecodeError, LimitExceeded, PeerError


def pid(seed: int) -> PeerId:
    return PeerId(b"\x12\x20" + random.Random(seed).randbytes(32))


def test_round_trip() -> None:
    msg = KadMessage(
        MessageType.GET_PROVIDERS,
        key=b"\x12\x20" + b"k" * 32,
        record=KadRecord(b"/pk/x", b"value", "2024-01-01T00:00:00Z"),
        closer_peers=[PeerInfo(pid(1), (Multiaddr("/ip4/1.2.3.4/tcp/4001"),))],
        provider_peers=[PeerInfo(pid(2))],
    )
    back = decode(encode(msg))
    assert back == msg


def test_field_numbers_match_the_spec() -> None:
    # type = 1 (varint), key = 2, record = 3 {key 1, value 2, timeReceived 5}, closerPeers = 8.
    msg = KadMessage(MessageType.FIND_NODE, key=b"ab", record=KadRecord(b"k", b"v", "t"))
    raw = encode(msg)
    assert raw.startswith(bytes([0x08, 0x04, 0x12, 0x02]) + b"ab")
    assert bytes([0x1A]) in raw
    assert bytes([0x2A, 0x01]) + b"t" in raw
    # A message with type 0 (PUT_VALUE) omits the type field, as proto3 does.
    assert encode(KadMessage(MessageType.PUT_VALUE, key=b"z")) == bytes([0x12, 0x01]) + b"z"
    peer = encode(KadMessage(MessageType.FIND_NODE, closer_peers=[PeerInfo(pid(3))]))
    assert peer[2] == 0x42  # field 8, length-delimited


def test_hand_made_message_from_another_implementation() -> None:
    # FIND_NODE with a closer peer carrying one address, written field by field.
    peer_id = pid(4).to_bytes()
    addr = Multiaddr("/ip4/127.0.0.1/tcp/1234").to_bytes()
    peer = b"\x0a" + varint.encode(len(peer_id)) + peer_id + b"\x12" + bytes([len(addr)]) + addr
    peer += b"\x18\x01"  # connection = CONNECTED
    raw = b"\x08\x04" + b"\x42" + varint.encode(len(peer)) + peer + b"\x50\x00"
    msg = decode(raw)
    assert msg.type is MessageType.FIND_NODE
    assert msg.closer_peers[0].peer_id == pid(4)
    assert str(msg.closer_peers[0].addrs[0]) == "/ip4/127.0.0.1/tcp/1234"


def test_limits() -> None:
    lim = MessageLimits(max_message_size=1000, max_record_size=10, max_peers=2, max_key_size=8)
    with pytest.raises(LimitExceeded):
        decode(b"\x00" * 1001, lim)
    big_record = encode(KadMessage(MessageType.PUT_VALUE, record=KadRecord(b"k", b"v" * 11)))
    with pytest.raises(LimitExceeded):
        decode(big_record, lim)
    many = encode(
        KadMessage(MessageType.FIND_NODE, closer_peers=[PeerInfo(pid(i)) for i in range(3)])
    )
    with pytest.raises(LimitExceeded):
        decode(many, lim)
    with pytest.raises(LimitExceeded):
        decode(encode(KadMessage(MessageType.GET_VALUE, key=b"k" * 9)), lim)


def test_garbage_is_refused() -> None:
    with pytest.raises(DecodeError):
        decode(b"\x08\x63")  # unknown message type 99
    bad_peer = encode(KadMessage(MessageType.FIND_NODE)) + b"\x42\x03\x0a\x01\x00"
    with pytest.raises(DecodeError):
        decode(bad_peer)  # a peer id that is no multihash
    with pytest.raises(DecodeError):
        decode(b"\x0a\xff")  # truncated


def test_unknown_address_protocols_are_skipped_not_fatal() -> None:
    peer_id = pid(5).to_bytes()
    peer = b"\x0a" + varint.encode(len(peer_id)) + peer_id + b"\x12\x03\xff\xff\x03"
    raw = b"\x08\x04\x42" + varint.encode(len(peer)) + peer
    msg = decode(raw)
    assert msg.closer_peers[0].addrs == ()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_message_or_a_peer_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except PeerError:
        return
    assert isinstance(msg.type, MessageType)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(MessageType)),
    st.binary(max_size=40),
    st.lists(st.integers(0, 1000), max_size=5),
)
def test_round_trip_property(mtype: MessageType, key: bytes, seeds: list[int]) -> None:
    msg = KadMessage(mtype, key=key, closer_peers=[PeerInfo(pid(s)) for s in seeds])
    assert decode(encode(msg)) == msg

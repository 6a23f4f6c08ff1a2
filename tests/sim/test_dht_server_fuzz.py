"""Any request bytes give an answer or a typed PeerError from the server; nothing else."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core import multihash
from peerstack.core.peer_id import PeerId
from peerstack.dht.config import DhtConfig
from peerstack.dht.messages import KadMessage, KadRecord, MessageType, PeerInfo, decode, encode
from peerstack.dht.service import KadDHT
from peerstack.errors import PeerError
from sim.simhost import SimNetwork, run

SENDER = PeerId(b"\x12\x20" + bytes(32))
OTHER = PeerId(b"\x12\x20" + bytes([1]) * 32)


@pytest.fixture(scope="module")
def dht() -> KadDHT:
    net = SimNetwork(rng=random.Random(1))
    node = KadDHT(net.add_host(), DhtConfig(background=False))
    for _ in range(30):
        node.routing_table.add(net.random_peer_id(), 0.0)
    return node


def serve(dht: KadDHT, raw: bytes) -> KadMessage | None:
    async def main() -> KadMessage | None:
        msg = decode(raw, dht.config.message_limits)
        return dht.server._handle_message(SENDER, msg)

    return run(main())


messages = st.builds(
    KadMessage,
    st.sampled_from(list(MessageType)),
    key=st.one_of(
        st.binary(max_size=40),
        st.just(multihash.digest(b"k").to_bytes()),
        st.sampled_from([b"/pk/", b"/ipns/x", b"/nope/x"]),
    ),
    record=st.none() | st.builds(KadRecord, st.binary(max_size=20), st.binary(max_size=50)),
    provider_peers=st.lists(st.sampled_from([PeerInfo(SENDER), PeerInfo(OTHER)]), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), messages.map(encode)))
def test_server_answers_or_raises_a_peer_error(dht: KadDHT, raw: bytes) -> None:
    try:
        reply = serve(dht, raw)
    except PeerError:
        return
    if reply is not None:
        assert len(reply.closer_peers) <= dht.config.k + 1
        assert decode(encode(reply)) == reply
    # Nothing in an unknown namespace, and no provider other than the sender, is ever stored.
    assert dht.store.get_record(b"/nope/x") is None
    key = multihash.digest(b"k").to_bytes()
    assert all(e.peer == SENDER for e in dht.store.get_providers(key, 0.0, 10))

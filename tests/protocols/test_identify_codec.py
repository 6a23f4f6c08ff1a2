"""The identify message: encoding, validation, limits, and fuzzing of the decoder."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core import varint
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.pb.identify_pb2 import Identify
from peerstack.core.peer_id import PeerId
from peerstack.errors import DecodeError, LimitExceeded, PeerError
from peerstack.host.interface import Stream
from peerstack.protocols.identify import (
    AGENT_VERSION,
    MAX_ADDRS,
    MAX_MESSAGE_SIZE,
    MAX_PROTOCOLS,
    PROTOCOL_VERSION,
    IdentifyKeyMismatch,
    ObservedAddrs,
    decode_identify,
    encode_identify,
    read_identify,
)

Pair = Callable[..., tuple[Stream, Stream]]

KEY = PrivateKey.generate()
PEER = PeerId.from_public_key(KEY.public_key)
OTHER = PeerId.from_public_key(PrivateKey.generate().public_key)


def test_round_trip_all_fields() -> None:
    addrs = [Multiaddr("/ip4/127.0.0.1/tcp/4001"), Multiaddr("/ip6/::1/tcp/4002")]
    raw = encode_identify(
        public_key=KEY.public_key,
        listen_addrs=[*addrs, Multiaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{PEER}")],
        protocols=["/ipfs/ping/1.0.0", "/ipfs/id/1.0.0"],
        observed_addr=Multiaddr("/ip4/1.2.3.4/tcp/5"),
    )
    info = decode_identify([raw], PEER)
    assert info.public_key == KEY.public_key
    assert info.listen_addrs == (*addrs, Multiaddr("/ip4/10.0.0.1/tcp/1"))  # /p2p stripped
    assert info.protocols == ("/ipfs/ping/1.0.0", "/ipfs/id/1.0.0")
    assert info.observed_addr == Multiaddr("/ip4/1.2.3.4/tcp/5")
    assert info.protocol_version == PROTOCOL_VERSION == "ipfs/0.1.0"
    assert info.agent_version == AGENT_VERSION
    assert AGENT_VERSION.startswith("peerstack/")


def test_wire_field_numbers_match_the_spec() -> None:
    raw = encode_identify(
        public_key=KEY.public_key,
        listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/1")],
        protocols=["/p"],
        observed_addr=Multiaddr("/ip4/127.0.0.1/tcp/2"),
    )
    tags = set()
    i = 0
    while i < len(raw):
        tag, i = varint.decode(raw, i)
        n, i = varint.decode(raw, i)
        i += n
        tags.add(tag)
    # field << 3 | 2 (length-delimited) for fields 1..6
    assert tags == {(f << 3) | 2 for f in (1, 2, 3, 4, 5, 6)}


def test_key_of_another_peer_is_refused() -> None:
    raw = encode_identify(
        public_key=KEY.public_key, listen_addrs=[], protocols=[], observed_addr=None
    )
    with pytest.raises(IdentifyKeyMismatch):
        decode_identify([raw], OTHER)


def test_bad_key_bytes_are_a_decode_error() -> None:
    msg = Identify()
    msg.publicKey = b"\x08\x01\x12\x03abc"  # Ed25519 with 3 bytes of key
    with pytest.raises(DecodeError):
        decode_identify([msg.SerializeToString()], PEER)


def test_p2p_suffixes() -> None:
    msg = Identify()
    msg.listenAddrs.extend(
        [
            Multiaddr(f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}").to_bytes(),
            Multiaddr(f"/ip4/127.0.0.1/tcp/2/p2p/{OTHER}").to_bytes(),
        ]
    )
    msg.observedAddr = Multiaddr(f"/ip4/127.0.0.1/tcp/3/p2p/{OTHER}").to_bytes()
    info = decode_identify([msg.SerializeToString()], PEER)
    assert info.listen_addrs == (Multiaddr("/ip4/127.0.0.1/tcp/1"),)
    assert info.observed_addr == Multiaddr("/ip4/127.0.0.1/tcp/3")


def test_unparseable_addrs_are_skipped() -> None:
    msg = Identify()
    msg.listenAddrs.extend([b"\xff\xff\xff", Multiaddr("/ip4/127.0.0.1/tcp/9").to_bytes()])
    msg.observedAddr = b"\x04\x01"
    info = decode_identify([msg.SerializeToString()], PEER)
    assert info.listen_addrs == (Multiaddr("/ip4/127.0.0.1/tcp/9"),)
    assert info.observed_addr is None


def test_limits() -> None:
    msg = Identify()
    msg.listenAddrs.extend([Multiaddr("/ip4/1.1.1.1/tcp/1").to_bytes()] * (MAX_ADDRS + 1))
    with pytest.raises(LimitExceeded):
        decode_identify([msg.SerializeToString()], PEER)
    msg = Identify()
    msg.protocols.extend(f"/p/{i}" for i in range(MAX_PROTOCOLS + 1))
    with pytest.raises(LimitExceeded):
        decode_identify([msg.SerializeToString()], PEER)
    msg = Identify()
    msg.protocols.append("/" + "x" * 300)
    with pytest.raises(LimitExceeded):
        decode_identify([msg.SerializeToString()], PEER)
    with pytest.raises(LimitExceeded):
        decode_identify([b"\x00" * (MAX_MESSAGE_SIZE + 1)], PEER)


def test_split_messages_merge() -> None:
    first = Identify()
    first.protocols.append("/a")
    second = Identify()
    second.protocols.append("/b")
    second.agentVersion = "go-libp2p/0.40"
    info = decode_identify([first.SerializeToString(), second.SerializeToString()], PEER)
    assert info.protocols == ("/a", "/b")
    assert info.agent_version == "go-libp2p/0.40"
    assert info.public_key is None


def test_partial_message_marks_absent_fields() -> None:
    msg = Identify()
    msg.protocols.append("/new")
    info = decode_identify([msg.SerializeToString()], PEER)
    assert info.has_protocols
    assert not info.has_listen_addrs
    assert info.agent_version is None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=3))
def test_fuzz_decoder_gives_info_or_typed_error(messages: list[bytes]) -> None:
    try:
        info = decode_identify(messages, PEER)
    except PeerError:
        return
    assert info.peer == PEER


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=40), max_size=20),
    st.lists(st.sampled_from(["/ip4/127.0.0.1/tcp/1", "/ip6/::1/tcp/2", "/dns/a.b/tcp/3"])),
)
def test_property_round_trip(protocols: list[str], addrs: list[str]) -> None:
    mas = [Multiaddr(a) for a in addrs]
    raw = encode_identify(
        public_key=KEY.public_key, listen_addrs=mas, protocols=protocols, observed_addr=None
    )
    info = decode_identify([raw], PEER)
    assert info.protocols == tuple(dict.fromkeys(protocols))
    assert info.listen_addrs == tuple(dict.fromkeys(mas))


async def test_read_identify_from_stream(stream_pair: Pair) -> None:
    client, server = stream_pair("/ipfs/id/1.0.0")
    # The client end's remote peer is the server's identity, created by the fixture.
    raw = encode_identify(public_key=None, listen_addrs=[], protocols=["/x"], observed_addr=None)
    await server.write(varint.encode(len(raw)) + raw)
    await server.close()
    info = await read_identify(client)
    assert info.protocols == ("/x",)
    assert info.peer == client.remote_peer


async def test_read_identify_refuses_oversized_prefix(stream_pair: Pair) -> None:
    client, server = stream_pair()
    await server.write(varint.encode(MAX_MESSAGE_SIZE + 1))
    with pytest.raises(LimitExceeded):
        await asyncio.wait_for(read_identify(client), 5)


async def test_read_identify_needs_a_message(stream_pair: Pair) -> None:
    client, server = stream_pair()
    await server.close()
    with pytest.raises(DecodeError):
        await read_identify(client)


def test_observed_addrs_bounded_and_ranked() -> None:
    obs = ObservedAddrs(max_addrs=3)
    a = Multiaddr("/ip4/1.1.1.1/tcp/1")
    peers = [PeerId.from_public_key(PrivateKey.generate().public_key) for _ in range(3)]
    for p in peers:
        obs.add(a, p)
    obs.add(a, peers[0])  # the same observer counts once
    for i in range(10):
        obs.add(Multiaddr(f"/ip4/2.2.2.{i}/tcp/1"), peers[0])
    ranked = obs.addrs()
    assert len(ranked) == 3
    assert ranked[0] == a
    assert obs.addrs(min_observers=3) == [a]


async def test_push_with_more_addrs_than_the_peerstore_keeps_stores_the_first(
    stream_pair: Pair,
) -> None:
    # identify allows 128 listen addrs, the peerstore keeps 32 per peer: the first 32 are stored
    # (before, the peerstore refused the whole list and the peer had no address at all).
    from typing import cast

    from peerstack.host.interface import Host
    from peerstack.host.peerstore import Peerstore
    from peerstack.protocols.identify import IDENTIFY_PUSH, IdentifyService

    client, server = stream_pair(IDENTIFY_PUSH)
    store = Peerstore(max_addrs_per_peer=32)
    service = IdentifyService(cast(Host, object()), store, KEY.public_key, lambda: ())
    addrs = [Multiaddr(f"/ip4/10.0.0.1/tcp/{4000 + i}") for i in range(40)]
    raw = encode_identify(public_key=None, listen_addrs=addrs, protocols=[], observed_addr=None)
    await client.write(varint.encode(len(raw)) + raw)
    await client.close()
    await service._handle_push(server)
    assert set(store.addrs(server.remote_peer)) == set(addrs[:32])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=20), max_size=8),
    st.lists(st.sampled_from(["/ip4/127.0.0.1/tcp/1", "/ip6/::1/tcp/2", "/dns/a.b/tcp/3"])),
    st.sampled_from([None, "/ip4/1.2.3.4/tcp/5", f"/ip4/1.2.3.4/tcp/5/p2p/{OTHER}"]),
)
def test_cached_message_is_the_encoded_message(
    protocols: list[str], addrs: list[str], observed: str | None
) -> None:
    """The service's cached message (head + observed + tail) is byte for byte the message
    ``encode_identify`` builds, and follows changes of our addresses and protocols."""
    from peerstack.protocols.identify import _MessageCache

    cache = _MessageCache(KEY.public_key, "agent/1")
    mas = [Multiaddr(a) for a in addrs]
    obs = Multiaddr(observed) if observed is not None else None
    for protos in (protocols, [*protocols, "/extra/1"], protocols):
        expected = encode_identify(
            public_key=KEY.public_key,
            listen_addrs=mas,
            protocols=protos,
            observed_addr=obs,
            agent_version="agent/1",
        )
        assert cache.message(mas, protos, obs) == expected
        assert cache.message(mas, protos, obs) == expected  # from the cache this time


@pytest.mark.parametrize(
    "raw",
    [
        b"\x32\x11" + b"\x00" * 16 + b"\x80",  # agentVersion, not UTF-8 (found by the fuzzer)
        b"\x2a\x01\x80",  # protocolVersion
        b"\x1a\x01\x80",  # one protocol id
    ],
)
def test_strings_that_are_not_utf8_are_a_decode_error(raw: bytes) -> None:
    # identify.proto is proto2, where such a string field comes back as bytes, not str.
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_identify([raw], PEER)


async def test_push_events_carry_the_merged_state_and_a_failing_listener_is_logged(
    stream_pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    # A push is a partial update: the event shows what we now know (a push without protocols
    # keeps the ones from before), and a listener that raises is logged, not propagated.
    from typing import cast

    from peerstack.host.interface import Host
    from peerstack.host.peerstore import Peerstore
    from peerstack.protocols.identify import (
        IDENTIFY_PUSH,
        IdentifyEvent,
        IdentifyService,
        PeerIdentified,
    )

    service = IdentifyService(cast(Host, object()), Peerstore(), KEY.public_key, lambda: ())
    seen: list[IdentifyEvent] = []

    def broken(event: IdentifyEvent) -> None:
        raise ValueError("listener bug")

    service.add_listener(broken)
    service.add_listener(seen.append)

    async def push(protocols: list[str], addrs: list[Multiaddr]) -> Stream:
        client, server = stream_pair(IDENTIFY_PUSH)
        raw = encode_identify(
            public_key=None, listen_addrs=addrs, protocols=protocols, observed_addr=None
        )
        await client.write(varint.encode(len(raw)) + raw)
        await client.close()
        await service._handle_push(server)
        return server

    addr, addr2 = Multiaddr("/ip4/10.0.0.1/tcp/4001"), Multiaddr("/ip4/10.0.0.2/tcp/4001")
    peer = (await push(["/ipfs/kad/1.0.0", "/ipfs/id/1.0.0"], [addr])).remote_peer
    assert seen == [
        PeerIdentified(peer, ("/ipfs/kad/1.0.0", "/ipfs/id/1.0.0"), (addr,), AGENT_VERSION, True)
    ]
    assert service.listener_errors == 1
    assert "identify listener" in caplog.text
    # A second push from the same peer with new addresses only (each stream pair has a peer
    # of its own, so this one is decoded and applied as _handle_push does).
    raw = encode_identify(public_key=None, listen_addrs=[addr2], protocols=[], observed_addr=None)
    service._apply(decode_identify([raw], peer), push=True)
    assert seen[-1] == PeerIdentified(
        peer, ("/ipfs/kad/1.0.0", "/ipfs/id/1.0.0"), (addr2,), AGENT_VERSION, True
    )
    # Then one that drops the kad protocol.
    raw = encode_identify(
        public_key=None, listen_addrs=[], protocols=["/ipfs/id/1.0.0"], observed_addr=None
    )
    service._apply(decode_identify([raw], peer), push=True)
    assert seen[-1] == PeerIdentified(peer, ("/ipfs/id/1.0.0",), (addr2,), AGENT_VERSION, True)
    assert service.listener_errors == 3

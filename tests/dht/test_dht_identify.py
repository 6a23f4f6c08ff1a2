"""The DHT learns which peers are servers from identify, on real hosts on loopback.

Each peer is a ``BasicHost`` (TCP + Noise + Yamux) with an ``IdentifyService`` and a ``KadDHT``
wired together as the node wires them (``node_dht.attach_identify``). What is counted is what
the other side sees: a FIND_NODE probe would show up in the probed peer's served requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.dht.config import DhtConfig, Mode
from peerstack.dht.messages import PROTOCOL_ID
from peerstack.dht.service import KadDHT
from peerstack.errors import NegotiationError
from peerstack.host.host import BasicHost
from peerstack.node_dht import attach_identify
from peerstack.protocols.identify import (
    IdentifyEvent,
    IdentifyFailed,
    IdentifyService,
    PeerIdentified,
)


@dataclass
class Peer:
    host: BasicHost
    kad: KadDHT
    identify: IdentifyService | None

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id


MakePeer = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def make_peer() -> AsyncIterator[MakePeer]:
    peers: list[Peer] = []

    async def make(mode: Mode = Mode.SERVER, *, with_identify: bool = True) -> Peer:
        key = PrivateKey.generate()
        host = BasicHost(key, listen_addrs=["/ip4/127.0.0.1/tcp/0"])
        config = DhtConfig(
            mode=mode, background=False, max_per_group_bucket=None, max_per_group_table=None
        )
        kad = KadDHT(host, config)
        await kad.start()
        identify: IdentifyService | None = None
        if with_identify:
            identify = IdentifyService(host, host.peerstore, key.public_key, host.protocols)
            attach_identify(kad, identify)
            identify.start()
        await host.start()
        peer = Peer(host, kad, identify)
        peers.append(peer)
        return peer

    try:
        yield make
    finally:
        for p in peers:
            if p.identify is not None:
                await p.identify.close()
            await p.kad.stop()
            await p.host.close()


async def connect_and_identify(a: Peer, b: Peer) -> None:
    """``a`` dials ``b``; returns once each side's identify run has ended (listeners called)."""
    await a.host.connect(b.peer_id, b.host.listen_addrs())
    for me, other in ((a, b), (b, a)):
        if me.identify is None:
            continue
        if other.identify is None:
            # The other side does not speak identify: the run ends with that error.
            with pytest.raises(NegotiationError):
                await me.identify.wait_identified(other.peer_id)
        else:
            await me.identify.wait_identified(other.peer_id)


def push_seen(peer: Peer) -> asyncio.Event:
    """An event set when ``peer`` has applied an identify push (after the DHT saw it)."""
    seen = asyncio.Event()

    def on_event(event: IdentifyEvent) -> None:
        if isinstance(event, PeerIdentified) and event.push:
            seen.set()

    assert peer.identify is not None
    peer.identify.add_listener(on_event)
    return seen


async def test_a_server_is_admitted_from_identify_without_a_probe(make_peer: MakePeer) -> None:
    a = await make_peer()
    b = await make_peer()
    await connect_and_identify(a, b)
    assert b.peer_id in a.kad.routing_table
    assert a.peer_id in b.kad.routing_table
    # Nobody sent a FIND_NODE to learn it: neither side served a request.
    assert a.kad.counters.probes == b.kad.counters.probes == 0
    assert a.kad.counters.requests_served == b.kad.counters.requests_served == 0
    assert a.kad.counters.identify_admitted >= 1
    # The table entry carries the listen address identify reported.
    entry = a.kad.routing_table.get(b.peer_id)
    assert entry is not None
    assert set(b.host.listen_addrs()) <= set(entry.addrs)


async def test_a_client_mode_peer_is_never_admitted(make_peer: MakePeer) -> None:
    server = await make_peer()
    client = await make_peer(Mode.CLIENT)
    await connect_and_identify(client, server)
    await connect_and_identify(server, client)  # the other direction changes nothing
    assert client.peer_id not in server.kad.routing_table
    assert server.kad.counters.probes == 0
    assert client.kad.counters.requests_served == 0
    # A client still keeps servers in its own table (it routes through them).
    assert server.peer_id in client.kad.routing_table
    assert server.kad.counters.requests_served == 0


async def test_a_push_without_the_kad_protocol_removes_the_peer(make_peer: MakePeer) -> None:
    a = await make_peer()
    b = await make_peer()
    await connect_and_identify(a, b)
    assert b.peer_id in a.kad.routing_table
    seen = push_seen(a)
    # b stops serving the DHT (as a node switching to client mode would) and tells a.
    b.host.remove_stream_handler(PROTOCOL_ID)
    assert b.identify is not None
    await b.identify.push()
    await asyncio.wait_for(seen.wait(), 10.0)
    assert b.peer_id not in a.kad.routing_table
    assert a.kad.counters.identify_removed == 1
    # Serving again: the next push admits it again.
    seen.clear()
    b.host.set_stream_handler(PROTOCOL_ID, b.kad.server.handle_stream)
    await b.identify.push()
    await asyncio.wait_for(seen.wait(), 10.0)
    assert b.peer_id in a.kad.routing_table
    assert b.kad.counters.requests_served == 0


async def test_a_peer_whose_identify_fails_is_probed(make_peer: MakePeer) -> None:
    a = await make_peer()
    b = await make_peer(with_identify=False)  # a DHT server that does not speak identify
    failed = asyncio.Event()

    def on_event(event: IdentifyEvent) -> None:
        if isinstance(event, IdentifyFailed) and event.peer == b.peer_id:
            failed.set()

    assert a.identify is not None
    a.identify.add_listener(on_event)
    await connect_and_identify(a, b)
    await asyncio.wait_for(failed.wait(), 10.0)
    # The fallback: one FIND_NODE, which b answers; its answer admits it.
    for _ in range(1000):
        if b.peer_id in a.kad.routing_table:
            break
        await asyncio.sleep(0.01)
    assert b.peer_id in a.kad.routing_table
    assert a.kad.counters.probes == 1
    assert b.kad.counters.requests_served == 1


async def test_a_failing_listener_does_not_break_identify(make_peer: MakePeer) -> None:
    a = await make_peer()
    b = await make_peer()
    assert a.identify is not None
    calls: list[IdentifyEvent] = []

    def broken(event: IdentifyEvent) -> None:
        calls.append(event)
        raise RuntimeError("a subscriber's bug")

    a.identify.add_listener(broken)
    late: list[IdentifyEvent] = []
    unsubscribe = a.identify.add_listener(late.append)
    unsubscribe()
    unsubscribe()  # twice is harmless
    await connect_and_identify(a, b)
    assert [type(e) for e in calls] == [PeerIdentified]
    assert a.identify.listener_errors == 1
    assert late == []
    # identify finished its work and the DHT (subscribed first) still got the news.
    info = a.identify.info(b.peer_id)
    assert info is not None
    assert PROTOCOL_ID in info.protocols
    assert b.peer_id in a.kad.routing_table

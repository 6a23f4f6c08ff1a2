"""Connection manager on real hosts: merged dials, idle trimming and every limit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from peerstack.core.multiaddr import Multiaddr
from peerstack.errors import PeerstackError, ResourceLimitError, StreamReset
from peerstack.host.host import BasicHost, DialFailed
from peerstack.host.interface import Stream
from peerstack.host.limits import Limits
from peerstack.net import tcp

HOLD = "/test/hold/1"

# The make_host fixture (conftest.py): start a host on 127.0.0.1, closed at teardown.
MakeHost = Callable[..., Awaitable[BasicHost]]
# The eventually fixture (conftest.py): poll a condition until it holds.
Eventually = Callable[..., Awaitable[None]]


def addr_of(host: BasicHost) -> str:
    return f"{host.listen_addrs()[0]}/p2p/{host.peer_id}"


async def hold_handler(stream: Stream) -> None:
    """Keep the stream open until the peer closes it."""
    while await stream.read():
        pass


async def test_concurrent_dials_make_one_connection(
    make_host: MakeHost, eventually: Eventually
) -> None:
    a = await make_host()
    b = await make_host()
    b.set_stream_handler(HOLD, hold_handler)
    a.add_peer_addrs(b.peer_id, b.listen_addrs(), ttl=60)
    streams = await asyncio.gather(*(a.new_stream(b.peer_id, [HOLD]) for _ in range(10)))
    assert len(streams) == 10
    assert len(a.connections(b.peer_id)) == 1
    await eventually(lambda: len(b.connections(a.peer_id)) >= 1)
    assert len(b.connections(a.peer_id)) == 1
    assert a.connmgr.counts()["outbound"] == 1


async def test_idle_connections_are_trimmed(make_host: MakeHost, eventually: Eventually) -> None:
    a = await make_host(Limits(idle_timeout=0.3, trim_interval=0.05))
    b = await make_host()
    b.set_stream_handler(HOLD, hold_handler)
    peer = await a.dial(addr_of(b))
    stream = await a.new_stream(peer, [HOLD])
    await asyncio.sleep(0.6)  # a stream is open: not idle, kept
    assert a.connected_peers() == [peer]
    await stream.close()
    await eventually(lambda: a.connected_peers() == [])
    await eventually(lambda: b.connected_peers() == [])


async def test_limit_per_ip(make_host: MakeHost, eventually: Eventually) -> None:
    # Loopback has its own (higher) per-IP limit; set both so that this test exercises it.
    server = await make_host(Limits(max_connections_per_ip=1, max_connections_per_loopback_ip=1))
    c1 = await make_host(listen=False)
    c2 = await make_host(listen=False)
    await c1.dial(addr_of(server))
    with pytest.raises(PeerstackError):
        await c2.dial(addr_of(server))
    await eventually(lambda: server.connected_peers() == [c1.peer_id])
    assert c2.connected_peers() == []
    assert c2.connmgr.counts()["outbound"] == 0  # the failed dial gave its slot back
    # Once c1 leaves, the address may connect again.
    await c1.close()
    await eventually(lambda: server.stats()["inbound"] == 0)
    assert await c2.dial(addr_of(server)) == server.peer_id


async def test_inbound_connection_limit(make_host: MakeHost) -> None:
    server = await make_host(Limits(max_inbound_connections=2))
    clients = [await make_host(listen=False) for _ in range(3)]
    await clients[0].dial(addr_of(server))
    await clients[1].dial(addr_of(server))
    with pytest.raises(PeerstackError):
        await clients[2].dial(addr_of(server))
    assert len(server.connected_peers()) == 2


async def test_pending_handshakes_limit_and_handshake_timeout(
    make_host: MakeHost, eventually: Eventually
) -> None:
    server = await make_host(Limits(max_pending_handshakes=1, handshake_timeout=0.5))
    client = await make_host(listen=False)
    target = Multiaddr(str(server.listen_addrs()[0])).tcp_target()
    assert target is not None
    # A peer that connects and never speaks holds the only handshake slot ...
    reader, writer = await asyncio.open_connection(*target)
    await eventually(lambda: server.stats()["pending_inbound"] == 1)
    with pytest.raises(PeerstackError):
        await client.dial(addr_of(server))
    # ... until the handshake timeout closes it. It got nothing: the listener's multistream
    # header waits for the dialler's (as js-libp2p's does), to leave with the answer.
    received = b""
    try:
        while chunk := await reader.read(1024):
            received += chunk
    except ConnectionResetError:
        pass
    assert received == b""
    writer.close()
    assert await client.dial(addr_of(server)) == server.peer_id


async def test_outbound_connection_limit(make_host: MakeHost) -> None:
    client = await make_host(Limits(max_outbound_connections=1), listen=False)
    b = await make_host()
    c = await make_host()
    await client.dial(addr_of(b))
    with pytest.raises(ResourceLimitError):
        await client.dial(addr_of(c))


async def test_inbound_streams_per_connection(make_host: MakeHost) -> None:
    server = await make_host(Limits(max_inbound_streams_per_connection=2))
    client = await make_host()
    server.set_stream_handler(HOLD, hold_handler)
    peer = await client.dial(addr_of(server))
    first = await client.new_stream(peer, [HOLD])
    await client.new_stream(peer, [HOLD])
    with pytest.raises(StreamReset):
        await client.new_stream(peer, [HOLD])
    # Closing one (both sides) frees a slot.
    await first.close()
    assert await first.read() == b""
    await asyncio.sleep(0.05)
    assert (await client.new_stream(peer, [HOLD])).protocol == HOLD


async def test_outbound_streams_per_connection(make_host: MakeHost) -> None:
    client = await make_host(Limits(max_outbound_streams_per_connection=1))
    server = await make_host()
    server.set_stream_handler(HOLD, hold_handler)
    peer = await client.dial(addr_of(server))
    await client.new_stream(peer, [HOLD])
    with pytest.raises(ResourceLimitError):
        await client.new_stream(peer, [HOLD])


async def test_dead_address_does_not_hold_up_a_live_one(make_host: MakeHost) -> None:
    """A peer's first address accepts TCP but never answers; the next one is tried after a
    short stagger, well before the handshake timeout."""
    client = await make_host(Limits(handshake_timeout=30))
    server = await make_host()
    silent: list[tcp.TcpConnection] = []
    black_hole = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), silent.append)
    try:
        addrs = [black_hole.multiaddrs[0], *server.listen_addrs()]
        async with asyncio.timeout(5):
            await client.connect(server.peer_id, addrs)
        assert client.connected_peers() == [server.peer_id]
        await asyncio.sleep(0.05)
        assert client.connmgr.counts()["outbound"] == 1  # the dead attempt was given up
    finally:
        await black_hole.close()


async def test_all_addresses_failing_reports_each(make_host: MakeHost) -> None:
    client = await make_host()
    server = await make_host()
    refused = []
    for _ in range(2):
        listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), lambda raw: None)
        refused.append(listener.multiaddrs[0])
        await listener.close()
    with pytest.raises(DialFailed) as info:
        await client.connect(server.peer_id, refused)
    assert [addr for addr, _ in info.value.errors] == refused
    assert client.connmgr.counts()["outbound"] == 0

"""BasicHost end to end on loopback: connections, events, streams, transfers, resets, limits."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable

import pytest

from peerstack.core.multiaddr import Multiaddr
from peerstack.errors import DialError, NegotiationError, StreamClosed, StreamReset, UsageError
from peerstack.host.host import BasicHost
from peerstack.host.interface import Host, HostEvent, PeerConnected, PeerDisconnected, Stream

ECHO = "/test/echo/1.0.0"

# The make_host fixture (conftest.py): start a host on 127.0.0.1, closed at teardown.
MakeHost = Callable[..., Awaitable[BasicHost]]
# The eventually fixture (conftest.py): poll a condition until it holds.
Eventually = Callable[..., Awaitable[None]]


async def echo_handler(stream: Stream) -> None:
    while True:
        data = await stream.read()
        if not data:
            break
        await stream.write(data)
    await stream.close()


def addr_of(host: BasicHost) -> str:
    return f"{host.listen_addrs()[0]}/p2p/{host.peer_id}"


async def test_listen_addrs_are_real_ports(make_host: MakeHost) -> None:
    try:
        import uvloop
    except ImportError:
        pass
    else:  # the conftest runs these tests on the production loop
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    host = await make_host()
    (addr,) = host.listen_addrs()
    target = addr.tcp_target()
    assert target is not None
    assert target[0] == "127.0.0.1"
    assert target[1] != 0


async def test_connect_both_ways_and_events(make_host: MakeHost, eventually: Eventually) -> None:
    a = await make_host()
    b = await make_host()
    events_a: list[HostEvent] = []
    events_b: list[HostEvent] = []
    a.add_listener(events_a.append)
    unsubscribe = b.add_listener(events_b.append)
    assert await a.dial(addr_of(b)) == b.peer_id
    await eventually(lambda: b.connected_peers() == [a.peer_id])
    assert a.connected_peers() == [b.peer_id]
    assert b.connected_peers() == [a.peer_id]
    assert events_a == [PeerConnected(b.peer_id, b.listen_addrs()[0], True)]
    assert isinstance(events_b[0], PeerConnected)
    assert not events_b[0].outbound
    # b dials a back: the existing connection is reused, no second one.
    await b.connect(a.peer_id, a.listen_addrs())
    assert len(b.connections(a.peer_id)) == 1
    # Dialling without /p2p/ accepts whoever answers and reports who it was.
    c = await make_host()
    assert await c.dial(a.listen_addrs()[0]) == a.peer_id
    assert a.peerstore.public_key(c.peer_id) is not None
    unsubscribe()
    await a.disconnect(b.peer_id)
    await eventually(lambda: a.peer_id not in b.connected_peers())
    assert PeerDisconnected(b.peer_id) in events_a
    assert b.peer_id not in a.connected_peers()
    assert a.peer_id not in b.connected_peers()
    assert events_b == events_b[:1]  # unsubscribed: nothing after the first event
    # Known addresses survive the disconnect, so a new stream redials.
    b.set_stream_handler(ECHO, echo_handler)
    stream = await a.new_stream(b.peer_id, [ECHO])
    await stream.write(b"again")
    assert await stream.readexactly(5) == b"again"


async def test_echo_protocol_choice_and_unknown_protocol(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    b.set_stream_handler(ECHO, echo_handler)
    await a.dial(addr_of(b))
    stream = await a.new_stream(b.peer_id, ["/nope/1", ECHO])
    assert stream.protocol == ECHO
    assert stream.remote_peer == b.peer_id
    assert stream.remote_addr == b.listen_addrs()[0]
    await stream.write(b"hello")
    assert await stream.readexactly(5) == b"hello"
    await stream.close()
    assert await stream.read() == b""
    with pytest.raises(NegotiationError):
        await a.new_stream(b.peer_id, ["/nope/1", "/nope/2"])
    b.remove_stream_handler(ECHO)
    with pytest.raises(NegotiationError):
        await a.new_stream(b.peer_id, [ECHO])


async def test_hundred_concurrent_streams(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    b.set_stream_handler(ECHO, echo_handler)
    await a.dial(addr_of(b))

    async def one(i: int) -> bytes:
        stream = await a.new_stream(b.peer_id, [ECHO])
        payload = os.urandom(1000 + i * 37)
        await stream.write(payload)
        await stream.close()
        got = await stream.read_until_eof(1 << 20)
        assert got == payload
        return got

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert len(results) == 100
    assert len(a.connections(b.peer_id)) == 1
    conn = a.connection(b.peer_id)
    assert conn is not None
    assert conn.num_streams == 0


async def test_big_transfer_integrity(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    digests: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def sink(stream: Stream) -> None:
        h = hashlib.sha256()
        n = 0
        while True:
            data = await stream.read()
            if not data:
                break
            h.update(data)
            n += len(data)
        digests.set_result((n, h.digest()))
        await stream.write(h.digest())

    b.set_stream_handler("/sink", sink)
    stream = await a.new_stream(await a.dial(addr_of(b)), ["/sink"])
    h = hashlib.sha256()
    total = 64 << 20
    block = os.urandom(1 << 20)
    for i in range(total >> 20):
        # Vary the pieces: whole bytes, a bytearray, an odd-sized memoryview slice.
        piece = bytes([i & 0xFF]) + block[1:]
        h.update(piece)
        if i % 3 == 0:
            await stream.write(piece)
        elif i % 3 == 1:
            await stream.write(bytearray(piece))
        else:
            view = memoryview(piece)
            await stream.write(view[:12345])
            await stream.write(view[12345:])
    await stream.close()
    assert await stream.readexactly(32) == h.digest()
    assert await digests == (total, h.digest())


async def test_half_close(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    seen: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def upper(stream: Stream) -> None:
        data = await stream.read()
        while chunk := await stream.read():
            data += chunk
        seen.set_result(data)
        # Our side is still open after the peer's close: answer, then close.
        await stream.write(data.upper())
        await stream.write(b"!")
        await stream.close()

    b.set_stream_handler("/upper", upper)
    stream = await a.new_stream(await a.dial(addr_of(b)), ["/upper"])
    await stream.write(b"abc")
    await stream.write(b"def")
    await stream.close()
    with pytest.raises(StreamClosed):
        await stream.write(b"more")
    assert await seen == b"abcdef"
    assert await stream.read_until_eof(100) == b"ABCDEF!"
    assert await stream.read() == b""
    with pytest.raises(StreamClosed):
        await stream.readexactly(1)


async def test_reset_mid_transfer(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    got_some = asyncio.Event()

    async def reset_after_a_bit(stream: Stream) -> None:
        await stream.readexactly(100_000)
        got_some.set()
        stream.reset()

    b.set_stream_handler("/reset", reset_after_a_bit)
    stream = await a.new_stream(await a.dial(addr_of(b)), ["/reset"])
    block = os.urandom(1 << 16)

    async def write_forever() -> None:
        for _ in range(10_000):  # far more than the windows hold: the reset must stop us
            await stream.write(block)

    with pytest.raises(StreamReset):
        await write_forever()
    assert got_some.is_set()
    with pytest.raises(StreamReset):
        await stream.read()
    # The connection itself is fine.
    b.set_stream_handler(ECHO, echo_handler)
    echo = await a.new_stream(b.peer_id, [ECHO])
    await echo.write(b"still here")
    assert await echo.readexactly(10) == b"still here"


async def test_local_reset_reaches_peer(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def reader(stream: Stream) -> None:
        try:
            while await stream.read():
                pass
        except StreamReset as exc:
            outcome.set_result(exc)

    b.set_stream_handler("/r", reader)
    stream = await a.new_stream(await a.dial(addr_of(b)), ["/r"])
    await stream.write(b"x" * 1000)
    stream.reset()
    assert isinstance(await outcome, StreamReset)
    with pytest.raises(StreamReset):
        await stream.write(b"y")


async def test_slow_reader_bounds_memory_and_blocks_writer(
    make_host: MakeHost, eventually: Eventually
) -> None:
    a = await make_host()
    b = await make_host()
    server_streams: list[Stream] = []
    release = asyncio.Event()

    async def lazy(stream: Stream) -> None:
        server_streams.append(stream)
        await release.wait()
        total = 0
        while data := await stream.read():
            total += len(data)
        await stream.write(total.to_bytes(8, "big"))

    b.set_stream_handler("/lazy", lazy)
    stream = await a.new_stream(await a.dial(addr_of(b)), ["/lazy"])
    total = 32 << 20

    async def writer() -> None:
        block = bytes(1 << 20)
        for _ in range(total >> 20):
            await stream.write(block)
        await stream.close()

    task = asyncio.create_task(writer())
    await eventually(lambda: bool(server_streams) and getattr(server_streams[0], "buffered", 0) > 0)
    await asyncio.sleep(0.3)
    assert not task.done()  # blocked on the window
    (server_stream,) = server_streams
    conn_b = b.connection(a.peer_id)
    conn_a = a.connection(b.peer_id)
    assert conn_b is not None
    assert conn_a is not None
    window = conn_b.session.recv_window(getattr(server_stream, "stream_id", -1))
    buffered = getattr(server_stream, "buffered", -1)
    assert 0 < buffered <= window <= 256 * 1024  # never grown: nobody read
    assert conn_a.session.send_window(getattr(stream, "stream_id", -1)) == 0
    release.set()
    await task
    assert int.from_bytes(await stream.readexactly(8), "big") == total


async def test_failing_handler_resets_only_its_stream(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()

    async def broken(stream: Stream) -> None:
        await stream.read()
        raise RuntimeError("handler bug")

    b.set_stream_handler("/broken", broken)
    b.set_stream_handler(ECHO, echo_handler)
    stream = await a.new_stream(await a.dial(addr_of(b)), ["/broken"])
    await stream.write(b"boom")
    with pytest.raises(StreamReset):
        await stream.read()
    echo = await a.new_stream(b.peer_id, [ECHO])
    await echo.write(b"ok")
    assert await echo.readexactly(2) == b"ok"


async def test_ipv6_listener(make_host: MakeHost) -> None:
    from peerstack.core.identity import PrivateKey

    host = BasicHost(PrivateKey.generate(), listen_addrs=["/ip6/::1/tcp/0"])
    try:
        await host.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        (addr,) = host.listen_addrs()
        assert addr.value_for("ip6") == "::1"
        host.set_stream_handler(ECHO, echo_handler)
        client = await make_host(listen=False)
        peer = await client.dial(Multiaddr(f"{addr}/p2p/{host.peer_id}"))
        stream = await client.new_stream(peer, [ECHO])
        await stream.write(b"v6")
        assert await stream.readexactly(2) == b"v6"
    finally:
        await host.close()


async def test_close_cleans_up(make_host: MakeHost, eventually: Eventually) -> None:
    a = await make_host()
    b = await make_host()
    started = asyncio.Event()

    async def forever(stream: Stream) -> None:
        started.set()
        await asyncio.sleep(3600)

    b.set_stream_handler("/forever", forever)
    stream = await a.new_stream(await a.dial(addr_of(b)), ["/forever"])
    await started.wait()
    await b.close()
    with pytest.raises(StreamReset):
        await stream.read()
    assert b.connected_peers() == []
    await eventually(lambda: a.connected_peers() == [])
    assert b.listen_addrs() == []


async def test_basic_host_and_streams_implement_the_interface(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    host: Host = a  # checked by mypy: BasicHost satisfies the services' Host protocol
    b.set_stream_handler(ECHO, echo_handler)
    await a.dial(addr_of(b))
    stream = await host.new_stream(b.peer_id, [ECHO])
    assert isinstance(stream, Stream)
    assert host.peer_id == a.peer_id


async def test_simultaneous_connect_both_ways(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    a.set_stream_handler(ECHO, echo_handler)
    b.set_stream_handler(ECHO, echo_handler)
    a.add_peer_addrs(b.peer_id, b.listen_addrs(), ttl=60)
    b.add_peer_addrs(a.peer_id, a.listen_addrs(), ttl=60)
    s_ab, s_ba = await asyncio.gather(
        a.new_stream(b.peer_id, [ECHO]), b.new_stream(a.peer_id, [ECHO])
    )
    for stream in (s_ab, s_ba):
        await stream.write(b"both")
        assert await stream.readexactly(4) == b"both"
    assert a.connected_peers() == [b.peer_id]
    assert b.connected_peers() == [a.peer_id]
    assert 1 <= len(a.connections(b.peer_id)) <= 2


async def test_stream_churn_leaves_nothing_behind(
    make_host: MakeHost, eventually: Eventually
) -> None:
    a = await make_host()
    b = await make_host()
    b.set_stream_handler(ECHO, echo_handler)
    peer = await a.dial(addr_of(b))
    for i in range(300):
        stream = await a.new_stream(peer, [ECHO])
        await stream.write(b"%d" % i)
        await stream.close()
        assert await stream.read_until_eof(100) == b"%d" % i
        if i % 3 == 0:
            stream.reset()  # a reset after a clean close changes nothing
    conn_a = a.connection(peer)
    conn_b = b.connection(a.peer_id)
    assert conn_a is not None
    assert conn_b is not None
    await eventually(lambda: conn_b.num_streams == 0)
    for conn in (conn_a, conn_b):
        assert conn.num_streams == 0
        assert conn.session.stream_count == 0
        assert conn.idle_since is not None


async def test_connection_loss_wakes_a_writer_of_a_finished_stream(make_host: MakeHost) -> None:
    """The peer sent everything (FIN) and went away while our handler was still writing its
    answer, parked on the send window: the write must fail, not hang."""
    a = await make_host()
    b = await make_host()
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def answer_big(stream: Stream) -> None:
        try:
            request = await stream.read()
            while await stream.read():
                pass
            await stream.write(request * (8 << 20))  # far beyond the window: parks
            outcome.set_result(None)
        except StreamReset as exc:
            outcome.set_result(exc)

    b.set_stream_handler("/big", answer_big)
    stream = await a.new_stream(await a.dial(addr_of(b)), ["/big"])
    await stream.write(b"x")
    await stream.close()
    await asyncio.sleep(0.2)
    assert not outcome.done()
    await a.disconnect(b.peer_id)
    async with asyncio.timeout(5):
        assert isinstance(await outcome, StreamReset)


async def test_dialling_our_own_address_is_refused(
    make_host: MakeHost, eventually: Eventually
) -> None:
    a = await make_host()
    with pytest.raises(DialError, match="our own"):
        await a.dial(a.listen_addrs()[0])
    with pytest.raises(UsageError):
        await a.dial(addr_of(a))
    await eventually(lambda: a.stats()["inbound"] == 0)
    assert a.connected_peers() == []
    assert a.stats()["connections"] == 0


async def test_handler_changes_reach_inbound_negotiation(make_host: MakeHost) -> None:
    """The host indexes its handlers once for inbound negotiation (multistream.ProtocolSet)
    and re-indexes after every change: added, removed and re-added ids are all seen."""
    server = await make_host()
    client = await make_host(listen=False)
    await client.dial(addr_of(server))
    with pytest.raises(NegotiationError):
        await client.new_stream(server.peer_id, [ECHO])
    server.set_stream_handler(ECHO, echo_handler)
    stream = await client.new_stream(server.peer_id, [ECHO])
    await stream.write(b"hi")
    assert await stream.readexactly(2) == b"hi"
    await stream.close()
    server.remove_stream_handler(ECHO)
    with pytest.raises(NegotiationError):
        await client.new_stream(server.peer_id, [ECHO])
    server.set_stream_handler(ECHO, echo_handler)
    stream = await client.new_stream(server.peer_id, ["/test/other/1", ECHO])
    assert stream.protocol == ECHO
    await stream.close()
    # an id that could never be negotiated is refused up front
    with pytest.raises(UsageError):
        server.set_stream_handler("/x" * 600, echo_handler)


def test_protocol_set() -> None:
    from peerstack.wire import multistream

    protocols = multistream.ProtocolSet(["/b/1", "/a/1"])
    assert "/a/1" in protocols
    assert "/c/1" not in protocols
    assert len(protocols) == 2
    assert protocols.listing == ["/a/1", "/b/1"]
    responder = multistream.Responder(protocols)
    responder.receive_data(
        multistream.encode_message(multistream.PROTOCOL_ID)
        + multistream.encode_message("ls")
        + multistream.encode_message("/c/1")
        + multistream.encode_message("/b/1")
    )
    assert responder.protocol == "/b/1"
    assert responder.data_to_send() == (
        multistream.encode_message(multistream.PROTOCOL_ID)
        + multistream.encode_ls_response(["/a/1", "/b/1"])
        + multistream.encode_message("na")
        + multistream.encode_message("/b/1")
    )
    for bad in ("", "a\nb", "/x" * 600):
        with pytest.raises(UsageError):
            multistream.ProtocolSet([bad])
    with pytest.raises(UsageError):
        multistream.ProtocolSet("/a/1")
    # our own ids are framed once, in a bounded memo that keeps no refusals
    before = multistream._own_message.cache_info().currsize
    with pytest.raises(UsageError):
        multistream.Initiator(["/bad\n"])
    assert multistream._own_message.cache_info().currsize == before
    assert multistream._own_message.cache_info().maxsize == multistream._OWN_CACHE_SIZE


async def test_initiator_that_waits_for_our_header_before_proposing(make_host: MakeHost) -> None:
    """Our stream responder sends its header once the initiator's arrived (not before), so
    an initiator that proposes only after reading our header (py-libp2p does) still works."""
    from peerstack.wire import multistream

    server = await make_host()
    server.set_stream_handler(ECHO, echo_handler)
    client = await make_host(listen=False)
    await client.dial(addr_of(server))
    conn = client.connection(server.peer_id)
    assert conn is not None
    stream = conn.open_stream()
    header = multistream.encode_message(multistream.PROTOCOL_ID)
    await stream.write(header)
    assert await stream.readexactly(len(header)) == header
    echo = multistream.encode_message(ECHO)
    await stream.write(echo + b"after")
    assert await stream.readexactly(len(echo)) == echo
    assert await stream.readexactly(5) == b"after"
    await stream.close()

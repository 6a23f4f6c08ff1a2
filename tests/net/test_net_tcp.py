"""The TCP layer on its own: addresses, handshake-mode reads, write pacing."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core.multiaddr import Multiaddr
from peerstack.net import tcp


def _sockaddr_via_text(host: str, port: int) -> Multiaddr | None:
    """The former conversion (ipaddress, then the multiaddr text parser): the reference."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return Multiaddr(f"/{'ip4' if ip.version == 4 else 'ip6'}/{ip}/tcp/{port}")


_PORTS = st.integers(min_value=0, max_value=65535)


@settings(max_examples=300)
@given(st.ip_addresses(v=4), _PORTS)
def test_sockaddr_ip4_matches_the_text_path(ip: ipaddress.IPv4Address, port: int) -> None:
    got = tcp.sockaddr_to_multiaddr((str(ip), port))
    want = _sockaddr_via_text(str(ip), port)
    assert got == want
    assert got is not None
    assert want is not None
    assert str(got) == str(want)
    assert got.components == want.components
    assert got.tcp_target() == (str(ip), port)


@settings(max_examples=300)
@given(
    st.ip_addresses(v=6),
    _PORTS,
    st.sampled_from(["compressed", "exploded", "scoped"]),
)
def test_sockaddr_ip6_matches_the_text_path(
    ip: ipaddress.IPv6Address, port: int, form: str
) -> None:
    host = ip.exploded if form == "exploded" else str(ip)
    if form == "scoped":
        host += "%eth0"
    got = tcp.sockaddr_to_multiaddr((host, port, 0, 0))
    want = _sockaddr_via_text(host, port)
    assert got == want
    assert got is not None
    assert want is not None
    assert str(got) == str(want)
    assert got.components == want.components


@settings(max_examples=300)
@given(st.text(max_size=60), _PORTS)
def test_sockaddr_of_any_text_is_none_or_the_text_paths(host: str, port: int) -> None:
    got = tcp.sockaddr_to_multiaddr((host, port))
    if got is not None:
        assert got == _sockaddr_via_text(host, port)


def test_sockaddr_out_of_range_or_odd_types_is_none() -> None:
    assert tcp.sockaddr_to_multiaddr(("127.0.0.1", 65536)) is None
    assert tcp.sockaddr_to_multiaddr(("127.0.0.1", -1)) is None
    assert tcp.sockaddr_to_multiaddr(("127.0.0.1", "80")) is None
    assert tcp.sockaddr_to_multiaddr((b"127.0.0.1", 80)) is None
    assert tcp.sockaddr_to_multiaddr(("127.0.0.1",)) is None
    assert tcp.sockaddr_to_multiaddr(("1.2.3.04", 80)) is None  # leading zero: refused


def test_sockaddr_to_multiaddr() -> None:
    assert tcp.sockaddr_to_multiaddr(("127.0.0.1", 4001)) == Multiaddr("/ip4/127.0.0.1/tcp/4001")
    assert tcp.sockaddr_to_multiaddr(("::1", 5, 0, 0)) == Multiaddr("/ip6/::1/tcp/5")
    assert tcp.sockaddr_to_multiaddr(("fe80::1%eth0", 5, 0, 2)) == Multiaddr("/ip6/fe80::1/tcp/5")
    assert tcp.sockaddr_to_multiaddr(None) is None
    assert tcp.sockaddr_to_multiaddr(("not an ip", 1)) is None


def test_wildcard_expands_to_interface_addresses() -> None:
    v4, v6 = tcp.interface_addresses()
    assert "127.0.0.1" in v4
    assert "::1" in v6
    interfaces = (["127.0.0.1", "10.1.2.3"], ["::1"])
    assert tcp.expand_unspecified(Multiaddr("/ip4/0.0.0.0/tcp/4001"), interfaces) == [
        Multiaddr("/ip4/127.0.0.1/tcp/4001"),
        Multiaddr("/ip4/10.1.2.3/tcp/4001"),
    ]
    assert tcp.expand_unspecified(Multiaddr("/ip6/::/tcp/7"), interfaces) == [
        Multiaddr("/ip6/::1/tcp/7")
    ]
    specific = Multiaddr("/ip4/10.0.0.1/tcp/1")
    assert tcp.expand_unspecified(specific, interfaces) == [specific]


def test_event_loop_policy() -> None:
    loop = tcp.best_event_loop_policy().new_event_loop()
    try:
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        loop.close()


async def _nodelay_on_both_ends() -> tuple[int, int]:
    accepted: asyncio.Queue[tcp.TcpConnection] = asyncio.Queue()
    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), accepted.put_nowait)
    try:
        client = await tcp.dial(listener.multiaddrs[0])
        server = await accepted.get()
        flags = []
        for conn in (client, server):
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            flags.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            conn.close()
        return flags[0], flags[1]
    finally:
        await listener.close()


@pytest.mark.parametrize("loop_kind", ["production", "asyncio"])
def test_connections_have_nodelay_from_the_event_loop(loop_kind: str) -> None:
    """TcpConnection does not set TCP_NODELAY itself: both loops set it on every TCP
    transport (small handshake and request segments must not wait for Nagle)."""
    if loop_kind == "asyncio":
        loop = asyncio.DefaultEventLoopPolicy().new_event_loop()
    else:
        loop = tcp.best_event_loop_policy().new_event_loop()
    try:
        client_flag, server_flag = loop.run_until_complete(_nodelay_on_both_ends())
    finally:
        loop.close()
    assert client_flag
    assert server_flag


async def test_handshake_mode_reads_and_attach() -> None:
    accepted: asyncio.Queue[tcp.TcpConnection] = asyncio.Queue()
    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), accepted.put_nowait)
    try:
        (addr,) = listener.multiaddrs
        client = await tcp.dial(addr)
        server = await accepted.get()
        assert server.remote_ip == "127.0.0.1"
        assert client.remote_addr == addr
        client.write(b"hello ")
        assert await server.read_some() == b"hello "
        client.write(b"world")
        await asyncio.sleep(0.05)
        # attach() hands back what arrived before it, then delivers synchronously.
        got: list[bytes] = []
        lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        leftover = server.attach(lambda data: got.append(bytes(data)), lost.set_result)
        client.write(b"!")
        client.close()
        assert await lost is None
        assert leftover + b"".join(got) == b"world!"
        assert server.is_closed
    finally:
        await listener.close()


async def test_read_some_reports_eof() -> None:
    accepted: asyncio.Queue[tcp.TcpConnection] = asyncio.Queue()
    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), accepted.put_nowait)
    try:
        client = await tcp.dial(listener.multiaddrs[0])
        server = await accepted.get()
        client.write(b"last words")
        client.close()
        assert await server.read_some() == b"last words"
        assert await server.read_some() == b""
    finally:
        await listener.close()


async def test_addresses_are_built_once() -> None:
    accepted: list[tcp.TcpConnection] = []
    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), accepted.append)
    try:
        conn = await tcp.dial(listener.multiaddrs[0])
        remote = conn.remote_addr
        assert remote == listener.multiaddrs[0]
        assert conn.remote_addr is remote
        assert conn.local_addr is conn.local_addr
        assert conn.local_addr is not None
        assert conn.remote_ip == "127.0.0.1"
        conn.close()
        await conn.wait_closed()
    finally:
        await listener.close()


async def test_wait_closed_wakes_every_waiter_when_the_connection_ends() -> None:
    accepted: asyncio.Queue[tcp.TcpConnection] = asyncio.Queue()
    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), accepted.put_nowait)
    try:
        client = await tcp.dial(listener.multiaddrs[0])
        server = await accepted.get()
        waiters = [asyncio.ensure_future(client.wait_closed(grace=30)) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        client.close()
        await asyncio.wait_for(asyncio.gather(*waiters), 10)
        assert client.is_closed
        await client.wait_closed()  # already closed: returns at once
        server.close()
        await server.wait_closed()
        assert server.is_closed
    finally:
        await listener.close()


async def test_wait_closed_aborts_after_grace() -> None:
    """Nobody closes the socket: after ``grace`` wait_closed aborts it."""
    accepted: asyncio.Queue[tcp.TcpConnection] = asyncio.Queue()
    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), accepted.put_nowait)
    try:
        client = await tcp.dial(listener.multiaddrs[0])
        server = await accepted.get()
        await client.wait_closed(grace=0.05)
        assert client.is_closed
        assert await asyncio.wait_for(server.read_some(), 10) == b""
        server.close()
        await server.wait_closed()
    finally:
        await listener.close()


async def test_cancelled_wait_closed_leaves_nothing_behind() -> None:
    accepted: asyncio.Queue[tcp.TcpConnection] = asyncio.Queue()
    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), accepted.put_nowait)
    try:
        client = await tcp.dial(listener.multiaddrs[0])
        server = await accepted.get()
        waiter = asyncio.ensure_future(client.wait_closed(grace=30))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not client._close_waiters
        assert not client.is_closed  # cancelling the wait does not close the connection
        client.close()
        await client.wait_closed()
        server.close()
        await server.wait_closed()
    finally:
        await listener.close()

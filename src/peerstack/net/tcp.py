"""TCP transport on asyncio: a ``BufferedProtocol`` per connection, a listener and a dialer.

``BufferedProtocol`` lets the event loop read straight into one preallocated buffer per
connection (asyncio streams reach about half the speed). A connection starts in *handshake
mode*, where bytes pile up (bounded) for ``read_some()``; once the upgrade is done the
connection is ``attach()``ed to a receiver callback that gets every chunk synchronously, or
``hand_over()``ed to a protocol object that the event loop then reads for directly (an
upgraded ``Connection``, which also points reads at its own buffer for the rest of a frame it
holds, so bulk data is never copied out of the shared read buffer).

Write backpressure: the loop calls ``pause_writing()`` when the transport's buffer passes its
high-water mark; writers ``await drain()`` until ``resume_writing()``. Nothing here buffers
without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import cast

from peerstack.core.multiaddr import Multiaddr
from peerstack.errors import ConnectionClosed, DialError, UsageError

log = logging.getLogger(__name__)

#: Size of the buffer the loop reads into. One buffer serves every connection of a host: the
#: loop calls get_buffer(), reads, then buffer_updated() for one connection at a time, and the
#: receiver consumes the bytes before returning, so sharing costs nothing and 20,000 idle
#: connections do not each hold a buffer. One whole Noise frame (65537 bytes) per read
#: measured best: the receiver spent 0.85 CPU s/GB at 64 KiB, 0.95 at 128 KiB, 1.2 at 256 KiB
#: and 1.7 at 1 MiB (bench/transport_throughput.py): bigger reads push the read buffer, the
#: decryption scratch and the plaintext out of the CPU caches, and lose Noise's and Yamux's
#: zero-copy single-frame paths. Exactly one frame (not 64 KiB, a byte short of one) lets a
#: read that starts on a frame boundary end on the next one (see ``Connection.get_buffer``).
READ_BUFFER_SIZE = 65537
#: The buffer of a connection made without a shared one (tests, tools).
PRIVATE_READ_BUFFER_SIZE = 65537


def new_read_buffer(size: int = READ_BUFFER_SIZE) -> memoryview:
    """A read buffer to share among the connections of one event loop."""
    return memoryview(bytearray(size))


#: Bytes held for read_some() in handshake mode before we stop reading from the socket.
MAX_HANDSHAKE_BUFFER = 256 * 1024
#: Transport write buffer marks: writers wait above HIGH until the kernel drains below LOW.
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024

#: Gets a view of the read buffer, valid only during the call (it must copy what it keeps).
Receiver = Callable[[bytes | memoryview], None]
LostCallback = Callable[[Exception | None], None]


def best_event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """uvloop's policy when it is installed (about twice the throughput), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.DefaultEventLoopPolicy()
    policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
    return policy


# Binary multiaddr codes (one-byte varints) for building socket addresses without text.
_IP4_CODE = b"\x04"
_IP6_CODE = b"\x29"
_TCP_CODE = b"\x06"


def sockaddr_to_multiaddr(sockaddr: tuple[object, ...] | None) -> Multiaddr | None:
    """``('127.0.0.1', 4001)`` or ``('::1', 4001, 0, 0)`` -> ``/ip4|ip6/<host>/tcp/<port>``.

    Runs once per connection per side, so it skips text parsing: ``inet_pton`` gives the
    address bytes and the multiaddr is parsed from its binary form (memoized, and fast for
    these shapes; it also gives the canonical IPv6 text). The result is the one
    ``Multiaddr(f"/ip4|ip6/{ipaddress.ip_address(host)}/tcp/{port}")`` gives.
    """
    if not sockaddr or len(sockaddr) < 2:
        return None
    host, port = sockaddr[0], sockaddr[1]
    if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        return None
    port_bytes = port.to_bytes(2, "big")
    try:
        if ":" in host:
            raw = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
            return Multiaddr.from_bytes(_IP6_CODE + raw + _TCP_CODE + port_bytes)
        raw = socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):  # not an address (ValueError: a NUL in the text)
        return None
    return Multiaddr.from_bytes(_IP4_CODE + raw + _TCP_CODE + port_bytes)


_SIOCGIFADDR = 0x8915  # Linux ioctl: the IPv4 address of an interface


def interface_addresses() -> tuple[list[str], list[str]]:
    """The IPv4 and IPv6 addresses of this machine's interfaces, loopback included.

    Linux only (an ioctl per interface and ``/proc/net/if_inet6``; no packet is sent);
    elsewhere just the loopback addresses. Link-local IPv6 addresses are left out: they are
    useless to peers without a zone.
    """
    v4: list[str] = []
    v6: list[str] = []
    try:
        import fcntl
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            for _, name in socket.if_nameindex():
                with contextlib.suppress(OSError):
                    packed = struct.pack("256s", name.encode()[:15])
                    answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, packed)
                    v4.append(socket.inet_ntoa(answer[20:24]))
    except (ImportError, OSError):
        pass
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as table:
        for line in table:
            fields = line.split()
            if not fields or len(fields[0]) != 32:
                continue
            ip = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            if not ip.is_link_local:
                v6.append(str(ip))
    if "127.0.0.1" not in v4:
        v4.insert(0, "127.0.0.1")
    if "::1" not in v6:
        v6.insert(0, "::1")
    return list(dict.fromkeys(v4)), list(dict.fromkeys(v6))


def expand_unspecified(
    addr: Multiaddr, interfaces: tuple[list[str], list[str]] | None = None
) -> list[Multiaddr]:
    """``/ip4/0.0.0.0/...`` (or ``/ip6/::/...``) -> one address per interface; else ``[addr]``.

    A listener bound to the wildcard is reachable on every interface, but peers cannot dial
    0.0.0.0: identify must announce the real addresses.
    """
    comps = addr.components
    if not comps or comps[0].value not in ("0.0.0.0", "::"):
        return [addr]
    v4, v6 = interfaces if interfaces is not None else interface_addresses()
    proto = comps[0].name
    rest = Multiaddr.from_components(comps[1:])
    return [Multiaddr(f"/{proto}/{ip}").encapsulate(rest) for ip in (v4 if proto == "ip4" else v6)]


class TcpConnection(asyncio.BufferedProtocol):
    """One TCP connection: handshake-mode reads, then a synchronous receiver; paced writes."""

    # Slots, not a __dict__: thousands of idle connections per node.
    __slots__ = (
        "_close_waiters",
        "_closed",
        "_drain_waiters",
        "_eof",
        "_local_ma",
        "_lost_exc",
        "_on_lost",
        "_on_made",
        "_peername",
        "_pending",
        "_read_waiter",
        "_reading_paused",
        "_receiver",
        "_remote_ma",
        "_sockname",
        "_view",
        "_write_paused",
        "transport",
    )

    def __init__(
        self,
        on_made: Callable[[TcpConnection], None] | None = None,
        read_buffer: memoryview | None = None,
    ) -> None:
        self._on_made = on_made
        self._view = (
            read_buffer if read_buffer is not None else new_read_buffer(PRIVATE_READ_BUFFER_SIZE)
        )
        self.transport: asyncio.Transport | None = None
        self._receiver: Receiver | None = None
        self._on_lost: LostCallback | None = None
        self._pending = bytearray()  # handshake mode input
        self._read_waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._closed = False
        self._lost_exc: Exception | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        # wait_closed() callers, woken by connection_lost (made on first need).
        self._close_waiters: list[asyncio.Future[None]] | None = None
        self._reading_paused = False
        # Socket addresses as the OS gives them; multiaddrs are built on demand (most
        # connections never need them, and thousands of idle ones should stay small).
        self._peername: tuple[object, ...] | None = None
        self._sockname: tuple[object, ...] | None = None
        self._remote_ma: Multiaddr | None = None
        self._local_ma: Multiaddr | None = None

    # -- asyncio protocol callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        # No TCP_NODELAY here: uvloop and asyncio set it on every TCP transport they make, and
        # doing it again cost a socket wrapper and a syscall (~7 us) per connection and side,
        # on the dial's critical path (tests/net/test_net_tcp.py checks it is on).
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        peer = self.transport.get_extra_info("peername")
        self._peername = peer if isinstance(peer, tuple) else None
        sockname = self.transport.get_extra_info("sockname")
        self._sockname = sockname if isinstance(sockname, tuple) else None
        if self._on_made is not None:
            self._on_made(self)

    @property
    def remote_addr(self) -> Multiaddr | None:
        # Built on first use and kept: the host asks several times per connection (limits,
        # peerstore, identify) and parsing a multiaddr is the costly part of the question.
        addr = self._remote_ma
        if addr is None and self._peername is not None:
            addr = self._remote_ma = sockaddr_to_multiaddr(self._peername)
        return addr

    @property
    def local_addr(self) -> Multiaddr | None:
        addr = self._local_ma
        if addr is None and self._sockname is not None:
            addr = self._local_ma = sockaddr_to_multiaddr(self._sockname)
        return addr

    @property
    def remote_ip(self) -> str | None:
        peer = self._peername
        if peer and isinstance(peer[0], str):
            return peer[0]
        return None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        receiver = self._receiver
        if receiver is not None:
            # The receiver copies what it keeps (Noise decrypts into fresh bytes and copies a
            # partial frame), so the buffer can be reused by the next read.
            receiver(self._view[:nbytes])
            return
        self._pending += self._view[:nbytes]
        if len(self._pending) >= MAX_HANDSHAKE_BUFFER and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        # In handshake mode keep the transport open so read_some() can report EOF; an upgraded
        # connection has no use for a half-closed TCP connection.
        return self._receiver is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._lost_exc = exc
        self._eof = True
        self._wake_reader()
        err = ConnectionClosed(f"connection lost: {exc}" if exc else "connection closed")
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_exception(err)
        self._drain_waiters.clear()
        closing, self._close_waiters = self._close_waiters, None
        if closing is not None:
            for fut in closing:
                if not fut.done():
                    fut.set_result(None)
        callback = self._on_lost
        self._on_lost = None
        if callback is not None:
            callback(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- handshake mode --------------------------------------------------------------------

    def _wake_reader(self) -> None:
        fut = self._read_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def read_some(self) -> bytes:
        """Return whatever is buffered (at least one byte); ``b""`` at EOF (handshake mode)."""
        if self._receiver is not None:
            raise UsageError("read_some() after attach()")
        while not self._pending:
            if self._eof or self._closed:
                return b""
            fut = asyncio.get_running_loop().create_future()
            self._read_waiter = fut
            try:
                await fut
            finally:
                self._read_waiter = None
        data = bytes(self._pending)
        self._pending.clear()
        if self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def attach(self, receiver: Receiver, on_lost: LostCallback) -> bytes:
        """Leave handshake mode: future bytes go to ``receiver``; returns bytes still buffered.

        If the connection is already gone, ``on_lost`` is called at once (after returning the
        buffered bytes is not possible, so it is scheduled on the loop).
        """
        self._receiver = receiver
        leftover = bytes(self._pending)
        self._pending.clear()
        if self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._closed:
            asyncio.get_running_loop().call_soon(on_lost, self._lost_exc)
        elif self._eof:
            # The peer half-closed during the handshake: treat it as the end.
            asyncio.get_running_loop().call_soon(self.close)
            self._on_lost = on_lost
        else:
            self._on_lost = on_lost
        return leftover

    def hand_over(self, protocol: UpgradedProtocol, on_lost: LostCallback) -> bytes:
        """Leave handshake mode by giving the transport's reads to ``protocol`` itself.

        Like attach(), but the event loop then calls ``protocol.get_buffer()`` and
        ``protocol.buffer_updated()`` directly: one Python call less per read than a
        receiver called from our buffer_updated(). The write side (write, drain, close) and
        the connection's end stay here: ``protocol`` forwards the other transport callbacks
        to this object (see UpgradedProtocol), and ``on_lost`` is called as with attach().
        Returns the bytes still buffered, which the protocol handles first.
        """
        leftover = self.attach(_reads_handed_over, on_lost)
        transport = self.transport
        if transport is not None and not self._closed:
            transport.set_protocol(protocol)
        return leftover

    @property
    def read_buffer(self) -> memoryview:
        """The buffer the loop reads into (shared by the connections of a host)."""
        return self._view

    # -- writing ---------------------------------------------------------------------------

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    @property
    def is_closed(self) -> bool:
        return self._closed or self.transport is None or self.transport.is_closing()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        transport = self.transport
        if transport is None or self._closed:
            raise ConnectionClosed("connection closed")
        if transport.is_closing():
            raise ConnectionClosed("connection closing")
        transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark."""
        if not self._write_paused:
            return
        if self._closed:
            raise ConnectionClosed("connection closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        await fut

    def close(self) -> None:
        """Close after flushing what is buffered."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self, grace: float = 2.0) -> None:
        """Wait for ``connection_lost`` (abort the socket if it takes longer than ``grace``).

        Woken by connection_lost itself, not by polling: a close that flushes at once is
        over in a loop turn or two (polling every 10 ms made every disconnect take 10 ms).
        """
        if self._closed or self.transport is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._close_waiters
        if waiters is None:
            waiters = self._close_waiters = []
        waiters.append(fut)
        try:
            async with asyncio.timeout(grace):
                await fut
        except TimeoutError:
            self.abort()
        finally:
            # A caller that timed out or was cancelled leaves no future behind.
            waiters = self._close_waiters
            if waiters is not None and fut in waiters:
                waiters.remove(fut)


def _reads_handed_over(data: bytes | memoryview) -> None:
    """The receiver of a handed-over connection, whose reads go to its protocol instead."""
    raise UsageError("this connection's reads were handed over to its protocol")


class UpgradedProtocol(asyncio.BufferedProtocol):
    """Base of a protocol that takes over a TcpConnection's reads (``hand_over``).

    Subclasses implement ``get_buffer`` and ``buffer_updated``; the other transport callbacks
    go back to the TcpConnection, which keeps the write side (pause/resume, drain waiters)
    and reports the end of the connection.
    """

    __slots__ = ("_tcp",)

    def __init__(self, tcp: TcpConnection) -> None:
        self._tcp = tcp

    def eof_received(self) -> bool:
        return self._tcp.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._tcp.connection_lost(exc)

    def pause_writing(self) -> None:
        self._tcp.pause_writing()

    def resume_writing(self) -> None:
        self._tcp.resume_writing()


class TcpListener:
    """A listening socket; ``multiaddrs`` are the real bound addresses (ephemeral ports)."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server

    @property
    def multiaddrs(self) -> list[Multiaddr]:
        out: list[Multiaddr] = []
        for sock in self._server.sockets:
            addr = sockaddr_to_multiaddr(sock.getsockname())
            if addr is not None:
                out.append(addr)
        return out

    def close_nowait(self) -> None:
        """Stop accepting connections (established ones are not touched)."""
        self._server.close()

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


def _host_port(addr: Multiaddr) -> tuple[str, int]:
    target = addr.tcp_target()
    if target is None:
        raise UsageError(f"not a TCP multiaddr: {addr}")
    return target


async def listen(
    addr: Multiaddr,
    on_connection: Callable[[TcpConnection], None],
    read_buffer: memoryview | None = None,
) -> TcpListener:
    """Listen on ``/ip4|ip6/<host>/tcp/<port>``; ``on_connection`` gets each new connection.

    ``read_buffer`` (from ``new_read_buffer()``) is shared by the connections, if given.
    """
    host, port = _host_port(addr)
    if addr.value_for("ip4") is None and addr.value_for("ip6") is None:
        raise UsageError(f"listen needs an IP address, not a name: {addr}")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: TcpConnection(on_made=on_connection, read_buffer=read_buffer),
        host,
        port,
        reuse_address=True,
    )
    return TcpListener(server)


async def dial(
    addr: Multiaddr, connect_timeout: float = 10.0, read_buffer: memoryview | None = None
) -> TcpConnection:
    """Connect to a TCP multiaddr (``/p2p/`` suffix ignored); raises ``DialError``."""
    host, port = _host_port(addr)
    family = socket.AF_UNSPEC
    if addr.value_for("dns4") is not None:
        family = socket.AF_INET
    elif addr.value_for("dns6") is not None:
        family = socket.AF_INET6
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            _, proto = await loop.create_connection(
                lambda: TcpConnection(read_buffer=read_buffer), host, port, family=family
            )
    except TimeoutError as exc:
        raise DialError(
            f"cannot connect to {addr}: no answer within {connect_timeout:g} s"
        ) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise DialError(f"cannot connect to {addr}: {reason}") from exc
    return proto

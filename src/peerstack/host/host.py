"""``BasicHost``: the real ``Host`` on TCP + Noise + Yamux.

It listens, dials (merging concurrent dials to one peer), keeps one connection per peer,
answers inbound streams with the registered protocol handlers and opens outbound streams with
``new_stream``. Handlers run as tasks: one that raises gets its stream reset and is logged, and
nothing else is affected. ``close()`` (or leaving ``async with``) stops listeners, closes every
connection and cancels every task it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any

from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import (
    ConnectionClosed,
    DialError,
    PeerError,
    PeerstackError,
    ResourceLimitError,
    StreamClosed,
    StreamError,
    UsageError,
)
from peerstack.host.connmgr import ConnectionManager, Reservation
from peerstack.host.interface import (
    HostEvent,
    HostListener,
    PeerConnected,
    PeerDisconnected,
    StreamHandler,
)
from peerstack.host.limits import Limits
from peerstack.host.peerstore import (
    CONNECTED_ADDR_TTL,
    RECENTLY_CONNECTED_ADDR_TTL,
    Peerstore,
)
from peerstack.net import tcp
from peerstack.net.connection import Connection
from peerstack.net.stream import YamuxStream
from peerstack.net.upgrader import UpgradeOptions, upgrade
from peerstack.wire import multistream
from peerstack.wire.yamux import YamuxConfig

log = logging.getLogger(__name__)


#: Seconds to wait for one address of a peer before also trying the next one.
DIAL_STAGGER = 0.25
#: Addresses of one peer dialled at the same time.
MAX_PARALLEL_DIALS = 4


class NegotiationTimeout(StreamError, TimeoutError):
    """Protocol negotiation on a new stream did not finish in time."""


class DialFailed(DialError):
    """Every address of a peer failed; ``errors`` holds ``(address, error)`` per attempt."""

    def __init__(self, message: str, errors: list[tuple[Multiaddr, BaseException]]) -> None:
        super().__init__(message)
        self.errors = errors


async def negotiate(stream: YamuxStream, ms: multistream.Initiator | multistream.Responder) -> str:
    """Run multistream-select on ``stream``; bytes read past the agreement are pushed back.

    A responder's header waits for the initiator's first bytes (every initiator sends its
    header unasked), and the answer that completes the negotiation is queued rather than
    written at once: header, echo and the handler's first reply leave in one segment.
    """
    responder = isinstance(ms, multistream.Responder)
    if not responder:
        await stream.write(ms.data_to_send())
    while not ms.done:
        data = await stream.read()
        if not data:
            raise StreamClosed("the peer closed the stream during protocol negotiation")
        ms.receive_data(data)
        out = ms.data_to_send()
        if out:
            # Connection.send writes small ``bytes`` to the socket at once and queues other
            # buffers for its end-of-turn flush: a memoryview of the final answer waits (at
            # most until the end of this loop turn) for what the handler writes right after.
            await stream.write(memoryview(out) if responder and ms.done else out)
    stream.unread(ms.unused_data())
    protocol = ms.protocol
    assert protocol is not None
    return protocol


class BasicHost:
    """A libp2p host: TCP transport, Noise security, Yamux streams, multistream protocols."""

    def __init__(
        self,
        key: PrivateKey,
        *,
        listen_addrs: Sequence[Multiaddr | str] = (),
        limits: Limits | None = None,
        yamux_config: YamuxConfig | None = None,
        peerstore: Peerstore | None = None,
        early_muxer_negotiation: bool = True,
    ) -> None:
        self._key = key
        self._peer_id = PeerId.from_public_key(key.public_key)
        self._listen_on = [a if isinstance(a, Multiaddr) else Multiaddr(a) for a in listen_addrs]
        self.limits = limits if limits is not None else Limits()
        self.peerstore = peerstore if peerstore is not None else Peerstore()
        self._upgrade = UpgradeOptions(
            handshake_timeout=self.limits.handshake_timeout,
            early_muxer_negotiation=early_muxer_negotiation,
            yamux_config=yamux_config if yamux_config is not None else YamuxConfig(),
            max_inbound_streams=self.limits.max_inbound_streams_per_connection,
            max_outbound_streams=self.limits.max_outbound_streams_per_connection,
        )
        self.connmgr: ConnectionManager[Connection] = ConnectionManager(self.limits)
        self.peerstore.set_protect(self.connmgr.is_connected)
        self._read_buffer = tcp.new_read_buffer()
        self._handlers: dict[str, StreamHandler] = {}
        # The handlers' ids as inbound negotiation uses them; rebuilt after a change.
        self._protocol_set: multistream.ProtocolSet | None = None
        self._listeners: list[tcp.TcpListener] = []
        # The listeners' bound addresses, read from their sockets once (they do not change
        # while listening; identify asks for them on every connection).
        self._bound_addrs: list[Multiaddr] = []
        self._event_listeners: list[HostListener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._trim_task: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise UsageError("host already started")
        self._started = True
        self._upgrade.prepare(self._key)
        try:
            for addr in self._listen_on:
                listener = await tcp.listen(addr, self._on_tcp_connection, self._read_buffer)
                self._listeners.append(listener)
                self._bound_addrs.extend(listener.multiaddrs)
        except BaseException:
            await self.close()
            raise
        self._trim_task = asyncio.get_running_loop().create_task(self._trim_loop())

    async def close(self) -> None:
        """Stop listening, close every connection (streams reset), cancel every task."""
        if self._closing:
            return
        self._closing = True
        if self._trim_task is not None:
            self._trim_task.cancel()
        for listener in self._listeners:
            listener.close_nowait()
        conns = self.connmgr.connections()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        tasks = list(self._tasks)
        if self._trim_task is not None:
            tasks.append(self._trim_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for listener in self._listeners:
            await listener.close()
        self._listeners.clear()
        self._bound_addrs.clear()

    async def __aenter__(self) -> BasicHost:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- identity and addresses --------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    @property
    def private_key(self) -> PrivateKey:
        return self._key

    def listen_addrs(self) -> list[Multiaddr]:
        """The real bound addresses: ephemeral ports resolved, and a wildcard (0.0.0.0, ::)
        listener listed once per interface address."""
        bound = self._bound_addrs
        if not any(a.components[0].value in ("0.0.0.0", "::") for a in bound):
            return list(bound)
        interfaces = tcp.interface_addresses()
        out = [e for a in bound for e in tcp.expand_unspecified(a, interfaces)]
        return list(dict.fromkeys(out))

    def peer_addrs(self, peer: PeerId) -> list[Multiaddr]:
        return self.peerstore.addrs(peer)

    def add_peer_addrs(self, peer: PeerId, addrs: Sequence[Multiaddr], ttl: float) -> None:
        self.peerstore.add_addrs(peer, addrs, ttl)

    # -- handlers and events -----------------------------------------------------------------

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        if not protocol or "\n" in protocol:
            raise UsageError(f"invalid protocol id {protocol!r}")
        multistream.ProtocolSet([protocol])  # refuses an id we could not negotiate
        self._handlers[protocol] = handler
        self._protocol_set = None

    def remove_stream_handler(self, protocol: str) -> None:
        self._handlers.pop(protocol, None)
        self._protocol_set = None

    def protocols(self) -> list[str]:
        """Protocols we have handlers for (what identify announces)."""
        return list(self._handlers)

    def add_listener(self, listener: HostListener) -> Callable[[], None]:
        self._event_listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._event_listeners:
                self._event_listeners.remove(listener)

        return unsubscribe

    def _emit(self, event: HostEvent) -> None:
        for listener in list(self._event_listeners):
            try:
                listener(event)
            except Exception:
                log.exception("host event listener failed on %r", event)

    # -- connections -------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters for dashboards and tests: connections, streams, running tasks."""
        conns = self.connmgr.connections()
        return {
            **self.connmgr.counts(),
            "streams": sum(c.num_streams for c in conns),
            "tasks": len(self._tasks),
            "handlers": len(self._handlers),
            "peerstore_peers": len(self.peerstore),
        }

    def connected_peers(self) -> list[PeerId]:
        return self.connmgr.peers()

    def connection(self, peer: PeerId) -> Connection | None:
        """The connection new streams to ``peer`` would use (for stats), if any."""
        return self.connmgr.get(peer)

    def connections(self, peer: PeerId | None = None) -> list[Connection]:
        return self.connmgr.connections(peer)

    async def connect(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> None:
        if addrs:
            self.peerstore.add_addrs(peer, addrs, RECENTLY_CONNECTED_ADDR_TTL)
        await self._connection_to(peer, list(addrs))

    async def dial(self, addr: Multiaddr | str) -> PeerId:
        """Dial one address; with ``/p2p/<id>`` that peer must answer, without it anyone may.

        Returns the PeerId of who answered.
        """
        if isinstance(addr, str):
            addr = Multiaddr(addr)
        bare, pid = addr.decapsulate_p2p()
        if pid is not None:
            peer = PeerId.from_string(pid)
            await self.connect(peer, [bare])
            return peer
        conn = await self._dial_addr(bare, None)
        return conn.remote_peer

    async def disconnect(self, peer: PeerId) -> None:
        """Close every connection to ``peer``."""
        await asyncio.gather(
            *(c.close() for c in self.connmgr.connections(peer)), return_exceptions=True
        )

    async def _connection_to(
        self, peer: PeerId, addrs: list[Multiaddr] | None = None
    ) -> Connection:
        if peer == self._peer_id:
            raise UsageError("cannot dial ourselves")
        if self._closing:
            raise ConnectionClosed("host is closing")
        return await self.connmgr.dial(peer, lambda: self._dial_peer(peer, addrs or []))

    async def _dial_peer(self, peer: PeerId, addrs: list[Multiaddr]) -> Connection:
        """Dial the peer's addresses, staggered: the next starts when the previous failed or
        has not answered within DIAL_STAGGER (a dead address must not hold up a live one)."""
        candidates = list(dict.fromkeys([*addrs, *self.peerstore.addrs(peer)]))
        dialable = list(
            dict.fromkeys(a.decapsulate_p2p()[0] for a in candidates if a.tcp_target() is not None)
        )
        if not dialable:
            raise DialError(f"no dialable address known for {peer}")
        if len(dialable) == 1:
            return await self._dial_addr(dialable[0], peer)
        errors: list[tuple[Multiaddr, BaseException]] = []
        queue = iter(dialable)
        attempts: dict[asyncio.Task[Connection], Multiaddr] = {}
        pending: set[asyncio.Task[Connection]] = set()
        winner: Connection | None = None
        loop = asyncio.get_running_loop()
        try:
            exhausted = False
            while winner is None:
                if not exhausted and len(pending) < MAX_PARALLEL_DIALS:
                    addr = next(queue, None)
                    if addr is None:
                        exhausted = True
                    else:
                        task = loop.create_task(self._dial_addr(addr, peer))
                        attempts[task] = addr
                        pending.add(task)
                if not pending:
                    break
                done, pending = await asyncio.wait(
                    pending,
                    timeout=None if exhausted else DIAL_STAGGER,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        if winner is None:
                            winner = task.result()
                        else:  # two won in the same turn
                            await task.result().close()
                    elif isinstance(exc, PeerstackError | OSError) and not isinstance(
                        exc, ResourceLimitError
                    ):
                        log.debug("dialling %s at %s failed: %s", peer, attempts[task], exc)
                        errors.append((attempts[task], exc))
                    else:
                        raise exc
        finally:
            for task in pending:
                task.cancel()
            late = await asyncio.gather(*pending, return_exceptions=True)
            for extra in late:
                if isinstance(extra, Connection) and extra is not winner:
                    await extra.close()  # lost the race: one connection per peer is enough
        if winner is not None:
            return winner
        if len(errors) == 1:
            raise errors[0][1]
        detail = "; ".join(f"{a}: {e}" for a, e in errors)
        raise DialFailed(f"could not reach {peer}: {detail}", errors)

    async def _dial_addr(self, addr: Multiaddr, expected: PeerId | None) -> Connection:
        if self._closing:
            raise ConnectionClosed("host is closing")
        reservation = self.connmgr.reserve_outbound()
        try:
            raw = await tcp.dial(addr, self.limits.dial_timeout, self._read_buffer)
            conn = await upgrade(
                raw, self._key, outbound=True, expected_peer=expected, options=self._upgrade
            )
        except BaseException:
            reservation.release()
            raise
        if self._closing:
            reservation.release()
            await conn.close()
            raise ConnectionClosed("host is closing")
        if conn.remote_peer == self._peer_id:
            reservation.release()
            await conn.close()
            raise DialError(f"{addr} is one of our own addresses")
        self.peerstore.add_addrs(conn.remote_peer, [addr], CONNECTED_ADDR_TTL)
        self._register(conn, reservation)
        return conn

    def _on_tcp_connection(self, raw: tcp.TcpConnection) -> None:
        """A peer connected to one of our listeners (called from the protocol callback)."""
        if self._closing:
            raw.abort()
            return
        try:
            reservation = self.connmgr.reserve_inbound(raw.remote_ip)
        except ResourceLimitError as exc:
            log.info("refusing inbound connection from %s: %s", raw.remote_addr, exc)
            raw.abort()
            return
        self._spawn(self._upgrade_inbound(raw, reservation))

    async def _upgrade_inbound(self, raw: tcp.TcpConnection, reservation: Reservation) -> None:
        try:
            conn = await upgrade(raw, self._key, outbound=False, options=self._upgrade)
        except (PeerstackError, OSError) as exc:
            reservation.release()
            log.info("inbound handshake from %s failed: %r", raw.remote_addr, exc)
            return
        except BaseException:
            reservation.release()
            raise
        if self._closing or conn.remote_peer == self._peer_id:
            # close() already went through the connections, or we dialled ourselves.
            reservation.release()
            await conn.close()
            return
        self._register(conn, reservation)

    def _register(self, conn: Connection, reservation: Reservation) -> None:
        first = self.connmgr.register(conn, reservation)
        peer = conn.remote_peer
        if conn.remote_public_key is not None:
            self.peerstore.set_public_key(peer, conn.remote_public_key)
        conn.on_stream = self._on_inbound_stream
        conn.on_rtt = lambda rtt: self.peerstore.record_latency(peer, rtt)
        conn.add_closed_callback(self._on_connection_closed)
        if first:
            self._emit(PeerConnected(peer, conn.remote_addr, conn.outbound))
        conn.start()

    def _on_connection_closed(self, conn: Connection) -> None:
        if self.connmgr.unregister(conn):
            self.peerstore.update_addrs(
                conn.remote_peer, CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL
            )
            self._emit(PeerDisconnected(conn.remote_peer))

    async def _trim_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.limits.trim_interval)
            await self.connmgr.trim(loop.time())

    # -- streams -----------------------------------------------------------------------------

    async def new_stream(self, peer: PeerId, protocols: Sequence[str]) -> YamuxStream:
        """Open a stream to ``peer`` (dialling if needed) and negotiate one of ``protocols``."""
        if isinstance(protocols, str):
            raise UsageError("pass a sequence of protocol ids, not one string")
        conn = await self._connection_to(peer)
        try:
            stream = conn.open_stream()
        except ConnectionClosed:
            # The connection ended (or the peer sent GoAway) since we picked it: once more,
            # on whatever connection the manager finds or dials now.
            conn = await self._connection_to(peer)
            stream = conn.open_stream()
        try:
            async with asyncio.timeout(self.limits.stream_negotiation_timeout):
                stream.protocol = await negotiate(stream, multistream.Initiator(protocols))
        except TimeoutError:
            stream.reset()
            raise NegotiationTimeout(f"{peer} did not agree on a protocol in time") from None
        except BaseException:
            stream.reset()
            raise
        return stream

    open_stream = new_stream

    def _on_inbound_stream(self, stream: YamuxStream) -> None:
        self._spawn(self._serve_stream(stream))

    async def _serve_stream(self, stream: YamuxStream) -> None:
        supported = self._protocol_set
        if supported is None:
            supported = self._protocol_set = multistream.ProtocolSet(self._handlers)
        try:
            async with asyncio.timeout(self.limits.stream_negotiation_timeout):
                protocol = await negotiate(stream, multistream.Responder(supported))
        except (PeerstackError, TimeoutError) as exc:
            log.debug("inbound stream from %s not negotiated: %r", stream.remote_peer, exc)
            stream.reset()
            return
        handler = self._handlers.get(protocol)
        if handler is None:  # removed while negotiating
            stream.reset()
            return
        stream.protocol = protocol
        try:
            await handler(stream)
        except asyncio.CancelledError:
            stream.reset()
            raise
        except (StreamError, ConnectionClosed, PeerError) as exc:
            # The peer reset the stream, went away or sent garbage: its doing, not a bug here.
            log.debug("handler for %s from %s ended: %r", protocol, stream.remote_peer, exc)
            stream.reset()
            return
        except Exception:
            log.exception("handler for %s from %s failed", protocol, stream.remote_peer)
            stream.reset()
            return
        if not stream.is_reset and not stream.write_closed:
            with contextlib.suppress(StreamError, ConnectionClosed):
                await stream.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

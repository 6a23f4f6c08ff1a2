"""ping ``/ipfs/ping/1.0.0``: 32 random bytes, echoed back, as often as the client likes.

The client may send many pings on one stream, one at a time. The server echoes each 32-byte
payload as soon as it is complete and holds at most 32 bytes per stream; a stream idle for
``PING_IDLE_TIMEOUT`` seconds is reset so a silent peer cannot pin it forever.

On a stream that offers a data handler (``YamuxStream.set_data_handler`` and ``try_write``)
the server echoes whole pings from the receive callback itself: no task wake-up, future or
read per ping. Anything else (a ping cut in pieces, a full window or socket) hands over to the
reading loop, which serves it the ordinary way and then offers the handler again.

js kad-dht pings a peer before it adds it to its routing table, so this protocol must be served
for DHT traffic from js peers to reach us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from peerstack.core.peer_id import PeerId
from peerstack.errors import PeerError, PeerstackError, StreamClosed, UsageError
from peerstack.host.interface import Host, Stream

log = logging.getLogger(__name__)

PING = "/ipfs/ping/1.0.0"
PING_SIZE = 32
PING_IDLE_TIMEOUT = 60.0
PING_TIMEOUT = 10.0
MAX_PING_COUNT = 1_000_000


class PingMismatch(PeerError):
    """The peer answered a ping with bytes other than the ones we sent."""


class LatencyRecorder(Protocol):
    """The part of a peerstore ping writes RTTs to."""

    def record_latency(self, peer: PeerId, rtt: float) -> None: ...


@runtime_checkable
class InlineStream(Protocol):
    """A stream that can hand data to a synchronous handler (``YamuxStream`` does)."""

    def set_data_handler(self, handler: Callable[[bytes], bool] | None) -> None: ...

    def try_write(self, data: bytes) -> bool: ...


class IdleWatchdog:
    """A deadline ``limit`` seconds after the last ``touch()``, on a single lazy timer.

    ``asyncio.timeout()`` per ping costs a timer set and cancelled per round trip; this arms
    one timer per ``limit`` seconds instead. When it fires it checks the time of the last
    touch: if the limit really passed, it expires the enclosing ``asyncio.timeout()``
    scope (which then raises ``TimeoutError`` in the usual way), else it re-arms itself.
    """

    __slots__ = ("_handle", "_last", "_limit", "_loop", "_scope")

    def __init__(self, scope: asyncio.Timeout, limit: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._scope = scope
        self._limit = limit
        self._last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._last + limit, self._fire
        )

    def touch(self) -> None:
        self._last = self._loop.time()

    def _fire(self) -> None:
        due = self._last + self._limit
        if self._loop.time() >= due:
            self._handle = None
            self._scope.reschedule(self._loop.time())  # expire now: TimeoutError in the scope
        else:
            self._handle = self._loop.call_at(due, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _rest_of_ping(stream: Stream, buf: bytes) -> bytes:
    """Complete a payload that arrived in pieces (``buf`` is its non-empty start).

    The usual case, one whole 32-byte payload per read, is handled inline by the callers (a
    coroutine less per ping); this is the rare rest.
    """
    while len(buf) < PING_SIZE:
        chunk = await stream.read(PING_SIZE - len(buf))
        if not chunk:
            raise StreamClosed("stream ended inside a ping payload")
        buf += chunk
    return buf


def _inline_echo(stream: InlineStream, watchdog: IdleWatchdog) -> Callable[[bytes], bool]:
    """The data handler that echoes whole pings as they arrive (see the module docstring)."""
    try_write = stream.try_write
    touch = watchdog.touch

    def echo(data: bytes) -> bool:
        # Whole pings only (one, or several sent back to back), and only when the answer can
        # go at once; anything else goes to the reading loop, nothing lost or reordered.
        if len(data) % PING_SIZE or not try_write(data):
            return False
        touch()
        return True

    return echo


async def handle_ping(stream: Stream, idle_timeout: float = PING_IDLE_TIMEOUT) -> None:
    """Serve pings on ``stream`` until the client closes it."""
    try:
        async with asyncio.timeout(None) as scope:
            watchdog = IdleWatchdog(scope, idle_timeout)
            inline = stream if isinstance(stream, InlineStream) else None
            echo = _inline_echo(inline, watchdog) if inline is not None else None
            try:
                while True:
                    if inline is not None:
                        inline.set_data_handler(echo)
                    payload = await stream.read(PING_SIZE)
                    if len(payload) != PING_SIZE:
                        if not payload:  # a clean end between pings
                            break
                        payload = await _rest_of_ping(stream, payload)
                    watchdog.touch()
                    await stream.write(payload)
            finally:
                if inline is not None:
                    inline.set_data_handler(None)
                watchdog.cancel()
    except (PeerstackError, OSError, TimeoutError) as exc:
        log.debug("ping stream from %s ended: %s", stream.remote_peer, exc)
        stream.reset()
        return
    with contextlib.suppress(PeerstackError):
        await stream.close()


async def ping_stream(stream: Stream, count: int, rtt_timeout: float = PING_TIMEOUT) -> list[float]:
    """Send ``count`` pings on ``stream``; return each round-trip time in seconds.

    Raises ``PingMismatch`` on a wrong echo, ``StreamClosed`` if the peer stops answering, and
    ``TimeoutError`` when one round trip takes longer than ``rtt_timeout``.
    """
    if not 1 <= count <= MAX_PING_COUNT:
        raise UsageError(f"ping count must be between 1 and {MAX_PING_COUNT}")
    rtts: list[float] = []
    # Random bytes fetched for up to 64 pings at a time (one getrandom call, not one per ping).
    pool = b""
    pos = 0
    async with asyncio.timeout(None) as scope:
        watchdog = IdleWatchdog(scope, rtt_timeout)  # each round trip gets rtt_timeout
        try:
            for i in range(count):
                if pos >= len(pool):
                    pool = os.urandom(PING_SIZE * min(count - i, 64))
                    pos = 0
                payload = pool[pos : pos + PING_SIZE]
                pos += PING_SIZE
                watchdog.touch()
                start = time.perf_counter()
                await stream.write(payload)
                answer = await stream.read(PING_SIZE)
                if len(answer) != PING_SIZE and answer:
                    answer = await _rest_of_ping(stream, answer)
                rtt = time.perf_counter() - start
                if not answer:
                    raise StreamClosed("peer closed the ping stream")
                if answer != payload:
                    raise PingMismatch("ping answer does not match the payload")
                rtts.append(rtt)
        finally:
            watchdog.cancel()
    return rtts


async def ping(
    host: Host,
    peer: PeerId,
    count: int = 1,
    *,
    peerstore: LatencyRecorder | None = None,
    rtt_timeout: float = PING_TIMEOUT,
) -> list[float]:
    """Ping ``peer`` ``count`` times over one stream; RTTs in seconds, also recorded."""
    stream = await host.new_stream(peer, [PING])
    try:
        rtts = await ping_stream(stream, count, rtt_timeout)
    except BaseException:
        stream.reset()
        raise
    with contextlib.suppress(PeerstackError):
        await stream.close()
    if peerstore is not None:
        for rtt in rtts:
            peerstore.record_latency(peer, rtt)
    return rtts


def register(host: Host) -> Sequence[str]:
    """Serve ping on ``host``; return the protocol ids registered."""
    host.set_stream_handler(PING, handle_ping)
    return (PING,)

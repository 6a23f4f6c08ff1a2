"""``Connection``: a secured, multiplexed connection driving NoiseTransport + YamuxSession.

Read path (the event loop's read callback, synchronous): once upgraded, the Connection is the
transport's protocol itself (``TcpConnection.hand_over``), so the loop calls its
``buffer_updated`` with no hop through the TcpConnection: TCP bytes -> ``decrypt`` -> yamux
``receive_fast``/``receive_data`` -> the payload or events dispatched to ``YamuxStream``
objects. A Noise frame cut by the end of a read has its rest read by the socket straight into
Noise's partial-frame buffer (``get_buffer`` names it), so bulk reads stay one frame each and
copy nothing.

Write path: streams hand data to the session; the session's output is drained, encrypted once
and written once per loop turn (or at once when a large batch is waiting), so many small frames
cost one ``transport.write``. Bulk output is encrypted into a few reusable 1 MiB buffers that
the transport sends from (``_OutBuffers``), never into a fresh buffer per write: allocator churn
(pages handed back to the kernel and faulted in again) cost more than the cipher. A small write
with nothing queued goes out at once. The TCP transport's pause/resume drive the writers' waits.

A peer that breaks Noise or Yamux gets a GoAway (when possible) and the connection closes with
the typed error in ``error``; other connections are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from peerstack.core.identity import PublicKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import (
    ConnectionClosed,
    PeerError,
    PeerstackError,
    ResourceLimitError,
    StreamReset,
)
from peerstack.net.stream import LazyConnectionClosed, StreamConnectionClosed, YamuxStream
from peerstack.net.tcp import TcpConnection, UpgradedProtocol
from peerstack.wire import noise, yamux
from peerstack.wire.noise import NoiseTransport

log = logging.getLogger(__name__)

#: Queued outgoing bytes that trigger an immediate flush rather than one at the end of the turn.
FLUSH_THRESHOLD = 256 * 1024

#: A queued piece at least this large is encrypted where it lies rather than joined with
#: its neighbours (see ``_flush``).
LARGE_PIECE = 32 * 1024

#: Plaintext encrypted per call: a whole number of Noise frames within its scratch buffer.
ENCRYPT_SLICE = 15 * noise.MAX_PLAINTEXT

#: One reusable output buffer: 16 whole Noise frames (a flush slice plus small pieces).
OUT_BUFFER_SIZE = 16 * (noise.MAX_MESSAGE + 2)
#: Output buffers one connection keeps, in flight or spare: the transport holds at most its
#: high-water mark (4 MiB) plus one flush before writers wait, so this covers a bulk stream;
#: beyond it a flush falls back to a fresh copy per slice.
MAX_OUT_BUFFERS = 8

StreamCallback = Callable[[YamuxStream], None]
ClosedCallback = Callable[["Connection"], None]

_DataReceived = yamux.DataReceived
_HEADER_SIZE = yamux.HEADER_SIZE
_SendWindowUpdated = yamux.SendWindowUpdated


class _OutBuffers:
    """Output buffers the TCP transport sends from, each reused once the socket took it all.

    A transport keeps a reference to what it could not send at once (uvloop sends from the
    caller's memory), so a buffer is only safe to overwrite when every byte written up to its
    end has left: the transport sends in order, so that is when the bytes written in total
    minus what the transport still holds reaches the buffer's end mark. (Bytes left out of
    that total, as send_now() leaves its own, only make the test stricter: the mark then
    comes later than the buffer's real end, never earlier.)
    """

    __slots__ = ("_busy", "_spare")

    def __init__(self) -> None:
        self._spare: list[bytearray] = []
        # (buffer, total bytes written once it was written), oldest first (a short list:
        # at most MAX_OUT_BUFFERS).
        self._busy: list[tuple[bytearray, int]] = []

    def take(self, sent: int) -> bytearray | None:
        """A buffer free to fill (``sent``: bytes the socket took so far), or None if the
        connection already has MAX_OUT_BUFFERS in flight."""
        busy = self._busy
        while busy and busy[0][1] <= sent:
            self._spare.append(busy.pop(0)[0])
        if self._spare:
            return self._spare.pop()
        if len(busy) < MAX_OUT_BUFFERS:
            return bytearray(OUT_BUFFER_SIZE)
        return None

    def written(self, buf: bytearray, mark: int) -> None:
        """``buf`` went to the transport; it is free once ``mark`` bytes were sent."""
        self._busy.append((buf, mark))

    def give_back(self, buf: bytearray) -> None:
        """``buf`` was taken but not written."""
        self._spare.append(buf)


class _Sealer:
    """Encrypts one flush into output buffers and writes each buffer once it is full."""

    __slots__ = ("_buf", "_conn", "_fill")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._buf: bytearray | None = None
        self._fill = 0

    def _pool(self) -> _OutBuffers:
        # Made on the first large piece: connections that only ever send small messages
        # never hold one.
        conn = self._conn
        pool = conn._out_buffers
        if pool is None:
            pool = conn._out_buffers = _OutBuffers()
        return pool

    def put(self, plain: bytes | memoryview) -> None:
        conn = self._conn
        need = NoiseTransport.sealed_size(len(plain))
        buf = self._buf
        if buf is not None and self._fill + need > OUT_BUFFER_SIZE:
            self.ship()
            buf = None
        if buf is None:
            # Small output (control frames, requests) never makes a connection hold a
            # megabyte buffer: only a large piece starts one.
            if need < LARGE_PIECE or need > OUT_BUFFER_SIZE:
                buf = None
            else:
                transport = conn._tcp.transport
                unsent = transport.get_write_buffer_size() if transport is not None else 0
                buf = self._pool().take(conn._wire_written - unsent)
            if buf is None:
                # Small, oversized, or every buffer still in flight: a fresh copy.
                sealed = conn._noise.encrypt(plain)
                conn._tcp.write(sealed)
                conn._wire_written += len(sealed)
                return
            self._buf = buf
            self._fill = 0
        self._fill += conn._noise.encrypt_into(plain, buf, self._fill)

    def ship(self) -> None:
        """Write the buffer being filled (if any)."""
        buf = self._buf
        if buf is None:
            return
        self._buf = None
        fill = self._fill
        if not fill:
            self._pool().give_back(buf)
            return
        conn = self._conn
        conn._tcp.write(memoryview(buf)[:fill])
        conn._wire_written += fill
        self._pool().written(buf, conn._wire_written)


class Connection(UpgradedProtocol):
    """One upgraded connection to a peer (and, once started, its TCP transport's protocol)."""

    # Slots: a node holds thousands of idle connections, and a __dict__ per object costs more
    # than the slots themselves.
    __slots__ = (
        "_close_waiters",
        "_closed",
        "_flush_handle",
        "_idle_since",
        "_leftover",
        "_loop",
        "_n_inbound",
        "_n_outbound",
        "_noise",
        "_on_closed",
        "_out_buffers",
        "_outbound",
        "_queued",
        "_remote_peer",
        "_session",
        "_started",
        "_streams",
        "_target",
        "_timer",
        "_view",
        "_wire_written",
        "bytes_received",
        "bytes_sent",
        "error",
        "max_inbound_streams",
        "max_outbound_streams",
        "on_rtt",
        "on_stream",
        "opened_at",
        "remote_public_key",
    )

    def __init__(
        self,
        tcp: TcpConnection,
        noise: NoiseTransport,
        session: yamux.YamuxSession,
        *,
        remote_peer: PeerId,
        remote_public_key: PublicKey | None,
        outbound: bool,
        max_inbound_streams: int = 256,
        max_outbound_streams: int = 1024,
        leftover_plaintext: bytes = b"",
        leftover_ciphertext: bytes = b"",
    ) -> None:
        super().__init__(tcp)
        self._loop = asyncio.get_running_loop()
        # The loop's read buffer (shared by the host's connections) and, while Noise holds
        # part of a frame, where the next read goes instead: the rest of that frame.
        self._view = tcp.read_buffer
        self._target: memoryview | None = None
        self._noise = noise
        self._session = session
        self._remote_peer = remote_peer
        self.remote_public_key = remote_public_key
        self._outbound = outbound
        self.max_inbound_streams = max_inbound_streams
        self.max_outbound_streams = max_outbound_streams
        self._streams: dict[int, YamuxStream] = {}
        self._n_inbound = 0
        self._n_outbound = 0
        self._flush_handle: asyncio.Handle | None = None
        self._queued = 0
        # Bytes handed to the TCP transport so far (but for send_now()'s), and the reusable
        # output buffers whose bytes the transport may still be sending (made on the first
        # large flush).
        self._wire_written = 0
        self._out_buffers: _OutBuffers | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._close_waiters: list[asyncio.Future[None]] = []
        self.error: PeerstackError | None = None
        self.opened_at = self._loop.time()
        self._idle_since: float | None = self.opened_at
        self.bytes_received = 0
        self.bytes_sent = 0
        self.on_stream: StreamCallback | None = None
        self.on_rtt: Callable[[float], None] | None = None
        self._on_closed: list[ClosedCallback] = []
        self._leftover = (leftover_plaintext, leftover_ciphertext)
        self._started = False

    def start(self) -> None:
        """Begin driving the session: take over the TCP read callback, start keepalive.

        Set ``on_stream`` first: inbound streams may already be waiting.
        """
        if self._started:
            return
        self._started = True
        leftover_plaintext, leftover_ciphertext = self._leftover
        self._leftover = (b"", b"")
        pending = self._tcp.hand_over(self, self._connection_lost)
        # What arrived with the handshake (a listener typically finds the dialler's first
        # stream here: SYN, multistream proposal, request) is handled before the first flush
        # is scheduled: the handlers it starts are then queued on the loop ahead of that
        # flush, so the RTT probe, the stream's ACK and the handler's first answer leave in
        # one write instead of the probe and ACK going out alone just before the answer.
        if leftover_plaintext:
            self._plaintext_received(leftover_plaintext)
        if leftover_ciphertext or pending:
            self._feed_reads(leftover_ciphertext + pending)
        if self._closed:
            return
        # Starts the keepalive clock; with rtt_interval on, this sends the first RTT probe
        # (window auto-tuning needs the RTT to grow past 256 KiB). Stamped after the leftover
        # is handled, so the probe's send time is as close to its real departure as it can be.
        self._session.tick(self._loop.time())
        self._schedule_flush()
        self._arm_timer()

    # -- properties --------------------------------------------------------------------------

    @property
    def remote_peer(self) -> PeerId:
        return self._remote_peer

    @property
    def remote_addr(self) -> Multiaddr | None:
        return self._tcp.remote_addr

    @property
    def local_addr(self) -> Multiaddr | None:
        return self._tcp.local_addr

    @property
    def remote_ip(self) -> str | None:
        return self._tcp.remote_ip

    @property
    def outbound(self) -> bool:
        return self._outbound

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    @property
    def idle_since(self) -> float | None:
        return self._idle_since if not self._streams else None

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def can_open_streams(self) -> bool:
        s = self._session
        return not (self._closed or s.goaway_received or s.goaway_sent or s.is_closed)

    @property
    def rtt(self) -> float | None:
        return self._session.rtt

    @property
    def write_paused(self) -> bool:
        return self._tcp._write_paused  # same package; a property hop less per write

    @property
    def write_buffer_size(self) -> int:
        """Encrypted bytes waiting in the TCP transport (bounded by its high-water mark)."""
        transport = self._tcp.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    @property
    def session(self) -> yamux.YamuxSession:
        return self._session

    def streams(self) -> list[YamuxStream]:
        return list(self._streams.values())

    def stats(self) -> dict[str, object]:
        return {
            "peer": str(self._remote_peer),
            "remote_addr": str(self.remote_addr),
            "outbound": self._outbound,
            "streams": len(self._streams),
            "inbound_streams": self._n_inbound,
            "outbound_streams": self._n_outbound,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "write_buffer": self.write_buffer_size,
            "rtt": self._session.rtt,
            "age": self._loop.time() - self.opened_at,
            "closed": self._closed,
            "error": repr(self.error) if self.error else None,
        }

    def add_closed_callback(self, callback: ClosedCallback) -> None:
        if self._closed:
            self._loop.call_soon(callback, self)
        else:
            self._on_closed.append(callback)

    # -- streams -----------------------------------------------------------------------------

    def open_stream(self) -> YamuxStream:
        """Open an outbound stream (the SYN goes out this loop turn; no round trip waited)."""
        if self._closed:
            raise ConnectionClosed(f"connection to {self._remote_peer} is closed")
        if self._n_outbound >= self.max_outbound_streams:
            raise ResourceLimitError(
                f"{self._n_outbound} outbound streams open to {self._remote_peer}"
            )
        sid = self._session.open_stream()
        stream = YamuxStream(self, sid, outbound=True)
        self._streams[sid] = stream
        self._n_outbound += 1
        self._schedule_flush()
        return stream

    def send_now(self, stream_id: int, data: bytes) -> bool:
        """Frame, seal and write a small message at once, or return False having taken nothing.

        For the request/response pattern: no call_soon hop, no extra loop turn. It goes out
        only when nothing is queued (a SYN, other streams' data, a burst keep coalescing into
        one encrypted write per turn, see send()), the socket keeps up, and the whole of
        ``data`` (1 to DIRECT_WRITE_LIMIT bytes) fits the stream's window; otherwise the
        caller uses send(), which queues or raises as usual.
        """
        transport = self._tcp.transport
        if self._closed or transport is None or transport.get_write_buffer_size():
            return False
        if transport.is_closing():
            return False
        frame = self._session.frame_data_now(stream_id, data)  # b"" if anything is queued
        if not frame:
            return False
        transport.write(self._noise.seal(frame))
        # Not counted in _wire_written: this write found the transport empty, so every
        # output buffer is free already, and leaving it out only makes buffers written
        # after it wait for it too (see _OutBuffers).
        self.bytes_sent += len(data)
        return True

    def send(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queue ``data`` on a stream as far as its send window allows; returns bytes taken.

        The bytes leave at the end of this loop turn (at once past FLUSH_THRESHOLD), encrypted
        together with whatever else was queued meanwhile.
        """
        if self._closed:
            raise self.error_for_streams()
        n = self._session.send_data(stream_id, data)
        if n:
            self.bytes_sent += n
            self._queued += n
            if self._queued >= FLUSH_THRESHOLD:
                self._flush()
            elif self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush)
        return n

    def consumed(self, stream_id: int, n: int) -> None:
        if self._closed or not n:
            return
        self._session.consumed(stream_id, n, self._loop.time())
        self._schedule_flush()

    def close_stream(self, stream: YamuxStream) -> None:
        if self._closed:
            return
        self._session.close_stream(stream.stream_id)
        self._schedule_flush()
        if stream._eof:
            self._forget(stream)

    def reset_stream(self, stream: YamuxStream) -> None:
        if self._closed:
            return
        self._session.reset_stream(stream.stream_id)
        self._schedule_flush()
        self._forget(stream)

    def _forget(self, stream: YamuxStream) -> None:
        if self._streams.pop(stream.stream_id, None) is None:
            return
        if stream.outbound:
            self._n_outbound -= 1
        else:
            self._n_inbound -= 1
        if not self._streams:
            self._idle_since = self._loop.time()
            # No stream left, so no bulk transfer for now: give back the buffers.
            self._release_buffers()

    async def wait_writable(self) -> None:
        """Wait while the TCP transport's buffer is over its high-water mark."""
        try:
            await self._tcp.drain()
        except ConnectionClosed:
            raise self.error_for_streams() from None

    def error_for_streams(self) -> StreamConnectionClosed:
        """The error a stream of this closed connection raises (its text made when read)."""
        error = self.error
        if error is None:
            err = StreamConnectionClosed.later("connection to {} closed", self._remote_peer)
        else:
            err = StreamConnectionClosed.later(
                "connection to {} closed: {}", self._remote_peer, error
            )
        err.__cause__ = error
        return err

    # -- the read path -----------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the loop reads next: the rest of a frame Noise holds, else the shared buffer."""
        target = self._target
        return target if target is not None else self._view

    def buffer_updated(self, nbytes: int) -> None:
        """The loop read ``nbytes`` into what get_buffer() gave: runs once per read."""
        if self._target is not None:
            self._target = None
            self._direct_received(nbytes)
            return
        if self._closed:
            return
        noise = self._noise
        try:
            # Noise copies what it keeps (a partial frame) and decrypts into fresh bytes,
            # so the shared buffer is free for the next read of any connection.
            plain = noise.decrypt(self._view, nbytes)
        except PeerError as exc:
            self._fail(exc)
            return
        if noise.pending:
            # A frame cut by the end of the read: its rest is read straight into place.
            self._target = noise.recv_buffer()
        if not plain:
            return
        # Fast path: one small Data frame (a request, an answer, a ping): no events, nothing
        # owed to the peer, the payload straight to its stream (inline: this runs per
        # message). Anything else, the middle of a bulk frame included, goes to _deliver().
        sid = self._session.receive_fast(plain, self._loop.time())
        if sid > 0:
            self.bytes_received += len(plain)
            stream = self._streams.get(sid)
            if stream is not None:
                stream._feed(plain[_HEADER_SIZE:])
            return
        self._deliver(plain, sid)

    def _feed_reads(self, data: bytes) -> None:
        """Handle ``data`` as if the loop had read it (bytes that came with the handshake).

        Copied into get_buffer() piece by piece, as a read would land, so it takes exactly
        the per-read path (and a frame cut at its end has its rest read into place).
        """
        pos = 0
        while pos < len(data) and not self._closed:
            buf = self.get_buffer(-1)
            n = min(len(buf), len(data) - pos)
            buf[:n] = data[pos : pos + n]
            pos += n
            self.buffer_updated(n)

    def _direct_received(self, nbytes: int) -> None:
        """The loop read ``nbytes`` into the frame Noise holds (the view get_buffer() gave)."""
        if self._closed:
            return
        noise = self._noise
        try:
            plain = noise.recv_done(nbytes)
        except PeerError as exc:
            self._fail(exc)
            return
        if not plain:
            self._target = noise.recv_buffer()
            return
        self._deliver(plain, self._session.receive_fast(plain, self._loop.time()))

    def _deliver(self, plain: bytes, sid: int) -> None:
        """Hand on ``plain`` once receive_fast() said ``sid`` about it (0: not taken)."""
        if not sid:
            self._plaintext_received(plain)
            return
        self.bytes_received += len(plain)
        if sid > 0:
            stream = self._streams.get(sid)
            if stream is not None:
                stream._feed(plain[_HEADER_SIZE:])
        else:
            # The middle of a large Data frame: all of it is payload.
            stream = self._streams.get(-sid)
            if stream is not None:
                stream._feed(plain)

    def _plaintext_received(self, plain: bytes) -> None:
        self.bytes_received += len(plain)
        session = self._session
        now = self._loop.time()
        try:
            events = session.receive_data(plain, now)
        except PeerError as exc:
            self._fail(exc)
            return
        streams = self._streams
        for ev in events:
            t = type(ev)
            if t is _DataReceived:
                assert isinstance(ev, yamux.DataReceived)
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream._feed(ev.data)
            elif t is _SendWindowUpdated:
                assert isinstance(ev, yamux.SendWindowUpdated)
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream._wake_writer()
            else:
                self._other_event(ev)
        # Answers the session owes (a pong, say) go out this turn, but behind what this read
        # woke: see _flush_after_wakeups.
        if self._flush_handle is None and not self._closed and session.has_output:
            self._flush_handle = self._loop.call_soon(self._flush_after_wakeups)

    def _other_event(self, ev: yamux.Event) -> None:
        if isinstance(ev, yamux.StreamOpened):
            self._inbound_stream(ev.stream_id)
        elif isinstance(ev, yamux.StreamEnded):
            stream = self._streams.get(ev.stream_id)
            if stream is not None:
                stream._feed_eof()
                if stream.write_closed:
                    self._forget(stream)
        elif isinstance(ev, yamux.StreamReset):
            stream = self._streams.get(ev.stream_id)
            if stream is not None:
                stream._fail(StreamReset(f"stream {ev.stream_id} reset by the peer"))
                self._forget(stream)
        elif isinstance(ev, yamux.PongReceived):
            if self.on_rtt is not None:
                self.on_rtt(ev.rtt)
        elif isinstance(ev, yamux.GoAwayReceived):
            log.debug("%s sent GoAway(%d)", self._remote_peer, ev.code)
            if not self._streams:
                self._loop.call_soon(self._close_now, None)
        elif isinstance(ev, yamux.KeepaliveTimeout):
            self._fail(LazyConnectionClosed.later("keepalive timeout to {}", self._remote_peer))
        # StreamAccepted needs nothing: data may flow before the ACK.

    def _inbound_stream(self, sid: int) -> None:
        if self._n_inbound >= self.max_inbound_streams or self.on_stream is None:
            log.debug("refusing stream %d from %s: limit reached", sid, self._remote_peer)
            self._session.reset_stream(sid)
            return
        self._session.accept(sid)
        stream = YamuxStream(self, sid, outbound=False)
        self._streams[sid] = stream
        self._n_inbound += 1
        self.on_stream(stream)
        handle = self._flush_handle
        if handle is not None:
            # A flush scheduled before this stream arrived (the first RTT probe of a fresh
            # connection, say) would run ahead of the handler just started, and send the
            # probe, this stream's ACK and the handler's answer as separate segments: moved
            # behind the handler's first step, they leave in one write.
            handle.cancel()
            self._flush_handle = self._loop.call_soon(self._flush)

    # -- the write path ----------------------------------------------------------------------

    def _flush_after_wakeups(self) -> None:
        """Schedule the flush again, so it runs after the callbacks queued meanwhile.

        A read that both owes the peer an answer and completes a message wakes a task (say
        identify's reader), which wakes its own waiters in turn: flushing in between made the
        pong its own encrypted write ahead of the waiters, on the path of a dial's identify.
        One hop later, the pong leaves with whatever those waiters send (or closes with).
        """
        self._flush_handle = self._loop.call_soon(self._flush)

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self._closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        self._queued = 0
        parts = self._session.take_output()
        if not parts or self._tcp.is_closed:
            return
        if len(parts) == 1 and len(parts[0]) <= noise.SMALL_FRAME:
            data = self._noise.encrypt(parts[0])
            self._tcp.write(data)
            self._wire_written += len(data)
            return
        total = 0
        for item in parts:
            total += len(item)
            if total >= LARGE_PIECE:
                break
        else:
            # A few small pieces (control frames, requests, answers): one join, one write.
            data = self._noise.encrypt(b"".join(parts))
            self._tcp.write(data)
            self._wire_written += len(data)
            return
        # Small pieces (headers, control frames, small payloads) are joined and encrypted
        # together; a large payload is encrypted where it lies, in slices. Its 12-byte header
        # then travels in the Noise frame of the small pieces before it: 18 bytes more per
        # large payload, one copy less of every payload byte. The ciphertext goes into
        # reusable output buffers (_OutBuffers) that the transport sends from without a
        # copy: a fresh megabyte per slice cost more in page faults than the cipher.
        out = _Sealer(self)
        small: list[bytes | memoryview] = []
        small_size = 0
        for item in parts:
            size = len(item)
            if size < LARGE_PIECE:
                small.append(item)
                small_size += size
                if small_size >= ENCRYPT_SLICE:
                    out.put(b"".join(small))
                    small.clear()
                    small_size = 0
                continue
            if small:
                out.put(small[0] if len(small) == 1 else b"".join(small))
                small.clear()
                small_size = 0
            with memoryview(item) as view:
                for off in range(0, size, ENCRYPT_SLICE):
                    out.put(view[off : off + ENCRYPT_SLICE])
        if small:
            out.put(small[0] if len(small) == 1 else b"".join(small))
        out.ship()

    def _release_buffers(self) -> None:
        """Give back Noise's scratch and the spare output buffers (a quiet connection)."""
        self._noise.release_scratch()
        self._out_buffers = None

    # -- keepalive ---------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            return
        deadline = self._session.next_deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        # At most one scratch allocation per timer period (tens of seconds) for a busy
        # connection; a connection gone quiet with a stream still open sheds it here.
        self._release_buffers()
        events = self._session.tick(self._loop.time())
        for ev in events:
            self._other_event(ev)
        if self._closed:
            return
        self._flush()
        self._arm_timer()

    # -- closing -----------------------------------------------------------------------------

    def _fail(self, error: PeerstackError) -> None:
        """The peer broke the protocol (or stopped answering): flush GoAway and close."""
        if self._closed:
            return
        log.info("closing connection to %s: %s", self._remote_peer, error)
        self.error = error
        if not self._session.is_closed:
            self._session.go_away(yamux.GOAWAY_PROTOCOL_ERROR)
        self._flush_goaway()
        self._close_now(error)

    def _flush_goaway(self) -> None:
        out = self._session.data_to_send()
        if out and not self._tcp.is_closed:
            with contextlib.suppress(ConnectionClosed):
                sealed = self._noise.encrypt(out)
                self._tcp.write(sealed)
                self._wire_written += len(sealed)

    async def close(self) -> None:
        """Send GoAway, close the socket after flushing, reset every stream."""
        if not self._closed:
            self._session.go_away(yamux.GOAWAY_NORMAL)
            self._flush_goaway()
            self._close_now(None)
        await self._tcp.wait_closed()

    async def wait_closed(self) -> None:
        if self._closed:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._close_waiters.append(fut)
        await fut

    def _close_now(self, error: PeerstackError | None) -> None:
        if self._closed:
            return
        self._closed = True
        if error is not None and self.error is None:
            self.error = error
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tcp.close()
        streams = list(self._streams.values())
        self._streams.clear()
        self._n_inbound = self._n_outbound = 0
        for stream in streams:
            # A stream the peer already finished keeps its data for the reader; only its
            # writes fail. Every other stream ends abruptly.
            if stream._eof:
                stream._fail_writes(self.error_for_streams())
            else:
                stream._fail(self.error_for_streams())
        waiters, self._close_waiters = self._close_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        callbacks, self._on_closed = self._on_closed, []
        for cb in callbacks:
            cb(self)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        # A TCP close without GoAway: the streams still open end abruptly. The texts are made
        # when read (see LazyMessage): most closes are never reported.
        if exc is not None:
            err = LazyConnectionClosed.later("connection to {} lost: {}", self._remote_peer, exc)
        else:
            err = LazyConnectionClosed.later("{} closed the connection", self._remote_peer)
        self._close_now(err)

    def __repr__(self) -> str:
        direction = "out" if self._outbound else "in"
        return f"<Connection {direction} {self._remote_peer} {self.remote_addr}>"

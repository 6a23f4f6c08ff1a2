"""Yamux (`/yamux/1.0.0`) as a sans-IO state machine.

Bytes from the peer go in through :meth:`YamuxSession.receive_data`, which returns events;
bytes for the peer come out of :meth:`YamuxSession.data_to_send`. Time is passed in as ``now``
(monotonic seconds); nothing here reads a clock, opens a socket or imports asyncio.

Wire format (hashicorp/yamux ``spec.md``, adopted verbatim by libp2p): every frame starts with a
12-byte big-endian header ``version u8 | type u8 | flags u16 | stream id u32 | length u32``.
Only Data frames carry a payload (``length`` bytes); for WindowUpdate the length is a window
delta, for Ping an opaque value, for GoAway an error code.

Design choices that matter for speed and memory:

* The receive loop parses headers with ``struct.unpack_from`` straight out of a memoryview of the
  caller's buffer. A Data payload is sliced out once (one copy per frame) and delivered as one
  :class:`DataReceived`; when a payload spans the caller's whole ``bytes`` object it is handed on
  without any copy.
* A Data frame that is cut short by the end of the input is *streamed*: the part we have is
  delivered at once and the rest of the payload follows on the next call. So the only thing ever
  buffered across calls is an incomplete 12-byte header (at most 11 bytes), however large the
  frames are; the per-stream data the application has not read yet is bounded by the receive
  windows we grant, which in turn are bounded by ``max_session_buffer`` (beyond the spec-fixed
  initial 256 KiB per stream).
* Window updates go out when half the window has been consumed, not per frame, and the window
  doubles (up to ``max_window``) when updates come faster than twice the measured RTT, like
  go-yamux's auto-tuning; this lets one stream fill a long fat pipe. tick() measures the RTT
  with a ping at the start and every ``rtt_interval``; an RTT below 1 ms (or read as 0 by a
  millisecond clock) counts as 1 ms.
* ``data_to_send(max_bytes)`` / ``data_to_send_into(buffer)`` drain output in Noise-sized
  slices, so no multi-MiB buffer is built per flush.

Limits on what the peer controls: inbound streams not yet accept()ed (256) and streams beyond
``max_streams`` are refused with RST (a peer cannot know how many streams *we* opened, so a full
table is not its fault; go-yamux does the same); stream ids must have the peer's parity and are
never reused; Data must fit the window granted; control frames we owe the peer (pongs, ACKs,
RSTs) are bounded until drained. Any violation raises :class:`MuxerError` and queues
GoAway(protocol error).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from peerstack.errors import (
    ConnectionClosed,
    LimitExceeded,
    MuxerError,
    ResourceLimitError,
    StreamClosed,
    UsageError,
)
from peerstack.errors import StreamReset as StreamResetError

__all__ = [
    "FLAG_ACK",
    "FLAG_FIN",
    "FLAG_RST",
    "FLAG_SYN",
    "GOAWAY_INTERNAL_ERROR",
    "GOAWAY_NORMAL",
    "GOAWAY_PROTOCOL_ERROR",
    "HEADER_SIZE",
    "INITIAL_WINDOW",
    "PROTOCOL_ID",
    "TYPE_DATA",
    "TYPE_GO_AWAY",
    "TYPE_PING",
    "TYPE_WINDOW_UPDATE",
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "KeepaliveTimeout",
    "PongReceived",
    "SendWindowUpdated",
    "SessionClosedError",
    "StreamAccepted",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "YamuxConfig",
    "YamuxLimitExceeded",
    "YamuxSession",
    "encode_header",
]

logger = logging.getLogger(__name__)

PROTOCOL_ID = "/yamux/1.0.0"

HEADER_SIZE = 12
_HEADER = struct.Struct(">BBHII")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
#: The same 12 bytes read as (version, type and flags together; stream id; length): the fast
#: receive path only asks whether the first word is zero (a plain Data frame).
_unpack_words = struct.Struct(">III").unpack_from

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

FLAG_SYN = 1
FLAG_ACK = 2
FLAG_FIN = 4
FLAG_RST = 8

GOAWAY_NORMAL = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

#: The window both sides assume for a new stream before any window update (fixed by the spec).
INITIAL_WINDOW = 256 * 1024

_U32_MAX = 0xFFFFFFFF
#: Stream ids below the highest one the peer used that we still accept a late SYN for. go-yamux
#: allocates an id under a lock but writes the SYN after releasing it, so two SYNs can reach us
#: out of order; we remember the skipped ids of this many slots below the highest id seen.
_REORDER_SLOTS = 256
#: Control frames (pongs, ACKs, refusals) we queue in answer to the peer, in bytes, before the
#: caller drains data_to_send(): a peer flooding pings at a reader that never writes is refused.
_MAX_CONTROL_BACKLOG = 1 << 20
#: Data payloads up to this size are queued together with their header (one small copy)
#: rather than as two items joined later.
_SMALL_DATA = 1024
#: Pings of our own awaiting a pong; older ones are forgotten beyond this.
_MAX_OUTSTANDING_PINGS = 64
#: The RTT auto-tuning assumes when the measured one is shorter. The caller's clock may be coarser
#: than the RTT: uvloop's loop.time() ticks in whole milliseconds and is read once per loop
#: iteration, so a loopback ping often comes back at the same reading and measures 0.0, and
#: "updates faster than twice the RTT" (``elapsed < 0``) could then never hold: that side's
#: windows would stay at 256 KiB for good and its sender would stall on every half window.
_MIN_TUNING_RTT = 0.001


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 12 header bytes of one frame (version 0)."""
    return _pack_header(0, frame_type, flags, stream_id, length)


# --------------------------------------------------------------------------------------------
# Errors


class YamuxLimitExceeded(MuxerError, LimitExceeded):
    """The peer made us queue more than a bound allows (e.g. a flood of pings we must answer)."""


class SessionClosedError(ConnectionClosed, UsageError):
    """The session is going away or has failed: no new streams, no more writes.

    It is both a :class:`ConnectionClosed` (what happened) and a :class:`UsageError` (calling
    this now is the caller's mistake), so either ``except`` catches it.
    """


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, slots=True)
class YamuxConfig:
    """Limits and tuning of one session; the defaults match go-libp2p."""

    #: Receive window we grant each new stream (at least the spec's 256 KiB).
    initial_window: int = INITIAL_WINDOW
    #: Largest receive window auto-tuning grows a stream to.
    max_window: int = 16 * 1024 * 1024
    #: Inbound streams delivered as StreamOpened but not yet accept()ed; more SYNs get a RST.
    max_inbound_unacked: int = 256
    #: Open streams per session, both directions together.
    max_streams: int = 1024
    #: Streams we opened that the peer has not ACKed yet; open_stream() refuses more (the
    #: libp2p spec's "ACK backlog": at most 256). StreamAccepted says when there is room again.
    max_outbound_unacked: int = 256
    #: Largest Data payload we send in one frame (we accept anything within the window).
    max_frame_payload: int = 1 << 20
    #: Send a keepalive ping after this long without hearing from the peer (0 disables).
    keepalive_interval: float = 30.0
    #: A ping unanswered this long raises KeepaliveTimeout (only while keepalive is on).
    keepalive_timeout: float = 30.0
    #: tick() measures the RTT (which window auto-tuning needs) with a ping at the start of the
    #: session and again this long after each measurement, busy or idle (0 disables).
    rtt_interval: float = 30.0
    #: Cap on the sum of receive windows granted across streams (auto-tuning stops there).
    max_session_buffer: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not INITIAL_WINDOW <= self.initial_window <= _U32_MAX:
            raise UsageError(f"initial_window must be in [{INITIAL_WINDOW}, 2**32-1]")
        if not self.initial_window <= self.max_window <= _U32_MAX:
            raise UsageError("max_window must be in [initial_window, 2**32-1]")
        if self.max_frame_payload < 1 or self.max_frame_payload > _U32_MAX:
            raise UsageError("max_frame_payload must be in [1, 2**32-1]")
        if self.max_inbound_unacked < 0 or self.max_streams < 1 or self.max_outbound_unacked < 1:
            raise UsageError("stream limits must be positive")
        if self.keepalive_interval < 0 or self.keepalive_timeout < 0 or self.rtt_interval < 0:
            raise UsageError("keepalive times must not be negative")
        if self.max_session_buffer < 0:
            raise UsageError("max_session_buffer must not be negative")


# --------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream (SYN); we ACK it on the next data_to_send()."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    """The peer ACKed a stream we opened."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Payload of (part of) one Data frame. Call ``consumed()`` once the application read it."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (FIN): no more data will arrive on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset the stream (RST): it is gone both ways."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class SendWindowUpdated:
    """The peer granted more send window on the stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The answer to one of our pings, with the round-trip time it measured."""

    rtt: float


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer will open no more streams (code 0 normal, 1 protocol error, 2 internal)."""

    code: int


@dataclass(frozen=True, slots=True)
class KeepaliveTimeout:
    """A ping of ours went unanswered for ``keepalive_timeout``: the connection is dead."""


Event = (
    StreamOpened
    | StreamAccepted
    | DataReceived
    | StreamEnded
    | StreamReset
    | SendWindowUpdated
    | PongReceived
    | GoAwayReceived
    | KeepaliveTimeout
)


# --------------------------------------------------------------------------------------------
# Per-stream state


class _Stream:
    """Book-keeping of one live stream (removed once both sides FINed, or on RST)."""

    __slots__ = (
        "accepted",
        "acked",
        "buffered",
        "credit",
        "epoch",
        "local_fin",
        "outbound",
        "pending",
        "recv_window",
        "remote_fin",
        "send_window",
        "sid",
    )

    def __init__(self, sid: int, outbound: bool, recv_window: int, now: float) -> None:
        self.sid = sid
        self.outbound = outbound
        # Outbound: has the peer ACKed our SYN? Inbound streams count as acked at once.
        self.acked = not outbound
        # Inbound: has the application accept()ed it (it then leaves the accept backlog)?
        self.accepted = outbound
        self.send_window = INITIAL_WINDOW
        # The receive window we grant, and how much of it the peer may still fill.
        self.recv_window = recv_window
        self.credit = recv_window
        # Bytes delivered but not yet consumed by the application.
        self.buffered = 0
        # Bytes consumed by the application but not yet returned in a window update.
        self.pending = 0
        # When we last sent a window update (auto-tuning compares the interval with the RTT).
        self.epoch = now
        self.local_fin = False
        self.remote_fin = False


# --------------------------------------------------------------------------------------------
# The session


class YamuxSession:
    """One Yamux session over one secured connection.

    The dialler is the client (odd stream ids), the listener the server (even ids).
    ``now`` (optional) starts the keepalive clock; otherwise the first call that passes a time
    does.
    """

    # Slots: one session per connection, thousands of idle connections per node.
    __slots__ = (
        "_backlog",
        "_config",
        "_control_bytes",
        "_failed",
        "_granted",
        "_halted",
        "_hdr",
        "_is_client",
        "_keepalive_failed",
        "_last_pong",
        "_last_recv",
        "_local_goaway",
        "_max_frame",
        "_next_id",
        "_now",
        "_out",
        "_peer_gaps",
        "_peer_highest",
        "_peer_parity",
        "_ping_counter",
        "_pings",
        "_remote_goaway",
        "_rtt",
        "_rx_fin",
        "_rx_left",
        "_rx_stream",
        "_started",
        "_streams",
        "_unacked",
    )

    def __init__(
        self, *, is_client: bool, config: YamuxConfig | None = None, now: float | None = None
    ) -> None:
        self._config = config if config is not None else YamuxConfig()
        self._is_client = is_client
        self._next_id = 1 if is_client else 2
        # Parity of the ids the peer allocates.
        self._peer_parity = 0 if is_client else 1
        # Highest id the peer opened so far; starts one step below its first id (2 or 1).
        self._peer_highest = 0 if is_client else -1
        self._peer_gaps: set[int] | None = None  # made when the peer skips an id
        self._streams: dict[int, _Stream] = {}
        self._backlog = 0
        self._unacked = 0  # our streams whose SYN the peer has not ACKed yet
        self._granted = 0  # sum of recv_window over live streams
        # A list, not a deque: an idle session's empty deque holds a 64-slot block (~600
        # bytes), and the queue is drained whole nearly always (partial drains are rare).
        self._out: list[bytes | memoryview] = []
        self._control_bytes = 0
        # Input parsing state: an incomplete header, or the rest of a Data payload in flight.
        self._hdr = bytearray()
        self._rx_left = 0
        self._rx_stream: _Stream | None = None
        self._rx_fin = 0  # FIN/RST flags applied once the payload in flight is complete
        # Liveness.
        self._now = now if now is not None else 0.0
        self._last_recv = now
        self._started = now  # first time we were told; the first RTT probe is due then
        self._last_pong: float | None = None
        self._pings: dict[int, float] = {}
        self._ping_counter = 0
        self._rtt: float | None = None
        self._keepalive_failed = False
        # Largest payload we frame (config.max_frame_payload, read per write).
        self._max_frame = self._config.max_frame_payload
        # Termination. _halted: _failed or _keepalive_failed, one test on the per-message paths.
        self._halted = False
        self._local_goaway = False
        self._remote_goaway = False
        self._failed: MuxerError | None = None

    # ---- properties ---------------------------------------------------------------------

    @property
    def config(self) -> YamuxConfig:
        return self._config

    @property
    def is_client(self) -> bool:
        return self._is_client

    @property
    def rtt(self) -> float | None:
        """The last round-trip time measured by one of our pings, in seconds."""
        return self._rtt

    @property
    def is_closed(self) -> bool:
        """Both sides sent GoAway, or the session failed (protocol error, keepalive timeout)."""
        return (
            (self._local_goaway and self._remote_goaway)
            or self._failed is not None
            or self._keepalive_failed
        )

    @property
    def goaway_sent(self) -> bool:
        return self._local_goaway

    @property
    def goaway_received(self) -> bool:
        return self._remote_goaway

    @property
    def stream_count(self) -> int:
        """Live streams, both directions."""
        return len(self._streams)

    @property
    def accept_backlog(self) -> int:
        """Inbound streams delivered as StreamOpened and not yet accept()ed."""
        return self._backlog

    @property
    def outbound_unacked(self) -> int:
        """Streams we opened whose SYN the peer has not ACKed yet."""
        return self._unacked

    @property
    def granted_window(self) -> int:
        """Sum of the receive windows granted across live streams."""
        return self._granted

    @property
    def buffered_input(self) -> int:
        """Bytes of an incomplete frame header held between receive_data calls (at most 11)."""
        return len(self._hdr)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def recv_window(self, stream_id: int) -> int:
        """The receive window currently granted on a stream (0 if it is gone)."""
        st = self._streams.get(stream_id)
        return st.recv_window if st is not None else 0

    # ---- output -------------------------------------------------------------------------

    def data_to_send(self, max_bytes: int | None = None) -> bytes:
        """Drain and return the bytes queued for the peer (b"" if none).

        With ``max_bytes``, return at most that many and keep the rest queued: a caller that
        encrypts in slices can drain slice by slice and never build one multi-MiB buffer
        (glibc serves those with fresh mmap()s whose page faults cost more than the copy).
        """
        out = self._out
        if not out:
            return b""
        if max_bytes is None:
            self._control_bytes = 0
            if len(out) == 1:
                chunk = out.pop()
                return chunk if isinstance(chunk, bytes) else bytes(chunk)
            data = b"".join(out)
            out.clear()
            return data
        if max_bytes <= 0:
            raise UsageError("max_bytes must be positive")
        parts: list[bytes | memoryview] = []
        room = max_bytes
        i = 0
        while i < len(out) and room:
            item = out[i]
            size = len(item)
            if size <= room:
                parts.append(item)
                room -= size
                i += 1
            else:
                view = item if isinstance(item, memoryview) else memoryview(item)
                parts.append(view[:room])
                out[i] = view[room:]
                room = 0
        del out[:i]
        if not out:
            self._control_bytes = 0
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    def take_output(self) -> list[bytes | memoryview]:
        """Drain the queued output as the pieces it was queued in (headers, payloads).

        For a caller that encrypts large payloads where they lie instead of joining them
        behind their headers first (data_to_send() copies every byte once).
        """
        out = self._out
        if out:
            self._out = []
            self._control_bytes = 0
        return out

    def data_to_send_into(self, buffer: bytearray | memoryview) -> int:
        """Move queued bytes into ``buffer`` (as many as fit); return how many.

        The allocation-free variant of data_to_send() for a caller with a reusable scratch
        buffer (e.g. one Noise frame of plaintext).
        """
        dest = memoryview(buffer)
        if dest.format != "B" or dest.ndim != 1:
            dest = dest.cast("B")
        out = self._out
        pos = 0
        room = len(dest)
        i = 0
        while i < len(out) and pos < room:
            item = out[i]
            size = len(item)
            if pos + size <= room:
                dest[pos : pos + size] = item
                pos += size
                i += 1
            else:
                take = room - pos
                view = item if isinstance(item, memoryview) else memoryview(item)
                dest[pos:room] = view[:take]
                out[i] = view[take:]
                pos = room
        del out[:i]
        if not out:
            self._control_bytes = 0
        return pos

    @property
    def has_output(self) -> bool:
        """Whether data_to_send() would return anything (O(1))."""
        return bool(self._out)

    @property
    def pending_output(self) -> int:
        """Bytes queued for the peer (O(queued items); for flow decisions, not per byte)."""
        return sum(len(item) for item in self._out)

    def _control(self, frame_type: int, flags: int, stream_id: int, length: int) -> None:
        """Queue a frame we send because of something the peer sent (bounded)."""
        self._out.append(_pack_header(0, frame_type, flags, stream_id, length))
        self._control_bytes += HEADER_SIZE
        if self._control_bytes > _MAX_CONTROL_BACKLOG:
            raise self._fail(
                YamuxLimitExceeded("peer made us queue too many control frames unread"),
            )

    # ---- streams ------------------------------------------------------------------------

    def open_stream(self) -> int:
        """Open an outbound stream and return its id; the SYN goes out on data_to_send()."""
        self._check_open()
        if self._local_goaway or self._remote_goaway:
            raise SessionClosedError("session is going away: no new streams")
        if len(self._streams) >= self._config.max_streams:
            raise ResourceLimitError(f"too many streams ({self._config.max_streams})")
        if self._unacked >= self._config.max_outbound_unacked:
            raise ResourceLimitError(
                f"{self._unacked} opened streams await the peer's ACK; wait for StreamAccepted"
            )
        sid = self._next_id
        if sid > _U32_MAX:
            raise ResourceLimitError("stream ids exhausted on this session")
        self._next_id = sid + 2
        window = self._config.initial_window
        st = _Stream(sid, True, window, self._now)
        self._streams[sid] = st
        self._granted += window
        self._unacked += 1
        self._out.append(
            _pack_header(0, TYPE_WINDOW_UPDATE, FLAG_SYN, sid, window - INITIAL_WINDOW)
        )
        return sid

    def accept(self, stream_id: int) -> None:
        """The application took an inbound stream: it leaves the accept backlog."""
        st = self._streams.get(stream_id)
        if st is not None and not st.accepted:
            st.accepted = True
            self._backlog -= 1

    def send_window(self, stream_id: int) -> int:
        """How many bytes send_data would accept on the stream right now."""
        st = self._streams.get(stream_id)
        if st is None:
            raise StreamResetError(f"stream {stream_id} is reset or gone")
        if st.local_fin:
            return 0
        return st.send_window

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue up to the send window of ``data``; return how many bytes were taken.

        Frames carry at most ``max_frame_payload`` bytes. ``bytes`` input, or a memoryview of
        ``bytes``, is referenced, not copied, until data_to_send(); mutable input is copied
        (the caller may reuse its buffer).
        """
        st = self._streams.get(stream_id)
        if st is None:
            self._check_open()
            raise StreamResetError(f"stream {stream_id} is reset or gone")
        if self._failed is not None or self._keepalive_failed:
            raise SessionClosedError("session failed")
        if st.local_fin:
            raise StreamClosed(f"stream {stream_id}: write side already closed")
        window = st.send_window
        if type(data) is bytes:
            size = len(data)
            if size <= _SMALL_DATA and size <= window:
                # Small message (the request/response case): header and payload as one item,
                # so data_to_send() hands it over without a join.
                if size:
                    self._out.append(_pack_header(0, 0, 0, stream_id, size) + data)
                    st.send_window = window - size
                return size
        else:
            size = len(data) if not isinstance(data, memoryview) else data.nbytes
        n = size if size < window else window
        if n <= 0:
            return 0
        out = self._out
        step = self._config.max_frame_payload
        # Immutable input (bytes, or a view of bytes) is referenced until data_to_send();
        # anything mutable is copied now, since the caller may reuse its buffer.
        if isinstance(data, bytes):
            view = memoryview(data)
            copy = False
        else:
            view = memoryview(data)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            copy = not isinstance(view.obj, bytes)
        if n <= step:
            out.append(_pack_header(0, 0, 0, stream_id, n))
            if n == size and not copy:
                out.append(data if isinstance(data, bytes) else view)
            else:
                out.append(bytes(view[:n]) if copy else view[:n])
        else:
            for off in range(0, n, step):
                end = off + step if off + step < n else n
                out.append(_pack_header(0, 0, 0, stream_id, end - off))
                out.append(bytes(view[off:end]) if copy else view[off:end])
        st.send_window = window - n
        return n

    def frame_data_now(self, stream_id: int, data: bytes) -> bytes:
        """send_data() + data_to_send() in one step for the commonest write, or ``b""``.

        When nothing else is queued and all of ``data`` (non-empty, at most one frame) fits
        the stream's send window, take it and return the framed bytes to write at once.
        Otherwise (including every error case) take nothing and return ``b""``: the caller
        uses send_data(), which queues or raises as usual.
        """
        st = self._streams.get(stream_id)
        # Few tests, cheapest first: this runs for every request, answer and ping.
        if st is None or self._out or self._halted:
            return b""
        size = len(data)
        window = st.send_window
        if not 0 < size <= window or size > self._max_frame or st.local_fin:
            return b""
        st.send_window = window - size
        return _pack_header(0, 0, 0, stream_id, size) + data

    def close_stream(self, stream_id: int) -> None:
        """Half-close: send FIN. No-op if already closed or the stream is gone."""
        st = self._streams.get(stream_id)
        if st is None or st.local_fin:
            return
        st.local_fin = True
        self._out.append(_pack_header(0, TYPE_WINDOW_UPDATE, FLAG_FIN, stream_id, 0))
        if st.remote_fin:
            self._remove(st)

    def reset_stream(self, stream_id: int) -> None:
        """Send RST and forget the stream. No-op if it is already gone."""
        st = self._streams.get(stream_id)
        if st is None:
            return
        self._out.append(_pack_header(0, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))
        self._remove(st)

    def consumed(self, stream_id: int, n: int, now: float) -> None:
        """The application read ``n`` bytes of the stream: return window once half is used.

        Auto-tuning (go-yamux): if the previous update on this stream was less than two RTTs
        ago, the window is the bottleneck, so it doubles, up to ``max_window`` and within what
        ``max_session_buffer`` leaves.
        """
        if n < 0:
            raise UsageError("consumed() takes a byte count >= 0")
        self._now = now
        st = self._streams.get(stream_id)
        if st is None:
            return  # the stream is gone; nothing to return window for
        if n > st.buffered:
            raise UsageError(
                f"stream {stream_id}: consumed {n} bytes but only {st.buffered} were delivered"
            )
        st.buffered -= n
        pending = st.pending + n
        window = st.recv_window
        if pending < (window >> 1) or st.remote_fin:
            st.pending = pending
            return
        rtt = self._rtt
        if rtt is not None and rtt < _MIN_TUNING_RTT:
            rtt = _MIN_TUNING_RTT
        if rtt is not None and now - st.epoch < 2.0 * rtt and window < self._config.max_window:
            target = min(window * 2, self._config.max_window)
            grow = min(target - window, self._config.max_session_buffer - self._granted)
            if grow > 0:
                st.recv_window = window + grow
                self._granted += grow
                pending += grow
        st.epoch = now
        st.pending = 0
        st.credit += pending
        self._out.append(_pack_header(0, TYPE_WINDOW_UPDATE, 0, stream_id, pending))

    def _remove(self, st: _Stream) -> None:
        del self._streams[st.sid]
        if self._rx_stream is st:
            # Reset locally while one of its Data payloads is half received: skip the rest.
            self._rx_stream = None
            self._rx_fin = 0
        self._granted -= st.recv_window
        if not st.accepted:
            self._backlog -= 1
        if not st.acked:
            self._unacked -= 1

    # ---- liveness and termination -------------------------------------------------------

    def ping(self, now: float) -> None:
        """Send a Ping (SYN); the RTT is measured when the ACK with the same value comes back."""
        self._check_open()
        self._now = now
        self._ping_counter = (self._ping_counter + 1) & _U32_MAX
        opaque = self._ping_counter
        pings = self._pings
        if len(pings) >= _MAX_OUTSTANDING_PINGS:
            del pings[next(iter(pings))]
        pings[opaque] = now
        self._out.append(_pack_header(0, TYPE_PING, FLAG_SYN, 0, opaque))

    def tick(self, now: float) -> list[Event]:
        """Run timers: RTT probes, keepalive pings, KeepaliveTimeout for an unanswered ping."""
        self._now = now
        events: list[Event] = []
        if self.is_closed:
            return events
        if self._started is None:
            self._started = now
        if self._last_recv is None:
            self._last_recv = now
        if self._pings:
            deadline = self._ping_deadline()
            if deadline is not None and now >= deadline:
                self._keepalive_failed = True
                self._halted = True
                events.append(KeepaliveTimeout())
        else:
            due = self._ping_due()
            if due is not None and now >= due:
                self.ping(now)
        return events

    def next_deadline(self) -> float | None:
        """When tick() next has work to do, or None if no timer is needed."""
        if self.is_closed:
            return None
        if self._pings:
            return self._ping_deadline()
        return self._ping_due()

    def _ping_deadline(self) -> float | None:
        """When the oldest unanswered ping counts as a keepalive failure."""
        config = self._config
        if config.keepalive_interval <= 0 or config.keepalive_timeout <= 0 or not self._pings:
            return None
        return min(self._pings.values()) + config.keepalive_timeout

    def _ping_due(self) -> float | None:
        """When the next ping is due: keepalive after idle, or an RTT probe."""
        config = self._config
        due: float | None = None
        if config.keepalive_interval > 0 and self._last_recv is not None:
            due = self._last_recv + config.keepalive_interval
        if config.rtt_interval > 0 and self._started is not None:
            last = self._last_pong
            probe = self._started if last is None else last + config.rtt_interval
            due = probe if due is None or probe < due else due
        return due

    def go_away(self, code: int = GOAWAY_NORMAL) -> None:
        """Tell the peer we open and accept no more streams (existing ones carry on)."""
        if not 0 <= code <= _U32_MAX:
            raise UsageError("GoAway code must fit in 32 bits")
        if self._local_goaway or self._failed is not None:
            return
        self._local_goaway = True
        self._out.append(_pack_header(0, TYPE_GO_AWAY, 0, 0, code))

    def _check_open(self) -> None:
        if self._failed is not None or self._keepalive_failed:
            raise SessionClosedError("session failed")

    def _fail(self, error: MuxerError) -> MuxerError:
        """Record a protocol error, queue GoAway(protocol error); return the error to raise."""
        if self._failed is None:
            self._failed = error
            self._halted = True
            if not self._local_goaway:
                self._local_goaway = True
                self._out.append(_pack_header(0, TYPE_GO_AWAY, 0, 0, GOAWAY_PROTOCOL_ERROR))
        return error

    # ---- input --------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Parse every complete frame (and every available payload byte) of ``data``.

        Raises :class:`MuxerError` when the peer broke the protocol; data_to_send() then holds a
        GoAway(protocol error) and the session is finished.
        """
        if self._failed is not None:
            raise MuxerError(f"session already failed: {self._failed}")
        self._now = now
        self._last_recv = now
        if self._started is None:
            self._started = now
        events: list[Event] = []
        mv = data if isinstance(data, memoryview) else memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        end = len(mv)
        if not end:
            return events
        pos = 0
        try:
            if self._rx_left:
                pos = self._payload(mv, 0, end, data, events)
            if self._hdr and pos < end:
                hdr = self._hdr
                need = HEADER_SIZE - len(hdr)
                if end - pos < need:
                    hdr += mv[pos:end]
                    return events
                hdr += mv[pos : pos + need]
                pos += need
                header = _unpack_header(hdr)
                hdr.clear()
                self._frame(header, events)
                if self._rx_left:
                    pos = self._payload(mv, pos, end, data, events)
            streams = self._streams
            append = events.append
            while end - pos >= HEADER_SIZE:
                version, ftype, flags, sid, length = _unpack_header(mv, pos)
                pos += HEADER_SIZE
                # Fast path: a plain Data frame, complete in this buffer, on a live stream.
                if not (version | ftype | flags) and end - pos >= length:
                    st = streams.get(sid)
                    if st is not None and length <= st.credit and not st.remote_fin:
                        if length:
                            st.credit -= length
                            st.buffered += length
                            nxt = pos + length
                            append(DataReceived(sid, bytes(mv[pos:nxt])))
                            pos = nxt
                        continue
                self._frame((version, ftype, flags, sid, length), events)
                if self._rx_left:
                    pos = self._payload(mv, pos, end, data, events)
            if pos < end:
                self._hdr += mv[pos:end]
        except MuxerError as exc:
            raise self._fail(exc) from None
        return events

    def receive_fast(self, data: bytes, now: float) -> int:
        """Fast paths for the two commonest inputs; 0 means "use receive_data()".

        - ``data`` is all payload of the Data frame in flight (the middle of a large frame
          that arrives in Noise-frame pieces): returns ``-stream_id``; the payload is
          ``data`` itself, not copied.
        - ``data`` is exactly one flagless Data frame on a live stream, within its credit
          (a request, an answer, a ping): returns ``stream_id``; the payload is
          ``data[HEADER_SIZE:]``.

        Either way the bytes are accounted for as receive_data() would (credit, buffered),
        without event objects or the general parser. Anything else (a frame ending with FIN
        or RST, several frames, a partial header, an unknown stream, a failed session)
        returns 0 having consumed nothing.
        """
        n = len(data)
        left = self._rx_left
        if left:
            # The middle of a large Data frame (bulk: one call per Noise frame).
            st = self._rx_stream
            if n > left or not n or st is None or (n == left and self._rx_fin):
                return 0
            if self._failed is not None:
                return 0
            self._now = self._last_recv = now
            st.buffered += n
            left -= n
            self._rx_left = left
            if not left:
                self._rx_stream = None
            return -st.sid
        if n <= HEADER_SIZE or self._hdr or self._halted:
            return 0
        # One whole flagless Data frame (checked cheapest first: this runs per message).
        head: int
        sid: int
        length: int
        head, sid, length = _unpack_words(data)
        if head or length != n - HEADER_SIZE:
            return 0
        st = self._streams.get(sid)
        if st is None or length > st.credit or st.remote_fin:
            return 0
        self._now = self._last_recv = now
        if self._started is None:
            self._started = now
        st.credit -= length
        st.buffered += length
        return sid

    def _payload(
        self,
        mv: memoryview,
        pos: int,
        end: int,
        data: bytes | bytearray | memoryview,
        events: list[Event],
    ) -> int:
        """Deliver as much of the Data payload in flight as ``mv[pos:end]`` holds."""
        left = self._rx_left
        take = end - pos if end - pos < left else left
        st = self._rx_stream
        if st is not None and take:
            # When the whole input is payload, hand it on without a copy.
            chunk = data if take == end and isinstance(data, bytes) else bytes(mv[pos : pos + take])
            st.buffered += take
            events.append(DataReceived(st.sid, chunk))
        left -= take
        self._rx_left = left
        if not left:
            self._rx_stream = None
            if st is not None and self._rx_fin:
                flags = self._rx_fin
                self._rx_fin = 0
                self._end_flags(st, flags, events)
        return pos + take

    def _frame(self, header: tuple[int, int, int, int, int], events: list[Event]) -> None:
        """Handle one header (general path). A Data payload is left in ``_rx_left``."""
        version, ftype, flags, sid, length = header
        if version != 0:
            raise MuxerError(f"unsupported yamux version {version}")
        if ftype in (TYPE_DATA, TYPE_WINDOW_UPDATE):
            self._stream_frame(ftype, flags, sid, length, events)
        elif ftype == TYPE_PING:
            if flags & FLAG_SYN:
                self._control(TYPE_PING, FLAG_ACK, 0, length)
            elif flags & FLAG_ACK:
                sent = self._pings.pop(length, None)
                if sent is not None:
                    rtt = max(self._now - sent, 0.0)
                    self._rtt = rtt
                    self._last_pong = self._now
                    events.append(PongReceived(rtt))
        elif ftype == TYPE_GO_AWAY:
            if not self._remote_goaway:
                self._remote_goaway = True
                events.append(GoAwayReceived(length))
        else:
            raise MuxerError(f"unknown yamux frame type {ftype}")

    def _stream_frame(
        self, ftype: int, flags: int, sid: int, length: int, events: list[Event]
    ) -> None:
        if sid == 0:
            raise MuxerError("Data or WindowUpdate frame on stream 0")
        st = self._streams.get(sid)
        if flags & FLAG_SYN:
            st = self._inbound_syn(sid, events)
        elif st is None:
            self._check_known(sid)
        elif flags & FLAG_ACK and not st.acked:
            st.acked = True
            self._unacked -= 1
            events.append(StreamAccepted(sid))
        if ftype == TYPE_DATA:
            if st is not None:
                if length > st.credit:
                    raise MuxerError(
                        f"stream {sid}: {length} bytes overrun the receive window ({st.credit})"
                    )
                if st.remote_fin and length:
                    raise MuxerError(f"stream {sid}: data after FIN")
                st.credit -= length
            if length:
                # Streamed by _payload(); FIN and RST apply once the payload is complete
                # (for a stream we do not know, the payload is skipped).
                self._rx_left = length
                self._rx_stream = st
                self._rx_fin = flags & (FLAG_FIN | FLAG_RST) if st is not None else 0
                return
        elif st is not None and length and not st.local_fin:
            window = st.send_window + length
            st.send_window = window if window < _U32_MAX else _U32_MAX
            if not flags & FLAG_SYN:
                events.append(SendWindowUpdated(sid))
        if st is not None and flags & (FLAG_FIN | FLAG_RST):
            self._end_flags(st, flags, events)

    def _end_flags(self, st: _Stream, flags: int, events: list[Event]) -> None:
        """Apply FIN / RST from the peer to a stream."""
        if flags & FLAG_RST:
            self._remove(st)
            events.append(StreamReset(st.sid))
            return
        if flags & FLAG_FIN and not st.remote_fin:
            st.remote_fin = True
            events.append(StreamEnded(st.sid))
            if st.local_fin:
                self._remove(st)

    def _check_known(self, sid: int) -> None:
        """A frame without SYN on a stream we do not hold: fine if the stream existed once.

        Late frames for streams we reset or closed are normal and ignored; a frame for a
        stream id nobody ever opened is a protocol violation.
        """
        if sid & 1 == self._peer_parity:
            if sid > self._peer_highest:
                raise MuxerError(f"frame for stream {sid} that the peer never opened")
        elif sid >= self._next_id:
            raise MuxerError(f"frame for stream {sid} that we never opened")

    def _inbound_syn(self, sid: int, events: list[Event]) -> _Stream | None:
        """The peer opens stream ``sid``: create it, or refuse it with RST (returns None)."""
        if sid & 1 != self._peer_parity:
            raise MuxerError(f"SYN with stream id {sid} of our parity")
        if sid in self._streams:
            raise MuxerError(f"SYN on existing stream {sid}")
        highest = self._peer_highest
        if sid > highest:
            low = max(highest + 2, sid - 2 * _REORDER_SLOTS)
            if low < sid:
                gaps = self._peer_gaps
                if gaps is None:
                    gaps = self._peer_gaps = set()
                gaps.update(range(low, sid, 2))
                if len(gaps) > _REORDER_SLOTS:
                    floor = sid - 2 * _REORDER_SLOTS
                    self._peer_gaps = {g for g in gaps if g >= floor}
            self._peer_highest = sid
        elif self._peer_gaps and sid in self._peer_gaps:
            self._peer_gaps.discard(sid)
        else:
            raise MuxerError(f"SYN reuses stream id {sid}")
        config = self._config
        if (
            self._local_goaway
            or self._backlog >= config.max_inbound_unacked
            or len(self._streams) >= config.max_streams
        ):
            logger.debug("refusing inbound yamux stream %d", sid)
            self._control(TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0)
            return None
        window = config.initial_window
        st = _Stream(sid, False, window, self._now)
        self._streams[sid] = st
        self._granted += window
        self._backlog += 1
        self._control(TYPE_WINDOW_UPDATE, FLAG_ACK, sid, window - INITIAL_WINDOW)
        events.append(StreamOpened(sid))
        return st

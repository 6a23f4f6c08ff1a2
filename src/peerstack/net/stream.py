"""``YamuxStream``: one Yamux stream as an awaitable ``peerstack.host.interface.Stream``.

The connection feeds it (``_feed``, ``_feed_eof``, ``_fail``, ``_wake_writer``) from the
event loop's read callback; the application reads and writes through coroutines. Two
synchronous extras serve protocols that answer small messages as they come (ping's echo):
``set_data_handler`` (data taken in the read callback itself, handed back to read() the moment
the handler declines) and ``try_write`` (send now or take nothing).

Memory: the read buffer holds at most the receive window the session granted (the session
refuses a peer that overruns it), and ``consumed()`` returns window only as the application
reads, so a slow reader slows the sender instead of growing our buffer. Writes wait for send
window and for the TCP transport to drain; they never fail on a timer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Self

from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import (
    ConnectionClosed,
    LimitExceeded,
    StreamClosed,
    StreamReset,
    UsageError,
)

if TYPE_CHECKING:
    from peerstack.net.connection import Connection

#: Largest piece handed to the session per send_data call: bounds what one writer can queue
#: past the transport's high-water mark before it waits.
WRITE_CHUNK = 1024 * 1024


#: Bytes read before they are reported to the session (see _report_consumed); must stay
#: well below half of the smallest receive window (256 KiB).
CONSUMED_BATCH = 16 * 1024

#: read() with no size joins buffered pieces up to this many bytes; beyond, one piece per call.
JOIN_LIMIT = 64 * 1024

#: Largest write tried as one frame sealed and written at once (Connection.send_now); larger
#: ones, and any write that finds output queued, are queued and flushed once per loop turn.
DIRECT_WRITE_LIMIT = 16 * 1024


class LazyMessage:
    """Mixin for an exception whose text is made when it is read, not when it is made.

    A connection's errors name the peer, and a PeerId met for the first time makes its
    base58 text on first use (~40 us). Most of these errors are never shown (the streams'
    error when a connection closes, the TCP close after a GoAway), so ``later()`` keeps the
    template and its values and ``str()``/``repr()`` format them.
    """

    _template = ""
    _values: tuple[object, ...] = ()

    @classmethod
    def later(cls, template: str, *values: object) -> Self:
        """The error with the text ``template.format(*values)``, made on first read."""
        err = cls()
        err._template = template
        err._values = values
        return err

    def __str__(self) -> str:
        if not self._template:
            return super().__str__()
        return self._template.format(*self._values)

    def __repr__(self) -> str:
        if not self._template:
            return super().__repr__()
        return f"{type(self).__name__}({str(self)!r})"


class StreamConnectionClosed(LazyMessage, StreamReset, ConnectionClosed):
    """The connection under the stream closed or failed; the stream is gone both ways."""


class LazyConnectionClosed(LazyMessage, ConnectionClosed):
    """ConnectionClosed whose text (naming the peer) is made when read."""


class YamuxStream:
    """A bidirectional byte stream multiplexed on a ``Connection``."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_direct",
        "_eof",
        "_error",
        "_id",
        "_local_closed",
        "_on_data",
        "_pos",
        "_preconsumed",
        "_protocol",
        "_read_waiter",
        "_size",
        "_turn_waiters",
        "_unreported",
        "_write_error",
        "_write_waiter",
        "_writing",
        "outbound",
    )

    def __init__(self, conn: Connection, stream_id: int, outbound: bool) -> None:
        self._conn = conn
        self._id = stream_id
        self.outbound = outbound
        self._protocol = ""
        self._chunks: deque[bytes] = deque()
        self._pos = 0  # offset of unread data in _chunks[0]
        self._size = 0  # unread bytes in _chunks (from _pos on)
        self._preconsumed = 0  # bytes pushed back by unread(): window already returned
        self._unreported = 0  # bytes read, not yet reported to the session
        self._eof = False
        self._error: StreamReset | None = None
        self._write_error: StreamReset | None = None
        self._local_closed = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._writing = False
        # True while a small write may go straight out: no error, write side open, no other
        # write in progress (one test instead of four on every write; see _update_direct).
        self._direct = True
        self._turn_waiters: deque[asyncio.Future[None]] | None = None
        # set_data_handler(): data taken synchronously as it arrives (None: buffered for read).
        self._on_data: Callable[[bytes], bool] | None = None

    # -- the Stream interface --------------------------------------------------------------

    @property
    def protocol(self) -> str:
        return self._protocol

    @protocol.setter
    def protocol(self, value: str) -> None:
        self._protocol = value

    @property
    def stream_id(self) -> int:
        return self._id

    @property
    def remote_peer(self) -> PeerId:
        return self._conn.remote_peer

    @property
    def remote_addr(self) -> Multiaddr | None:
        return self._conn.remote_addr

    @property
    def connection(self) -> Connection:
        return self._conn

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read by the application."""
        return self._size

    @property
    def is_reset(self) -> bool:
        return self._error is not None

    @property
    def eof_received(self) -> bool:
        """The peer closed its write side (data may still be buffered)."""
        return self._eof

    @property
    def at_eof(self) -> bool:
        """The peer closed its side and every byte was read."""
        return self._eof and not self._size

    @property
    def write_closed(self) -> bool:
        return self._local_closed

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes; ``-1``: what is buffered (large amounts one piece per call)."""
        if not self._size:
            if n == 0:
                return b""
            # Inline wait (no coroutine per read): a future, or None at the end of stream. The
            # loop goes on after a wake-up by EOF, a reset, or a spurious one. The usual
            # first wait makes its future here; _new_read_waiter() sorts out the rest.
            if self._read_waiter is None and self._error is None and not self._eof:
                fut: asyncio.Future[None] | None = self._conn._loop.create_future()
                self._read_waiter = fut
            else:
                fut = self._new_read_waiter()
            while True:
                if fut is None:
                    return b""
                try:
                    await fut
                finally:
                    self._read_waiter = None
                if self._size:
                    break
                fut = self._new_read_waiter()
        elif n == 0:
            return b""
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        first = chunks[0]
        if len(chunks) == 1 and not self._pos and (n < 0 or n >= len(first)):
            # The commonest case (one message or one frame buffered, all of it wanted).
            chunks.popleft()
            self._size = 0
            data = first
        else:
            data = self._take_some(n)
        total = self._unreported + len(data)
        if total < CONSUMED_BATCH and not self._preconsumed:
            self._unreported = total  # _report_consumed()'s usual case, inline
        else:
            self._report_consumed(len(data))
        return data

    async def readexactly(self, n: int) -> bytes:
        if n <= 0:
            if n < 0:
                raise UsageError("readexactly() needs n >= 0")
            return b""
        if not self._size:
            # Wait here rather than in read(): a small message usually arrives whole. (The
            # future is made inline in the usual case; _new_read_waiter() sorts out the rest.)
            if self._read_waiter is None and self._error is None and not self._eof:
                fut: asyncio.Future[None] | None = self._conn._loop.create_future()
                self._read_waiter = fut
            else:
                fut = self._new_read_waiter()
            if fut is not None:
                try:
                    await fut
                finally:
                    self._read_waiter = None
        if n <= self._size and self._error is None:
            chunks = self._chunks
            first = chunks[0]
            if len(first) == n and not self._pos:
                # The commonest case: exactly one whole message buffered.
                chunks.popleft()
                self._size -= n
                data = first
            else:
                data = self._take(n)
            total = self._unreported + n
            if total < CONSUMED_BATCH and not self._preconsumed:
                self._unreported = total  # _report_consumed()'s usual case, inline
            else:
                self._report_consumed(n)
            return data
        parts: list[bytes] = []
        got = 0
        while got < n:
            # Read piecewise so window goes back while we wait (n may exceed the window).
            piece = await self.read(n - got)
            if not piece:
                raise StreamClosed(f"stream ended after {got} of {n} bytes")
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    async def read_until_eof(self, limit: int) -> bytes:
        """Everything up to the peer's close; ``LimitExceeded`` once more than ``limit``."""
        parts: list[bytes] = []
        got = 0
        while True:
            piece = await self.read()
            if not piece:
                return b"".join(parts)
            got += len(piece)
            if got > limit:
                self.reset()
                raise LimitExceeded(f"stream sent more than {limit} bytes")
            parts.append(piece)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        # A small message on a writable stream with nothing queued goes out at once, framed,
        # sealed and written in one step (Connection.send_now); this runs per request, answer
        # and ping, so it is one test and one call.
        if (
            self._direct
            and type(data) is bytes
            and len(data) <= DIRECT_WRITE_LIMIT
            and self._conn.send_now(self._id, data)
        ):
            return
        await self._write_general(data)

    async def _write_general(self, data: bytes | bytearray | memoryview) -> None:
        # The per-message paths below read the connection's fields directly (same package):
        # a property costs as much as a small function call in Python 3.11.
        conn = self._conn
        if self._error is None and self._write_error is None and not self._local_closed:
            if self._writing:
                # Another task's write on this stream is parked on the window or the socket:
                # wait for it so that the two messages are not interleaved.
                await self._wait_turn()
            elif type(data) is bytes and len(data) <= WRITE_CHUNK and not conn._tcp._write_paused:
                # No other writer, no backpressure: the whole message usually fits the window
                # and is queued at once, without the chunking coroutine.
                sent = conn.send(self._id, data)
                if sent == len(data):
                    return
                data = memoryview(data)[sent:]
        else:
            error = self._error or self._write_error
            if error is not None:
                raise error
            raise StreamClosed("write after close()")
        self._writing = True
        self._direct = False
        try:
            await self._write(data)
        finally:
            self._writing = False
            self._update_direct()
            self._pass_turn()

    def _update_direct(self) -> None:
        """Recompute ``_direct`` after a change of the write side's state."""
        self._direct = (
            self._error is None
            and self._write_error is None
            and not self._local_closed
            and not self._writing
        )

    async def _wait_turn(self) -> None:
        if self._turn_waiters is None:
            self._turn_waiters = deque()
        while self._writing and self._error is None and self._write_error is None:
            fut = asyncio.get_running_loop().create_future()
            self._turn_waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._pass_turn()  # we were given the turn: hand it on
                raise
        error = self._error or self._write_error
        if error is not None:
            raise error
        if self._local_closed:
            raise StreamClosed("write after close()")

    def _pass_turn(self) -> None:
        """Wake the next writer still waiting (skipping those cancelled meanwhile)."""
        waiters = self._turn_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        conn = self._conn
        # Whole ``bytes`` up to WRITE_CHUNK go to the session as they are (referenced, not
        # copied); anything else goes in memoryview slices, of which the session copies only
        # what the window accepts (slicing bytes would copy the whole rest every time).
        whole = data if isinstance(data, bytes) and len(data) <= WRITE_CHUNK else None
        view: memoryview | None = None
        total = len(data) if whole is not None else memoryview(data).nbytes
        off = 0
        while off < total:
            if conn.write_paused:
                await conn.wait_writable()
                error = self._error or self._write_error
                if error is not None:
                    raise error
            piece: bytes | memoryview
            if off == 0 and whole is not None:
                piece = whole
            else:
                if view is None:
                    view = memoryview(data).cast("B")
                piece = view[off : off + WRITE_CHUNK]
            sent = conn.send(self._id, piece)
            off += sent
            if off < total and not sent:
                await self._wait_window()

    async def drain(self) -> None:
        """Wait until the connection's transport buffer is below its low-water mark."""
        if self._conn.write_paused:
            await self._conn.wait_writable()

    async def close(self) -> None:
        """Half-close: send FIN. Reading goes on until the peer closes too."""
        if self._local_closed or self._error is not None:
            return
        self._local_closed = True
        self._direct = False
        self._conn.close_stream(self)
        # A write of another task parked on the window must not outlive the stream: woken,
        # it finds the write side closed and raises StreamClosed.
        self._wake_writer()

    def reset(self) -> None:
        if self._error is not None:
            return
        self._fail(StreamReset("stream reset locally"))
        self._conn.reset_stream(self)

    def try_write(self, data: bytes) -> bool:
        """Send a small message now if it can go without waiting, else take nothing.

        True when ``data`` (1 to DIRECT_WRITE_LIMIT bytes) was framed, sealed and written at
        once; False when anything stands in the way (another write in progress, output
        queued, the window or the socket full, the stream closed or reset): then nothing was
        taken and the caller uses write(). Never raises for the stream's state; for code
        that must not wait, such as a data handler (see set_data_handler).
        """
        return (
            self._direct
            and type(data) is bytes
            and 0 < len(data) <= DIRECT_WRITE_LIMIT
            and self._conn.send_now(self._id, data)
        )

    def set_data_handler(self, handler: Callable[[bytes], bool] | None) -> None:
        """Have data that arrives while nothing is buffered go to ``handler`` at once.

        ``handler(data)`` runs inside the connection's receive callback, for the payload of
        each Data frame, in order. Returning True means it took the bytes (the window goes
        back as for a read); returning False removes the handler and the bytes are buffered
        for read() as usual, so a handler can hand over to a reading task at any point, and
        data never overtakes data already buffered. It must not block or raise. EOF and
        resets still reach a task waiting in read(), which is how such a task learns that
        the stream ended. ``None`` removes the handler.

        For a protocol that answers small messages as they come (ping's echo): no task
        wake-up, no future, no read per message.
        """
        self._on_data = handler

    def unread(self, data: bytes) -> None:
        """Push ``data`` back in front of the buffer (bytes read past a negotiation)."""
        if not data:
            return
        if self._pos:
            self._chunks[0] = self._chunks[0][self._pos :]
            self._pos = 0
        self._chunks.appendleft(data)
        self._size += len(data)
        self._preconsumed += len(data)

    def __repr__(self) -> str:
        return f"<YamuxStream {self._id} {self._protocol or '?'} to {self._conn.remote_peer}>"

    # -- internals -------------------------------------------------------------------------

    def _take_some(self, n: int) -> bytes:
        """What read(n) returns: up to ``n`` bytes (all if ``n < 0``), at least one.

        When more than JOIN_LIMIT bytes are wanted and buffered in several pieces, the first
        piece is handed over as it is (a read may return less than asked): joining would copy
        every byte into a fresh buffer of up to a megabyte, and fresh buffers that size are
        what makes the C allocator return memory to the kernel and fault it back in.
        """
        chunks = self._chunks
        size = self._size
        want = size if n < 0 or n > size else n
        if want > JOIN_LIMIT and len(chunks) > 1:
            pos = self._pos
            first = chunks[0]
            avail = len(first) - pos
            if avail <= want:
                chunks.popleft()
                data = first[pos:] if pos else first
                self._pos = 0
            else:
                data = first[pos : pos + want]
                self._pos = pos + want
            self._size = size - len(data)
            return data
        return self._take(want)

    def _take(self, n: int) -> bytes:
        """Exactly ``n`` bytes (all buffered if ``n < 0`` or more than buffered)."""
        chunks = self._chunks
        pos = self._pos
        if n < 0 or n >= self._size:
            if len(chunks) == 1:
                first = chunks.popleft()
                data = first[pos:] if pos else first
            else:
                if pos:
                    chunks[0] = chunks[0][pos:]
                data = b"".join(chunks)
                chunks.clear()
            self._pos = 0
            self._size = 0
            return data
        parts: list[bytes] = []
        need = n
        while need:
            first = chunks[0]
            avail = len(first) - pos
            if avail <= need:
                parts.append(first[pos:] if pos else first)
                chunks.popleft()
                need -= avail
                pos = 0
            else:
                parts.append(first[pos : pos + need])
                pos += need
                need = 0
        self._pos = pos
        self._size -= n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _report_consumed(self, n: int) -> None:
        # Small reads are reported in batches: one session call per CONSUMED_BATCH bytes
        # rather than per read. The session returns window only at half the window anyway,
        # and the batch is far below that, so a sender never waits on bytes held back here.
        total = self._unreported + n
        if total < CONSUMED_BATCH and not self._preconsumed:
            self._unreported = total
            return
        pre = self._preconsumed
        if pre:
            if pre >= n:
                self._preconsumed = pre - n
                return
            self._preconsumed = 0
            total -= pre
            if total < CONSUMED_BATCH:
                self._unreported = total
                return
        self._unreported = 0
        self._conn.consumed(self._id, total)

    def _new_read_waiter(self) -> asyncio.Future[None] | None:
        """The future a reader awaits for data; None at the end of the stream.

        Raises the stream's error, or UsageError when another task already waits to read.
        The caller awaits it and then clears ``_read_waiter``.
        """
        if self._read_waiter is not None:
            raise UsageError("another task is already waiting to read this stream")
        if self._error is not None:
            raise self._error
        if self._eof:
            return None
        fut: asyncio.Future[None] = self._conn._loop.create_future()
        self._read_waiter = fut
        return fut

    async def _wait_window(self) -> None:
        error = self._error or self._write_error
        if error is not None:
            raise error
        fut = self._conn._loop.create_future()
        self._write_waiter = fut
        try:
            await fut
        finally:
            self._write_waiter = None
        error = self._error or self._write_error
        if error is not None:
            raise error

    # Called by the connection --------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        handler = self._on_data
        if handler is not None and not self._size and self._error is None:
            # set_data_handler(): offered first while nothing is buffered.
            if handler(data):
                total = self._unreported + len(data)
                if total < CONSUMED_BATCH and not self._preconsumed:
                    self._unreported = total  # _report_consumed()'s usual case, inline
                else:
                    self._report_consumed(len(data))
                return
            self._on_data = None
        self._chunks.append(data)
        self._size += len(data)
        fut = self._read_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _feed_eof(self) -> None:
        self._eof = True
        fut = self._read_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _wake_writer(self) -> None:
        fut = self._write_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _fail_writes(self, error: StreamReset) -> None:
        """The connection ended after the peer finished sending: what it sent stays readable,
        but writes (including those waiting for window) fail."""
        if self._write_error is not None or self._error is not None:
            return
        self._write_error = error
        self._direct = False
        fut = self._write_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)
        while self._turn_waiters:
            waiter = self._turn_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: StreamReset) -> None:
        """The stream is gone (reset by either side, or the connection ended)."""
        if self._error is not None:
            return
        self._error = error
        self._direct = False
        self._chunks.clear()
        self._size = 0
        self._pos = 0
        for fut in (self._read_waiter, self._write_waiter):
            if fut is not None and not fut.done():
                fut.set_result(None)
        while self._turn_waiters:
            fut = self._turn_waiters.popleft()
            if not fut.done():
                fut.set_result(None)

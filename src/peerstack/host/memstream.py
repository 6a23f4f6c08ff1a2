"""An in-memory pair of ``Stream`` ends with the semantics of a real (Yamux) stream.

For testing protocol handlers and services without sockets: ``stream_pair()`` gives two
connected ends. What each end may rely on is what ``peerstack.net.stream.YamuxStream`` does:

* ``read(n)`` returns up to ``n`` bytes (``-1``: all that is buffered), at least one unless
  ``n == 0``; ``b""`` once the peer closed its write side and everything was read.
* ``readexactly(n)`` raises ``StreamClosed`` if the stream ends first.
* ``close()`` is a half-close: the peer reads what was sent, then ``b""``; we may go on reading.
  Writing after it raises ``StreamClosed``; it is idempotent.
* ``reset()`` aborts both ways: buffered data is dropped and every read or write on either end
  (waiting ones included) raises ``StreamReset``.
* Each direction holds at most ``capacity`` unread bytes: a writer waits while the peer's
  buffer is full, as it waits for window on a real stream, so nothing grows without bound.
  Concurrent writes on one end are queued whole, never interleaved.
"""

from __future__ import annotations

import asyncio

from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import StreamClosed, StreamReset, UsageError

#: Unread bytes one direction holds by default (a Yamux stream's initial window).
DEFAULT_CAPACITY = 256 * 1024


class MemStream:
    """One end of an in-memory stream; made in pairs by ``stream_pair()``."""

    __slots__ = (
        "_buf",
        "_capacity",
        "_eof",
        "_error",
        "_peer",
        "_protocol",
        "_read_waiter",
        "_remote_addr",
        "_remote_peer",
        "_room_waiter",
        "_write_closed",
        "_write_lock",
    )

    def __init__(
        self, protocol: str, remote_peer: PeerId, remote_addr: Multiaddr | None, capacity: int
    ) -> None:
        if capacity < 1:
            raise UsageError("a stream's capacity must be at least one byte")
        self._protocol = protocol
        self._remote_peer = remote_peer
        self._remote_addr = remote_addr
        self._capacity = capacity
        self._buf = bytearray()  # received from the peer, not read yet
        self._eof = False  # the peer closed its write side
        self._error: StreamReset | None = None
        self._write_closed = False
        self._peer: MemStream | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        # The peer's writer, waiting for room in our buffer (writes are serialised, so one).
        self._room_waiter: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()

    @property
    def protocol(self) -> str:
        return self._protocol

    @property
    def remote_peer(self) -> PeerId:
        return self._remote_peer

    @property
    def remote_addr(self) -> Multiaddr | None:
        return self._remote_addr

    @property
    def is_reset(self) -> bool:
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return len(self._buf)

    async def read(self, n: int = -1) -> bytes:
        while not self._buf:
            if self._error is not None:
                raise self._error
            if self._eof or n == 0:
                return b""
            if self._read_waiter is not None:
                raise UsageError("another task is already waiting to read this stream")
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        if self._error is not None:
            raise self._error
        take = len(self._buf) if n < 0 else min(n, len(self._buf))
        data = bytes(self._buf[:take])
        del self._buf[:take]
        if take:
            _wake(self._room_waiter)
        return data

    async def readexactly(self, n: int) -> bytes:
        if n < 0:
            raise UsageError("readexactly() needs n >= 0")
        parts: list[bytes] = []
        got = 0
        while got < n:
            piece = await self.read(n - got)
            if not piece:
                raise StreamClosed(f"stream ended after {got} of {n} bytes")
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._check_writable()
        async with self._write_lock:
            while True:
                self._check_writable()
                if not view:
                    return
                peer = self._peer
                assert peer is not None  # set by stream_pair() before either end is handed out
                room = peer._capacity - len(peer._buf)
                if room > 0:
                    peer._buf += view[:room]
                    view = view[room:]
                    _wake(peer._read_waiter)
                    continue
                peer._room_waiter = asyncio.get_running_loop().create_future()
                try:
                    await peer._room_waiter
                finally:
                    peer._room_waiter = None

    async def close(self) -> None:
        if self._write_closed or self._error is not None:
            return
        self._write_closed = True
        peer = self._peer
        if peer is not None:
            peer._eof = True
            _wake(peer._read_waiter)
            _wake(peer._room_waiter)  # our own parked write: it now raises StreamClosed

    def reset(self) -> None:
        if self._error is not None:
            return
        self._fail(StreamReset("stream reset locally"))
        if self._peer is not None:
            self._peer._fail(StreamReset("stream reset by the peer"))

    def __repr__(self) -> str:
        return f"<MemStream {self._protocol or '?'} to {self._remote_peer}>"

    def _check_writable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._write_closed:
            raise StreamClosed("write after close()")

    def _fail(self, error: StreamReset) -> None:
        if self._error is not None:
            return
        self._error = error
        self._buf.clear()
        _wake(self._read_waiter)
        _wake(self._room_waiter)  # the peer's writer waiting for room here
        if self._peer is not None:
            _wake(self._peer._room_waiter)  # our writer waiting for room at the peer


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def stream_pair(
    protocol: str,
    dialer: PeerId,
    listener: PeerId,
    *,
    dialer_addr: Multiaddr | None = None,
    listener_addr: Multiaddr | None = None,
    capacity: int = DEFAULT_CAPACITY,
) -> tuple[MemStream, MemStream]:
    """Two connected ends: ``(dialer's end, listener's end)``.

    Each end's ``remote_peer``/``remote_addr`` name the other side; ``capacity`` bounds the
    unread bytes of each direction.
    """
    ours = MemStream(protocol, listener, listener_addr, capacity)
    theirs = MemStream(protocol, dialer, dialer_addr, capacity)
    ours._peer = theirs
    theirs._peer = ours
    return ours, theirs

"""perf ``/perf/1.0.0``: the throughput yardstick shared by libp2p implementations.

The client sends a big-endian u64 N (how many bytes it wants back), uploads its bytes and closes
its write side; the server reads everything up to the end, then sends N bytes and closes.

Both sides move data in 1 MiB writes from one preallocated zero buffer, so the cost per byte is
the transport's, not ours. The bytes each side only counts (the server's upload, the client's
download) are dropped as they arrive, through the stream's data handler where it has one (no
read and no task wake-up per frame), else by reading; neither side holds more than one read's
worth of data.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from peerstack.core.peer_id import PeerId
from peerstack.errors import LimitExceeded, PeerError, PeerstackError, UsageError
from peerstack.host.interface import Host, Stream
from peerstack.protocols.ping import IdleWatchdog, InlineStream

log = logging.getLogger(__name__)

PERF = "/perf/1.0.0"
CHUNK = 1024 * 1024
MAX_U64 = (1 << 64) - 1
# The most a peer may ask our server to send on one stream (it costs us time and bandwidth, not
# memory). 64 GiB is far beyond any test yet stops a peer from asking for 2**64 bytes.
DEFAULT_MAX_SERVE = 64 * 1024**3
# A peer silent for this long in the middle of a transfer has its stream reset.
IDLE_TIMEOUT = 60.0

_ZERO_CHUNK = bytes(CHUNK)
_ZEROS = memoryview(_ZERO_CHUNK)


class PerfShortRead(PeerError):
    """The peer sent back a different number of bytes than we asked for."""


@dataclass(frozen=True, slots=True)
class PerfResult:
    """One perf run. Upload time runs until the server's first answer byte (it only answers
    after reading everything), download time from there to the end of the stream."""

    upload_bytes: int
    download_bytes: int
    upload_seconds: float
    download_seconds: float

    @property
    def upload_bps(self) -> float:
        """Upload throughput in bytes per second."""
        return self.upload_bytes / self.upload_seconds if self.upload_seconds > 0 else 0.0

    @property
    def download_bps(self) -> float:
        """Download throughput in bytes per second."""
        return self.download_bytes / self.download_seconds if self.download_seconds > 0 else 0.0


async def _send_zeros(stream: Stream, n: int) -> None:
    while n > 0:
        step = min(n, CHUNK)
        # Whole chunks as the bytes object itself: the stream queues it without slicing.
        await stream.write(_ZERO_CHUNK if step == CHUNK else _ZEROS[:step])
        n -= step


class _Sink:
    """Counts and drops what a stream delivers: as its data handler where the stream has one,
    and through read() for the rest (what arrived before, or what the handler declined)."""

    __slots__ = ("first", "limit", "on_data", "received")

    def __init__(self, on_data: Callable[[], None], limit: int) -> None:
        self.received = 0
        self.limit = limit  # more than this is declined, so that the reader sees it
        self.first: float | None = None  # when the first byte arrived
        self.on_data = on_data

    def __call__(self, data: bytes) -> bool:
        received = self.received + len(data)
        if received > self.limit:
            return False
        if self.first is None:
            self.first = time.perf_counter()
        self.received = received
        self.on_data()
        return True

    async def drain(self, stream: Stream) -> int:
        """Everything up to the end of the stream (past ``limit``: stops there); the count."""
        inline = stream if isinstance(stream, InlineStream) else None
        if inline is not None:
            inline.set_data_handler(self)
        try:
            while chunk := await stream.read(CHUNK):
                if self.first is None:
                    self.first = time.perf_counter()
                self.received += len(chunk)
                self.on_data()
                if self.received > self.limit:
                    break
        finally:
            if inline is not None:
                inline.set_data_handler(None)
        return self.received


def _nothing() -> None:
    pass


async def handle_perf(
    stream: Stream, max_serve: int = DEFAULT_MAX_SERVE, idle_timeout: float = IDLE_TIMEOUT
) -> None:
    """Serve one perf request on ``stream``."""
    try:
        async with asyncio.timeout(idle_timeout):
            header = await stream.readexactly(8)
        (wanted,) = struct.unpack(">Q", header)
        if wanted > max_serve:
            raise LimitExceeded(f"perf peer asked for {wanted} bytes (limit {max_serve})")
        # One lazy timer for the whole upload, not a timer set and cancelled per read (a
        # read is one Noise frame, ~64 KiB, in a bulk transfer).
        async with asyncio.timeout(None) as scope:
            watchdog = IdleWatchdog(scope, idle_timeout)
            try:
                await _Sink(watchdog.touch, MAX_U64).drain(stream)
            finally:
                watchdog.cancel()
        await _send_zeros(stream, wanted)
        await stream.close()
    except (PeerstackError, OSError, TimeoutError) as exc:
        log.debug("perf stream from %s ended: %s", stream.remote_peer, exc)
        stream.reset()


async def perf_stream(stream: Stream, upload: int, download: int) -> PerfResult:
    """Run one perf exchange on an open ``/perf/1.0.0`` stream."""
    if not 0 <= upload <= MAX_U64 or not 0 <= download <= MAX_U64:
        raise UsageError("perf sizes must fit in an unsigned 64-bit integer")
    start = time.perf_counter()
    await stream.write(struct.pack(">Q", download))
    await _send_zeros(stream, upload)
    await stream.close()
    sink = _Sink(_nothing, download)
    received = await sink.drain(stream)
    if received > download:
        raise PerfShortRead(f"peer sent more than the {download} bytes asked for")
    end = time.perf_counter()
    if received != download:
        raise PerfShortRead(f"peer sent {received} bytes, {download} asked for")
    first = sink.first if sink.first is not None else end
    return PerfResult(upload, received, first - start, end - first)


async def perf(host: Host, peer: PeerId, upload: int, download: int) -> PerfResult:
    """Upload ``upload`` bytes to ``peer`` and download ``download`` bytes from it."""
    stream = await host.new_stream(peer, [PERF])
    try:
        return await perf_stream(stream, upload, download)
    except BaseException:
        stream.reset()
        raise


def register(host: Host) -> Sequence[str]:
    """Serve perf on ``host``; return the protocol ids registered."""
    host.set_stream_handler(PERF, handle_perf)
    return (PERF,)

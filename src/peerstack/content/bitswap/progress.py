"""Progress of a transfer: bytes and blocks done, peers involved, the current rate."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from peerstack.core.peer_id import PeerId


@dataclass(frozen=True, slots=True)
class Progress:
    bytes_done: int  # block bytes fetched or found on disk
    blocks_done: int
    blocks_known: int  # blocks discovered so far (grows as the DAG is walked)
    bytes_fetched: int  # of bytes_done, how many came over the network
    peers: int  # peers that delivered at least one block
    rate: float  # bytes per second over the last few seconds
    elapsed: float
    done: bool = False


ProgressCallback = Callable[[Progress], None]


@dataclass(slots=True)
class ProgressTracker:
    """Accumulates counters and computes a sliding-window rate; time is passed in."""

    started: float
    window: float = 3.0
    bytes_done: int = 0
    blocks_done: int = 0
    blocks_known: int = 0
    bytes_fetched: int = 0
    peers: set[PeerId] = field(default_factory=set)
    _samples: deque[tuple[float, int]] = field(default_factory=deque)
    _window_bytes: int = 0  # the sum of ``_samples``' sizes, kept as they come and go

    def discovered(self, n: int = 1) -> None:
        self.blocks_known += n

    def block(self, size: int, now: float, peer: PeerId | None = None) -> None:
        self.blocks_done += 1
        self.bytes_done += size
        if peer is not None:
            self.bytes_fetched += size
            self.peers.add(peer)
            self._samples.append((now, size))
            self._window_bytes += size

    def rate(self, now: float) -> float:
        # O(1) per call: a snapshot is taken for every block of a transfer
        while self._samples and now - self._samples[0][0] > self.window:
            self._window_bytes -= self._samples.popleft()[1]
        if not self._samples:
            return 0.0
        span = max(now - self._samples[0][0], min(self.window, max(now - self.started, 1e-3)))
        return self._window_bytes / span

    def snapshot(self, now: float, done: bool = False) -> Progress:
        return Progress(
            self.bytes_done,
            self.blocks_done,
            self.blocks_known,
            self.bytes_fetched,
            len(self.peers),
            self.rate(now),
            now - self.started,
            done,
        )

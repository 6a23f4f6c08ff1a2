"""Per-peer token buckets for inbound requests, in bounded memory.

A peer may send ``burst`` requests at once and ``rate`` per second after that; beyond, its
request is refused with ``LimitExceeded`` (and the stream reset) instead of costing us CPU.
The table of buckets is bounded: past ``max_peers`` the least recently active peer is
forgotten, which only ever resets that peer to a full bucket.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from peerstack.errors import LimitExceeded, UsageError


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_peers: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_peers < 1:
            raise UsageError("rate > 0, burst >= 1 and max_peers >= 1 are required")
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, peer: Hashable, now: float) -> bool:
        tokens, last = self._buckets.pop(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[peer] = (tokens, now)
        if len(self._buckets) > self.max_peers:
            self._buckets.popitem(last=False)
        return allowed

    def check(self, peer: Hashable, now: float) -> None:
        """Take one token for ``peer`` or raise ``LimitExceeded``."""
        if not self.allow(peer, now):
            raise LimitExceeded("too many requests from this peer")

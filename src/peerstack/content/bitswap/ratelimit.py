"""Upload rate limits for the Bitswap server: token buckets in bytes per second (sans-IO).

Time comes in as ``now``; the caller sleeps for the delay it is given. A bucket may go into
debt: a 1 MiB block is sent whole even when the burst is smaller, and the next sender waits
until the debt is paid. So concurrent senders are served in the order they reserved, and the
long-run rate is exact whatever the block sizes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from peerstack.core.peer_id import PeerId
from peerstack.errors import UsageError

# Peers whose per-peer bucket is remembered; the least recently used is forgotten first (a
# forgotten peer starts again with a full burst, which is harmless).
MAX_PEER_BUCKETS = 4096


@dataclass(slots=True)
class TokenBucket:
    rate: float  # bytes per second
    burst: float  # bytes that may go out at once after a quiet period
    tokens: float
    stamp: float  # when ``tokens`` was last brought up to date

    @classmethod
    def new(cls, rate: float, burst: float | None, now: float) -> TokenBucket:
        if not rate > 0:
            raise UsageError(f"upload rate must be > 0 bytes/s, not {rate}")
        size = rate / 4 if burst is None else burst  # a quarter second of traffic by default
        if not size > 0:
            raise UsageError(f"burst must be > 0 bytes, not {size}")
        return cls(rate, size, size, now)

    def reserve(self, nbytes: int, now: float) -> float:
        """Take ``nbytes``; the seconds to wait before sending them (0: at once)."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        self.tokens -= nbytes
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class UploadLimiter:
    """A node-wide bucket and, optionally, one bucket per peer; either may be off (None)."""

    def __init__(
        self,
        rate: float | None,
        per_peer_rate: float | None = None,
        burst: float | None = None,
        now: float = 0.0,
    ) -> None:
        self.node = None if rate is None else TokenBucket.new(rate, burst, now)
        self.per_peer_rate = per_peer_rate
        self.burst = burst
        if per_peer_rate is not None:
            TokenBucket.new(per_peer_rate, burst, now)  # check the figures now, not per peer
        self._peers: OrderedDict[PeerId, TokenBucket] = OrderedDict()
        self.bytes = 0  # reserved so far: what the limit has paced

    @property
    def active(self) -> bool:
        return self.node is not None or self.per_peer_rate is not None

    def reserve(self, peer: PeerId, nbytes: int, now: float) -> float:
        """Take ``nbytes`` to ``peer`` from every bucket; the longest wait among them."""
        self.bytes += nbytes
        wait = 0.0 if self.node is None else self.node.reserve(nbytes, now)
        if self.per_peer_rate is not None:
            bucket = self._peers.get(peer)
            if bucket is None:
                bucket = TokenBucket.new(self.per_peer_rate, self.burst, now)
                self._peers[peer] = bucket
                if len(self._peers) > MAX_PEER_BUCKETS:
                    self._peers.popitem(last=False)
            else:
                self._peers.move_to_end(peer)
            wait = max(wait, bucket.reserve(nbytes, now))
        return wait

    def forget(self, peer: PeerId) -> None:
        self._peers.pop(peer, None)

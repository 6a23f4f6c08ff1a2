"""Per-peer token buckets: bursts, steady rate, bounded table."""

from __future__ import annotations

import pytest

from peerstack.dht.ratelimit import RateLimiter
from peerstack.errors import LimitExceeded, UsageError


def test_burst_then_rate() -> None:
    rl = RateLimiter(rate=2.0, burst=3.0)
    assert [rl.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b", 0.0)  # peers are independent
    assert not rl.allow("a", 0.25)
    assert rl.allow("a", 0.5)  # one token back after 1/rate seconds
    with pytest.raises(LimitExceeded):
        rl.check("a", 0.5)
    assert rl.allow("a", 100.0)


def test_table_is_bounded() -> None:
    rl = RateLimiter(rate=1.0, burst=1.0, max_peers=10)
    for i in range(1000):
        rl.allow(i, 0.0)
    assert len(rl) == 10


def test_bad_parameters() -> None:
    with pytest.raises(UsageError):
        RateLimiter(rate=0.0, burst=1.0)

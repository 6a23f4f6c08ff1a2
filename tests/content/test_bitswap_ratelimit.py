"""The upload token buckets, on a virtual clock (no sleeping, no timing)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.content.bitswap.ratelimit import MAX_PEER_BUCKETS, TokenBucket, UploadLimiter
from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.errors import UsageError

MIB = 1024 * 1024


def peer() -> PeerId:
    return PeerId.from_public_key(PrivateKey.generate().public_key)


def test_burst_then_paced_at_the_rate() -> None:
    b = TokenBucket.new(rate=MIB, burst=MIB, now=0.0)
    assert b.reserve(MIB, 0.0) == 0.0  # the burst goes at once
    assert b.reserve(MIB, 0.0) == pytest.approx(1.0)  # then one second per MiB
    assert b.reserve(MIB, 0.0) == pytest.approx(2.0)  # queued behind the first
    assert b.reserve(MIB, 3.0) == pytest.approx(0.0)  # debt paid by t=3


def test_idle_time_refills_only_up_to_the_burst() -> None:
    b = TokenBucket.new(rate=1000.0, burst=500.0, now=0.0)
    assert b.reserve(500, 100.0) == 0.0
    assert b.reserve(500, 100.0) == pytest.approx(0.5)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2 * MIB), st.floats(0.0, 2.0)), min_size=1, max_size=50))
def test_long_run_rate_never_exceeded(sends: list[tuple[int, float]]) -> None:
    """Whatever the sizes and arrival times, what has been sent by time t (each send at
    ``arrival + wait``) is at most burst + rate * t."""
    rate, burst = 100_000.0, 50_000.0
    b = TokenBucket.new(rate, burst, 0.0)
    now = 0.0
    sent_at: list[tuple[float, int]] = []
    for size, step in sends:
        now += step
        sent_at.append((now + b.reserve(size, now), size))
    total = 0
    for t, size in sorted(sent_at):
        total += size
        # a single send larger than the burst may go out whole once the bucket is full
        assert total <= burst + rate * t + max(s for _, s in sent_at) + 1e-6


def test_node_and_peer_limits_together() -> None:
    lim = UploadLimiter(rate=4 * MIB, per_peer_rate=MIB, burst=MIB)
    a, b = peer(), peer()
    assert lim.reserve(a, MIB, 0.0) == 0.0
    # b's own bucket is full; the node's is spent: 1 MiB at 4 MiB/s
    assert lim.reserve(b, MIB, 0.0) == pytest.approx(0.25)
    # the node owes 2 MiB (0.5 s), a's bucket 1 MiB at 1 MiB/s (1 s): the longer wait wins
    assert lim.reserve(a, MIB, 0.0) == pytest.approx(1.0)


def test_off_by_default_and_bad_figures_refused() -> None:
    lim = UploadLimiter(None)
    assert not lim.active
    assert lim.reserve(peer(), 10 * MIB, 0.0) == 0.0
    with pytest.raises(UsageError):
        UploadLimiter(0.0)
    with pytest.raises(UsageError):
        UploadLimiter(None, per_peer_rate=-1.0)


def test_per_peer_buckets_are_bounded() -> None:
    lim = UploadLimiter(None, per_peer_rate=1000.0)
    first = peer()
    lim.reserve(first, 1, 0.0)
    others = [PeerId.from_public_key(PrivateKey.generate().public_key) for _ in range(50)]
    for p in others:
        lim.reserve(p, 1, 0.0)
    assert len(lim._peers) == 51
    assert len(lim._peers) <= MAX_PEER_BUCKETS
    lim.forget(first)
    assert first not in lim._peers

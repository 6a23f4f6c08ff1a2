"""The sans-IO lookup: termination, dead peers, liars, bounds; driven with plain calls."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core.peer_id import PeerId
from peerstack.dht.distance import kad_key
from peerstack.dht.query import PeerState, Query
from peerstack.dht.routing_table import RoutingTable
from peerstack.errors import UsageError


def pid(rng: random.Random) -> PeerId:
    return PeerId(b"\x12\x20" + rng.randbytes(32))


class Net:
    """A static network of full routing tables, answered synchronously."""

    def __init__(self, n: int, seed: int, k: int = 20) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.peers = [pid(rng) for _ in range(n)]
        self.tables = {}
        for p in self.peers:
            rt = RoutingTable(p, k=k, max_per_group_bucket=None, max_per_group_table=None)
            for other in rng.sample(self.peers, min(n, 60)):
                rt.add(other, 0.0)
            self.tables[p] = rt
        self.dead: set[PeerId] = set()
        self.liars: set[PeerId] = set()
        self.k = k

    def run(self, src: PeerId, target: int, **kw: object) -> Query:
        q = Query(target, self.tables[src].closest(target), k=self.k, exclude=(src,), **kw)  # type: ignore[arg-type]
        now = 0.0
        for _ in range(10_000):
            reqs = q.requests(now)
            if q.finished:
                return q
            if not reqs and q.in_flight == 0:
                return q
            now += 1.0
            waiting = [p for p in self.peers if q.state_of(p) is PeerState.WAITING]
            for p in waiting:
                if p in self.dead:
                    continue  # never answers: left to the timeout
                if p in self.liars:
                    fake = [pid(self.rng) for _ in range(20)]
                    q.on_response(p, fake, now)
                else:
                    q.on_response(p, self.tables[p].closest(target, self.k, exclude=src), now)
            q.check_timeouts(now)
        raise AssertionError("query did not finish")


def true_closest(net: Net, target: int, n: int, alive_only: bool = True) -> list[PeerId]:
    peers = [p for p in net.peers if not alive_only or p not in net.dead]
    return sorted(peers, key=lambda p: kad_key(p.to_bytes()) ^ target)[:n]


def test_finds_the_closest_peers() -> None:
    net = Net(300, 1)
    target = kad_key(b"some key")
    src = net.peers[0]
    q = net.run(src, target)
    assert q.finished
    want = [p for p in true_closest(net, target, 4) if p != src][:3]
    assert q.closest(3) == want
    assert q.stats.requests >= 3
    assert q.stats.failures == 0


def test_dead_peers_cost_a_timeout_not_a_stall() -> None:
    net = Net(300, 2)
    target = kad_key(b"x")
    net.dead = set(net.rng.sample(net.peers[1:], 90))
    q = net.run(net.peers[0], target, timeout=3.0)
    assert q.finished
    assert q.stats.timeouts > 0
    assert q.stats.timeouts == q.stats.failures
    assert all(p not in net.dead for p in q.closest())
    want = [p for p in true_closest(net, target, 4) if p != net.peers[0]][:3]
    assert q.closest(3) == want


def test_liars_with_made_up_peers_do_not_stop_the_query() -> None:
    net = Net(300, 3)
    target = kad_key(b"y")
    net.liars = set(net.rng.sample(net.peers[1:], 30))
    q = net.run(net.peers[0], target, timeout=2.0, max_peers=200)
    assert q.finished
    honest = [p for p in q.closest(3) if p not in net.liars]
    want = [p for p in true_closest(net, target, 5) if p != net.peers[0] and p not in net.liars]
    # The made-up peers never answer (they do not exist): honest peers give the result.
    assert honest[:2] == want[:2]
    assert len(q._order) <= 200


def test_stop_and_no_seeds() -> None:
    q = Query(1, [], k=20)
    assert q.finished
    assert q.requests(0.0) == []
    rng = random.Random(4)
    q2 = Query(5, [pid(rng) for _ in range(5)])
    assert len(q2.requests(0.0)) == 5
    q2.stop()
    assert q2.finished
    assert q2.requests(1.0) == []


def test_alpha_bounds_requests_in_flight() -> None:
    rng = random.Random(5)
    seeds = [pid(rng) for _ in range(30)]
    q = Query(7, seeds, alpha=4)
    first = q.requests(0.0)
    assert len(first) == 4
    assert q.requests(0.0) == []
    q.on_failure(first[0], 1.0)
    assert len(q.requests(1.0)) == 1
    # Late or unsolicited answers are ignored.
    q.on_response(first[0], [pid(rng)], 2.0)
    q.on_response(pid(rng), [pid(rng)], 2.0)
    assert q.in_flight == 4


def test_timeouts_and_deadline() -> None:
    rng = random.Random(6)
    q = Query(9, [pid(rng) for _ in range(3)], timeout=5.0)
    sent = q.requests(10.0)
    assert q.next_deadline() == 15.0
    assert q.check_timeouts(14.9) == []
    assert sorted(q.check_timeouts(15.0)) == sorted(sent)
    assert q.finished  # nothing left to ask


def test_bad_parameters() -> None:
    with pytest.raises(UsageError):
        Query(1, [], beta=30, k=20)
    with pytest.raises(UsageError):
        Query(1, [], max_peers=5)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 0.5))
def test_always_terminates_with_live_results(seed: int, dead_fraction: float) -> None:
    net = Net(120, seed, k=8)
    rng = random.Random(seed)
    src = net.peers[0]
    net.dead = {p for p in net.peers[1:] if rng.random() < dead_fraction}
    q = net.run(src, kad_key(rng.randbytes(4)), timeout=2.0)
    assert q.finished
    assert all(p not in net.dead for p in q.closest())
    assert q.stats.successes + q.stats.failures <= q.stats.requests

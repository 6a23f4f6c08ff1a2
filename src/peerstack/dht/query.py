"""The iterative Kademlia lookup as a sans-IO state machine.

One engine serves FIND_NODE, GET_VALUE and GET_PROVIDERS: the caller asks ``requests(now)``
which peers to query, sends them its RPC, and feeds back ``on_response`` (with the closer peers
the answer named) or ``on_failure``; ``check_timeouts(now)`` fails the peers that took too long.
No sockets, no clock: time is passed in, so the same object runs on the real host, on the
simulated host, and directly on a simulated network.

Rules (libp2p kad-dht spec, as go-libp2p-kad-dht applies them):

* at most ``alpha`` requests in flight, always to the closest peers not yet asked, and only among
  the ``k`` closest peers still in the running (a far peer never delays a near one);
* done when the ``beta`` closest peers not known to have failed have all answered (so no closer
  peer is known), or when nothing is left to ask;
* a peer that fails or times out is out of the running: it costs one timeout, never a stall,
  because the other ``alpha - 1`` requests go on meanwhile;
* the candidate list is bounded (``max_peers``), so peers that answer with floods of made-up
  closer peers cannot make us hold more than that.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass

from peerstack.core.peer_id import PeerId
from peerstack.dht.distance import kad_key
from peerstack.errors import UsageError


class PeerState(enum.Enum):
    HEARD = "heard"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(slots=True)
class _QueryPeer:
    peer: PeerId
    dist: int
    state: PeerState
    # How many answers lie between us and this peer: 0 for the seeds from our own table.
    depth: int
    deadline: float = 0.0


@dataclass(slots=True)
class QueryStats:
    requests: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0


class Query:
    """An iterative lookup of ``target`` (a keyspace position, see ``distance.kad_key``)."""

    def __init__(
        self,
        target: int,
        seeds: Iterable[PeerId],
        *,
        k: int = 20,
        alpha: int = 10,
        beta: int = 3,
        timeout: float = 10.0,
        max_peers: int = 1000,
        exclude: Iterable[PeerId] = (),
    ) -> None:
        if alpha < 1 or beta < 1 or k < 1 or beta > k:
            raise UsageError("need 1 <= beta <= k and alpha >= 1")
        if max_peers < k:
            raise UsageError("max_peers must be at least k")
        self.target = target
        self.k = k
        self.alpha = alpha
        self.beta = beta
        self.timeout = timeout
        self.max_peers = max_peers
        self.stats = QueryStats()
        self._exclude = set(exclude)
        self._peers: dict[PeerId, _QueryPeer] = {}
        self._order: list[_QueryPeer] = []  # sorted by distance to target
        self._in_flight = 0
        self._stopped = False
        for peer in seeds:
            self._learn(peer, 0)

    # -- driving -------------------------------------------------------------------------

    def requests(self, now: float) -> list[PeerId]:
        """Peers to query now (marked as waiting); empty when the query is finished."""
        if self.finished:
            return []
        out: list[PeerId] = []
        running = 0
        for qp in self._order:
            if self._in_flight >= self.alpha or running >= self.k:
                break
            if qp.state is PeerState.FAILED:
                continue
            running += 1
            if qp.state is PeerState.HEARD:
                qp.state = PeerState.WAITING
                qp.deadline = now + self.timeout
                self._in_flight += 1
                self.stats.requests += 1
                out.append(qp.peer)
        return out

    def on_response(self, peer: PeerId, closer: Iterable[PeerId], now: float) -> None:
        """``peer`` answered, naming ``closer`` peers."""
        qp = self._peers.get(peer)
        if qp is None or qp.state is not PeerState.WAITING:
            return  # late answer after a timeout, or a peer we never asked: ignore
        qp.state = PeerState.SUCCEEDED
        self._in_flight -= 1
        self.stats.successes += 1
        for other in closer:
            self._learn(other, qp.depth + 1)

    def on_failure(self, peer: PeerId, now: float) -> None:
        qp = self._peers.get(peer)
        if qp is None or qp.state is not PeerState.WAITING:
            return
        qp.state = PeerState.FAILED
        self._in_flight -= 1
        self.stats.failures += 1

    def check_timeouts(self, now: float) -> list[PeerId]:
        """Fail the requests whose deadline passed; returns those peers."""
        expired = [qp for qp in self._order if qp.state is PeerState.WAITING and qp.deadline <= now]
        for qp in expired:
            self.on_failure(qp.peer, now)
            self.stats.timeouts += 1
        return [qp.peer for qp in expired]

    def next_deadline(self) -> float | None:
        deadlines = [qp.deadline for qp in self._order if qp.state is PeerState.WAITING]
        return min(deadlines) if deadlines else None

    def stop(self) -> None:
        """End the query early (say a GET_VALUE reached its quorum)."""
        self._stopped = True

    # -- state ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def finished(self) -> bool:
        if self._stopped:
            return True
        top_ok = True
        heard_near = False
        running = 0
        for qp in self._order:
            if qp.state is PeerState.FAILED:
                continue
            if running < self.beta and qp.state is not PeerState.SUCCEEDED:
                top_ok = False
            if qp.state is PeerState.HEARD:
                heard_near = True
            running += 1
            if running >= self.k:
                break
        if running >= self.beta and top_ok:
            return True
        # Fewer than beta peers in the running: done once nothing is left to ask or await.
        return not heard_near and self._in_flight == 0

    def state_of(self, peer: PeerId) -> PeerState | None:
        qp = self._peers.get(peer)
        return qp.state if qp else None

    def closest(self, count: int | None = None) -> list[PeerId]:
        """The closest peers that answered, nearest first (at most ``count``, default k)."""
        n = self.k if count is None else count
        out = []
        for qp in self._order:
            if qp.state is PeerState.SUCCEEDED:
                out.append(qp.peer)
                if len(out) >= n:
                    break
        return out

    def closest_candidates(self, count: int | None = None) -> list[PeerId]:
        """The closest peers not known to have failed (answered, waiting or only heard of).

        PUT_VALUE and ADD_PROVIDER go to these: the k closest peers we know, even those the
        lookup did not need to ask before it could stop.
        """
        n = self.k if count is None else count
        out = []
        for qp in self._order:
            if qp.state is not PeerState.FAILED:
                out.append(qp.peer)
                if len(out) >= n:
                    break
        return out

    def hops(self) -> int:
        """Answers on the path that led us to the closest peer that answered (0: own table)."""
        for qp in self._order:
            if qp.state is PeerState.SUCCEEDED:
                return qp.depth
        return 0

    def depth_of(self, peer: PeerId) -> int | None:
        qp = self._peers.get(peer)
        return qp.depth if qp else None

    # -- internals -----------------------------------------------------------------------

    def _learn(self, peer: PeerId, depth: int) -> None:
        if peer in self._exclude:
            return
        known = self._peers.get(peer)
        if known is not None:
            known.depth = min(known.depth, depth)
            return
        dist = kad_key(peer.to_bytes()) ^ self.target
        if len(self._order) >= self.max_peers:
            last = self._order[-1]
            if dist >= last.dist or last.state is PeerState.WAITING:
                return  # bounded: farther than everything we keep
            self._order.pop()
            del self._peers[last.peer]
        qp = _QueryPeer(peer, dist, PeerState.HEARD, depth)
        self._peers[peer] = qp
        bisect.insort(self._order, qp, key=lambda q: q.dist)

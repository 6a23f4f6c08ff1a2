"""The client side of Bitswap: one fetch session (sans-IO; time comes in as ``now``).

A session decides which peer to ask for which block. The strategy, close to go-bitswap's:

* Discovery is cheap first: a want nobody is known to have is broadcast as ``want-have`` (with
  ``send-dont-have``) to every candidate peer. A peer that answers HAVE, or that sent us any block
  of this session, becomes a *session peer*.
* Blocks are asked with ``want-block`` from one peer at a time, preferring a peer that said HAVE,
  else any session peer (optimistically: the peer that had the parent usually has the children).
  So many blocks are in flight at once, spread over several peers in parallel.
* Each peer has a window (blocks in flight). It grows by one for every block the peer delivers
  (doubling per round trip, like TCP slow start) up to ``max_window`` and halves when the peer
  stalls, so fast peers end up carrying more of the transfer than slow ones.
* A peer stalls when it has requests outstanding and has sent nothing for its stall timeout
  (a multiple of its observed gap between blocks, bounded both ways). Its requests go back to the
  pool and are retried elsewhere; the peer is skipped for those blocks.
* When a block arrives, every other peer we asked for it gets a cancel.
* If no candidate has a want for ``discovery_delay`` seconds, the session asks the caller to find
  providers (the DHT); new peers are added with ``add_peer``.
* A peer that sends a block that does not hash to anything we asked for is dropped for good.

The session emits ``Actions``: wantlist entries per peer and CIDs to find providers for.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from peerstack.content.bitswap.messages import WantEntry, WantType
from peerstack.core.cid import CID
from peerstack.core.peer_id import PeerId
from peerstack.errors import UsageError


@dataclass(frozen=True, slots=True)
class SessionConfig:
    initial_window: int = 8
    max_window: int = 128
    min_stall_timeout: float = 3.0
    max_stall_timeout: float = 30.0
    discovery_delay: float = 1.0  # no peer has it after this long: ask the DHT
    provider_search_interval: float = 10.0  # at most one search per CID this often
    retry_interval: float = 5.0  # forget DONT_HAVE / stalls after this, ask everyone again
    max_broadcast: int = 256  # want-haves broadcast per tick (the DAG frontier is enough)


@dataclass(slots=True)
class PeerState:
    peer: PeerId
    window: float
    in_flight: dict[CID, float] = field(default_factory=dict)  # cid -> when asked
    haves: set[CID] = field(default_factory=set)
    session_peer: bool = False
    last_heard: float = 0.0
    gap: float | None = None  # EWMA of seconds between blocks while busy
    blocks: int = 0
    bytes: int = 0
    stalls: int = 0

    def stall_timeout(self, cfg: SessionConfig) -> float:
        if self.gap is None:
            return cfg.max_stall_timeout / 2
        return min(cfg.max_stall_timeout, max(cfg.min_stall_timeout, 8 * self.gap))

    def room(self) -> int:
        return int(self.window) - len(self.in_flight)


@dataclass(slots=True)
class WantState:
    cid: CID
    priority: int
    added: float
    requested_from: PeerId | None = None
    asked_have: set[PeerId] = field(default_factory=set)
    asked_at: float = 0.0  # when want-haves last went out
    skip: set[PeerId] = field(default_factory=set)  # said DONT_HAVE or stalled
    skip_since: float = 0.0
    last_search: float | None = None


@dataclass(slots=True)
class Actions:
    messages: dict[PeerId, list[WantEntry]] = field(default_factory=dict)
    find_providers: list[CID] = field(default_factory=list)

    def add(self, peer: PeerId, entry: WantEntry) -> None:
        self.messages.setdefault(peer, []).append(entry)

    def is_empty(self) -> bool:
        return not (self.messages or self.find_providers)


class Session:
    def __init__(self, config: SessionConfig | None = None) -> None:
        self.config = config if config is not None else SessionConfig()
        self.peers: dict[PeerId, PeerState] = {}
        self.banned: set[PeerId] = set()
        self.wants: OrderedDict[CID, WantState] = OrderedDict()
        self._out = Actions()
        self._next_priority = 1 << 30  # earlier wants first: the exporter reads in order

    # -- inputs -------------------------------------------------------------------------

    def add_peer(self, peer: PeerId, now: float) -> None:
        if peer in self.banned or peer in self.peers:
            return
        self.peers[peer] = PeerState(peer, float(self.config.initial_window), last_heard=now)

    def remove_peer(self, peer: PeerId) -> None:
        state = self.peers.pop(peer, None)
        if state is None:
            return
        for cid in state.in_flight:
            want = self.wants.get(cid)
            if want is not None and want.requested_from == peer:
                want.requested_from = None
        for want in self.wants.values():
            want.asked_have.discard(peer)

    def ban(self, peer: PeerId) -> None:
        """Drop ``peer`` for the rest of the session (it sent a block we never asked for)."""
        self.remove_peer(peer)
        self.banned.add(peer)

    def want(self, cids: list[CID], now: float) -> None:
        for cid in cids:
            if cid in self.wants:
                continue
            if self._next_priority <= 1:
                raise UsageError("too many wants in one session")
            self._next_priority -= 1
            self.wants[cid] = WantState(cid, self._next_priority, now)

    def cancel(self, cid: CID) -> None:
        """Stop wanting ``cid`` (found elsewhere, e.g. already on disk)."""
        want = self.wants.pop(cid, None)
        if want is not None:
            self._cancel_everywhere(want, None)

    def is_wanted(self, cid: CID) -> bool:
        return cid in self.wants

    def on_block(self, peer: PeerId, cid: CID, size: int, now: float) -> bool:
        """A verified block arrived. Returns False if this session did not want it."""
        want = self.wants.pop(cid, None)
        state = self.peers.get(peer)
        if state is not None:
            self._heard(state, now, block=True)
            state.in_flight.pop(cid, None)
            state.blocks += 1
            state.bytes += size
            state.session_peer = True
            state.window = min(float(self.config.max_window), state.window + 1)
        if want is None:
            return False
        self._cancel_everywhere(want, peer)
        return True

    def on_have(self, peer: PeerId, cid: CID, now: float) -> None:
        state = self.peers.get(peer)
        if state is None:
            return
        self._heard(state, now, block=False)
        if cid in self.wants:
            state.haves.add(cid)
            state.session_peer = True

    def on_dont_have(self, peer: PeerId, cid: CID, now: float) -> None:
        state = self.peers.get(peer)
        if state is None:
            return
        self._heard(state, now, block=False)
        state.haves.discard(cid)
        state.in_flight.pop(cid, None)
        want = self.wants.get(cid)
        if want is None:
            return
        if not want.skip:
            want.skip_since = now
        want.skip.add(peer)
        if want.requested_from == peer:
            want.requested_from = None

    def _heard(self, state: PeerState, now: float, block: bool) -> None:
        if block and state.in_flight:
            gap = max(now - state.last_heard, 0.0)
            state.gap = gap if state.gap is None else 0.8 * state.gap + 0.2 * gap
        state.last_heard = now

    def _cancel_everywhere(self, want: WantState, got_from: PeerId | None) -> None:
        asked = set(want.asked_have)
        if want.requested_from is not None:
            asked.add(want.requested_from)
        for peer in asked:
            state = self.peers.get(peer)
            if state is not None:
                state.in_flight.pop(want.cid, None)
                state.haves.discard(want.cid)
            if peer != got_from and state is not None:
                self._out.add(peer, WantEntry(want.cid, cancel=True))

    # -- the decision -------------------------------------------------------------------

    def tick(self, now: float) -> Actions:
        """Time passes: handle stalls, hand out requests, return what to send."""
        self._check_stalls(now)
        self._assign(now)
        out, self._out = self._out, Actions()
        return out

    def next_deadline(self) -> float | None:
        """When ``tick`` should run next at the latest (None: only on new input)."""
        deadlines = []
        for state in self.peers.values():
            if state.in_flight:
                deadlines.append(state.last_heard + state.stall_timeout(self.config))
        for want in self.wants.values():
            if want.requested_from is None:
                deadlines.append(want.added + self.config.discovery_delay)
                if want.skip:
                    deadlines.append(want.skip_since + self.config.retry_interval)
                if want.asked_have:
                    deadlines.append(want.asked_at + self.config.retry_interval)
                break  # the oldest unassigned want is enough to keep ticking
        return min(deadlines) if deadlines else None

    def _check_stalls(self, now: float) -> None:
        for state in self.peers.values():
            if not state.in_flight:
                continue
            if now - state.last_heard < state.stall_timeout(self.config):
                continue
            state.stalls += 1
            state.window = max(1.0, state.window / 2)
            for cid in list(state.in_flight):
                want = self.wants.get(cid)
                if want is not None and want.requested_from == state.peer:
                    want.requested_from = None
                    if not want.skip:
                        want.skip_since = now
                    want.skip.add(state.peer)
                    self._out.add(state.peer, WantEntry(cid, cancel=True))
            state.in_flight.clear()
            state.last_heard = now

    def _pick(self, want: WantState) -> PeerState | None:
        best: PeerState | None = None
        best_key: tuple[int, float] | None = None
        for state in self.peers.values():
            if state.peer in want.skip or state.room() <= 0:
                continue
            if want.cid in state.haves:
                rank = 0
            elif state.session_peer:
                rank = 1
            else:
                continue
            # prefer peers with the most free room relative to their window
            key = (rank, -state.room() / state.window)
            if best_key is None or key < best_key:
                best, best_key = state, key
        return best

    def _assign(self, now: float) -> None:
        cfg = self.config
        broadcasts = searches = 0
        for want in self.wants.values():
            any_room = any(st.room() > 0 for st in self.peers.values())
            if not any_room and broadcasts >= cfg.max_broadcast:
                break  # nothing more can be handed out this tick
            if want.requested_from is not None:
                continue
            if want.skip and now - want.skip_since >= cfg.retry_interval:
                want.skip.clear()
                want.asked_have.clear()
            elif (
                want.asked_have
                and now - want.asked_at >= cfg.retry_interval
                and not any(want.cid in st.haves for st in self.peers.values())
            ):
                want.asked_have.clear()  # nobody answered at all: ask again
            state = self._pick(want) if any_room else None
            if state is not None:
                if not state.in_flight:
                    state.last_heard = now  # the stall clock starts with the first request
                want.requested_from = state.peer
                state.in_flight[want.cid] = now
                self._out.add(
                    state.peer,
                    WantEntry(want.cid, want.priority, False, WantType.BLOCK, True),
                )
                continue
            if broadcasts < cfg.max_broadcast:
                targets = [p for p in self.peers if p not in want.asked_have and p not in want.skip]
                if targets:
                    broadcasts += 1
                    want.asked_at = now
                for peer in targets:
                    want.asked_have.add(peer)
                    self._out.add(
                        peer, WantEntry(want.cid, want.priority, False, WantType.HAVE, True)
                    )
            if (
                not searches
                and now - want.added >= cfg.discovery_delay
                and not any(want.cid in st.haves for st in self.peers.values())
                and (
                    want.last_search is None
                    or now - want.last_search >= cfg.provider_search_interval
                )
            ):
                searches += 1  # one search per tick: providers of one block have the rest
                want.last_search = now
                self._out.find_providers.append(want.cid)

    # -- introspection ------------------------------------------------------------------

    def in_flight(self) -> int:
        return sum(len(s.in_flight) for s in self.peers.values())

    def done(self) -> bool:
        return not self.wants

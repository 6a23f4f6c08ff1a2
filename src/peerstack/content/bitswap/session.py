"""The client side of Bitswap: one fetch session (sans-IO; time comes in as ``now``).

A session decides which peer to ask for which block. The strategy, close to go-bitswap's:

* Discovery is cheap first: a want nobody is known to have is broadcast as ``want-have`` (with
  ``send-dont-have``) to every candidate peer that is not a session peer yet, at most
  ``max_probes`` unanswered at a time per peer (a few answers tell whether it has the content; a
  peer without it used to get a want-have and a cancel for every block of the file). A peer
  that answers HAVE, or that sent us any block of this session, becomes a *session peer*.
  Session peers are not asked want-have: they get want-block as their window allows (a HAVE for
  every block of a big file first cost both ends a message entry and a presence per block).
* Blocks are asked with ``want-block`` from one peer at a time, preferring a peer that said HAVE,
  else any session peer (optimistically: the peer that had the parent usually has the children).
  So many blocks are in flight at once, over as many peers as it takes to keep the pace up.
* Each peer has a window (blocks in flight). It grows by one for every block the peer delivers
  (doubling per round trip, like TCP slow start) up to ``max_window`` and halves when the peer
  stalls.
* The session as a whole has at most ``max_in_flight`` blocks asked for and not yet here. Each
  peer's *share* is what it serves in ``busy_seconds`` at its observed pace. Requests go to the
  fastest peer up to its share, then the next, and what is left to the fastest again: a
  transfer one fast peer can carry stays on it, and every peer that adds pace stays busy.
  Both limits count 1 MiB blocks (``block_unit``): a session of smaller blocks may have as
  many more in flight as makes the same bytes, up to ``max_blocks_in_flight``.
* A peer's window is refilled in batches: only once a quarter of it is free (``refill_fraction``)
  does it get new wants, as many as fit. The three quarters still queued at the peer keep it
  busy meanwhile, and a want message then carries many wants instead of one per block received
  (each message costs both ends a decode, and the server a trip to look up block sizes).
* End game: once every want is handed out, a peer that has nearly run dry (fewer than
  ``endgame_keep`` requests left) takes over the newest requests queued at the peer with the
  most (a cancel there, a want-block here), as many as make both finish together at their
  observed paces (half the difference while a pace is unknown), so the last blocks do not wait
  in one peer's deep queue while the others idle. The ``endgame_keep`` oldest requests
  of a queue stay where they are: they may be on their way already (sent by the server, or
  buffered here while we hash and store), and moving them would fetch them twice.
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

import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass, field

from peerstack.content.bitswap.messages import WantEntry, WantType
from peerstack.core.cid import CID
from peerstack.core.peer_id import PeerId
from peerstack.errors import UsageError


@dataclass(frozen=True, slots=True)
class SessionConfig:
    initial_window: int = 8
    max_window: int = 128  # blocks of block_unit bytes or more (see block_unit)
    min_stall_timeout: float = 3.0
    max_stall_timeout: float = 30.0
    discovery_delay: float = 1.0  # no peer has it after this long: ask the DHT
    provider_search_interval: float = 10.0  # at most one search per CID this often
    retry_interval: float = 5.0  # forget DONT_HAVE / stalls after this, ask everyone again
    max_broadcast: int = 256  # want-haves broadcast per tick (the DAG frontier is enough)
    refill_fraction: float = 0.25  # a peer gets new wants once this much of its window is free
    endgame_keep: int = 16  # end game: the oldest requests of a peer, never moved (see above)
    max_in_flight: int = 64  # blocks asked for and not yet here, all peers together
    # max_window and max_in_flight count blocks of this size or more. A session whose blocks
    # are smaller (kubo's 256 KiB chunks, a tree of small nodes) may have as many more in
    # flight as keeps the bytes the same, up to max_blocks_in_flight: a count made for 1 MiB
    # blocks held a walk of small blocks to a few kilobytes per round trip. 0: plain counts.
    block_unit: int = 1 << 20
    max_blocks_in_flight: int = 512  # whatever their size (servers cap wantlists at ~1024)
    max_probes: int = 16  # want-haves a peer that is not a session peer has unanswered
    busy_seconds: float = 0.5  # a peer's share: the blocks it serves in this long at its pace


@dataclass(slots=True)
class PeerState:
    peer: PeerId
    window: float
    in_flight: dict[CID, float] = field(default_factory=dict)  # cid -> when asked
    haves: set[CID] = field(default_factory=set)
    probes: set[CID] = field(default_factory=set)  # want-haves it has not answered
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

    def refill_step(self, cfg: SessionConfig, allowance: int) -> int:
        """The fewest new wants worth a message to this peer (see ``refill_fraction``), the
        session's ``allowance`` being what it may have in flight."""
        return max(1, int(min(self.window, allowance) * cfg.refill_fraction))

    def share(self, cfg: SessionConfig) -> int:
        """Requests that keep this peer busy for ``busy_seconds`` at its observed pace (its
        whole window while the pace is unknown)."""
        if self.gap is None or self.gap * self.window <= cfg.busy_seconds:
            return int(self.window)
        return max(2, math.ceil(cfg.busy_seconds / self.gap))


def _even_finish(giver: PeerState, taker: PeerState) -> int:
    """End game: how many of ``giver``'s queued requests to move to ``taker`` so that both
    are done at about the same time, at their observed paces (half the difference while a
    pace is unknown). A fast giver keeps most of its queue: moving requests from a peer that
    drains it in milliseconds to one that needs as long per block gains nothing."""
    lg, lt = len(giver.in_flight), len(taker.in_flight)
    if not giver.gap or not taker.gap:
        return (lg - lt) // 2
    return int((lg * giver.gap - lt * taker.gap) / (giver.gap + taker.gap))


class _MeanSize:
    """The mean size of the blocks received lately (an exponentially weighted mean)."""

    __slots__ = ("mean",)

    def __init__(self) -> None:
        self.mean: float | None = None

    def add(self, size: int) -> None:
        self.mean = float(size) if self.mean is None else 0.9 * self.mean + 0.1 * size


# An idle peer's pace is an old measurement: it must beat a busy peer's by this factor to take
# requests from it (a busy peer's hiccup, a slow loop turn of ours, must not move a transfer).
IDLE_PACE_HANDICAP = 2.0

# Where an unassigned want waits (``WantState.place``): in the ready heap (to be handed to a
# peer), parked (every session peer refused it: it waits for a new session peer or its retry),
# or nowhere (assigned, or about to be put back).
_NOWHERE, _READY, _PARKED = 0, 1, 2


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
    place: int = _NOWHERE
    broadcast: bool = False  # queued for want-haves to the peers not asked yet


@dataclass(slots=True)
class Actions:
    messages: dict[PeerId, list[WantEntry]] = field(default_factory=dict)
    find_providers: list[CID] = field(default_factory=list)

    def add(self, peer: PeerId, entry: WantEntry) -> None:
        self.messages.setdefault(peer, []).append(entry)

    def is_empty(self) -> bool:
        return not (self.messages or self.find_providers)


class Session:
    """One fetch's want bookkeeping.

    Per-tick work is proportional to what the tick does, not to the number of wants: unassigned
    wants wait in priority heaps (ready to hand out, parked, waiting for want-haves) and the
    retry clocks in a timer heap, so a tick with every window full touches nothing but the
    peers. Heap entries are lazy: an entry whose want is gone or moved is skipped when popped.
    ``examined`` counts the wants a tick looked at, for tests of that bound.
    """

    def __init__(self, config: SessionConfig | None = None) -> None:
        self.config = config if config is not None else SessionConfig()
        self.peers: dict[PeerId, PeerState] = {}
        self.banned: set[PeerId] = set()
        self.wants: OrderedDict[CID, WantState] = OrderedDict()
        self._out = Actions()
        self._next_priority = 1 << 30  # earlier wants first: the exporter reads in order
        # heaps of (-priority, cid): priorities are unique, so the CID is never compared
        self._ready: list[tuple[int, CID]] = []
        self._parked: list[tuple[int, CID]] = []
        self._to_broadcast: list[tuple[int, CID]] = []
        self._timers: list[tuple[float, int, CID]] = []  # (when, seq, cid): retry checks
        self._seq = 0
        self._sizes = _MeanSize()
        self.examined = 0

    # -- inputs -------------------------------------------------------------------------

    def add_peer(self, peer: PeerId, now: float) -> None:
        if peer in self.banned or peer in self.peers:
            return
        self.peers[peer] = PeerState(peer, float(self.config.initial_window), last_heard=now)
        for want in self.wants.values():  # a new peer: ask it about everything still open
            if want.requested_from is None:
                self._mark_broadcast(want)

    def remove_peer(self, peer: PeerId) -> None:
        state = self.peers.pop(peer, None)
        if state is None:
            return
        for cid in state.in_flight:
            want = self.wants.get(cid)
            if want is not None and want.requested_from == peer:
                want.requested_from = None
                self._requeue(want)
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
            want = WantState(cid, self._next_priority, now)
            self.wants[cid] = want
            self._requeue(want)

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
            state.probes.discard(cid)
            state.blocks += 1
            state.bytes += size
            self._become_session_peer(state)
            self._sizes.add(size)
            state.window = min(float(self._scaled(self.config.max_window)), state.window + 1)
        if want is None:
            return False
        self._cancel_everywhere(want, peer)
        return True

    def on_have(self, peer: PeerId, cid: CID, now: float) -> None:
        state = self.peers.get(peer)
        if state is None:
            return
        self._heard(state, now, block=False)
        state.probes.discard(cid)
        if cid in self.wants:
            state.haves.add(cid)
            self._become_session_peer(state)

    def on_dont_have(self, peer: PeerId, cid: CID, now: float) -> None:
        state = self.peers.get(peer)
        if state is None:
            return
        self._heard(state, now, block=False)
        state.haves.discard(cid)
        state.probes.discard(cid)
        state.in_flight.pop(cid, None)
        want = self.wants.get(cid)
        if want is None:
            return
        self._skip(want, peer, now)
        if want.requested_from == peer:
            want.requested_from = None
            self._requeue(want)

    def _heard(self, state: PeerState, now: float, block: bool) -> None:
        if block and state.in_flight:
            gap = max(now - state.last_heard, 0.0)
            state.gap = gap if state.gap is None else 0.8 * state.gap + 0.2 * gap
        state.last_heard = now

    def _become_session_peer(self, state: PeerState) -> None:
        if state.session_peer:
            return
        state.session_peer = True
        # parked wants were refused by every session peer there was; this one may have them
        parked, self._parked = self._parked, []
        for _, cid in parked:
            want = self.wants.get(cid)
            if want is not None and want.place == _PARKED:
                want.place = _NOWHERE
                self._enqueue(want)

    def _cancel_everywhere(self, want: WantState, got_from: PeerId | None) -> None:
        want.place = _NOWHERE
        want.broadcast = False
        asked = set(want.asked_have)
        if want.requested_from is not None:
            asked.add(want.requested_from)
        for peer in asked:
            state = self.peers.get(peer)
            if state is not None:
                state.in_flight.pop(want.cid, None)
                state.haves.discard(want.cid)
                state.probes.discard(want.cid)
            if peer != got_from and state is not None:
                self._out.add(peer, WantEntry(want.cid, cancel=True))

    # -- the queues -----------------------------------------------------------------------

    def _enqueue(self, want: WantState) -> None:
        """Put an unassigned want in the ready heap (once)."""
        if want.place != _READY:
            want.place = _READY
            heapq.heappush(self._ready, (-want.priority, want.cid))

    def _mark_broadcast(self, want: WantState) -> None:
        if not want.broadcast:
            want.broadcast = True
            heapq.heappush(self._to_broadcast, (-want.priority, want.cid))

    def _timer(self, when: float, want: WantState) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, want.cid))

    def _requeue(self, want: WantState) -> None:
        """``want`` has just become unassigned: hand it out again, ask about it, and arm the
        retry clocks that were running for it."""
        self._enqueue(want)
        self._mark_broadcast(want)
        retry = self.config.retry_interval
        if want.skip:
            self._timer(want.skip_since + retry, want)
        if want.asked_have:
            self._timer(want.asked_at + retry, want)

    def _skip(self, want: WantState, peer: PeerId, now: float) -> None:
        if not want.skip:
            want.skip_since = now
            self._timer(now + self.config.retry_interval, want)
        want.skip.add(peer)

    def block_wakes(self, peer: PeerId, cid: CID) -> bool:
        """(before ``on_block``) Whether the block of ``cid`` from ``peer`` makes the session
        act at once whatever else holds: others were asked for it (cancels to send), or the
        peer becomes a session peer (parked wants to hand it). Otherwise a block needs a tick
        only when ``peer_due`` says so: a tick per block was most of the session's cost on
        the event loop, and it sent nothing but at those points."""
        state = self.peers.get(peer)
        if state is None or not state.session_peer:
            return True
        want = self.wants.get(cid)
        if want is None:
            return False
        asked = want.asked_have
        return (want.requested_from not in (None, peer)) or bool(
            asked and (len(asked) > 1 or peer not in asked)
        )

    def peer_due(self, peer: PeerId) -> bool:
        """(after ``on_block``) Whether a tick has work because of ``peer``: its window is due
        for a refill and a want waits for one, or it is nearly dry (the end game), or nothing
        is wanted any more."""
        state = self.peers.get(peer)
        if state is None or len(state.in_flight) < self.config.endgame_keep or not self.wants:
            return True
        allowance = self._allowance()
        return (
            self._due(state, allowance, allowance - self.in_flight())
            and self._head(self._ready, _READY) is not None
        )

    def _due(self, state: PeerState, allowance: int, free: int) -> bool:
        """``state``'s peer is due for a batch of new wants: that much of its window is
        free, and of the session's ``allowance`` (see ``_allowance``; ``free`` requests of it
        are not in flight). The caller works both out once: each is a pass over the peers."""
        return state.room() >= state.refill_step(self.config, allowance) and free >= max(
            1, int(allowance * self.config.refill_fraction)
        )

    def _scaled(self, blocks: int) -> int:
        """A limit of ``blocks`` unit-sized blocks, in blocks of this session's size."""
        cfg = self.config
        mean = self._sizes.mean
        if not cfg.block_unit or mean is None or mean >= cfg.block_unit:
            return blocks
        return min(
            cfg.max_blocks_in_flight, max(blocks, int(blocks * cfg.block_unit / max(mean, 1.0)))
        )

    def _allowance(self) -> int:
        """Blocks this session may have asked for and not received yet: ``max_in_flight``
        (scaled to its block size), and at least two per session peer, so that many slow
        peers together still each have one block on its way while another is served."""
        sessions = sum(1 for st in self.peers.values() if st.session_peer)
        return min(
            self.config.max_blocks_in_flight,
            max(self._scaled(self.config.max_in_flight), 2 * sessions),
        )

    def _someone_has(self, cid: CID) -> bool:
        return any(cid in st.haves for st in self.peers.values())

    def _may_get(self, want: WantState) -> bool:
        """Someone said HAVE, or a session peer has not refused it: no need for providers."""
        return self._someone_has(want.cid) or any(
            st.session_peer and st.peer not in want.skip for st in self.peers.values()
        )

    def _head(self, heap: list[tuple[int, CID]], place: int) -> WantState | None:
        """The best live want of ``heap`` (stale entries on top are dropped)."""
        while heap:
            want = self.wants.get(heap[0][1])
            if want is not None and want.place == place and want.requested_from is None:
                return want
            heapq.heappop(heap)
        return None

    # -- the decision -------------------------------------------------------------------

    def tick(self, now: float) -> Actions:
        """Time passes: handle stalls, hand out requests, return what to send."""
        self._check_stalls(now)
        self._run_timers(now)
        self._assign(now)
        self._end_game(now)
        self._broadcast(now)
        self._search(now)
        out, self._out = self._out, Actions()
        return out

    def _end_game(self, now: float) -> None:
        """Nothing left to hand out: move queued requests from the most loaded peer to peers
        with room. Work per tick is proportional to the peers and the requests moved."""
        if self._head(self._ready, _READY) is not None:
            return
        peers = [st for st in self.peers.values() if st.session_peer]
        if len(peers) < 2:
            return
        for taker in sorted(peers, key=lambda st: len(st.in_flight)):
            if len(taker.in_flight) >= self.config.endgame_keep:
                break  # sorted: nobody after this one has run dry either
            if taker.room() <= 0:
                continue
            giver = max(peers, key=lambda st: len(st.in_flight))
            n = min(
                taker.room(),
                _even_finish(giver, taker),
                len(giver.in_flight) - self.config.endgame_keep,
            )
            if n <= 0:
                continue
            if not taker.in_flight:
                taker.last_heard = now  # its stall clock starts with the first request
            for cid in list(giver.in_flight)[-n:]:  # the newest: last in the giver's queue
                want = self.wants.get(cid)
                if want is None or want.requested_from != giver.peer or taker.peer in want.skip:
                    continue
                del giver.in_flight[cid]
                self._out.add(giver.peer, WantEntry(cid, cancel=True))
                want.requested_from = taker.peer
                taker.in_flight[cid] = now
                self._out.add(
                    taker.peer, WantEntry(cid, want.priority, False, WantType.BLOCK, True)
                )

    def next_deadline(self) -> float | None:
        """When ``tick`` should run next at the latest (None: only on new input)."""
        deadlines = []
        for state in self.peers.values():
            if state.in_flight:
                deadlines.append(state.last_heard + state.stall_timeout(self.config))
        if self._timers:
            deadlines.append(self._timers[0][0])
        want = self._search_candidate()
        if want is not None:
            deadlines.append(self._search_due(want))
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
                    self._skip(want, state.peer, now)
                    self._requeue(want)
                    self._out.add(state.peer, WantEntry(cid, cancel=True))
            state.in_flight.clear()
            state.last_heard = now

    def _run_timers(self, now: float) -> None:
        """Retry clocks that ran out: forget DONT_HAVEs and stalls, or ask everyone again."""
        retry = self.config.retry_interval
        while self._timers and self._timers[0][0] <= now:
            cid = heapq.heappop(self._timers)[2]
            want = self.wants.get(cid)
            if want is None or want.requested_from is not None:
                continue  # put back with its clocks when it is unassigned again
            self.examined += 1
            if want.skip and want.skip_since + retry <= now:
                want.skip.clear()
                self._forget_asks(want)
            elif (
                want.asked_have and want.asked_at + retry <= now and not self._someone_has(want.cid)
            ):
                self._forget_asks(want)  # nobody answered at all: ask again
            else:
                continue
            self._enqueue(want)
            self._mark_broadcast(want)

    def _forget_asks(self, want: WantState) -> None:
        """Ask again about ``want`` as if nobody had been asked (their probes are void)."""
        for peer in want.asked_have:
            state = self.peers.get(peer)
            if state is not None:
                state.probes.discard(want.cid)
        want.asked_have.clear()

    def _pick(
        self, want: WantState, refill: set[PeerId], within_share: bool
    ) -> PeerState | None:
        """The peer to ask for ``want``, or None: one that said HAVE for it before any other
        session peer, then the fastest (smallest gap between blocks; one whose pace is not
        known yet first, to learn it). ``within_share``: only peers below their ``share``.

        Fastest first, each up to its share, then the fastest again: every peer that adds
        pace gets enough to stay busy, and a transfer one fast peer can carry (its share is
        the whole allowance) stays on it instead of being spread thin over every peer that
        has the blocks. Each peer served costs both ends a connection's worth of wake-ups and
        buffers: where the CPU is the limit (a leecher hashing and writing at its CPU's pace,
        or peers on one host) four seeders sharing a transfer were slower than one.
        """
        best: PeerState | None = None
        best_key: tuple[int, float, float] | None = None
        cfg = self.config
        for state in self.peers.values():
            if state.peer in want.skip or state.room() <= 0 or state.peer not in refill:
                continue
            if want.cid in state.haves:
                rank = 0
            elif state.session_peer:
                rank = 1
            else:
                continue
            if within_share and len(state.in_flight) >= state.share(cfg):
                continue
            gap = state.gap if state.gap is not None else 0.0
            if not state.in_flight:
                gap *= IDLE_PACE_HANDICAP
            key = (rank, gap, -state.room() / state.window)
            if best_key is None or key < best_key:
                best, best_key = state, key
        return best

    def _assign(self, now: float) -> None:
        """Hand ready wants, best first, to session peers with room (only a peer that sent a
        block or a HAVE is asked for blocks, so only those peers' room counts)."""
        # Peers whose window is due for a refill, filled up this tick (see ``refill_fraction``).
        allowance = self._allowance()
        free = allowance - self.in_flight()
        refill = {
            st.peer
            for st in self.peers.values()
            if st.session_peer and self._due(st, allowance, free)
        }
        room = min(sum(max(self.peers[p].room(), 0) for p in refill), free)
        # Wants refused by the peers with room but not by every session peer wait for room
        # elsewhere; this bounds how many of them one tick looks at.
        budget = 4 * room + 64
        deferred: list[WantState] = []
        while room > 0 and budget > 0:
            want = self._head(self._ready, _READY)
            if want is None:
                break
            heapq.heappop(self._ready)
            want.place = _NOWHERE
            self.examined += 1
            budget -= 1
            state = self._pick(want, refill, True) or self._pick(want, refill, False)
            if state is None:
                if all(st.peer in want.skip for st in self.peers.values() if st.session_peer):
                    want.place = _PARKED
                    heapq.heappush(self._parked, (-want.priority, want.cid))
                else:
                    deferred.append(want)
                continue
            if not state.in_flight:
                state.last_heard = now  # the stall clock starts with the first request
            want.requested_from = state.peer
            state.in_flight[want.cid] = now
            room -= 1
            self._out.add(
                state.peer, WantEntry(want.cid, want.priority, False, WantType.BLOCK, True)
            )
        for want in deferred:
            self._enqueue(want)

    def _broadcast(self, now: float) -> None:
        """Want-haves for unassigned wants to the peers not asked yet (cheap discovery)."""
        sent = 0
        while self._to_broadcast and sent < self.config.max_broadcast:
            cid = heapq.heappop(self._to_broadcast)[1]
            want = self.wants.get(cid)
            if want is None or not want.broadcast:
                continue
            want.broadcast = False
            if want.requested_from is not None:
                continue  # marked again if it is ever unassigned
            self.examined += 1
            # A peer that is not a session peer is probed with at most max_probes want-haves
            # at a time: a few answers tell whether it has the content (a HAVE makes it a
            # session peer), and a peer without it would otherwise get a want-have, and then
            # a cancel, for every block of the file.
            probes = self.config.max_probes
            targets = [
                st
                for p, st in self.peers.items()
                if not st.session_peer
                and p not in want.asked_have
                and p not in want.skip
                and len(st.probes) < probes
            ]
            if not targets:
                continue
            sent += 1
            want.asked_at = now
            self._timer(now + self.config.retry_interval, want)
            for st in targets:
                want.asked_have.add(st.peer)
                st.probes.add(cid)
                self._out.add(
                    st.peer, WantEntry(want.cid, want.priority, False, WantType.HAVE, True)
                )

    def _search_candidate(self) -> WantState | None:
        """The best unassigned want nobody has said HAVE for and every session peer refused:
        the one to find providers of (the providers of one block of a DAG usually have the
        rest, so while a session peer may still send it, nobody is searched for)."""
        for want in sorted(
            (w for w in (self._head(self._ready, _READY), self._head(self._parked, _PARKED)) if w),
            key=lambda w: -w.priority,
        ):
            if not self._may_get(want):
                return want
        return None

    def _search_due(self, want: WantState) -> float:
        due = want.added + self.config.discovery_delay
        if want.last_search is not None:
            due = max(due, want.last_search + self.config.provider_search_interval)
        return due

    def _search(self, now: float) -> None:
        want = self._search_candidate()
        if want is not None and self._search_due(want) <= now:
            want.last_search = now
            self._out.find_providers.append(want.cid)

    # -- introspection ------------------------------------------------------------------

    def in_flight(self) -> int:
        return sum(len(s.in_flight) for s in self.peers.values())

    def done(self) -> bool:
        return not self.wants

"""The server side of Bitswap: the decision engine (sans-IO).

It keeps a ledger per peer, turns received wantlists into tasks, and hands out work in batches,
round robin across peers, so one peer with a huge wantlist cannot starve the others. Each peer has
a cap on its wantlist and on the bytes we have queued for it and not yet written ("in flight"):
a peer that does not read its stream stops getting new work instead of filling our memory.

The engine never touches the disk or the network. A want's block size (``None`` when we do not
have it) comes one of two ways: the service looks up the sizes of a whole message's wants in one
trip to a worker thread and hands them in (``receive(..., defer_sizes=True)`` then
``set_sizes``; until then those wants are not served), or, for the odd want, the
``block_size(cid)`` callable passed in is asked when the want is served.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from peerstack.content.bitswap.ledger import Ledger
from peerstack.content.bitswap.messages import Message, WantType
from peerstack.core.cid import CID
from peerstack.core.peer_id import PeerId

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    max_wantlist: int = 1024  # wants one peer may have with us at a time (more are ignored)
    flood_limit: int = 8192  # asking for more than this at once is a flood: the peer is cut off
    max_bytes_in_flight: int = 4 * 1024 * 1024  # per peer, queued and not yet written
    # A batch adds no block that would take it past this (one block may exceed it alone).
    # js (helia) refuses incoming messages over 2 MiB, and go sends at most 2 MiB.
    target_message_bytes: int = 1024 * 1024
    max_presences_per_batch: int = 1024


@dataclass(slots=True)
class Batch:
    """One message's worth of work for one peer."""

    peer: PeerId
    blocks: list[CID] = field(default_factory=list)
    haves: list[CID] = field(default_factory=list)
    dont_haves: list[CID] = field(default_factory=list)
    nbytes: int = 0

    def is_empty(self) -> bool:
        return not (self.blocks or self.haves or self.dont_haves)


class _Size(enum.Enum):
    PENDING = "pending"  # the service is looking it up: not served until ``set_sizes``
    LOOKUP = "lookup"  # ask ``block_size`` when the want is served


@dataclass(slots=True)
class _Task:
    cid: CID
    want_type: WantType
    send_dont_have: bool
    priority: int
    size: int | _Size | None = _Size.LOOKUP


class _Queue:
    """One peer's tasks: a dict by CID and a heap by (-priority, arrival) for serving order.

    Sorting every queued task per 1 MiB batch was the engine's main cost on big transfers. The
    heap is lazy: a cancelled or replaced task stays in it until it surfaces and is skipped
    (its entry no longer matches the dict), and the heap is rebuilt when such garbage dominates.
    """

    __slots__ = ("_seq", "by_cid", "heap")

    def __init__(self) -> None:
        self.by_cid: dict[CID, _Task] = {}
        self.heap: list[tuple[int, int, _Task]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.by_cid)

    def get(self, cid: CID) -> _Task | None:
        return self.by_cid.get(cid)

    def values(self) -> Iterable[_Task]:
        return self.by_cid.values()

    def put(self, task: _Task) -> None:
        """Add or replace a task; one whose size is pending is served after ``push``."""
        self.by_cid[task.cid] = task
        if task.size is not _Size.PENDING:
            self.push(task)

    def push(self, task: _Task) -> None:
        """(Re)queue ``task`` for serving; it must be in ``by_cid``."""
        heapq.heappush(self.heap, (-task.priority, next(self._seq), task))
        if len(self.heap) > 2 * len(self.by_cid) + 64:
            self.heap = [e for e in self.heap if self.by_cid.get(e[2].cid) is e[2]]
            heapq.heapify(self.heap)

    def remove(self, cid: CID) -> None:
        self.by_cid.pop(cid, None)

    def pop_next(self) -> _Task | None:
        """The highest-priority live task, taken off the heap (still in ``by_cid``)."""
        while self.heap:
            task = heapq.heappop(self.heap)[2]
            if self.by_cid.get(task.cid) is task:
                return task
        return None


class DecisionEngine:
    def __init__(
        self, block_size: Callable[[CID], int | None], config: ServerConfig | None = None
    ) -> None:
        self.block_size = block_size
        self.config = config if config is not None else ServerConfig()
        self.ledgers: dict[PeerId, Ledger] = {}
        self._tasks: dict[PeerId, _Queue] = {}
        self._ready: deque[PeerId] = deque()  # round-robin order of peers with tasks
        self.tasks_examined = 0  # tasks taken off a peer's queue: the cost of serving
        # Block bytes written to all peers so far. A ledger goes with its peer's connection;
        # this total stays, so an upload can be counted across disconnects.
        self.bytes_sent = 0

    def ledger(self, peer: PeerId) -> Ledger:
        led = self.ledgers.get(peer)
        if led is None:
            led = Ledger.new(peer, self.config.max_wantlist)
            self.ledgers[peer] = led
        return led

    def receive(self, peer: PeerId, msg: Message, *, defer_sizes: bool = False) -> list[CID]:
        """Take a peer's wantlist into account. Raises ``LimitExceeded`` on a wantlist flood.

        With ``defer_sizes`` the new wants wait for ``set_sizes`` before they are served; the
        CIDs returned are those whose sizes are wanted (at most the wantlist cap).
        """
        led = self.ledger(peer)
        led.messages_received += 1
        if not msg.wantlist and not msg.full:
            return []
        ignored_before = led.ignored_wants
        added, cancelled = led.apply(msg.wantlist, msg.full, self.config.flood_limit)
        if led.ignored_wants > ignored_before:
            ignored = led.ignored_wants - ignored_before
            log.debug("%s: wantlist full, %d wants ignored", peer, ignored)
        tasks = self._tasks.setdefault(peer, _Queue())
        for cid in cancelled:
            tasks.remove(cid)
        size = _Size.PENDING if defer_sizes else _Size.LOOKUP
        for want in added:
            tasks.put(_Task(want.cid, want.want_type, want.send_dont_have, want.priority, size))
        if not tasks:
            del self._tasks[peer]
        elif peer not in self._ready:
            self._ready.append(peer)
        return [want.cid for want in added] if defer_sizes else []

    def set_sizes(
        self, peer: PeerId, cids: Iterable[CID], sizes: Mapping[CID, int | None] | None
    ) -> None:
        """The sizes of deferred wants (``None``: we lack the block); a CID not in ``sizes``
        (or ``sizes`` None: the lookup failed) is looked up with ``block_size`` when served."""
        tasks = self._tasks.get(peer)
        if tasks is None:
            return
        for cid in cids:
            task = tasks.get(cid)
            if task is not None and task.size is _Size.PENDING:
                task.size = sizes[cid] if sizes is not None and cid in sizes else _Size.LOOKUP
                tasks.push(task)
        if peer not in self._ready:
            self._ready.append(peer)

    def unavailable(self) -> set[CID]:
        """Wants we could not serve, or may not be able to: answered DONT_HAVE, known to be
        missing, or still being looked up (an import may have finished meanwhile)."""
        out = {cid for led in self.ledgers.values() for cid in led.waiting}
        for tasks in self._tasks.values():
            out.update(t.cid for t in tasks.values() if t.size is None or t.size is _Size.PENDING)
        return out

    def peer_disconnected(self, peer: PeerId) -> None:
        self.ledgers.pop(peer, None)
        self._tasks.pop(peer, None)
        if peer in self._ready:
            self._ready.remove(peer)

    def block_added(self, cid: CID, size: int | None = None) -> list[PeerId]:
        """We now have ``cid`` (of ``size`` bytes, if known): queue it for every peer that wants
        it. Returns those peers."""
        peers = []
        for peer, led in self.ledgers.items():
            want = led.wantlist.get(cid)
            if want is None:
                continue
            led.waiting.discard(cid)
            tasks = self._tasks.setdefault(peer, _Queue())
            known: int | _Size = _Size.LOOKUP if size is None else size
            tasks.put(_Task(cid, want.want_type, False, want.priority, known))
            if peer not in self._ready:
                self._ready.append(peer)
            peers.append(peer)
        return peers

    def has_work(self) -> bool:
        return any(self._can_send(p) for p in self._ready)

    def _can_send(self, peer: PeerId) -> bool:
        led = self.ledgers.get(peer)
        return led is not None and led.bytes_in_flight < self.config.max_bytes_in_flight

    def next_batch(self) -> Batch | None:
        """The next peer's share of work (round robin), or ``None`` when nobody can be served."""
        for _ in range(len(self._ready)):
            peer = self._ready.popleft()
            tasks = self._tasks.get(peer)
            if not tasks:
                self._tasks.pop(peer, None)
                continue
            if not self._can_send(peer):
                self._ready.append(peer)  # still has work; try again once it drains
                continue
            batch = self._fill(peer, tasks)
            if tasks:
                self._ready.append(peer)
            else:
                del self._tasks[peer]
            if not batch.is_empty():
                self.ledgers[peer].bytes_in_flight += batch.nbytes
                return batch
        return None

    def _fill(self, peer: PeerId, tasks: _Queue) -> Batch:
        cfg = self.config
        led = self.ledgers[peer]
        batch = Batch(peer)
        budget = min(cfg.target_message_bytes, cfg.max_bytes_in_flight - led.bytes_in_flight)
        while len(batch.haves) + len(batch.dont_haves) < cfg.max_presences_per_batch:
            task = tasks.pop_next()
            if task is None:
                break
            self.tasks_examined += 1
            if task.size is _Size.PENDING:
                continue  # not queued until its size comes (set_sizes pushes it again)
            size = self.block_size(task.cid) if task.size is _Size.LOOKUP else task.size
            if (
                size is not None
                and task.want_type == WantType.BLOCK
                and batch.blocks
                and batch.nbytes + size > budget
            ):
                task.size = size  # looked up once
                tasks.push(task)
                break  # the next message takes it
            tasks.remove(task.cid)
            if size is None:
                led.waiting.add(task.cid)
                if task.send_dont_have:
                    batch.dont_haves.append(task.cid)
                continue
            led.wantlist.remove(task.cid)
            if task.want_type == WantType.HAVE:
                batch.haves.append(task.cid)
            else:
                batch.blocks.append(task.cid)
                batch.nbytes += size
        return batch

    def batch_done(self, batch: Batch, sent_bytes: int) -> None:
        """The service wrote (or gave up on) ``batch``; ``sent_bytes`` of blocks went out."""
        self.bytes_sent += sent_bytes
        led = self.ledgers.get(batch.peer)
        if led is None:
            return
        led.bytes_in_flight = max(0, led.bytes_in_flight - batch.nbytes)
        led.bytes_sent += sent_bytes
        led.blocks_sent += len(batch.blocks)

"""The Kademlia routing table: k-buckets by common prefix length, with replacement caches.

Pure logic, no I/O and no clock (``now`` is passed in). Policies that matter:

* A full bucket never evicts a live peer for a newcomer. ``add`` tells the caller which peer
  was seen least recently; the caller checks it and then calls ``mark_seen`` (alive: the
  newcomer waits in the replacement cache) or ``remove`` (dead: the freshest replacement takes
  its place). Long-lived peers are the most reliable ones.
* Diversity limits against Sybil and eclipse attacks: at most ``max_per_group_bucket`` peers of
  one network group (/24 for IPv4, /48 for IPv6) per bucket and ``max_per_group_table`` in the
  whole table. ``None`` lifts a limit (loopback tests, where every peer is 127.0.0.1).
* Buckets are indexed by the common prefix length with our own key (0..255), which is the
  "unfolded" table of go-libp2p-kbucket; the lookup results are the same as with splitting.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.distance import KEY_BITS, common_prefix_len, kad_key
from peerstack.errors import UsageError

# Refreshing a bucket needs a key with a given prefix; finding one is brute force (2^cpl tries),
# so like go-libp2p-kad-dht we only refresh buckets up to this depth.
MAX_REFRESH_CPL = 15


class AddResult(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"  # already present: now the most recently seen
    FULL = "full"  # bucket full: newcomer kept as a replacement; check ``to_check``
    REJECTED = "rejected"  # ourselves, or a diversity limit


@dataclass(frozen=True, slots=True)
class AddOutcome:
    result: AddResult
    to_check: PeerId | None = None


@dataclass(slots=True)
class Entry:
    peer: PeerId
    key: int
    last_seen: float
    group: bytes | None
    addrs: tuple[Multiaddr, ...] = ()


@dataclass(slots=True)
class _Bucket:
    # Least recently seen first, as in the paper.
    entries: list[Entry] = field(default_factory=list)
    # Most recently seen last.
    replacements: list[Entry] = field(default_factory=list)
    last_refreshed: float = 0.0


def network_group(addrs: Iterable[Multiaddr]) -> bytes | None:
    """The network group of a peer for diversity limits: its first IP's /24 (v4) or /48 (v6)."""
    for addr in addrs:
        v4 = addr.value_for("ip4")
        if v4 is not None:
            return b"4" + ipaddress.IPv4Address(v4).packed[:3]
        v6 = addr.value_for("ip6")
        if v6 is not None:
            return b"6" + ipaddress.IPv6Address(v6).packed[:6]
    return None


class RoutingTable:
    """k-buckets around ``local``; see the module docstring for the policies."""

    def __init__(
        self,
        local: PeerId,
        *,
        k: int = 20,
        replacement_size: int | None = None,
        max_per_group_bucket: int | None = 2,
        max_per_group_table: int | None = 5,
    ) -> None:
        if k < 1:
            raise UsageError("k must be at least 1")
        self.local = local
        self.local_key = kad_key(local.to_bytes())
        self.k = k
        self.replacement_size = k if replacement_size is None else replacement_size
        self.max_per_group_bucket = max_per_group_bucket
        self.max_per_group_table = max_per_group_table
        self._buckets: dict[int, _Bucket] = {}
        self._entries: dict[PeerId, Entry] = {}
        self._group_counts: dict[bytes, int] = {}

    # -- queries -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer: object) -> bool:
        return peer in self._entries

    def get(self, peer: PeerId) -> Entry | None:
        return self._entries.get(peer)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def peers(self) -> list[PeerId]:
        return list(self._entries)

    def bucket_sizes(self) -> dict[int, int]:
        return {cpl: len(b.entries) for cpl, b in sorted(self._buckets.items()) if b.entries}

    def replacements(self, cpl: int) -> list[PeerId]:
        bucket = self._buckets.get(cpl)
        return [e.peer for e in bucket.replacements] if bucket else []

    def closest(
        self, key: int, count: int | None = None, exclude: PeerId | None = None
    ) -> list[PeerId]:
        """The ``count`` (default k) peers closest to ``key`` by XOR distance."""
        n = self.k if count is None else count
        entries: Iterable[Entry] = self._entries.values()
        if exclude is not None:
            entries = (e for e in entries if e.peer != exclude)
        best = heapq.nsmallest(n, entries, key=lambda e: e.key ^ key)
        return [e.peer for e in best]

    def cpl_of(self, key: int) -> int:
        return min(common_prefix_len(self.local_key, key), KEY_BITS - 1)

    # -- updates -------------------------------------------------------------------------

    def add(
        self,
        peer: PeerId,
        now: float,
        addrs: Sequence[Multiaddr] = (),
        key: int | None = None,
    ) -> AddOutcome:
        """Offer ``peer`` (just seen alive, a DHT server) to the table."""
        if peer == self.local:
            return AddOutcome(AddResult.REJECTED)
        existing = self._entries.get(peer)
        if existing is not None:
            if addrs:
                existing.addrs = tuple(addrs)
            self.mark_seen(peer, now)
            return AddOutcome(AddResult.UPDATED)
        pkey = kad_key(peer.to_bytes()) if key is None else key
        cpl = self.cpl_of(pkey)
        group = network_group(addrs)
        entry = Entry(peer, pkey, now, group, tuple(addrs))
        bucket = self._buckets.get(cpl)
        if bucket is None:
            bucket = self._buckets[cpl] = _Bucket(last_refreshed=now)
        if not self._group_allows(bucket, group):
            return AddOutcome(AddResult.REJECTED)
        if len(bucket.entries) < self.k:
            self._insert(bucket, entry)
            return AddOutcome(AddResult.ADDED)
        self._remember_replacement(bucket, entry)
        return AddOutcome(AddResult.FULL, bucket.entries[0].peer)

    def mark_seen(self, peer: PeerId, now: float) -> None:
        """``peer`` answered: move it to the most-recently-seen end of its bucket."""
        entry = self._entries.get(peer)
        if entry is None:
            return
        entry.last_seen = now
        bucket = self._buckets[self.cpl_of(entry.key)]
        bucket.entries.remove(entry)
        bucket.entries.append(entry)

    def remove(self, peer: PeerId) -> bool:
        """Drop ``peer`` (it failed); the freshest eligible replacement takes its place."""
        entry = self._entries.pop(peer, None)
        if entry is None:
            for other in self._buckets.values():
                for i, cand in enumerate(other.replacements):
                    if cand.peer == peer:
                        del other.replacements[i]
                        return True
            return False
        bucket = self._buckets[self.cpl_of(entry.key)]
        bucket.entries.remove(entry)
        self._count_group(entry.group, -1)
        while bucket.replacements:
            cand = bucket.replacements.pop()
            if self._group_allows(bucket, cand.group):
                self._insert(bucket, cand)
                break
        return True

    # -- refresh -------------------------------------------------------------------------

    def mark_refreshed(self, key: int, now: float) -> None:
        """A lookup for ``key`` just finished: its bucket counts as refreshed."""
        cpl = self.cpl_of(key)
        bucket = self._buckets.get(cpl)
        if bucket is None:
            bucket = self._buckets[cpl] = _Bucket()
        bucket.last_refreshed = now

    def stale_buckets(self, now: float, interval: float) -> list[int]:
        """Bucket indexes (up to the deepest non-empty one) not refreshed in ``interval``."""
        deepest = max((c for c, b in self._buckets.items() if b.entries), default=-1)
        out = []
        for cpl in range(min(deepest, MAX_REFRESH_CPL) + 1):
            bucket = self._buckets.get(cpl)
            if bucket is None or now - bucket.last_refreshed >= interval:
                out.append(cpl)
        return out

    def random_peer_id_in_bucket(self, cpl: int, rng: random.Random) -> PeerId:
        """A made-up PeerId whose key shares exactly ``cpl`` bits with ours (for refresh)."""
        if not 0 <= cpl <= MAX_REFRESH_CPL:
            raise UsageError(f"cannot refresh bucket {cpl}: above {MAX_REFRESH_CPL}")
        while True:
            raw = b"\x12\x20" + rng.randbytes(32)  # a sha2-256 multihash PeerId
            if common_prefix_len(self.local_key, kad_key(raw)) == cpl:
                return PeerId(raw)

    # -- internals -----------------------------------------------------------------------

    def _insert(self, bucket: _Bucket, entry: Entry) -> None:
        bucket.entries.append(entry)
        self._entries[entry.peer] = entry
        self._count_group(entry.group, 1)

    def _remember_replacement(self, bucket: _Bucket, entry: Entry) -> None:
        bucket.replacements = [e for e in bucket.replacements if e.peer != entry.peer]
        bucket.replacements.append(entry)
        if len(bucket.replacements) > self.replacement_size:
            del bucket.replacements[0]  # forget the stalest candidate: a cache, not a promise

    def _group_allows(self, bucket: _Bucket, group: bytes | None) -> bool:
        if group is None:
            return True
        if self.max_per_group_bucket is not None:
            in_bucket = sum(1 for e in bucket.entries if e.group == group)
            if in_bucket >= self.max_per_group_bucket:
                return False
        if self.max_per_group_table is not None:
            return self._group_counts.get(group, 0) < self.max_per_group_table
        return True

    def _count_group(self, group: bytes | None, delta: int) -> None:
        if group is None:
            return
        n = self._group_counts.get(group, 0) + delta
        if n > 0:
            self._group_counts[group] = n
        else:
            self._group_counts.pop(group, None)

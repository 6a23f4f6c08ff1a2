"""What we know about other peers: addresses with TTLs, keys, protocols, metadata, latency.

Everything in here is learned from the network (identify, the DHT, gossip), so every collection
is bounded: a number of peers (least recently updated evicted first), addresses per peer (the
first ones of a call are kept, then the soonest to expire make room), protocols and metadata
keys per peer (refused past the limit).
The clock is injectable so tests and the simulator can drive expiry.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from peerstack.core.identity import PublicKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import LimitExceeded, PeerIdMismatch, UsageError

#: Address TTLs, in seconds, in the spirit of go-libp2p's peerstore.
PERMANENT_ADDR_TTL = math.inf
CONNECTED_ADDR_TTL = 10 * 365 * 24 * 3600.0  # kept while connected; lowered on disconnect
RECENTLY_CONNECTED_ADDR_TTL = 15 * 60.0
PROVIDER_ADDR_TTL = 30 * 60.0
TEMP_ADDR_TTL = 2 * 60.0

#: Weight of a new latency sample in the exponentially weighted moving average.
LATENCY_EWMA_ALPHA = 0.1

MetadataValue = str | int | float | bytes | bool


@dataclass(slots=True)
class _PeerRecord:
    # addr -> (expiry time, the TTL it was given): the TTL lets update_addrs() move the
    # addresses of one kind (e.g. "connected") to another without touching the rest.
    addrs: dict[Multiaddr, tuple[float, float]] = field(default_factory=dict)
    public_key: PublicKey | None = None
    protocols: tuple[str, ...] = ()
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    latency: float | None = None


class Peerstore:
    """An in-memory, bounded store of facts about peers."""

    def __init__(
        self,
        *,
        max_peers: int = 10_000,
        max_addrs_per_peer: int = 32,
        max_protocols_per_peer: int = 128,
        max_protocol_length: int = 256,
        max_metadata_keys: int = 32,
        max_metadata_value: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(max_peers, max_addrs_per_peer, max_protocols_per_peer, max_metadata_keys) < 1:
            raise UsageError("peerstore limits must be at least 1")
        self._max_peers = max_peers
        self._max_addrs = max_addrs_per_peer
        self._max_protocols = max_protocols_per_peer
        self._max_protocol_length = max_protocol_length
        self._max_metadata_keys = max_metadata_keys
        self._max_metadata_value = max_metadata_value
        self._clock = clock
        # Ordered by last update: the first entry is the eviction candidate.
        self._peers: OrderedDict[PeerId, _PeerRecord] = OrderedDict()
        self._protected: Callable[[PeerId], bool] = lambda _peer: False

    def set_protect(self, is_protected: Callable[[PeerId], bool]) -> None:
        """Never evict peers for which ``is_protected`` is true (the host passes 'connected')."""
        self._protected = is_protected

    # -- records ---------------------------------------------------------------------------

    def _record(self, peer: PeerId) -> _PeerRecord:
        rec = self._peers.get(peer)
        if rec is not None:
            self._peers.move_to_end(peer)
            return rec
        if len(self._peers) >= self._max_peers:
            self._evict_one()
        rec = _PeerRecord()
        self._peers[peer] = rec
        return rec

    def _evict_one(self) -> None:
        for candidate in self._peers:
            if not self._protected(candidate):
                del self._peers[candidate]
                return
        raise LimitExceeded(f"peerstore full ({self._max_peers} peers, all protected)")

    def peers(self) -> list[PeerId]:
        return list(self._peers)

    def remove_peer(self, peer: PeerId) -> None:
        self._peers.pop(peer, None)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    # -- addresses -------------------------------------------------------------------------

    def add_addrs(self, peer: PeerId, addrs: Iterable[Multiaddr], ttl: float) -> None:
        """Remember ``addrs`` for ``ttl`` seconds; a longer TTL than the known one wins.

        A trailing ``/p2p/<id>`` is stripped; one naming another peer is refused
        (``PeerIdMismatch``, nothing stored). Past ``max_addrs_per_peer`` only the first ones are
        kept: the limit is our own bookkeeping bound, tighter than what the wire protocols allow
        (the DHT carries up to 64 addresses per peer), so a peer that lists more is not at fault.
        """
        if ttl <= 0:
            self.clear_addrs(peer, addrs)
            return
        cleaned: list[Multiaddr] = []
        peer_bytes = peer.to_bytes()
        for addr in addrs:
            pid = addr.p2p_bytes
            if pid is None:
                cleaned.append(addr)
                continue
            if pid != peer_bytes:
                raise PeerIdMismatch(f"address {addr} names another peer than {peer}")
            cleaned.append(addr.decapsulate_p2p()[0])
        # Unique, in the order given, at most the limit: the first addresses are the ones a peer
        # lists as its best (go and js put public and preferred transports first).
        cleaned = list(dict.fromkeys(cleaned))[: self._max_addrs]
        if not cleaned:
            return
        now = self._clock()
        expiry = now + ttl
        rec = self._record(peer)
        self._expire_addrs(rec, now)
        for addr in cleaned:
            old = rec.addrs.get(addr)
            if old is None or old[0] < expiry:
                rec.addrs[addr] = (expiry, ttl)
        while len(rec.addrs) > self._max_addrs:
            # Make room by dropping the addresses that would expire first; the new ones came
            # in the same call and the cut above guarantees they fit.
            soonest = min(rec.addrs, key=lambda a: rec.addrs[a][0])
            del rec.addrs[soonest]

    def set_addr_ttl(self, peer: PeerId, ttl: float) -> None:
        """Set the TTL of every known address of ``peer`` (e.g. lower it on disconnect)."""
        rec = self._peers.get(peer)
        if rec is None:
            return
        expiry = self._clock() + ttl
        for addr in rec.addrs:
            rec.addrs[addr] = (expiry, ttl)

    def update_addrs(self, peer: PeerId, old_ttl: float, new_ttl: float) -> None:
        """Give the addresses that were added with ``old_ttl`` the TTL ``new_ttl`` from now
        (e.g. connected -> recently connected on disconnect; permanent ones stay)."""
        rec = self._peers.get(peer)
        if rec is None:
            return
        expiry = self._clock() + new_ttl
        for addr, (_, ttl) in list(rec.addrs.items()):
            if ttl == old_ttl:
                rec.addrs[addr] = (expiry, new_ttl)

    def clear_addrs(self, peer: PeerId, addrs: Iterable[Multiaddr] | None = None) -> None:
        rec = self._peers.get(peer)
        if rec is None:
            return
        if addrs is None:
            rec.addrs.clear()
            return
        for addr in addrs:
            rec.addrs.pop(addr.decapsulate_p2p()[0], None)

    def addrs(self, peer: PeerId) -> list[Multiaddr]:
        """Unexpired addresses, the longest-lived first."""
        rec = self._peers.get(peer)
        if rec is None:
            return []
        self._expire_addrs(rec, self._clock())
        return sorted(rec.addrs, key=lambda a: rec.addrs[a][0], reverse=True)

    @staticmethod
    def _expire_addrs(rec: _PeerRecord, now: float) -> None:
        expired = [a for a, (exp, _) in rec.addrs.items() if exp <= now]
        for a in expired:
            del rec.addrs[a]

    # -- keys ------------------------------------------------------------------------------

    def set_public_key(self, peer: PeerId, key: PublicKey) -> None:
        if not peer.matches(key):
            raise PeerIdMismatch(f"public key does not belong to {peer}")
        self._record(peer).public_key = key

    def public_key(self, peer: PeerId) -> PublicKey | None:
        rec = self._peers.get(peer)
        if rec is not None and rec.public_key is not None:
            return rec.public_key
        return peer.extract_public_key()

    # -- protocols -------------------------------------------------------------------------

    def set_protocols(self, peer: PeerId, protocols: Sequence[str]) -> None:
        """Replace the protocols ``peer`` supports (as announced by identify)."""
        unique = tuple(dict.fromkeys(protocols))
        if len(unique) > self._max_protocols:
            raise LimitExceeded(f"{len(unique)} protocols exceed {self._max_protocols} per peer")
        for p in unique:
            if len(p) > self._max_protocol_length:
                raise LimitExceeded(f"protocol id of {len(p)} characters is too long")
        self._record(peer).protocols = unique

    def add_protocols(self, peer: PeerId, protocols: Sequence[str]) -> None:
        rec = self._peers.get(peer)
        current = rec.protocols if rec is not None else ()
        self.set_protocols(peer, (*current, *protocols))

    def protocols(self, peer: PeerId) -> list[str]:
        rec = self._peers.get(peer)
        return list(rec.protocols) if rec is not None else []

    def supports(self, peer: PeerId, protocols: Sequence[str]) -> list[str]:
        """Those of ``protocols`` that ``peer`` announced, in the order asked."""
        rec = self._peers.get(peer)
        if rec is None:
            return []
        known = set(rec.protocols)
        return [p for p in protocols if p in known]

    # -- metadata --------------------------------------------------------------------------

    def set_metadata(self, peer: PeerId, key: str, value: MetadataValue) -> None:
        """Store e.g. ``agent_version`` / ``protocol_version`` (bounded in keys and size)."""
        size = len(value) if isinstance(value, str | bytes) else 0
        if size > self._max_metadata_value:
            raise LimitExceeded(f"metadata value of {size} bytes is too large")
        rec = self._record(peer)
        if key not in rec.metadata and len(rec.metadata) >= self._max_metadata_keys:
            raise LimitExceeded(f"more than {self._max_metadata_keys} metadata keys")
        rec.metadata[key] = value

    def metadata(self, peer: PeerId, key: str) -> MetadataValue | None:
        rec = self._peers.get(peer)
        return rec.metadata.get(key) if rec is not None else None

    # -- latency ---------------------------------------------------------------------------

    def record_latency(self, peer: PeerId, rtt: float) -> None:
        """Fold one round-trip sample (seconds) into the peer's moving average."""
        if rtt < 0 or not math.isfinite(rtt):
            raise UsageError(f"invalid round-trip time {rtt}")
        rec = self._record(peer)
        if rec.latency is None:
            rec.latency = rtt
        else:
            rec.latency += LATENCY_EWMA_ALPHA * (rtt - rec.latency)

    def latency(self, peer: PeerId) -> float | None:
        rec = self._peers.get(peer)
        return rec.latency if rec is not None else None

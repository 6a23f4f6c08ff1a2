"""Peerstore: TTLs, bounds, keys, protocols, metadata, latency."""

from __future__ import annotations

import pytest

from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import LimitExceeded, PeerIdMismatch, UsageError
from peerstack.host.peerstore import (
    CONNECTED_ADDR_TTL,
    PERMANENT_ADDR_TTL,
    RECENTLY_CONNECTED_ADDR_TTL,
    Peerstore,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_peer() -> tuple[PrivateKey, PeerId]:
    key = PrivateKey.generate()
    return key, PeerId.from_public_key(key.public_key)


def addr(port: int) -> Multiaddr:
    return Multiaddr(f"/ip4/10.0.0.1/tcp/{port}")


def test_addrs_expire_and_longer_ttl_wins() -> None:
    clock = Clock()
    ps = Peerstore(clock=clock)
    _, peer = new_peer()
    ps.add_addrs(peer, [addr(1)], ttl=10)
    ps.add_addrs(peer, [addr(2)], ttl=100)
    ps.add_addrs(peer, [addr(1)], ttl=5)  # shorter: ignored
    assert ps.addrs(peer) == [addr(2), addr(1)]
    clock.now += 11
    assert ps.addrs(peer) == [addr(2)]
    ps.add_addrs(peer, [addr(3)], ttl=PERMANENT_ADDR_TTL)
    clock.now += 1e9
    assert ps.addrs(peer) == [addr(3)]
    ps.add_addrs(peer, [addr(3)], ttl=0)  # ttl 0 removes
    assert ps.addrs(peer) == []


def test_p2p_suffix_stripped_and_checked() -> None:
    ps = Peerstore()
    _, peer = new_peer()
    _, other = new_peer()
    ps.add_addrs(peer, [addr(1).encapsulate(f"/p2p/{peer}")], ttl=60)
    assert ps.addrs(peer) == [addr(1)]
    with pytest.raises(PeerIdMismatch):
        ps.add_addrs(peer, [addr(2).encapsulate(f"/p2p/{other}")], ttl=60)


def test_addrs_per_peer_bounded() -> None:
    clock = Clock()
    ps = Peerstore(max_addrs_per_peer=3, clock=clock)
    _, peer = new_peer()
    ps.add_addrs(peer, [addr(1)], ttl=10)
    ps.add_addrs(peer, [addr(2), addr(3)], ttl=50)
    ps.add_addrs(peer, [addr(4)], ttl=30)  # evicts the soonest to expire: addr(1)
    assert set(ps.addrs(peer)) == {addr(2), addr(3), addr(4)}
    # More than the limit in one call: the first ones are kept, nothing is raised (the wire
    # allows more than our bookkeeping bound; the DHT sends up to 64 per peer).
    ps.add_addrs(peer, [addr(p) for p in range(10, 14)], ttl=60)
    assert set(ps.addrs(peer)) == {addr(10), addr(11), addr(12)}


def test_many_addrs_keep_the_first_unique_ones() -> None:
    ps = Peerstore(max_addrs_per_peer=32)
    _, peer = new_peer()
    given = [addr(1), addr(1)] + [addr(p) for p in range(100, 164)]  # 65 unique, as the DHT may
    ps.add_addrs(peer, [a.encapsulate(f"/p2p/{peer}") for a in given], ttl=60)
    kept = ps.addrs(peer)
    assert len(kept) == 32
    assert set(kept) == {addr(1)} | {addr(p) for p in range(100, 131)}


def test_peers_bounded_lru_and_protection() -> None:
    ps = Peerstore(max_peers=2)
    peers = [new_peer()[1] for _ in range(3)]
    ps.add_addrs(peers[0], [addr(1)], 60)
    ps.add_addrs(peers[1], [addr(1)], 60)
    ps.add_addrs(peers[2], [addr(1)], 60)
    assert set(ps.peers()) == {peers[1], peers[2]}
    ps.set_protect(lambda p: True)
    with pytest.raises(LimitExceeded):
        ps.add_addrs(peers[0], [addr(1)], 60)
    assert len(ps) == 2


def test_public_key_checked_and_inline() -> None:
    ps = Peerstore()
    key, peer = new_peer()
    other_key, _ = new_peer()
    assert ps.public_key(peer) == key.public_key  # inlined in an Ed25519 PeerId
    with pytest.raises(PeerIdMismatch):
        ps.set_public_key(peer, other_key.public_key)
    ps.set_public_key(peer, key.public_key)
    assert ps.public_key(peer) == key.public_key


def test_protocols_and_supports() -> None:
    ps = Peerstore(max_protocols_per_peer=3)
    _, peer = new_peer()
    assert ps.supports(peer, ["/a"]) == []
    ps.set_protocols(peer, ["/a", "/b", "/a"])
    assert ps.protocols(peer) == ["/a", "/b"]
    assert ps.supports(peer, ["/c", "/b", "/a"]) == ["/b", "/a"]
    ps.add_protocols(peer, ["/c"])
    with pytest.raises(LimitExceeded):
        ps.add_protocols(peer, ["/d"])
    with pytest.raises(LimitExceeded):
        ps.set_protocols(peer, ["/" + "x" * 1000])
    assert ps.protocols(peer) == ["/a", "/b", "/c"]


def test_metadata_bounded() -> None:
    ps = Peerstore(max_metadata_keys=2, max_metadata_value=10)
    _, peer = new_peer()
    ps.set_metadata(peer, "agent_version", "py/1")
    ps.set_metadata(peer, "protocol_version", "ipfs/0.1")
    ps.set_metadata(peer, "agent_version", "py/2")  # overwrite is fine
    assert ps.metadata(peer, "agent_version") == "py/2"
    assert ps.metadata(peer, "nope") is None
    with pytest.raises(LimitExceeded):
        ps.set_metadata(peer, "third", 1)
    with pytest.raises(LimitExceeded):
        ps.set_metadata(peer, "agent_version", "x" * 11)


def test_latency_ewma() -> None:
    ps = Peerstore()
    _, peer = new_peer()
    assert ps.latency(peer) is None
    ps.record_latency(peer, 0.1)
    assert ps.latency(peer) == pytest.approx(0.1)
    ps.record_latency(peer, 0.2)
    assert ps.latency(peer) == pytest.approx(0.11)
    with pytest.raises(UsageError):
        ps.record_latency(peer, -1)


def test_update_addrs_moves_only_one_kind() -> None:
    clock = Clock()
    ps = Peerstore(clock=clock)
    _, peer = new_peer()
    ps.add_addrs(peer, [addr(1)], ttl=CONNECTED_ADDR_TTL)
    ps.add_addrs(peer, [addr(2)], ttl=PERMANENT_ADDR_TTL)
    ps.update_addrs(peer, CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL)
    clock.now += RECENTLY_CONNECTED_ADDR_TTL + 1
    assert ps.addrs(peer) == [addr(2)]
    ps.set_addr_ttl(peer, 5)
    clock.now += 6
    assert ps.addrs(peer) == []

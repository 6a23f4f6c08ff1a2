"""Routing table: XOR order, buckets, no eviction of live peers, diversity limits, refresh."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.distance import common_prefix_len, kad_key
from peerstack.dht.routing_table import AddResult, RoutingTable, network_group


def pid(rng: random.Random) -> PeerId:
    return PeerId(b"\x12\x20" + rng.randbytes(32))


def addr(ip: str) -> list[Multiaddr]:
    return [Multiaddr(f"/ip4/{ip}/tcp/4001")]


def peer_in_bucket(rt: RoutingTable, cpl: int, rng: random.Random) -> PeerId:
    return rt.random_peer_id_in_bucket(cpl, rng)


def test_distance_hashes_keys_first() -> None:
    a, b = b"alpha", b"beta"
    assert kad_key(a) != int.from_bytes(a, "big")
    assert common_prefix_len(kad_key(a), kad_key(a)) == 256
    assert 0 <= common_prefix_len(kad_key(a), kad_key(b)) < 256


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 120))
def test_closest_matches_brute_force(seed: int, n: int) -> None:
    rng = random.Random(seed)
    rt = RoutingTable(pid(rng), k=20, max_per_group_bucket=None, max_per_group_table=None)
    peers = [pid(rng) for _ in range(n)]
    for p in peers:
        rt.add(p, 0.0)
    target = kad_key(rng.randbytes(8))
    got = rt.closest(target, 10)
    inside = rt.peers()
    expected = sorted(inside, key=lambda p: kad_key(p.to_bytes()) ^ target)[:10]
    assert got == expected
    # Every bucket holds at most k peers, and the table never holds ourselves.
    assert all(size <= 20 for size in rt.bucket_sizes().values())
    assert rt.local not in rt


def test_full_bucket_keeps_the_live_peer_and_queues_the_newcomer() -> None:
    rng = random.Random(1)
    rt = RoutingTable(pid(rng), k=3, max_per_group_bucket=None, max_per_group_table=None)
    first = [peer_in_bucket(rt, 0, rng) for _ in range(3)]
    for i, p in enumerate(first):
        assert rt.add(p, float(i)).result is AddResult.ADDED
    newcomer = peer_in_bucket(rt, 0, rng)
    outcome = rt.add(newcomer, 10.0)
    assert outcome.result is AddResult.FULL
    assert outcome.to_check == first[0]  # the least recently seen
    assert newcomer not in rt
    assert rt.replacements(0) == [newcomer]
    # The old peer answered its check: it stays, the newcomer keeps waiting.
    rt.mark_seen(first[0], 11.0)
    assert first[0] in rt
    assert newcomer not in rt
    # Now the least recently seen is first[1]; it fails: the newcomer replaces it.
    assert rt.add(peer_in_bucket(rt, 0, rng), 12.0).to_check == first[1]
    rt.remove(first[1])
    assert first[1] not in rt
    assert len(rt.bucket_sizes()) == 1
    assert rt.bucket_sizes()[0] == 3


def test_seen_again_moves_to_the_back() -> None:
    rng = random.Random(2)
    rt = RoutingTable(pid(rng), k=2, max_per_group_bucket=None, max_per_group_table=None)
    a, b = peer_in_bucket(rt, 1, rng), peer_in_bucket(rt, 1, rng)
    rt.add(a, 0.0)
    rt.add(b, 1.0)
    assert rt.add(a, 2.0).result is AddResult.UPDATED
    assert rt.add(peer_in_bucket(rt, 1, rng), 3.0).to_check == b


def test_diversity_limits_per_bucket_and_table() -> None:
    rng = random.Random(3)
    rt = RoutingTable(pid(rng), k=20, max_per_group_bucket=2, max_per_group_table=3)
    same_bucket = [peer_in_bucket(rt, 0, rng) for _ in range(3)]
    results = [rt.add(p, 0.0, addr(f"1.2.3.{i + 1}")).result for i, p in enumerate(same_bucket)]
    assert results == [AddResult.ADDED, AddResult.ADDED, AddResult.REJECTED]
    # Another /24 is fine in the same bucket.
    assert rt.add(same_bucket[2], 0.0, addr("1.2.4.1")).result is AddResult.ADDED
    # The table-wide limit: a third peer of 1.2.3.0/24 in another bucket, then no fourth.
    other = [peer_in_bucket(rt, 1, rng) for _ in range(2)]
    assert rt.add(other[0], 0.0, addr("1.2.3.50")).result is AddResult.ADDED
    assert rt.add(other[1], 0.0, addr("1.2.3.51")).result is AddResult.REJECTED
    # Removing one frees a slot.
    rt.remove(same_bucket[0])
    assert rt.add(other[1], 0.0, addr("1.2.3.51")).result is AddResult.ADDED


def test_limits_lifted_for_loopback() -> None:
    rng = random.Random(4)
    rt = RoutingTable(pid(rng), k=20, max_per_group_bucket=None, max_per_group_table=None)
    peers = [peer_in_bucket(rt, 0, rng) for _ in range(10)]
    for p in peers:
        assert rt.add(p, 0.0, addr("127.0.0.1")).result is AddResult.ADDED


def test_network_group() -> None:
    assert network_group(addr("10.1.2.3")) == network_group(addr("10.1.2.200"))
    assert network_group(addr("10.1.2.3")) != network_group(addr("10.1.3.3"))
    six = [Multiaddr("/ip6/2001:db8:1:2::5/tcp/1")]
    assert network_group(six) == network_group([Multiaddr("/ip6/2001:db8:1:ffff::9/tcp/1")])
    assert network_group([]) is None


def test_refresh_targets_land_in_their_bucket() -> None:
    rng = random.Random(5)
    rt = RoutingTable(pid(rng))
    for cpl in (0, 3, 9):
        target = rt.random_peer_id_in_bucket(cpl, rng)
        assert rt.cpl_of(kad_key(target.to_bytes())) == cpl
    for _ in range(60):
        rt.add(pid(rng), 0.0)
    stale = rt.stale_buckets(1000.0, 600.0)
    assert stale
    assert stale[0] == 0
    for cpl in stale:
        rt.mark_refreshed(kad_key(rt.random_peer_id_in_bucket(cpl, rng).to_bytes()), 1000.0)
    assert rt.stale_buckets(1001.0, 600.0) == []


def test_removing_unknown_peer_and_replacement() -> None:
    rng = random.Random(6)
    rt = RoutingTable(pid(rng), k=1, max_per_group_bucket=None, max_per_group_table=None)
    a, b = peer_in_bucket(rt, 0, rng), peer_in_bucket(rt, 0, rng)
    rt.add(a, 0.0)
    rt.add(b, 0.0)
    assert rt.replacements(0) == [b]
    assert rt.remove(b)  # from the replacement cache
    assert rt.replacements(0) == []
    assert not rt.remove(pid(rng))
    assert rt.add(rt.local, 0.0).result is AddResult.REJECTED

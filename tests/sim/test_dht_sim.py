"""The DHT service on the simulated host: the full protocol, churn, and hostile peers."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from peerstack.core import multihash, varint
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.config import DhtConfig, Mode
from peerstack.dht.distance import kad_key
from peerstack.dht.messages import (
    PROTOCOL_ID,
    KadMessage,
    KadRecord,
    MessageType,
    PeerInfo,
    decode,
    encode,
)
from peerstack.dht.providers import MemoryDhtStore, SqliteDhtStore, StoreLimits
from peerstack.dht.records import create_ipns_record, ipns_key, parse_ipns_record
from peerstack.dht.service import KadDHT, ValueNotFound
from peerstack.errors import PeerIdMismatch, StreamReset, UsageError
from peerstack.host.interface import Host, Stream, read_length_prefixed, write_length_prefixed
from sim.simhost import SimHost, SimNetwork, run

T = TypeVar("T")


def config(**kw: object) -> DhtConfig:
    base: dict[str, object] = {"background": False, "rpc_timeout": 5.0, "max_cached_streams": 8}
    base.update(kw)
    return DhtConfig(**base)  # type: ignore[arg-type]


def p2p_addr(host: Host) -> Multiaddr:
    return host.listen_addrs()[0].encapsulate(f"/p2p/{host.peer_id}")


async def build(net: SimNetwork, n: int, **kw: object) -> list[KadDHT]:
    """``n`` server nodes, all bootstrapped (the real path) from the first one."""
    first = KadDHT(net.add_host(), config(**kw), rng=random.Random(0))
    await first.start()
    dhts = [first]
    for i in range(1, n):
        cfg = config(bootstrap_peers=[p2p_addr(first.host)], **kw)
        dht = KadDHT(net.add_host(), cfg, rng=random.Random(i))
        await dht.start()
        assert await dht.bootstrap()
        dhts.append(dht)
    for dht in dhts:  # a second pass, as periodic refresh would do
        await dht.refresh()
    return dhts


def sim(make: Callable[[SimNetwork], Coroutine[Any, Any, T]]) -> T:
    net = SimNetwork(rng=random.Random(42))
    return run(make(net))


def cid_multihash(data: bytes) -> bytes:
    return multihash.digest(data).to_bytes()


def test_bootstrap_then_find_every_peer() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 40)
        assert all(len(d.routing_table) >= 10 for d in dhts)
        rng = random.Random(1)
        for _ in range(30):
            a, b = rng.sample(dhts, 2)
            info = await a.find_peer(b.host.peer_id)
            assert info is not None
            assert info.peer_id == b.host.peer_id
            assert b.host.listen_addrs()[0] in info.addrs
        # Closest peers agree with the truth.
        key = b"some key"
        got = await dhts[3].get_closest_peers(key)
        everyone = [d.host.peer_id for d in dhts if d is not dhts[3]]
        truth = sorted(everyone, key=lambda p: kad_key(p.to_bytes()) ^ kad_key(key))
        assert got[:3] == truth[:3]  # beta = 3: the three closest are certain
        assert await dhts[0].find_peer(dhts[0].host.peer_id) is not None

    sim(main)


def test_ipns_put_get_and_stale_copies_corrected() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 30)
        owner = PrivateKey.from_seed(b"\x07" * 32)
        name = PeerId.from_public_key(owner.public_key)
        key = ipns_key(name)
        eol = time.time_ns() + 86_400 * 10**9
        old = create_ipns_record(owner, b"/ipfs/old", 1, eol)
        new = create_ipns_record(owner, b"/ipfs/new", 2, eol)
        assert await dhts[1].put_value(key, old) >= 10
        assert await dhts[2].get_value(key) == old
        assert await dhts[1].put_value(key, new) >= 10
        holders = [d for d in dhts if d.store.get_record(key) is not None and d is not dhts[1]]
        stale = holders[0]
        stale.store.put_record(key, old, "")  # a peer that missed the update
        got = await dhts[5].get_value(key, quorum=len(dhts))
        assert parse_ipns_record(name, got, time.time()).sequence == 2
        held = stale.store.get_record(key)
        assert held is not None
        assert held[0] == new  # corrected by the quorum get
        # An older record is refused by a peer holding a newer one.
        assert await dhts[3].put_value(key, old) == 0
        with pytest.raises(ValueNotFound):
            await dhts[4].get_value(ipns_key(dhts[0].host.peer_id))
        with pytest.raises(UsageError):
            await dhts[4].get_value(key, quorum=0)

    sim(main)


def test_provide_and_find_providers() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 30)
        key = cid_multihash(b"block")
        assert await dhts[7].provide(key) >= 10
        assert await dhts[8].provide(key) >= 10
        found = await dhts[20].find_providers(key)
        assert {p.peer_id for p in found} == {dhts[7].host.peer_id, dhts[8].host.peer_id}
        assert all(p.addrs for p in found)
        one = await dhts[21].find_providers(key, count=1)
        assert len(one) == 1
        assert await dhts[22].find_providers(cid_multihash(b"nobody")) == []
        with pytest.raises(UsageError):
            await dhts[7].provide(b"not a multihash")
        # Republishing: nothing is due right after providing, everything after 22 h.
        assert await dhts[7].republish() == 0

    sim(main)


def test_client_mode_asks_but_never_serves() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 20)
        host = net.add_host()
        client = KadDHT(host, config(mode=Mode.CLIENT, bootstrap_peers=[p2p_addr(dhts[0].host)]))
        await client.start()
        assert not host.handles(PROTOCOL_ID)
        assert await client.bootstrap()
        assert await client.find_peer(dhts[11].host.peer_id) is not None
        key = cid_multihash(b"from a client")
        await dhts[3].provide(key)
        assert [p.peer_id for p in await client.find_providers(key)] == [dhts[3].host.peer_id]
        for d in dhts:
            await d.refresh()
        assert all(host.peer_id not in d.routing_table for d in dhts)

    sim(main)


def test_churn_values_survive_and_dead_peers_leave_tables() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 45, rpc_timeout=2.0)
        keys = []
        for i in range(12):
            owner = PrivateKey.from_seed(bytes([i + 1]) * 32)
            key = ipns_key(PeerId.from_public_key(owner.public_key))
            rec = create_ipns_record(owner, b"/ipfs/v%d" % i, 1, time.time_ns() + 10**14)
            await dhts[i].put_value(key, rec)
            keys.append(key)
        rng = random.Random(3)
        dead = rng.sample(dhts[1:], 14)  # 30 %
        for d in dead:
            net.kill(d.host.peer_id)
        alive = [d for d in dhts if d not in dead]
        for key in keys:
            reader = rng.choice(alive)
            reader.store.remove_record(key)
            assert await reader.get_value(key, quorum=1)
        dead_ids = {d.host.peer_id for d in dead}
        asker = alive[0]
        before = sum(1 for p in asker.routing_table.peers() if p in dead_ids)
        for _ in range(3):
            await asker.refresh()
        await asyncio.sleep(5)  # requests that outlived their lookups settle
        after = sum(1 for p in asker.routing_table.peers() if p in dead_ids)
        assert after < before

    sim(main)


async def _raw(host: SimHost, target: KadDHT) -> Stream:
    return await host.new_stream(target.host.peer_id, [PROTOCOL_ID])


def test_bad_requests_are_refused_and_nothing_stored() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 5)
        victim = dhts[0]
        evil = net.add_host()
        key = cid_multihash(b"x")

        async def send(msg: bytes) -> None:
            s = await _raw(evil, victim)
            await write_length_prefixed(s, msg)
            with pytest.raises(StreamReset):
                await read_length_prefixed(s, 10**6)

        other = dhts[1].host.peer_id
        # ADD_PROVIDER naming another peer.
        await send(
            encode(KadMessage(MessageType.ADD_PROVIDER, key=key, provider_peers=[PeerInfo(other)]))
        )
        # ADD_PROVIDER with a key that is no multihash.
        await send(
            encode(
                KadMessage(
                    MessageType.ADD_PROVIDER, key=b"\xff", provider_peers=[PeerInfo(evil.peer_id)]
                )
            )
        )
        # A record that fails validation, one over the size limit, one in an unknown namespace.
        ipns = ipns_key(evil.peer_id)
        await send(
            encode(KadMessage(MessageType.PUT_VALUE, key=ipns, record=KadRecord(ipns, b"junk")))
        )
        big = b"/pk/" + evil.peer_id.to_bytes()
        await send(
            encode(KadMessage(MessageType.PUT_VALUE, key=big, record=KadRecord(big, b"v" * 20_000)))
        )
        await send(
            encode(KadMessage(MessageType.PUT_VALUE, key=b"/x/y", record=KadRecord(b"/x/y", b"v")))
        )
        # Garbage, and a length prefix announcing 4 GiB.
        await send(b"\xff\xff\xff")
        s = await _raw(evil, victim)
        await s.write(varint.encode(4 * 2**30))
        with pytest.raises(StreamReset):
            await s.read()
        assert victim.store.get_providers(key, 0.0, 10) == []
        assert victim.store.get_record(ipns) is None
        assert victim.store.get_record(big) is None
        assert victim.counters.requests_refused >= 7
        # The node still serves honest requests.
        s = await _raw(evil, victim)
        await write_length_prefixed(s, encode(KadMessage(MessageType.FIND_NODE, key=key)))
        reply = await read_length_prefixed(s, 10**6)
        assert reply is not None
        assert decode(reply).closer_peers
        # Several requests on one stream.
        await write_length_prefixed(s, encode(KadMessage(MessageType.PING)))
        reply = await read_length_prefixed(s, 10**6)
        assert reply is not None
        assert decode(reply).type is MessageType.PING
        # A valid ADD_PROVIDER for itself is accepted.
        await write_length_prefixed(
            s,
            encode(
                KadMessage(
                    MessageType.ADD_PROVIDER, key=key, provider_peers=[PeerInfo(evil.peer_id)]
                )
            ),
        )
        await asyncio.sleep(1)
        assert [e.peer for e in victim.store.get_providers(key, 0.0, 10)] == [evil.peer_id]

    sim(main)


def test_stream_flood_is_bounded() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 3, max_inbound_streams_per_peer=4, stream_idle_timeout=30.0)
        victim = dhts[0]
        evil = net.add_host()
        streams = [await _raw(evil, victim) for _ in range(10)]
        await asyncio.sleep(1)
        assert victim.counters.streams_refused == 6
        reset = 0
        for s in streams:
            try:
                await s.read()
            except StreamReset:
                reset += 1
        assert reset == 10  # 6 refused at once, 4 closed after the idle timeout
        # Requests per stream are bounded too.
        s = await _raw(evil, victim)
        victim.config.max_requests_per_stream = 3
        ping = encode(KadMessage(MessageType.PING))
        for _ in range(3):
            await write_length_prefixed(s, ping)
            assert await read_length_prefixed(s, 100) is not None
        await write_length_prefixed(s, ping)
        with pytest.raises(StreamReset):
            await read_length_prefixed(s, 100)

    sim(main)


def _close_peer(target: int, rng: random.Random, bits: int = 6) -> PeerId:
    while True:
        p = PeerId(b"\x12\x20" + rng.randbytes(32))
        if (kad_key(p.to_bytes()) ^ target) >> (256 - bits) == 0:
            return p


def test_queries_complete_despite_garbage_and_liars() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 40, rpc_timeout=2.0)
        rng = random.Random(9)
        garbage, liar = net.add_host(), net.add_host()

        async def garbage_handler(stream: Stream) -> None:
            while await read_length_prefixed(stream, 10**6) is not None:
                await stream.write(varint.encode(40) + rng.randbytes(40))

        async def liar_handler(stream: Stream) -> None:
            while (raw := await read_length_prefixed(stream, 10**6)) is not None:
                req = decode(raw)
                target = kad_key(req.key)
                fakes = [PeerInfo(_close_peer(target, rng)) for _ in range(20)]
                reply = KadMessage(req.type, key=req.key, closer_peers=fakes)
                await write_length_prefixed(stream, encode(reply))

        garbage.set_stream_handler(PROTOCOL_ID, garbage_handler)
        liar.set_stream_handler(PROTOCOL_ID, liar_handler)
        for d in dhts:
            d.routing_table.add(garbage.peer_id, 0.0)
            d.routing_table.add(liar.peer_id, 0.0)
        ok = 0
        for _ in range(15):
            a, b = rng.sample(dhts, 2)
            a.routing_table.add(garbage.peer_id, 0.0)
            a.routing_table.add(liar.peer_id, 0.0)
            if await a.find_peer(b.host.peer_id) is not None:
                ok += 1
            assert a.last_lookup.requests <= 200
        assert ok == 15
        # The garbage peer was dropped from the tables of those that asked it.
        assert any(garbage.peer_id not in d.routing_table for d in dhts)

    sim(main)


def test_routing_table_persists_across_restart(tmp_path: Path) -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 15)
        host = net.add_host()
        store = SqliteDhtStore(tmp_path / "state.db")
        node = KadDHT(host, config(bootstrap_peers=[p2p_addr(dhts[0].host)]), store=store)
        await node.start()
        await node.bootstrap()
        size = len(node.routing_table)
        assert size >= 10
        await node.stop()
        store.close()
        again = KadDHT(host, config(), store=SqliteDhtStore(tmp_path / "state.db"))
        await again.start()
        assert len(again.routing_table) == size  # rejoins at once, no bootstrap needed
        assert await again.find_peer(dhts[9].host.peer_id) is not None
        await again.stop()

    sim(main)


def test_background_bootstrap_retries_with_backoff() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 10)
        seed = dhts[0].host.peer_id
        net.kill(seed)
        host = net.add_host()
        node = KadDHT(
            host,
            config(
                background=True, bootstrap_peers=[p2p_addr(dhts[0].host)], bootstrap_backoff=2.0
            ),
        )
        await node.start()
        await asyncio.sleep(30)
        assert len(node.routing_table) == 0
        net.revive(seed)
        await asyncio.sleep(600)
        assert len(node.routing_table) >= 5
        await node.stop()

    sim(main)


def test_request_flood_from_one_peer_is_cut_off() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 3, peer_request_rate=1.0, peer_request_burst=20.0)
        victim = dhts[0]
        evil = net.add_host()
        s = await _raw(evil, victim)
        ping = encode(KadMessage(MessageType.PING))
        answered = 0
        reset = False
        for _ in range(100):
            await write_length_prefixed(s, ping)
            try:
                await read_length_prefixed(s, 100)
            except StreamReset:
                reset = True
                break
            answered += 1
        assert reset
        assert 20 <= answered < 40  # the burst, plus what refilled during the round trips
        # Others are still served, and the flooder again once its bucket refills.
        assert await dhts[1].find_peer(dhts[2].host.peer_id) is not None
        await asyncio.sleep(5)
        s = await _raw(evil, victim)
        await write_length_prefixed(s, ping)
        assert await read_length_prefixed(s, 100) is not None

    sim(main)


def test_old_records_are_not_handed_out() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 4, max_record_age=3600.0)
        me = dhts[1].host.peer_id
        pub = me.extract_public_key()
        assert pub is None  # simulated ids are hashes: use a real key instead
        owner = PrivateKey.from_seed(b"\x09" * 32)
        peer = PeerId.from_public_key(owner.public_key)
        key = b"/pk/" + peer.to_bytes()
        dhts[0].store.put_record(key, owner.public_key.to_protobuf(), "2000-01-01T00:00:00Z")
        with pytest.raises(ValueNotFound):
            await dhts[2].get_value(key)
        assert dhts[0].store.get_record(key) is None

    sim(main)


def test_full_bucket_checks_the_oldest_peer_before_replacing_it() -> None:
    async def main(net: SimNetwork) -> None:
        node = KadDHT(net.add_host(), config(k=2))
        await node.start()
        rng = random.Random(5)
        others = []
        for _ in range(4):
            pid = node.routing_table.random_peer_id_in_bucket(0, rng)
            dht = KadDHT(net.add_host(peer_id=pid), config())
            await dht.start()
            others.append(pid)
        oldest, second, newcomer, another = others
        rt = node.routing_table
        rt.add(oldest, 0.0)
        rt.add(second, 1.0)
        # A live oldest peer keeps its place; the newcomer waits as a replacement.
        node._peer_responded(newcomer)
        await asyncio.sleep(5)
        assert oldest in rt
        assert newcomer not in rt
        assert rt.replacements(0) == [newcomer]
        # Once the oldest peer (now ``second``) is dead, the next check replaces it.
        net.kill(second)
        node._peer_responded(another)
        await asyncio.sleep(5)
        assert second not in rt
        assert another in rt
        assert oldest in rt

    sim(main)


def test_publish_and_resolve_names() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 20)
        owner = PrivateKey.from_seed(b"\x0b" * 32)
        name = PeerId.from_public_key(owner.public_key)
        assert await dhts[1].publish_name(owner, b"/ipfs/first") == 0
        assert await dhts[9].resolve_name(name) == b"/ipfs/first"
        # Another node with the same key (no local state) still supersedes the first record.
        assert await dhts[2].publish_name(owner, b"/ipfs/second") == 1
        assert await dhts[15].resolve_name(name, quorum=5) == b"/ipfs/second"
        with pytest.raises(ValueNotFound):
            await dhts[3].resolve_name(dhts[4].host.peer_id)

    sim(main)


def test_stop_right_after_a_lookup_with_requests_still_out() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 30, rpc_timeout=3.0)
        for d in dhts[10:25]:
            net.kill(d.host.peer_id)
        asker = dhts[0]
        await asker.get_closest_peers(b"anything")
        await asyncio.sleep(net.dial_timeout + 0.5)  # some late requests fail, some are out
        await asker.stop()
        assert not asker._tasks
        await asker.stop()  # idempotent

    sim(main)


def test_a_bad_peer_entry_in_one_answer_does_not_abort_the_lookup() -> None:
    # The wire allows 64 addresses per peer, the peerstore keeps 32, and an address whose /p2p/
    # names another peer is refused: either in one answer used to abort the whole lookup.
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 30)
        rng = random.Random(5)
        liar = net.add_host()
        other = net.random_peer_id()

        async def liar_handler(stream: Stream) -> None:
            while (raw := await read_length_prefixed(stream, 10**6)) is not None:
                req = decode(raw)
                target = kad_key(req.key)
                wrong = Multiaddr("/ip4/10.1.2.3/tcp/4001").encapsulate(f"/p2p/{other}")
                many = tuple(Multiaddr(f"/ip4/10.9.9.9/tcp/{4000 + i}") for i in range(64))
                fakes = [
                    PeerInfo(_close_peer(target, rng), (wrong,)),
                    PeerInfo(_close_peer(target, rng), many),
                ]
                reply = KadMessage(req.type, key=req.key, closer_peers=fakes)
                await write_length_prefixed(stream, encode(reply))

        liar.set_stream_handler(PROTOCOL_ID, liar_handler)
        asker, wanted = dhts[3], dhts[17]
        asker.routing_table.add(liar.peer_id, 0.0)
        assert liar.peer_id in asker.routing_table
        # A lookup for the liar's own key asks the liar first.
        assert await asker.get_closest_peers(liar.peer_id.to_bytes())
        # The liar answered with a malformed entry: it counts as its failure.
        assert liar.peer_id not in asker.routing_table
        assert asker.last_lookup.failures >= 1
        asker.routing_table.add(liar.peer_id, 0.0)
        assert await asker.find_peer(wanted.host.peer_id) is not None
        # The 64-address entry of a stranger was kept, cut to the peerstore's limit.
        assert any(len(a) == 32 for a in liar_host_view(asker).values())
        key = cid_multihash(b"through the liar")
        asker.routing_table.add(liar.peer_id, 0.0)
        assert await dhts[5].provide(key) >= 10
        assert await asker.find_providers(key)

    sim(main)


def liar_host_view(dht: KadDHT) -> dict[PeerId, list[Multiaddr]]:
    """The addresses a simulated host keeps for strangers (peers outside the network)."""
    assert isinstance(dht.host, SimHost)
    return dht.host._extra_addrs


def test_simhost_applies_the_peerstore_address_rules() -> None:
    net = SimNetwork(rng=random.Random(1))
    host = net.add_host()
    stranger, other = net.random_peer_id(), net.random_peer_id()
    many = [Multiaddr(f"/ip4/10.9.9.9/tcp/{4000 + i}") for i in range(64)]
    host.add_peer_addrs(stranger, [a.encapsulate(f"/p2p/{stranger}") for a in many], 60.0)
    assert host.peer_addrs(stranger) == many[:32]
    with pytest.raises(PeerIdMismatch):
        host.add_peer_addrs(stranger, [many[0].encapsulate(f"/p2p/{other}")], 60.0)


class _FlakyGcStore(MemoryDhtStore):
    """A store whose first gc fails the way a locked database does."""

    def __init__(self) -> None:
        super().__init__()
        self.gc_calls = 0

    def gc(self, now: float, max_record_age: float | None = None) -> int:
        self.gc_calls += 1
        if self.gc_calls == 1:
            raise sqlite3.OperationalError("database is locked")
        return super().gc(now, max_record_age)


def test_maintenance_loop_survives_a_failing_step() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 8)
        store = _FlakyGcStore()
        cfg = config(
            background=True,
            bootstrap_peers=[p2p_addr(dhts[0].host)],
            refresh_interval=60.0,
            gc_interval=60.0,
        )
        node = KadDHT(net.add_host(), cfg, store=store)
        await node.start()
        await asyncio.sleep(400)
        assert store.gc_calls >= 3  # the loop went on after the first gc failed
        assert node._tasks  # and is still running
        await node.stop()

    sim(main)


def test_own_provides_ignore_the_limits_meant_for_remote_peers() -> None:
    # 100 Sybil identities filling a key's provider slots used to block our own provide
    # (LimitExceeded), and past max_keys_per_provider every later provide failed.
    async def main(net: SimNetwork) -> None:
        limits = StoreLimits(max_keys_per_provider=3)
        dhts = await build(net, 20, store_limits=limits)
        me = dhts[4]
        key = cid_multihash(b"popular")
        for _ in range(limits.max_providers_per_key):
            me.store.add_provider(key, net.random_peer_id(), (), time.time())
        assert await me.provide(key) >= 10
        for i in range(5):  # more keys than a remote peer may provide here
            assert await me.provide(cid_multihash(b"block %d" % i)) >= 10
        # Asked directly, the full node still names us first.
        stream = await dhts[9].host.new_stream(me.host.peer_id, [PROTOCOL_ID])
        await write_length_prefixed(stream, encode(KadMessage(MessageType.GET_PROVIDERS, key=key)))
        raw = await read_length_prefixed(stream, 10**6)
        assert raw is not None
        providers = decode(raw).provider_peers
        assert providers[0].peer_id == me.host.peer_id
        assert len(providers) == dhts[9].config.k
        found = await dhts[12].find_providers(cid_multihash(b"block 4"))
        assert [p.peer_id for p in found] == [me.host.peer_id]
        assert me.host.peer_id in {p.peer_id for p in await me.find_providers(key)}

    sim(main)


def test_republish_goes_on_past_a_key_that_fails() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 12)
        me = dhts[2]
        good = cid_multihash(b"good")
        await me.provide(good)
        me.store.add_own_provide(b"not a multihash", 0.0)  # a row that cannot be provided
        later = me.config.republish_interval + 1
        me.wall_clock = lambda: time.time() + later
        await asyncio.sleep(later)
        assert await me.republish() == 1  # the good key, despite the bad row before or after
        assert me.store.due_republish(me.wall_clock(), me.config.republish_interval) == [
            b"not a multihash"
        ]

    sim(main)


def test_a_provide_that_reaches_nobody_is_retried_soon_not_in_22_hours() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 8)
        loner = KadDHT(net.add_host(), config())
        await loner.start()
        key = cid_multihash(b"offline provide")
        assert await loner.provide(key) == 0  # an empty table: announced to no one
        now = loner.wall_clock()
        cfg = loner.config
        assert loner.store.has_own_provide(key)  # still ours: GET_PROVIDERS answers with us
        assert loner.store.due_republish(now, cfg.republish_interval) == []
        later = cfg.provide_retry_interval + 1
        loner.wall_clock = lambda: time.time() + later
        assert loner.store.due_republish(loner.wall_clock(), cfg.republish_interval) == [key]
        for d in dhts:
            loner.routing_table.add(d.host.peer_id, 0.0)
        assert await loner.republish() == 1  # now it reached peers: published for 22 h
        assert loner.store.due_republish(loner.wall_clock(), cfg.republish_interval) == []
        await asyncio.sleep(1)  # ADD_PROVIDER has no answer: let the peers handle it
        found = await dhts[5].find_providers(key)
        assert [p.peer_id for p in found] == [loner.host.peer_id]
        await loner.stop()

    sim(main)


def test_persisted_provider_times_are_wall_clock_and_survive_a_restart(tmp_path: Path) -> None:
    # Times stored in SQLite used to be loop.time(), which restarts at boot: after a restart
    # republish never came due and remote providers outlived their 48 h.
    wall = [1_700_000_000.0]
    key = cid_multihash(b"persisted")
    ids: dict[str, PeerId] = {}

    async def first(net: SimNetwork) -> None:
        dhts = await build(net, 6)
        await asyncio.sleep(5000)  # loop time now well past zero
        a = KadDHT(net.add_host(), config(), store=SqliteDhtStore(tmp_path / "a.db"))
        b = KadDHT(net.add_host(), config(), store=SqliteDhtStore(tmp_path / "b.db"))
        for node in (a, b):
            node.wall_clock = node.server.wall_clock = lambda: wall[0]
            await node.start()
            for d in dhts:
                node.routing_table.add(d.host.peer_id, 0.0)
        a.routing_table.add(b.host.peer_id, 0.0)
        assert await a.provide(key) >= 1
        await asyncio.sleep(1)  # ADD_PROVIDER has no answer: let b handle it
        assert [e.peer for e in b.store.get_providers(key, wall[0], 5)] == [a.host.peer_id]
        ids["a"], ids["b"] = a.host.peer_id, b.host.peer_id
        await a.stop()
        await b.stop()
        a.store.close()
        b.store.close()

    async def after_reboot(net: SimNetwork) -> None:
        # A new loop: its clock starts again at zero; the wall clock moved on by 49 h.
        wall[0] += 49 * 3600.0
        a = KadDHT(
            net.add_host(ids["a"]),
            config(),
            store=SqliteDhtStore(tmp_path / "a.db"),
            wall_clock=lambda: wall[0],
        )
        b = KadDHT(
            net.add_host(ids["b"]),
            config(),
            store=SqliteDhtStore(tmp_path / "b.db"),
            wall_clock=lambda: wall[0],
        )
        # 49 h since the last announcement: due. Nobody is in a's table yet, so the announcement
        # reaches no peer and does not count: the key stays due for a retry soon after.
        assert a.store.due_republish(wall[0], a.config.republish_interval) == [key]
        assert await a.republish() == 0
        assert a.store.due_republish(wall[0], a.config.republish_interval) == []
        retry = wall[0] + a.config.provide_retry_interval
        assert a.store.due_republish(retry, a.config.republish_interval) == [key]
        assert b.store.get_providers(key, wall[0], 5) == []  # expired after 48 h
        assert b.store.gc(wall[0]) == 1
        for node in (a, b):
            node.store.close()

    sim(first)
    sim(after_reboot)


def test_one_peer_cannot_fill_the_record_store_for_everyone() -> None:
    async def main(net: SimNetwork) -> None:
        limits = StoreLimits(max_records=10, max_records_per_peer=3)
        dhts = await build(net, 4, store_limits=limits)
        victim = dhts[0]
        evil = net.add_host()
        owners = [PrivateKey.from_seed(bytes([i + 1]) * 32) for i in range(6)]
        answers = 0
        for i, owner in enumerate(owners[:4]):
            key = b"/pk/" + PeerId.from_public_key(owner.public_key).to_bytes()
            record = KadRecord(key, owner.public_key.to_protobuf())
            s = await _raw(evil, victim)
            await write_length_prefixed(s, encode(KadMessage(MessageType.PUT_VALUE, key, record)))
            if i < 3:
                assert await read_length_prefixed(s, 10**6) is not None
                answers += 1
            else:  # over its quota: refused, nothing stored
                with pytest.raises(StreamReset):
                    await read_length_prefixed(s, 10**6)
                assert victim.store.get_record(key) is None
        assert answers == 3
        # Everyone else can still store records on the victim.
        owner = owners[5]
        key = b"/pk/" + PeerId.from_public_key(owner.public_key).to_bytes()
        assert await dhts[2].put_value(key, owner.public_key.to_protobuf()) >= 1
        assert victim.store.get_record(key) is not None

    sim(main)


def test_a_locked_store_resets_the_request_and_raises_nothing(tmp_path: Path) -> None:
    # sqlite3.OperationalError used to escape handle_stream: a traceback per request, and the
    # peer blamed for nothing it did.
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 3)
        path = tmp_path / "state.db"
        victim = KadDHT(net.add_host(), config(), store=SqliteDhtStore(path))
        await victim.start()
        escaped: list[BaseException] = []

        async def watched(stream: Stream) -> None:
            try:
                await victim.server.handle_stream(stream)
            except BaseException as exc:  # what the host's handler task would die of
                escaped.append(exc)
                raise

        victim.host.set_stream_handler(PROTOCOL_ID, watched)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        key = cid_multihash(b"while locked")
        me = PeerInfo(dhts[1].host.peer_id, tuple(dhts[1].host.listen_addrs()))
        s = await dhts[1].host.new_stream(victim.host.peer_id, [PROTOCOL_ID])
        await write_length_prefixed(
            s, encode(KadMessage(MessageType.ADD_PROVIDER, key=key, provider_peers=[me]))
        )
        with pytest.raises(StreamReset):
            await read_length_prefixed(s, 10**6)
        assert not escaped
        assert victim.counters.store_errors == 1
        other.execute("ROLLBACK")
        other.close()
        dhts[1].routing_table.add(victim.host.peer_id, 0.0)
        assert await dhts[1].provide(key) >= 1
        await asyncio.sleep(1)
        assert [e.peer for e in victim.store.get_providers(key, time.time(), 5)] == [me.peer_id]
        await victim.stop()
        victim.store.close()

    sim(main)


def test_a_full_local_record_store_does_not_fail_our_put_or_get() -> None:
    # Keeping a local copy raised LimitExceeded (a PeerError for a local condition) and failed
    # a put or get whose record was on the network all along.
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 8)
        me = KadDHT(net.add_host(), config(store_limits=StoreLimits(max_records=1)))
        await me.start()
        for d in dhts:
            me.routing_table.add(d.host.peer_id, 0.0)
        me.store.put_record(b"/pk/filler", b"v", "t")
        owners = [PrivateKey.from_seed(bytes([40 + i]) * 32) for i in range(2)]
        keys = [b"/pk/" + PeerId.from_public_key(o.public_key).to_bytes() for o in owners]
        assert await me.put_value(keys[0], owners[0].public_key.to_protobuf()) >= 1
        assert await dhts[3].put_value(keys[1], owners[1].public_key.to_protobuf()) >= 1
        assert await me.get_value(keys[1]) == owners[1].public_key.to_protobuf()
        assert me.store.get_record(keys[1]) is None  # not cached: the store is full

    sim(main)


def test_find_peer_goes_on_when_the_target_is_named_without_addresses() -> None:
    # A peer that knows the target's id but not yet its addresses names it in closerPeers
    # with no addrs; stopping there would hand the user a peer they cannot dial.
    async def main(net: SimNetwork) -> None:
        asker = KadDHT(net.add_host(), config(), rng=random.Random(1))
        await asker.start()
        target = net.random_peer_id()  # a stranger: only answers can tell where it is
        where = Multiaddr("/ip4/10.7.7.7/tcp/4001")

        def answering(addrs: tuple[Multiaddr, ...], delay: float) -> Callable[[Stream], Any]:
            async def handler(stream: Stream) -> None:
                while (raw := await read_length_prefixed(stream, 10**6)) is not None:
                    req = decode(raw)
                    await asyncio.sleep(delay)
                    closer = [PeerInfo(target, addrs)]
                    reply = KadMessage(req.type, key=req.key, closer_peers=closer)
                    await write_length_prefixed(stream, encode(reply))

            return handler

        mute, honest = net.add_host(), net.add_host()
        mute.set_stream_handler(PROTOCOL_ID, answering((), 0.0))
        honest.set_stream_handler(PROTOCOL_ID, answering((where,), 0.5))
        asker.routing_table.add(mute.peer_id, 0.0)
        asker.routing_table.add(honest.peer_id, 0.0)
        info = await asker.find_peer(target)
        assert info is not None
        assert info.addrs == (where,)

    sim(main)


def test_identify_results_replace_the_probe_on_connect() -> None:
    # The DHT takes identify's news as plain data (sim hosts have no identify): once told that
    # identify is wired, a new connection is not probed; the kad protocol in an identify result
    # admits a peer, its absence removes it, and only a failed identify falls back to a probe.
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 4)
        me = KadDHT(net.add_host(), config(), rng=random.Random(9))
        me.use_identify()
        await me.start()
        served = sum(d.counters.requests_served for d in dhts)
        for other in dhts:
            await me.host.connect(other.host.peer_id, other.host.listen_addrs())
        await asyncio.sleep(1.0)
        assert len(me.routing_table) == 0
        assert me.counters.probes == 0
        assert sum(d.counters.requests_served for d in dhts) == served

        a, b, c, d = (x.host.peer_id for x in dhts)
        me.peer_identified(a, ["/ipfs/id/1.0.0", PROTOCOL_ID], dhts[0].host.listen_addrs())
        me.peer_identified(b, [PROTOCOL_ID])
        me.peer_identified(c, ["/ipfs/id/1.0.0"])  # a client: neither admitted nor probed
        assert set(me.routing_table.peers()) == {a, b}
        assert me.routing_table.get(b) is not None
        me.peer_identified(a, ["/ipfs/id/1.0.0"])  # a push: a stopped serving the DHT
        assert set(me.routing_table.peers()) == {b}
        assert me.counters.identify_removed == 1

        me.identify_failed(d)  # identify could not tell: d is asked directly
        await asyncio.sleep(1.0)
        assert d in me.routing_table
        assert me.counters.probes == 1
        assert sum(x.counters.requests_served for x in dhts) == served + 1
        await me.stop()

    sim(main)


def test_without_identify_a_new_connection_is_probed() -> None:
    async def main(net: SimNetwork) -> None:
        dhts = await build(net, 3)
        me = KadDHT(net.add_host(), config(), rng=random.Random(9))
        await me.start()
        for d in dhts:
            await me.host.connect(d.host.peer_id, d.host.listen_addrs())
        await asyncio.sleep(1.0)
        assert set(me.routing_table.peers()) == {d.host.peer_id for d in dhts}
        assert me.counters.probes == 3
        await me.stop()

    sim(main)

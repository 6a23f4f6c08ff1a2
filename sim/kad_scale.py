"""Kademlia at scale: lookups and stored values on a simulated network, before and after churn.

Two modes:

* service (default, 10,000 nodes): every node is a real ``KadDHT`` on a ``SimHost``; lookups
  and PUT/GET go through the same service code, messages and streams as on TCP.
* ``--direct`` (100,000 nodes): the sans-IO ``Query`` and ``RoutingTable`` driven directly on
  a simulated network (an event heap instead of streams), for sizes where ten thousand asyncio
  services per core would be too slow. Routing tables are built lazily and cached.

Routing tables are filled from global knowledge (for every bucket, up to k peers drawn at
random among those that belong in it), the state a long-running network converges to; the
bootstrap path itself is exercised by the tests. Churn removes nodes abruptly: they stay in
everyone's tables and simply stop answering.

    python -m sim.kad_scale                       # 10,000 nodes through the DHT service
    python -m sim.kad_scale --direct --nodes 100000
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import functools
import heapq
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from peerstack.core.peer_id import PeerId
from peerstack.dht.config import DhtConfig
from peerstack.dht.distance import KEY_BITS, kad_key
from peerstack.dht.query import Query
from peerstack.dht.records import RecordError, Validators
from peerstack.dht.routing_table import RoutingTable
from peerstack.dht.service import KadDHT, ValueNotFound
from sim.simhost import SimNetwork, percentile, run

K = 20
SIM_NAMESPACE = "sim"


class SimValueValidator:
    """The ``/sim/`` namespace: any value up to 1 KiB; all values equal (an app namespace)."""

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        if len(value) > 1024:
            raise RecordError("sim value over 1 KiB")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class Params:
    nodes: int
    lookups: int
    values: int
    removals: tuple[float, ...]
    seed: int
    verbose: bool


@dataclass(slots=True)
class Row:
    scenario: str
    nodes: int
    alive: int
    lookups: int
    success: float
    errors: int
    hops_median: float
    hops_p95: float
    msgs_mean: float
    values: int
    values_found: float

    def cells(self) -> list[str]:
        return [
            self.scenario,
            str(self.nodes),
            str(self.alive),
            str(self.lookups),
            f"{100 * self.success:.2f}%",
            str(self.errors),
            f"{self.hops_median:g}",
            f"{self.hops_p95:g}",
            f"{self.msgs_mean:.1f}",
            str(self.values),
            f"{100 * self.values_found:.2f}%" if self.values else "-",
        ]


HEADERS = [
    "scenario",
    "nodes",
    "alive",
    "lookups",
    "success",
    "errors",
    "hops p50",
    "hops p95",
    "msgs/lookup",
    "values",
    "values found",
]


def print_table(rows: Sequence[Row]) -> None:
    cells = [HEADERS] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    for j, line in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


class Oracle:
    """Everyone's keys in sorted order: fills a routing table the way a settled network would."""

    def __init__(self, peers: Sequence[PeerId], rng: random.Random) -> None:
        pairs = sorted((kad_key(p.to_bytes()), p) for p in peers)
        self.keys = [k for k, _ in pairs]
        self.peers = [p for _, p in pairs]
        self.key_of = {p: k for k, p in pairs}
        self.rng = rng

    def _range(self, lo_key: int, size: int) -> tuple[int, int]:
        lo = bisect.bisect_left(self.keys, lo_key)
        hi = bisect.bisect_left(self.keys, lo_key + size)
        return lo, hi

    def fill(self, table: RoutingTable, addrs_of: Callable[[PeerId], Sequence[object]]) -> None:
        me = table.local_key
        for cpl in range(KEY_BITS):
            shift = KEY_BITS - cpl - 1
            same_lo, same_hi = self._range((me >> shift) << shift, 1 << shift)
            base = ((me >> shift) ^ 1) << shift
            lo, hi = self._range(base, 1 << shift)
            if hi > lo:
                picks = self.rng.sample(range(lo, hi), min(table.k, hi - lo))
                for i in picks:
                    peer = self.peers[i]
                    table.add(peer, 0.0, addrs_of(peer), key=self.keys[i])  # type: ignore[arg-type]
            if same_hi - same_lo <= 1:
                break  # nobody else shares this prefix with us: deeper buckets are empty


def _summary(
    name: str,
    *,
    nodes: int,
    alive: int,
    hops: list[int],
    msgs: list[int],
    ok: int,
    errors: int,
    values: int,
    values_ok: int,
) -> Row:
    lookups = len(msgs)
    return Row(
        name,
        nodes,
        alive,
        lookups,
        ok / lookups if lookups else 0.0,
        errors,
        percentile(hops, 0.5),
        percentile(hops, 0.95),
        sum(msgs) / lookups if lookups else 0.0,
        values,
        values_ok / values if values else 0.0,
    )


# -- service mode ---------------------------------------------------------------------------


async def _bounded(makers: Sequence[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run the coroutines ``makers`` create, at most ``limit`` at a time."""
    sem = asyncio.Semaphore(limit)

    async def one(make: Callable[[], Awaitable[None]]) -> None:
        async with sem:
            await make()

    await asyncio.gather(*(one(m) for m in makers))


async def service_scenario(
    p: Params,
) -> list[Row]:
    n, lookups, n_values, removals, seed, verbose = (
        p.nodes,
        p.lookups,
        p.values,
        p.removals,
        p.seed,
        p.verbose,
    )
    rng = random.Random(seed)
    net = SimNetwork(rng=random.Random(seed + 1), dial_timeout=1.0)
    validators = Validators()
    validators.register(SIM_NAMESPACE, SimValueValidator())
    cfg = DhtConfig(
        background=False,
        probe_on_connect=False,
        max_cached_streams=0,
        rpc_timeout=5.0,
        query_timeout=120.0,
        get_quorum=1,
    )
    t0 = time.perf_counter()
    dhts: dict[PeerId, KadDHT] = {}
    for _ in range(n):
        host = net.add_host()
        dht = KadDHT(host, cfg, validators=validators, rng=random.Random(rng.random()))
        await dht.start()
        dhts[host.peer_id] = dht
    oracle = Oracle(list(dhts), random.Random(seed + 2))
    for dht in dhts.values():
        oracle.fill(dht.routing_table, lambda p: net.hosts[p].listen_addrs())
    if verbose:
        sizes = [len(d.routing_table) for d in dhts.values()]
        print(
            f"# {n} nodes up, tables filled (mean {sum(sizes) / n:.0f} peers) "
            f"in {time.perf_counter() - t0:.1f} s"
        )

    # Values, stored with k = 20 replication before any churn.
    keys: list[bytes] = []
    peers = list(dhts)

    async def put_one(i: int) -> None:
        key = f"/{SIM_NAMESPACE}/value-{i}".encode()
        src = dhts[rng.choice(peers)]
        stored = await src.put_value(key, b"v%d" % i)
        if stored:
            keys.append(key)

    t1 = time.perf_counter()
    await _bounded([functools.partial(put_one, i) for i in range(n_values)], 50)
    if verbose:
        print(f"# {len(keys)} values stored in {time.perf_counter() - t1:.1f} s")

    rows = []
    removed = 0.0
    for frac in [0.0, *removals]:
        # Remove nodes abruptly, cumulatively, up to ``frac`` of the network.
        alive = net.alive_peers()
        to_kill = round(frac * n) - round(removed * n)
        for peer in rng.sample(alive, max(0, to_kill)):
            net.kill(peer)
        removed = frac
        alive = net.alive_peers()
        t2 = time.perf_counter()
        row = await _service_round(
            f"removed {round(100 * frac)}%",
            n=n,
            dhts=dhts,
            alive=alive,
            keys=keys,
            lookups=lookups,
            rng=rng,
        )
        rows.append(row)
        if verbose:
            print(f"# {row.scenario}: {time.perf_counter() - t2:.1f} s")
    return rows


async def _service_round(
    name: str,
    *,
    n: int,
    dhts: dict[PeerId, KadDHT],
    alive: list[PeerId],
    keys: list[bytes],
    lookups: int,
    rng: random.Random,
) -> Row:
    hops: list[int] = []
    msgs: list[int] = []
    ok = 0
    errors = 0

    async def lookup() -> None:
        nonlocal ok, errors
        src, target = rng.sample(alive, 2)
        dht = dhts[src]
        try:
            info = await dht.find_peer(target)
        except Exception as exc:  # noqa: BLE001 - a simulator counts every failure kind
            errors += 1
            print(f"# lookup error: {exc!r}")
            return
        msgs.append(dht.last_lookup.requests)
        if info is not None:
            ok += 1
            hops.append(dht.last_lookup.hops)

    await _bounded([lookup for _ in range(lookups)], 50)
    values_ok = 0

    async def get_one(key: bytes) -> None:
        nonlocal values_ok
        dht = dhts[rng.choice(alive)]
        try:
            await dht.get_value(key, quorum=1)
            values_ok += 1
        except ValueNotFound:
            pass

    sample = rng.sample(keys, min(len(keys), lookups))
    await _bounded([functools.partial(get_one, k) for k in sample], 50)
    return _summary(
        name,
        nodes=n,
        alive=len(alive),
        hops=hops,
        msgs=msgs,
        ok=ok,
        errors=errors,
        values=len(sample),
        values_ok=values_ok,
    )


# -- direct mode ----------------------------------------------------------------------------


class DirectNetwork:
    """The query engine on a simulated network without streams (for 100,000 nodes).

    Routing tables are never materialized: a node's bucket ``cpl`` is the same seeded random
    sample (up to k peers of the keyspace range it covers) whenever it is needed, and a node
    answers a lookup from the one or two buckets that can hold the closest peers to the
    target. That is the same table ``Oracle.fill`` would build, at a cost per answer instead of
    per node, so a hundred thousand nodes fit in memory and time.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.peers = [PeerId(b"\x12\x20" + self.rng.randbytes(32)) for _ in range(n)]
        self.delay = {p: self.rng.uniform(0.005, 0.05) for p in self.peers}
        self.dead: set[PeerId] = set()
        self.oracle = Oracle(self.peers, random.Random(seed + 2))
        self.index = {p: i for i, p in enumerate(self.oracle.peers)}
        self.values: dict[PeerId, set[int]] = {}
        self.dial_timeout = 1.0

    def _bucket(self, node: int, cpl: int) -> list[int]:
        keys = self.oracle.keys
        me = keys[node]
        shift = KEY_BITS - cpl - 1
        lo, hi = self.oracle._range(((me >> shift) ^ 1) << shift, 1 << shift)
        if hi - lo <= K:
            return list(range(lo, hi))
        rng = random.Random((self.seed << 40) ^ (node << 9) ^ cpl)
        return rng.sample(range(lo, hi), K)

    def closest(self, peer: PeerId, target: int, exclude: PeerId) -> list[PeerId]:
        """What ``peer`` answers to FIND_NODE(target): the k closest in its table."""
        node = self.index[peer]
        keys = self.oracle.keys
        me = keys[node]
        if me == target:
            return []
        cpl = KEY_BITS - (me ^ target).bit_length()
        cands = self._bucket(node, cpl)
        deeper = cpl + 1
        # Fewer than k in the target's bucket: the next closest are in deeper buckets.
        while len(cands) <= K and deeper < KEY_BITS:
            shift = KEY_BITS - deeper
            lo, hi = self.oracle._range((me >> shift) << shift, 1 << shift)
            if hi - lo <= 1:
                break
            cands += self._bucket(node, deeper)
            deeper += 1
        cands.sort(key=lambda i: keys[i] ^ target)
        peers = self.oracle.peers
        return [peers[i] for i in cands if peers[i] != exclude][:K]

    def lookup(
        self, src: PeerId, target: int, stop: Callable[[PeerId, list[PeerId]], bool] | None
    ) -> Query:
        seeds = self.closest(src, target, src)
        q = Query(target, seeds, k=K, alpha=10, beta=3, timeout=5.0, exclude=(src,))
        heap: list[tuple[float, int, PeerId, bool]] = []
        seq = 0
        now = 0.0
        while True:
            for peer in q.requests(now):
                seq += 1
                if peer in self.dead:
                    heapq.heappush(heap, (now + self.dial_timeout, seq, peer, False))
                else:
                    rtt = 2 * (self.delay[src] + self.delay[peer])
                    heapq.heappush(heap, (now + 2 * rtt, seq, peer, True))
            if q.finished or not heap:
                return q
            now, _, peer, alive = heapq.heappop(heap)
            if not alive:
                q.on_failure(peer, now)
                continue
            closer = self.closest(peer, target, src)
            q.on_response(peer, closer, now)
            if stop is not None and stop(peer, closer):
                q.stop()


def direct_scenario(
    p: Params,
) -> list[Row]:
    n, lookups, n_values, removals, seed, verbose = (
        p.nodes,
        p.lookups,
        p.values,
        p.removals,
        p.seed,
        p.verbose,
    )
    t0 = time.perf_counter()
    net = DirectNetwork(n, seed)
    rng = random.Random(seed + 3)
    if verbose:
        print(f"# {n} node ids in {time.perf_counter() - t0:.1f} s")
    # Store values on the k closest peers that answered a lookup (a PUT).
    value_keys = []
    for i in range(n_values):
        key = kad_key(f"/sim/value-{i}".encode())
        q = net.lookup(rng.choice(net.peers), key, None)
        for peer in q.closest(K):
            net.values.setdefault(peer, set()).add(i)
        value_keys.append((i, key))
    rows = []
    removed = 0.0
    for frac in [0.0, *removals]:
        alive = [p for p in net.peers if p not in net.dead]
        to_kill = round(frac * n) - round(removed * n)
        net.dead.update(rng.sample(alive, max(0, to_kill)))
        removed = frac
        alive = [p for p in net.peers if p not in net.dead]
        t1 = time.perf_counter()
        hops: list[int] = []
        msgs: list[int] = []
        ok = 0
        for _ in range(lookups):
            src, target = rng.sample(alive, 2)

            def found(peer: PeerId, closer: list[PeerId], target: PeerId = target) -> bool:
                return peer == target or target in closer

            q = net.lookup(src, net.oracle.key_of[target], found)
            msgs.append(q.stats.requests)
            depth = q.depth_of(target)
            if depth is not None:
                ok += 1
                hops.append(depth)
        values_ok = 0
        sample = rng.sample(value_keys, min(len(value_keys), lookups))
        for i, key in sample:

            def holds(peer: PeerId, closer: list[PeerId], i: int = i) -> bool:
                return i in net.values.get(peer, ())

            q = net.lookup(rng.choice(alive), key, holds)
            if any(i in net.values.get(p, ()) for p in q.closest(K * 5)):
                values_ok += 1
        rows.append(
            _summary(
                f"removed {round(100 * frac)}%",
                nodes=n,
                alive=len(alive),
                hops=hops,
                msgs=msgs,
                ok=ok,
                errors=0,
                values=len(sample),
                values_ok=values_ok,
            )
        )
        if verbose:
            print(f"# removed {round(100 * frac)}%: {time.perf_counter() - t1:.1f} s")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--values", type=int, default=500)
    parser.add_argument("--removals", default="0.1,0.3,0.5")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--direct", action="store_true", help="drive the query engine directly")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    params = Params(
        args.nodes,
        args.lookups,
        args.values,
        tuple(float(x) for x in args.removals.split(",") if x),
        args.seed,
        not args.quiet,
    )
    t0 = time.perf_counter()
    if args.direct:
        rows = direct_scenario(params)
        mode = "direct (sans-IO query on a simulated network)"
    else:
        rows = run(service_scenario(params))
        mode = "service (KadDHT on simulated hosts)"
    print(f"\nKademlia, k = {K}, alpha = 10, beta = 3; mode: {mode}")
    print_table(rows)
    print(
        "hops: answers on the path from our own table to the target (0: in our table);"
        " msgs: requests sent per lookup, failed ones included;"
        " values: stored with k = 20 replication before any removal"
    )
    print(f"\n{time.perf_counter() - t0:.1f} s wall clock")


if __name__ == "__main__":
    main()

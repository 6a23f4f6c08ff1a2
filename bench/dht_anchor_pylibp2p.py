# mypy: disable-error-code="import-not-found,import-untyped,unused-ignore,no-untyped-call,misc"
# (Runs in the interop venv, .venv-pylibp2p, made by scripts/setup-interop.sh, where py-libp2p
# and trio are installed; the project's venv type-checks it without them.)
"""Anchor for ``bench/dht_nodes.py``: py-libp2p 0.8.1's kad-dht on the same workload.

N py-libp2p hosts (TCP + Noise + Yamux, Ed25519 identities) in one trio process on 127.0.0.1,
each with a ``libp2p.kad_dht.KadDHT`` in server mode (subnet-diversity limits off, since every
peer is 127.0.0.1) and a permissive ``/bench/`` validator. Each host dials a few earlier hosts,
puts them in its routing table and runs its self-lookup (``find_closest_peers_network`` of its
own id, as ``refresh_routing_table`` starts with); the DHT's own maintenance service is not
started (it would refresh on a timer), as peerstack's background work is off in the bench.
Values are ``put_value`` from random nodes and ``get_value`` from a random other node; then 30%
of the hosts are stopped (``host.run`` left: listeners and connections closed) and every value
is got again from a random survivor. Prints one JSON line (the fields of
``dht_nodes.Result``).

    .venv-pylibp2p/bin/python bench/dht_anchor_pylibp2p.py --n 200 --values 100
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import Validator
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

BOOTSTRAP_PEERS = 3
VALUE_SIZE = 64
GET_DEADLINE = 30.0
#: Time bounds (the whole run must fit the driver's per-run limit): bootstrap, then each of
#: the put, healthy-get and after-kill-get phases. What a phase had no time for counts as
#: failed, and the note says so.
SETUP_DEADLINE = 600.0
PHASE_DEADLINE = 240.0
KILL_WAIT = 30.0


def status(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class BenchValidator(Validator):
    """``/bench/<anything>``: every value valid, the first of several the best."""

    def validate(self, key: str, value: bytes) -> None:
        if len(value) > 4096:
            raise ValueError("bench values are at most 4 KiB")

    def select(self, key: str, values: list[bytes]) -> int:
        return 0


@dataclass
class PyNode:
    index: int
    host: Any = None
    dht: Any = None
    peer_id: Any = None
    addrs: list[Any] = field(default_factory=list)
    up: trio.Event = field(default_factory=trio.Event)
    kill: trio.Event = field(default_factory=trio.Event)
    down: trio.Event = field(default_factory=trio.Event)
    error: str = ""


async def run_node(node: PyNode) -> None:
    """One host for the life of the benchmark: up, serve, and leave when killed."""
    key_pair = create_new_key_pair()
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = new_host(
        key_pair=key_pair,
        listen_addrs=listen,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
    )
    try:
        async with host.run(listen_addrs=listen):
            dht = KadDHT(host, DHTMode.SERVER, max_peers_per_subnet=0)
            dht.register_validator("bench", BenchValidator())
            node.host, node.dht, node.peer_id = host, dht, host.get_id()
            node.addrs = list(host.get_addrs())
            node.up.set()
            await node.kill.wait()
    finally:
        node.down.set()


async def bootstrap(node: PyNode, peers: list[PyNode]) -> bool:
    host, dht = node.host, node.dht
    for peer in peers:
        addrs = [multiaddr.Multiaddr(str(a).split("/p2p/")[0]) for a in peer.addrs]
        try:
            await host.connect(PeerInfo(peer.peer_id, addrs))
            await dht.routing_table.add_peer(PeerInfo(peer.peer_id, addrs))
        except Exception as exc:  # noqa: BLE001 - py-libp2p raises many kinds; count it
            node.error = repr(exc)
    if not peers:
        return True
    me: ID = host.get_id()
    found = await dht.peer_routing.find_closest_peers_network(me.to_bytes())
    for peer_id in found:
        addrs = host.get_peerstore().addrs(peer_id)
        if addrs:
            await dht.routing_table.add_peer(PeerInfo(peer_id, addrs))
    return bool(dht.routing_table.size() > 0)


async def workload(args: argparse.Namespace, res: dict[str, Any]) -> None:
    rng = random.Random(args.seed)
    n: int = args.n
    gc.collect()
    rss0 = rss_bytes()
    t_setup = time.perf_counter()
    nodes = [PyNode(i) for i in range(n)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(run_node, node)
            await node.up.wait()
        status(f"py-libp2p n={n}: {n} hosts listening; bootstrapping")
        limiter = trio.CapacityLimiter(args.bootstrap_concurrency)
        boot_fail = 0

        async def boot(node: PyNode) -> None:
            nonlocal boot_fail
            async with limiter:
                i = node.index
                peers = [nodes[j] for j in rng.sample(range(i), min(BOOTSTRAP_PEERS, i))]
                try:
                    ok = await bootstrap(node, peers)
                except Exception as exc:  # noqa: BLE001 - any failure counts as a failed boot
                    node.error = repr(exc)
                    ok = False
                boot_fail += not ok

        with trio.move_on_after(SETUP_DEADLINE) as scope:
            async with trio.open_nursery() as boots:
                for node in nodes:
                    boots.start_soon(boot, node)
        if scope.cancelled_caught:
            res["note"] += f" bootstrap cut at {SETUP_DEADLINE:.0f} s;"
        res["setup_s"] = time.perf_counter() - t_setup
        sizes = sorted(node.dht.routing_table.size() for node in nodes)
        res["extra"].update(
            setup_cpu_s=round(time.process_time(), 1),
            boot_failures=boot_fail,
            table_p50=sizes[n // 2],
            table_min=sizes[0],
        )
        errors = [node.error for node in nodes if node.error]
        if errors:
            res["extra"]["first_error"] = errors[0][:200]
        status(f"py-libp2p n={n}: bootstrapped in {res['setup_s']:.1f} s; tables {sizes[0]}..")

        values = [
            (f"/bench/{i}-{rng.getrandbits(64):016x}", rng.randbytes(VALUE_SIZE), rng.randrange(n))
            for i in range(args.values)
        ]
        with trio.move_on_after(PHASE_DEADLINE) as phase:
            for key, value, who in values:
                res["puts"] += 1
                try:
                    with trio.move_on_after(GET_DEADLINE):
                        await nodes[who].dht.put_value(key, value)
                        res["put_ok"] += 1
                except Exception as exc:  # noqa: BLE001 - a put that raises is a failed put
                    res["extra"]["put_error"] = repr(exc)[:200]
        if phase.cancelled_caught:
            res["note"] += f" puts cut at {PHASE_DEADLINE:.0f} s after {res['puts']};"
            res["puts"] = len(values)
        gc.collect()
        res["rss_per_node"] = (rss_bytes() - rss0) / n
        status(f"py-libp2p n={n}: {res['put_ok']}/{res['puts']} puts done")

        async def get_all(pool: list[PyNode], after: bool, concurrency: int) -> None:
            sem = trio.Semaphore(concurrency)
            prefix = "kill_" if after else ""

            async def one(key: str, value: bytes, who: int) -> None:
                async with sem:
                    getter = rng.choice([p for p in pool if p.index != who])
                    t0 = time.perf_counter()
                    got = None
                    try:
                        with trio.move_on_after(GET_DEADLINE):
                            got = await getter.dht.get_value(key)
                    except Exception as exc:  # noqa: BLE001 - a get that raises failed
                        res["extra"][prefix + "get_error"] = repr(exc)[:200]
                    res[prefix + "gets"] += 1
                    res[prefix + "get_ok"] += got == value
                    res["kill_latencies" if after else "get_latencies"].append(
                        time.perf_counter() - t0
                    )

            with trio.move_on_after(PHASE_DEADLINE) as phase:
                async with trio.open_nursery() as gets:
                    for v in values:
                        gets.start_soon(one, *v)
            if phase.cancelled_caught:
                res["note"] += (
                    f" {prefix}gets cut at {PHASE_DEADLINE:.0f} s after {res[prefix + 'gets']};"
                )
                res[prefix + "gets"] = len(values)

        t0, c0 = time.perf_counter(), time.process_time()
        await get_all(nodes, False, args.concurrency)
        res["extra"]["healthy_get_wall_s"] = round(time.perf_counter() - t0, 2)
        res["extra"]["healthy_cpu_ms_per_get"] = round(
            1000 * (time.process_time() - c0) / max(1, args.values), 1
        )
        status(f"py-libp2p n={n}: healthy gets {res['get_ok']}/{res['gets']}")

        victims = rng.sample(nodes, int(n * args.kill_fraction))
        res["killed"] = len(victims)
        for node in victims:
            node.kill.set()
        # Leaving host.run can take minutes for 60 loaded hosts; the survivors are asked right
        # away (as after a crash), whatever the victims' shutdown is still doing.
        with trio.move_on_after(KILL_WAIT):
            for node in victims:
                await node.down.wait()
        dead = {node.index for node in victims}
        alive = [node for node in nodes if node.index not in dead]
        status(f"py-libp2p n={n}: killed {len(victims)}; getting again from survivors")
        t0, c0 = time.perf_counter(), time.process_time()
        await get_all(alive, True, args.kill_concurrency)
        res["extra"]["killed_get_wall_s"] = round(time.perf_counter() - t0, 2)
        res["extra"]["killed_cpu_ms_per_get"] = round(
            1000 * (time.process_time() - c0) / max(1, args.values), 1
        )
        status(f"py-libp2p n={n}: after kill {res['kill_get_ok']}/{res['kill_gets']}")
        # Report before the teardown: closing 140 loaded hosts can outlast the driver's limit.
        print(json.dumps(res), flush=True)
        nursery.cancel_scope.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description="py-libp2p kad-dht anchor for bench/dht_nodes.py")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--values", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kill-fraction", type=float, default=0.3)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--kill-concurrency", type=int, default=5)
    p.add_argument("--bootstrap-concurrency", type=int, default=8)
    args = p.parse_args()
    logging.disable(logging.WARNING)
    raise_fd_limit()
    res: dict[str, Any] = {
        "impl": "pylibp2p", "nodes": args.n, "puts": 0, "put_ok": 0, "gets": 0, "get_ok": 0,
        "get_latencies": [], "kill_gets": 0, "kill_get_ok": 0, "kill_latencies": [],
        "note": "", "extra": {"loop": "trio", "version": "libp2p 0.8.1"},
    }  # fmt: skip
    try:
        trio.run(workload, args, res)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        # A crash in py-libp2p must still leave what was measured (and say why it stopped).
        res["note"] += f" crashed: {exc!r}"[:300]
        print(json.dumps(res), flush=True)
        raise


if __name__ == "__main__":
    main()

# mypy: disable-error-code="import-not-found,import-untyped,unused-ignore,no-untyped-call"
# (Runs in its own venv, .venv-kademlia, made by scripts/setup-bench.sh; the project's venv
# type-checks it without the kademlia package.)
"""Anchor for ``bench/dht_nodes.py``: bmuller ``kademlia`` 2.2.3 on the same workload.

N ``kademlia.network.Server`` objects in one asyncio process, each on its own UDP socket on
127.0.0.1 (rpcudp, 5 s per-RPC timeout, k = 20, alpha = 3, the library's defaults). Each node
bootstraps from a few earlier nodes (``bootstrap`` = ping them, then a self-lookup); values are
``set`` from random nodes and ``get`` from a random other node; then 30% of the nodes are
stopped (their UDP socket closed, no goodbye exists in this protocol) and every value is got
again from a random survivor. Prints one JSON line (the fields of ``dht_nodes.Result``).

    .venv-kademlia/bin/python bench/dht_anchor_kademlia.py --n 200 --values 100
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from kademlia.network import Server

BOOTSTRAP_PEERS = 3
VALUE_SIZE = 64
GET_DEADLINE = 30.0


def status(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def bounded(concurrency: int, jobs: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` (not yet started coroutines) with at most ``concurrency`` at a time."""
    sem = asyncio.Semaphore(concurrency)

    async def one(job: Coroutine[Any, Any, None]) -> None:
        async with sem:
            await job

    await asyncio.gather(*(one(j) for j in jobs))


async def workload(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    n: int = args.n
    res: dict[str, Any] = {
        "impl": "kademlia", "nodes": n, "puts": 0, "put_ok": 0, "gets": 0, "get_ok": 0,
        "get_latencies": [], "kill_gets": 0, "kill_get_ok": 0, "kill_latencies": [],
        "note": "", "extra": {"loop": "asyncio", "version": "kademlia 2.2.3 (rpcudp 5 s)"},
    }  # fmt: skip
    gc.collect()
    rss0 = rss_bytes()
    t_setup = time.perf_counter()
    servers: list[Server] = []
    ports: list[int] = []
    for _ in range(n):
        server = Server()
        await server.listen(0, interface="127.0.0.1")
        servers.append(server)
        ports.append(server.transport.get_extra_info("sockname")[1])
    status(f"kademlia n={n}: {n} nodes listening; bootstrapping")

    async def boot(i: int) -> None:
        if i == 0:
            return
        peers = rng.sample(range(i), min(BOOTSTRAP_PEERS, i))
        await servers[i].bootstrap([("127.0.0.1", ports[j]) for j in peers])

    await bounded(args.bootstrap_concurrency, [boot(i) for i in range(n)])
    res["setup_s"] = time.perf_counter() - t_setup
    res["extra"]["setup_cpu_s"] = round(time.process_time(), 1)
    sizes = sorted(sum(len(b) for b in s.protocol.router.buckets) for s in servers)
    res["extra"].update(table_p50=sizes[n // 2], table_min=sizes[0])
    status(
        f"kademlia n={n}: bootstrapped in {res['setup_s']:.1f} s; tables {sizes[0]}..{sizes[-1]}"
    )

    values = [
        (f"/bench/{i}-{rng.getrandbits(64):016x}", rng.randbytes(VALUE_SIZE), rng.randrange(n))
        for i in range(args.values)
    ]

    async def do_put(key: str, value: bytes, who: int) -> None:
        res["puts"] += 1
        if await servers[who].set(key, value):
            res["put_ok"] += 1

    await bounded(args.concurrency, [do_put(*v) for v in values])
    gc.collect()
    res["rss_per_node"] = (rss_bytes() - rss0) / n
    status(f"kademlia n={n}: {res['put_ok']}/{res['puts']} puts stored")

    async def do_get(key: str, value: bytes, who: int, pool: list[int], after: bool) -> None:
        getter = rng.choice([i for i in pool if i != who])
        t0 = time.perf_counter()
        try:
            got = await asyncio.wait_for(servers[getter].get(key), GET_DEADLINE)
        except TimeoutError:
            got = None
        dt = time.perf_counter() - t0
        prefix = "kill_" if after else ""
        res[prefix + "gets"] += 1
        res[prefix + "get_ok"] += got == value
        res["kill_latencies" if after else "get_latencies"].append(dt)

    everyone = list(range(n))
    t0, c0 = time.perf_counter(), time.process_time()
    await bounded(args.concurrency, [do_get(*v, everyone, False) for v in values])
    res["extra"]["healthy_get_wall_s"] = round(time.perf_counter() - t0, 2)
    res["extra"]["healthy_cpu_ms_per_get"] = round(
        1000 * (time.process_time() - c0) / args.values, 1
    )
    status(f"kademlia n={n}: healthy gets {res['get_ok']}/{res['gets']}")

    victims = set(rng.sample(range(n), int(n * args.kill_fraction)))
    res["killed"] = len(victims)
    for i in victims:
        servers[i].stop()
    alive = [i for i in range(n) if i not in victims]
    status(f"kademlia n={n}: killed {len(victims)}; getting again from survivors")
    t0, c0 = time.perf_counter(), time.process_time()
    await bounded(args.kill_concurrency, [do_get(*v, alive, True) for v in values])
    res["extra"]["killed_get_wall_s"] = round(time.perf_counter() - t0, 2)
    res["extra"]["killed_cpu_ms_per_get"] = round(
        1000 * (time.process_time() - c0) / args.values, 1
    )
    status(f"kademlia n={n}: after kill {res['kill_get_ok']}/{res['kill_gets']}")
    for i in alive:
        servers[i].stop()
    await asyncio.sleep(0)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description="bmuller kademlia anchor for bench/dht_nodes.py")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--values", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kill-fraction", type=float, default=0.3)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--kill-concurrency", type=int, default=5)
    p.add_argument("--bootstrap-concurrency", type=int, default=8)
    args = p.parse_args()
    logging.getLogger("kademlia").setLevel(logging.CRITICAL)
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    raise_fd_limit()
    res = asyncio.run(workload(args))
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()

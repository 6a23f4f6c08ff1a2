"""The DHT at 200 and 1,000 real nodes in one process, with its anchors side by side.

Workload (the same for every implementation): N nodes on loopback in one process; each knows a
few earlier nodes as bootstrap peers and runs its self-lookup; 100 values are put from random
nodes; each is then got from a random other node (success, p50/p95 latency); memory per node is
the RSS growth divided by N. Then 30% of the nodes are killed abruptly and every value is got
again from a random survivor.

- peerstack: a full ``Node`` (TCP + Noise + Yamux + identify) per DHT node, ``KadDHT`` on its
  ``BasicHost`` wired to the node's identify as the node wires its own DHT
  (``node_dht.attach_identify``: a peer whose identify lists the kad protocol enters the routing
  table, no FIND_NODE probe per new connection), the /24 diversity limits lifted (every peer
  is 127.0.0.1) and a permissive ``/bench/`` namespace. The process has 20,000 file
  descriptors (a hard limit) for N listeners and two per connection, so each host's connection
  manager trims idle connections above a high-water mark of about (fd budget / N); the DHT
  reconnects lazily. Killed nodes have their TCP sockets aborted (RST, no Yamux GoAway, no
  stream resets), then their listeners closed.
- peerstack-probe (an anchor of our own past; ``--impls peerstack,peerstack-probe``): the same
  without the identify wiring, so every new connection is probed with a FIND_NODE.
- bmuller ``kademlia`` 2.2.3 (asyncio, rpcudp over UDP): ``bench/dht_anchor_kademlia.py`` in
  ``.venv-kademlia``. Killed nodes close their UDP socket.
- py-libp2p 0.8.1's kad-dht at 200 nodes: ``bench/dht_anchor_pylibp2p.py`` in
  ``.venv-pylibp2p``.

Each implementation and size runs in its own child process (clean RSS, fd budget, and a hard
time bound); the parent prints one table and the ratios. Install the anchors with
``bash scripts/setup-bench.sh``.

    python bench/dht_nodes.py [--sizes 200,1000] [--values 100] [--quick]
    python bench/dht_nodes.py --worker peerstack --n 200 --values 100 [--profile out.prof]

Goals (peerstack): 100% get success healthy; >= 99.5% after the kill with p95 <= 1 s.

Gets after the kill run 5 at a time by default so that the anchor (5-15 s per get once dead
contacts cost it a UDP timeout) fits the time bound; peerstack's gets are CPU-bound, so with 5
at a time its latency includes queueing behind the other 4 on a loaded machine.
``--kill-concurrency 1`` measures one get at a time (slow for the kademlia anchor). The
"cpu ms per get" figures (process CPU over the phase / gets, every node being in the process)
do not depend on how busy the machine is; latency does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from peerstack.config import Config
from peerstack.core.multiaddr import Multiaddr
from peerstack.dht.config import DhtConfig
from peerstack.dht.records import RecordError, Validators
from peerstack.dht.service import KadDHT, ValueNotFound
from peerstack.errors import PeerstackError
from peerstack.host.interface import HostEvent, PeerConnected
from peerstack.host.limits import Limits
from peerstack.net import tcp
from peerstack.node import Node
from peerstack.node_dht import attach_identify

# Run as a script, this file's folder (not the repository) is on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    REPO_ROOT,
    bench_limits,
    fmt,
    fmt_ratio,
    goal_mark,
    loop_name,
    percentile,
    print_table,
    raise_fd_limit,
    rss_bytes,
    run,
    status,
)

BENCH_DIR = Path(__file__).resolve().parent
KADEMLIA_PYTHON = REPO_ROOT / ".venv-kademlia" / "bin" / "python"
PYLIBP2P_PYTHON = REPO_ROOT / ".venv-pylibp2p" / "bin" / "python"

NAMESPACE = "bench"
VALUE_SIZE = 64
BOOTSTRAP_PEERS = 3
#: File descriptors kept free for the interpreter, the loop, pipes and transients.
FD_RESERVE = 1500
#: A get that takes longer than this counts as failed.
GET_DEADLINE = 30.0
GOAL_HEALTHY = 100.0
GOAL_KILLED = 99.5
GOAL_P95 = 1.0


class PermissiveValidator:
    """``/bench/<anything>``: every value is valid; the first of several is the best."""

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        if len(value) > 4096:
            raise RecordError("bench values are at most 4 KiB")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        return 0


@dataclasses.dataclass(slots=True)
class Result:
    """What one implementation at one size measured (the JSON every worker prints)."""

    impl: str
    nodes: int
    puts: int = 0
    put_ok: int = 0
    gets: int = 0
    get_ok: int = 0
    get_latencies: list[float] = dataclasses.field(default_factory=list)
    rss_per_node: float = math.nan
    killed: int = 0
    kill_gets: int = 0
    kill_get_ok: int = 0
    kill_latencies: list[float] = dataclasses.field(default_factory=list)
    setup_s: float = math.nan
    note: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @staticmethod
    def from_json(obj: dict[str, Any]) -> Result:
        fields = {f.name for f in dataclasses.fields(Result)}
        data = {k: v for k, v in obj.items() if k in fields}
        for key in ("rss_per_node", "setup_s"):
            if data.get(key) is None:
                data[key] = math.nan
        return Result(**data)


# -- the peerstack worker ----------------------------------------------------------------------


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


async def bounded(concurrency: int, jobs: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` (not yet started coroutines) with at most ``concurrency`` at a time."""
    sem = asyncio.Semaphore(concurrency)

    async def one(job: Coroutine[Any, Any, None]) -> None:
        async with sem:
            await job

    await asyncio.gather(*(one(j) for j in jobs))


@dataclasses.dataclass(slots=True)
class PsNode:
    node: Node
    dht: KadDHT
    addr: Multiaddr


def abort_host(ps: PsNode) -> None:
    """Kill without goodbye: abort every TCP socket (RST), no GoAway, no stream reset."""
    for conn in ps.node.host.connections():
        conn._tcp.abort()


async def timed_get(dht: KadDHT, key: bytes, want: bytes) -> tuple[bool, float]:
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(GET_DEADLINE):
            got = await dht.get_value(key)
    except (ValueNotFound, TimeoutError, PeerstackError, OSError):
        return False, time.perf_counter() - t0
    return got == want, time.perf_counter() - t0


async def peerstack_workload(args: argparse.Namespace) -> Result:
    rng = random.Random(args.seed)
    n: int = args.n
    fd_limit = raise_fd_limit()
    high_water = max(8, min(64, (fd_limit - n - FD_RESERVE) // n))
    limits = dataclasses.replace(
        bench_limits(),
        high_water=high_water,
        low_water=max(4, high_water * 3 // 4),
        # The library defaults for idle closing and trimming cadence.
        trim_interval=Limits().trim_interval,
        idle_timeout=Limits().idle_timeout,
        handshake_timeout=30.0,
        dial_timeout=10.0,
    )
    config = Config(listen=("/ip4/127.0.0.1/tcp/0",), limits=limits)
    res = Result("peerstack-probe" if args.probe_all else "peerstack", n)
    if args.share_read_buffer:
        # An experiment, not the default: BasicHost makes one 1 MiB read buffer per host.
        shared = tcp.new_read_buffer()
        tcp.new_read_buffer = lambda size=tcp.READ_BUFFER_SIZE: shared
        res.note = "one TCP read buffer shared by all hosts"
    if args.no_probe:
        res.note += "; probe_on_connect off"
    res.extra.update(high_water=high_water, fd_limit=fd_limit, loop=loop_name())
    peak = {"fds": 0, "conns": 0}
    events = {"connected": 0}

    def on_event(event: HostEvent) -> None:
        if isinstance(event, PeerConnected):
            events["connected"] += 1

    def sample() -> None:
        peak["fds"] = max(peak["fds"], open_fds())

    gc.collect()
    rss0 = rss_bytes()
    t_setup = time.perf_counter()
    nodes: list[PsNode] = []
    alive: list[PsNode] = []
    sampler: asyncio.Task[None] | None = None

    async def sample_loop() -> None:
        while True:
            sample()
            conns = sum(len(p.node.host.connections()) for p in alive)
            peak["conns"] = max(peak["conns"], conns)
            await asyncio.sleep(2.0)

    try:
        for _ in range(n):
            node = Node(config=config)
            await node.start()
            node.host.add_listener(on_event)
            validators = Validators()
            validators.register(NAMESPACE, PermissiveValidator())
            boot: list[Multiaddr] = []
            if nodes:
                boot = [p.addr for p in rng.sample(nodes, min(BOOTSTRAP_PEERS, len(nodes)))]
            cfg = DhtConfig(
                background=False,
                max_per_group_bucket=None,
                max_per_group_table=None,
                bootstrap_peers=boot,
                # A cached stream keeps its connection busy, and a busy connection is never
                # trimmed: with 20,000 fds for 1,000 nodes, idle connections must go.
                max_cached_streams=args.cached_streams,
                probe_on_connect=not args.no_probe,
            )
            dht = KadDHT(node.host, cfg, validators=validators)
            if not args.probe_all:
                attach_identify(dht, node.identify)  # as Node does for its own DHT
            await dht.start()
            nodes.append(PsNode(node, dht, node.addrs[0]))
        alive = list(nodes)
        sampler = asyncio.get_running_loop().create_task(sample_loop())
        status(f"peerstack n={n}: {n} nodes listening; bootstrapping (high water {high_water})")
        boot_fail = 0

        async def do_boot(p: PsNode) -> None:
            nonlocal boot_fail
            if p.dht.config.bootstrap_peers and not await p.dht.bootstrap():
                boot_fail += 1

        await bounded(args.bootstrap_concurrency, [do_boot(p) for p in nodes])
        res.setup_s = time.perf_counter() - t_setup
        res.extra["setup_cpu_s"] = round(time.process_time(), 1)
        sizes = sorted(len(p.dht.routing_table) for p in nodes)
        res.extra.update(boot_failures=boot_fail, table_p50=sizes[n // 2], table_min=sizes[0])
        status(
            f"peerstack n={n}: bootstrapped in {res.setup_s:.1f} s; tables {sizes[0]}..{sizes[-1]}"
        )

        # put
        values: list[tuple[bytes, bytes, int]] = []
        for i in range(args.values):
            key = f"/{NAMESPACE}/{i}-{rng.getrandbits(64):016x}".encode()
            values.append((key, rng.randbytes(VALUE_SIZE), rng.randrange(n)))

        async def do_put(key: bytes, value: bytes, who: int) -> None:
            res.puts += 1
            try:
                stored = await nodes[who].dht.put_value(key, value)
            except (PeerstackError, OSError):
                return
            if stored > 0:
                res.put_ok += 1

        await bounded(args.concurrency, [do_put(*v) for v in values])
        gc.collect()
        res.rss_per_node = (rss_bytes() - rss0) / n
        status(f"peerstack n={n}: {res.put_ok}/{res.puts} puts stored")

        async def do_get(
            key: bytes, value: bytes, who: int, pool: list[PsNode], after: bool
        ) -> None:
            candidates = [p for p in pool if p is not nodes[who]]
            getter = rng.choice(candidates)
            ok, dt = await timed_get(getter.dht, key, value)
            if after:
                res.kill_gets += 1
                res.kill_get_ok += ok
                res.kill_latencies.append(dt)
            else:
                res.gets += 1
                res.get_ok += ok
                res.get_latencies.append(dt)

        profiler = cProfile.Profile() if args.profile else None
        conns0, rpcs0 = events["connected"], sum(p.dht.counters.rpcs_sent for p in nodes)
        if profiler is not None:
            profiler.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        await bounded(args.concurrency, [do_get(*v, nodes, False) for v in values])
        res.extra["healthy_get_wall_s"] = round(time.perf_counter() - t0, 2)
        res.extra["healthy_cpu_ms_per_get"] = round(
            1000 * (time.process_time() - c0) / max(1, res.gets), 1
        )
        # Each new connection is seen by both of its ends.
        res.extra["healthy_new_conns_per_get"] = round(
            (events["connected"] - conns0) / 2 / max(1, res.gets), 1
        )
        res.extra["healthy_rpcs_per_get"] = round(
            (sum(p.dht.counters.rpcs_sent for p in nodes) - rpcs0) / max(1, res.gets), 1
        )
        status(f"peerstack n={n}: healthy gets {res.get_ok}/{res.gets}")

        # kill 30% abruptly
        victims = rng.sample(nodes, int(n * args.kill_fraction))
        res.killed = len(victims)
        dead = {id(v) for v in victims}
        alive = [p for p in nodes if id(p) not in dead]
        for p in victims:
            abort_host(p)
        for p in victims:
            await p.dht.stop()
            await p.node.close()
        status(f"peerstack n={n}: killed {len(victims)}; getting again from survivors")
        conns0, rpcs0 = events["connected"], sum(p.dht.counters.rpcs_sent for p in alive)
        t0, c0 = time.perf_counter(), time.process_time()
        await bounded(args.kill_concurrency, [do_get(*v, alive, True) for v in values])
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        res.extra["killed_get_wall_s"] = round(time.perf_counter() - t0, 2)
        res.extra["killed_cpu_ms_per_get"] = round(
            1000 * (time.process_time() - c0) / max(1, res.kill_gets), 1
        )
        res.extra["killed_new_conns_per_get"] = round(
            (events["connected"] - conns0) / 2 / max(1, res.kill_gets), 1
        )
        res.extra["killed_rpcs_per_get"] = round(
            (sum(p.dht.counters.rpcs_sent for p in alive) - rpcs0) / max(1, res.kill_gets), 1
        )
        rpcs = sum(p.dht.counters.rpcs_sent for p in nodes)
        failed = sum(p.dht.counters.rpcs_failed for p in nodes)
        res.extra.update(
            rpcs_sent=rpcs, rpcs_failed=failed, peak_fds=peak["fds"], peak_conns=peak["conns"]
        )
        res.extra.update(
            probes=sum(p.dht.counters.probes for p in nodes),
            identify_admitted=sum(p.dht.counters.identify_admitted for p in nodes),
        )
        status(f"peerstack n={n}: after kill {res.kill_get_ok}/{res.kill_gets}")
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        for p in alive:
            await p.dht.stop()
        await asyncio.gather(*(p.node.close() for p in alive), return_exceptions=True)
    return res


def result_json(res: Result) -> str:
    obj = dataclasses.asdict(res)
    for key, value in list(obj.items()):
        if isinstance(value, float) and math.isnan(value):
            obj[key] = None
    return json.dumps(obj)


def worker_main(args: argparse.Namespace) -> None:
    res = run(peerstack_workload(args))
    print(result_json(res), flush=True)


# -- the driver --------------------------------------------------------------------------------


def run_child(argv: list[str], timeout: float, label: str) -> Result | str:
    """Run one worker; its last stdout line is the Result JSON. A string says why it failed."""
    status(f"{label}: {' '.join(argv[1:])}")
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=REPO_ROOT
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        timed_out = True
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [ln for ln in (out or "").splitlines() if ln.startswith("{")]
    if not lines:
        return f"timed out after {timeout:.0f} s" if timed_out else f"exited with {proc.returncode}"
    obj = json.loads(lines[-1])
    if not isinstance(obj, dict):
        return "bad output"
    res = Result.from_json(obj)
    if timed_out:
        res.note += f" (killed at the {timeout:.0f} s limit after reporting)"
    elif proc.returncode != 0:
        res.note += f" (exited with {proc.returncode} after reporting)"
    return res


def pct(ok: int, total: int) -> float:
    return 100.0 * ok / total if total else math.nan


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.0f} ms"


def row(res: Result) -> list[str]:
    return [
        res.impl,
        str(res.nodes),
        f"{res.put_ok}/{res.puts}",
        f"{fmt(pct(res.get_ok, res.gets))}%",
        ms(percentile(res.get_latencies, 50)),
        ms(percentile(res.get_latencies, 95)),
        f"{fmt(res.rss_per_node / 1024)} KiB",
        f"{fmt(pct(res.kill_get_ok, res.kill_gets), 2)}%",
        ms(percentile(res.kill_latencies, 50)),
        ms(percentile(res.kill_latencies, 95)),
        fmt(res.setup_s),
    ]


def driver_main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    impls = [s for s in args.impls.split(",") if s]
    common = [
        "--values", str(args.values),
        "--seed", str(args.seed),
        "--kill-fraction", str(args.kill_fraction),
        "--concurrency", str(args.concurrency),
        "--kill-concurrency", str(args.kill_concurrency),
    ]  # fmt: skip
    results: list[Result] = []
    failures: list[str] = []
    notes: list[str] = []
    for n in sizes:
        for impl in impls:
            if impl in ("peerstack", "peerstack-probe"):
                argv = [PYTHON, str(BENCH_DIR / "dht_nodes.py"), "--worker", "--n", str(n)]
                argv += ["--bootstrap-concurrency", str(args.bootstrap_concurrency)]
                if impl == "peerstack-probe":
                    argv.append("--probe-all")
            elif impl == "kademlia":
                if not KADEMLIA_PYTHON.exists():
                    failures.append(f"kademlia: {KADEMLIA_PYTHON} missing (scripts/setup-bench.sh)")
                    continue
                argv = [str(KADEMLIA_PYTHON), str(BENCH_DIR / "dht_anchor_kademlia.py")]
                argv += ["--n", str(n)]
            elif impl == "pylibp2p":
                if n > args.pylibp2p_max:
                    continue
                if not PYLIBP2P_PYTHON.exists():
                    failures.append(f"py-libp2p: {PYLIBP2P_PYTHON} missing (setup-interop.sh)")
                    continue
                argv = [str(PYLIBP2P_PYTHON), str(BENCH_DIR / "dht_anchor_pylibp2p.py")]
                argv += ["--n", str(n)]
            else:
                raise SystemExit(f"unknown implementation {impl!r}")
            got = run_child(argv + common, args.run_timeout, f"{impl} n={n}")
            if isinstance(got, str):
                failures.append(f"{impl} at {n} nodes: {got}")
                continue
            results.append(got)
            if got.note:
                notes.append(f"{impl} at {n}: {got.note}")
            if impl != "peerstack":  # peerstack's own extras go with its goals below
                notes.append(f"{impl} at {n}: {json.dumps(got.extra)}")
            status(f"{impl} n={n}: {json.dumps(got.extra)}")
    headers = [
        "implementation", "nodes", "puts ok", "get ok", "p50", "p95", "mem/node",
        "get ok after kill", "p50 after", "p95 after", "setup s",
    ]  # fmt: skip
    rows = [row(r) for r in results]
    by = {(r.impl, r.nodes): r for r in results}
    for n in sizes:
        ps = by.get(("peerstack", n))
        if ps is None:
            continue
        for anchor in ("peerstack-probe", "kademlia", "pylibp2p"):
            other = by.get((anchor, n))
            if other is None:
                continue
            rows.append(ratio_row(ps, other))
    for n in sizes:
        ps = by.get(("peerstack", n))
        if ps is None:
            continue
        healthy = pct(ps.get_ok, ps.gets)
        after = pct(ps.kill_get_ok, ps.kill_gets)
        p95 = percentile(ps.kill_latencies, 95)
        notes.append(
            f"peerstack at {n}: healthy {fmt(healthy)}% (goal 100%: "
            f"{goal_mark(healthy, GOAL_HEALTHY)}); after kill {fmt(after, 2)}% (goal >= 99.5%: "
            f"{goal_mark(after, GOAL_KILLED)}), p95 {ms(p95)} (goal <= 1 s: "
            f"{goal_mark(p95, GOAL_P95, higher_is_better=False)}); extra {json.dumps(ps.extra)}"
        )
    notes.append(
        f"{args.values} values of {VALUE_SIZE} B; gets {args.concurrency} at a time healthy, "
        f"{args.kill_concurrency} at a time after killing {args.kill_fraction:.0%}; a get "
        f"over {GET_DEADLINE:.0f} s fails; mem/node = RSS growth / nodes; ratios: "
        "peerstack / anchor (for latency and memory below 1 is better)."
    )
    notes.extend(f"NOT MEASURED: {f}" for f in failures)
    print_table("DHT: N real nodes in one process on loopback", headers, rows, notes)


def ratio_row(ps: Result, other: Result) -> list[str]:
    def r(a: float, b: float) -> str:
        return fmt_ratio(a, b)

    return [
        f"ratio vs {other.impl}",
        str(ps.nodes),
        "",
        r(pct(ps.get_ok, ps.gets), pct(other.get_ok, other.gets)),
        r(percentile(ps.get_latencies, 50), percentile(other.get_latencies, 50)),
        r(percentile(ps.get_latencies, 95), percentile(other.get_latencies, 95)),
        r(ps.rss_per_node, other.rss_per_node),
        r(pct(ps.kill_get_ok, ps.kill_gets), pct(other.kill_get_ok, other.kill_gets)),
        r(percentile(ps.kill_latencies, 50), percentile(other.kill_latencies, 50)),
        r(percentile(ps.kill_latencies, 95), percentile(other.kill_latencies, 95)),
        r(ps.setup_s, other.setup_s),
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The DHT at N real nodes, anchors side by side.")
    p.add_argument("--sizes", default="200,1000")
    p.add_argument("--values", type=int, default=100)
    p.add_argument("--impls", default="peerstack,kademlia,pylibp2p")
    p.add_argument("--pylibp2p-max", type=int, default=200, help="py-libp2p only up to this N")
    p.add_argument("--quick", action="store_true", help="smoke run: 50 nodes, 20 values")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kill-fraction", type=float, default=0.3)
    p.add_argument("--concurrency", type=int, default=1, help="gets/puts at once, healthy")
    p.add_argument("--kill-concurrency", type=int, default=5, help="gets at once after kill")
    p.add_argument("--bootstrap-concurrency", type=int, default=8)
    p.add_argument("--run-timeout", type=float, default=1500.0, help="per implementation+size")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=200, help=argparse.SUPPRESS)
    p.add_argument("--cached-streams", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--profile", default="", help="worker: cProfile both get phases")
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="worker experiment: DhtConfig(probe_on_connect=False)",
    )
    p.add_argument(
        "--probe-all",
        action="store_true",
        help="worker: no identify wiring, every new connection probed (peerstack-probe)",
    )
    p.add_argument(
        "--share-read-buffer",
        action="store_true",
        help="worker experiment: every host shares one TCP read buffer (memory per node)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.values = "50", 20
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args)
    else:
        driver_main(args)


if __name__ == "__main__":
    main()

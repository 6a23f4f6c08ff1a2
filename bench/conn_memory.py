"""Memory per idle connection, and 10,000 concurrent connections held by one node.

The node under test is a listener in its own process: a ``BasicHost`` with identify and ping,
its limits (connections, per-IP, pending handshakes, trimming, idle timeout) and its peerstore
raised so nothing is refused or trimmed. Dialer processes (each its own fd budget) open the
connections in concurrent batches, one fresh identity (one ``BasicHost`` with identify) per
connection, as 10,000 distinct peers would. Once every connection is up, identified and idle,
the listener reports its RSS; the figure is (RSS - RSS before) / connections.

A second, smaller run repeats this with ``tracemalloc`` on in the listener for the Python heap
per connection and the allocation sites that hold it. The anchor, in the same run: a plain
uvloop TCP listener holding the same number of idle connections (no crypto, no muxer).
Goal: <= 30 KB per connection.

    python bench/conn_memory.py [--n 10000] [--traced 1000] [--dialers 2] [--batch 200]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peerstack.core.identity import PrivateKey
from peerstack.host.host import BasicHost
from peerstack.host.peerstore import Peerstore
from peerstack.protocols import ping
from peerstack.protocols.identify import IdentifyService

# Run as a script, this file's folder (not the repository) is on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    ServerProcess,
    answer,
    bench_limits,
    fmt,
    goal_mark,
    loop_name,
    print_table,
    raise_fd_limit,
    rss_bytes,
    run,
    status,
    stdin_lines,
)

WARMUP = 50
TOP_SITES = 12


def start_identify(host: BasicHost) -> IdentifyService:
    service = IdentifyService(host, host.peerstore, host.private_key.public_key, host.protocols)
    service.start()
    return service


# -- the listener (the node measured) ----------------------------------------------------------


class _Held(asyncio.Protocol):
    """Plain-TCP anchor: hold the connection, drop whatever arrives."""

    def __init__(self, held: set[asyncio.BaseTransport]) -> None:
        self.held = held
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.held.add(transport)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.held.discard(self.transport)


async def serve(kind: str, traced: bool, capacity: int) -> None:
    raise_fd_limit()
    if traced:
        tracemalloc.start(1)
    loop = asyncio.get_running_loop()
    held: set[asyncio.BaseTransport] = set()
    host: BasicHost | None = None
    service: IdentifyService | None = None
    count: Callable[[], int]
    if kind == "peerstack":
        host = BasicHost(
            PrivateKey.generate(),
            listen_addrs=["/ip4/127.0.0.1/tcp/0"],
            limits=bench_limits(capacity),
            peerstore=Peerstore(max_peers=capacity),
        )
        await host.start()
        ping.register(host)
        service = start_identify(host)
        addr = f"{host.listen_addrs()[0]}/p2p/{host.peer_id}"
        h = host
        count = lambda: len(h.connmgr.connections())  # noqa: E731
    else:
        server = await loop.create_server(lambda: _Held(held), "127.0.0.1", 0, backlog=4096)
        addr = f"/ip4/127.0.0.1/tcp/{server.sockets[0].getsockname()[1]}"
        count = lambda: len(held)  # noqa: E731
    print(addr, flush=True)
    baseline: tracemalloc.Snapshot | None = None
    async for line in stdin_lines():
        if line == "count":
            answer({"conns": count()})
        elif line in ("baseline", "measure"):
            gc.collect()
            info: dict[str, Any] = {"conns": count(), "rss": rss_bytes()}
            if traced:
                info["traced"] = tracemalloc.get_traced_memory()[0]
                snap = tracemalloc.take_snapshot()
                if line == "baseline":
                    baseline = snap
                elif baseline is not None:
                    info["top"] = _top_sites(snap, baseline)
            answer(info)
    if service is not None:
        await service.close()
    if host is not None:
        await host.close()


def _top_sites(snap: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot) -> list[list[Any]]:
    """The allocation sites that grew most since the baseline: [file:line, bytes, blocks]."""
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = snap.filter_traces(keep).compare_to(baseline.filter_traces(keep), "lineno")
    out: list[list[Any]] = []
    for stat in diff[:TOP_SITES]:
        frame = stat.traceback[0]
        name = re.sub(r"^.*/(src|python3\.\d+|site-packages)/", "", frame.filename)
        out.append([f"{name}:{frame.lineno}", stat.size_diff, stat.count_diff])
    return out


# -- the dialers -------------------------------------------------------------------------------


async def dial_many(kind: str) -> None:
    """Print a ready line; on ``open ADDR N BATCH`` open N connections and hold them."""
    raise_fd_limit()
    print("ready", flush=True)
    hosts: list[BasicHost] = []
    services: list[IdentifyService] = []
    transports: list[asyncio.BaseTransport] = []
    loop = asyncio.get_running_loop()

    shared_buffer: object = None

    # Long dial and handshake timeouts: on a loaded machine a burst of dials can overflow the
    # listener's accept backlog, and SYN retries take seconds.
    limits = bench_limits(16)

    async def one_peerstack(addr: str) -> None:
        nonlocal shared_buffer
        host = BasicHost(PrivateKey.generate(), limits=limits)
        # Thousands of hosts live in this process, one per simulated peer. Each BasicHost
        # allocates (and zero-fills) its own read buffer, 1 MiB resident each; the dialers'
        # memory is not what we measure, so they all share the first host's buffer.
        if shared_buffer is None:
            shared_buffer = getattr(host, "_read_buffer", None)
        elif hasattr(host, "_read_buffer"):
            host._read_buffer = shared_buffer  # type: ignore[assignment]
        await host.start()
        hosts.append(host)
        ping.register(host)
        service = start_identify(host)
        services.append(service)
        peer = await host.dial(addr)
        await service.wait_identified(peer)

    async def one_tcp(addr: str) -> None:
        port = int(addr.rsplit("/", 1)[1])
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transports.append(transport)

    async for line in stdin_lines():
        parts = line.split()
        if len(parts) != 4 or parts[0] != "open":
            answer({"error": f"unknown command {line!r}"})
            continue
        addr, n, batch = parts[1], int(parts[2]), int(parts[3])
        one = one_peerstack if kind == "peerstack" else one_tcp
        start = time.perf_counter()
        failed = 0
        for off in range(0, n, batch):
            results = await asyncio.gather(
                *(one(addr) for _ in range(min(batch, n - off))), return_exceptions=True
            )
            for r in results:
                if isinstance(r, BaseException):
                    failed += 1
                    if failed == 1:
                        print(f"dialer: {r!r}", file=sys.stderr, flush=True)
            done = min(off + batch, n)
            if done % (10 * batch) == 0 or done == n:
                elapsed = time.perf_counter() - start
                print(f"dialer: {done}/{n} in {elapsed:.1f} s", file=sys.stderr, flush=True)
        answer({"opened": n - failed, "failed": failed, "seconds": time.perf_counter() - start})
    for t in transports:
        t.close()
    await asyncio.gather(*(s.close() for s in services), return_exceptions=True)
    await asyncio.gather(*(h.close() for h in hosts), return_exceptions=True)


# -- orchestration -----------------------------------------------------------------------------


def wait_for(listener: ServerProcess, want: int, timeout: float) -> int:
    """Poll the listener until it holds ``want`` connections (or time runs out)."""
    deadline = time.monotonic() + timeout
    conns = -1
    while time.monotonic() < deadline:
        conns = int(listener.request("count")["conns"])
        if conns == want:
            return conns
        time.sleep(0.25)
    return conns


def measure(kind: str, n: int, dialers: int, batch: int, traced: bool) -> dict[str, Any]:
    """Run one listener of ``kind`` with ``n`` connections from ``dialers`` processes."""
    argv = [PYTHON, __file__, "--serve", kind, "--capacity", str(n + 2 * WARMUP + 100)]
    if traced:
        argv.append("--tracemalloc")
    with ServerProcess(argv) as listener:
        addr = listener.ready
        # Warm up every code path (and lazy imports) first, so the baseline holds them.
        with ServerProcess([PYTHON, __file__, "--dial", kind]) as warm:
            warm.request(f"open {addr} {WARMUP} {WARMUP}", timeout=120)
            wait_for(listener, WARMUP, 30)
        wait_for(listener, 0, 30)
        time.sleep(0.5)
        base = listener.request("baseline")
        procs = [ServerProcess([PYTHON, __file__, "--dial", kind]) for _ in range(dialers)]
        try:
            share = [n // dialers + (1 if i < n % dialers else 0) for i in range(dialers)]
            start = time.perf_counter()
            for proc, k in zip(procs, share, strict=True):
                proc.send(f"open {addr} {k} {batch}")
            opened = [proc.read_json(timeout=600) for proc in procs]
            elapsed = time.perf_counter() - start
            held = wait_for(listener, n, 60)
            time.sleep(1.0)  # let the last identify streams finish and close
            end = listener.request("measure")
        finally:
            for proc in procs:
                proc.close(timeout=60)
    conns = int(end["conns"])
    result: dict[str, Any] = {
        "conns": conns,
        "held": held,
        "failed": sum(int(o.get("failed", 0)) for o in opened),
        "seconds": elapsed,
        "rss_per_conn": (int(end["rss"]) - int(base["rss"])) / max(conns, 1),
        "rss_total": int(end["rss"]),
    }
    if traced:
        result["traced_per_conn"] = (int(end["traced"]) - int(base["traced"])) / max(conns, 1)
        result["top"] = end.get("top", [])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="connections held by the node")
    parser.add_argument("--traced", type=int, default=1_000, help="connections, tracemalloc run")
    parser.add_argument("--dialers", type=int, default=2, help="dialer processes")
    parser.add_argument("--batch", type=int, default=200, help="concurrent dials per dialer")
    parser.add_argument("--serve", choices=["peerstack", "tcp"], help=argparse.SUPPRESS)
    parser.add_argument("--dial", choices=["peerstack", "tcp"], help=argparse.SUPPRESS)
    parser.add_argument("--capacity", type=int, default=20_000, help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run(serve(args.serve, args.tracemalloc, args.capacity))
        return
    if args.dial:
        run(dial_many(args.dial))
        return
    fd_limit = raise_fd_limit()
    status(f"fd limit {fd_limit}; plain TCP anchor: {args.n} connections")
    tcp = measure("tcp", args.n, args.dialers, args.batch, traced=False)
    status(f"peerstack: {args.n} connections from {args.dialers} dialer processes")
    ps = measure("peerstack", args.n, args.dialers, args.batch, traced=False)
    status(f"peerstack with tracemalloc: {args.traced} connections")
    tr = measure("peerstack", args.traced, 1, args.batch, traced=True)

    def kb(v: float) -> str:
        return fmt(v / 1000, 1)

    rows = [
        [
            "plain TCP (uvloop), idle",
            f"{tcp['conns']:,}",
            kb(tcp["rss_per_conn"]),
            "-",
            fmt(tcp["seconds"], 1),
            fmt(tcp["rss_total"] / 1e6, 0),
            "",
        ],
        [
            "peerstack BasicHost + identify, idle",
            f"{ps['conns']:,}",
            kb(ps["rss_per_conn"]),
            "-",
            fmt(ps["seconds"], 1),
            fmt(ps["rss_total"] / 1e6, 0),
            f"goal <= 30 KB: {goal_mark(ps['rss_per_conn'], 30_000, higher_is_better=False)}",
        ],
        [
            "peerstack, tracemalloc on",
            f"{tr['conns']:,}",
            kb(tr["rss_per_conn"]),
            kb(tr["traced_per_conn"]),
            fmt(tr["seconds"], 1),
            fmt(tr["rss_total"] / 1e6, 0),
            "",
        ],
    ]
    failed = ps["failed"] + tcp["failed"] + tr["failed"]
    print_table(
        f"memory per idle connection, listener in its own process, {loop_name()}",
        ["node", "conns held", "RSS KB/conn", "py heap KB/conn", "open s", "RSS MB", "note"],
        rows,
        notes=[
            "KB = 1000 bytes; RSS per connection = (RSS after - RSS before) / connections held",
            f"peerstack held {ps['conns']:,} of {args.n:,} connections at once"
            + (f"; {failed} dials failed" if failed else ""),
            "peerstack / plain TCP per connection: "
            f"{ps['rss_per_conn'] / max(tcp['rss_per_conn'], 1):.1f}x",
        ],
    )
    print_table(
        f"where the Python heap of {tr['conns']:,} idle connections goes (tracemalloc, top sites)",
        ["site", "KB total", "bytes/conn", "blocks/conn"],
        [
            [
                str(site),
                fmt(size / 1000, 0),
                fmt(size / max(tr["conns"], 1), 0),
                fmt(blocks / max(tr["conns"], 1), 1),
            ]
            for site, size, blocks in tr["top"]
        ],
    )


if __name__ == "__main__":
    main()

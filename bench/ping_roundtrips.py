"""Ping round trips per second on one open stream, two processes, loopback.

peerstack -> peerstack over ``/ipfs/ping/1.0.0`` (32-byte payloads, one outstanding), measured
two ways on the same kind of stream:

- "stream loop": ``write(payload)`` + ``readexactly(32)``, the transport's cost alone;
- "ping_stream()": ``peerstack.protocols.ping.ping_stream``, the protocol client as services use
  it (fresh random payload, a timeout and a comparison per ping).

Both talk to peerstack's ping server (``handle_ping``), which echoes whole pings from the
stream's data handler, in the receive callback (no task wake-up per ping), as the plain-TCP
anchor's echo does from its ``data_received``.

Anchors in the same run: plain TCP ping-pong of 64 bytes between two uvloop processes (a
``Protocol`` on each side, one outstanding, the client awaiting a future per round trip), and
py-libp2p's ping on one stream (its peer's ``ping`` command) when it is installed.
Goal: >= 25,000 round trips/s for peerstack.

Placement: waking a process on the other vCPU is slow on some VMs (an inter-processor interrupt
to a halted guest CPU), and a serial ping-pong pays it twice per round trip. ``--same-cpu``
pins every process of the run (this one, both peerstack ends, the plain-TCP and py-libp2p
anchors: children inherit the affinity, and it is checked) to one CPU; the round-trip rate is
then about 1 / (CPU of both sides per round trip). The default leaves placement to the
scheduler; ``--placement both`` measures both ways in one run. Every table says which
placement it used.

    python bench/ping_roundtrips.py [--runs 3] [--count 20000] [--same-cpu [CPU] | --placement both]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from pathlib import Path
from typing import cast

from peerstack.core.identity import PrivateKey
from peerstack.host.host import BasicHost
from peerstack.protocols import ping

# Run as a script, this file's folder (not the repository) is on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    CpuMeter,
    Placement,
    ServerProcess,
    add_same_cpu_option,
    ensure_interop,
    fmt,
    fmt_ratio,
    goal_mark,
    load_interop_harness,
    loop_name,
    median,
    placements,
    print_table,
    run,
    status,
    wait_stdin_closed,
)

TCP_SIZE = 64


# -- children ----------------------------------------------------------------------------------


async def serve_peerstack() -> None:
    async with BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"]) as host:
        ping.register(host)
        print(f"{host.listen_addrs()[0]}/p2p/{host.peer_id}", flush=True)
        await wait_stdin_closed()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve_tcp() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0)
    print(f"/ip4/127.0.0.1/tcp/{server.sockets[0].getsockname()[1]}", flush=True)
    await wait_stdin_closed()
    server.close()


# -- clients (round trips per second, one figure per run) ---------------------------------------


class _PingClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = 0
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= TCP_SIZE and self.waiter is not None and not self.waiter.done():
            self.got -= TCP_SIZE
            self.waiter.set_result(None)


class Cpu:
    """CPU microseconds per round trip on each side, summed over the measured runs."""

    def __init__(self, server_pid: int) -> None:
        self.meter = CpuMeter(server_pid)
        self.client = self.server = 0.0
        self.trips = 0

    def start(self) -> None:
        self.meter.start()

    def stop(self, trips: int) -> None:
        self.meter.stop()
        self.client += self.meter.own
        self.server += self.meter.child
        self.trips += trips

    def per_trip(self) -> tuple[float, float]:
        if not self.trips:
            return math.nan, math.nan
        return 1e6 * self.client / self.trips, 1e6 * self.server / self.trips


async def tcp_client(addr: str, count: int, runs: int, cpu: Cpu) -> list[float]:
    port = int(addr.rsplit("/", 1)[1])
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_PingClient, "127.0.0.1", port)
    payload = os.urandom(TCP_SIZE)
    out: list[float] = []
    for i in range(runs + 1):  # the first run warms up
        if i:
            cpu.start()
        start = time.perf_counter()
        for _ in range(count):
            fut = loop.create_future()
            proto.waiter = fut
            transport.write(payload)
            await fut
        out.append(count / (time.perf_counter() - start))
        if i:
            cpu.stop(count)
    transport.close()
    return out[1:]


async def peerstack_client(
    addr: str, count: int, runs: int, cpu: Cpu
) -> tuple[list[float], list[float]]:
    loop_rates: list[float] = []
    proto_rates: list[float] = []
    async with BasicHost(PrivateKey.generate()) as host:
        peer = await host.dial(addr)
        stream = await host.new_stream(peer, [ping.PING])
        payload = os.urandom(ping.PING_SIZE)
        for i in range(runs + 1):  # the first run warms up
            if i:
                cpu.start()
            start = time.perf_counter()
            for _ in range(count):
                await stream.write(payload)
                if await stream.readexactly(ping.PING_SIZE) != payload:
                    raise RuntimeError("ping answer does not match")
            rate = count / (time.perf_counter() - start)
            if i:
                cpu.stop(count)
            start = time.perf_counter()
            await ping.ping_stream(stream, count)
            proto_rate = count / (time.perf_counter() - start)
            if i:
                loop_rates.append(rate)
                proto_rates.append(proto_rate)
        await stream.close()
    return loop_rates, proto_rates


async def py_libp2p_rates(count: int, runs: int, placement: Placement) -> list[float]:
    harness, why = load_interop_harness()
    if harness is None:
        raise RuntimeError(why)
    kind = harness.PeerKind.PY
    listener = await harness.start_peer(kind)
    try:
        placement.check("py-libp2p listener", listener.proc.pid)
        client = await harness.start_peer(kind)
        try:
            placement.check("py-libp2p client", client.proc.pid)
            out: list[float] = []
            for _ in range(runs):
                r = await client.command("ping", addr=listener.addr, count=count)
                rtts = [float(x) for x in r["rtts_ms"]]
                out.append(len(rtts) / (sum(rtts) / 1000))
            return out
        finally:
            await client.stop()
    finally:
        await listener.stop()


def measure(args: argparse.Namespace, placement: Placement) -> None:
    """Every stack of the benchmark under one placement; prints its tables."""
    placement.apply()
    load_before = os.getloadavg()[0]
    runs, count = args.runs, args.count
    status(f"[{placement.label}] plain TCP ping-pong: {runs} x {count}")
    with ServerProcess([PYTHON, __file__, "--serve", "tcp"]) as server:
        placement.check("TCP echo", server.proc.pid)
        tcp_cpu = Cpu(server.proc.pid)
        tcp = run(tcp_client(server.ready, count, runs, tcp_cpu))
    status(f"[{placement.label}] peerstack ping: {runs} x {count} (stream loop, then ping_stream)")
    with ServerProcess([PYTHON, __file__, "--serve", "peerstack"]) as server:
        placement.check("peerstack listener", server.proc.pid)
        ps_cpu = Cpu(server.proc.pid)
        ps_loop, ps_proto = run(peerstack_client(server.ready, count, runs, ps_cpu))
    py: list[float] = []
    py_note = "not run (--no-interop)"
    if not args.no_interop:
        harness, why = load_interop_harness()
        reason = why if harness is None else ensure_interop(harness, "PY", setup=not args.no_setup)
        if reason:
            py_note = f"not run: {reason}"
        else:
            status(f"[{placement.label}] py-libp2p ping: {runs} x {args.py_count}")
            try:
                py = run(py_libp2p_rates(args.py_count, runs, placement))
                py_note = f"{args.py_count} per run"
            except (RuntimeError, OSError, TimeoutError) as exc:
                py_note = f"failed: {exc}"

    def row(label: str, rates: list[float], note: str = "", cpu: Cpu | None = None) -> list[str]:
        client, server = cpu.per_trip() if cpu is not None else (math.nan, math.nan)
        return [
            label,
            fmt(median(rates), 0),
            " ".join(fmt(r, 0) for r in rates),
            fmt(client, 1),
            fmt(server, 1),
            note,
        ]

    load_after = os.getloadavg()[0]
    goal = f"goal >= 25,000/s: {goal_mark(median(ps_loop), 25_000)}"
    print_table(
        f"ping round trips per second, one stream, two processes, {loop_name()}, "
        f"{placement.label}, median of {runs} x {count}, "
        f"load {load_before:.2f} -> {load_after:.2f}",
        ["what", "round trips/s", "runs", "client CPU us/rt", "server CPU us/rt", "note"],
        [
            row("plain TCP ping-pong, 64 B (uvloop)", tcp, cpu=tcp_cpu),
            row("peerstack stream loop, 32 B", ps_loop, goal, cpu=ps_cpu),
            row("peerstack ping_stream(), 32 B", ps_proto),
            row("py-libp2p ping, one stream, 32 B", py, py_note),
        ],
    )
    print_table(
        f"ping ratios (same run, {placement.short})",
        ["ratio", "value"],
        [
            ["peerstack stream loop / plain TCP", fmt_ratio(median(ps_loop), median(tcp))],
            ["peerstack ping_stream() / stream loop", fmt_ratio(median(ps_proto), median(ps_loop))],
            ["peerstack stream loop / py-libp2p", fmt_ratio(median(ps_loop), median(py))],
        ],
        notes=[
            placement.note(),
            "CPU us/rt: user + system CPU of each process per round trip (stream loop runs); "
            "on a loaded machine the round-trip rate also pays for waiting to be scheduled.",
            "Pinned to one CPU, a round trip costs about the CPU of both sides: "
            "rate ~ 1e6 / (client + server CPU us/rt).",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=20_000, help="round trips per run")
    parser.add_argument("--py-count", type=int, default=2_000, help="round trips per py run")
    add_same_cpu_option(parser)
    parser.add_argument(
        "--placement",
        choices=["unpinned", "same-cpu", "both"],
        default=None,
        help="unpinned (the default), same-cpu (as --same-cpu), or both, one after the other",
    )
    parser.add_argument("--no-interop", action="store_true")
    parser.add_argument("--no-setup", action="store_true", help="never run setup-interop.sh")
    parser.add_argument("--serve", choices=["peerstack", "tcp"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "peerstack":
        run(serve_peerstack())
        return
    if args.serve == "tcp":
        run(serve_tcp())
        return
    allowed = os.sched_getaffinity(0)
    try:
        for placement in placements(parser, args.same_cpu, args.placement):
            measure(args, placement)
    finally:
        os.sched_setaffinity(0, allowed)


if __name__ == "__main__":
    main()

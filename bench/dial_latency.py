"""Dial latency: TCP + multistream + Noise XX + Yamux (+ identify), fresh connections each time.

One listener in a second process; the dialer opens N fresh connections to it one after the
other and times each from the dialer's side:

- "dial" ends when ``BasicHost.dial`` returns (the connection is secured and multiplexed);
- "dial + identify" ends when our identify exchange with the listener has finished, which is
  when a real node knows the peer's protocols and addresses (goal: p50 <= 2 ms);
- "first contact": the same from a new dialler host (a new identity) each time. The rows
  above redial one listener from one host, a returning peer: from the second dial on each end
  remembers the other's handshake signature (``noise.VerifiedSignatures``) and skips its
  verification; here both ends verify, as with a peer never met before.

After each measurement the connection is closed and the next dial starts from nothing. The
CPU of both ends is reported twice: per process over the timed run (dialer / listener), and
for both ends in one process (the least of three runs: work, not waiting, so the figure to
compare across changes on a loaded machine). Anchors
in the same run: a bare TCP connect (uvloop) to a plain listener in a second process, the CPU
of a Noise XX handshake in memory (both sides, no sockets), and js-libp2p (and py-libp2p)
dialling a listener of their own kind through the interop peers' ``dial`` command, with the
command channel's own round trip (a ``peers`` command, no network) subtracted. js's dial
resolves before its identify runs, so its row compares with our "dial" row.

Placement: by default the OS places the processes (on two vCPUs the two ends mostly run on
different CPUs). ``--same-cpu`` pins every process of the run to one CPU (this one, before any
child starts, so every child inherits it: our listener, the plain TCP listener, the js-libp2p
and py-libp2p peers); the table says which placement was used and that each child was
checked. On a VM where waking a process on the other vCPU is slow (an IPI to a halted vCPU),
each segment of the handshake costs that wake-up unpinned; pinned, it does not, but the two
ends' work no longer overlaps. Run both to see which way it goes.

    python bench/dial_latency.py [--n 200] [--no-interop] [--same-cpu [CPU]] [--gap-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from pathlib import Path

from peerstack.core.identity import PrivateKey
from peerstack.host.host import BasicHost
from peerstack.host.interface import PeerDisconnected
from peerstack.protocols import ping
from peerstack.protocols.identify import IdentifyService
from peerstack.wire.noise import NoiseHandshake

# Run as a script, this file's folder (not the repository) is on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    CpuMeter,
    Placement,
    ServerProcess,
    add_same_cpu_option,
    bench_limits,
    ensure_interop,
    fmt,
    fmt_ratio,
    goal_mark,
    load_interop_harness,
    loop_name,
    median,
    percentile,
    placements,
    print_table,
    run,
    status,
    wait_stdin_closed,
)

WARMUP = 10


def start_identify(host: BasicHost) -> IdentifyService:
    service = IdentifyService(host, host.peerstore, host.private_key.public_key, host.protocols)
    service.start()
    return service


# -- children ----------------------------------------------------------------------------------


async def serve_peerstack() -> None:
    host = BasicHost(
        PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"], limits=bench_limits()
    )
    async with host:
        ping.register(host)
        service = start_identify(host)
        print(f"{host.listen_addrs()[0]}/p2p/{host.peer_id}", flush=True)
        await wait_stdin_closed()
        await service.close()


async def serve_tcp() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    print(f"/ip4/127.0.0.1/tcp/{server.sockets[0].getsockname()[1]}", flush=True)
    await wait_stdin_closed()
    server.close()


# -- measurements (milliseconds) -----------------------------------------------------------------


async def peerstack_dials(
    addr: str, n: int, cpu: CpuMeter, gap: float = 0.0
) -> tuple[list[float], list[float]]:
    """(dial ms, dial + identify ms) for ``n`` fresh connections; ``cpu`` spans the measured.

    ``gap`` seconds of idling after each close (not timed): 0 dials back to back, while the
    listener may still be tidying up the previous connection; with a gap each dial starts on
    an idle pair of processes (and idle vCPUs), as an occasional dial does.
    """
    dial_ms: list[float] = []
    ident_ms: list[float] = []
    host = BasicHost(PrivateKey.generate(), limits=bench_limits())
    async with host:
        ping.register(host)
        service = start_identify(host)
        for i in range(n + WARMUP):
            if i == WARMUP:
                cpu.start()
            t0 = time.perf_counter()
            peer = await host.dial(addr)
            t1 = time.perf_counter()
            await service.wait_identified(peer)
            t2 = time.perf_counter()
            await host.disconnect(peer)
            if i >= WARMUP:
                dial_ms.append((t1 - t0) * 1000)
                ident_ms.append((t2 - t0) * 1000)
            if gap:
                await asyncio.sleep(gap)
        cpu.stop()
        await service.close()
    return dial_ms, ident_ms


async def first_contact_dials(addr: str, n: int) -> list[float]:
    """Dial + identify ms, each from a new dialler host (new identity and Noise static key).

    Neither end has met the other's static key before, so both verify a signature they have
    not seen (the rows above redial one listener from one host: from the second dial on,
    both remember the other's signature, as with any returning peer). Starting and closing
    the host are not timed.
    """
    out: list[float] = []
    for i in range(n + WARMUP):
        host = BasicHost(PrivateKey.generate(), limits=bench_limits())
        async with host:
            ping.register(host)
            service = start_identify(host)
            t0 = time.perf_counter()
            peer = await host.dial(addr)
            await service.wait_identified(peer)
            t1 = time.perf_counter()
            await host.disconnect(peer)
            await service.close()
        if i >= WARMUP:
            out.append((t1 - t0) * 1000)
    return out


async def one_process_cpu(n: int, repeat: int = 3) -> float:
    """CPU ms of one dial + identify + close, both ends in this process (least of ``repeat``)."""
    listener = BasicHost(
        PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"], limits=bench_limits()
    )
    dialer = BasicHost(PrivateKey.generate(), limits=bench_limits())
    best = math.inf
    async with listener, dialer:
        for host in (listener, dialer):
            ping.register(host)
        services = [start_identify(listener), start_identify(dialer)]
        addr = f"{listener.listen_addrs()[0]}/p2p/{listener.peer_id}"
        gone = asyncio.Event()
        listener.add_listener(lambda ev: gone.set() if isinstance(ev, PeerDisconnected) else None)
        for run_no in range(repeat + 1):
            start = time.process_time()
            for _ in range(WARMUP if run_no == 0 else n):
                gone.clear()
                peer = await dialer.dial(addr)
                await services[1].wait_identified(peer)
                await dialer.disconnect(peer)
                await gone.wait()  # the listener's side of the close too
            if run_no:
                best = min(best, (time.process_time() - start) * 1000 / n)
        for service in services:
            await service.close()
    return best


async def tcp_connects(addr: str, n: int) -> list[float]:
    port = int(addr.rsplit("/", 1)[1])
    loop = asyncio.get_running_loop()
    out: list[float] = []
    for i in range(n + WARMUP):
        t0 = time.perf_counter()
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        t1 = time.perf_counter()
        transport.close()
        await asyncio.sleep(0)
        if i >= WARMUP:
            out.append((t1 - t0) * 1000)
    return out


def noise_in_memory(n: int) -> list[float]:
    """CPU of one Noise XX handshake, both sides in one process, bytes passed by hand."""
    a, b = PrivateKey.generate(), PrivateKey.generate()
    out: list[float] = []
    for i in range(n + WARMUP):
        t0 = time.perf_counter()
        ini = NoiseHandshake(a, initiator=True, muxers=["/yamux/1.0.0"])
        res = NoiseHandshake(b, initiator=False, muxers=["/yamux/1.0.0"])
        while not (ini.complete and res.complete):
            out_i = ini.data_to_send()
            if out_i:
                res.receive_data(out_i)
            out_r = res.data_to_send()
            if out_r:
                ini.receive_data(out_r)
            if not out_i and not out_r:
                raise RuntimeError("noise handshake stalled in memory")
        t1 = time.perf_counter()
        if i >= WARMUP:
            out.append((t1 - t0) * 1000)
    return out


async def interop_dials(kind_name: str, n: int, placement: Placement) -> tuple[list[float], float]:
    """Dial round trips (ms) through a peer's command channel, and that channel's own RTT."""
    harness, why = load_interop_harness()
    if harness is None:
        raise RuntimeError(why)
    kind = harness.PeerKind[kind_name]
    listener = await harness.start_peer(kind)
    try:
        dialer = await harness.start_peer(kind)
        try:
            for peer in (listener, dialer):
                placement.check(f"{kind_name} peer", peer.proc.pid)
            overhead: list[float] = []
            for _ in range(50):
                t0 = time.perf_counter()
                await dialer.command("peers")
                overhead.append((time.perf_counter() - t0) * 1000)
            out: list[float] = []
            for i in range(n + WARMUP):
                t0 = time.perf_counter()
                await dialer.command("dial", addr=listener.addr)
                t1 = time.perf_counter()
                await dialer.command("hangup", addr=listener.addr)
                if i >= WARMUP:
                    out.append((t1 - t0) * 1000)
            return out, median(overhead)
        finally:
            await dialer.stop()
    finally:
        await listener.stop()


# -- orchestration -----------------------------------------------------------------------------


def stats_row(label: str, values: list[float], note: str = "") -> list[str]:
    return [
        label,
        str(len(values)),
        fmt(median(values), 2),
        fmt(percentile(values, 90), 2),
        fmt(percentile(values, 99), 2),
        fmt(min(values) if values else math.nan, 2),
        note,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="fresh connections per stack")
    parser.add_argument("--no-interop", action="store_true", help="skip js / py-libp2p")
    parser.add_argument("--no-setup", action="store_true", help="never run setup-interop.sh")
    add_same_cpu_option(parser)
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="idle this long after each peerstack dial's close (default 0: back to back)",
    )
    parser.add_argument("--serve", choices=["peerstack", "tcp"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "peerstack":
        run(serve_peerstack())
        return
    if args.serve == "tcp":
        run(serve_tcp())
        return
    n = args.n
    (placement,) = placements(parser, args.same_cpu)
    if placement.pinned:
        placement.apply()  # before any child starts: they inherit the mask
    status(placement.note())
    load_before = os.getloadavg()[0]
    rows: list[list[str]] = []
    status(f"plain TCP connect x{n}")
    with ServerProcess([PYTHON, __file__, "--serve", "tcp"]) as server:
        placement.check("TCP listener", server.proc.pid)
        tcp_ms = run(tcp_connects(server.ready, n))
    rows.append(stats_row("TCP connect only (uvloop)", tcp_ms))
    status(f"Noise XX in memory x{n}")
    noise_ms = noise_in_memory(n)
    rows.append(stats_row("Noise XX handshake CPU, in memory", noise_ms, "both sides"))
    status(f"peerstack dial x{n}")
    with ServerProcess([PYTHON, __file__, "--serve", "peerstack"]) as server:
        placement.check("peerstack listener", server.proc.pid)
        cpu = CpuMeter(server.proc.pid)
        dial_ms, ident_ms = run(peerstack_dials(server.ready, n, cpu, args.gap_ms / 1000))
        status(f"peerstack dial + identify, a new dialler host each time x{n}")
        first_ms = run(first_contact_dials(server.ready, n))
    rows.append(stats_row("peerstack dial (TCP+Noise+Yamux)", dial_ms))
    rows.append(
        stats_row(
            "peerstack dial + identify",
            ident_ms,
            f"goal p50 <= 2 ms: {goal_mark(median(ident_ms), 2.0, higher_is_better=False)}",
        )
    )
    rows.append(
        stats_row(
            "  the same, first contact",
            first_ms,
            "new dialler identity each time",
        )
    )
    status(f"peerstack dial + identify, both ends in one process, 3 x {n}")
    one_process_ms = run(one_process_cpu(n))
    anchors: dict[str, list[float]] = {}
    if not args.no_interop:
        harness, why = load_interop_harness()
        for name, kind_name in (("js-libp2p", "JS"), ("py-libp2p", "PY")):
            reason = (
                why
                if harness is None
                else ensure_interop(harness, kind_name, setup=not args.no_setup)
            )
            if reason:
                rows.append([f"{name} dial", "0", "-", "-", "-", "-", f"not run: {reason}"])
                continue
            status(f"{name} dial x{n}")
            try:
                raw, overhead = run(interop_dials(kind_name, n, placement))
            except (RuntimeError, OSError, TimeoutError) as exc:
                rows.append([f"{name} dial", "0", "-", "-", "-", "-", f"failed: {exc}"])
                continue
            net = [max(0.0, v - overhead) for v in raw]
            anchors[name] = net
            rows.append(
                stats_row(f"{name} dial (no identify)", net, f"cmd RTT {overhead:.2f} ms removed")
            )
    else:
        rows.append(["js-libp2p dial", "0", "-", "-", "-", "-", "not run (--no-interop)"])
    load_after = os.getloadavg()[0]
    print_table(
        f"dial latency, fresh connections, listener in a second process, {loop_name()} (ms); "
        f"{placement.label}; "
        + (f"{args.gap_ms:g} ms idle between dials; " if args.gap_ms else "")
        + f"load {load_before:.2f} -> {load_after:.2f}",
        ["what", "n", "p50", "p90", "p99", "min", "note"],
        rows,
    )
    p50_dial = median(dial_ms)
    ratio_rows = [
        ["peerstack dial / TCP connect (p50)", fmt_ratio(p50_dial, median(tcp_ms))],
        ["identify adds (p50, ms)", fmt(median(ident_ms) - p50_dial, 2)],
        [
            "CPU per dial + identify + close, dialer / listener (ms)",
            f"{fmt(1000 * cpu.own / n, 2)} / {fmt(1000 * cpu.child / n, 2)}",
        ],
        ["CPU per dial + identify + close, both ends in one process (ms)", fmt(one_process_ms, 2)],
    ]
    ratio_rows += [
        [f"{name} dial / peerstack dial (p50)", fmt_ratio(median(ms), p50_dial)]
        for name, ms in anchors.items()
    ]
    print_table(
        "dial latency ratios (same run)",
        ["ratio", "value"],
        ratio_rows,
        notes=[
            "an anchor / peerstack ratio above 1x means peerstack dials faster",
            placement.note(),
        ],
    )


if __name__ == "__main__":
    main()

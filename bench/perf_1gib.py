"""perf ``/perf/1.0.0`` over one stream between two processes on loopback, with its anchors.

Each run uploads SIZE bytes and downloads SIZE bytes on one stream (the perf protocol: the
client sends a u64 N and its upload, closes its write side, the server answers with N bytes).
Throughput is (upload + download) / total time, measured inside the client process. In the same
run, side by side:

- plain TCP, same perf shape, uvloop protocols: what the kernel and loop allow;
- Noise frames only, same perf shape: both ends ``BufferedProtocol``s that encrypt and decrypt
  every byte in 65519-byte frames, no multistream, no Yamux, no host: the crypto ceiling;
- Noise frames only (``bench/transport_throughput.py``'s anchor, upload only): the ceiling of
  per-frame Python work plus the cipher, without Yamux or the host;
- peerstack -> peerstack (``BasicHost`` + ``peerstack.protocols.perf``);
- js-libp2p -> js-libp2p and py-libp2p -> py-libp2p (the interop peers' ``perf`` command).

js-libp2p and py-libp2p move tens of MB/s here, so they run smaller sizes (``--js-mib``,
``--py-mib``) to keep the run within minutes; MB/s stays comparable.

    python bench/perf_1gib.py [--runs 3] [--mib 1024] [--js-mib 256] [--py-mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from peerstack.core.identity import PrivateKey
from peerstack.host.host import BasicHost
from peerstack.protocols import perf
from peerstack.wire.noise import MAX_PLAINTEXT, NoiseTransport

# Run as a script, this file's folder (not the repository) is on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    MB,
    MIB,
    PYTHON,
    CpuMeter,
    ServerProcess,
    ensure_interop,
    fmt,
    fmt_ratio,
    goal_mark,
    load_interop_harness,
    loop_name,
    median,
    print_table,
    proc_cpu_seconds,
    run,
    status,
    wait_stdin_closed,
)

CHUNK = 1024 * 1024
_ZEROS = bytes(CHUNK)
# Fixed transport keys for the Noise-framed anchor (no handshake: only the framing is timed).
KEY_A = b"a" * 32
KEY_B = b"b" * 32
NOISE_SLICE = 15 * MAX_PLAINTEXT
# Bytes each way of the untimed exchange before the runs of a libp2p stack.
WARMUP = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Run:
    """One perf exchange: bytes each way and the seconds each phase took."""

    upload: int
    download: int
    upload_seconds: float
    download_seconds: float
    #: CPU seconds (user + system) the client and the server process used during the run.
    cpu_seconds: float = math.nan

    @property
    def cpu_per_gb(self) -> float:
        """CPU seconds both processes spent per 10^9 bytes moved (immune to machine load)."""
        moved = self.upload + self.download
        return self.cpu_seconds / (moved / 1e9) if moved else math.nan

    @property
    def seconds(self) -> float:
        return self.upload_seconds + self.download_seconds

    @property
    def total_mbps(self) -> float:
        return (self.upload + self.download) / self.seconds / MB if self.seconds > 0 else math.nan

    @property
    def upload_mbps(self) -> float:
        if not self.upload or self.upload_seconds <= 0:
            return math.nan
        return self.upload / self.upload_seconds / MB

    @property
    def download_mbps(self) -> float:
        if not self.download or self.download_seconds <= 0:
            return math.nan
        return self.download / self.download_seconds / MB


# -- plain TCP, perf-shaped ----------------------------------------------------------------------


class _Paced(asyncio.BufferedProtocol):
    """Common part of the anchor ends: a read buffer, write pausing, EOF and loss signals.

    With ``keys`` (send key, receive key) every byte is Noise-framed: encrypted in 65519-byte
    frames on the way out, decrypted on the way in, as a secured connection without a muxer.
    """

    def __init__(self, keys: tuple[bytes, bytes] | None = None) -> None:
        self.noise = NoiseTransport(*keys) if keys is not None else None
        self.buf = bytearray(CHUNK)
        self.view = memoryview(self.buf)
        self.transport: asyncio.Transport | None = None
        self.can_write: asyncio.Event = asyncio.Event()
        self.can_write.set()
        self.eof: asyncio.Event = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=4 * MIB, low=MIB)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def received_bytes(self, nbytes: int) -> bytes | memoryview:
        """What ``buffer_updated`` got, decrypted when Noise-framed (valid during the call)."""
        if self.noise is None:
            return self.view[:nbytes]
        return self.noise.decrypt(self.view[:nbytes])

    def send(self, data: bytes | memoryview) -> None:
        assert self.transport is not None
        if self.noise is None:
            self.transport.write(data)
            return
        # Encrypt in slices of whole frames that fit the transport's reusable scratch buffer
        # (what net/connection.py does): a fresh multi-MiB output per call costs page faults.
        view = memoryview(data)
        for off in range(0, len(view), NOISE_SLICE):
            self.transport.write(self.noise.encrypt(view[off : off + NOISE_SLICE]))

    def eof_received(self) -> bool:
        self.eof.set()
        return True  # keep our write side open: the perf answer goes after the peer's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof.set()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    async def send_zeros(self, n: int) -> None:
        assert self.transport is not None
        view = memoryview(_ZEROS)
        while n > 0:
            await self.can_write.wait()
            step = min(n, CHUNK)
            self.send(view[:step])
            n -= step


class _TcpPerfServer(_Paced):
    def __init__(self, keys: tuple[bytes, bytes] | None = None) -> None:
        super().__init__(keys)
        self.header = b""
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._serve())

    def buffer_updated(self, nbytes: int) -> None:
        data = self.received_bytes(nbytes)
        size = len(data)
        if len(self.header) < 8:
            take = min(8 - len(self.header), size)
            self.header += bytes(data[:take])
            size -= take
        self.received += size

    async def _serve(self) -> None:
        await self.eof.wait()
        assert self.transport is not None
        if len(self.header) == 8 and not self.transport.is_closing():
            (wanted,) = struct.unpack(">Q", self.header)
            await self.send_zeros(wanted)
        self.transport.close()


class _TcpPerfClient(_Paced):
    def __init__(self, keys: tuple[bytes, bytes] | None = None) -> None:
        super().__init__(keys)
        self.received = 0
        self.first: float | None = None

    def buffer_updated(self, nbytes: int) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.received += len(self.received_bytes(nbytes))


async def serve_tcp(noise: bool) -> None:
    loop = asyncio.get_running_loop()
    keys = (KEY_B, KEY_A) if noise else None
    server = await loop.create_server(lambda: _TcpPerfServer(keys), "127.0.0.1", 0)
    print(f"/ip4/127.0.0.1/tcp/{server.sockets[0].getsockname()[1]}", flush=True)
    await wait_stdin_closed()
    server.close()


async def tcp_client(addr: str, size: int, runs: int, noise: bool, server_pid: int) -> list[Run]:
    port = int(addr.rsplit("/", 1)[1])
    loop = asyncio.get_running_loop()
    keys = (KEY_A, KEY_B) if noise else None
    cpu = CpuMeter(server_pid)
    out: list[Run] = []
    for _ in range(runs):
        transport, proto = await loop.create_connection(
            lambda: _TcpPerfClient(keys), "127.0.0.1", port
        )
        cpu.start()
        start = time.perf_counter()
        proto.send(struct.pack(">Q", size))
        await proto.send_zeros(size)
        transport.write_eof()
        await proto.eof.wait()
        end = time.perf_counter()
        cpu.stop()
        transport.close()
        if proto.received != size:
            raise RuntimeError(f"anchor perf: got {proto.received} of {size} bytes")
        first = proto.first if proto.first is not None else end
        out.append(Run(size, size, first - start, end - first, cpu.own + cpu.child))
    return out


# -- peerstack ---------------------------------------------------------------------------------


async def serve_peerstack() -> None:
    async with BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"]) as host:
        perf.register(host)
        print(f"{host.listen_addrs()[0]}/p2p/{host.peer_id}", flush=True)
        await wait_stdin_closed()


async def peerstack_client(addr: str, size: int, runs: int, server_pid: int) -> list[Run]:
    cpu = CpuMeter(server_pid)
    out: list[Run] = []
    async with BasicHost(PrivateKey.generate()) as host:
        peer = await host.dial(addr)
        await perf.perf(host, peer, WARMUP, WARMUP)  # windows grow, code paths warm
        for _ in range(runs):
            cpu.start()
            r = await perf.perf(host, peer, size, size)
            cpu.stop()
            out.append(
                Run(
                    r.upload_bytes,
                    r.download_bytes,
                    r.upload_seconds,
                    r.download_seconds,
                    cpu.own + cpu.child,
                )
            )
    return out


# -- third-party peers -------------------------------------------------------------------------


async def interop_runs(kind_name: str, size: int, runs: int, wait: float) -> list[Run]:
    """Two peers of one kind (a listener and a client) and ``runs`` perf commands."""
    harness, why = load_interop_harness()
    if harness is None:
        raise RuntimeError(why)
    kind = harness.PeerKind[kind_name]
    server = await harness.start_peer(kind)
    try:
        client = await harness.start_peer(kind)
        try:
            await client.command("dial", addr=server.addr)
            # Warm up (the JIT of js, our windows) like the peerstack run does.
            await client.command(
                "perf", wait=wait, addr=server.addr, upload=WARMUP, download=WARMUP
            )
            pids = (int(client.proc.pid), int(server.proc.pid))
            out: list[Run] = []
            for _ in range(runs):
                cpu0 = sum(proc_cpu_seconds(pid) for pid in pids)
                r: dict[str, Any] = await client.command(
                    "perf", wait=wait, addr=server.addr, upload=size, download=size
                )
                cpu = sum(proc_cpu_seconds(pid) for pid in pids) - cpu0
                out.append(
                    Run(
                        int(r["upload_bytes"]),
                        int(r["download_bytes"]),
                        float(r["upload_seconds"]),
                        float(r["download_seconds"]),
                        cpu,
                    )
                )
            return out
        finally:
            await client.stop()
    finally:
        await server.stop()


# -- orchestration -----------------------------------------------------------------------------


def with_server(kind: str, client: Callable[[str, int], list[Run]]) -> list[Run]:
    with ServerProcess([PYTHON, __file__, "--serve", kind]) as server:
        return client(server.ready, server.proc.pid)


def noise_anchor(size: int, runs: int) -> list[Run]:
    """``bench/transport_throughput.py``'s anchor: Noise-framed upload, no Yamux, no host."""
    from bench import transport_throughput

    out = []
    for _ in range(runs):
        seconds = transport_throughput.measure("anchor", size)
        out.append(Run(size, 0, seconds, 0.0))
    return out


def _interop_thunk(kind_name: str, size: int, runs: int, wait: float) -> Callable[[], list[Run]]:
    return lambda: run(interop_runs(kind_name, size, runs, wait))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per stack (median reported)")
    parser.add_argument("--mib", type=int, default=1024, help="MiB each way per run")
    parser.add_argument("--js-mib", type=int, default=256, help="MiB each way for js")
    parser.add_argument("--py-mib", type=int, default=64, help="MiB for py-libp2p")
    parser.add_argument("--no-setup", action="store_true", help="never run setup-interop.sh")
    parser.add_argument("--only", default="tcp,noiseperf,noise,peerstack,js,py")
    parser.add_argument("--serve", choices=["peerstack", "tcp", "noise"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "peerstack":
        run(serve_peerstack())
        return
    if args.serve in ("tcp", "noise"):
        run(serve_tcp(args.serve == "noise"))
        return

    only = set(args.only.split(","))
    load_before = os.getloadavg()[0]
    size = args.mib * MIB
    js_size = args.js_mib * MIB
    py_size = args.py_mib * MIB
    runs = args.runs
    results: dict[str, list[Run]] = {}
    skipped: dict[str, str] = {}
    sizes = {
        "tcp": size,
        "noiseperf": size,
        "noise": size,
        "peerstack": size,
        "js": js_size,
        "py": py_size,
    }

    def attempt(name: str, fn: Callable[[], list[Run]]) -> None:
        if name not in only:
            skipped[name] = "not selected (--only)"
            return
        status(f"{name}: {runs} run(s) of {sizes[name] // MIB} MiB each way")
        try:
            results[name] = fn()
        except (RuntimeError, OSError, TimeoutError) as exc:
            skipped[name] = f"failed: {exc}"
            status(f"{name} failed: {exc}")

    attempt(
        "tcp", lambda: with_server("tcp", lambda a, p: run(tcp_client(a, size, runs, False, p)))
    )
    attempt(
        "noiseperf",
        lambda: with_server("noise", lambda a, p: run(tcp_client(a, size, runs, True, p))),
    )
    attempt("noise", lambda: noise_anchor(size, runs))
    attempt(
        "peerstack",
        lambda: with_server("peerstack", lambda a, p: run(peerstack_client(a, size, runs, p))),
    )
    harness, why = load_interop_harness()
    for name, kind_name, n in (("js", "JS", js_size), ("py", "PY", py_size)):
        if name not in only:
            continue
        setup = not args.no_setup
        reason = why if harness is None else ensure_interop(harness, kind_name, setup=setup)
        if reason:
            skipped[name] = f"not run: {reason}"
            continue
        # A generous bound: py-libp2p at ~5 MB/s still finishes; anything slower is a hang.
        timeout = 60.0 + 2 * n / (5 * MB)
        attempt(name, _interop_thunk(kind_name, n, runs, timeout))

    load_after = os.getloadavg()[0]
    labels = {
        "tcp": "plain TCP (uvloop), perf-shaped",
        "noiseperf": "Noise frames only, perf-shaped, no muxer",
        "noise": "Noise frames only, upload (transport_throughput anchor)",
        "peerstack": "peerstack -> peerstack",
        "js": "js-libp2p -> js-libp2p",
        "py": "py-libp2p -> py-libp2p",
    }
    med: dict[str, float] = {}
    cpu: dict[str, float] = {}
    rows = []
    for name, label in labels.items():
        rs = results.get(name)
        if rs is None:
            rows.append([label, "-", "-", "-", "-", "-", "-", skipped.get(name, "not run")])
            med[name] = cpu[name] = math.nan
            continue
        totals = [r.total_mbps for r in rs]
        if name == "noise":  # upload only: its one figure is the upload throughput
            totals = [r.upload_mbps for r in rs]
        med[name] = median(totals)
        cpu[name] = median([r.cpu_per_gb for r in rs])
        rows.append(
            [
                label,
                f"{sizes[name] // MIB} MiB",
                fmt(median([r.upload_mbps for r in rs])),
                fmt(median([r.download_mbps for r in rs])),
                fmt(med[name]),
                fmt(cpu[name], 2),
                " ".join(fmt(t, 0) for t in totals),
                "",
            ]
        )
    print_table(
        f"perf /perf/1.0.0, one stream, two processes, loopback, {loop_name()}, "
        f"median of {runs} (MB/s = 10^6 bytes/s), load {load_before:.2f} -> {load_after:.2f}",
        [
            "stack",
            "each way",
            "upload MB/s",
            "download MB/s",
            "total MB/s",
            "CPU s/GB",
            "runs",
            "note",
        ],
        rows,
        notes=[
            "CPU s/GB: user + system CPU of both processes per 10^9 bytes moved (median); it does "
            "not depend on how busy the machine is, MB/s does."
        ],
    )
    ps = med["peerstack"]
    print_table(
        "perf ratios (same run)",
        ["ratio", "value"],
        [
            ["peerstack / py-libp2p", fmt_ratio(ps, med["py"], goal=10)],
            ["peerstack / js-libp2p", fmt_ratio(ps, med["js"], goal=2)],
            ["CPU per byte: py-libp2p / peerstack", fmt_ratio(cpu["py"], cpu["peerstack"])],
            ["CPU per byte: js-libp2p / peerstack", fmt_ratio(cpu["js"], cpu["peerstack"])],
            [
                "CPU per byte: peerstack / Noise frames only",
                fmt_ratio(cpu["peerstack"], cpu["noiseperf"]),
            ],
            [
                "peerstack absolute (total)",
                f"{fmt(ps / 1000, 2)} GB/s (goal >= 1.2 GB/s: {goal_mark(ps, 1200)})",
            ],
            ["peerstack / plain TCP", fmt_ratio(ps, med["tcp"])],
            ["peerstack / Noise frames only (perf-shaped)", fmt_ratio(ps, med["noiseperf"])],
            [
                "peerstack upload / Noise frames upload",
                fmt_ratio(
                    median([r.upload_mbps for r in results.get("peerstack", [])]), med["noise"]
                ),
            ],
        ],
        notes=[
            "js-libp2p and py-libp2p move smaller sizes per run (they are slow, see 'each way'); "
            "MB/s is comparable across sizes."
        ],
    )
    for name, why_not in skipped.items():
        if name in only:
            print(f"  skipped {name}: {why_not}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

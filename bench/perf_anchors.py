# mypy: disable-error-code="import-not-found"
# (the repo root goes on sys.path below so that tests.interop.harness imports when run as a script.)
"""Anchor figures for our perf benchmark: libp2p perf between two third-party processes.

Runs ``/perf/1.0.0`` js-libp2p -> js-libp2p and py-libp2p -> py-libp2p over loopback, each
side its own process (the peers of tests/interop), upload-only and download-only, several
runs each, and prints the median MB/s (10^6 bytes per second). The connection is opened once
before the runs, so the figures measure the stream, not the handshake.

On these shared 2-core machines only ratios from one run mean anything: our own perf is
meant to run beside these in the same invocation (see :func:`measure_pair`).

Usage: ``python bench/perf_anchors.py [--size-mib 1024] [--runs 3] [--impl js --impl py]
[--json]``. Needs ``bash scripts/setup-interop.sh`` first (``make bench`` runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.interop.harness import PeerKind, missing_setup, running_peer

MIB = 1 << 20


@dataclass
class PerfFigure:
    """One direction of one client->server pair: MB/s of every run and their median."""

    client: str
    server: str
    direction: str  # "upload" (client -> server) or "download" (server -> client)
    size_bytes: int
    runs_mb_s: list[float] = field(default_factory=list)

    @property
    def median_mb_s(self) -> float:
        return statistics.median(self.runs_mb_s)


async def measure_pair(
    client_kind: PeerKind, server_kind: PeerKind, size: int, runs: int
) -> list[PerfFigure]:
    """Upload and download ``size`` bytes ``runs`` times each over one warm connection."""
    up = PerfFigure(client_kind.value, server_kind.value, "upload", size)
    down = PerfFigure(client_kind.value, server_kind.value, "download", size)
    async with running_peer(server_kind) as server, running_peer(client_kind) as client:
        await client.command("dial", addr=server.addr)
        # One small transfer first so that windows, buffers and JITs are warm.
        await client.command("perf", addr=server.addr, upload=8 * MIB, download=8 * MIB)
        wait = 60.0 + size / (5 * 10**6)  # generous: a stall shows as an error, not a hang
        for _ in range(runs):
            for fig, upload, download in ((up, size, 0), (down, 0, size)):
                res = await client.command(
                    "perf", addr=server.addr, upload=upload, download=download, wait=wait
                )
                fig.runs_mb_s.append(size / float(res["seconds"]) / 1e6)
    return [up, down]


async def run(kinds: list[PeerKind], size: int, runs: int) -> list[PerfFigure]:
    figures: list[PerfFigure] = []
    for kind in kinds:
        figures += await measure_pair(kind, kind, size, runs)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes per run, MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--impl", action="append", choices=[k.value for k in PeerKind], default=None
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    kinds = [PeerKind(v) for v in (args.impl or [k.value for k in PeerKind])]
    for kind in kinds:
        reason = missing_setup(kind)
        if reason is not None:
            print(f"perf_anchors: {kind.value} peer unavailable: {reason}", file=sys.stderr)
            return 2
    size = args.size_mib * MIB
    figures = asyncio.run(run(kinds, size, args.runs))
    if args.json:
        out = [{**asdict(f), "median_mb_s": f.median_mb_s} for f in figures]
        print(json.dumps({"bench": "perf_anchors", "figures": out}))
        return 0
    print(f"perf anchors: {args.size_mib} MiB per run, {args.runs} runs, median MB/s (10^6 B/s)")
    for f in figures:
        runs = ", ".join(f"{r:.0f}" for r in f.runs_mb_s)
        print(
            f"  {f.client}->{f.server} {f.direction:<8} {f.median_mb_s:8.1f} MB/s   (runs: {runs})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

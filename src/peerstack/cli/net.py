"""``peerstack ping`` and ``peerstack perf``: talk to one peer and report."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import click

from peerstack.cli.common import console, json_option, print_json, repo_option, run
from peerstack.cli.sizes import format_size, parse_size
from peerstack.config import parse_multiaddr
from peerstack.repo import Repo

if TYPE_CHECKING:
    from peerstack.node import Node
    from peerstack.protocols.perf import PerfResult

# The node (and the whole network stack under it) is imported only by the verbs that need it,
# so `peerstack id` and `--help` start fast.


def _node(repo: Path | None) -> Node:
    from peerstack.node import Node

    # One-shot commands use a throwaway identity on a free loopback port, unless told
    # to act as the node of a repo. Only the identity is used: no DHT or blockstore, so a
    # daemon running on the same repo is not disturbed.
    if repo is None:
        return Node()
    return Node(repo=Repo.open(repo), listen=["/ip4/127.0.0.1/tcp/0"], dht=False, content=False)


async def _ping(target: str, count: int, repo: Path | None) -> tuple[str, list[float]]:
    addr = parse_multiaddr(target)
    async with _node(repo) as node:
        peer = await node.connect(addr)
        rtts = await node.ping(peer, count)
        return str(peer), rtts


@click.command("ping")
@click.argument("target", metavar="MULTIADDR")
@click.option("-n", "--count", type=click.IntRange(1, 100_000), default=3, show_default=True)
@repo_option
@json_option
def ping_command(target: str, count: int, repo: Path | None, as_json: bool) -> None:
    """Ping the peer at MULTIADDR and print each round-trip time."""
    peer, rtts = run(_ping(target, count, repo))
    ms = [r * 1000 for r in rtts]
    if as_json:
        print_json(
            {
                "peer_id": peer,
                "rtts_ms": ms,
                "avg_ms": statistics.fmean(ms),
                "min_ms": min(ms),
                "max_ms": max(ms),
            }
        )
        return
    out = console()
    for i, m in enumerate(ms, 1):
        out.print(f"pong from {peer}: seq={i} time={m:.3f} ms")
    out.print(
        f"{len(ms)} pings: min/avg/max = {min(ms):.3f}/{statistics.fmean(ms):.3f}/{max(ms):.3f} ms"
    )


async def _perf(target: str, upload: int, download: int, repo: Path | None) -> PerfResult:
    addr = parse_multiaddr(target)
    async with _node(repo) as node:
        return await node.perf(addr, upload, download)


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0


@click.command("perf")
@click.argument("target", metavar="MULTIADDR")
@click.option("--upload", default="100MiB", show_default=True, help="Bytes to send (e.g. 1GiB).")
@click.option("--download", default="100MiB", show_default=True, help="Bytes to receive.")
@repo_option
@json_option
def perf_command(target: str, upload: str, download: str, repo: Path | None, as_json: bool) -> None:
    """Measure throughput to the peer at MULTIADDR with /perf/1.0.0."""
    up, down = parse_size(upload), parse_size(download)
    res = run(_perf(target, up, down, repo))
    if as_json:
        print_json(
            {
                "upload_bytes": res.upload_bytes,
                "download_bytes": res.download_bytes,
                "upload_seconds": res.upload_seconds,
                "download_seconds": res.download_seconds,
                "upload_mb_per_s": _rate(res.upload_bytes, res.upload_seconds),
                "download_mb_per_s": _rate(res.download_bytes, res.download_seconds),
            }
        )
        return
    out = console()
    out.print(
        f"upload   {format_size(res.upload_bytes):>10} in {res.upload_seconds:.3f} s"
        f" = {_rate(res.upload_bytes, res.upload_seconds):.1f} MB/s"
    )
    out.print(
        f"download {format_size(res.download_bytes):>10} in {res.download_seconds:.3f} s"
        f" = {_rate(res.download_bytes, res.download_seconds):.1f} MB/s"
    )

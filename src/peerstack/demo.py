"""``make demo``: two peers on loopback find out about each other and measure the link.

    python -m peerstack.demo [--size 256MiB] [--pings 5]

Peer A connects to peer B; both run identify, A pings B and runs a perf transfer each way, and
a table at the end summarises what happened. Later issues add the DHT and file sharing here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from peerstack.cli.common import run
from peerstack.cli.sizes import format_size, parse_size
from peerstack.errors import PeerstackError
from peerstack.node import Node


async def demo(size: int, pings: int, out: Console) -> int:
    """Run the demo; return the process exit code."""
    table = Table(title="peerstack demo: two peers on loopback")
    table.add_column("step")
    table.add_column("result")
    async with Node() as a, Node() as b:
        out.print(f"peer A {a.peer_id}")
        out.print(f"peer B {b.peer_id} listening on {b.addrs[0]}")

        start = time.perf_counter()
        peer = await a.connect(b.addrs[0])
        took = (time.perf_counter() - start) * 1000
        table.add_row("connect A -> B", f"{took:.1f} ms (TCP + Noise + Yamux + identify)")

        # A's identify of B ran on the connection; B identifies A from its side too.
        info = a.identify_info(peer)
        back = await b.identify.wait_identified(a.peer_id)
        if info is None:
            out.print("[red]identify of B did not complete[/red]")
            return 1
        out.print(f"A learnt from B: agent {info.agent_version}, protocols {list(info.protocols)}")
        # Each side's identify answer carries where it saw the other come from.
        out.print(f"B saw A at {info.observed_addr}; A saw B at {back.observed_addr}")
        table.add_row("identify: B's agent", str(info.agent_version))
        table.add_row("identify: B's protocols", "\n".join(info.protocols))
        table.add_row("identify: B's listen addrs", "\n".join(map(str, info.listen_addrs)))
        table.add_row("identify: A as B sees it", str(info.observed_addr))

        rtts = [r * 1000 for r in await a.ping(peer, pings)]
        out.print("ping RTTs (ms): " + ", ".join(f"{r:.3f}" for r in rtts))
        table.add_row(
            f"ping x{pings}",
            f"min {min(rtts):.3f} / avg {statistics.fmean(rtts):.3f} / max {max(rtts):.3f} ms",
        )

        for label, up, down in (("perf A -> B", size, 0), ("perf B -> A", 0, size)):
            res = await a.perf(peer, up, down)
            nbytes, secs = (
                (res.upload_bytes, res.upload_seconds)
                if up
                else (res.download_bytes, res.download_seconds)
            )
            rate = nbytes / secs / 1e6 if secs > 0 else 0.0
            out.print(f"{label}: {format_size(nbytes)} in {secs:.3f} s = {rate:.0f} MB/s")
            table.add_row(label, f"{format_size(nbytes)} in {secs:.2f} s = {rate:.0f} MB/s")

        latency = a.peerstore.latency(peer)
        if latency is not None:
            table.add_row("A's peerstore latency for B", f"{latency * 1000:.3f} ms")
    out.print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peerstack.demo", description=__doc__)
    parser.add_argument("--size", default="256MiB", help="bytes per perf direction")
    parser.add_argument("--pings", type=int, default=5)
    args = parser.parse_args(argv)
    # soft_wrap: long lines (multiaddrs, PeerIds) stay whole when the output is not a terminal.
    out = Console(highlight=False, soft_wrap=True)
    try:
        size = parse_size(args.size)
        if args.pings < 1:
            raise PeerstackError("--pings must be at least 1")
        return run(asyncio.wait_for(demo(size, args.pings, out), 600))
    except (PeerstackError, OSError, TimeoutError) as exc:
        sys.stderr.write(f"demo failed: {exc or type(exc).__name__}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""``make demo``: peers on loopback meet, find each other through the DHT and share a file.

    python -m peerstack.demo [--size 256MiB] [--pings 5] [--nodes 5] [--file-size 64MiB]

1. Two peers: A connects to B; both run identify, A pings B and runs a perf transfer each way.
2. A small network: ``--nodes`` peers, each with its own repo, that know only one bootstrap
   peer; each finds another through the DHT (what it found, how many hops it took).
3. File sharing: a random file added on one peer is fetched by two others at once (progress
   bars), and both copies are checked against the original's sha256.

Tables at the end summarise what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from peerstack.cli.common import run
from peerstack.cli.sizes import format_size, parse_size
from peerstack.errors import PeerstackError
from peerstack.node import Node, TransferProgress


async def demo(size: int, pings: int, out: Console) -> int:
    """The first part: two peers, identify, ping, perf; returns the process exit code."""
    table = Table(title="peerstack demo: two peers on loopback")
    table.add_column("step")
    table.add_column("result")
    async with Node() as a, Node(enable=("perf",)) as b:  # B answers A's perf requests
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _random_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n


async def network_demo(n_nodes: int, file_size: int, out: Console) -> int:
    """Parts two and three: DHT discovery from one bootstrap peer, then a shared file."""
    with tempfile.TemporaryDirectory(prefix="peerstack-demo-") as tmp:
        root = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            # Peer 0 is the bootstrap peer; the others are told about it and nothing else.
            boot = await stack.enter_async_context(
                Node(repo=root / "peer0", listen=["/ip4/127.0.0.1/tcp/0"], background=False)
            )
            nodes = [boot]
            for i in range(1, n_nodes):
                node = Node(
                    repo=root / f"peer{i}",
                    listen=["/ip4/127.0.0.1/tcp/0"],
                    bootstrap=[str(boot.addrs[0])],
                    background=False,
                )
                nodes.append(await stack.enter_async_context(node))
            out.print(f"\n[bold]DHT[/bold]: {n_nodes} peers, all bootstrapped from peer0 only")
            for i, node in enumerate(nodes[1:], 1):
                size = await node.bootstrap()
                look = node.kad.last_lookup  # the self-lookup that bootstrap ends with
                out.print(
                    f"peer{i} joined through peer0: its self-lookup asked {look.requests} peers"
                    f" ({look.hops} hops); {size} peers in its routing table"
                )
            names = {n.peer_id: f"peer{i}" for i, n in enumerate(nodes)}
            for i, node in enumerate(nodes):
                known = sorted(names.get(p, str(p)) for p in node.kad.routing_table.peers())
                told = "nobody" if i == 0 else "peer0"
                out.print(f"peer{i} was told about {told}; its routing table: {', '.join(known)}")
            table = Table(title=f"DHT: {n_nodes} peers found each other from one bootstrap peer")
            for col in ("who", "looked for", "found at", "hops", "requests"):
                table.add_column(col)
            for i in range(1, n_nodes):
                j = i % (n_nodes - 1) + 1  # another non-bootstrap peer
                found = await nodes[i].dht.find_peer(nodes[j].peer_id)
                addrs = ", ".join(str(a) for a in found.addrs)
                out.print(
                    f"peer{i} found peer{j} ({found.peer_id}) at {addrs}"
                    f" in {found.hops} hops, {found.requests} requests"
                )
                table.add_row(f"peer{i}", f"peer{j}", addrs, str(found.hops), str(found.requests))
            out.print(table)
            out.print(
                "hops: answers on the path to the peer (0: the DHT had already put it in the"
                " routing table)"
            )

            # File sharing: peer1 adds, the last two peers fetch at the same time.
            src = root / "random.bin"
            await asyncio.to_thread(_random_file, src, file_size)
            want = await asyncio.to_thread(_sha256, src)
            adder, getters = nodes[1], nodes[-2:]
            out.print(f"\n[bold]Files[/bold]: peer1 adds {format_size(file_size)} of random bytes")
            start = time.perf_counter()
            cid = await adder.add(src)
            took = time.perf_counter() - start
            out.print(f"added {cid} in {took:.2f} s; announced to the DHT")
            labels = [f"peer{nodes.index(g)}" for g in getters]
            results: list[tuple[str, float, str, int]] = []
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                console=out,
            ) as bars:

                async def fetch(node: Node, name: str) -> None:
                    task: TaskID = bars.add_task(f"{name} get", total=None)

                    def show(p: TransferProgress) -> None:
                        bars.update(task, completed=p.bytes_done, total=p.bytes_total)

                    t0 = time.perf_counter()
                    dest = root / f"{name}.out"
                    res = await node.get(cid, dest, progress=show)
                    secs = time.perf_counter() - t0
                    results.append(
                        (name, secs, await asyncio.to_thread(_sha256, dest), res.fetched_bytes)
                    )

                await asyncio.gather(*(fetch(g, n) for g, n in zip(getters, labels, strict=True)))
            files = Table(title=f"{cid} fetched by {len(getters)} peers at once")
            for col in ("peer", "time", "rate", "sha256 matches"):
                files.add_column(col)
            ok = True
            for name, secs, digest, fetched in sorted(results):
                good = digest == want
                ok = ok and good
                rate = fetched / secs / 1e6 if secs > 0 else 0.0
                files.add_row(name, f"{secs:.2f} s", f"{rate:.0f} MB/s", "yes" if good else "NO")
            out.print(files)
            if not ok:
                out.print("[red]a fetched copy does not match the original[/red]")
                return 1
            out.print(f"both copies verified: sha256 {want[:16]}…")
    return 0


async def whole_demo(size: int, pings: int, n_nodes: int, file_size: int, out: Console) -> int:
    code = await demo(size, pings, out)
    if code:
        return code
    return await network_demo(n_nodes, file_size, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peerstack.demo", description=__doc__)
    parser.add_argument("--size", default="256MiB", help="bytes per perf direction")
    parser.add_argument("--pings", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=5, help="peers in the DHT part (3..20)")
    parser.add_argument("--file-size", default="64MiB", help="size of the shared file")
    args = parser.parse_args(argv)
    # soft_wrap: long lines (multiaddrs, PeerIds) stay whole when the output is not a terminal.
    out = Console(highlight=False, soft_wrap=True)
    try:
        size = parse_size(args.size)
        file_size = parse_size(args.file_size)
        if args.pings < 1:
            raise PeerstackError("--pings must be at least 1")
        if not 3 <= args.nodes <= 20:
            raise PeerstackError("--nodes must be 3..20")
        if file_size < 1:
            raise PeerstackError("--file-size must be at least 1 byte")
        return run(asyncio.wait_for(whole_demo(size, args.pings, args.nodes, file_size, out), 600))
    except (PeerstackError, OSError, TimeoutError) as exc:
        sys.stderr.write(f"demo failed: {exc or type(exc).__name__}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

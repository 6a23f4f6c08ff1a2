"""``peerstack daemon``: run a node until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from peerstack.cli.common import console, json_option, print_json, repo_option, run
from peerstack.config import parse_multiaddr
from peerstack.repo import Repo


async def _serve(repo: Path | None, listen: tuple[str, ...], as_json: bool) -> None:
    from peerstack.node import Node  # the network stack, only when needed

    for addr in listen:
        parse_multiaddr(addr)  # refuse a bad address before touching the repo
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        node = Node(repo=Repo.open(repo), listen=listen or None)
        async with node:
            addrs = [str(a) for a in node.addrs]
            if as_json:
                print_json({"event": "listening", "peer_id": str(node.peer_id), "addrs": addrs})
            else:
                out = console()
                out.print(f"peerstack daemon [bold]{node.peer_id}[/bold]")
                for a in addrs:
                    out.print(f"listening on {a}")
                out.file.flush()
            await stop.wait()
        if as_json:
            print_json({"event": "stopped"})
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@click.command("daemon")
@repo_option
@click.option(
    "--listen",
    multiple=True,
    metavar="MULTIADDR",
    help="Address to listen on (repeatable; default: from config.toml).",
)
@json_option
def daemon_command(repo: Path | None, listen: tuple[str, ...], as_json: bool) -> None:
    """Run a node serving identify, ping, perf and echo until interrupted."""
    run(_serve(repo, listen, as_json))

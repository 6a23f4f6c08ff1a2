"""``peerstack daemon``: run a node (DHT, Bitswap, the local API) until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from peerstack.cli.common import (
    bootstrap_option,
    console,
    json_option,
    print_json,
    repo_option,
    run,
)
from peerstack.cli.sizes import parse_size
from peerstack.config import DHT_MODES, OPTIONAL_SERVICES, parse_multiaddr
from peerstack.errors import UsageError
from peerstack.repo import Repo

DEFAULT_API = "/ip4/127.0.0.1/tcp/0"


def _api_target(text: str) -> tuple[str, int]:
    target = parse_multiaddr(text).tcp_target()
    if target is None or target[0] not in ("127.0.0.1", "::1"):
        raise UsageError(f"--api {text}: the API listens on loopback only (/ip4/127.0.0.1/tcp/N)")
    return target


def _services(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--enable perf,echo`` (comma-separated, repeatable) as service names."""
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    for name in names:
        if name not in OPTIONAL_SERVICES:
            raise UsageError(
                f"--enable {name}: unknown service (choose from {', '.join(OPTIONAL_SERVICES)})"
            )
    return names


def _upload_rate(text: str | None) -> int | None:
    """``--upload-rate 20MB``: bytes per second, with the size suffixes of ``parse_size``."""
    if text is None:
        return None
    try:
        rate = parse_size(text)
    except UsageError as exc:
        raise UsageError(f"--upload-rate: {exc}") from None
    if rate == 0:
        raise UsageError("--upload-rate must be above zero (leave it out for no cap)")
    return rate


async def _serve(
    *,
    repo: Path | None,
    listen: tuple[str, ...],
    bootstrap: tuple[str, ...],
    dht_mode: str | None,
    api: str,
    enable: tuple[str, ...],
    upload_rate: int | None,
    as_json: bool,
) -> None:
    from peerstack.cli.api import ApiServer  # the network stack, only when needed
    from peerstack.node import Node

    for addr in (*listen, *bootstrap):
        parse_multiaddr(addr)  # refuse a bad address before touching the repo
    api_host, api_port = _api_target(api)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        r = Repo.open(repo)
        node = Node(
            repo=r,
            listen=listen or None,
            bootstrap=bootstrap,
            dht_mode=dht_mode,
            enable=enable,
            upload_rate=upload_rate,
        )
        async with node:
            server = ApiServer(node, r, api_host, api_port)
            api_addr = await server.start()
            try:
                addrs = [str(a) for a in node.addrs]
                mode = node.config.dht_mode
                if as_json:
                    print_json(
                        {
                            "event": "listening",
                            "peer_id": str(node.peer_id),
                            "addrs": addrs,
                            "api": api_addr,
                            "dht_mode": mode,
                            "services": [n for n in OPTIONAL_SERVICES if getattr(node.config, n)],
                        }
                    )
                else:
                    out = console()
                    out.print(f"peerstack daemon [bold]{node.peer_id}[/bold] (DHT {mode} mode)")
                    for a in addrs:
                        out.print(f"listening on {a}")
                    out.print(f"API on {api_addr} (address in {r.api_path})")
                    out.file.flush()
                await stop.wait()
            finally:
                await server.stop()
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
@bootstrap_option
@click.option(
    "--dht-mode",
    type=click.Choice(DHT_MODES),
    default=None,
    help="server: answer DHT queries (default, from config.toml); client: only ask.",
)
@click.option(
    "--api",
    default=DEFAULT_API,
    show_default=True,
    metavar="MULTIADDR",
    help="Where the local HTTP API listens (loopback only; port 0 picks one).",
)
@click.option(
    "--enable",
    multiple=True,
    metavar="SERVICES",
    help=(
        "Also serve these measuring protocols, comma-separated: perf, echo (default: from"
        " config.toml [services], off). perf lets any peer make the node send it gigabytes."
    ),
)
@click.option(
    "--upload-rate",
    default=None,
    metavar="SIZE",
    help=(
        "Cap the blocks Bitswap serves at SIZE per second, e.g. 20MB or 5MiB (default: from"
        " config.toml [bitswap] upload_rate, no cap)."
    ),
)
@json_option
def daemon_command(
    *,
    repo: Path | None,
    listen: tuple[str, ...],
    bootstrap: tuple[str, ...],
    dht_mode: str | None,
    api: str,
    enable: tuple[str, ...],
    upload_rate: str | None,
    as_json: bool,
) -> None:
    """Run a node serving the DHT, Bitswap and the local API until interrupted."""
    run(
        _serve(
            repo=repo,
            listen=listen,
            bootstrap=bootstrap,
            dht_mode=dht_mode,
            api=api,
            enable=_services(enable),
            upload_rate=_upload_rate(upload_rate),
            as_json=as_json,
        )
    )

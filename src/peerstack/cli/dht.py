"""``peerstack dht find-peer|put|get|provide|find-providers``, ``peerstack name publish|resolve``.

One-shot unless a daemon holds the repo: start a node (DHT client mode), join through
``--bootstrap`` (and the configured peers), do the lookup, print, exit.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import click

from peerstack.cli.common import call, network_options, print_json
from peerstack.errors import UsageError


def _peer(text: str) -> str:
    from peerstack.node_dht import parse_peer_id

    return str(parse_peer_id(text))


def _cid(text: str) -> str:
    from peerstack.node import parse_cid

    return str(parse_cid(text))


@click.group("dht")
def dht_group() -> None:
    """Ask the Kademlia DHT: peers, values, providers."""


@dht_group.command("find-peer")
@click.argument("peer_id")
@network_options
def find_peer_command(
    peer_id: str, repo: Path | None, bootstrap: tuple[str, ...], as_json: bool
) -> None:
    """Find the addresses of PEER_ID."""
    res = call(repo, bootstrap, "dht.find-peer", {"peer": _peer(peer_id)})
    if as_json:
        print_json(res)
        return
    click.echo(f"found {res['peer_id']} in {res['hops']} hops ({res['requests']} requests)")
    for addr in res["addrs"]:
        click.echo(f"  {addr}")


@dht_group.command("put")
@click.argument("key")
@click.argument("value")
@network_options
def put_command(
    key: str, value: str, repo: Path | None, bootstrap: tuple[str, ...], as_json: bool
) -> None:
    """Store VALUE under KEY (in the /peerstack/ namespace; the newest write wins)."""
    from peerstack.app_records import encode_value, record_key

    if record_key(key)[:11] != b"/peerstack/":
        raise UsageError("dht put writes /peerstack/ keys only (use name publish for IPNS)")
    encode_value(value.encode())  # refuse an oversized value before starting anything
    args = {"key": key, "value_b64": base64.b64encode(value.encode()).decode()}
    res = call(repo, bootstrap, "dht.put", args)
    if as_json:
        print_json(res)
        return
    click.echo(f"stored {key} on {res['peers']} peers")


@dht_group.command("get")
@click.argument("key")
@network_options
def get_command(key: str, repo: Path | None, bootstrap: tuple[str, ...], as_json: bool) -> None:
    """Print the value stored under KEY."""
    from peerstack.app_records import record_key

    record_key(key)
    res = call(repo, bootstrap, "dht.get", {"key": key})
    value = base64.b64decode(res["value_b64"])
    if as_json:
        text: str | None
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        print_json({**res, "value": text})
        return
    sys.stdout.buffer.write(value + b"\n")
    sys.stdout.flush()


@dht_group.command("provide")
@click.argument("cid")
@network_options
def provide_command(cid: str, repo: Path | None, bootstrap: tuple[str, ...], as_json: bool) -> None:
    """Announce that this node provides CID."""
    res = call(repo, bootstrap, "dht.provide", {"cid": _cid(cid)})
    if as_json:
        print_json(res)
        return
    click.echo(f"announced {res['cid']} to {res['peers']} peers")


@dht_group.command("find-providers")
@click.argument("cid")
@click.option("-n", "--count", type=click.IntRange(1, 1000), default=20, show_default=True)
@network_options
def find_providers_command(
    cid: str, count: int, repo: Path | None, bootstrap: tuple[str, ...], as_json: bool
) -> None:
    """List peers that provide CID."""
    res = call(repo, bootstrap, "dht.find-providers", {"cid": _cid(cid), "count": count})
    if as_json:
        print_json(res)
        return
    if not res["providers"]:
        click.echo(f"no providers of {res['cid']} found")
    for prov in res["providers"]:
        click.echo(f"{prov['peer_id']} {' '.join(prov['addrs'])}".rstrip())


@click.group("name")
def name_group() -> None:
    """IPNS: a name (this node's PeerId) that points at a path and can be updated."""


@name_group.command("publish")
@click.argument("value")
@click.option("--lifetime", type=click.FloatRange(min=1), default=48 * 3600.0, show_default=True)
@network_options
def publish_command(
    value: str, lifetime: float, repo: Path | None, bootstrap: tuple[str, ...], as_json: bool
) -> None:
    """Point this node's name at VALUE (a CID or a /ipfs/... path)."""
    if not value.startswith("/"):
        value = "/ipfs/" + _cid(value)
    res = call(repo, bootstrap, "name.publish", {"value": value, "lifetime": lifetime})
    if as_json:
        print_json(res)
        return
    click.echo(f"published {res['name']} -> {res['value']} (sequence {res['sequence']})")


@name_group.command("resolve")
@click.argument("name")
@network_options
def resolve_command(
    name: str, repo: Path | None, bootstrap: tuple[str, ...], as_json: bool
) -> None:
    """Print what the IPNS NAME points at."""
    from peerstack.node_dht import parse_name

    res = call(repo, bootstrap, "name.resolve", {"name": str(parse_name(name))})
    if as_json:
        print_json(res)
        return
    click.echo(res["value"])

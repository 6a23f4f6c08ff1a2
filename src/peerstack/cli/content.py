"""``peerstack add|get|cat``, ``peerstack pin add|rm|ls``, ``peerstack repo gc|verify|stat``.

Each verb runs in the daemon when one holds the repo, else one-shot (``--bootstrap`` to reach
the network). User mistakes (a bad CID, a missing path, an output that exists) are refused
before anything starts; ``get`` never leaves a half-written file under the output name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from peerstack.cli.common import call, console, network_options, print_json, repo_option, run
from peerstack.cli.common import json_option as _json_option
from peerstack.cli.sizes import format_size, parse_size
from peerstack.errors import UsageError

DEFAULT_FIND_TIMEOUT = 60.0


def _check_cid(text: str) -> str:
    from peerstack.node import parse_cid

    return str(parse_cid(text))


def _timeout_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0),
        default=DEFAULT_FIND_TIMEOUT,
        show_default=True,
        help=(
            "Seconds to look for the content, and then to wait for each next block, before"
            " giving up (0: wait forever). Blocks received are kept: run again to resume."
        ),
    )(f)


@click.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-r", "--recursive", is_flag=True, help="Add a directory and everything in it.")
@click.option(
    "--profile",
    type=click.Choice(["default", "legacy"]),
    default="default",
    show_default=True,
    help="default: CIDv1, raw leaves, 1 MiB chunks; legacy: kubo's CIDv0, 256 KiB chunks.",
)
@click.option("--pin/--no-pin", default=True, show_default=True, help="Keep it from GC.")
@click.option(
    "--provide",
    type=click.Choice(["roots", "all", "none"]),
    default=None,
    help="What to announce to the DHT (default: roots, from config.toml, when a daemon runs;"
    " none one-shot, as the one-shot node is gone right after).",
)
@network_options
def add_command(
    *,
    path: Path,
    recursive: bool,
    profile: str,
    pin: bool,
    provide: str | None,
    repo: Path | None,
    bootstrap: tuple[str, ...],
    as_json: bool,
) -> None:
    """Add a file (or with -r a directory) to the repo and print its CID."""
    full = Path(os.path.abspath(path))
    if not os.path.lexists(full):
        raise UsageError(f"{path}: no such file or directory")
    if full.is_dir() and not recursive:
        raise UsageError(f"{path} is a directory (use -r to add it)")
    args = {"path": str(full), "recursive": recursive, "profile": profile, "pin": pin}
    if provide is not None:
        args["provide"] = provide
    res = call(repo, bootstrap, "add", args, progress_label=f"add {path.name}", as_json=as_json)
    if as_json:
        print_json(res)
    else:
        click.echo(res["cid"])


@click.command("get")
@click.argument("cid")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write it.")
@_timeout_option
@network_options
def get_command(
    *,
    cid: str,
    output: Path | None,
    timeout: float,
    repo: Path | None,
    bootstrap: tuple[str, ...],
    as_json: bool,
) -> None:
    """Fetch CID (file or directory) and write it to -o PATH (default: ./CID)."""
    cid = _check_cid(cid)
    dest = Path(os.path.abspath(output if output is not None else cid))
    if os.path.lexists(dest):
        raise UsageError(f"{dest} already exists")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent}: no such directory")
    res = call(
        repo,
        bootstrap,
        "get",
        {"cid": cid, "dest": str(dest), "timeout": timeout},
        progress_label=f"get {cid[:16]}…",
        as_json=as_json,
    )
    if as_json:
        print_json(res)
        return
    console().print(
        f"saved {res['cid']} to {res['path']} ({format_size(res['bytes'])},"
        f" {format_size(res['fetched_bytes'])} fetched)"
    )


@click.command("cat")
@click.argument("cid")
@click.option("--offset", default="0", help="Start at this byte (e.g. 1MiB).")
@click.option("--length", default=None, help="At most this many bytes.")
@_timeout_option
@repo_option
@click.option("--bootstrap", multiple=True, metavar="MULTIADDR", help="Peer to join through.")
def cat_command(
    *,
    cid: str,
    offset: str,
    length: str | None,
    timeout: float,
    repo: Path | None,
    bootstrap: tuple[str, ...],
) -> None:
    """Write the bytes of the file at CID to stdout."""
    from peerstack.cli.backend import backend_for

    args = {
        "cid": _check_cid(cid),
        "offset": parse_size(offset),
        "length": None if length is None else parse_size(length),
        "timeout": timeout,
    }
    out = sys.stdout.buffer

    async def go() -> None:
        async with backend_for(repo, bootstrap) as backend:
            async for piece in backend.cat(args):
                out.write(piece)
        out.flush()

    run(go())


# -- pins --------------------------------------------------------------------------------------


@click.group("pin")
def pin_group() -> None:
    """Keep content from garbage collection."""


@pin_group.command("add")
@click.argument("cid")
@click.option("--recursive/--direct", default=True, show_default=True)
@_timeout_option
@network_options
def pin_add_command(
    *,
    cid: str,
    recursive: bool,
    timeout: float,
    repo: Path | None,
    bootstrap: tuple[str, ...],
    as_json: bool,
) -> None:
    """Pin CID (fetching what is missing)."""
    res = call(
        repo,
        bootstrap,
        "pin.add",
        {"cid": _check_cid(cid), "recursive": recursive, "timeout": timeout},
    )
    print_json(res) if as_json else click.echo(f"pinned {res['cid']}")


@pin_group.command("rm")
@click.argument("cid")
@network_options
def pin_rm_command(cid: str, repo: Path | None, bootstrap: tuple[str, ...], as_json: bool) -> None:
    """Unpin CID (its blocks go at the next repo gc)."""
    res = call(repo, bootstrap, "pin.rm", {"cid": _check_cid(cid)})
    print_json(res) if as_json else click.echo(f"unpinned {res['cid']}")


@pin_group.command("ls")
@repo_option
@_json_option
def pin_ls_command(repo: Path | None, as_json: bool) -> None:
    """List pinned CIDs."""
    res = call(repo, (), "pin.ls", {})
    if as_json:
        print_json(res)
        return
    for p in res["pins"]:
        click.echo(f"{p['cid']} {p['kind']}")


# -- repo --------------------------------------------------------------------------------------


@click.group("repo")
def repo_group() -> None:
    """Look after the repo: garbage collection, verification, statistics."""


@repo_group.command("gc")
@repo_option
@_json_option
def repo_gc_command(repo: Path | None, as_json: bool) -> None:
    """Delete blocks no pin (and no transfer in progress) needs.

    Blocks held by reference in downloaded files lose their reference; the files stay."""
    res = call(repo, (), "repo.gc", {})
    if as_json:
        print_json(res)
        return
    click.echo(
        f"removed {res['removed']} blocks ({format_size(res['freed_bytes'])}), kept {res['kept']}"
    )
    if res["refs_dropped"] or res["refs_kept"]:
        click.echo(
            f"dropped {res['refs_dropped']} file references (the files stay), "
            f"kept {res['refs_kept']}"
        )


@repo_group.command("verify")
@click.option(
    "--remove-damaged",
    is_flag=True,
    help="Delete blocks whose bytes are damaged, drop file references that no longer hold.",
)
@repo_option
@_json_option
def repo_verify_command(repo: Path | None, remove_damaged: bool, as_json: bool) -> None:
    """Re-hash every block (and the bytes of every file reference); exit 1 if any is damaged
    or a pinned root is missing."""
    res = call(repo, (), "repo.verify", {"remove_damaged": remove_damaged})
    if as_json:
        print_json(res)
    else:
        for key in res["damaged"]:
            click.echo(f"damaged block {key}")
        for key in res["unreadable"]:
            click.echo(f"unreadable block {key}")
        for cid in res["missing_pinned"]:
            click.echo(f"pinned root missing: {cid}")
        for path in res["foreign"]:
            click.echo(f"not a block: {path}")
        for ref in res["damaged_refs"]:
            click.echo(
                f"damaged reference {ref['key']}: {ref['length']} bytes at {ref['offset']} "
                f"in {ref['path']}: {ref['why']}"
            )
        status = "ok" if res["ok"] else "DAMAGED"
        click.echo(
            f"verified {res['checked']} blocks and {res['checked_refs']} file references: {status}"
        )
    if not res["ok"]:
        sys.stdout.flush()
        sys.exit(1)


@repo_group.command("stat")
@repo_option
@_json_option
def repo_stat_command(repo: Path | None, as_json: bool) -> None:
    """Blocks, bytes and pins in the repo (blocks stored, and referenced in files)."""
    res = call(repo, (), "repo.stat", {})
    if as_json:
        print_json(res)
        return
    click.echo(f"repo      {res['repo']}")
    click.echo(f"blocks    {res['blocks']}")
    click.echo(f"size      {format_size(res['size'])}")
    click.echo(
        f"referenced {res['referenced_blocks']} blocks, "
        f"{format_size(res['referenced_size'])} (in downloaded files, not copied)"
    )
    click.echo(f"pins      {res['pins']}")
    click.echo(f"transfers {res['transfers']} in progress")

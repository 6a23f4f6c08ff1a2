"""What every verb shares: running a coroutine on the event loop, options, output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh event loop (uvloop when installed)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a Linux dependency
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def repo_option(f: F) -> F:
    return click.option(
        "--repo",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Repo directory (default: $PEERSTACK_REPO or ~/.peerstack).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(f)


def print_json(data: object) -> None:
    """One JSON document on one line, flushed (daemons are read line by line)."""
    sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def bootstrap_option(f: F) -> F:
    return click.option(
        "--bootstrap",
        multiple=True,
        metavar="MULTIADDR",
        help="Peer to join the network through, /p2p/<id> included (repeatable).",
    )(f)


def network_options(f: F) -> F:
    """``--repo``, ``--bootstrap`` and ``--json``: what every networked verb takes."""
    return repo_option(bootstrap_option(json_option(f)))


def call(
    repo: Path | None,
    bootstrap: tuple[str, ...],
    op: str,
    args: dict[str, Any],
    *,
    progress_label: str | None = None,
    as_json: bool = False,
) -> dict[str, Any]:
    """Run ``op`` in the daemon or one-shot (see ``backend``), with a progress view if asked."""
    from peerstack.cli.backend import backend_for
    from peerstack.cli.progress import ProgressView

    async def go() -> dict[str, Any]:
        async with backend_for(repo, bootstrap) as backend:
            if progress_label is None:
                return await backend.call(op, args)
            with ProgressView(progress_label, as_json=as_json) as view:
                return await backend.call(op, args, view)

    return run(go())

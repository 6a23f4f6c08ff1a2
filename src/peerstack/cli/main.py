"""The ``peerstack`` command: verbs live in one module per group, errors end in one line.

A mistake by the user (bad multiaddr, bad size, unreadable repo) or a peer that cannot be
reached prints ``peerstack: <what went wrong>`` on stderr and exits non-zero, never a
traceback. A bug in peerstack still shows its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from peerstack import __version__
from peerstack.allocator import tune_for_bulk_transfers
from peerstack.cli.content import (
    add_command,
    cat_command,
    get_command,
    pin_group,
    repo_group,
)
from peerstack.cli.daemon import daemon_command
from peerstack.cli.dht import dht_group, name_group
from peerstack.cli.identity import id_command
from peerstack.cli.net import perf_command, ping_command
from peerstack.errors import PeerError, PeerstackError, UsageError

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


@click.group()
@click.version_option(__version__, prog_name="peerstack")
def cli() -> None:
    """peerstack: a peer-to-peer node that speaks libp2p and IPFS."""


cli.add_command(id_command)
cli.add_command(daemon_command)
cli.add_command(ping_command)
cli.add_command(perf_command)
cli.add_command(dht_group)
cli.add_command(name_group)
cli.add_command(add_command)
cli.add_command(get_command)
cli.add_command(cat_command)
cli.add_command(pin_group)
cli.add_command(repo_group)


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"peerstack: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``peerstack`` script."""
    # A node moves megabyte buffers: keep freed ones for reuse (see peerstack.allocator).
    tune_for_bulk_transfers()
    try:
        rv = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="peerstack",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        _fail("interrupted", EXIT_INTERRUPTED)
    except click.ClickException as exc:
        _fail(exc.format_message().replace("\n", " "), exc.exit_code)
    except UsageError as exc:
        _fail(str(exc), EXIT_USAGE)
    except PeerError as exc:
        _fail(f"the peer misbehaved: {exc}", EXIT_FAILURE)
    except PeerstackError as exc:
        _fail(str(exc) or type(exc).__name__, EXIT_FAILURE)
    except TimeoutError:
        _fail("timed out", EXIT_FAILURE)
    except OSError as exc:
        _fail(exc.strerror or str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()

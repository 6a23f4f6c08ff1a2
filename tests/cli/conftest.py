"""Fixtures for the CLI tests: a small network of daemons on loopback, each with its repo."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests import their helpers as ``tests.cli.clitools`` (the name mypy gives that file), so
# the repository root must be importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.cli.clitools import Daemon, start_daemon  # noqa: E402


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    """Three daemons (DHT server mode); d1 and d2 know only d0 and join through the DHT."""
    root = tmp_path_factory.mktemp("daemons")
    started: list[Daemon] = []
    try:
        started.append(start_daemon(root / "d0"))
        for i in (1, 2):
            started.append(start_daemon(root / f"d{i}", started[0].addr))
        yield started
    finally:
        for d in started:
            d.stop()

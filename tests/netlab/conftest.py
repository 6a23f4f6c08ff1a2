"""Fixtures for multi-host tests in network namespaces (see netlab.py).

The ``lab`` fixture skips, with the reason, on a machine where namespaces or link shaping are
out of reach (not root, no iproute2, no sch_netem and no /dev/net/tun). Every namespace,
interface and process a test created is removed when it ends, passed or failed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests import their helper as ``tests.netlab.netlab`` (the name mypy gives that file), so
# the repository root must be importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.netlab.netlab import (  # noqa: E402
    Capabilities,
    Netlab,
    NetlabUnavailable,
    probe,
    sweep_stale,
)


@pytest.fixture(scope="session")
def netlab_caps() -> Capabilities:
    """What this machine offers; skips every netlab test when it cannot build one."""
    try:
        caps = probe()
    except NetlabUnavailable as exc:
        pytest.skip(f"netlab unavailable: {exc}")
    sweep_stale()  # namespaces left by an earlier run that was killed before cleaning up
    return caps


@pytest.fixture
def lab(netlab_caps: Capabilities) -> Iterator[Netlab]:
    """An empty lab; hosts and links are added by the test."""
    netlab = Netlab(netlab_caps)
    try:
        yield netlab
    finally:
        netlab.close()

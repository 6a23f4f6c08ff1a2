"""Fixtures for multi-host tests in network namespaces (see netlab.py).

The ``lab`` fixture skips, with the reason, on a machine where namespaces or link shaping are
out of reach (not root, no iproute2, no sch_netem and no /dev/net/tun). Every namespace,
interface and process a test created is removed when it ends, passed or failed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from netlab import Capabilities, Netlab, NetlabUnavailable, probe, sweep_stale


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

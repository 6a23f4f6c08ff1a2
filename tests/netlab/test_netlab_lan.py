"""Several peers on one bridged segment: every host reaches every other through the bridge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.netlab.netlab import Netlab, peerstack, start_daemon

MIB = 1024 * 1024


@pytest.mark.slow
def test_peers_on_a_shaped_lan_reach_each_other(lab: Netlab, tmp_path: Path) -> None:
    """10 ms on every port: host to host is 20 ms one way, so every RTT is at least 40 ms,
    from a plain client and from one daemon's host to another's."""
    names = ["a", "b", "c", "d"]
    for name in names:
        lab.add_host(name)
    lan = lab.lan(names, delay_ms=10)
    daemons = {
        name: start_daemon(
            lab, name, tmp_path / f"repo-{name}", [f"/ip4/{lan.addrs[name]}/tcp/4001"]
        )
        for name in ("b", "c", "d")
    }
    assert len({d.peer_id for d in daemons.values()}) == 3
    for src, dst in (("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("d", "b")):
        target = daemons[dst].addr_on(lan.addrs[dst])
        done = peerstack(lab, src, ["ping", target, "-n", "2", "--json"], timeout=30)
        assert done.returncode == 0, (src, dst, done.stderr)
        result = json.loads(done.stdout)
        assert result["peer_id"] == daemons[dst].peer_id
        assert all(40.0 <= r < 1000.0 for r in result["rtts_ms"]), (src, dst, result)


def test_perf_across_an_unshaped_lan(lab: Netlab, tmp_path: Path) -> None:
    """A plain bridged segment (veth ports, no shaping) carries a full perf exchange."""
    for name in ("a", "b"):
        lab.add_host(name)
    lan = lab.lan(["a", "b"])
    daemon = start_daemon(lab, "b", tmp_path / "repo-b", [f"/ip4/{lan.addrs['b']}/tcp/4001"])
    args = ["perf", daemon.addr_on(lan.addrs["b"]), "--upload", "8MiB", "--download", "16MiB"]
    done = peerstack(lab, "a", [*args, "--json"], timeout=40)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["upload_bytes"] == 8 * MIB
    assert result["download_bytes"] == 16 * MIB

"""Peers in two namespaces over a link with delay: ping RTTs and Yamux window growth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.netlab.netlab import Netlab, peerstack, perf_client, read_json_line, start_daemon

MIB = 1024 * 1024
# Yamux's initial (and, without auto-tuning, only) stream window.
FIXED_WINDOW = 256 * 1024


def test_ping_rtt_includes_link_delay(lab: Netlab, tmp_path: Path) -> None:
    """20 ms each way: every RTT the CLI reports is at least 40 ms, and not absurdly more."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=20)
    daemon = start_daemon(lab, "a", tmp_path / "repo-a", [f"/ip4/{link.addr_a}/tcp/4001"])
    done = peerstack(lab, "b", ["ping", daemon.addr_on(link.addr_a), "-n", "5", "--json"])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["peer_id"] == daemon.peer_id
    rtts = result["rtts_ms"]
    assert len(rtts) == 5
    assert all(40.0 <= r < 1000.0 for r in rtts), rtts
    assert result["min_ms"] == min(rtts)


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_window_grows_past_fixed_window_ceiling(
    lab: Netlab, tmp_path: Path, direction: str
) -> None:
    """100 ms RTT: a 256 KiB window caps a stream at 2.6 MB/s; auto-tuning toward the
    bandwidth-delay product must beat that 3x, whichever side receives."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=50, rate_mbit=1000)
    daemon = start_daemon(lab, "a", tmp_path / "repo-a", [f"/ip4/{link.addr_a}/tcp/4001"])
    size = 96 * MIB
    sizes = {"upload": "0", "download": "0", direction: str(size)}
    args = ["perf", daemon.addr_on(link.addr_a), "--json"]
    args += ["--upload", sizes["upload"], "--download", sizes["download"]]
    done = peerstack(lab, "b", args, timeout=50)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result[f"{direction}_bytes"] == size
    ceiling = FIXED_WINDOW / (2 * 0.050) / 1e6
    rate = result[f"{direction}_mb_per_s"]
    print(f"{direction} {rate:.1f} MB/s; fixed-window ceiling {ceiling:.2f} MB/s")
    assert rate > 3 * ceiling, result


def test_fixed_window_is_capped_by_rtt(lab: Netlab, tmp_path: Path) -> None:
    """Control for the test above: a receiver that never grows its window stays under
    window/RTT, so the link really has a 100 ms RTT and the 3x bound means something."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=50, rate_mbit=1000)
    daemon = start_daemon(lab, "a", tmp_path / "repo-a", [f"/ip4/{link.addr_a}/tcp/4001"])
    client = perf_client(
        lab, "b", daemon.addr_on(link.addr_a), download=6 * MIB, max_window=FIXED_WINDOW
    )
    assert read_json_line(client, timeout=20)["event"] == "connected"
    result = read_json_line(client, timeout=30)
    assert result["event"] == "done", result
    assert result["download_bytes"] == 6 * MIB
    ceiling = FIXED_WINDOW / (2 * 0.050) / 1e6
    print(f"fixed window: {result['download_mb_per_s']:.2f} MB/s; ceiling {ceiling:.2f}")
    assert result["download_mb_per_s"] < 1.3 * ceiling, result

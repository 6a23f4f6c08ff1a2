"""Faults between namespaces: packet loss, a daemon killed mid-transfer and restarted, a link
that goes down under a live connection."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.netlab.netlab import (
    PEERSTACK,
    Netlab,
    kill_group,
    peerstack,
    perf_client,
    pinger,
    read_json_line,
    read_line,
    start_daemon,
)

MIB = 1024 * 1024


def test_perf_survives_two_percent_loss(lab: Netlab, tmp_path: Path) -> None:
    """2% of packets lost each way: a 32 MiB download (and an upload) still complete."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=2, loss_pct=2)
    daemon = start_daemon(lab, "a", tmp_path / "repo-a", [f"/ip4/{link.addr_a}/tcp/4001"])
    before = lab.tcp_stats("a")["RetransSegs"]
    args = ["perf", daemon.addr_on(link.addr_a), "--upload", "4MiB", "--download", "32MiB"]
    done = peerstack(lab, "b", [*args, "--json"], timeout=50)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["download_bytes"] == 32 * MIB
    assert result["upload_bytes"] == 4 * MIB
    # The link really lost packets: the sender had to retransmit.
    assert lab.tcp_stats("a")["RetransSegs"] > before


def _wait_established(lab: Netlab, host: str, port: int, timeout: float = 20.0) -> None:
    """Until ``host`` has an established TCP connection on local port ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.run(host, ["ss", "-Htn", "state", "established", f"( sport = :{port} )"])
        if out.stdout.strip():
            return
        time.sleep(0.1)
    raise AssertionError(f"no established connection on {host}:{port}")


def test_daemon_killed_mid_transfer_then_restarted(lab: Netlab, tmp_path: Path) -> None:
    """SIGKILL the serving daemon mid-download: the client fails fast with one line; the
    daemon restarted on the same repo has the same PeerId and serves again."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=5, rate_mbit=100)
    repo = tmp_path / "repo-a"
    listen = [f"/ip4/{link.addr_a}/tcp/4001"]
    daemon = start_daemon(lab, "a", repo, listen)
    target = daemon.addr_on(link.addr_a)
    # 1 GiB at 100 Mbit/s takes minutes: it is surely in flight when the daemon dies.
    client = lab.spawn(
        "b",
        [str(PEERSTACK), "perf", target, "--upload", "0", "--download", "1GiB", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_established(lab, "a", 4001)
    time.sleep(1.0)
    assert client.poll() is None, "the transfer ended before the daemon was killed"
    kill_group(daemon.proc, signal.SIGKILL)
    out, err = client.communicate(timeout=20)  # no hang: TimeoutExpired fails the test
    assert client.returncode != 0
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("peerstack: "), err
    assert "Traceback" not in err
    print(f"client after SIGKILL of the daemon: {lines[0]}")

    again = start_daemon(lab, "a", repo, listen)
    assert again.peer_id == daemon.peer_id
    assert again.addr_on(link.addr_a) == target
    done = peerstack(lab, "b", ["ping", target, "-n", "2", "--json"], timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["peer_id"] == daemon.peer_id


@pytest.mark.slow
def test_link_down_fails_that_connection_only(lab: Netlab, tmp_path: Path) -> None:
    """Host b's link goes down mid-download: b's client (keepalive 1 s) fails within a few
    seconds with a typed error; host c's download from the same daemon, in flight at the
    same time over another link, completes; b reconnects once the link is back up."""
    for host in ("a", "b", "c"):
        lab.add_host(host)
    ab = lab.link("a", "b", delay_ms=5, rate_mbit=100)
    ac = lab.link("a", "c", delay_ms=5, rate_mbit=100)
    daemon = start_daemon(
        lab, "a", tmp_path / "repo-a", [f"/ip4/{ab.addr_a}/tcp/4001", f"/ip4/{ac.addr_a}/tcp/4001"]
    )
    doomed = perf_client(lab, "b", daemon.addr_on(ab.addr_a), download=1024 * MIB, keepalive=1.0)
    assert read_json_line(doomed, timeout=20)["event"] == "connected"
    # ~8 s at 100 Mbit/s: still running when b's failure is noticed a few seconds from now.
    survivor = perf_client(lab, "c", daemon.addr_on(ac.addr_a), download=96 * MIB)
    assert read_json_line(survivor, timeout=20)["event"] == "connected"
    time.sleep(1.0)
    assert doomed.poll() is None, "b's transfer ended before its link went down"

    ab.set_down("b")
    cut = time.monotonic()
    failure = read_json_line(doomed, timeout=20)
    noticed = time.monotonic() - cut
    print(f"b noticed the dead link after {noticed:.1f} s: {failure}")
    assert failure["event"] == "error", failure
    assert "keepalive" in failure["error"], failure
    assert doomed.wait(timeout=10) == 1
    assert survivor.poll() is None, "c's transfer was not in flight across b's failure"

    result = read_json_line(survivor, timeout=40)
    assert result["event"] == "done", result
    assert result["download_bytes"] == 96 * MIB
    assert survivor.wait(timeout=10) == 0

    ab.set_up("b")
    done = peerstack(lab, "b", ["ping", daemon.addr_on(ab.addr_a), "-n", "2", "--json"])
    assert done.returncode == 0, done.stderr


def _next_event(proc: subprocess.Popen[bytes], event: str, timeout: float) -> dict[str, object]:
    """The next line of ``proc`` with this ``event``, skipping others, within ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, object]] = []
    while (left := deadline - time.monotonic()) > 0:
        line = read_line(proc, left)
        if not line:
            break
        data = json.loads(line)
        if data["event"] == event:
            return dict(data)
        seen.append(data)
    raise AssertionError(f"no {event!r} within {timeout} s; saw {seen[-3:]}")


def test_long_lived_peer_reconnects_after_daemon_restart(lab: Netlab, tmp_path: Path) -> None:
    """A node that keeps pinging a daemon by PeerId sees failures while it is dead and pongs
    again once it is back on the same repo and address, redialling on its own."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=5)
    repo = tmp_path / "repo-a"
    listen = [f"/ip4/{link.addr_a}/tcp/4001"]
    daemon = start_daemon(lab, "a", repo, listen)
    node = pinger(lab, "b", daemon.addr_on(link.addr_a), interval=0.2, duration=45)
    for _ in range(3):
        assert float(str(_next_event(node, "pong", 15)["rtt_ms"])) >= 10.0
    kill_group(daemon.proc, signal.SIGKILL)
    daemon.proc.wait(timeout=10)
    failure = _next_event(node, "fail", 15)
    print(f"while the daemon is dead: {failure}")
    again = start_daemon(lab, "a", repo, listen)
    assert again.peer_id == daemon.peer_id
    _next_event(node, "pong", 15)


@pytest.mark.slow
def test_brief_outage_does_not_break_a_transfer(lab: Netlab, tmp_path: Path) -> None:
    """The link is down for 3 s mid-download (well under the keepalive timeout): TCP
    retransmits once it is back and the download completes intact."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=5, rate_mbit=100)
    daemon = start_daemon(lab, "a", tmp_path / "repo-a", [f"/ip4/{link.addr_a}/tcp/4001"])
    client = perf_client(lab, "b", daemon.addr_on(link.addr_a), download=48 * MIB)
    assert read_json_line(client, timeout=20)["event"] == "connected"
    time.sleep(1.0)
    assert client.poll() is None, "the transfer ended before the outage"
    link.set_down("b")
    time.sleep(3.0)
    link.set_up("b")
    result = read_json_line(client, timeout=40)
    assert result["event"] == "done", result
    assert result["download_bytes"] == 48 * MIB


@pytest.mark.slow
def test_dial_into_a_black_hole_fails_in_bounded_time(lab: Netlab, tmp_path: Path) -> None:
    """The daemon's end of the link is down, so SYNs vanish without an answer: the CLI gives
    up after its dial timeout with one line on stderr instead of hanging."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=5)
    daemon = start_daemon(lab, "a", tmp_path / "repo-a", [f"/ip4/{link.addr_a}/tcp/4001"])
    link.set_down("a")
    start = time.monotonic()
    done = peerstack(lab, "b", ["ping", daemon.addr_on(link.addr_a), "--json"], timeout=40)
    print(f"gave up after {time.monotonic() - start:.1f} s: {done.stderr.strip()}")
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("peerstack: ")
    assert not lines[0].rstrip().endswith(":"), f"the error names no reason: {lines[0]!r}"


def _established(lab: Netlab, host: str, port: int) -> int:
    out = lab.run(host, ["ss", "-Htn", "state", "established", f"( sport = :{port} )"])
    return len(out.stdout.splitlines())


def test_client_killed_mid_transfer_releases_the_daemon(lab: Netlab, tmp_path: Path) -> None:
    """SIGKILL the downloading client: the daemon drops that connection and keeps serving."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=5, rate_mbit=100)
    daemon = start_daemon(lab, "a", tmp_path / "repo-a", [f"/ip4/{link.addr_a}/tcp/4001"])
    target = daemon.addr_on(link.addr_a)
    client = perf_client(lab, "b", target, download=1024 * MIB)
    assert read_json_line(client, timeout=20)["event"] == "connected"
    time.sleep(1.0)
    assert _established(lab, "a", 4001) == 1
    kill_group(client, signal.SIGKILL)
    client.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _established(lab, "a", 4001) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _established(lab, "a", 4001) == 0, "the daemon kept the dead client's connection"
    assert daemon.proc.poll() is None
    done = peerstack(lab, "b", ["ping", target, "-n", "2", "--json"], timeout=30)
    assert done.returncode == 0, done.stderr


def test_daemon_sigterm_mid_transfer_stops_cleanly(lab: Netlab, tmp_path: Path) -> None:
    """SIGTERM while serving a download: the daemon says ``stopped`` and exits 0 promptly;
    the client fails with one line."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=5, rate_mbit=100)
    daemon = start_daemon(lab, "a", tmp_path / "repo-a", [f"/ip4/{link.addr_a}/tcp/4001"])
    args = [str(PEERSTACK), "perf", daemon.addr_on(link.addr_a), "--upload", "0"]
    client = lab.spawn(
        "b",
        [*args, "--download", "1GiB", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_established(lab, "a", 4001)
    time.sleep(1.0)
    assert client.poll() is None, "the transfer ended before the daemon was stopped"
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=15) == 0, daemon.log.read_text()[-2000:]
    assert read_line(daemon.proc, timeout=5).strip() == '{"event":"stopped"}'
    _, err = client.communicate(timeout=20)
    assert client.returncode != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("peerstack: "), err

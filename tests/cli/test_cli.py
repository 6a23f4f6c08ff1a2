"""The `peerstack` command, run as a real subprocess."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerstack.core.identity import PublicKey
from peerstack.core.peer_id import PeerId

PEERSTACK = [sys.executable, "-m", "peerstack.cli.main"]


def peerstack(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PEERSTACK, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert the process failed with exactly one line on stderr and no traceback."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("peerstack: ")
    return lines[0]


def test_id_json(tmp_path: Path) -> None:
    proc = peerstack("id", "--repo", str(tmp_path / "r"), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    key = PublicKey.from_protobuf(base64.b64decode(data["public_key"]))
    assert PeerId.from_string(data["peer_id"]) == PeerId.from_public_key(key)
    assert data["key_type"] == "ED25519"
    # The same repo gives the same identity.
    again = json.loads(peerstack("id", "--repo", str(tmp_path / "r"), "--json").stdout)
    assert again["peer_id"] == data["peer_id"]


def test_id_uses_env_repo(tmp_path: Path) -> None:
    env = {**os.environ, "PEERSTACK_REPO": str(tmp_path / "env")}
    proc = subprocess.run(
        [*PEERSTACK, "id", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["repo"] == str(tmp_path / "env")
    assert (tmp_path / "env" / "identity.key").exists()


def test_unknown_verb_is_one_line() -> None:
    one_line_error(peerstack("frobnicate"))


def test_bad_multiaddr_is_one_line() -> None:
    line = one_line_error(peerstack("ping", "/ip4/999.1.1.1/tcp/1"))
    assert "multiaddr" in line
    one_line_error(peerstack("ping", "not-a-multiaddr"))


def test_unknown_service_to_enable_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(peerstack("daemon", "--repo", str(tmp_path / "r"), "--enable", "telnet"))
    assert "telnet" in line


def test_bad_size_is_one_line() -> None:
    line = one_line_error(
        peerstack("perf", "/ip4/127.0.0.1/tcp/1", "--upload", "lots", "--download", "1")
    )
    assert "size" in line


def test_ping_closed_port_is_one_line(free_port: int) -> None:
    one_line_error(peerstack("ping", f"/ip4/127.0.0.1/tcp/{free_port}", "-n", "1"))


@pytest.fixture
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    proc = subprocess.Popen(
        [
            *PEERSTACK,
            "daemon",
            "--repo",
            str(tmp_path / "d"),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--enable",
            "perf,echo",  # off by default; the perf test below measures against it
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        info = json.loads(line)
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_daemon_prints_addrs_and_stops_on_sigterm(
    daemon: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    proc, info = daemon
    assert info["event"] == "listening"
    addrs = info["addrs"]
    assert isinstance(addrs, list)
    assert addrs
    assert all(a.endswith(f"/p2p/{info['peer_id']}") for a in addrs)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["event"] == "stopped"


def test_daemon_stops_on_sigint(
    daemon: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    proc, _ = daemon
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0


def test_ping_and_perf_against_daemon(
    daemon: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    _, info = daemon
    addrs = info["addrs"]
    assert isinstance(addrs, list)
    target = addrs[0]

    proc = peerstack("ping", target, "-n", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["peer_id"] == info["peer_id"]
    assert len(result["rtts_ms"]) == 3

    proc = peerstack("ping", target, "-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("pong from") == 2

    proc = peerstack("perf", target, "--upload", "1MiB", "--download", "1MiB", "--json")
    assert proc.returncode == 0, proc.stderr
    perf = json.loads(proc.stdout)
    assert perf["upload_bytes"] == 1024 * 1024
    assert perf["download_bytes"] == 1024 * 1024

    # Without /p2p/<id> the peer's identity is learnt from the handshake.
    bare = target.rsplit("/p2p/", 1)[0]
    proc = peerstack("ping", bare, "-n", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["peer_id"] == info["peer_id"]


def test_ping_wrong_peer_id_is_one_line(
    daemon: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    _, info = daemon
    addrs = info["addrs"]
    assert isinstance(addrs, list)
    other = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    target = addrs[0].rsplit("/p2p/", 1)[0] + f"/p2p/{other}"
    one_line_error(peerstack("ping", target, "-n", "1"))


def test_console_script_entry_point(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "peerstack"
    if not script.exists():
        pytest.skip("the peerstack console script is not installed in this environment")
    proc = subprocess.run(
        [str(script), "id", "--repo", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["peer_id"].startswith("12D3KooW")
    assert (
        subprocess.run([str(script), "--version"], capture_output=True, check=False).returncode == 0
    )

"""Helpers for the CLI tests: run ``peerstack``, start daemons, check one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEERSTACK = [sys.executable, "-m", "peerstack.cli.main"]
DEAD_PEER = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


def peerstack(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PEERSTACK, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def ok_json(*args: str, timeout: float = 90) -> Any:
    """Run a verb with ``--json``; it must succeed; its stdout is one JSON document."""
    proc = peerstack(*args, "--json", timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert the process failed with exactly one line on stderr and no traceback."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("peerstack: ")
    return lines[0]


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    repo: Path
    peer_id: str
    addr: str  # a dialable multiaddr with /p2p/
    api: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_daemon(repo: Path, *bootstrap: str) -> Daemon:
    args = [*PEERSTACK, "daemon", "--repo", str(repo), "--listen", "/ip4/127.0.0.1/tcp/0", "--json"]
    for b in bootstrap:
        args += ["--bootstrap", b]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        proc.kill()
        raise AssertionError(f"daemon did not start: {err}")
    info = json.loads(line)
    return Daemon(proc, repo, info["peer_id"], info["addrs"][0], info["api"])

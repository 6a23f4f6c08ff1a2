"""`python -m peerstack.demo` runs end to end and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

# Wide enough that rich does not wrap the lines we look for.
ENV = {**os.environ, "COLUMNS": "200"}


def test_demo_runs() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peerstack.demo",
            "--size",
            "4MiB",
            "--pings",
            "3",
            "--nodes",
            "4",
            "--file-size",
            "3MiB",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "identify: B's agent" in out
    assert "peerstack/" in out
    assert "ping RTTs" in out
    assert "perf A -> B" in out
    assert "perf B -> A" in out
    assert "MB/s" in out
    # The DHT part: peers told only about peer0 know the others, and find them.
    for i in (1, 2, 3):
        assert f"peer{i} was told about peer0; its routing table:" in out
    assert out.count(" found peer") == 3
    assert " hops, " in out
    # The file part: two peers fetched the file and both copies match.
    assert "fetched by 2 peers at once" in out
    assert "both copies verified" in out
    assert "NO" not in out.split("fetched by 2 peers at once", 1)[1]


def test_demo_bad_nodes_fails_cleanly() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "peerstack.demo", "--nodes", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=ENV,
    )
    assert proc.returncode != 0
    assert "--nodes" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_bad_size_fails_cleanly() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "peerstack.demo", "--size", "huge"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=ENV,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr

"""The lab itself: links carry traffic, and close() leaves no namespace or process behind."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.netlab.netlab import NS_PREFIX, Capabilities, Netlab, read_line


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_close_removes_everything_even_after_a_failure(netlab_caps: Capabilities) -> None:
    lab = Netlab(netlab_caps)
    try:
        lab.add_host("a")
        lab.add_host("b")
        lab.link("a", "b", delay_ms=1, loss_pct=1)
        lab.link("a", "b")  # a plain veth pair next to the shaped one
        lab.lan(["a", "b"], delay_ms=1)  # and a bridge namespace with a port per host
        sleeper = lab.spawn("b", ["sleep", "600"])
        created = set(lab.hosts.values())
        assert created <= _namespaces()
        with pytest.raises(RuntimeError):
            raise RuntimeError("a test body failing half way")
    finally:
        lab.close()
    assert sleeper.poll() is not None
    assert not created & _namespaces()
    for proc in lab.procs:  # link emulators included
        assert proc.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)
    lab.close()  # idempotent


def test_links_connect_their_ends_only(lab: Netlab) -> None:
    """Each link is its own subnet; hosts reach their neighbours and nothing else."""
    for host in ("a", "b", "c"):
        lab.add_host(host)
    shaped = lab.link("a", "b", delay_ms=1)
    plain = lab.link("a", "c")
    assert all(ns.startswith(NS_PREFIX) for ns in lab.hosts.values())
    assert shaped.addr_a.startswith("198.18.")
    assert plain.addr_b.startswith("198.18.")
    probe = "import socket,sys; socket.create_connection((sys.argv[1], 9), timeout=3)"
    for host, addr, reachable in (
        ("b", shaped.addr_a, True),
        ("c", plain.addr_a, True),
        ("b", plain.addr_b, False),  # b has no route to the a-c link
    ):
        done = lab.run(host, ["python3", "-c", probe, addr], timeout=10)
        # Port 9 has no listener: a reachable host answers with a RST (refused).
        refused = "ConnectionRefusedError" in done.stderr
        assert refused == reachable, (host, addr, done.stderr[-300:])


_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001))
s.listen()
print("ready", flush=True)
c, _ = s.accept()
data = bytes(1 << 20)
for _ in range(int(sys.argv[2])):
    c.sendall(data)
c.close()
"""

_CLIENT = """
import json, socket, sys, time
t0 = time.monotonic()
s = socket.create_connection((sys.argv[1], 5001))
t1 = time.monotonic()
n = 0
while chunk := s.recv(1 << 20):
    n += len(chunk)
print(json.dumps({"connect_s": t1 - t0, "transfer_s": time.monotonic() - t1, "bytes": n}))
"""


def test_shaping_delays_paces_and_drops(lab: Netlab) -> None:
    """Plain sockets, no peerstack: the TCP handshake takes at least one RTT, 4 MiB at
    16 Mbit/s takes at least 2 s, and 5% loss makes the sender retransmit."""
    lab.add_host("a")
    lab.add_host("b")
    link = lab.link("a", "b", delay_ms=25, rate_mbit=16, loss_pct=5)
    server = lab.spawn("a", ["python3", "-c", _SERVER, link.addr_a, "4"], stdout=subprocess.PIPE)
    assert read_line(server, timeout=10).strip() == "ready"
    done = lab.run("b", ["python3", "-c", _CLIENT, link.addr_a], timeout=40)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["bytes"] == 4 * 1024 * 1024
    assert result["connect_s"] >= 0.050
    assert result["transfer_s"] >= 4 * 1024 * 1024 * 8 / 16e6 * 0.9
    assert lab.tcp_stats("a")["RetransSegs"] > 0

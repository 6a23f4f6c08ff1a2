"""The lab itself: links carry traffic, and close() leaves no namespace or process behind."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.netlab.netlab import NS_PREFIX, Capabilities, Netlab


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

"""Netlab: throwaway Linux network namespaces joined by shaped links, for multi-host tests.

A test builds a small network of its own::

    lab.add_host("a"); lab.add_host("b")
    link = lab.link("a", "b", delay_ms=50, rate_mbit=1000)
    proc = lab.spawn("a", ["peerstack", "daemon", "--listen", f"/ip4/{link.addr_a}/tcp/4001"])

Every host is a network namespace (``ip netns add``) with its own loopback. A link is a
point-to-point pair of interfaces on 198.18.<n>.0/24; a LAN (``lab.lan(hosts)``) is a bridge in
a namespace of its own with one port per host, on 198.19.<n>.0/24. Both are halves of the RFC
2544 benchmarking range 198.18.0.0/15, which is never routed on the internet, and no namespace
has a route out: nothing a test sends can leave the machine.

Links are shaped in one of two ways:

* ``tc qdisc ... netem`` on both ends of a veth pair (delay, loss and rate in the kernel), when
  the kernel has ``sch_netem``;
* otherwise a userspace link emulator (``python netlab.py emulate``): two TUN devices (TAP
  for a LAN port), one per namespace, and a small forwarding loop that holds every packet for
  the one-way delay, drops a random fraction and paces the rest to the rate. Kernels built
  without netem and without module support (many VM and container kernels) still get real
  delay, loss and rate, seen by the real TCP stacks of both namespaces.

Links without shaping are plain veth pairs either way. ``PEERSTACK_NETLAB_SHAPER`` set to
``netem`` or ``emulator`` forces one way of shaping.

Names carry the pid of the test process, so parallel runs never collide, and ``sweep_stale``
removes namespaces left behind by a test process that was killed before it could clean up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import itertools
import json
import os
import random
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

NS_PREFIX = "pstlab"
# RFC 2544 benchmarking range: link N gets 198.18.N.1 (side a) and 198.18.N.2 (side b).
ADDR_FIRST_OCTETS = "198.18"
MAX_LINKS = 250
# LAN n gets 198.19.n.0/24, the other half of the benchmarking range.
LAN_FIRST_OCTETS = "198.19"
# Emulated links use a large MTU: the forwarding loop is Python, and 64 KiB packets keep the
# per-packet cost far below what the peers themselves spend per byte.
EMULATOR_MTU = 65000
ENV_SHAPER = "PEERSTACK_NETLAB_SHAPER"
COMMAND_TIMEOUT = 20.0
TCP_BUFFER_MAX = 32 * 1024 * 1024

Shaper = Literal["netem", "emulator"]


class NetlabUnavailable(Exception):
    """This machine cannot build a netlab (not root, no iproute2, no namespaces, no shaping)."""


class NetlabError(Exception):
    """An ``ip``/``tc`` command of the netlab failed."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the machine offers: which shaper to use and what had to be set up for it."""

    shaper: Shaper
    notes: tuple[str, ...]


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        raise NetlabError(f"{' '.join(args)}: exit {proc.returncode}: {msg}")
    return proc


def probe() -> Capabilities:
    """Check that namespaces, veth and a shaper work here; ``NetlabUnavailable`` says why not.

    Tries ``modprobe sch_netem`` when netem is missing; falls back to the TUN emulator.
    """
    if sys.platform != "linux":
        raise NetlabUnavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        raise NetlabUnavailable("network namespaces need root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetlabUnavailable(f"`{tool}` not found (apt-get install iproute2)")
    notes: list[str] = []
    ns = f"{NS_PREFIX}{os.getpid()}probe{random.randrange(1 << 30)}"
    try:
        proc = _run(["ip", "netns", "add", ns], check=False)
        if proc.returncode != 0:
            raise NetlabUnavailable(f"cannot create a network namespace: {proc.stderr.strip()}")
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        veth = _run(
            ["ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1"], check=False
        )
        if veth.returncode != 0:
            raise NetlabUnavailable(f"cannot create a veth pair: {veth.stderr.strip()}")
        netem_cmd = ["tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", "netem", "delay", "1ms"]
        netem_ok = _run(netem_cmd, check=False).returncode == 0
        if not netem_ok and shutil.which("modprobe") is not None:
            mod = _run(["modprobe", "sch_netem"], check=False)
            notes.append(f"modprobe sch_netem: exit {mod.returncode} {mod.stderr.strip()}")
            netem_ok = _run(netem_cmd, check=False).returncode == 0
        tun_ok = os.path.exists("/dev/net/tun") and os.access("/dev/net/tun", os.R_OK | os.W_OK)
    finally:
        _run(["ip", "netns", "del", ns], check=False)
    forced = os.environ.get(ENV_SHAPER, "")
    if forced not in ("", "netem", "emulator"):
        raise NetlabUnavailable(f"{ENV_SHAPER}={forced!r}: expected netem or emulator")
    if forced == "netem" and not netem_ok:
        raise NetlabUnavailable(f"{ENV_SHAPER}=netem but the kernel has no sch_netem")
    if netem_ok and forced != "emulator":
        return Capabilities("netem", tuple(notes))
    if not tun_ok:
        raise NetlabUnavailable(
            "tc netem is unavailable (no sch_netem) and /dev/net/tun is missing"
        )
    if not netem_ok:
        notes.append("kernel has no sch_netem: links are shaped by the userspace TUN emulator")
    return Capabilities("emulator", tuple(notes))


def sweep_stale() -> list[str]:
    """Delete netlab namespaces whose creating process is gone; return their names."""
    proc = _run(["ip", "netns", "list"], check=False)
    removed = []
    for line in proc.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NS_PREFIX):
            continue
        digits = "".join(itertools.takewhile(str.isdigit, name[len(NS_PREFIX) :]))
        if not digits or Path(f"/proc/{digits}").exists():
            continue
        _kill_ns_processes(name)
        if _run(["ip", "netns", "del", name], check=False).returncode == 0:
            removed.append(name)
    return removed


def _kill_ns_processes(ns: str) -> None:
    pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class LinkShape:
    """What a link does to every packet, in each direction separately (as netem does)."""

    delay_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float | None = None

    @property
    def shaped(self) -> bool:
        return self.delay_ms > 0 or self.loss_pct > 0 or self.rate_mbit is not None


@dataclass(slots=True)
class Link:
    """A point-to-point link between hosts ``a`` and ``b``."""

    lab: Netlab
    index: int
    a: str
    b: str
    shape: LinkShape
    dev_a: str
    dev_b: str
    addr_a: str
    addr_b: str
    emulator: subprocess.Popen[bytes] | None = None

    def addr_of(self, host: str) -> str:
        """The address ``host`` has on this link."""
        if host == self.a:
            return self.addr_a
        if host == self.b:
            return self.addr_b
        raise KeyError(f"{host} is not on link {self.a}-{self.b}")

    def _dev_of(self, host: str) -> str:
        self.addr_of(host)
        return self.dev_a if host == self.a else self.dev_b

    def set_down(self, host: str) -> None:
        """``ip link set <dev> down`` on ``host``'s end: the link stops carrying packets."""
        self.lab.ip(host, "link", "set", self._dev_of(host), "down")

    def set_up(self, host: str) -> None:
        self.lab.ip(host, "link", "set", self._dev_of(host), "up")


@dataclass(slots=True)
class Lan:
    """Hosts on one Ethernet segment: a bridge in a namespace of its own, one port per host.

    Shaping applies to each host's port in each direction, so between two hosts a packet is
    delayed twice (``delay_ms`` on the sender's port, again on the receiver's).
    """

    lab: Netlab
    index: int
    bridge_host: str
    shape: LinkShape
    addrs: dict[str, str] = field(default_factory=dict)
    devs: dict[str, str] = field(default_factory=dict)
    emulators: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def set_down(self, host: str) -> None:
        """``ip link set <dev> down`` on ``host``'s port: it drops off the segment."""
        self.lab.ip(host, "link", "set", self.devs[host], "down")

    def set_up(self, host: str) -> None:
        self.lab.ip(host, "link", "set", self.devs[host], "up")


@dataclass(slots=True)
class Netlab:
    """Namespaces, links and processes of one test; ``close()`` removes all of them."""

    caps: Capabilities
    tag: str = field(default_factory=lambda: f"{os.getpid()}x{random.randrange(1 << 24):x}")
    hosts: dict[str, str] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    lans: list[Lan] = field(default_factory=list)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    _closed: bool = False

    # -- building ---------------------------------------------------------------------------

    def add_host(self, name: str) -> str:
        """Create namespace for host ``name`` (loopback up); return the namespace name."""
        if name in self.hosts:
            raise ValueError(f"host {name} exists")
        ns = f"{NS_PREFIX}{self.tag}-{name}"
        _run(["ip", "netns", "add", ns])
        self.hosts[name] = ns
        self.ip(name, "link", "set", "lo", "up")
        # A new namespace gets the kernel's default TCP buffer caps (4 MiB send, 6 MiB receive):
        # below the bandwidth-delay product of the links tests build. Tuned hosts raise them.
        # (Written with Python rather than sysctl(8): procps is not in slim images.)
        limits = f"4096 131072 {TCP_BUFFER_MAX}"
        write = "import sys\nfor p in sys.argv[2:]: open(p, 'w').write(sys.argv[1])"
        knobs = [f"/proc/sys/net/ipv4/{k}" for k in ("tcp_rmem", "tcp_wmem")]
        _run([*self.exec_prefix(name), sys.executable, "-c", write, limits, *knobs])
        return ns

    def tcp_stats(self, host: str) -> dict[str, int]:
        """The ``Tcp:`` counters of ``/proc/net/snmp`` in ``host``'s namespace."""
        text = _run([*self.exec_prefix(host), "cat", "/proc/net/snmp"]).stdout
        rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Tcp:")]
        return {k: int(v) for k, v in zip(rows[0], rows[1], strict=True)}

    def link(
        self,
        a: str,
        b: str,
        *,
        delay_ms: float = 0.0,
        loss_pct: float = 0.0,
        rate_mbit: float | None = None,
    ) -> Link:
        """Join hosts ``a`` and ``b``; delay, loss and rate apply to each direction."""
        if len(self.links) >= MAX_LINKS:
            raise ValueError("too many links")
        shape = LinkShape(delay_ms, loss_pct, rate_mbit)
        index = len(self.links) + 1
        link = Link(
            self,
            index,
            a,
            b,
            shape,
            dev_a=f"l{index}{a}"[:15],
            dev_b=f"l{index}{b}"[:15],
            addr_a=f"{ADDR_FIRST_OCTETS}.{index}.1",
            addr_b=f"{ADDR_FIRST_OCTETS}.{index}.2",
        )
        self.links.append(link)
        ns_b = self.hosts[b]
        mtu = 1500
        if shape.shaped and self.caps.shaper == "emulator":
            mtu = EMULATOR_MTU
            link.emulator = self._start_emulator(
                a, link.dev_a, link.dev_b, shape, seed=index, tap=False
            )
            self.ip(a, "link", "set", link.dev_b, "netns", ns_b)
        else:
            self.ip(
                a,
                "link",
                "add",
                link.dev_a,
                "type",
                "veth",
                "peer",
                "name",
                link.dev_b,
                "netns",
                ns_b,
            )
            if shape.shaped:
                for host, dev in ((a, link.dev_a), (b, link.dev_b)):
                    self._netem(host, dev, shape)
        for host, dev, addr in ((a, link.dev_a, link.addr_a), (b, link.dev_b, link.addr_b)):
            self.ip(host, "link", "set", dev, "mtu", str(mtu))
            self.ip(host, "addr", "add", f"{addr}/24", "dev", dev)
            self.ip(host, "link", "set", dev, "up")
        return link

    def lan(
        self,
        hosts: Sequence[str],
        *,
        delay_ms: float = 0.0,
        loss_pct: float = 0.0,
        rate_mbit: float | None = None,
    ) -> Lan:
        """Put ``hosts`` on one bridged segment, 198.19.<n>.<i>/24 (i from 1 in order).

        Delay, loss and rate apply on every host's port, each direction.
        """
        if len(self.lans) >= MAX_LINKS or len(hosts) > MAX_LINKS:
            raise ValueError("too many LANs or hosts")
        shape = LinkShape(delay_ms, loss_pct, rate_mbit)
        index = len(self.lans) + 1
        bridge_host = f"lan{index}"
        self.add_host(bridge_host)
        lan = Lan(self, index, bridge_host, shape)
        self.lans.append(lan)
        emulated = shape.shaped and self.caps.shaper == "emulator"
        mtu = str(EMULATOR_MTU if emulated else 1500)
        self.ip(bridge_host, "link", "add", "br0", "type", "bridge")
        for i, host in enumerate(hosts, 1):
            port, dev = f"p{i}", f"lan{index}h{i}"
            if emulated:
                emu = self._start_emulator(bridge_host, port, dev, shape, seed=1000 + i, tap=True)
                lan.emulators.append(emu)
                self.ip(bridge_host, "link", "set", dev, "netns", self.hosts[host])
            else:
                self.ip(bridge_host, "link", "add", port, "type", "veth", "peer", "name", dev)
                self.ip(bridge_host, "link", "set", dev, "netns", self.hosts[host])
                if shape.shaped:
                    self._netem(bridge_host, port, shape)
                    self._netem(host, dev, shape)
            self.ip(bridge_host, "link", "set", port, "mtu", mtu)
            self.ip(bridge_host, "link", "set", port, "master", "br0")
            self.ip(bridge_host, "link", "set", port, "up")
            addr = f"{LAN_FIRST_OCTETS}.{index}.{i}"
            self.ip(host, "link", "set", dev, "mtu", mtu)
            self.ip(host, "addr", "add", f"{addr}/24", "dev", dev)
            self.ip(host, "link", "set", dev, "up")
            lan.addrs[host] = addr
            lan.devs[host] = dev
        self.ip(bridge_host, "link", "set", "br0", "up")
        return lan

    def _netem(self, host: str, dev: str, shape: LinkShape) -> None:
        args = ["tc", "-n", self.hosts[host], "qdisc", "add", "dev", dev, "root", "netem"]
        if shape.delay_ms > 0:
            args += ["delay", f"{shape.delay_ms}ms"]
        if shape.loss_pct > 0:
            args += ["loss", f"{shape.loss_pct}%"]
        if shape.rate_mbit is not None:
            args += ["rate", f"{shape.rate_mbit}mbit"]
        # netem's default queue of 1000 packets is too short for a 1 Gbit/s, 100 ms path.
        args += ["limit", "100000"]
        _run(args)

    def _start_emulator(
        self, host: str, dev_a: str, dev_b: str, shape: LinkShape, *, seed: int, tap: bool
    ) -> subprocess.Popen[bytes]:
        """Run the emulator in ``host``; it creates ``dev_a`` and ``dev_b`` there."""
        args = [sys.executable, str(Path(__file__).resolve()), "emulate"]
        args += ["--dev-a", dev_a, "--dev-b", dev_b, "--seed", str(seed)]
        args += ["--delay-ms", str(shape.delay_ms), "--loss-pct", str(shape.loss_pct)]
        if shape.rate_mbit is not None:
            args += ["--rate-mbit", str(shape.rate_mbit)]
        if tap:
            args.append("--tap")
        proc = self.spawn(host, args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = read_line(proc, timeout=10.0)
        if line.strip() != "ready":
            err = ""
            if proc.poll() is not None and proc.stderr is not None:
                err = proc.stderr.read().decode(errors="replace")
            raise NetlabError(f"link emulator did not start: {line!r} {err.strip()}")
        return proc

    # -- running things inside ----------------------------------------------------------------

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host]]

    def ip(self, host: str, *args: str) -> str:
        """Run ``ip -n <ns> args...``; return its stdout."""
        return _run(["ip", "-n", self.hosts[host], *args]).stdout

    def run(
        self, host: str, args: Sequence[str], *, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in ``host``'s namespace to completion (killed after ``timeout``)."""
        proc = self.spawn(host, args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def spawn(self, host: str, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in ``host``'s namespace (own process group); killed by ``close()``."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            [*self.exec_prefix(host), *args], start_new_session=True, **kwargs
        )
        self.procs.append(proc)
        return proc

    # -- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process, then delete every namespace (which deletes its interfaces)."""
        if self._closed:
            return
        self._closed = True
        for proc in self.procs:
            kill_group(proc)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        errors = []
        for ns in self.hosts.values():
            _kill_ns_processes(ns)
            done = _run(["ip", "netns", "del", ns], check=False)
            if done.returncode != 0:
                errors.append(f"{ns}: {done.stderr.strip()}")
        if errors:
            raise NetlabError("could not delete namespaces: " + "; ".join(errors))


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal ``proc``'s process group (it was started in a session of its own)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def read_line(proc: subprocess.Popen[Any], timeout: float) -> str:
    """One line of ``proc``'s stdout within ``timeout`` ('' at end of output or on timeout).

    Reads byte by byte from the raw pipe so nothing after the line is buffered away from a
    later reader.
    """
    pipe: IO[Any] | None = proc.stdout
    if pipe is None:
        raise ValueError("process has no stdout pipe")
    fd = pipe.fileno()
    deadline = time.monotonic() + timeout
    buf = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            byte = os.read(fd, 1)
            if not byte:
                break
            buf += byte
    return buf.decode(errors="replace")


def read_json_line(proc: subprocess.Popen[Any], timeout: float) -> dict[str, Any]:
    line = read_line(proc, timeout)
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        raise NetlabError(f"expected a JSON line, got {line!r}") from None
    if not isinstance(data, dict):
        raise NetlabError(f"expected a JSON object, got {line!r}")
    return data


# ---------------------------------------------------------------------------------------------
# peerstack processes inside the lab

PEERSTACK = Path(sys.executable).with_name("peerstack")


@dataclass(slots=True)
class Daemon:
    """A ``peerstack daemon`` running in a lab host."""

    proc: subprocess.Popen[bytes]
    peer_id: str
    addrs: list[str]
    log: Path

    def addr_on(self, ip: str) -> str:
        """Our full multiaddr (with ``/p2p/``) on the interface with address ``ip``."""
        for a in self.addrs:
            if a.startswith(f"/ip4/{ip}/"):
                return a
        raise KeyError(f"daemon does not listen on {ip}: {self.addrs}")


def start_daemon(
    lab: Netlab, host: str, repo: Path, listen: Sequence[str], timeout: float = 20.0
) -> Daemon:
    """Start ``peerstack daemon --json`` and wait for its ``listening`` line.

    stderr goes to a file next to the repo (a pipe nobody reads could fill and stall it).
    """
    log = repo.with_name(f"{repo.name}.{len(lab.procs)}.log")
    args = [str(PEERSTACK), "daemon", "--repo", str(repo), "--enable", "perf,echo", "--json"]
    for addr in listen:
        args += ["--listen", addr]
    with log.open("wb") as err:
        proc = lab.spawn(host, args, stdout=subprocess.PIPE, stderr=err)
    line = read_line(proc, timeout)
    try:
        info = json.loads(line)
    except json.JSONDecodeError:
        kill_group(proc)
        proc.wait()
        raise NetlabError(
            f"daemon in {host} did not start: {line!r}; stderr: {log.read_text()[-2000:]}"
        ) from None
    if info.get("event") != "listening":
        raise NetlabError(f"daemon in {host} said {line!r}")
    return Daemon(proc, str(info["peer_id"]), [str(a) for a in info["addrs"]], log)


def peerstack(
    lab: Netlab, host: str, args: Sequence[str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run one ``peerstack`` verb in ``host`` to completion."""
    return lab.run(host, [str(PEERSTACK), *args], timeout=timeout)


def perf_client(
    lab: Netlab,
    host: str,
    target: str,
    *,
    download: int,
    upload: int = 0,
    max_window: int | None = None,
    keepalive: float | None = None,
) -> subprocess.Popen[bytes]:
    """Start a scripted perf client (``netlab.py perf-client``) with its own Yamux settings.

    It prints ``{"event": "connected"}`` once the connection is up, then one JSON line with
    the result or the error.
    """
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "perf-client",
        target,
        "--download",
        str(download),
        "--upload",
        str(upload),
    ]
    if max_window is not None:
        args += ["--max-window", str(max_window)]
    if keepalive is not None:
        args += ["--keepalive", str(keepalive)]
    return lab.spawn(host, args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


async def _perf_client(
    target: str, upload: int, download: int, max_window: int | None, keepalive: float | None
) -> dict[str, Any]:
    from peerstack.core.identity import PrivateKey
    from peerstack.host.host import BasicHost
    from peerstack.protocols import perf
    from peerstack.wire.yamux import YamuxConfig

    config = YamuxConfig()
    if max_window is not None:
        config = dataclasses.replace(config, max_window=max_window)
    if keepalive is not None:
        config = dataclasses.replace(
            config, keepalive_interval=keepalive, keepalive_timeout=keepalive
        )
    async with BasicHost(PrivateKey.generate(), yamux_config=config) as host:
        peer = await host.dial(target)
        _print_json({"event": "connected", "peer_id": str(peer)})
        res = await perf.perf(host, peer, upload, download)
    return {
        "event": "done",
        "download_bytes": res.download_bytes,
        "download_seconds": res.download_seconds,
        "download_mb_per_s": res.download_bps / 1e6,
    }


def _run_perf_client(
    target: str, upload: int, download: int, max_window: int | None, keepalive: float | None
) -> int:
    import asyncio

    from peerstack.errors import PeerstackError

    try:
        result = asyncio.run(_perf_client(target, upload, download, max_window, keepalive))
    except (PeerstackError, OSError, TimeoutError) as exc:
        _print_json({"event": "error", "type": type(exc).__name__, "error": str(exc)})
        return 1
    _print_json(result)
    return 0


def pinger(
    lab: Netlab, host: str, target: str, *, interval: float = 0.2, duration: float = 60.0
) -> subprocess.Popen[bytes]:
    """Start a long-lived node (``netlab.py pinger``) that pings ``target`` by PeerId every
    ``interval`` seconds, redialling as the host sees fit, for at most ``duration`` seconds.

    One JSON line per attempt: ``{"event": "pong", "rtt_ms": ...}`` or
    ``{"event": "fail", "type": ..., "error": ...}``.
    """
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "pinger",
        target,
        "--interval",
        str(interval),
        "--duration",
        str(duration),
    ]
    return lab.spawn(host, args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


async def _pinger(target: str, interval: float, duration: float) -> None:
    import asyncio

    from peerstack.core.identity import PrivateKey
    from peerstack.core.multiaddr import Multiaddr
    from peerstack.core.peer_id import PeerId
    from peerstack.errors import PeerstackError
    from peerstack.host.host import BasicHost
    from peerstack.protocols import ping

    bare, pid = Multiaddr(target).decapsulate_p2p()
    if pid is None:
        raise SystemExit("pinger needs a /p2p/ address")
    peer = PeerId.from_string(pid)
    loop = asyncio.get_running_loop()
    end = loop.time() + duration
    async with BasicHost(PrivateKey.generate()) as host:
        first = True
        while loop.time() < end:
            try:
                async with asyncio.timeout(5.0):
                    if first:  # only the first dial is told the address; later ones must
                        await host.connect(peer, [bare])  # find it in the peerstore
                        first = False
                    (rtt,) = await ping.ping(host, peer, 1)
                _print_json({"event": "pong", "rtt_ms": rtt * 1000})
            except (PeerstackError, OSError, TimeoutError) as exc:
                _print_json({"event": "fail", "type": type(exc).__name__, "error": str(exc)})
            await asyncio.sleep(interval)


def _print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# The userspace link emulator: two TUN devices and a delay line between them.

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
# Bound on bytes held per direction (delay line plus rate backlog): packets beyond it are
# dropped, as a full router queue drops them.
_MAX_QUEUED = 64 * 1024 * 1024
_READ_SIZE = 1 << 17


def _open_tun(name: str, tap: bool) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    kind = _IFF_TAP if tap else _IFF_TUN
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), kind | _IFF_NO_PI))
    return fd


@dataclass(slots=True)
class _Direction:
    """Packets read from ``src`` on their way to ``dst``."""

    src: int
    dst: int
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    queued_bytes: int = 0
    link_free_at: float = 0.0
    dropped: int = 0


def _emulate(
    dev_a: str,
    dev_b: str,
    *,
    delay: float,
    loss: float,
    rate_bps: float | None,
    seed: int,
    tap: bool,
) -> None:
    """Forward packets (TUN) or frames (TAP) between two new devices until killed: delay,
    random loss, rate."""
    rng = random.Random(seed)
    fd_a, fd_b = _open_tun(dev_a, tap), _open_tun(dev_b, tap)
    dirs = {fd_a: _Direction(fd_a, fd_b), fd_b: _Direction(fd_b, fd_a)}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sel = selectors.DefaultSelector()
    for fd in dirs:
        sel.register(fd, selectors.EVENT_READ)
    while True:
        due = [d.queue[0][0] for d in dirs.values() if d.queue]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        for key, _ in sel.select(timeout):
            d = dirs[int(key.fd)]
            for _ in range(256):
                try:
                    packet = os.read(d.src, _READ_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:  # the device went down or away
                    if exc.errno in (errno.EIO, errno.EBADFD):
                        break
                    raise
                if loss > 0 and rng.random() < loss:
                    d.dropped += 1
                    continue
                if d.queued_bytes + len(packet) > _MAX_QUEUED:
                    d.dropped += 1
                    continue
                now = time.monotonic()
                send_at = now
                if rate_bps is not None:
                    d.link_free_at = max(now, d.link_free_at) + len(packet) * 8 / rate_bps
                    send_at = d.link_free_at
                d.queue.append((send_at + delay, packet))
                d.queued_bytes += len(packet)
        now = time.monotonic()
        for d in dirs.values():
            while d.queue and d.queue[0][0] <= now:
                _, packet = d.queue.popleft()
                d.queued_bytes -= len(packet)
                with contextlib.suppress(OSError):  # receiving end down: the packet is lost
                    os.write(d.dst, packet)


def _main(argv: Sequence[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="netlab.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    emu = sub.add_parser("emulate", help="run a link emulator between two new TUN devices")
    emu.add_argument("--dev-a", required=True)
    emu.add_argument("--dev-b", required=True)
    emu.add_argument("--delay-ms", type=float, default=0.0)
    emu.add_argument("--loss-pct", type=float, default=0.0)
    emu.add_argument("--rate-mbit", type=float, default=None)
    emu.add_argument("--seed", type=int, default=0)
    emu.add_argument("--tap", action="store_true", help="Ethernet (TAP) instead of IP (TUN)")
    client = sub.add_parser("perf-client", help="one perf run with chosen Yamux settings")
    client.add_argument("target")
    client.add_argument("--download", type=int, required=True)
    client.add_argument("--upload", type=int, default=0)
    client.add_argument("--max-window", type=int, default=None)
    client.add_argument("--keepalive", type=float, default=None)
    pings = sub.add_parser("pinger", help="ping a peer periodically, one JSON line per try")
    pings.add_argument("target")
    pings.add_argument("--interval", type=float, default=0.2)
    pings.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args(list(argv))
    if args.cmd == "pinger":
        import asyncio

        asyncio.run(_pinger(args.target, args.interval, args.duration))
        return
    if args.cmd == "perf-client":
        sys.exit(
            _run_perf_client(
                args.target, args.upload, args.download, args.max_window, args.keepalive
            )
        )
    rate = args.rate_mbit * 1e6 if args.rate_mbit is not None else None
    _emulate(
        args.dev_a,
        args.dev_b,
        delay=args.delay_ms / 1000,
        loss=args.loss_pct / 100,
        rate_bps=rate,
        seed=args.seed,
        tap=args.tap,
    )


if __name__ == "__main__":
    _main(sys.argv[1:])

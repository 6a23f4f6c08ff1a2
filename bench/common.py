"""Shared helpers for the benchmarks in ``bench/``: statistics, tables, subprocess peers.

Every benchmark runs its anchors side by side in the same run and prints ratios, because on a
shared machine only a ratio measured in one run means something. The helpers here keep the
scripts short and alike:

- ``median`` / ``percentile`` / ``fmt_ratio``: the figures;
- ``print_table``: one table per benchmark (rich when installed, plain text otherwise);
- ``ServerProcess``: a child process (usually the same script with ``--serve ...``) that prints
  one ready line (its address), then answers line commands on stdin and exits when stdin
  closes; always killed on the way out;
- ``run``: ``asyncio.run`` on uvloop when it is installed (what ``peerstack.net`` uses);
- ``bench_limits``: host limits raised far enough that a benchmark never hits them;
- ``raise_fd_limit``: RLIMIT_NOFILE up to the hard limit;
- ``load_interop_harness``: ``tests/interop/harness.py`` (the js-libp2p / py-libp2p peers).

Run on its own it prints a self-check table, so ``make bench`` (which runs every script here)
passes over it quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, TypeVar

from peerstack.host.limits import Limits
from peerstack.net.tcp import best_event_loop_policy

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
HARNESS_PATH = REPO_ROOT / "tests" / "interop" / "harness.py"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup-interop.sh"
PYTHON = sys.executable

MB = 1_000_000
MIB = 1024 * 1024
GIB = 1024 * MIB


# -- statistics --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values (printed as "-")."""
    if not values:
        return math.nan
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(s)))
    return s[min(rank, len(s)) - 1]


def fmt(value: float, digits: int = 1) -> str:
    """A number with thousands separators, or "-" when it was not measured."""
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def fmt_ratio(num: float, den: float, goal: float | None = None) -> str:
    """``num / den`` as "12.3x", with a pass/miss mark against ``goal`` when given."""
    if math.isnan(num) or math.isnan(den) or den == 0:
        return "-"
    ratio = num / den
    text = f"{ratio:.2f}x"
    if goal is not None:
        text += f" (goal >= {goal:g}x: {'met' if ratio >= goal else 'MISSED'})"
    return text


def goal_mark(value: float, goal: float, *, higher_is_better: bool = True) -> str:
    """Say "met" or "MISSED" (or "-" when not measured)."""
    if math.isnan(value):
        return "-"
    ok = value >= goal if higher_is_better else value <= goal
    return "met" if ok else "MISSED"


# -- output ------------------------------------------------------------------------------------


def print_table(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    notes: Sequence[str] = (),
) -> None:
    """One table: rich when installed, aligned plain text otherwise; notes below it."""
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        _print_plain(title, headers, rows)
    else:
        table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        Console(width=max(100, _plain_width(headers, rows) + 10)).print(table)
    for note in notes:
        print(f"  {note}")
    sys.stdout.flush()


def _plain_width(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    return sum(widths) + 3 * len(widths)


def _print_plain(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    print(title)

    def line(cells: Sequence[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  " + "   ".join(out)

    print(line(headers))
    print("  " + "-" * (sum(widths) + 3 * (len(widths) - 1)))
    for row in rows:
        print(line(row))


def status(message: str) -> None:
    """Progress on stderr, so stdout holds only the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- event loop, limits ------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when installed (the loop ``peerstack.net`` is tuned for)."""
    asyncio.set_event_loop_policy(best_event_loop_policy())
    return asyncio.run(coro)


def loop_name() -> str:
    """Which loop ``run`` uses: "uvloop" or "asyncio"."""
    return "uvloop" if "uvloop" in type(best_event_loop_policy()).__module__ else "asyncio"


def bench_limits(connections: int = 20_000) -> Limits:
    """Host limits that a benchmark never reaches (and no trimming, no idle closing)."""
    return Limits(
        max_inbound_connections=connections,
        max_outbound_connections=connections,
        max_connections_per_ip=connections,
        max_pending_handshakes=connections,
        high_water=connections,
        low_water=connections,
        idle_timeout=24 * 3600.0,
        trim_interval=3600.0,
        handshake_timeout=120.0,
        dial_timeout=60.0,
    )


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def self_cpu_seconds() -> float:
    """User + system CPU time this process has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (Linux /proc); NaN where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by this process and one child between ``start()`` and ``stop()``."""

    def __init__(self, child_pid: int) -> None:
        self.child_pid = child_pid
        self.own = self.child = math.nan
        self._own0 = self._child0 = 0.0

    def start(self) -> None:
        self._own0 = self_cpu_seconds()
        self._child0 = proc_cpu_seconds(self.child_pid)

    def stop(self) -> None:
        self.own = self_cpu_seconds() - self._own0
        self.child = proc_cpu_seconds(self.child_pid) - self._child0


# -- child processes ---------------------------------------------------------------------------


class ServerProcess:
    """A benchmark's child process: one ready line on stdout, then line commands on stdin.

    Closing stdin asks it to exit; ``close()`` waits a little, then kills it. Use it as a
    context manager so no child outlives the benchmark, whatever happens.
    """

    def __init__(self, argv: Sequence[str], *, ready_timeout: float = 60.0) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.ready = self.readline(ready_timeout)

    def readline(self, timeout: float = 600.0) -> str:
        """The child's next stdout line (stripped); raises if it exits or stays silent."""
        assert self.proc.stdout is not None
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError(f"{self.argv[1:3]}: no output within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=10)
            raise RuntimeError(f"{self.argv[1:3]} exited with {code} before answering")
        return line.strip()

    def send(self, command: str) -> None:
        """Send one command line without waiting for its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def read_json(self, timeout: float = 600.0) -> dict[str, Any]:
        """The child's next line, which must be a JSON object."""
        answer = json.loads(self.readline(timeout))
        if not isinstance(answer, dict):
            raise RuntimeError(f"unexpected answer {answer!r}")
        return answer

    def request(self, command: str, timeout: float = 600.0) -> dict[str, Any]:
        """Send one command line; the child answers one JSON line."""
        self.send(command)
        return self.read_json(timeout)

    def close(self, timeout: float = 15.0) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self.proc.poll() is None:
            self.proc.kill()
        self.close()


async def stdin_lines() -> Any:
    """In a child: yield each stdin line (stripped) until the parent closes stdin."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield line.strip()


async def wait_stdin_closed() -> None:
    """In a child: return when the parent closes our stdin (the signal to exit)."""
    async for _ in stdin_lines():
        pass


def answer(obj: dict[str, Any]) -> None:
    """In a child: one JSON line on stdout."""
    print(json.dumps(obj), flush=True)


# -- placement ---------------------------------------------------------------------------------


class Placement:
    """Where a benchmark's processes may run: the scheduler's choice, or all on one CPU.

    On some VMs waking a process on the other vCPU is slow (an inter-processor interrupt to a
    halted guest CPU): latency benchmarks report both placements, each table naming its own."""

    def __init__(self, cpus: set[int], pinned: bool) -> None:
        self.cpus = cpus
        self.pinned = pinned
        # Children whose affinity was checked, and any that did not match.
        self.checked: list[str] = []
        self.mismatched: list[str] = []

    @property
    def label(self) -> str:
        cpus = ",".join(str(c) for c in sorted(self.cpus))
        if self.pinned:
            return f"same CPU: every process pinned to CPU {cpus}"
        return f"unpinned: processes free on CPUs {cpus}"

    @property
    def short(self) -> str:
        return "same CPU" if self.pinned else "unpinned"

    def apply(self) -> None:
        """Set this process's affinity; the processes it starts from now on inherit it."""
        os.sched_setaffinity(0, self.cpus)

    def check(self, name: str, pid: int) -> None:
        """Record whether every thread of a child runs where this placement says (they
        inherit the mask unless something changed it)."""
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            return  # already gone
        strays: set[int] = set()
        for tid in tids:
            try:
                strays |= os.sched_getaffinity(tid) - self.cpus
            except OSError:
                continue  # the thread ended meanwhile
        self.checked.append(name)
        if strays:
            self.mismatched.append(f"{name} also on CPUs {sorted(strays)}")

    def note(self) -> str:
        if self.mismatched:
            return "placement NOT as asked: " + ", ".join(self.mismatched)
        if not self.checked:
            return f"placement: {self.label}"
        return f"placement: {self.label} (checked: {', '.join(self.checked)})"


def add_same_cpu_option(parser: argparse.ArgumentParser) -> None:
    """``--same-cpu [CPU]``: pin every process of the run to one CPU."""
    parser.add_argument(
        "--same-cpu",
        type=int,
        nargs="?",
        const=-1,
        default=None,
        metavar="CPU",
        help="pin every process of the run to one CPU (default: the first allowed one)",
    )


def placements(
    parser: argparse.ArgumentParser, same_cpu: int | None, mode: str | None = None
) -> list[Placement]:
    """The placements to measure: ``mode`` is unpinned, same-cpu or both; None follows
    ``--same-cpu`` (given: same-cpu). A CPU this process may not run on is a usage error."""
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed) if same_cpu is None or same_cpu == -1 else same_cpu
    if cpu not in allowed:
        parser.error(f"CPU {cpu} is not one this process may run on ({sorted(allowed)})")
    mode = mode or ("same-cpu" if same_cpu is not None else "unpinned")
    found: list[Placement] = []
    if mode in ("unpinned", "both"):
        found.append(Placement(set(allowed), pinned=False))
    if mode in ("same-cpu", "both"):
        found.append(Placement({cpu}, pinned=True))
    return found


# -- third-party peers -------------------------------------------------------------------------


def load_interop_harness() -> tuple[ModuleType | None, str]:
    """The interop harness module, or ``None`` and why it cannot be used."""
    if not HARNESS_PATH.exists():
        return None, f"{HARNESS_PATH.relative_to(REPO_ROOT)} is missing"
    spec = importlib.util.spec_from_file_location("peerstack_bench_harness", HARNESS_PATH)
    if spec is None or spec.loader is None:
        return None, f"cannot load {HARNESS_PATH}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module, ""


def ensure_interop(harness: ModuleType, kind_name: str, *, setup: bool) -> str:
    """Why peers of this kind ("JS" or "PY") cannot run ("" when they can).

    With ``setup`` the installer (``scripts/setup-interop.sh``, idempotent) is run once when
    something is missing.
    """
    kind = harness.PeerKind[kind_name]
    reason: str | None = harness.missing_setup(kind)
    if reason is None or not setup or not SETUP_SCRIPT.exists():
        return reason or ""
    status(f"{kind_name} peers missing; running {SETUP_SCRIPT.name} (this can take minutes)")
    done = subprocess.run(["bash", str(SETUP_SCRIPT)], check=False, timeout=900)
    if done.returncode != 0:
        return f"{SETUP_SCRIPT.name} failed with exit code {done.returncode}"
    reason = harness.missing_setup(kind)
    return reason or ""


def main() -> None:
    """Self-check of the helpers (``make bench`` runs every script in bench/)."""
    values = [3.0, 1.0, 2.0, 5.0, 4.0]
    print_table(
        "bench/common.py self-check",
        ["what", "value"],
        [
            ["median of 1..5", fmt(median(values))],
            ["p90 of 1..5", fmt(percentile(values, 90))],
            ["ratio 5 / 2", fmt_ratio(5.0, 2.0, goal=2.0)],
            ["event loop", loop_name()],
            ["fd limit (soft, raised)", str(raise_fd_limit())],
        ],
    )


if __name__ == "__main__":
    main()

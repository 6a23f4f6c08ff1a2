"""Share a 1 GiB file on loopback: 1 seeder -> 1 leecher, 4 -> 1, and both with capped uploads.

Every seeder and leecher is its own process; only 127.0.0.1. In the same run, side by side:

- peerstack: ``BasicHost`` (TCP + Noise + Yamux) + ``Blockstore`` + ``Bitswap``; the seeders serve
  one blockstore imported once (default profile: CIDv1, raw leaves, 1 MiB chunks), the leecher
  calls ``Bitswap.get_file`` (each block verified, stored, and written into the output at its
  offset as it arrives; the output renamed into place when complete);
- libtorrent 2.x over TCP (``bench/share_anchor_libtorrent.py`` in ``.venv-libtorrent``);
- helia -> helia over TCP (``bench/share_anchor_helia.mjs`` with Node 22 from tests/interop/js).

Time is measured inside the leecher, from just before it dials the seeders to the download
complete: the output file whole on disk, every block (piece) verified on the way by the
implementation itself against its CID (torrent). That is the wait a user has, and the goal's
figure. Then the bench reads the file back and compares its sha256 with the source's: a
mismatch fails the run. That re-read is timed too, and reported beside ("+ re-read": about
0.7 s a GiB here, whichever implementation wrote the file). MB/s = 10^6 bytes/s.
Seeders are started and loaded (import, torrent check) before any timing, once per
implementation and cap: 1 -> 1 connects to the first of the 4 seeders. The runs of 1 -> 1 and
4 -> 1, and of peerstack and libtorrent, interleave (see ``Driver.run_cells``), after one
uncounted warm-up run of each (``--warmup``); helia's runs follow on their own. Every run
starts a fresh leecher with an empty store. Medians over ``--runs``.

Upload caps: libtorrent has ``upload_rate_limit``; peerstack's seeders use Bitswap's own
``upload_rate`` (``--ps-cap knob``, the default; ``--ps-cap emulate`` is the older bench-side
stand-in: the seeder's blockstore reads pass through a token bucket at the cap). helia has no
upload cap: its capped cells say so.

    python bench/share_1gib.py [--runs 3] [--mib 1024] [--cap-mbps 20] [--only peerstack,...]

Set-up for the anchors: ``bash scripts/setup-bench-share.sh`` (run here when something is missing).
The peer roles are this same script: ``--role ps-import|ps-seed|ps-leech`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from peerstack.allocator import tune_for_bulk_transfers
from peerstack.content.bitswap.progress import Progress
from peerstack.content.bitswap.service import Bitswap, BitswapConfig
from peerstack.content.blockstore import Blockstore, FsyncPolicy
from peerstack.content.importer import import_path
from peerstack.core.cid import CID
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.host.host import BasicHost

# Run as a script, this file's folder (not the repository) is on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    MB,
    MIB,
    PYTHON,
    REPO_ROOT,
    ServerProcess,
    answer,
    fmt,
    fmt_ratio,
    goal_mark,
    loop_name,
    median,
    print_table,
    run,
    status,
    stdin_lines,
)

BENCH_DIR = Path(__file__).resolve().parent
LT_PYTHON = REPO_ROOT / ".venv-libtorrent" / "bin" / "python"
LT_SCRIPT = BENCH_DIR / "share_anchor_libtorrent.py"
JS_DIR = REPO_ROOT / "tests" / "interop" / "js"
NODE = JS_DIR / "node_modules" / ".bin" / "node"
HELIA_SCRIPT = BENCH_DIR / "share_anchor_helia.mjs"
SETUP = REPO_ROOT / "scripts" / "setup-bench-share.sh"

IMPLS = ("peerstack", "libtorrent", "helia")
READ_CHUNK = 4 * MIB
SOURCE_SEED = b"peerstack bench/share_1gib.py"

# Goals from the issue.
GOAL_ONE_SEEDER_MBPS = 600.0
GOAL_CAPPED_SPEEDUP = 3.6


# -- the peerstack peers (child processes) -----------------------------------------------------


class SeedBlockstore(Blockstore):
    """A seeder's blockstore, its ``get`` optionally capped.

    With ``rate`` > 0 (``--ps-cap emulate``), reads pass through a token bucket at ``rate``
    bytes/s (a burst of 0.1 s), which bounds what the server can send: the stand-in used before
    Bitswap had ``upload_rate``. (What a seeder uploaded is Bitswap's own total,
    ``engine.bytes_sent``, whichever way the server reads its blocks.)
    """

    BURST_SECONDS = 0.1

    def __init__(self, root: Path, rate: float) -> None:
        super().__init__(root, FsyncPolicy.NEVER)
        self.rate = rate
        self._next = 0.0  # loop time at which the bucket is full again
        self._bucket_lock = asyncio.Lock()

    async def get(self, cid: CID) -> bytes:
        data = await super().get(cid)
        if self.rate <= 0:
            return data
        async with self._bucket_lock:
            now = asyncio.get_running_loop().time()
            self._next = max(now, self._next) + len(data) / self.rate
            delay = self._next - now - self.BURST_SECONDS
        if delay > 0:
            await asyncio.sleep(delay)
        return data

    def read_cached(self, cid: CID) -> bytes | None:
        """Capped, no block may skip ``get``'s bucket: a server that reads blocks the page
        cache holds on its event loop (``Blockstore.read_cached``, where the store has it) is
        told none is cached. Uncapped, the store's own answer."""
        if self.rate > 0:
            return None
        own: Callable[[CID], bytes | None] | None = getattr(super(), "read_cached", None)
        return own(cid) if own is not None else None


async def ps_import(src: Path, repo: Path) -> None:
    with Blockstore(repo, FsyncPolicy.NEVER) as store:
        t0 = time.perf_counter()
        result = await import_path(store, src)
        answer({"cid": str(result.cid), "seconds": time.perf_counter() - t0})


async def ps_seed(repo: Path, upload_cap: float, how: str) -> None:
    """Serve ``repo`` over Bitswap; answer ``stats`` lines until stdin closes.

    ``upload_cap`` (bytes/s, 0 = none) is Bitswap's ``upload_rate`` when ``how`` is "knob", the
    bench-side stand-in when it is "emulate"."""
    store = SeedBlockstore(repo, upload_cap if how == "emulate" else 0.0)
    rate = upload_cap if how == "knob" and upload_cap > 0 else None
    host = BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    await host.start()
    try:
        async with Bitswap(host, store, upload_rate=rate) as bitswap:
            addr = host.listen_addrs()[0].encapsulate(Multiaddr(f"/p2p/{host.peer_id}"))
            answer({"addr": str(addr)})
            async for _line in stdin_lines():
                answer({"uploaded": bitswap.engine.bytes_sent,
                        "peers": len(bitswap.engine.ledgers), "cpu": time.process_time(),
                        "cpu_loop": time.thread_time(), **_rusage()})
    finally:
        await host.close()
        store.close()


def _rusage() -> dict[str, int]:
    """This process's page faults and context switches so far (all its threads).

    On a shared machine CPU time swings with the load; these counts barely do, and they show
    thread hand-offs (a context switch each way) and freshly mapped buffers (a fault per page).
    """
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"faults": ru.ru_minflt + ru.ru_majflt, "switches": ru.ru_nvcsw + ru.ru_nivcsw}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


async def ps_leech(
    cid_text: str, repo: Path, out: Path, peers: Sequence[str], expect: str, *, direct_io: bool,
    output_io: str,
) -> dict[str, Any]:
    """Fetch the file from ``peers``; the timings, measured here, as a dict."""
    cid = CID.parse(cid_text)
    store = Blockstore(repo, FsyncPolicy.NEVER, direct_io=direct_io)
    host = BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    await host.start()
    fetched_at: list[float] = []

    def on_progress(p: Progress) -> None:
        if p.done and not fetched_at:
            fetched_at.append(time.perf_counter())

    try:
        config = BitswapConfig(get_direct_io=output_io == "direct")
        async with Bitswap(host, store, config=config) as bitswap:
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            loop_cpu0 = time.thread_time()
            usage0 = _rusage()
            for text in peers:
                bare, pid = Multiaddr(text).decapsulate_p2p()
                assert pid is not None
                await host.connect(PeerId.from_string(pid), [bare])
            t_connected = time.perf_counter()
            result = await bitswap.get_file(cid, out, on_progress)
            t_disk = time.perf_counter()
            cpu = time.process_time() - cpu0
            loop_cpu = time.thread_time() - loop_cpu0
            usage = {k: v - usage0[k] for k, v in _rusage().items()}
            digest = await asyncio.to_thread(sha256_file, out)
            t_verified = time.perf_counter()
    finally:
        await host.close()
        store.close()
    return {
        "ok": digest == expect,
        "sha256": digest,
        "bytes": await asyncio.to_thread(lambda: out.stat().st_size),
        "blocks": result.blocks,
        "cpu": cpu,
        "cpu_loop": loop_cpu,
        **usage,
        "seconds_connect": t_connected - t0,
        "seconds_fetched": (fetched_at[0] if fetched_at else t_disk) - t0,
        "seconds_on_disk": t_disk - t0,
        "seconds_verified": t_verified - t0,
    }


def child_main(args: argparse.Namespace) -> None:
    """The ``--role`` entry points (run in their own processes by the driver)."""
    if args.ps_malloc == "tuned":
        tune_for_bulk_transfers()  # as the peerstack command does at start
    if args.role == "ps-import":
        run(ps_import(args.src, args.repo))
    elif args.role == "ps-seed":
        if args.profile:
            profiler = cProfile.Profile(time.thread_time)
            profiler.runcall(run, ps_seed(args.repo, args.upload_cap, args.ps_cap))
            profiler.dump_stats(args.profile)
        else:
            run(ps_seed(args.repo, args.upload_cap, args.ps_cap))
    else:
        out: dict[str, Any] = {}

        async def leech() -> None:
            out.update(await ps_leech(args.cid, args.repo, args.out, args.peer, args.expect,
                                      direct_io=args.ps_direct_io == "on",
                                      output_io=args.ps_output_io))

        if args.profile:
            profiler = cProfile.Profile(time.thread_time)  # the event loop's own CPU time
            profiler.runcall(run, leech())
            profiler.dump_stats(args.profile)
        else:
            run(leech())
        answer(out)


# -- the driver --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    seeders: int
    cap: int  # bytes/s per seeder, 0 = none


@dataclass(slots=True)
class Cell:
    """One implementation in one scenario: the runs' figures, or why it did not run."""

    mbps: list[float] = field(default_factory=list)  # to the download complete (see the header)
    mbps_reread: list[float] = field(default_factory=list)  # and the bench's sha256 re-read
    run_nos: list[int] = field(default_factory=list)  # which run each figure is from
    shares: list[list[float]] = field(default_factory=list)  # per run: each seeder's share
    skipped: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.mbps)

    def text(self) -> str:
        if self.skipped:
            return f"not run: {self.skipped}"
        if not self.mbps:
            return "failed: " + "; ".join(self.failures[:1])
        spread = f" ({min(self.mbps):,.0f}-{max(self.mbps):,.0f})" if len(self.mbps) > 1 else ""
        return fmt(self.median) + spread


class Seeder(ServerProcess):
    """A seeder process whose ready line is read later, so several can load at once."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.ready = ""


class Workspace:
    """The scratch directory: the source file, its digest, the imported repo, the torrent."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.size = size
        self.src = root / "src" / "share.bin"
        self.sha256 = ""
        self.ps_repo = root / "ps-seed-repo"
        self.ps_cid = ""
        self.torrent = root / "share.torrent"
        self.torrent_info: dict[str, Any] = {}

    def create_source(self) -> None:
        """Pseudo-random bytes (incompressible, no two blocks alike), the same in every run.

        A ChaCha20 key stream (``cryptography``, GB/s) over zeros: deterministic and fast.
        """
        self.src.parent.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(SOURCE_SEED).digest()
        stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        zeros = bytes(READ_CHUNK)
        h = hashlib.sha256()
        with self.src.open("wb") as fh:
            left = self.size
            while left > 0:
                piece = stream.update(zeros[: min(left, READ_CHUNK)])
                fh.write(piece)
                h.update(piece)
                left -= len(piece)
        self.sha256 = h.hexdigest()


def _mbps(size: int, seconds: float) -> float:
    return size / seconds / MB if seconds > 0 else math.nan


def _shares(before: list[int], after: list[int]) -> list[float]:
    sent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(sent)
    return [s / total for s in sent] if total else []


def _run_order(impls: list[str], group: list[Scenario], run_no: int) -> list[tuple[str, Scenario]]:
    """The cells of run ``run_no``, in the order they run.

    The implementations swap every run and the scenarios every second run (ps 1, ps N, lt 1,
    lt N; lt 1, lt N, ps 1, ps N; ps N, ps 1, lt N, lt 1; lt N, lt 1, ps N, ps 1). Over four
    runs every cell has each place once, so the machine's drift within a run evens out, and
    each cell follows the other implementation's runs once: on the bench VM a run right after
    another implementation's often found its output's pages taken back by the host (see
    run_cells' warm-up), and with plain alternation that fell on N -> 1 every time.
    """
    impl_order = impls if run_no % 2 == 0 else impls[::-1]
    sc_order = group if (run_no // 2) % 2 == 0 else group[::-1]
    return [(impl, sc) for impl in impl_order for sc in sc_order]


class Driver:
    def __init__(self, args: argparse.Namespace, ws: Workspace) -> None:
        self.args = args
        self.ws = ws
        self.leech_dir = ws.root / "leech"
        self._seeders_started = 0
        self._seed_cpu = 0.0
        self._seed_cpu_loop = 0.0  # of _seed_cpu, the seeders' event loops
        self._seed_usage = {"faults": 0, "switches": 0}

    # -- preparation, once per run of the bench --

    def prepare_peerstack(self) -> str:
        status("peerstack: importing the file into the seeders' blockstore")
        done = subprocess.run(
            [PYTHON, __file__, "--role", "ps-import", "--src", str(self.ws.src),
             "--repo", str(self.ws.ps_repo)],
            capture_output=True, text=True, timeout=1800, check=False,
        )
        if done.returncode != 0:
            return f"import failed: {done.stderr.strip().splitlines()[-1:]}"
        info = json.loads(done.stdout.strip().splitlines()[-1])
        self.ws.ps_cid = info["cid"]
        status(f"peerstack: {self.ws.ps_cid} imported in {info['seconds']:.1f} s")
        return ""

    def prepare_libtorrent(self) -> str:
        if not LT_PYTHON.exists():
            return f"{LT_PYTHON.relative_to(REPO_ROOT)} missing (scripts/setup-bench-share.sh)"
        status("libtorrent: creating the torrent")
        done = subprocess.run(
            [str(LT_PYTHON), str(LT_SCRIPT), "make-torrent", "--src", str(self.ws.src),
             "--out", str(self.ws.torrent), "--format", self.args.torrent_format],
            capture_output=True, text=True, timeout=1800, check=False,
        )
        if done.returncode != 0:
            return f"make-torrent failed: {done.stderr.strip().splitlines()[-1:]}"
        self.ws.torrent_info = json.loads(done.stdout.strip().splitlines()[-1])
        return ""

    def prepare_helia(self) -> str:
        if not NODE.exists() or not (JS_DIR / "node_modules" / "helia").exists():
            return "tests/interop/js/node_modules missing (scripts/setup-interop.sh)"
        return ""

    # -- seeders and leechers per implementation --

    def seeder_argv(self, impl: str, cap: int) -> list[str]:
        if impl == "peerstack":
            argv = [PYTHON, __file__, "--role", "ps-seed", "--repo", str(self.ws.ps_repo),
                    "--upload-cap", str(cap), "--ps-cap", self.args.ps_cap,
                    "--ps-malloc", self.args.ps_malloc]
            if self.args.seed_profile:
                self._seeders_started += 1
                argv += ["--profile", f"{self.args.seed_profile}.{self._seeders_started}.prof"]
            return argv
        if impl == "libtorrent":
            return [str(LT_PYTHON), str(LT_SCRIPT), "seed", "--torrent", str(self.ws.torrent),
                    "--dir", str(self.ws.src.parent), "--upload-cap", str(cap)]
        return [str(NODE), str(HELIA_SCRIPT), "seed", "--js-dir", str(JS_DIR),
                "--src", str(self.ws.src)]

    def leecher_argv(
        self, impl: str, sc: Scenario, seeders: list[dict[str, Any]], run_no: int
    ) -> list[str]:
        out = self.leech_dir / "out.bin"
        if impl == "peerstack":
            argv = [PYTHON, __file__, "--role", "ps-leech", "--cid", self.ws.ps_cid,
                    "--repo", str(self.leech_dir / "repo"), "--out", str(out),
                    "--expect", self.ws.sha256, "--ps-direct-io", self.args.ps_direct_io,
                    "--ps-output-io", self.args.ps_output_io,
                    "--ps-malloc", self.args.ps_malloc]
            if run_no < 0:  # the extra, uncounted run under cProfile
                tag = f"{sc.seeders}seed" + ("-capped" if sc.cap else "")
                argv += ["--profile", f"{self.args.profile}.{tag}.prof"]
            for s in seeders:
                argv += ["--peer", s["addr"]]
            return argv
        if impl == "libtorrent":
            argv = [str(LT_PYTHON), str(LT_SCRIPT), "leech", "--torrent", str(self.ws.torrent),
                    "--out-dir", str(self.leech_dir), "--expect-sha256", self.ws.sha256]
            for s in seeders:
                argv += ["--peer", f"127.0.0.1:{s['port']}"]
            return argv
        argv = [str(NODE), str(HELIA_SCRIPT), "leech", "--js-dir", str(JS_DIR),
                "--cid", seeders[0]["cid"], "--out", str(out), "--expect-sha256", self.ws.sha256]
        if self.args.helia_concurrency > 0:
            argv += ["--block-read-concurrency", str(self.args.helia_concurrency)]
        argv += ["--window-mib", str(self.args.helia_window_mib)]
        for s in seeders:
            argv += ["--peer", s["addr"]]
        return argv

    def run_cells(self, impls: list[str], group: list[Scenario]) -> dict[tuple[str, str], Cell]:
        """The scenarios of ``group`` (one cap: 1 -> 1 and N -> 1) for each implementation of
        ``impls``, each on one set of N seeders, all sets up at once.

        A 1 -> 1 run connects to the first seeder only (the others idle: none of the three
        implementations discovers peers by itself here). The runs interleave: run k of every
        implementation and scenario before run k + 1 of any (order: ``_run_order``). Run one
        after the other, the later cells were the warmer: the machine's speed drifts by a
        third within a minute (see the warm-up below), and both the N -> 1 / 1 -> 1 and the
        implementations' ratios leaned with it. An implementation that fails is dropped from
        the rotation; the rest go on.
        """
        cells = {(impl, sc.name): Cell() for impl in impls for sc in group}
        live: list[str] = []
        for impl in impls:
            if group[0].cap and impl == "helia":
                for sc in group:
                    cells[(impl, sc.name)].skipped = "helia has no upload rate limit"
            else:
                live.append(impl)
        runs = {impl: self.args.capped_runs if group[0].cap else self.args.runs for impl in live}
        if "helia" in runs and self.args.helia_runs > 0:
            runs["helia"] = self.args.helia_runs
        count = max(sc.seeders for sc in group)
        names = " and ".join(sc.name for sc in group)
        seeders: dict[str, list[Seeder]] = {}
        infos: dict[str, list[dict[str, Any]]] = {}

        def failed(impl: str, exc: BaseException) -> None:
            for sc in group:
                cells[(impl, sc.name)].failures.append(f"{type(exc).__name__}: {exc}")
            status(f"{impl} {names}: {exc}")
            live.remove(impl)

        try:
            # Seeders load the file (helia imports it, libtorrent checks it): all at once.
            for impl in list(live):
                status(f"{impl} {names}: starting {count} seeder(s)")
                seeders[impl] = []  # filled one by one: those started are stopped below
                try:
                    for _ in range(count):
                        seeders[impl].append(Seeder(self.seeder_argv(impl, group[0].cap)))
                except OSError as exc:
                    failed(impl, exc)
            for impl in list(live):
                try:
                    infos[impl] = [json.loads(p.readline(900)) for p in seeders[impl]]
                except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                    failed(impl, exc)
                    continue
                if impl == "helia" and self.ws.ps_cid and infos[impl][0]["cid"] != self.ws.ps_cid:
                    status(f"note: helia's CID {infos[impl][0]['cid']} differs from peerstack's")

            def one(impl: str, sc: Scenario, run_no: int, counted: bool = True) -> None:
                if impl not in live:
                    return
                try:
                    self._one_run(impl, sc, seeders[impl][: sc.seeders], infos[impl][: sc.seeders],
                                  run_no=run_no, cell=cells[(impl, sc.name)], counted=counted)
                except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                    failed(impl, exc)

            # Uncapped, --warmup runs of every implementation come first and are left out: on
            # the bench VM a run whose output lands in page-cache pages the host has taken
            # back (the first ones after the source file's gigabyte, or after an idle spell)
            # pays up to 2 ms/MiB more for its writes, whichever implementation runs. Capped
            # runs move 20 MB/s: the pages' cost is lost in the wait.
            # In the reverse of run 1's order: its first cell follows its own warm-up.
            order = list(live)  # the rotation; an implementation that fails is skipped in it
            for _ in range(0 if group[0].cap else self.args.warmup):
                for impl, sc in _run_order(order, group, 0)[::-1]:
                    one(impl, sc, 0, counted=False)
            # With --profile, peerstack gets one extra run under cProfile, left out of the figures.
            if self.args.profile and "peerstack" in live:
                for sc in group:
                    one("peerstack", sc, -1)
            for run_no in range(max(runs.values(), default=0)):
                for impl, sc in _run_order(order, group, run_no):
                    if run_no < runs[impl]:
                        one(impl, sc, run_no)
        finally:
            for procs in seeders.values():
                for proc in procs:
                    if proc.proc.poll() is None:
                        proc.close(timeout=20)
        return cells

    def _uploaded(self, impl: str, seeders: list[Seeder]) -> list[int]:
        if impl == "helia":
            return []
        stats = [s.request("stats", timeout=60) for s in seeders]
        self._seed_cpu = sum(float(st.get("cpu", 0.0)) for st in stats)
        self._seed_cpu_loop = sum(float(st.get("cpu_loop", 0.0)) for st in stats)
        self._seed_usage = {k: sum(int(st.get(k, 0)) for st in stats) for k in self._seed_usage}
        return [int(st["uploaded"]) for st in stats]

    def _one_run(
        self, impl: str, sc: Scenario, seeders: list[Seeder], infos: list[dict[str, Any]], *,
        run_no: int, cell: Cell, counted: bool = True,
    ) -> None:
        label = (
            "warm-up run (not counted)" if not counted
            else f"run {run_no + 1}" if run_no >= 0 else "profiled run (not counted)"
        )
        shutil.rmtree(self.leech_dir, ignore_errors=True)
        self.leech_dir.mkdir(parents=True)
        # Untimed: the previous run's gigabyte (or the import's) is written back before this
        # run starts, so no run pays for another's write-back.
        os.sync()
        before = self._uploaded(impl, seeders)
        cpu_before, loop_before = self._seed_cpu, self._seed_cpu_loop
        usage_before = dict(self._seed_usage)
        done = subprocess.run(
            self.leecher_argv(impl, sc, infos, run_no), capture_output=True, text=True,
            timeout=self.args.timeout, check=False,
        )
        after = self._uploaded(impl, seeders)
        seed_cpu = self._seed_cpu - cpu_before
        seed_loop = self._seed_cpu_loop - loop_before
        seed_usage = {k: v - usage_before[k] for k, v in self._seed_usage.items()}
        shutil.rmtree(self.leech_dir, ignore_errors=True)  # 1 GiB out, and the leecher's store
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = done.stderr.strip().splitlines()[-3:]
            cell.failures.append(f"exit {done.returncode}: {' | '.join(tail)}")
            status(f"{impl} {sc.name} {label}: FAILED {tail}")
            return
        res = json.loads(lines[-1])
        if not res.get("ok") or res.get("bytes") != self.ws.size:
            cell.failures.append(f"sha256 mismatch ({res.get('bytes')} bytes)")
            status(f"{impl} {sc.name} {label}: output does NOT match the source")
            return
        mbps = _mbps(self.ws.size, res["seconds_on_disk"])
        extra = ", ".join(
            f"{k[8:]} {v:.2f} s" for k, v in res.items() if k.startswith("seconds_")
        )
        if "cpu" in res:  # peerstack: CPU per MiB moved at both ends (not the sha256 check)
            mibs = self.ws.size / MIB
            loop = res.get("cpu_loop", 0.0)
            extra += (f"; CPU ms/MiB: leecher {res['cpu'] * 1000 / mibs:.2f} (event loop "
                      f"{loop * 1000 / mibs:.2f}, threads {(res['cpu'] - loop) * 1000 / mibs:.2f})"
                      f", seeders {seed_cpu * 1000 / mibs:.2f} (event loop "
                      f"{seed_loop * 1000 / mibs:.2f}, threads "
                      f"{(seed_cpu - seed_loop) * 1000 / mibs:.2f}); per MiB, page faults: leecher "
                      f"{res.get('faults', 0) / mibs:.1f}, seeders "
                      f"{seed_usage['faults'] / mibs:.1f}; context switches: leecher "
                      f"{res.get('switches', 0) / mibs:.1f}, seeders "
                      f"{seed_usage['switches'] / mibs:.1f}")
        if before and after:  # more than 1.00x: blocks sent twice (duplicates)
            extra += f"; seeders sent {(sum(after) - sum(before)) / self.ws.size:.2f}x the file"
        reread = _mbps(self.ws.size, res["seconds_verified"])
        status(f"{impl} {sc.name} {label}: {mbps:,.1f} MB/s complete, {reread:,.1f} with the "
               f"sha256 re-read ({extra})")
        if run_no < 0 or not counted:
            return
        cell.mbps.append(mbps)
        cell.mbps_reread.append(reread)
        cell.run_nos.append(run_no)
        if before and after:
            cell.shares.append(_shares(before, after))


def _share_text(cell: Cell) -> str:
    if not cell.shares or len(cell.shares[-1]) < 2:
        return ""
    return "/".join(f"{s * 100:.0f}" for s in cell.shares[-1]) + " %"


def report(cells: dict[tuple[str, str], Cell], scenarios: list[Scenario], args: argparse.Namespace,
           ws: Workspace) -> None:
    impls = args.only
    headers = ["scenario", *[f"{i} MB/s" for i in impls]]
    ratio_cols = [(a, b) for a, b in (("peerstack", "libtorrent"), ("peerstack", "helia"))
                  if a in impls and b in impls]
    short = {"peerstack": "ps", "libtorrent": "lt", "helia": "helia"}
    headers += [f"{short[a]}/{short[b]}" for a, b in ratio_cols]
    headers.append("peerstack goal")
    rows: list[list[str]] = []
    for sc in scenarios:
        row = [sc.name]
        row += [cells[(i, sc.name)].text() for i in impls]
        row += [fmt_ratio(cells[(a, sc.name)].median, cells[(b, sc.name)].median)
                for a, b in ratio_cols]
        row.append(_goal_text(cells, sc, scenarios))
        rows.append(row)
    # the scaling rows: 4 seeders over 1, uncapped and capped
    for one, many, capped in _scaling_pairs(scenarios):
        row = [f"{many.name} / {one.name}"]
        row += [fmt_ratio(cells[(i, many.name)].median, cells[(i, one.name)].median)
                for i in impls]
        row += ["" for _ in ratio_cols]
        goal = GOAL_CAPPED_SPEEDUP if capped else 1.0
        ps = "peerstack" in impls
        value = (cells[("peerstack", many.name)].median / cells[("peerstack", one.name)].median
                 if ps else math.nan)
        row.append(f">= {goal:g}x: {goal_mark(value, goal)}" if ps else "")
        rows.append(row)
    notes = [
        f"{ws.size / MIB:,.0f} MiB file, sha256 {ws.sha256[:16]}...; medians of {args.runs} runs "
        f"({args.capped_runs} capped), (min-max), after {args.warmup} uncounted warm-up run(s) "
        "per uncapped cell; MB/s = 10^6 bytes/s, to the download complete: file whole on disk, "
        "every block verified by the implementation (the bench's sha256 check follows)",
        f"peerstack: {loop_name()}, CID {ws.ps_cid}, output written {args.ps_output_io}, "
        f"leecher blockstore direct_io {args.ps_direct_io}, malloc {args.ps_malloc}; capped rows: "
        + ("bench-side token bucket on seeder block reads (--ps-cap emulate)"
           if args.ps_cap == "emulate" else
           "Bitswap(upload_rate=cap) on each seeder" if args.ps_cap == "knob" else "not run"),
        f"libtorrent: TCP only, torrent {ws.torrent_info}; capped: upload_rate_limit",
        "helia: light helia, TCP + Noise + Yamux, in-memory blockstores, "
        + (f"cat in consecutive {args.helia_window_mib} MiB ranges" if args.helia_window_mib > 0
           else "one cat of the whole file")
        + ", blockReadConcurrency "
        + (str(args.helia_concurrency) if args.helia_concurrency > 0 else "default")
        + (f", {args.helia_runs} run(s)" if args.helia_runs > 0 else ""),
        "+ re-read (to the bench's sha256 of the file read back, too): " + "; ".join(
            f"{sc.name}: " + ", ".join(
                f"{i} {fmt(median(cells[(i, sc.name)].mbps_reread))}" for i in impls
            ) for sc in scenarios
        ),
        *_paired_notes(cells, scenarios, impls),
        "seeder shares (last run, bytes uploaded): " + "; ".join(
            f"{i} {sc.name}: {_share_text(cells[(i, sc.name)])}"
            for sc in scenarios if sc.seeders > 1 for i in impls if _share_text(cells[(i, sc.name)])
        ),
    ]
    for (impl, name), cell in cells.items():
        if cell.failures:
            notes.append(f"{impl} {name} failures: {'; '.join(cell.failures)}")
    print_table("share a file on loopback: seeders -> 1 leecher, separate processes",
                headers, rows, notes)


def _scaling_pairs(scenarios: list[Scenario]) -> list[tuple[Scenario, Scenario, bool]]:
    """(1 -> 1, N -> 1, capped) for the uncapped and the capped pair, where both ran."""
    pairs = []
    for capped in (False, True):
        one = next((s for s in scenarios if s.seeders == 1 and bool(s.cap) == capped), None)
        many = next((s for s in scenarios if s.seeders > 1 and bool(s.cap) == capped), None)
        if one is not None and many is not None:
            pairs.append((one, many, capped))
    return pairs


def _paired_notes(cells: dict[tuple[str, str], Cell], scenarios: list[Scenario],
                  impls: Sequence[str]) -> list[str]:
    """N -> 1 over 1 -> 1 run by run: the runs of the two alternate (``run_cells``), so run k of
    each was minutes apart at most, and the spread of these ratios shows how much of the ratio
    of the medians is the machine's drift."""
    notes = []
    for one, many, _capped in _scaling_pairs(scenarios):
        parts = []
        for i in impls:
            ones = dict(zip(cells[(i, one.name)].run_nos, cells[(i, one.name)].mbps,
                            strict=True))
            pairs = [m / ones[k] for k, m in zip(cells[(i, many.name)].run_nos,
                                                  cells[(i, many.name)].mbps, strict=True)
                     if ones.get(k, 0) > 0]
            if pairs:
                parts.append(f"{i} median {median(pairs):.2f}x ("
                             + ", ".join(f"{r:.2f}" for r in pairs) + ")")
        if parts:
            notes.append(f"{many.name} / {one.name}, run by run: " + "; ".join(parts))
    return notes


def _goal_text(cells: dict[tuple[str, str], Cell], sc: Scenario, scenarios: list[Scenario]) -> str:
    if ("peerstack", sc.name) not in cells:
        return ""
    value = cells[("peerstack", sc.name)].median
    if sc.cap:
        return ""
    if sc.seeders == 1:
        return f">= {GOAL_ONE_SEEDER_MBPS:g} MB/s: {goal_mark(value, GOAL_ONE_SEEDER_MBPS)}"
    one = next((s for s in scenarios if s.seeders == 1 and not s.cap), None)
    if one is None:
        return ""
    base = cells[("peerstack", one.name)].median
    return f">= 1 seeder ({fmt(base)}): {goal_mark(value, base)}"


def driver_main(args: argparse.Namespace) -> None:
    if args.setup and SETUP.exists() and (not LT_PYTHON.exists() or not NODE.exists()):
        status("running scripts/setup-bench-share.sh")
        subprocess.run(["bash", str(SETUP)], check=False, timeout=1800)
    # Each run its own folder by default: two people running the bench at once must not
    # delete each other's files.
    root = Path(args.workdir or tempfile.mkdtemp(prefix="peerstack-share-bench-"))
    size = args.mib * MIB
    free = shutil.disk_usage(root.parent if not root.exists() else root).free
    need = 4 * size  # source, peerstack's seed repo, leecher store + output
    if free < need:
        sys.exit(f"{free / 2**30:.1f} GiB free under {root.parent}, need about {need / 2**30:.1f}")
    ws = Workspace(root, size)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        status(f"writing the {args.mib} MiB source file")
        ws.create_source()
        cap = int(args.cap_mbps * MB)
        counts = [1] if args.seeders == 1 else [1, args.seeders]
        scenarios = [Scenario(f"{n} -> 1", n, 0) for n in counts]
        if cap:
            scenarios += [Scenario(f"{n} -> 1 capped {args.cap_mbps:g} MB/s", n, cap)
                          for n in counts]
        prepare = {"peerstack": Driver.prepare_peerstack, "libtorrent": Driver.prepare_libtorrent,
                   "helia": Driver.prepare_helia}
        driver = Driver(args, ws)
        cells: dict[tuple[str, str], Cell] = {}
        skip = {impl: prepare[impl](driver) for impl in args.only}
        # Scenarios of one cap share their seeders, and their runs interleave (run_cells).
        groups = [[sc for sc in scenarios if sc.cap == c] for c in dict.fromkeys(
            sc.cap for sc in scenarios)]
        for group in groups:
            ready = []
            for impl in args.only:
                if skip[impl]:
                    cells.update({(impl, sc.name): Cell(skipped=skip[impl]) for sc in group})
                elif group[0].cap and impl == "peerstack" and args.ps_cap == "skip":
                    cells.update({(impl, sc.name): Cell(skipped="--ps-cap skip") for sc in group})
                else:
                    ready.append(impl)
            # peerstack's and libtorrent's runs interleave (run_cells); helia's, a minute or
            # more each at its tens of MB/s, come after on their own.
            for batch in ([i for i in ready if i != "helia"], [i for i in ready if i == "helia"]):
                if batch:
                    cells.update(driver.run_cells(batch, group))
        report(cells, scenarios, args, ws)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--capped-runs", type=int, default=1,
                        help="runs of the capped scenarios (1 GiB at 20 MB/s is ~54 s a run)")
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--seeders", type=int, default=4)
    parser.add_argument("--cap-mbps", type=float, default=20.0,
                        help="per-seeder upload cap for the capped rows, 0 = no capped rows")
    parser.add_argument("--only", type=lambda s: [x for x in s.split(",") if x],
                        default=list(IMPLS), help="comma list of " + ",".join(IMPLS))
    parser.add_argument("--ps-cap", choices=("knob", "emulate", "skip"), default="knob",
                        help="peerstack's capped rows: Bitswap's upload_rate (knob), the older "
                        "bench-side token bucket on block reads (emulate), or not run (skip)")
    parser.add_argument("--ps-malloc", choices=("tuned", "default"), default="tuned",
                        help="peerstack's processes tune glibc malloc as the peerstack command "
                        "does (peerstack.allocator), or keep its defaults")
    parser.add_argument("--ps-direct-io", choices=("on", "off"), default="off",
                        help="the peerstack leecher's Blockstore(direct_io=...): its copy of each "
                        "block written past the page cache (the output file: --ps-output-io)")
    parser.add_argument("--ps-output-io", choices=("direct", "cached"), default="direct",
                        help="the peerstack leecher writes the output file past the page cache "
                        "(BitswapConfig.get_direct_io, the default) or through it"),
    parser.add_argument("--helia-runs", type=int, default=0,
                        help="runs for helia (tens of MB/s: a 1 GiB run takes minutes); 0 = --runs")
    parser.add_argument("--helia-concurrency", type=int, default=8,
                        help="helia cat's blockReadConcurrency (0 = helia's default); it bounds "
                        "little: it-parallel in helia's exporter lets the wants run past it")
    parser.add_argument("--helia-window-mib", type=int, default=32,
                        help="the helia leecher reads the file with cat in consecutive ranges of "
                        "this many MiB; 0 = one cat of the whole file, which wants every leaf at "
                        "once and stalls on 1 GiB (see bench/share_anchor_helia.mjs)")
    parser.add_argument("--torrent-format", choices=("v1", "hybrid", "v2"), default="v1")
    parser.add_argument("--workdir", default=None,
                        help="work folder, emptied first and removed after (default: a new one "
                        "under the temporary folder)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="uncounted runs before each uncapped cell's timed runs, every "
                             "implementation alike (see run_cells)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-setup", dest="setup", action="store_false")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per leecher run, s")
    parser.add_argument("--seed-profile", type=Path, default=None,
                        help="run every peerstack seeder under cProfile, stats to PATH.<n>.prof "
                        "(written when the seeder stops)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="one extra peerstack leecher run per scenario under cProfile "
                        "(not counted), stats to PATH.<n>seed[-capped].prof")
    # child roles
    parser.add_argument("--role", choices=("ps-import", "ps-seed", "ps-leech"))
    parser.add_argument("--src", type=Path)
    parser.add_argument("--repo", type=Path)
    parser.add_argument("--upload-cap", type=float, default=0.0)
    parser.add_argument("--cid")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--expect", default="")
    args = parser.parse_args(argv)
    if args.role:
        child_main(args)
        return
    unknown = [i for i in args.only if i not in IMPLS]
    if unknown:
        parser.error(f"unknown implementation(s) {unknown}")
    driver_main(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

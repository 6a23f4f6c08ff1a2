"""Run ``helia_peer.mjs`` (a helia 7 node) as a subprocess and talk to it in JSON lines.

Node resolves a script's imports from the folders above the script, so the script is copied
into a scratch folder whose ``node_modules`` is a link to the js interop install
(``tests/interop/js/node_modules``, made by ``make interop-setup``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from peerstack.errors import PeerstackError

REPO_ROOT = Path(__file__).resolve().parents[3]
JS_DIR = REPO_ROOT / "tests" / "interop" / "js"
NODE_MODULES = JS_DIR / "node_modules"
NODE_BIN = NODE_MODULES / ".bin" / "node"
SCRIPT = Path(__file__).with_name("helia_peer.mjs")
# What the script imports: each must be installed for the tests to run.
NEEDED_PACKAGES = (
    "helia",
    "@helia/unixfs",
    "@helia/bitswap",
    "@helia/libp2p",
    "@libp2p/tcp",
    "@libp2p/noise",
    "@libp2p/yamux",
    "@libp2p/identify",
    "blockstore-core",
    "ipfs-unixfs-importer",
)
READY_TIMEOUT = 60.0
MAX_LINE = 1 << 20  # answers are small; a directory listing of a few entries at most

Json = dict[str, Any]


class HeliaError(PeerstackError):
    """The helia process failed to start, died, or answered a command with an error."""


def missing_install() -> str | None:
    """Why helia cannot run here (the js interop install is missing), or None."""
    for path in (NODE_BIN, *(NODE_MODULES / p / "package.json" for p in NEEDED_PACKAGES)):
        if not path.exists():
            return f"{path} is missing: run `make interop-setup`"
    return None


class HeliaPeer:
    """A running helia node: its PeerId, addresses and a command channel."""

    def __init__(self, proc: asyncio.subprocess.Process, workdir: Path) -> None:
        self.proc = proc
        self.workdir = workdir
        self.peer_id = ""
        self.addrs: list[str] = []
        self._next_id = 1
        self._lock = asyncio.Lock()
        self._stderr: list[str] = []
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def addr(self) -> str:
        """A dialable address with /p2p/<id>."""
        first = self.addrs[0]
        return first if "/p2p/" in first else f"{first}/p2p/{self.peer_id}"

    async def _read_json(self, wait: float) -> Json:
        assert self.proc.stdout is not None
        async with asyncio.timeout(wait):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise HeliaError(f"helia exited{self.stderr_tail()}")
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue  # a stray log line on stdout
                if isinstance(msg, dict):
                    return msg

    async def command(self, cmd: str, wait: float = 120.0, **args: Any) -> Json:
        """Send one command and return its answer; raise HeliaError if it failed."""
        assert self.proc.stdin is not None
        async with self._lock:
            ident = self._next_id
            self._next_id += 1
            self.proc.stdin.write((json.dumps({"id": ident, "cmd": cmd, **args}) + "\n").encode())
            await self.proc.stdin.drain()
            try:
                while True:
                    answer = await self._read_json(wait)
                    if answer.get("id") == ident:
                        break
            except TimeoutError as exc:
                raise HeliaError(
                    f"helia: no answer to {cmd} in {wait}s{self.stderr_tail()}"
                ) from exc
        if not answer.get("ok"):
            raise HeliaError(f"helia: {cmd} failed: {answer.get('error')}")
        return answer

    def stderr_tail(self) -> str:
        if not self._stderr:
            return ""
        return "\n--- helia stderr ---\n" + "\n".join(self._stderr[-30:])

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self._stderr.append(raw.decode(errors="replace").rstrip())
            del self._stderr[:-200]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
        shutil.rmtree(self.workdir, ignore_errors=True)


def _prepare(workdir: Path) -> Path:
    """The script in ``workdir`` beside a link to the installed node_modules."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / SCRIPT.name
    shutil.copyfile(SCRIPT, script)
    link = workdir / "node_modules"
    if not link.exists():
        link.symlink_to(NODE_MODULES, target_is_directory=True)
    return script


async def start_helia(workdir: Path) -> HeliaPeer:
    """Start a helia node in ``workdir`` (created; removed again by ``stop``)."""
    reason = missing_install()
    if reason is not None:
        raise HeliaError(reason)
    script = _prepare(workdir)
    proc = await asyncio.create_subprocess_exec(
        str(NODE_BIN),
        str(script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(workdir),
        env=dict(os.environ),
        limit=MAX_LINE,
    )
    peer = HeliaPeer(proc, workdir)
    peer._stderr_task = asyncio.get_running_loop().create_task(peer._drain_stderr())
    try:
        ready = await peer._read_json(READY_TIMEOUT)
    except BaseException:
        await peer.stop()
        raise
    peer.peer_id = str(ready["peerId"])
    peer.addrs = [str(a) for a in ready["addrs"]]
    if not peer.addrs:
        await peer.stop()
        raise HeliaError("helia reported no listen address")
    return peer


@contextlib.asynccontextmanager
async def running_helia(workdir: Path) -> AsyncIterator[HeliaPeer]:
    peer = await start_helia(workdir)
    try:
        yield peer
    finally:
        await peer.stop()


@contextlib.asynccontextmanager
async def running_helias(*workdirs: Path) -> AsyncIterator[list[HeliaPeer]]:
    """Several helia nodes started side by side (each takes seconds to start)."""
    results = await asyncio.gather(*(start_helia(w) for w in workdirs), return_exceptions=True)
    peers = [r for r in results if isinstance(r, HeliaPeer)]
    try:
        for r in results:
            if isinstance(r, BaseException):
                raise r
        yield peers
    finally:
        for peer in peers:
            await peer.stop()

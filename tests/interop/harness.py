"""Start, drive and stop real third-party libp2p peers (js-libp2p, py-libp2p) as subprocesses.

Each peer program (``tests/interop/js/peer.mjs``, ``tests/interop/py/peer.py``) prints one JSON
line with its PeerId and listen addresses when ready, then takes JSON commands on stdin and
answers with JSON lines carrying the command's ``id``. Unsolicited lines with an ``event`` key
(an inbound connection, a finished echo stream...) are queued for the test to inspect.

The harness is asyncio-based so that it can run in the same event loop as our own host.
The peers are installed by ``scripts/setup-interop.sh``; :func:`missing_setup` tells whether it
has been run.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from peerstack.errors import PeerstackError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
JS_DIR = REPO_ROOT / "tests" / "interop" / "js"
NODE_BIN = JS_DIR / "node_modules" / ".bin" / "node"
JS_PEER = JS_DIR / "peer.mjs"
PY_VENV = REPO_ROOT / ".venv-pylibp2p"
PY_BIN = PY_VENV / "bin" / "python"
PY_PEER = REPO_ROOT / "tests" / "interop" / "py" / "peer.py"
SETUP_SCRIPT = "scripts/setup-interop.sh"

# A JSON line from a peer is small except for echo results (capped at 4 KiB of hex by the
# peers) and identify results; 1 MiB bounds what we buffer from a misbehaving child.
MAX_LINE = 1 << 20
# Events we keep for inspection; older ones are dropped with a log line, never unbounded.
MAX_EVENTS = 10_000
READY_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0

Json = dict[str, Any]


class PeerKind(enum.Enum):
    """Which third-party implementation a peer process runs."""

    JS = "js"
    PY = "py"


class InteropError(PeerstackError):
    """A third-party peer process failed to start, died, or answered a command with an error."""


def missing_setup(kind: PeerKind) -> str | None:
    """Why peers of this kind cannot run (the setup script was not run), or None if they can."""
    if kind is PeerKind.JS:
        needed = [NODE_BIN, JS_DIR / "node_modules" / "libp2p" / "package.json"]
    else:
        needed = [PY_BIN, *PY_VENV.glob("lib/python3*/site-packages/libp2p/__init__.py")]
        if len(needed) < 2:
            return f"py-libp2p is not installed in {PY_VENV}: run `bash {SETUP_SCRIPT}`"
    for path in needed:
        if not path.exists():
            return f"{path} is missing: run `bash {SETUP_SCRIPT}` (make test runs it)"
    return None


def peer_command(kind: PeerKind, listen: list[str], extra_args: Sequence[str] = ()) -> list[str]:
    """The argv that starts a peer of this kind listening on these multiaddrs.

    ``extra_args`` go to the peer program: e.g. ``["--dht", "--helia"]`` for the js peer.
    """
    flags: list[str] = [*extra_args]
    for addr in listen:
        flags += ["--listen", addr]
    if kind is PeerKind.JS:
        return [str(NODE_BIN), str(JS_PEER), *flags]
    return [str(PY_BIN), str(PY_PEER), *flags]


@dataclass
class PeerProcess:
    """A running third-party peer: its identity, addresses, and a command channel."""

    kind: PeerKind
    proc: asyncio.subprocess.Process
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    agent_version: str = ""
    events: asyncio.Queue[Json] = field(default_factory=lambda: asyncio.Queue(MAX_EVENTS))
    _pending: dict[int, asyncio.Future[Json]] = field(default_factory=dict)
    _next_id: int = 1
    _reader: asyncio.Task[None] | None = None
    _stderr_task: asyncio.Task[None] | None = None
    _stderr_tail: list[str] = field(default_factory=list)
    _ready: asyncio.Future[Json] | None = None

    @property
    def addr(self) -> str:
        """The first listen address, with /p2p/<id>: what a test dials."""
        return self.addrs[0]

    async def command(self, cmd: str, wait: float = COMMAND_TIMEOUT, **args: Any) -> Json:
        """Send one command and wait for its answer; raise InteropError if it failed."""
        if self.proc.stdin is None or self.proc.returncode is not None:
            raise InteropError(f"{self.kind.value} peer is not running{self._tail()}")
        ident = self._next_id
        self._next_id += 1
        fut: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        line = json.dumps({"id": ident, "cmd": cmd, **args}) + "\n"
        try:
            self.proc.stdin.write(line.encode())
            await self.proc.stdin.drain()
            answer = await asyncio.wait_for(fut, wait)
        except ConnectionError as exc:
            raise InteropError(f"{self.kind.value} peer closed its stdin{self._tail()}") from exc
        except TimeoutError as exc:
            raise InteropError(
                f"{self.kind.value} peer: no answer to {cmd} in {wait}s{self._tail()}"
            ) from exc
        finally:
            self._pending.pop(ident, None)
        if not answer.get("ok"):
            raise InteropError(
                f"{self.kind.value} peer: {cmd} failed: {answer.get('errorName')}: "
                f"{answer.get('error')}"
            )
        return answer

    async def next_event(self, name: str, wait: float = 30.0) -> Json:
        """The next queued event with this name; other events are dropped on the way."""
        async with asyncio.timeout(wait):
            while True:
                ev = await self.events.get()
                if ev.get("event") == name:
                    return ev

    async def stop(self) -> None:
        """Ask the peer to stop, then terminate it if it does not exit in time."""
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                self.proc.terminate()
                try:
                    await asyncio.wait_for(self.proc.wait(), 5.0)
                except TimeoutError:
                    self.proc.kill()
                    await self.proc.wait()
        for task in (self._reader, self._stderr_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(InteropError(f"{self.kind.value} peer stopped"))

    def _tail(self) -> str:
        if not self._stderr_tail:
            return ""
        return "\n--- peer stderr (tail) ---\n" + "\n".join(self._stderr_tail[-30:])

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # a line over the StreamReader limit
                logger.warning("%s peer printed an over-long line", self.kind.value)
                continue
            if not raw:
                break
            try:
                msg = json.loads(raw)
            except ValueError:
                logger.warning("%s peer printed non-JSON: %r", self.kind.value, raw[:200])
                continue
            if not isinstance(msg, dict):
                continue
            self._dispatch(msg)
        err = InteropError(f"{self.kind.value} peer exited{self._tail()}")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(err)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)

    def _dispatch(self, msg: Json) -> None:
        if "peerId" in msg and "addrs" in msg and "id" not in msg and "event" not in msg:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(msg)
            return
        if "event" in msg:
            if self.events.full():
                logger.warning("%s peer: event queue full, dropping oldest", self.kind.value)
                self.events.get_nowait()
            self.events.put_nowait(msg)
            return
        ident = msg.get("id")
        fut = self._pending.get(ident) if isinstance(ident, int) else None
        if fut is not None and not fut.done():
            fut.set_result(msg)
        else:
            logger.warning("%s peer: unmatched answer %r", self.kind.value, msg)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            raw = await self.proc.stderr.readline()
            if not raw:
                return
            text = raw.decode(errors="replace").rstrip()
            logger.debug("%s peer: %s", self.kind.value, text)
            self._stderr_tail.append(text)
            del self._stderr_tail[:-200]


async def start_peer(
    kind: PeerKind,
    listen: list[str] | None = None,
    env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> PeerProcess:
    """Start a peer and wait until it prints its identity and addresses."""
    reason = missing_setup(kind)
    if reason is not None:
        raise InteropError(reason)
    argv = peer_command(kind, listen or ["/ip4/127.0.0.1/tcp/0"], extra_args)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(JS_DIR if kind is PeerKind.JS else REPO_ROOT),
        env={**os.environ, **(env or {})},
        limit=MAX_LINE,
    )
    peer = PeerProcess(kind=kind, proc=proc)
    peer._ready = asyncio.get_running_loop().create_future()
    peer._reader = asyncio.create_task(peer._read_stdout())
    peer._stderr_task = asyncio.create_task(peer._read_stderr())
    try:
        ready = await asyncio.wait_for(peer._ready, READY_TIMEOUT)
    except BaseException:
        await peer.stop()
        raise
    peer.peer_id = str(ready["peerId"])
    peer.addrs = [str(a) for a in ready["addrs"]]
    peer.protocols = [str(p) for p in ready.get("protocols", [])]
    peer.agent_version = str(ready.get("agentVersion", ""))
    if not peer.addrs:
        await peer.stop()
        raise InteropError(f"{kind.value} peer reported no listen address")
    return peer


class StartPeer(Protocol):
    """What the ``start_interop_peer`` fixture gives a test: start a peer, stopped at teardown."""

    def __call__(self, kind: PeerKind, extra_args: Sequence[str] = ()) -> Awaitable[PeerProcess]:
        """``await start_interop_peer(PeerKind.JS, ["--dht"])``."""
        ...


@contextlib.asynccontextmanager
async def running_peer(
    kind: PeerKind, listen: list[str] | None = None, extra_args: Sequence[str] = ()
) -> AsyncIterator[PeerProcess]:
    """``async with running_peer(PeerKind.JS) as js: await js.command("ping", addr=...)``."""
    peer = await start_peer(kind, listen, extra_args=extra_args)
    try:
        yield peer
    finally:
        await peer.stop()

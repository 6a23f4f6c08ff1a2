"""Where a CLI verb runs: in the daemon that holds the repo (over its API), or one-shot.

``open_backend`` looks for ``<repo>/api``: when the daemon there answers, verbs go to it. When
it does not, the command starts its own node on the repo (DHT client mode, a free loopback
port, no background work), bootstraps from ``--bootstrap`` and the configured peers, does the
one thing and exits. A repo held by a process whose API does not answer is refused: two nodes
on one blockstore and one SQLite database would step on each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from peerstack.cli.ops import NETWORK_OPS, OPERATIONS, Json, cat_args
from peerstack.config import EPHEMERAL_LISTEN, parse_multiaddr
from peerstack.errors import DialError, PeerstackError, UsageError
from peerstack.repo import Repo

# aiohttp (about half a second to import) is loaded only when there is a daemon to talk to.

#: How long the CLI waits for a daemon to answer before deciding it is gone.
PROBE_TIMEOUT = 3.0
ProgressSink = Callable[[Json], None]


class RemoteError(PeerstackError):
    """The daemon reported a failure (not the user's fault)."""


class Backend(Protocol):
    kind: str  # "daemon" or "one-shot"

    async def call(self, op: str, args: Json, progress: ProgressSink | None = None) -> Json: ...

    def cat(self, args: Json) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class LocalBackend:
    """A node of our own on the repo, for one command."""

    kind = "one-shot"

    def __init__(self, repo: Repo, bootstrap: Sequence[str]) -> None:
        from peerstack.node import Node  # the network stack, only when needed

        for addr in bootstrap:
            parse_multiaddr(addr)
        self._explicit = list(bootstrap)
        self.node = Node(
            repo=repo,
            listen=list(EPHEMERAL_LISTEN),
            dht_mode="client",
            bootstrap=bootstrap,
            background=False,
        )
        self._started = False
        self._joined = False

    async def start(self) -> None:
        await self.node.start()
        self._started = True

    async def _join(self) -> None:
        if self._joined:
            return
        self._joined = True
        if self._explicit:
            await self.node.join(self._explicit)
            return
        # Configured peers that are down do not stop a command that may not need them.
        with contextlib.suppress(DialError):
            await self.node.bootstrap()

    async def call(self, op: str, args: Json, progress: ProgressSink | None = None) -> Json:
        fn = OPERATIONS[op]
        if op == "add" and "provide" not in args:
            # This node exits right after: an announcement would point at an address that is
            # about to vanish. A daemon on the repo announces its pins soon after it starts.
            args = {**args, "provide": "none"}
        if op in NETWORK_OPS:
            await self._join()
        return await fn(self.node, args, progress or _ignore)

    async def cat(self, args: Json) -> AsyncIterator[bytes]:
        cid, offset, length, timeout = cat_args(args)
        await self._join()
        async for piece in self.node.cat(
            cid, offset, length, find_timeout=timeout, idle_timeout=timeout
        ):
            yield piece

    async def close(self) -> None:
        if self._started:
            await self.node.close()


def _ignore(event: Json) -> None:
    return None


class RemoteBackend:
    """The daemon's HTTP API."""

    kind = "daemon"

    def __init__(self, url: str, token: str, bootstrap: Sequence[str]) -> None:
        import aiohttp

        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._bootstrap = list(bootstrap)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=PROBE_TIMEOUT)
        )

    async def alive(self) -> bool:
        import aiohttp

        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                async with self._session.get(self.url + "id", headers=self._headers) as resp:
                    return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def _body(self, args: Json) -> Json:
        return {**args, "bootstrap": self._bootstrap} if self._bootstrap else args

    async def call(self, op: str, args: Json, progress: ProgressSink | None = None) -> Json:
        import aiohttp

        try:
            async with self._session.post(
                self.url + op, json=self._body(args), headers=self._headers
            ) as resp:
                if resp.status != 200:
                    raise RemoteError(f"daemon refused {op}: {(await resp.text()).strip()}")
                async for line in resp.content:
                    try:
                        event = json.loads(line)
                        kind = event.pop("event", None)
                    except (ValueError, AttributeError, TypeError):
                        raise RemoteError(f"the daemon sent a malformed answer to {op}") from None
                    if kind == "progress":
                        if progress is not None:
                            progress(event)
                    elif kind == "result":
                        return dict(event)
                    elif kind == "error":
                        raise _remote_error(event)
        except aiohttp.ClientError as exc:
            raise RemoteError(f"lost the daemon's API: {exc}") from None
        raise RemoteError(f"the daemon ended {op} without a result")

    async def cat(self, args: Json) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async with self._session.post(
                self.url + "cat", json=self._body(args), headers=self._headers
            ) as resp:
                if resp.content_type == "application/json":
                    raise _remote_error(await resp.json())
                if resp.status != 200:
                    raise RemoteError(f"daemon refused cat: {(await resp.text()).strip()}")
                async for piece in resp.content.iter_any():
                    yield piece
        except aiohttp.ClientPayloadError:
            raise RemoteError("the daemon broke off the transfer") from None
        except aiohttp.ClientError as exc:
            raise RemoteError(f"lost the daemon's API: {exc}") from None

    async def close(self) -> None:
        await self._session.close()


def _remote_error(event: dict[str, Any]) -> PeerstackError:
    message = str(event.get("message", "unknown error"))
    return UsageError(message) if event.get("kind") == "usage" else RemoteError(message)


def _api_url(addr: str) -> str | None:
    try:
        target = parse_multiaddr(addr).tcp_target()
    except UsageError:
        return None
    if target is None:
        return None
    host, port = target
    if ":" in host:  # an IPv6 literal goes in brackets in a URL (RFC 3986)
        host = f"[{host}]"
    return f"http://{host}:{port}/api/v0/"


async def open_backend(repo_path: Path | None, bootstrap: Sequence[str]) -> Backend:
    """The daemon's API when it answers, else a one-shot node on the repo."""
    for addr in bootstrap:
        parse_multiaddr(addr)  # a bad address is refused before anything starts
    repo = Repo.open(repo_path)
    api = repo.read_api()
    if api is not None:
        url = _api_url(api[0])
        if url is not None:
            remote = RemoteBackend(url, api[1], bootstrap)
            if await remote.alive():
                return remote
            await remote.close()
    if repo.is_locked_elsewhere():
        raise UsageError(
            f"repo {repo.path} is in use by another peerstack process whose API does not"
            " answer; stop it or use another --repo"
        )
    local = LocalBackend(repo, bootstrap)
    try:
        await local.start()
    except BaseException:
        await local.close()
        raise
    return local


class backend_for:
    """``async with backend_for(repo, bootstrap) as backend:`` opens and always closes."""

    def __init__(self, repo_path: Path | None, bootstrap: Sequence[str]) -> None:
        self._args = (repo_path, bootstrap)
        self._backend: Backend | None = None

    async def __aenter__(self) -> Backend:
        self._backend = await open_backend(*self._args)
        return self._backend

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._backend is not None:
            with contextlib.suppress(PeerstackError, OSError):
                await self._backend.close()

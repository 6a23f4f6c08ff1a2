"""The daemon's local HTTP API: every CLI verb, for commands run while a daemon holds the repo.

Bound to 127.0.0.1 on a port the kernel picks (or ``--api``); the address goes to ``<repo>/api``
(as kubo does) and a random bearer token to ``<repo>/api.token`` (mode 0600): only someone who
can read the repo may drive the node.

    GET  /api/v0/id             {"peer_id", "addrs"}: also how the CLI checks the daemon is alive
    POST /api/v0/<verb>         JSON arguments in; JSON lines out: progress events, then one
                                {"event": "result", ...} or {"event": "error", "kind", "message"}
    POST /api/v0/cat            the file's bytes (errors found before the first byte are JSON)

A request whose client goes away is cancelled (a killed ``peerstack get`` stops the daemon's
fetch too; the blocks it has stay, so the next get resumes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from peerstack.cli.ops import OPERATIONS, Json, cat_args
from peerstack.errors import PeerstackError, UsageError
from peerstack.node import Node
from peerstack.repo import Repo

log = logging.getLogger(__name__)

PREFIX = "/api/v0/"
NDJSON = "application/x-ndjson"
MAX_REQUEST = 64 * 1024


def error_event(exc: BaseException) -> Json:
    kind = "usage" if isinstance(exc, UsageError) else "failure"
    if isinstance(exc, TimeoutError):
        return {"event": "error", "kind": kind, "message": "timed out"}
    return {"event": "error", "kind": kind, "message": str(exc) or type(exc).__name__}


class ApiServer:
    """Serve ``node``'s verbs on 127.0.0.1; publishes its address and token in ``repo``."""

    def __init__(self, node: Node, repo: Repo, host: str = "127.0.0.1", port: int = 0) -> None:
        self.node = node
        self.repo = repo
        self.host = host
        self.port = port
        self.token = ""
        self.addr = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=MAX_REQUEST)
        app.router.add_get(PREFIX + "id", self._id)
        app.router.add_post(PREFIX + "cat", self._cat)
        app.router.add_post(PREFIX + "{op}", self._op)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self.port
        self.addr = f"/{'ip6' if ':' in self.host else 'ip4'}/{self.host}/tcp/{port}"
        self.token = self.repo.write_api(self.addr)
        return self.addr

    async def stop(self) -> None:
        self.repo.remove_api()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- handlers -----------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        expected = f"Bearer {self.token}"
        return bool(self.token) and secrets.compare_digest(header.encode(), expected.encode())

    async def _args(self, request: web.Request) -> Mapping[str, Any]:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(text="bad or missing API token")
        try:
            args = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text="the request body is not JSON") from None
        if not isinstance(args, dict):
            raise web.HTTPBadRequest(text="the request body is not a JSON object")
        return args

    async def _id(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(text="bad or missing API token")
        return web.json_response(
            {"peer_id": str(self.node.peer_id), "addrs": [str(a) for a in self.node.addrs]}
        )

    async def _op(self, request: web.Request) -> web.StreamResponse:
        # The token first: without it a caller learns nothing, not even which verbs exist.
        args = await self._args(request)
        op = OPERATIONS.get(request.match_info["op"])
        if op is None:
            raise web.HTTPNotFound(text=f"no such verb {request.match_info['op']!r}")
        resp = web.StreamResponse(headers={"Content-Type": NDJSON})
        await resp.prepare(request)
        latest: list[Json] = []
        wake = asyncio.Event()

        def emit(event: Json) -> None:
            # Progress is a level, not a log: only the newest event waits to be written.
            latest[:] = [event]
            wake.set()

        async def run() -> Json:
            boot = args.get("bootstrap") or []
            if not isinstance(boot, list) or not all(isinstance(a, str) for a in boot):
                raise UsageError("bootstrap must be a list of multiaddrs")
            if boot:
                await self.node.join(boot)
            return await op(self.node, args, emit)

        task = asyncio.get_running_loop().create_task(run())
        try:
            while not task.done():
                waiter = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    # Also when this handler is cancelled inside the wait (client gone).
                    waiter.cancel()
                wake.clear()
                if latest:
                    await _write(resp, latest.pop())
            try:
                result = {"event": "result", **task.result()}
            except (PeerstackError, OSError, TimeoutError) as exc:
                result = error_event(exc)
            await _write(resp, result)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, PeerstackError, OSError):
                    await task
        await resp.write_eof()
        return resp

    async def _cat(self, request: web.Request) -> web.StreamResponse:
        args = await self._args(request)
        try:
            cid, offset, length, timeout = cat_args(args)
            pieces = self.node.cat(cid, offset, length, find_timeout=timeout, idle_timeout=timeout)
            first = await _first(pieces)
        except (PeerstackError, OSError, TimeoutError) as exc:
            return web.json_response(error_event(exc), status=400)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        try:
            if first is not None:
                await resp.write(first)
                async for piece in pieces:
                    await resp.write(piece)
        except (PeerstackError, OSError) as exc:
            # Too late for a status: cut the connection so the client sees a broken transfer.
            log.warning("cat %s failed midway: %r", cid, exc)
            if request.transport is not None:
                request.transport.close()
            return resp
        finally:
            await pieces.aclose()
        await resp.write_eof()
        return resp


async def _first(pieces: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(pieces)
    except StopAsyncIteration:
        return None


async def _write(resp: web.StreamResponse, event: Json) -> None:
    await resp.write((json.dumps(event, separators=(",", ":")) + "\n").encode())

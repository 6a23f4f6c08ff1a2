"""The daemon's HTTP API in process: what a handler leaves behind when its client goes away."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp

from peerstack.cli.api import ApiServer
from peerstack.core.cid import CID
from peerstack.node import Node
from peerstack.repo import Repo


def _pending(qualname: str) -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") == qualname
    ]


async def test_a_cancelled_verb_leaves_no_waiter_behind(tmp_path: Path) -> None:
    """A client that hangs up on a long verb cancels its handler; the handler's progress
    waiter must be cancelled with it, not left pending for the life of the daemon."""
    repo = Repo.open(tmp_path / "r")
    async with Node(repo=repo, listen=["/ip4/127.0.0.1/tcp/0"], background=False) as node:
        server = ApiServer(node, repo)
        addr = await server.start()
        try:
            port = addr.rsplit("/", 1)[1]
            nobody_has = CID.hash_of(b"content nobody on this network has")
            body = {"cid": str(nobody_has), "dest": str(tmp_path / "out"), "timeout": 0}
            async with aiohttp.ClientSession() as session:
                request = asyncio.create_task(
                    session.post(
                        f"http://127.0.0.1:{port}/api/v0/get",
                        json=body,
                        headers={"Authorization": f"Bearer {server.token}"},
                    )
                )
                for _ in range(500):
                    if _pending("ApiServer._op.<locals>.run"):
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the verb never started")
                request.cancel()  # the client hangs up
                with contextlib.suppress(asyncio.CancelledError):
                    await request
            for _ in range(500):
                if not _pending("ApiServer._op.<locals>.run"):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the verb outlived its client")
            await asyncio.sleep(0)
            assert _pending("Event.wait") == []
        finally:
            await server.stop()

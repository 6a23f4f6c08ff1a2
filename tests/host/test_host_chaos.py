"""Many clients, streams of mixed sizes, random resets and disconnects on both sides: every
operation ends in data or a typed stream error, and nothing is left behind."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable

from peerstack.errors import StreamReset
from peerstack.host.host import BasicHost
from peerstack.host.interface import Stream
from peerstack.host.limits import Limits

# The make_host fixture (conftest.py): start a host on 127.0.0.1, closed at teardown.
MakeHost = Callable[..., Awaitable[BasicHost]]
# The eventually fixture (conftest.py): poll a condition until it holds.
Eventually = Callable[..., Awaitable[None]]

ECHO = "/test/chaos-echo/1"


async def test_chaos(make_host: MakeHost, eventually: Eventually) -> None:
    rng = random.Random(1234)
    server = await make_host(Limits(max_connections_per_ip=64))

    async def flaky_echo(stream: Stream) -> None:
        while data := await stream.read():
            if rng.random() < 0.01:
                stream.reset()
                return
            await stream.write(data)

    server.set_stream_handler(ECHO, flaky_echo)
    addr = f"{server.listen_addrs()[0]}/p2p/{server.peer_id}"
    clients = [await make_host(listen=False) for _ in range(6)]
    outcomes = {"ok": 0, "reset": 0}

    async def one_stream(client: BasicHost) -> None:
        if not client.connected_peers():
            await client.dial(addr)
        stream = await client.new_stream(server.peer_id, [ECHO])
        payload = os.urandom(rng.choice([10, 1000, 100_000, 600_000]))

        async def send() -> None:
            await stream.write(payload)
            if rng.random() < 0.1:
                stream.reset()
                return
            await stream.close()

        sender = asyncio.create_task(send())
        try:
            echoed = await stream.read_until_eof(1 << 21)
        finally:
            sent = await asyncio.gather(sender, return_exceptions=True)
        if isinstance(sent[0], BaseException):
            raise sent[0]
        assert echoed == payload

    async def worker(client: BasicHost) -> None:
        for _ in range(8):
            try:
                await one_stream(client)
                outcomes["ok"] += 1
            except StreamReset:
                outcomes["reset"] += 1
            if rng.random() < 0.05:
                await client.disconnect(server.peer_id)

    await asyncio.gather(*(worker(c) for c in clients for _ in range(2)))
    assert outcomes["ok"] + outcomes["reset"] == 6 * 2 * 8
    assert outcomes["ok"] > outcomes["reset"]
    for client in clients:
        await client.close()
    await eventually(lambda: server.connected_peers() == [] and server.stats()["tasks"] == 0)
    stats = server.stats()
    assert stats["connections"] == stats["inbound"] == stats["pending_inbound"] == 0
    assert stats["streams"] == 0
    assert stats["tasks"] == 0  # every handler finished

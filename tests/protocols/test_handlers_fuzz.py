"""Whatever bytes a peer sends, our handlers and readers end: a result or a typed error.

Each example runs the handler against arbitrary peer bytes followed by the peer closing its
write side, under a timeout, so a hang fails the test as surely as a stray exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerstack.errors import PeerError, StreamClosed, StreamReset
from peerstack.host.interface import Stream
from peerstack.protocols.echo import handle_echo
from peerstack.protocols.identify import read_identify
from peerstack.protocols.perf import handle_perf
from peerstack.protocols.ping import handle_ping

Pair = Callable[..., tuple[Stream, Stream]]
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


async def _drain(stream: Stream) -> int:
    total = 0
    try:
        while chunk := await stream.read():
            total += len(chunk)
    except StreamReset:
        return -1
    return total


async def _run_handler(
    pair: Pair,
    handler: Callable[[Stream], Awaitable[None]],
    data: bytes,
) -> int:
    client, server = pair(capacity=1 << 20)

    async def scenario() -> int:
        task = asyncio.ensure_future(handler(server))
        await client.write(data)
        await client.close()
        got = await _drain(client)
        await task
        return got

    return await asyncio.wait_for(scenario(), 10)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


@FUZZ
@given(data=st.binary(max_size=300))
def test_ping_handler_any_bytes(stream_pair: Pair, data: bytes) -> None:
    got = _run(_run_handler(stream_pair, handle_ping, data))
    # Whole 32-byte pings are echoed; a trailing partial one resets the stream.
    if len(data) % 32 == 0:
        assert got == len(data)
    else:
        assert got == -1


@FUZZ
@given(data=st.binary(max_size=300))
def test_echo_handler_any_bytes(stream_pair: Pair, data: bytes) -> None:
    assert _run(_run_handler(stream_pair, handle_echo, data)) == len(data)


@FUZZ
@given(data=st.binary(max_size=64))
def test_perf_handler_any_bytes(stream_pair: Pair, data: bytes) -> None:
    async def small_perf(stream: Stream) -> None:
        await handle_perf(stream, max_serve=4096)

    got = _run(_run_handler(stream_pair, small_perf, data))
    if len(data) < 8:
        assert got == -1
    else:
        wanted = int.from_bytes(data[:8], "big")
        assert got == (wanted if wanted <= 4096 else -1)


@FUZZ
@given(data=st.binary(max_size=400))
def test_read_identify_any_bytes(stream_pair: Pair, data: bytes) -> None:
    async def scenario() -> None:
        client, server = stream_pair()
        await server.write(data)
        await server.close()
        try:
            info = await asyncio.wait_for(read_identify(client), 10)
        except (PeerError, StreamClosed):
            return
        assert info.peer == client.remote_peer

    asyncio.run(scenario())

"""ping, perf and echo handlers and clients on an in-memory stream pair."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest

from peerstack.errors import LimitExceeded, StreamClosed, StreamReset, UsageError
from peerstack.host.interface import Stream
from peerstack.protocols.echo import echo_stream, handle_echo
from peerstack.protocols.perf import PerfShortRead, handle_perf, perf_stream
from peerstack.protocols.ping import PingMismatch, handle_ping, ping_stream

Pair = Callable[..., tuple[Stream, Stream]]


async def test_ping_round_trips(stream_pair: Pair) -> None:
    client, server = stream_pair("/ipfs/ping/1.0.0")
    serve = asyncio.create_task(handle_ping(server))
    rtts = await ping_stream(client, 5)
    assert len(rtts) == 5
    assert all(r >= 0 for r in rtts)
    await client.close()
    await serve
    assert await client.read() == b""  # server closed after our close


async def test_ping_rejects_wrong_echo(stream_pair: Pair) -> None:
    client, server = stream_pair()

    async def liar() -> None:
        await server.readexactly(32)
        await server.write(b"\x00" * 32)

    task = asyncio.create_task(liar())
    with pytest.raises(PingMismatch):
        await ping_stream(client, 1)
    await task


async def test_ping_peer_closing_early(stream_pair: Pair) -> None:
    client, server = stream_pair()

    async def quitter() -> None:
        await server.readexactly(32)
        await server.write(b"\x01" * 10)
        await server.close()

    task = asyncio.create_task(quitter())
    with pytest.raises(StreamClosed):
        await ping_stream(client, 1)
    await task


async def test_ping_count_must_be_positive(stream_pair: Pair) -> None:
    client, _ = stream_pair()
    with pytest.raises(UsageError):
        await ping_stream(client, 0)


async def test_ping_server_resets_idle_stream(stream_pair: Pair) -> None:
    client, server = stream_pair()
    await handle_ping(server, idle_timeout=0.05)
    with pytest.raises(StreamReset):
        await client.read()


@pytest.mark.parametrize(
    ("upload", "download"), [(0, 0), (1, 0), (0, 1), (3 * 1024 * 1024 + 7, 2 * 1024 * 1024 + 3)]
)
async def test_perf_sizes_exact(stream_pair: Pair, upload: int, download: int) -> None:
    client, server = stream_pair("/perf/1.0.0")
    serve = asyncio.create_task(handle_perf(server))
    result = await perf_stream(client, upload, download)
    await serve
    assert result.upload_bytes == upload
    assert result.download_bytes == download
    assert result.upload_seconds >= 0
    assert result.download_seconds >= 0


async def test_perf_server_refuses_huge_request(stream_pair: Pair) -> None:
    client, server = stream_pair()
    await client.write(struct.pack(">Q", 2**63))
    await client.close()
    await handle_perf(server, max_serve=1024)
    with pytest.raises(StreamReset):
        await client.read()


async def test_perf_client_detects_short_answer(stream_pair: Pair) -> None:
    client, server = stream_pair()

    async def stingy() -> None:
        await server.readexactly(8)
        while await server.read():
            pass
        await server.write(b"\x00" * 10)
        await server.close()

    task = asyncio.create_task(stingy())
    with pytest.raises(PerfShortRead):
        await perf_stream(client, 5, 100)
    await task


async def test_perf_client_detects_long_answer(stream_pair: Pair) -> None:
    client, server = stream_pair()

    async def generous() -> None:
        await server.readexactly(8)
        while await server.read():
            pass
        await server.write(b"\x00" * 200)
        await server.close()

    task = asyncio.create_task(generous())
    with pytest.raises(PerfShortRead):
        await perf_stream(client, 0, 100)
    await task


async def test_perf_rejects_negative_sizes(stream_pair: Pair) -> None:
    client, _ = stream_pair()
    with pytest.raises(UsageError):
        await perf_stream(client, -1, 0)


@pytest.mark.parametrize("size", [0, 1, 65536, 1_000_003])
async def test_echo_round_trip_bigger_than_window(stream_pair: Pair, size: int) -> None:
    client, server = stream_pair("/echo/1.0.0", capacity=16 * 1024)
    serve = asyncio.create_task(handle_echo(server))
    data = bytes(i % 251 for i in range(size))
    assert await echo_stream(client, data) == data
    await serve


async def test_echo_client_refuses_extra_bytes(stream_pair: Pair) -> None:
    client, server = stream_pair()

    async def chatty() -> None:
        await server.write(b"x" * 10)
        await server.close()

    task = asyncio.create_task(chatty())
    with pytest.raises(LimitExceeded):
        await echo_stream(client, b"abc")
    await task


async def test_ping_timeout_is_per_round_trip(stream_pair: Pair) -> None:
    """Round trips that each stay under rtt_timeout pass, however long they take together;
    the one that does not answer in time raises TimeoutError."""
    client, server = stream_pair()
    answered = 0

    async def slow_then_silent() -> None:
        nonlocal answered
        for _ in range(6):
            payload = await server.readexactly(32)
            await asyncio.sleep(0.1)
            await server.write(payload)
            answered += 1
        await server.readexactly(32)  # and never answer

    task = asyncio.create_task(slow_then_silent())
    rtts = await ping_stream(client, 6, rtt_timeout=0.4)  # 0.6 s in all, > 0.4
    assert len(rtts) == 6
    with pytest.raises(TimeoutError):
        await ping_stream(client, 1, rtt_timeout=0.2)
    assert answered == 6
    await task


async def test_ping_many_round_trips_with_fresh_payloads(stream_pair: Pair) -> None:
    client, server = stream_pair()
    seen: list[bytes] = []

    async def recorder() -> None:
        while payload := await server.read(32):
            seen.append(payload)
            await server.write(payload)

    task = asyncio.create_task(recorder())
    rtts = await ping_stream(client, 150)  # more than one batch of random bytes
    assert len(rtts) == 150
    assert len(set(seen)) == 150
    assert all(len(p) == 32 for p in seen)
    await client.close()
    await task


async def test_perf_idle_limit_is_per_silence_not_per_transfer(stream_pair: Pair) -> None:
    """An upload that keeps moving outlasts idle_timeout; a silent one is reset."""
    client, server = stream_pair()
    serve = asyncio.create_task(handle_perf(server, idle_timeout=0.3))
    await client.write(struct.pack(">Q", 5))
    for _ in range(6):  # 0.6 s in all, never silent for 0.3 s
        await client.write(b"x" * 1000)
        await asyncio.sleep(0.1)
    await client.close()
    assert await client.readexactly(5) == b"\x00" * 5
    await serve

    client, server = stream_pair()
    serve = asyncio.create_task(handle_perf(server, idle_timeout=0.1))
    await client.write(struct.pack(">Q", 5) + b"x" * 10)
    await serve  # the client went silent: reset
    with pytest.raises(StreamReset):
        await client.read()


async def test_ping_payloads_in_pieces_both_ways(stream_pair: Pair) -> None:
    """The one-read fast path is the usual case; a payload cut in pieces is still whole."""
    client, server = stream_pair()
    serve = asyncio.create_task(handle_ping(server))
    for cut in (1, 5, 31):
        payload = bytes(range(cut, cut + 32))
        await client.write(payload[:cut])
        await asyncio.sleep(0)  # the server's first read gets the first piece alone
        await client.write(payload[cut:])
        assert await client.readexactly(32) == payload
    await client.close()
    await serve

    client, server = stream_pair()

    async def stutterer() -> None:
        while ping := await server.read(32):
            ping += await server.readexactly(32 - len(ping))
            await server.write(ping[:7])
            await asyncio.sleep(0)
            await server.write(ping[7:])

    task = asyncio.create_task(stutterer())
    assert len(await ping_stream(client, 3)) == 3
    await client.close()
    await task

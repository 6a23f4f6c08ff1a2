"""YamuxStream details: concurrent writers keep messages whole, misuse is refused."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest

from peerstack.errors import StreamClosed, StreamReset, UsageError
from peerstack.host.host import BasicHost
from peerstack.host.interface import Stream

# The make_host fixture (conftest.py): start a host on 127.0.0.1, closed at teardown.
MakeHost = Callable[..., Awaitable[BasicHost]]


async def test_concurrent_writers_do_not_interleave(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def collect(stream: Stream) -> None:
        data = b""
        while chunk := await stream.read():
            data += chunk
        received.set_result(data)

    b.set_stream_handler("/collect", collect)
    stream = await a.new_stream(
        await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}"), ["/collect"]
    )
    # Messages larger than the initial window: each write parks mid-message at least once.
    messages = [bytes([i]) * (700_000 + i) for i in range(6)]
    await asyncio.gather(*(stream.write(m) for m in messages))
    await stream.close()
    data = await received
    assert len(data) == sum(len(m) for m in messages)
    pos = 0
    seen = set()
    while pos < len(data):
        i = data[pos]
        assert data[pos : pos + len(messages[i])] == messages[i]
        seen.add(i)
        pos += len(messages[i])
    assert seen == set(range(6))


async def test_concurrent_reads_are_refused_and_reset_wakes_writers(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    hold = asyncio.Event()

    async def idle(stream: Stream) -> None:
        await hold.wait()
        stream.reset()

    b.set_stream_handler("/idle", idle)
    stream = await a.new_stream(await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}"), ["/idle"])
    reader = asyncio.create_task(stream.read())
    await asyncio.sleep(0.01)
    with pytest.raises(UsageError):
        await stream.read()
    big = os.urandom(2 << 20)
    writers = [asyncio.create_task(stream.write(big)) for _ in range(3)]
    await asyncio.sleep(0.1)
    assert not any(w.done() for w in writers)  # parked on the window / their turn
    hold.set()
    results = await asyncio.gather(reader, *writers, return_exceptions=True)
    assert all(isinstance(r, StreamReset) for r in results)


async def test_close_fails_a_write_parked_on_the_window(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    hold = asyncio.Event()

    async def slow(stream: Stream) -> None:
        await hold.wait()
        while await stream.read():
            pass

    b.set_stream_handler("/slow", slow)
    stream = await a.new_stream(await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}"), ["/slow"])
    writer = asyncio.create_task(stream.write(os.urandom(4 << 20)))
    await asyncio.sleep(0.1)
    assert not writer.done()
    await stream.close()
    with pytest.raises(StreamClosed):
        await writer
    hold.set()


async def test_small_reads_keep_the_window_moving(make_host: MakeHost) -> None:
    """Window is returned in batches of small reads; a transfer several windows long read
    100 bytes at a time must still complete."""
    a = await make_host()
    b = await make_host()
    payload = os.urandom(900_000)

    async def send(stream: Stream) -> None:
        await stream.write(payload)

    b.set_stream_handler("/send", send)
    stream = await a.new_stream(await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}"), ["/send"])
    got = bytearray()
    while piece := await stream.read(100):
        got += piece
    assert got == payload


async def test_small_writes_direct_and_coalesced_arrive_in_order(make_host: MakeHost) -> None:
    """The first small write of a turn goes out at once, the rest are coalesced: on each
    stream the bytes arrive in order, whatever mix of sizes and streams shares a turn."""
    a = await make_host()
    b = await make_host()
    done: dict[int, asyncio.Future[bytes]] = {}
    loop = asyncio.get_running_loop()

    async def collect(stream: Stream) -> None:
        tag = (await stream.readexactly(1))[0]
        data = b""
        while chunk := await stream.read():
            data += chunk
        done[tag].set_result(data)

    b.set_stream_handler("/collect", collect)
    peer = await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}")
    streams = []
    for tag in range(3):
        done[tag] = loop.create_future()
        s = await a.new_stream(peer, ["/collect"])
        await s.write(bytes([tag]))
        streams.append(s)
    await asyncio.sleep(0.05)
    expected: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    sizes = [1, 32, 5000, 16 * 1024, 16 * 1024 + 1, 200_000, 7, 3]
    for turn in range(20):
        # several writes in one turn, sync where the fast path takes them whole
        for i, size in enumerate(sizes):
            tag = (turn + i) % 3
            msg = bytes([turn]) * size
            expected[tag].append(msg)
            await streams[tag].write(msg)
        if turn % 4 == 0:
            await asyncio.sleep(0)
    for s in streams:
        await s.close()
    for tag in range(3):
        assert await asyncio.wait_for(done[tag], 10) == b"".join(expected[tag])


async def test_idle_connection_gives_back_noise_scratch(
    make_host: MakeHost, eventually: Callable[..., Awaitable[None]]
) -> None:
    """After a bulk transfer, once no stream is left, neither end holds Noise scratch."""
    a = await make_host()
    b = await make_host()
    payload = os.urandom(3 << 20)

    async def sink(stream: Stream) -> None:
        got = 0
        while piece := await stream.read():
            got += len(piece)
        await stream.write(got.to_bytes(8, "big"))

    b.set_stream_handler("/sink", sink)
    peer = await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}")
    stream = await a.new_stream(peer, ["/sink"])
    conn = stream.connection
    await stream.write(payload)
    # the bulk write used the reusable output buffers (Noise's own scratch only serves
    # callers of encrypt() with large data)
    assert conn._out_buffers is not None
    await stream.close()
    assert int.from_bytes(await stream.readexactly(8), "big") == len(payload)
    assert await stream.read() == b""
    other = b.connection(a.peer_id)
    assert other is not None
    await eventually(lambda: conn.num_streams == 0 and other.num_streams == 0)
    assert conn._noise.scratch_size == 0
    assert other._noise.scratch_size == 0
    assert conn._out_buffers is None
    assert other._out_buffers is None


async def test_mixed_reads_across_frames_return_the_bytes_in_order(make_host: MakeHost) -> None:
    """read(n) may hand over one received piece when much is wanted (no join), readexactly()
    joins; with frames cut across socket reads (read straight into Noise's partial frame),
    every byte still arrives once and in order."""
    a = await make_host()
    b = await make_host()
    sizes = [1, 5000, 65_519, 65_520, 300_000, 7, 1 << 20, 123_457]
    payload = os.urandom(sum(sizes) * 2)
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def reader(stream: Stream) -> None:
        parts: list[bytes] = []
        wants = [3, 70_000, 1 << 20, 17, -1, 200_000]
        i = 0
        while True:
            n = wants[i % len(wants)]
            i += 1
            if i % 5 == 0 and len(payload) - sum(map(len, parts)) >= 40_000:
                piece = await stream.readexactly(40_000)
                assert len(piece) == 40_000
            else:
                piece = await stream.read(n)
                assert n < 0 or len(piece) <= n
            if not piece:
                break
            parts.append(piece)
        got.set_result(b"".join(parts))

    b.set_stream_handler("/mixed", reader)
    stream = await a.new_stream(await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}"), ["/mixed"])
    off = 0
    for size in sizes * 2:
        await stream.write(payload[off : off + size])
        off += size
    await stream.close()
    assert await got == payload

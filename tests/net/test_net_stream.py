"""YamuxStream details: concurrent writers keep messages whole, misuse is refused."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable

import pytest

from peerstack.errors import StreamClosed, StreamReset, UsageError
from peerstack.host.host import BasicHost
from peerstack.host.interface import Stream
from peerstack.net.stream import DIRECT_WRITE_LIMIT, YamuxStream
from peerstack.protocols import perf, ping

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


async def _stream_to(a: BasicHost, b: BasicHost, protocol: str) -> YamuxStream:
    stream = await a.new_stream(await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}"), [protocol])
    assert isinstance(stream, YamuxStream)
    return stream


async def test_data_handler_takes_messages_then_hands_over_to_read(make_host: MakeHost) -> None:
    """A data handler gets each payload as it arrives (and the window goes back, so far more
    than a window passes through it); when it declines, that payload and everything after
    it is read in order; EOF still ends a read waiting under the handler."""
    a = await make_host()
    b = await make_host()
    taken: list[bytes] = []
    result: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()

    async def serve(stream: Stream) -> None:
        assert isinstance(stream, YamuxStream)

        def handler(data: bytes) -> bool:
            if data.startswith(b"stop"):
                return False
            taken.append(data)
            return True

        stream.set_data_handler(handler)
        first = await stream.read()  # woken by the declined payload, not by the taken ones
        rest = b""
        stream.set_data_handler(lambda data: False)  # declines at once: all goes to read()
        while piece := await stream.read():
            rest += piece
        result.set_result((first, rest))

    b.set_stream_handler("/handler", serve)
    stream = await _stream_to(a, b, "/handler")
    message = os.urandom(1000)
    for _ in range(600):  # 600 KB: more than twice the initial window
        await stream.write(message)
    await stream.write(b"stop here")
    await stream.write(b"and the rest")
    await stream.close()
    first, rest = await asyncio.wait_for(result, 10)
    assert b"".join(taken) == message * 600
    assert (first + rest).startswith(b"stop here")
    assert first + rest == b"stop hereand the rest"


async def test_reset_and_eof_reach_a_reader_waiting_under_a_data_handler(
    make_host: MakeHost,
) -> None:
    a = await make_host()
    b = await make_host()
    ended: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    async def serve(stream: Stream) -> None:
        assert isinstance(stream, YamuxStream)
        stream.set_data_handler(lambda data: True)
        try:
            ended.set_result(await stream.read())
        except StreamReset as exc:
            ended.set_result(exc)

    b.set_stream_handler("/handler", serve)
    stream = await _stream_to(a, b, "/handler")
    await stream.write(b"swallowed")
    await stream.close()
    assert await asyncio.wait_for(ended, 10) == b""  # the handler took the data, EOF woke read

    ended = asyncio.get_running_loop().create_future()
    stream = await _stream_to(a, b, "/handler")
    await stream.write(b"swallowed")
    stream.reset()
    assert isinstance(await asyncio.wait_for(ended, 10), StreamReset)


async def test_try_write_sends_now_or_takes_nothing(make_host: MakeHost) -> None:
    a = await make_host()
    b = await make_host()
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    hold = asyncio.Event()

    async def collect(stream: Stream) -> None:
        await hold.wait()
        data = b""
        while piece := await stream.read():
            data += piece
        got.set_result(data)

    b.set_stream_handler("/collect", collect)
    stream = await _stream_to(a, b, "/collect")
    await asyncio.sleep(0.05)  # the stream's opening (SYN, negotiation) has left
    assert stream.try_write(b"first;")
    assert not stream.try_write(b"")  # nothing to send
    assert not stream.try_write(b"x" * (DIRECT_WRITE_LIMIT + 1))  # too large for one step
    # A write parked on the window (the reader holds back) is in progress: try_write must not
    # overtake it, and takes nothing.
    big = os.urandom(600_000)
    writer = asyncio.create_task(stream.write(big))
    await asyncio.sleep(0.05)
    assert not writer.done()
    assert not stream.try_write(b"overtaking")
    hold.set()
    await asyncio.wait_for(writer, 10)
    assert stream.try_write(b";last")
    await stream.close()
    assert not stream.try_write(b"after close")
    assert await asyncio.wait_for(got, 10) == b"first;" + big + b";last"
    stream.reset()
    assert not stream.try_write(b"after reset")


async def test_ping_server_echoes_inline_and_through_its_reading_loop(make_host: MakeHost) -> None:
    """The ping server on a real stream: whole pings are echoed by its data handler, pings in
    pieces, pings back to back and a flood beyond the window (the echo stalls on the window
    and the reading loop takes over) all come back intact and in order."""
    a = await make_host()
    b = await make_host()
    ping.register(b)
    stream = await _stream_to(a, b, ping.PING)
    rtts = await ping.ping_stream(stream, 200)
    assert len(rtts) == 200
    server_conn = b.connection(a.peer_id)
    assert server_conn is not None
    (served,) = server_conn.streams()
    assert served._on_data is not None  # the echo is served by the data handler
    # one ping in two pieces, each its own frame
    payload = os.urandom(32)
    await stream.write(payload[:10])
    await asyncio.sleep(0.01)
    await stream.write(payload[10:])
    assert await stream.readexactly(32) == payload
    # three pings in one frame
    payload = os.urandom(96)
    await stream.write(payload)
    assert await stream.readexactly(96) == payload
    # a flood of 1 MiB of pings, written before any echo is read
    flood = os.urandom(32 * 32768)
    writer = asyncio.create_task(stream.write(flood))
    echoed = await asyncio.wait_for(stream.readexactly(len(flood)), 20)
    await writer
    assert echoed == flood
    # and the handler is back in service afterwards
    assert len(await ping.ping_stream(stream, 50)) == 50
    await stream.close()
    assert await asyncio.wait_for(stream.read(), 10) == b""


async def test_perf_over_real_streams_drops_through_the_data_handler(make_host: MakeHost) -> None:
    """perf on real streams, where both the server's upload and the client's download go
    through the data handler: exact sizes both ways (more than a window each), and a server
    that answers more than asked is still caught."""
    a = await make_host()
    b = await make_host()
    perf.register(b)
    peer = await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}")
    for upload, download in ((0, 5), (3 << 20, 1), (700_000, 2 << 20)):
        result = await perf.perf(a, peer, upload, download)
        assert (result.upload_bytes, result.download_bytes) == (upload, download)

    async def generous(stream: Stream) -> None:
        wanted = int.from_bytes(await stream.readexactly(8), "big")
        while await stream.read():
            pass
        await stream.write(bytes(wanted + 10))
        await stream.close()

    b.set_stream_handler("/generous", generous)
    stream = await a.new_stream(peer, ["/generous"])
    with pytest.raises(perf.PerfShortRead):
        await perf.perf_stream(stream, 1000, 300_000)


async def test_data_handler_and_reads_interleave_without_loss_or_reordering(
    make_host: MakeHost,
) -> None:
    """Random writes (sizes across frame and window bounds) against a reader that installs a
    data handler, declines at random and reads in random sizes: the bytes taken by the handler
    and those read, in the order they came, are exactly the bytes written."""
    a = await make_host()
    b = await make_host()
    results: dict[int, asyncio.Future[bytes]] = {}

    async def serve(stream: Stream) -> None:
        assert isinstance(stream, YamuxStream)
        seed = (await stream.readexactly(1))[0]
        rng = random.Random(seed)
        got = bytearray()

        def handler(data: bytes) -> bool:
            if rng.random() < 0.3:
                return False  # decline: this payload and what follows go to read()
            got.extend(data)
            return True

        while True:
            if rng.random() < 0.7:
                stream.set_data_handler(handler)
            piece = await stream.read(rng.choice([-1, 1, 100, 5000, 70_000]))
            if not piece:
                break
            got.extend(piece)
            if rng.random() < 0.2:
                await asyncio.sleep(0)
        results[seed].set_result(bytes(got))

    b.set_stream_handler("/mix", serve)
    peer = await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}")
    for seed in range(12):
        rng = random.Random(1000 + seed)
        results[seed] = asyncio.get_running_loop().create_future()
        stream = await a.new_stream(peer, ["/mix"])
        await stream.write(bytes([seed]))
        sent = bytearray()
        for _ in range(rng.randint(1, 40)):
            piece = os.urandom(rng.choice([1, 32, 1000, 16 * 1024, 16 * 1024 + 1, 100_000]))
            sent += piece
            await stream.write(piece)
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        await stream.close()
        assert await asyncio.wait_for(results[seed], 20) == bytes(sent)

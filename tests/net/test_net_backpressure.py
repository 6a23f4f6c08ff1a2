"""A peer that stops reading its socket: our writers wait and our buffers stay bounded."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
from collections.abc import Awaitable, Callable

from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.host.host import BasicHost
from peerstack.host.interface import Stream
from peerstack.net.connection import MAX_OUT_BUFFERS, _OutBuffers
from peerstack.net.tcp import WRITE_HIGH_WATER
from peerstack.wire import multistream, noise, yamux

# The make_host fixture (conftest.py): start a host on 127.0.0.1, closed at teardown.
MakeHost = Callable[..., Awaitable[BasicHost]]
# The eventually fixture (conftest.py): poll a condition until it holds.
Eventually = Callable[..., Awaitable[None]]

BLAST = "/test/blast/1"
TOTAL = 256 << 20


async def test_tcp_backpressure_blocks_writer(make_host: MakeHost, eventually: Eventually) -> None:
    server = await make_host()
    progress = 0

    async def blast(stream: Stream) -> None:
        nonlocal progress
        block = bytes(1 << 20)
        while progress < TOTAL:
            await stream.write(block)
            progress += len(block)

    server.set_stream_handler(BLAST, blast)
    target = server.listen_addrs()[0].tcp_target()
    assert target is not None
    reader, writer = await asyncio.open_connection(*target)
    key = PrivateKey.generate()
    # Secure the connection by hand (early muxer negotiation: yamux right after Noise).
    ms = multistream.Initiator([noise.PROTOCOL_ID])
    writer.write(ms.data_to_send())
    while not ms.done:
        ms.receive_data(await reader.read(65536))
    hs = noise.NoiseHandshake(key, initiator=True, muxers=[yamux.PROTOCOL_ID])
    writer.write(hs.data_to_send())
    while not hs.complete:
        hs.receive_data(await reader.read(65536))
        writer.write(hs.data_to_send())
    transport = hs.transport()
    # Open stream 1 granting a 1 GiB send window (so yamux is no limit), propose BLAST.
    proposal = multistream.Initiator([BLAST]).data_to_send()
    frames = struct.pack(">BBHII", 0, yamux.TYPE_WINDOW_UPDATE, yamux.FLAG_SYN, 1, 1 << 30)
    frames += struct.pack(">BBHII", 0, yamux.TYPE_DATA, 0, 1, len(proposal)) + proposal
    writer.write(transport.encrypt(frames))
    # ... and never read again. The kernel buffers fill, then the transport's, then we wait.
    peer = PeerId.from_public_key(key.public_key)
    await eventually(lambda: (c := server.connection(peer)) is not None and c.write_paused)
    conn = server.connection(peer)
    assert conn is not None
    assert 0 < progress < TOTAL
    before = progress
    await asyncio.sleep(0.3)
    assert progress == before  # the writer is parked, not spinning or buffering
    # Bounded: the high-water mark plus at most one encrypted write batch on top.
    assert conn.write_buffer_size <= WRITE_HIGH_WATER + (2 << 20)
    writer.close()


async def test_reused_output_buffers_never_overwrite_unsent_bytes(make_host: MakeHost) -> None:
    """Bulk output is encrypted into reusable buffers the transport sends from. A reader that
    pauses lets the transport hold several of them; every byte must still arrive intact."""
    a = await make_host()
    b = await make_host()
    block = os.urandom(3 << 20)
    rounds = 8
    digest: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def slow_sink(stream: Stream) -> None:
        h = hashlib.sha256()
        await asyncio.sleep(0.3)  # the sender fills its socket and transport meanwhile
        n = 0
        while piece := await stream.read():
            h.update(piece)
            n += len(piece)
            if n % (4 << 20) < len(piece):
                await asyncio.sleep(0.05)
        digest.set_result(h.digest())

    b.set_stream_handler("/slow-sink", slow_sink)
    stream = await a.new_stream(
        await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}"), ["/slow-sink"]
    )
    expect = hashlib.sha256()
    for i in range(rounds):
        # A different byte pattern every round: a stale buffer would show.
        data = bytes([i]) + block[1:] if i % 2 else block[:-1] + bytes([i])
        expect.update(data)
        await stream.write(data)
    await stream.close()
    assert await digest == expect.digest()


def test_output_buffers_are_reused_only_once_sent() -> None:
    pool = _OutBuffers()
    first = pool.take(sent=0)
    assert first is not None
    pool.written(first, mark=1000)
    second = pool.take(sent=999)  # first still partly unsent
    assert second is not None
    assert second is not first
    pool.written(second, mark=2000)
    assert pool.take(sent=1000) is first  # fully sent: reused
    pool.give_back(first)
    held = [pool.take(sent=1000) for _ in range(MAX_OUT_BUFFERS - 1)]
    assert all(buf is not None for buf in held)
    for i, buf in enumerate(held):
        assert buf is not None
        pool.written(buf, mark=3000 + i)
    assert pool.take(sent=1000) is None  # all in flight: the caller copies instead
    assert pool.take(sent=2000) is second


async def test_buffers_are_given_back_when_the_streams_are_gone(
    make_host: MakeHost, eventually: Eventually
) -> None:
    a = await make_host()
    b = await make_host()

    async def sink(stream: Stream) -> None:
        while await stream.read():
            pass
        await stream.close()

    b.set_stream_handler("/sink", sink)
    peer = await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}")
    stream = await a.new_stream(peer, ["/sink"])
    for _ in range(4):
        await stream.write(os.urandom(1 << 20))
    await stream.close()
    assert await stream.read() == b""
    conn = a.connection(peer)
    assert conn is not None
    # The bulk transfer used reusable output buffers and Noise scratch; with no stream left
    # the connection holds none of them (an idle connection stays a few KB).
    await eventually(lambda: conn.num_streams == 0)
    assert conn._out_buffers is None
    assert conn._noise.scratch_size == 0

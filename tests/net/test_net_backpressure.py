"""A peer that stops reading its socket: our writers wait and our buffers stay bounded."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.host.host import BasicHost
from peerstack.host.interface import Stream
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

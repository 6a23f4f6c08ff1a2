"""Any bytes a peer sends after the handshake: the connection lives on or closes with a
``PeerError``; nothing else escapes and no stream is left hanging."""

from __future__ import annotations

import asyncio
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.errors import ConnectionClosed, PeerError
from peerstack.net.connection import Connection
from peerstack.net.stream import YamuxStream
from peerstack.net.tcp import TcpConnection, best_event_loop_policy
from peerstack.wire import noise, yamux

frame = st.builds(
    lambda version, ftype, flags, sid, length, payload: (
        struct.pack(">BBHII", version, ftype, flags, sid, length) + payload
    ),
    st.sampled_from([0, 0, 0, 1]),
    st.integers(0, 4),
    st.integers(0, 15),
    st.integers(0, 6),
    st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1)),
    st.binary(max_size=300),
)
chunks = st.lists(st.one_of(frame, st.binary(max_size=64)), max_size=6)


def noise_pair() -> tuple[noise.NoiseTransport, noise.NoiseTransport, PrivateKey]:
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    a = noise.NoiseHandshake(key_a, initiator=True)
    b = noise.NoiseHandshake(key_b, initiator=False)
    while not (a.complete and b.complete):
        b.receive_data(a.data_to_send())
        if not a.complete:
            a.receive_data(b.data_to_send())
    return a.transport(), b.transport(), key_a


async def feed(pieces: list[bytes], encrypted: bool) -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    _, tcp = await loop.create_connection(TcpConnection, sock=ours)
    peer_side, our_side, peer_key = noise_pair()
    conn = Connection(
        tcp,
        our_side,
        yamux.YamuxSession(is_client=False),
        remote_peer=PeerId.from_public_key(peer_key.public_key),
        remote_public_key=peer_key.public_key,
        outbound=False,
        max_inbound_streams=4,
    )
    streams: list[YamuxStream] = []
    conn.on_stream = streams.append
    conn.start()
    for piece in pieces:
        conn._feed_reads(peer_side.encrypt(piece) if encrypted and piece else piece)
    if conn.is_closed:
        assert isinstance(conn.error, PeerError | ConnectionClosed)
        for stream in streams:
            # Every stream either ended cleanly before the failure or was reset by it.
            assert stream.is_reset or stream.eof_received
    else:
        assert conn.error is None
        assert conn.num_streams <= 4
        for stream in streams:
            assert stream.buffered <= conn.session.recv_window(stream.stream_id) or (
                stream.is_reset
            )
    await conn.close()
    theirs.close()


def test_any_bytes_after_the_handshake() -> None:
    loop = best_event_loop_policy().new_event_loop()
    try:

        @settings(max_examples=60, deadline=None)
        @given(chunks, st.booleans())
        def check(pieces: list[bytes], encrypted: bool) -> None:
            loop.run_until_complete(feed(pieces, encrypted))

        check()
    finally:
        loop.close()

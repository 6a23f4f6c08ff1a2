"""Keepalive: live peers stay connected and get an RTT; a silent peer is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.errors import ConnectionClosed
from peerstack.host.host import BasicHost
from peerstack.wire import multistream, noise, yamux

# The eventually fixture (conftest.py): poll a condition until it holds.
Eventually = Callable[..., Awaitable[None]]

FAST = yamux.YamuxConfig(keepalive_interval=0.1, keepalive_timeout=0.3)


def fast_host() -> BasicHost:
    return BasicHost(
        PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"], yamux_config=FAST
    )


async def test_live_peers_stay_connected_and_measure_rtt() -> None:
    async with fast_host() as a, fast_host() as b:
        await a.dial(f"{b.listen_addrs()[0]}/p2p/{b.peer_id}")
        await asyncio.sleep(1.0)  # several keepalive intervals, no streams
        assert a.connected_peers() == [b.peer_id]
        conn = a.connection(b.peer_id)
        assert conn is not None
        assert conn.rtt is not None
        latency = a.peerstore.latency(b.peer_id)
        assert latency is not None
        assert latency >= 0


async def test_silent_peer_is_dropped(eventually: Eventually) -> None:
    async with fast_host() as host:
        target = host.listen_addrs()[0].tcp_target()
        assert target is not None
        reader, writer = await asyncio.open_connection(*target)
        key = PrivateKey.generate()
        ms = multistream.Initiator([noise.PROTOCOL_ID])
        writer.write(ms.data_to_send())
        while not ms.done:
            ms.receive_data(await reader.read(65536))
        hs = noise.NoiseHandshake(key, initiator=True, muxers=[yamux.PROTOCOL_ID])
        writer.write(hs.data_to_send())
        while not hs.complete:
            hs.receive_data(await reader.read(65536))
            writer.write(hs.data_to_send())
        peer = PeerId.from_public_key(key.public_key)
        await eventually(lambda: host.connection(peer) is not None)
        conn = host.connection(peer)
        assert conn is not None
        # We read (so TCP flows) but never answer the host's pings.
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass
        assert conn.is_closed
        assert isinstance(conn.error, ConnectionClosed)
        assert "keepalive" in str(conn.error)
        assert host.connected_peers() == []
        writer.close()

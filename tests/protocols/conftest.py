"""The ``stream_pair`` fixture: protocol handlers tested on ``peerstack.host.memstream`` pairs.

Each direction is bounded: a writer waits while the peer holds ``capacity`` unread bytes,
which is how a real stream's flow-control window behaves.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.host.interface import Stream
from peerstack.host.memstream import stream_pair as mem_stream_pair

StreamPair = Callable[..., tuple[Stream, Stream]]


@pytest.fixture
def stream_pair() -> StreamPair:
    """Return a factory: ``stream_pair(protocol, capacity=...) -> (client_end, server_end)``."""

    def make(protocol: str = "/test", capacity: int = 256 * 1024) -> tuple[Stream, Stream]:
        a_id = PeerId.from_public_key(PrivateKey.generate().public_key)
        b_id = PeerId.from_public_key(PrivateKey.generate().public_key)
        return mem_stream_pair(
            protocol,
            a_id,
            b_id,
            dialer_addr=Multiaddr("/ip4/127.0.0.1/tcp/1111"),
            listener_addr=Multiaddr("/ip4/127.0.0.1/tcp/2222"),
            capacity=capacity,
        )

    return make

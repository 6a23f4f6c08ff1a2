"""The connection's errors make their text (naming the peer) only when it is read."""

from __future__ import annotations

import pytest

from peerstack.core.identity import PrivateKey
from peerstack.errors import ConnectionClosed, StreamReset
from peerstack.net.stream import LazyConnectionClosed, StreamConnectionClosed
from tests.net.test_net_upgrade import start_pair, upgraded_pair


class Counted:
    """A value that counts how often its text was made."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.made = 0

    def __str__(self) -> str:
        self.made += 1
        return self.text


def test_text_is_made_when_read() -> None:
    peer = Counted("12D3KooWpeer")
    err = StreamConnectionClosed.later("connection to {} closed: {}", peer, 7)
    assert peer.made == 0
    assert str(err) == "connection to 12D3KooWpeer closed: 7"
    assert repr(err) == "StreamConnectionClosed('connection to 12D3KooWpeer closed: 7')"
    assert isinstance(err, StreamReset)
    assert isinstance(err, ConnectionClosed)
    assert peer.made == 2
    # made the ordinary way, they are ordinary exceptions
    plain = LazyConnectionClosed("gone")
    assert str(plain) == "gone"
    assert repr(plain) == "LazyConnectionClosed('gone')"
    assert isinstance(plain, ConnectionClosed)


async def test_a_close_makes_no_peer_text() -> None:
    """The peer closing TCP under an open stream: the connection's error and the stream's
    name the peer, but the PeerId's base58 text is made only once they are read."""
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    async with upgraded_pair(key_a, key_b) as (_, raw_b, conn_a, conn_b):
        inbound = start_pair(conn_a, conn_b)
        stream = conn_a.open_stream()
        await stream.write(b"hello")
        peer_stream = await inbound.get()
        assert await peer_stream.readexactly(5) == b"hello"
        conn_a._tcp.close()  # no GoAway: b sees the TCP connection end
        await conn_b.wait_closed()
        peer = conn_b.remote_peer
        assert peer._str is None  # nobody made the text of the peer's id
        error = conn_b.error
        assert isinstance(error, ConnectionClosed)
        # "<peer> closed the connection" or "connection to <peer> lost: <reset>"
        assert str(peer) in str(error)
        with pytest.raises(StreamConnectionClosed) as info:
            await peer_stream.read(10)
        assert str(info.value) == f"connection to {peer} closed: {error}"
        assert info.value.__cause__ is error
        assert raw_b.is_closed

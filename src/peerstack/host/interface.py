"""The interface services are written against.

The DHT, bitswap, pubsub and tasks take an object of type ``Host`` and talk through
``Stream`` objects. The real implementation runs on TCP + Noise + Yamux (``peerstack.host.host``);
the simulated one (``sim/``) runs thousands of nodes in one process on in-memory streams with a
virtual clock. Services must not import anything below this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from peerstack.core import varint
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import DecodeError, LimitExceeded, StreamClosed


@runtime_checkable
class Stream(Protocol):
    """A reliable, ordered, bidirectional byte stream to one peer, speaking one protocol."""

    @property
    def protocol(self) -> str: ...

    @property
    def remote_peer(self) -> PeerId: ...

    @property
    def remote_addr(self) -> Multiaddr | None:
        """The remote address of the connection under this stream (for identify's observed addr)."""
        ...

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``-1``: whatever is buffered, at least one byte).

        Returns ``b""`` once the remote side has closed its write side and all data was read.
        Raises ``StreamReset`` when the stream was reset.
        """
        ...

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; raises ``StreamClosed`` if the stream ends first."""
        ...

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; waits while the peer's window or our buffers are full (backpressure)."""
        ...

    async def close(self) -> None:
        """Close our write side (half-close); reading goes on until the peer closes too."""
        ...

    def reset(self) -> None:
        """Abort the stream both ways at once."""
        ...


StreamHandler = Callable[[Stream], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """A first connection to ``peer`` is up (secured and multiplexed)."""

    peer: PeerId
    remote_addr: Multiaddr | None
    outbound: bool


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """The last connection to ``peer`` closed."""

    peer: PeerId


HostEvent = PeerConnected | PeerDisconnected
HostListener = Callable[[HostEvent], None]


class Host(Protocol):
    """What a service needs from the node under it."""

    @property
    def peer_id(self) -> PeerId: ...

    def listen_addrs(self) -> list[Multiaddr]: ...

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None: ...

    def remove_stream_handler(self, protocol: str) -> None: ...

    async def new_stream(self, peer: PeerId, protocols: Sequence[str]) -> Stream:
        """Open a stream to ``peer`` (dialling it if needed) and negotiate one of ``protocols``."""
        ...

    async def connect(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> None:
        """Make sure a connection to ``peer`` exists, dialling ``addrs`` or known addresses."""
        ...

    def connected_peers(self) -> list[PeerId]: ...

    def peer_addrs(self, peer: PeerId) -> list[Multiaddr]:
        """Addresses we know for ``peer`` (from identify, the DHT, or configuration)."""
        ...

    def add_peer_addrs(self, peer: PeerId, addrs: Sequence[Multiaddr], ttl: float) -> None: ...

    def add_listener(self, listener: HostListener) -> Callable[[], None]:
        """Call ``listener`` on every ``HostEvent``; returns a function that unsubscribes."""
        ...


# Helpers every request/response protocol needs: uvarint-length-prefixed messages.


async def read_length_prefix(stream: Stream, max_size: int) -> int | None:
    """Read the ``uvarint(len)`` in front of a message; ``None`` on a clean end of stream.

    Raises ``LimitExceeded`` when the announced length is over ``max_size`` (before any of the
    body is read, so a peer cannot make us buffer it), ``DecodeError`` for a prefix longer than
    a uvarint may be and ``StreamClosed`` if the stream ends inside the prefix.
    """
    prefix = bytearray()
    while True:
        b = await stream.read(1)
        if not b:
            if prefix:
                raise StreamClosed("stream ended inside a length prefix")
            return None
        prefix += b
        if b[0] < 0x80:
            break
        if len(prefix) >= varint.MAX_VARINT_BYTES:
            raise DecodeError("length prefix too long")
    length, _ = varint.decode(prefix)
    if length > max_size:
        raise LimitExceeded(f"message of {length} bytes exceeds the limit of {max_size}")
    return length


async def read_length_prefixed(stream: Stream, max_size: int) -> bytes | None:
    """Read one ``uvarint(len) || bytes`` message; ``None`` on a clean end of stream.

    Raises as ``read_length_prefix`` does, and ``StreamClosed`` if the stream ends mid-message.
    """
    length = await read_length_prefix(stream, max_size)
    if length is None:
        return None
    if length == 0:
        return b""
    return await stream.readexactly(length)


async def write_length_prefixed(stream: Stream, data: bytes) -> None:
    await stream.write(varint.encode(len(data)) + data)

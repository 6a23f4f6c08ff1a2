"""The client side of ``/ipfs/kad/1.0.0``: one request, one answer, on reusable streams.

Streams to a peer are kept (up to ``max_cached_streams``) and reused for later requests, as
go-libp2p-kad-dht does, since the protocol allows several requests per stream; a stream busy
with another request is never shared or evicted. Every request runs under ``rpc_timeout``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from peerstack.core.peer_id import PeerId
from peerstack.dht.config import DhtConfig
from peerstack.dht.messages import PROTOCOL_ID, KadMessage, MessageType, decode, encode
from peerstack.errors import ConnectionClosed, DecodeError, PeerstackError, StreamError
from peerstack.host.interface import Host, Stream, read_length_prefixed, write_length_prefixed

# What a failed request may raise; anything else is a bug and propagates.
RPC_ERRORS = (
    PeerstackError,  # PeerError, StreamError, DialError, NegotiationError, ConnectionClosed...
    TimeoutError,
    OSError,
)


@dataclass(slots=True)
class DhtCounters:
    rpcs_sent: int = 0
    rpcs_failed: int = 0
    requests_served: int = 0
    requests_refused: int = 0
    streams_refused: int = 0
    checks_skipped: int = 0
    # FIND_NODE probes of newly connected peers (the fallback when identify cannot tell).
    probes: int = 0
    # Peers offered to the table because identify listed the kad protocol, and peers dropped
    # because identify (or a push) no longer listed it.
    identify_admitted: int = 0
    identify_removed: int = 0
    # Requests not served because our own store failed (a locked or broken database).
    store_errors: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class _CachedStream:
    __slots__ = ("lock", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.lock = asyncio.Lock()


class KadClient:
    """Sends kad requests from ``host`` and returns checked, decoded answers."""

    def __init__(self, host: Host, config: DhtConfig, counters: DhtCounters) -> None:
        self.host = host
        self.config = config
        self.counters = counters
        self._streams: dict[PeerId, _CachedStream] = {}

    def forget(self, peer: PeerId) -> None:
        """Drop the cached stream to ``peer`` (it failed)."""
        cached = self._streams.pop(peer, None)
        if cached is not None:
            cached.stream.reset()

    def close(self) -> None:
        for cached in self._streams.values():
            cached.stream.reset()
        self._streams.clear()

    async def request(
        self, peer: PeerId, msg: KadMessage, *, expect_response: bool = True
    ) -> KadMessage | None:
        """Send ``msg`` to ``peer`` and return its answer (checked and decoded)."""
        self.counters.rpcs_sent += 1
        name = msg.type.name
        self.counters.by_type[name] = self.counters.by_type.get(name, 0) + 1
        try:
            async with asyncio.timeout(self.config.rpc_timeout):
                return await self._request_inner(peer, msg, expect_response)
        except BaseException:
            self.counters.rpcs_failed += 1
            raise

    async def _request_inner(
        self, peer: PeerId, msg: KadMessage, expect_response: bool
    ) -> KadMessage | None:
        data = encode(msg)
        cached = self._streams.get(peer)
        if cached is not None and not cached.lock.locked():
            async with cached.lock:
                try:
                    return await self._exchange(cached.stream, data, msg.type, expect_response)
                except (StreamError, ConnectionClosed, OSError):
                    # A stream the peer closed while idle: forget it and use a fresh one.
                    if self._streams.get(peer) is cached:
                        del self._streams[peer]
                    cached.stream.reset()
                except BaseException:
                    if self._streams.get(peer) is cached:
                        del self._streams[peer]
                    cached.stream.reset()
                    raise
        stream = await self.host.new_stream(peer, [PROTOCOL_ID])
        try:
            reply = await self._exchange(stream, data, msg.type, expect_response)
        except BaseException:
            stream.reset()
            raise
        if self._cache_stream(peer, stream):
            return reply
        await stream.close()
        return reply

    def _cache_stream(self, peer: PeerId, stream: Stream) -> bool:
        """Keep ``stream`` for the next request to ``peer`` if the pool has room."""
        limit = self.config.max_cached_streams
        if limit <= 0 or peer in self._streams:
            return False
        if len(self._streams) >= limit:
            # Evict the oldest idle stream; one in use by another request is left alone.
            idle = next((p for p, c in self._streams.items() if not c.lock.locked()), None)
            if idle is None:
                return False
            self._streams.pop(idle).stream.reset()
        self._streams[peer] = _CachedStream(stream)
        return True

    async def _exchange(
        self, stream: Stream, data: bytes, mtype: MessageType, expect_response: bool
    ) -> KadMessage | None:
        await write_length_prefixed(stream, data)
        if not expect_response:
            return None
        raw = await read_length_prefixed(stream, self.config.message_limits.max_message_size)
        if raw is None:
            raise ConnectionClosed("peer closed the stream instead of answering")
        reply = decode(raw, self.config.message_limits)
        if reply.type is not mtype:
            raise DecodeError(f"answer of type {reply.type.name} to a {mtype.name}")
        return reply

"""Helpers for the content tests: deterministic bytes and an in-memory host.

A module with its own name (not ``conftest``) so that tests can import it without clashing
with the other test folders' ``conftest`` modules.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence

from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import DialError, NegotiationError, StreamClosed, StreamReset
from peerstack.host.interface import (
    HostEvent,
    HostListener,
    PeerConnected,
    PeerDisconnected,
    StreamHandler,
)


def pattern(n: int) -> bytes:
    """The byte pattern of helia_vectors.mjs: sha256(uint64_be(0)) || sha256(uint64_be(1)) || ..."""
    blocks = (hashlib.sha256(j.to_bytes(8, "big")).digest() for j in range((n + 31) // 32))
    return b"".join(blocks)[:n]


# -- an in-memory host: real Stream semantics (half-close, reset, backpressure), no sockets ----

STREAM_BUFFER = 1024 * 1024


class MemStream:
    """One end of an in-memory stream pair."""

    def __init__(self, protocol: str, remote: PeerId) -> None:
        self._protocol = protocol
        self._remote = remote
        self._buf = bytearray()
        self._eof = False
        self._reset = False
        self._write_closed = False
        self._changed = asyncio.Event()
        self.other: MemStream | None = None

    @property
    def protocol(self) -> str:
        return self._protocol

    @property
    def remote_peer(self) -> PeerId:
        return self._remote

    @property
    def remote_addr(self) -> Multiaddr | None:
        return None

    def _notify(self) -> None:
        self._changed.set()

    async def _wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def read(self, n: int = -1) -> bytes:
        while not self._buf and not self._eof and not self._reset:
            await self._wait()
        if self._reset:
            raise StreamReset("stream reset")
        if not self._buf:
            return b""
        take = len(self._buf) if n < 0 else min(n, len(self._buf))
        out = bytes(self._buf[:take])
        del self._buf[:take]
        if self.other is not None:
            self.other._notify()  # room for the writer
        return out

    async def readexactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            piece = await self.read(n - len(out))
            if not piece:
                raise StreamClosed("stream ended early")
            out += piece
        return bytes(out)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        other = self.other
        assert other is not None
        while True:
            if self._reset:
                raise StreamReset("stream reset")
            if self._write_closed:
                raise StreamClosed("write side closed")
            if len(other._buf) < STREAM_BUFFER:
                break
            await self._wait()
        other._buf += data
        other._notify()

    async def close(self) -> None:
        self._write_closed = True
        if self.other is not None:
            self.other._eof = True
            self.other._notify()

    def reset(self) -> None:
        for end in (self, self.other):
            if end is not None:
                end._reset = True
                end._notify()


async def _run(handler: StreamHandler, stream: MemStream) -> None:
    await handler(stream)


class MemNetwork:
    def __init__(self) -> None:
        self.hosts: dict[PeerId, MemHost] = {}

    def add_host(self) -> MemHost:
        host = MemHost(self, PeerId.from_public_key(PrivateKey.generate().public_key))
        self.hosts[host.peer_id] = host
        return host


class MemHost:
    """Implements ``peerstack.host.interface.Host`` over ``MemStream`` pairs."""

    def __init__(self, net: MemNetwork, peer_id: PeerId) -> None:
        self.net = net
        self._peer_id = peer_id
        self.handlers: dict[str, StreamHandler] = {}
        self.connected: set[PeerId] = set()
        self.listeners: list[HostListener] = []
        self.streams: list[MemStream] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.addrs: dict[PeerId, list[Multiaddr]] = {}

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    def listen_addrs(self) -> list[Multiaddr]:
        return []

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self.handlers[protocol] = handler

    def remove_stream_handler(self, protocol: str) -> None:
        self.handlers.pop(protocol, None)

    def _emit(self, event: HostEvent) -> None:
        for listener in list(self.listeners):
            listener(event)

    async def connect(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> None:
        other = self.net.hosts.get(peer)
        if other is None:
            raise DialError(f"no host {peer}")
        if peer in self.connected:
            return
        self.connected.add(peer)
        other.connected.add(self.peer_id)
        self._emit(PeerConnected(peer, None, True))
        other._emit(PeerConnected(self.peer_id, None, False))

    async def disconnect(self, peer: PeerId) -> None:
        other = self.net.hosts.get(peer)
        if peer not in self.connected or other is None:
            return
        self.connected.discard(peer)
        other.connected.discard(self.peer_id)
        for s in [*self.streams, *other.streams]:
            if s.remote_peer in (peer, self.peer_id):
                s.reset()
        self._emit(PeerDisconnected(peer))
        other._emit(PeerDisconnected(self.peer_id))

    async def new_stream(self, peer: PeerId, protocols: Sequence[str]) -> MemStream:
        other = self.net.hosts.get(peer)
        if other is None:
            raise DialError(f"no host {peer}")
        await self.connect(peer)
        proto = next((p for p in protocols if p in other.handlers), None)
        if proto is None:
            raise NegotiationError(f"{peer} speaks none of {list(protocols)}")
        ours, theirs = MemStream(proto, peer), MemStream(proto, self.peer_id)
        ours.other, theirs.other = theirs, ours
        self.streams.append(ours)
        other.streams.append(theirs)
        task = asyncio.get_running_loop().create_task(_run(other.handlers[proto], theirs))
        other.tasks.add(task)
        task.add_done_callback(other.tasks.discard)
        return ours

    def connected_peers(self) -> list[PeerId]:
        return sorted(self.connected)

    def peer_addrs(self, peer: PeerId) -> list[Multiaddr]:
        return self.addrs.get(peer, [])

    def add_peer_addrs(self, peer: PeerId, addrs: Sequence[Multiaddr], ttl: float) -> None:
        self.addrs.setdefault(peer, []).extend(addrs)

    def add_listener(self, listener: HostListener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

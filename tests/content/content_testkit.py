"""Helpers for the content tests: deterministic bytes and an in-memory host.

A module with its own name (not ``conftest``) so that tests can import it without clashing
with the other test folders' ``conftest`` modules.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from peerstack.content.bitswap.progress import Progress
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import DialError, NegotiationError
from peerstack.host.interface import (
    HostEvent,
    HostListener,
    PeerConnected,
    PeerDisconnected,
    StreamHandler,
)
from peerstack.host.memstream import MemStream, stream_pair


def page_cached(path: Path, offset: int, size: int) -> bool:
    """Whether the page cache holds ``size`` bytes of ``path`` at ``offset`` (read with
    RWF_NOWAIT: refused when any of it would come from the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(size)], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def pattern(n: int) -> bytes:
    """The byte pattern of helia_vectors.mjs: sha256(uint64_be(0)) || sha256(uint64_be(1)) || ..."""
    blocks = (hashlib.sha256(j.to_bytes(8, "big")).digest() for j in range((n + 31) // 32))
    return b"".join(blocks)[:n]


async def interrupt_after(
    blocks: int, start: Callable[[Callable[[Progress], None]], Awaitable[Any]]
) -> None:
    """Run ``start(progress)`` (a fetch) and cancel it once ``blocks`` blocks are done."""
    enough = asyncio.Event()

    def watch(p: Progress) -> None:
        if p.blocks_done >= blocks:
            enough.set()

    task = asyncio.ensure_future(start(watch))
    await asyncio.wait_for(enough.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- an in-memory host over peerstack.host.memstream pairs (real Stream semantics) ----------

STREAM_BUFFER = 1024 * 1024


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
        ours, theirs = stream_pair(proto, self.peer_id, peer, capacity=STREAM_BUFFER)
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

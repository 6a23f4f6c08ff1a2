"""An in-memory ``Stream`` pair, so protocol handlers can be tested without a host.

Each direction is a bounded byte pipe: a writer waits while the pipe holds ``capacity`` bytes,
which is how a real stream's flow-control window behaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import StreamClosed, StreamReset
from peerstack.host.interface import Stream


class _Pipe:
    def __init__(self, capacity: int) -> None:
        self.buf = bytearray()
        self.capacity = capacity
        self.eof = False
        self.reset = False
        self.cond = asyncio.Condition()


class MemStream:
    """One end of an in-memory stream pair."""

    def __init__(
        self, inbound: _Pipe, outbound: _Pipe, remote: PeerId, protocol: str, addr: Multiaddr
    ) -> None:
        self._in = inbound
        self._out = outbound
        self._remote = remote
        self._protocol = protocol
        self._addr = addr

    @property
    def protocol(self) -> str:
        return self._protocol

    @property
    def remote_peer(self) -> PeerId:
        return self._remote

    @property
    def remote_addr(self) -> Multiaddr | None:
        return self._addr

    async def read(self, n: int = -1) -> bytes:
        pipe = self._in
        async with pipe.cond:
            await pipe.cond.wait_for(lambda: bool(pipe.buf) or pipe.eof or pipe.reset)
            if pipe.reset:
                raise StreamReset("stream reset")
            if not pipe.buf:
                return b""
            take = len(pipe.buf) if n < 0 else min(n, len(pipe.buf))
            data = bytes(pipe.buf[:take])
            del pipe.buf[:take]
            pipe.cond.notify_all()
            return data

    async def readexactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise StreamClosed("stream ended early")
            out += chunk
        return bytes(out)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        pipe = self._out
        view = memoryview(data)
        while view:
            async with pipe.cond:
                await pipe.cond.wait_for(
                    lambda: len(pipe.buf) < pipe.capacity or pipe.reset or pipe.eof
                )
                if pipe.reset:
                    raise StreamReset("stream reset")
                if pipe.eof:
                    raise StreamClosed("write side closed")
                room = pipe.capacity - len(pipe.buf)
                pipe.buf += view[:room]
                view = view[room:]
                pipe.cond.notify_all()

    async def close(self) -> None:
        async with self._out.cond:
            self._out.eof = True
            self._out.cond.notify_all()

    def reset(self) -> None:
        for pipe in (self._in, self._out):
            pipe.reset = True

            async def wake(p: _Pipe = pipe) -> None:
                async with p.cond:
                    p.cond.notify_all()

            asyncio.get_running_loop().create_task(wake())


StreamPair = Callable[..., tuple[Stream, Stream]]


@pytest.fixture
def stream_pair() -> StreamPair:
    """Return a factory: ``stream_pair(protocol, capacity=...) -> (client_end, server_end)``."""

    def make(protocol: str = "/test", capacity: int = 256 * 1024) -> tuple[Stream, Stream]:
        a_id = PeerId.from_public_key(PrivateKey.generate().public_key)
        b_id = PeerId.from_public_key(PrivateKey.generate().public_key)
        ab, ba = _Pipe(capacity), _Pipe(capacity)
        a_addr = Multiaddr("/ip4/127.0.0.1/tcp/1111")
        b_addr = Multiaddr("/ip4/127.0.0.1/tcp/2222")
        client = MemStream(ba, ab, b_id, protocol, b_addr)
        server = MemStream(ab, ba, a_id, protocol, a_addr)
        return client, server

    return make

"""A simulated network of hosts: in-memory streams, a virtual clock, latency, dead nodes.

Services written against ``peerstack.host.interface`` run here unchanged, thousands of nodes
in one process:

* ``VirtualClockLoop`` is an asyncio loop whose ``time()`` is virtual: when nothing is ready to
  run it jumps straight to the next timer, so ``asyncio.sleep(60)`` and every timeout cost no
  real time. Only timers and stream deliveries exist; there are no sockets and no threads.
* ``SimNetwork`` holds the hosts. Each host has an access delay; a message between two hosts
  arrives after the sum of theirs (constant per pair, so streams stay in order).
* ``kill(peer)`` removes a node abruptly: dials to it hang for ``dial_timeout`` and then fail,
  and nothing it sends (or is sent) is delivered any more, like a machine that lost power.

Buffers here are unbounded on purpose: the simulator is our own harness, and the services
under test apply their own read limits (``read_length_prefixed``).
"""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import (
    DialError,
    NegotiationError,
    PeerIdMismatch,
    StreamClosed,
    StreamReset,
)
from peerstack.host.interface import (
    HostEvent,
    HostListener,
    PeerConnected,
    Stream,
    StreamHandler,
)

T = TypeVar("T")

#: Addresses kept per peer: the default of ``peerstack.host.peerstore.Peerstore`` (the simulator
#: may not import it, it stands where the services stand).
MAX_ADDRS_PER_PEER = 32


class SimulationDeadlock(RuntimeError):
    """Everything waits and no timer is pending: the simulated program can never progress."""


class _VirtualSelector(selectors.BaseSelector):
    """A selector that never has I/O: ``select(timeout)`` advances the virtual clock instead."""

    def __init__(self) -> None:
        self.now = 0.0
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, 0, events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationDeadlock("nothing ready and no timer scheduled")
        if timeout > 0:
            self.now += timeout
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module docstring)."""

    def __init__(self) -> None:
        self._vselector = _VirtualSelector()
        super().__init__(self._vselector)

    def time(self) -> float:
        return self._vselector.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh ``VirtualClockLoop``."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


@dataclass(slots=True)
class NetCounters:
    streams: int = 0
    writes: int = 0
    bytes: int = 0
    dials_to_dead: int = 0


class _Pipe:
    """One direction of a stream: what the reader has received, and its end state."""

    __slots__ = ("buf", "eof", "last_t", "reset", "waiter")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.waiter: asyncio.Future[None] | None = None
        self.last_t = 0.0

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class SimStream:
    """One end of an in-memory stream."""

    def __init__(
        self,
        net: SimNetwork,
        local: SimHost,
        remote: SimHost,
        protocol: str,
        *,
        inbound: _Pipe,
        outbound: _Pipe,
        delay: float,
    ) -> None:
        self._net = net
        self._local = local
        self._remote = remote
        self._protocol = protocol
        self._in = inbound
        self._out = outbound
        self._delay = delay
        self._write_closed = False

    @property
    def protocol(self) -> str:
        return self._protocol

    @property
    def remote_peer(self) -> PeerId:
        return self._remote.peer_id

    @property
    def remote_addr(self) -> Multiaddr | None:
        return self._remote.addr

    async def read(self, n: int = -1) -> bytes:
        pipe = self._in
        while not pipe.buf and not pipe.eof and not pipe.reset:
            pipe.waiter = asyncio.get_running_loop().create_future()
            await pipe.waiter
            pipe.waiter = None
        if pipe.reset:
            raise StreamReset("stream reset")
        if not pipe.buf:
            return b""
        if n < 0 or n >= len(pipe.buf):
            data = bytes(pipe.buf)
            pipe.buf.clear()
        else:
            data = bytes(pipe.buf[:n])
            del pipe.buf[:n]
        return data

    async def readexactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise StreamClosed(f"stream ended after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def _deliver(self, kind: int, data: bytes) -> None:
        # kind: 0 data, 1 end of stream, 2 reset. Nothing reaches or leaves a dead host.
        if not (self._local.alive and self._remote.alive):
            return
        pipe = self._out
        if pipe.reset:
            return
        if kind == 0:
            pipe.buf += data
        elif kind == 1:
            pipe.eof = True
        else:
            pipe.reset = True
        pipe.wake()

    def _send(self, kind: int, data: bytes = b"") -> None:
        loop = asyncio.get_running_loop()
        # Strictly increasing delivery times keep the stream in order whatever the heap does.
        t = max(loop.time() + self._delay, self._out.last_t + 1e-9)
        self._out.last_t = t
        loop.call_at(t, self._deliver, kind, data)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._in.reset:
            raise StreamReset("stream reset")
        if self._write_closed:
            raise StreamClosed("write side closed")
        payload = bytes(data)
        self._net.counters.writes += 1
        self._net.counters.bytes += len(payload)
        self._send(0, payload)

    async def close(self) -> None:
        if not self._write_closed and not self._in.reset:
            self._write_closed = True
            self._send(1)

    def reset(self) -> None:
        if self._in.reset:
            return
        self._in.reset = True
        self._in.wake()
        self._write_closed = True
        self._send(2)


class SimHost:
    """A node of the simulated network; implements ``peerstack.host.interface.Host``."""

    def __init__(self, net: SimNetwork, peer_id: PeerId, addr: Multiaddr, delay: float) -> None:
        self.net = net
        self._peer_id = peer_id
        self.addr = addr
        self._addrs = [addr]
        self.delay = delay
        self.alive = True
        self._handlers: dict[str, StreamHandler] = {}
        self._listeners: list[HostListener] = []
        self._connected: set[PeerId] = set()
        self._extra_addrs: dict[PeerId, list[Multiaddr]] = {}
        # Handler tasks of the inbound streams this host opened on others.
        self._handler_tasks: set[asyncio.Task[None]] = set()

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    def listen_addrs(self) -> list[Multiaddr]:
        return list(self._addrs)

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler

    def remove_stream_handler(self, protocol: str) -> None:
        self._handlers.pop(protocol, None)

    def handles(self, protocol: str) -> bool:
        return protocol in self._handlers

    async def new_stream(self, peer: PeerId, protocols: Sequence[str]) -> Stream:
        net = self.net
        if not self.alive:
            raise DialError("this simulated host is dead")
        target = net.hosts.get(peer)
        if target is None or not target.alive:
            net.counters.dials_to_dead += 1
            await asyncio.sleep(net.dial_timeout)
            raise DialError(f"no answer from {peer}")
        rtt = 2 * (self.delay + target.delay)
        # Negotiation costs a round trip (multistream-select, pipelined with the request).
        await asyncio.sleep(rtt)
        if not (self.alive and target.alive):
            raise DialError(f"{peer} went away")
        chosen = next((p for p in protocols if p in target._handlers), None)
        if chosen is None:
            raise NegotiationError(f"{peer} speaks none of {list(protocols)}")
        handler = target._handlers[chosen]
        a_to_b, b_to_a = _Pipe(), _Pipe()
        delay = self.delay + target.delay
        ours = SimStream(net, self, target, chosen, inbound=b_to_a, outbound=a_to_b, delay=delay)
        theirs = SimStream(net, target, self, chosen, inbound=a_to_b, outbound=b_to_a, delay=delay)
        net.counters.streams += 1
        self._note_connected(target, outbound=True)
        target._note_connected(self, outbound=False)
        # Keep a reference until the handler ends: the loop holds tasks only weakly, so an
        # unreferenced one may be garbage-collected mid-run.
        task = asyncio.get_running_loop().create_task(_serve(handler, theirs))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)
        return ours

    def _note_connected(self, other: SimHost, outbound: bool) -> None:
        if other.peer_id in self._connected:
            return
        self._connected.add(other.peer_id)
        if self._listeners:
            event = PeerConnected(other.peer_id, other.addr, outbound)
            for listener in list(self._listeners):
                listener(event)

    async def connect(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> None:
        target = self.net.hosts.get(peer)
        if target is None or not target.alive or not self.alive:
            await asyncio.sleep(self.net.dial_timeout)
            raise DialError(f"no answer from {peer}")
        await asyncio.sleep(2 * (self.delay + target.delay))
        self._note_connected(target, outbound=True)
        target._note_connected(self, outbound=False)

    def connected_peers(self) -> list[PeerId]:
        return [p for p in self._connected if self.net.is_alive(p)]

    def peer_addrs(self, peer: PeerId) -> list[Multiaddr]:
        host = self.net.hosts.get(peer)
        if host is not None:
            return host._addrs
        return list(self._extra_addrs.get(peer, ()))

    def add_peer_addrs(self, peer: PeerId, addrs: Sequence[Multiaddr], ttl: float) -> None:
        """The real peerstore's rules, so simulated services meet the same errors.

        An address whose ``/p2p/`` names another peer raises ``PeerIdMismatch`` (nothing kept);
        of more than ``MAX_ADDRS_PER_PEER`` unique addresses the first ones are kept. The
        simulated network already knows every host's address; only strangers are stored.
        """
        cleaned: list[Multiaddr] = []
        for addr in addrs:
            bare, pid = addr.decapsulate_p2p()
            if pid is not None and PeerId.from_string(pid) != peer:
                raise PeerIdMismatch(f"address {addr} names another peer than {peer}")
            cleaned.append(bare)
        if peer not in self.net.hosts and len(self._extra_addrs) < 10_000:
            self._extra_addrs[peer] = list(dict.fromkeys(cleaned))[:MAX_ADDRS_PER_PEER]

    def add_listener(self, listener: HostListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: HostEvent) -> None:
        for listener in list(self._listeners):
            listener(event)


async def _serve(handler: StreamHandler, stream: SimStream) -> None:
    await handler(stream)


class SimNetwork:
    """The set of simulated hosts and the links between them."""

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        min_delay: float = 0.005,
        max_delay: float = 0.050,
        dial_timeout: float = 1.0,
    ) -> None:
        self.rng = rng or random.Random(0)
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.dial_timeout = dial_timeout
        self.hosts: dict[PeerId, SimHost] = {}
        self.counters = NetCounters()
        self._used_ips: set[int] = set()

    def random_peer_id(self) -> PeerId:
        """A PeerId that needs no key generation (a sha2-256 multihash of random bytes)."""
        return PeerId(b"\x12\x20" + self.rng.randbytes(32))

    def _random_addr(self) -> Multiaddr:
        while True:
            ip = 0x0A000000 | self.rng.randrange(1, 1 << 24)  # 10.0.0.0/8
            if ip not in self._used_ips:
                self._used_ips.add(ip)
                break
        text = f"/ip4/{ip >> 24}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}/tcp/4001"
        return Multiaddr(text)

    def add_host(self, peer_id: PeerId | None = None, addr: Multiaddr | None = None) -> SimHost:
        pid = peer_id or self.random_peer_id()
        if pid in self.hosts:
            raise ValueError(f"{pid} is already in the network")
        delay = self.rng.uniform(self.min_delay, self.max_delay)
        host = SimHost(self, pid, addr or self._random_addr(), delay)
        self.hosts[pid] = host
        return host

    def kill(self, peer: PeerId) -> None:
        self.hosts[peer].alive = False

    def revive(self, peer: PeerId) -> None:
        self.hosts[peer].alive = True

    def is_alive(self, peer: PeerId) -> bool:
        host = self.hosts.get(peer)
        return host is not None and host.alive

    def alive_peers(self) -> list[PeerId]:
        return [p for p, h in self.hosts.items() if h.alive]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[rank]

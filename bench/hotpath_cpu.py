"""CPU cost of peerstack's hot paths, measured in ONE process beside anchors in the same run.

Both ends of every connection live in this process, so ``time.process_time()`` (user + system
CPU of the process, the kernel's loopback work included) over N operations is the whole cost of
one operation, however loaded the machine is: it measures work, not waiting.

- ``rt``:   32-byte round trips on one open stream (write + readexactly on both ends), against
            plain TCP ping-pong with a uvloop ``BufferedProtocol`` on each end (the anchor).
- ``dial``: dial + multistream + Noise + Yamux (``host.dial``, no identify service) and the
            disconnect.
- ``bulk``: one stream moving N MiB one way (writes of 1 MiB, reads of whatever is there),
            against 65519-byte Noise frames over ``BufferedProtocol`` (the anchor).
- ``mem``:  Python heap per idle connection (tracemalloc, both ends, divided by 2 per end),
            after one bulk transfer on the first connection.

    python bench/hotpath_cpu.py [rt dial bulk mem] [--count 20000] [--mib 256]

On a loaded machine even CPU time drifts (caches shared with other processes); instruction
counts do not. Two runs under ``valgrind --tool=callgrind`` that differ only in the number of
operations give instructions per operation (user space only), e.g. for round trips::

    valgrind --tool=callgrind python -c "...hotpath_cpu.peerstack_rt(200)..."   # and 1200
    (Ir(1200) - Ir(200)) / ((1200 - 200) * (REPEAT + 1))
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
import tracemalloc
from collections.abc import Awaitable, Callable

from peerstack.core.identity import PrivateKey
from peerstack.host.host import BasicHost
from peerstack.net.tcp import best_event_loop_policy
from peerstack.wire.noise import MAX_PLAINTEXT, NoiseTransport

ECHO = "/bench/echo/1"
SINK = "/bench/sink/1"
RT_SIZE = 32
#: Round trip runs per figure; the least CPU is reported (other processes' cache pollution and
#: interrupts only ever add to a run's CPU time).
REPEAT = 5


def cpu_per_op(label: str, ops: int, seconds: float, unit: str = "us", scale: float = 1e6) -> None:
    print(
        f"  {label:<40} {scale * seconds / ops:10.2f} {unit}/op  ({ops} ops, {seconds:.2f} s CPU)"
    )


async def measure(ops: int, body: Callable[[], Awaitable[None]]) -> float:
    gc.collect()
    start = time.process_time()
    await body()
    return time.process_time() - start


# -- anchors ---------------------------------------------------------------------------------


class _BufEcho(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(65536)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        assert self.transport is not None
        self.transport.write(bytes(self.buf[:nbytes]))


class _BufClient(_BufEcho):
    def __init__(self) -> None:
        super().__init__()
        self.got = 0
        self.waiter: asyncio.Future[None] | None = None

    def buffer_updated(self, nbytes: int) -> None:
        self.got += nbytes
        if self.got >= RT_SIZE and self.waiter is not None and not self.waiter.done():
            self.got -= RT_SIZE
            self.waiter.set_result(None)


async def anchor_rt(count: int) -> float:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_BufEcho, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, proto = await loop.create_connection(_BufClient, "127.0.0.1", port)
    payload = os.urandom(RT_SIZE)

    async def body() -> None:
        for _ in range(count):
            fut = loop.create_future()
            proto.waiter = fut
            transport.write(payload)
            await fut

    await body()  # warm up
    cpu = min([await measure(count, body) for _ in range(REPEAT)])
    transport.close()
    server.close()
    return cpu


class _NoiseSink(asyncio.BufferedProtocol):
    def __init__(self, key: bytes) -> None:
        self.buf = memoryview(bytearray(65536))
        self.noise = NoiseTransport(key, key)
        self.got = 0
        self.target = 0
        self.waiter: asyncio.Future[None] | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.got += len(self.noise.decrypt(self.buf[:nbytes]))
        if self.got >= self.target and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


async def anchor_bulk(mib: int) -> float:
    loop = asyncio.get_running_loop()
    key = os.urandom(32)
    sink = _NoiseSink(key)
    server = await loop.create_server(lambda: sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    sender = NoiseTransport(key, key)
    block = os.urandom(15 * MAX_PLAINTEXT)
    total = mib << 20

    async def body() -> None:
        sink.target = sink.got + total
        sink.waiter = loop.create_future()
        sent = 0
        while sent < total:
            transport.write(sender.encrypt(block))
            sent += len(block)
            if transport.get_write_buffer_size() > 4 << 20:
                await asyncio.sleep(0)
                while transport.get_write_buffer_size() > 1 << 20:  # noqa: ASYNC110
                    await asyncio.sleep(0.0005)  # no drain event on a bare Protocol
        await sink.waiter

    cpu = await measure(1, body)
    transport.close()
    server.close()
    return cpu


# -- peerstack -------------------------------------------------------------------------------


async def _echo(stream: object) -> None:
    from peerstack.net.stream import YamuxStream

    assert isinstance(stream, YamuxStream)
    while True:
        data = await stream.read()
        if not data:
            break
        await stream.write(data)
    await stream.close()


async def _sink(stream: object) -> None:
    from peerstack.net.stream import YamuxStream

    assert isinstance(stream, YamuxStream)
    while await stream.read():
        pass
    await stream.write(b"k")
    await stream.close()


async def two_hosts() -> tuple[BasicHost, BasicHost]:
    a = BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    b = BasicHost(PrivateKey.generate(), listen_addrs=[])
    await a.start()
    await b.start()
    a.set_stream_handler(ECHO, _echo)
    a.set_stream_handler(SINK, _sink)
    return a, b


async def peerstack_rt(count: int) -> float:
    a, b = await two_hosts()
    peer = await b.dial(f"{a.listen_addrs()[0]}/p2p/{a.peer_id}")
    stream = await b.new_stream(peer, [ECHO])
    payload = os.urandom(RT_SIZE)

    async def body() -> None:
        for _ in range(count):
            await stream.write(payload)
            await stream.readexactly(RT_SIZE)

    await body()
    cpu = min([await measure(count, body) for _ in range(REPEAT)])
    await stream.close()
    await b.close()
    await a.close()
    return cpu


async def peerstack_dial(count: int) -> float:
    a, b = await two_hosts()
    addr = f"{a.listen_addrs()[0]}/p2p/{a.peer_id}"
    loop = asyncio.get_running_loop()

    async def body() -> None:
        for _ in range(count):
            peer = await b.dial(addr)
            # identify runs on its own stream after the upgrade; let it finish both ways
            await asyncio.sleep(0)
            await b.disconnect(peer)
            while a.connected_peers():  # noqa: ASYNC110 (the other host's state)
                await asyncio.sleep(0)
            await asyncio.sleep(0)

    await body()
    start_wall = loop.time()
    cpu = await measure(count, body)
    print(f"  (dial wall clock in-process: {1e3 * (loop.time() - start_wall) / count:.2f} ms/dial)")
    await b.close()
    await a.close()
    return cpu


async def peerstack_bulk(mib: int) -> float:
    a, b = await two_hosts()
    peer = await b.dial(f"{a.listen_addrs()[0]}/p2p/{a.peer_id}")
    block = os.urandom(1 << 20)

    async def body() -> None:
        stream = await b.new_stream(peer, [SINK])
        for _ in range(mib):
            await stream.write(block)
        await stream.close()
        assert await stream.read() == b"k"

    cpu = await measure(1, body)
    await b.close()
    await a.close()
    return cpu


async def peerstack_mem(conns: int) -> float:
    a, b = await two_hosts()
    addr = f"{a.listen_addrs()[0]}/p2p/{a.peer_id}"
    hosts = [BasicHost(PrivateKey.generate(), listen_addrs=[]) for _ in range(conns)]
    for h in hosts:
        await h.start()
    # A bulk transfer first on one connection: scratch buffers must not stay behind.
    peer = await hosts[0].dial(addr)
    stream = await hosts[0].new_stream(peer, [SINK])
    for _ in range(8):
        await stream.write(os.urandom(1 << 20))
    await stream.close()
    await stream.read()
    await asyncio.sleep(0.2)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for h in hosts[1:]:
        await h.dial(addr)
    await asyncio.sleep(0.5)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    n = conns - 1
    for stat in snap.statistics("lineno")[:12]:
        print(f"    {stat.size / n / 2:8.0f} B/end  {stat.traceback}")
    for h in hosts:
        await h.close()
    await b.close()
    await a.close()
    # The dialer hosts themselves are part of the figure; report per connection end.
    return used / n / 2


async def main(args: argparse.Namespace) -> None:
    what = args.what or ["rt", "dial", "bulk", "mem"]
    if "rt" in what:
        print(f"round trips of {RT_SIZE} bytes, CPU per round trip (both ends):")
        anchor = await anchor_rt(args.count)
        cpu_per_op("anchor: TCP BufferedProtocol ping-pong", args.count, anchor)
        ours = await peerstack_rt(args.count)
        cpu_per_op("peerstack stream write+readexactly", args.count, ours)
        print(f"  ratio peerstack/anchor: {ours / anchor:.2f}")
    if "dial" in what:
        print("dial + noise + yamux + identify, CPU per dial (both ends, disconnect included):")
        ours = await peerstack_dial(args.dials)
        cpu_per_op("peerstack dial", args.dials, ours, "ms", 1e3)
    if "bulk" in what:
        print(f"bulk {args.mib} MiB one way, CPU s per GB (both ends):")
        anchor = await anchor_bulk(args.mib)
        gb = args.mib * (1 << 20) / 1e9
        print(f"  anchor: noise frames over BufferedProtocol {anchor / gb:8.3f} s/GB")
        ours = await peerstack_bulk(args.mib)
        print(f"  peerstack stream                           {ours / gb:8.3f} s/GB")
        print(f"  ratio peerstack/anchor: {ours / anchor:.2f}")
    if "mem" in what:
        print("Python heap per idle connection end (tracemalloc):")
        per = await peerstack_mem(args.conns)
        print(f"  peerstack: {per:.0f} B per connection end")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", nargs="*", choices=["rt", "dial", "bulk", "mem"])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--dials", type=int, default=200)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--conns", type=int, default=101)
    asyncio.set_event_loop_policy(best_event_loop_policy())
    asyncio.run(main(parser.parse_args()))

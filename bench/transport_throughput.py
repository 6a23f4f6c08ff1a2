"""One stream, two processes, loopback: throughput of TCP + Noise + Yamux through BasicHost.

Anchors in the same run: the same bytes through a bare asyncio BufferedProtocol pair with the
same Noise framing (encrypt 65519-byte frames, decrypt on the far side), i.e. the ceiling the
host's per-frame Python work is measured against; and 64-byte round trips on plain TCP against
the same on a host stream. Only the ratios of one run are meaningful.

    python bench/transport_throughput.py [--mib 1024] [--round-trips 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import subprocess
import sys
import time
from typing import cast

from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.host.host import BasicHost
from peerstack.host.interface import Stream
from peerstack.net.connection import ENCRYPT_SLICE
from peerstack.net.tcp import READ_BUFFER_SIZE, best_event_loop_policy
from peerstack.wire.noise import NoiseTransport

PROTO = "/bench/sink/1"
ECHO = "/bench/echo/1"
RTT_MESSAGE = 64
CHUNK = 1024 * 1024
KEY_A = b"a" * 32
KEY_B = b"b" * 32
ANSWER = struct.Struct(">Qd")  # bytes received, receiver CPU seconds


async def echo(stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)


async def serve_host() -> None:
    async def sink(stream: Stream) -> None:
        total = 0
        cpu = time.process_time()
        while True:
            data = await stream.read()
            if not data:
                break
            total += len(data)
        await stream.write(ANSWER.pack(total, time.process_time() - cpu))

    host = BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    async with host:
        host.set_stream_handler(PROTO, sink)
        host.set_stream_handler(ECHO, echo)
        print(f"{host.listen_addrs()[0]}/p2p/{host.peer_id}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def run_host_client(addr: str, total: int) -> tuple[float, float, float]:
    async with BasicHost(PrivateKey.generate()) as host:
        peer = await host.dial(addr)
        stream = await host.new_stream(peer, [PROTO])
        payload = os.urandom(CHUNK)
        start = time.perf_counter()
        cpu = time.process_time()
        sent = 0
        while sent < total:
            await stream.write(payload)
            sent += CHUNK
        await stream.close()
        got, server_cpu = ANSWER.unpack(await stream.readexactly(ANSWER.size))
        elapsed = time.perf_counter() - start
        assert got == total, (got, total)
        return elapsed, time.process_time() - cpu, server_cpu


class _SinkProtocol(asyncio.BufferedProtocol):
    """Anchor receiver: decrypt everything, count plaintext, answer with the count at the end."""

    def __init__(self, total: int) -> None:
        self.buf = bytearray(READ_BUFFER_SIZE)
        self.noise = NoiseTransport(KEY_B, KEY_A)
        self.total = total
        self.count = 0
        self.cpu = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        if not self.count:
            self.cpu = time.process_time()
        self.count += len(self.noise.decrypt(memoryview(self.buf)[:nbytes]))
        if self.count >= self.total and self.transport is not None:
            self.transport.write(ANSWER.pack(self.count, time.process_time() - self.cpu))


async def serve_anchor(total: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _SinkProtocol(total), "127.0.0.1", 0)
    echo_server = await loop.create_server(_EchoProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    echo_port = echo_server.sockets[0].getsockname()[1]
    print(f"/ip4/127.0.0.1/tcp/{port} /ip4/127.0.0.1/tcp/{echo_port}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    echo_server.close()


class _EchoProtocol(asyncio.Protocol):
    """Anchor for round trips: plain TCP echo."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _SourceProtocol(asyncio.Protocol):
    """Anchor sender: raw transport writes with pause/resume, and the 8-byte answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.resumed: asyncio.Future[None] | None = None
        self.paused = False
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=4 * 1024 * 1024, low=1024 * 1024)

    def pause_writing(self) -> None:
        self.paused = True
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)


async def run_anchor_client(addr: str, total: int) -> tuple[float, float, float]:
    host, port = Multiaddr(addr).tcp_target() or ("", 0)
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(_SourceProtocol, host, port)
    assert proto.transport is not None
    noise = NoiseTransport(KEY_A, KEY_B)
    payload = memoryview(os.urandom(CHUNK))
    step = ENCRYPT_SLICE
    start = time.perf_counter()
    cpu = time.process_time()
    sent = 0
    while sent < total:
        for off in range(0, CHUNK, step):
            proto.transport.write(noise.encrypt(payload[off : off + step]))
        sent += CHUNK
        if proto.paused and proto.resumed is not None:
            await proto.resumed
    answer = await proto.answer
    elapsed = time.perf_counter() - start
    client_cpu = time.process_time() - cpu
    proto.transport.close()
    _, server_cpu = ANSWER.unpack(answer[: ANSWER.size])
    return elapsed, client_cpu, server_cpu


async def rtt_host(addr: str, count: int) -> float:
    """Round trips per second of 64-byte messages on one negotiated stream."""
    async with BasicHost(PrivateKey.generate()) as host:
        stream = await host.new_stream(await host.dial(addr), [ECHO])
        message = os.urandom(RTT_MESSAGE)
        start = time.perf_counter()
        for _ in range(count):
            await stream.write(message)
            await stream.readexactly(RTT_MESSAGE)
        return count / (time.perf_counter() - start)


async def rtt_anchor(addr: str, count: int) -> float:
    host, port = Multiaddr(addr).tcp_target() or ("", 0)
    reader, writer = await asyncio.open_connection(host, port)
    message = os.urandom(RTT_MESSAGE)
    start = time.perf_counter()
    for _ in range(count):
        writer.write(message)
        await reader.readexactly(RTT_MESSAGE)
    rate = count / (time.perf_counter() - start)
    writer.close()
    return rate


def measure(kind: str, total: int) -> float:
    """Wall seconds to move ``total`` bytes one way ("anchor" or "host"); other benchmarks
    (``perf_1gib.py``) use this as their Noise-only anchor."""
    return measure_full(kind, total, 0)[0]


def measure_full(kind: str, total: int, rtt_count: int) -> tuple[float, float, float, float]:
    """Wall seconds, sender and receiver CPU seconds, and 64-byte round trips per second."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--mib", str(total // CHUNK)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    addrs = proc.stdout.readline().split()
    try:
        if kind == "host":
            wall, send, recv = asyncio.run(run_host_client(addrs[0], total))
            rtt = asyncio.run(rtt_host(addrs[0], rtt_count)) if rtt_count else 0.0
        else:
            wall, send, recv = asyncio.run(run_anchor_client(addrs[0], total))
            rtt = asyncio.run(rtt_anchor(addrs[1], rtt_count)) if rtt_count else 0.0
        return wall, send, recv, rtt
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--serve", choices=["host", "anchor"])
    args = parser.parse_args()
    asyncio.set_event_loop_policy(best_event_loop_policy())
    total = args.mib * CHUNK
    if args.serve == "host":
        asyncio.run(serve_host())
        return
    if args.serve == "anchor":
        asyncio.run(serve_anchor(total))
        return
    gb = total / 1e9
    rows = []
    for label, kind in (
        ("anchor (BufferedProtocol + Noise)", "anchor"),
        ("BasicHost (Noise + Yamux)", "host"),
    ):
        wall, send_cpu, recv_cpu, rtt = measure_full(kind, total, args.round_trips)
        rows.append((label, gb / wall, send_cpu / gb, recv_cpu / gb, rtt))
    print(
        f"{'':36} {'wall GB/s':>10} {'send cpu s/GB':>14} {'recv cpu s/GB':>14} "
        f"{'64 B round trips/s':>19}"
    )
    for label, rate, send, recv, rtt in rows:
        print(f"{label:36} {rate:10.2f} {send:14.3f} {recv:14.3f} {rtt:19,.0f}")
    # On a shared machine the CPU seconds per GB are the steadier figure: with a core per
    # process the slower side bounds the throughput at 1 / max(send, recv) GB/s.
    (_, a_rate, a_send, a_recv, a_rtt), (_, h_rate, h_send, h_recv, h_rtt) = rows
    print(f"wall ratio host/anchor: {h_rate / a_rate:.2f}")
    print(f"round-trip ratio host (Noise+Yamux stream) / plain TCP: {h_rtt / a_rtt:.2f}")
    print(
        f"cpu-bound estimate: anchor {1 / max(a_send, a_recv):.2f} GB/s, "
        f"host {1 / max(h_send, h_recv):.2f} GB/s, "
        f"ratio {max(a_send, a_recv) / max(h_send, h_recv):.2f}"
    )


if __name__ == "__main__":
    main()

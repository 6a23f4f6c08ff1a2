"""The simulated host: virtual time, in-order streams, resets, dead nodes, negotiation."""

from __future__ import annotations

import asyncio

import pytest

from peerstack.errors import DialError, NegotiationError, StreamClosed, StreamReset
from peerstack.host.interface import Host, Stream, read_length_prefixed, write_length_prefixed
from sim.simhost import SimHost, SimNetwork, SimulationDeadlock, run


def test_virtual_clock_skips_waiting() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(3600)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.sleep(100)
        return loop.time() - start

    assert run(main()) == pytest.approx(3610)


def test_deadlock_is_reported() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(SimulationDeadlock):
        run(main())


def test_is_a_host() -> None:
    net = SimNetwork()
    host: Host = net.add_host()
    assert isinstance(host, SimHost)
    assert host.listen_addrs()[0].value_for("ip4") is not None


def test_echo_in_order_with_latency() -> None:
    net = SimNetwork()
    a, b = net.add_host(), net.add_host()

    async def echo(stream: Stream) -> None:
        while True:
            msg = await read_length_prefixed(stream, 1000)
            if msg is None:
                await stream.close()
                return
            await write_length_prefixed(stream, msg.upper())

    b.set_stream_handler("/echo", echo)

    async def main() -> tuple[list[bytes], float, bytes]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        s = await a.new_stream(b.peer_id, ["/x", "/echo"])
        assert s.protocol == "/echo"
        assert s.remote_peer == b.peer_id
        for i in range(20):
            await write_length_prefixed(s, b"msg%d" % i)
        got = [await read_length_prefixed(s, 1000) for _ in range(20)]
        await s.close()
        tail = await s.read()
        return [g for g in got if g is not None], loop.time() - t0, tail

    got, elapsed, tail = run(main())
    assert got == [b"MSG%d" % i for i in range(20)]
    assert elapsed >= 2 * (a.delay + b.delay)  # at least a round trip of virtual time
    assert tail == b""
    assert b.peer_id in a.connected_peers()


def test_reset_and_short_read() -> None:
    net = SimNetwork()
    a, b = net.add_host(), net.add_host()
    seen: list[str] = []

    async def handler(stream: Stream) -> None:
        await stream.write(b"abc")
        await stream.close()
        try:
            await stream.read()
        except StreamReset:
            seen.append("reset")

    b.set_stream_handler("/p", handler)

    async def main() -> None:
        s = await a.new_stream(b.peer_id, ["/p"])
        with pytest.raises(StreamClosed):
            await s.readexactly(5)
        s.reset()
        with pytest.raises(StreamReset):
            await s.read()
        with pytest.raises(StreamReset):
            await s.write(b"x")
        await asyncio.sleep(1)

    run(main())
    assert seen == ["reset"]


def test_dead_nodes_and_unknown_protocols() -> None:
    net = SimNetwork(dial_timeout=2.0)
    a, b = net.add_host(), net.add_host()
    b.set_stream_handler("/p", lambda s: asyncio.sleep(0))

    async def main() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(NegotiationError):
            await a.new_stream(b.peer_id, ["/other"])
        net.kill(b.peer_id)
        t0 = loop.time()
        with pytest.raises(DialError):
            await a.new_stream(b.peer_id, ["/p"])
        return loop.time() - t0

    assert run(main()) == pytest.approx(2.0)
    assert net.counters.dials_to_dead == 1
    assert b.peer_id not in net.alive_peers()


def test_nothing_crosses_to_a_killed_node() -> None:
    net = SimNetwork()
    a, b = net.add_host(), net.add_host()
    received: list[bytes] = []

    async def sink(stream: Stream) -> None:
        received.append(await stream.read())

    b.set_stream_handler("/p", sink)

    async def main() -> None:
        s = await a.new_stream(b.peer_id, ["/p"])
        net.kill(b.peer_id)
        await s.write(b"lost")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await s.read()

    run(main())
    assert received == []


def test_handler_tasks_are_kept_until_they_end() -> None:
    import gc

    net = SimNetwork()
    a, b = net.add_host(), net.add_host()
    done: list[bytes] = []

    async def slow(stream: Stream) -> None:
        done.append(await stream.read())

    b.set_stream_handler("/p", slow)

    async def main() -> None:
        s = await a.new_stream(b.peer_id, ["/p"])
        assert len(a._handler_tasks) == 1  # referenced while it runs
        gc.collect()
        await s.write(b"hello")
        await asyncio.sleep(1)
        assert not a._handler_tasks  # and let go of when it ends

    run(main())
    assert done == [b"hello"]

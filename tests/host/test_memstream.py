"""``peerstack.host.memstream``: the in-memory pair keeps the Stream contract of a real stream."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import StreamClosed, StreamReset, UsageError
from peerstack.host.interface import Stream, read_length_prefixed, write_length_prefixed
from peerstack.host.memstream import MemStream, stream_pair

DIALER = PeerId(b"\x12\x20" + bytes(range(32)))
LISTENER = PeerId(b"\x12\x20" + bytes(range(32, 64)))


def _pair(capacity: int = 64 * 1024) -> tuple[MemStream, MemStream]:
    return stream_pair("/t/1", DIALER, LISTENER, capacity=capacity)


async def _settle() -> None:
    """Let every task that can run do so (no clock involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_ends_name_each_other_and_are_streams() -> None:
    a, b = stream_pair(
        "/p",
        DIALER,
        LISTENER,
        dialer_addr=Multiaddr("/ip4/127.0.0.1/tcp/1"),
        listener_addr=Multiaddr("/ip4/127.0.0.1/tcp/2"),
    )
    assert isinstance(a, Stream)
    assert isinstance(b, Stream)
    assert (a.protocol, b.protocol) == ("/p", "/p")
    assert (a.remote_peer, b.remote_peer) == (LISTENER, DIALER)
    assert a.remote_addr == Multiaddr("/ip4/127.0.0.1/tcp/2")
    assert b.remote_addr == Multiaddr("/ip4/127.0.0.1/tcp/1")


async def test_capacity_must_be_positive() -> None:
    with pytest.raises(UsageError):
        _pair(capacity=0)


async def test_read_sizes() -> None:
    a, b = _pair()
    await a.write(b"hello world")
    assert await b.read(0) == b""
    assert await b.read(5) == b"hello"
    assert await b.read() == b" world"
    await a.write(bytearray(b"xy"))
    await a.write(memoryview(b"z"))
    assert await b.read(100) == b"xyz"


async def test_half_close_both_ways() -> None:
    a, b = _pair()
    await a.write(b"request")
    await a.close()
    await a.close()  # idempotent
    assert await b.read() == b"request"
    assert await b.read() == b""
    assert await b.read() == b""  # stays at the end
    with pytest.raises(StreamClosed):
        await a.write(b"more")
    await b.write(b"answer")  # the other direction is still open
    await b.close()
    assert await a.read() == b"answer"
    assert await a.read() == b""


async def test_reader_waits_then_gets_data_or_eof() -> None:
    a, b = _pair()
    reader = asyncio.create_task(b.read())
    await _settle()
    assert not reader.done()
    await a.write(b"x")
    assert await reader == b"x"
    reader = asyncio.create_task(b.read())
    await _settle()
    await a.close()
    assert await reader == b""


async def test_second_concurrent_reader_is_refused() -> None:
    a, b = _pair()
    first = asyncio.create_task(b.read())
    await _settle()
    with pytest.raises(UsageError):
        await b.read()
    await a.write(b"1")
    assert await first == b"1"


async def test_readexactly() -> None:
    a, b = _pair()
    await a.write(b"ab")
    waiting = asyncio.create_task(b.readexactly(5))
    await _settle()
    await a.write(b"cdef")
    assert await waiting == b"abcde"
    assert await b.readexactly(0) == b""
    with pytest.raises(UsageError):
        await b.readexactly(-1)
    await a.close()
    with pytest.raises(StreamClosed):
        await b.readexactly(2)  # only "f" is left


async def test_length_prefixed_messages() -> None:
    a, b = _pair(capacity=3)
    sender = asyncio.create_task(write_length_prefixed(a, b"a message of some length"))
    assert await read_length_prefixed(b, 100) == b"a message of some length"
    await sender
    await a.close()
    assert await read_length_prefixed(b, 100) is None


async def test_writer_waits_while_peer_buffer_is_full() -> None:
    a, b = _pair(capacity=4)
    writer = asyncio.create_task(a.write(b"0123456789"))
    await _settle()
    assert not writer.done()
    assert b.buffered == 4  # bounded: the rest waits in the writer
    assert await b.read(3) == b"012"
    await _settle()
    assert b.buffered == 4
    got = b"012"
    while len(got) < 10:
        got += await b.read()
    await writer
    assert got == b"0123456789"


async def test_concurrent_writes_are_not_interleaved() -> None:
    a, b = _pair(capacity=2)
    w1 = asyncio.create_task(a.write(b"AAAAAA"))
    w2 = asyncio.create_task(a.write(b"BBBBBB"))
    assert await b.readexactly(12) == b"AAAAAABBBBBB"
    await asyncio.gather(w1, w2)


async def test_close_fails_our_parked_write() -> None:
    a, b = _pair(capacity=2)
    writer = asyncio.create_task(a.write(b"abcdef"))
    await _settle()
    await a.close()
    with pytest.raises(StreamClosed):
        await writer
    assert await b.read() == b"ab"  # what was sent before the close still arrives
    assert await b.read() == b""


async def test_reset_aborts_both_ends_and_wakes_waiters() -> None:
    a, b = _pair(capacity=2)
    parked_writer = asyncio.create_task(a.write(b"abcdef"))
    waiting_reader = asyncio.create_task(a.read())
    await _settle()
    assert b.buffered == 2
    b.reset()
    with pytest.raises(StreamReset):
        await parked_writer
    with pytest.raises(StreamReset):
        await waiting_reader
    assert a.is_reset
    assert b.is_reset
    assert b.buffered == 0  # buffered data is dropped
    for end in (a, b):
        with pytest.raises(StreamReset):
            await end.read()
        with pytest.raises(StreamReset):
            await end.readexactly(1)
        with pytest.raises(StreamReset):
            await end.write(b"x")
        await end.close()  # no-op after a reset
        end.reset()  # idempotent


async def test_reset_drops_data_the_peer_had_not_read() -> None:
    a, b = _pair()
    await a.write(b"data")
    await a.close()
    a.reset()
    with pytest.raises(StreamReset):
        await b.read()


# -- random sequences against a model ----------------------------------------------------------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 1), st.binary(max_size=24)),
        st.tuples(st.just("read"), st.integers(0, 1), st.integers(-1, 20)),
        st.tuples(st.just("close"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("reset"), st.integers(0, 1), st.just(0)),
    ),
    max_size=30,
)


async def _play(ops: list[tuple[str, int, bytes | int]], capacity: int) -> None:
    ends = _pair(capacity)
    written = [bytearray(), bytearray()]  # by end i, for the other end
    got = [bytearray(), bytearray()]  # read by end i
    closed = [False, False]
    was_reset = False
    writes: list[list[asyncio.Task[None]]] = [[], []]
    for op, i, arg in ops:
        end, peer_closed = ends[i], closed[1 - i]
        if op == "write":
            assert isinstance(arg, bytes)
            if was_reset or closed[i]:
                with pytest.raises(StreamReset if was_reset else StreamClosed):
                    await end.write(arg)
            else:
                writes[i].append(asyncio.create_task(end.write(arg)))
                written[i] += arg
        elif op == "read":
            assert isinstance(arg, int)
            if was_reset:
                with pytest.raises(StreamReset):
                    await end.read(arg)
            elif end.buffered or peer_closed:  # otherwise the read would wait
                data = await end.read(arg)
                if arg == 0:
                    assert data == b""
                elif not data:
                    assert peer_closed
                    assert got[i] == written[1 - i]
                else:
                    assert arg < 0 or len(data) <= arg
                got[i] += data
        elif op == "close":
            if not any(not t.done() for t in writes[i]):  # a close fails a parked write
                await end.close()
                closed[i] = not was_reset
        else:
            end.reset()
            was_reset = True
        await _settle()
        for j in (0, 1):
            assert ends[j].buffered <= capacity
            assert written[1 - j].startswith(got[j])
    if was_reset:
        await _settle()
        for task in writes[0] + writes[1]:
            assert task.done()
            error = task.exception()
            assert error is None or isinstance(error, StreamReset)
        for end in ends:
            with pytest.raises(StreamReset):
                await end.read()
        return

    async def finish(i: int) -> None:
        await asyncio.gather(*writes[i])
        await ends[i].close()

    async def rest(j: int) -> None:
        while data := await ends[j].read():
            got[j] += data

    await asyncio.gather(finish(0), finish(1), rest(0), rest(1))
    assert got[0] == written[1]
    assert got[1] == written[0]


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, capacity=st.integers(1, 32))
def test_random_operations_match_the_model(
    ops: list[tuple[str, int, bytes | int]], capacity: int
) -> None:
    asyncio.run(_play(ops, capacity))

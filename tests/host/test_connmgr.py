"""Connection manager bookkeeping: reservations, limits, merged dials, trimming."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.errors import DialError, ResourceLimitError, UsageError
from peerstack.host.connmgr import ConnectionManager
from peerstack.host.limits import Limits


def new_peer() -> PeerId:
    return PeerId.from_public_key(PrivateKey.generate().public_key)


@dataclass
class FakeConn:
    remote_peer: PeerId
    outbound: bool = True
    remote_ip: str | None = "127.0.0.1"
    num_streams: int = 0
    idle_since: float | None = 0.0
    is_closed: bool = False
    can_open_streams: bool = True

    async def close(self) -> None:
        self.is_closed = True


def test_limits_validated() -> None:
    with pytest.raises(UsageError):
        Limits(low_water=10, high_water=5)
    with pytest.raises(UsageError):
        Limits(handshake_timeout=0)


def test_inbound_limits_per_ip_and_pending() -> None:
    mgr: ConnectionManager[FakeConn] = ConnectionManager(
        Limits(max_connections_per_ip=2, max_pending_handshakes=3, max_inbound_connections=4)
    )
    a1 = mgr.reserve_inbound("10.0.0.1")
    mgr.reserve_inbound("10.0.0.1")
    with pytest.raises(ResourceLimitError):
        mgr.reserve_inbound("10.0.0.1")
    b1 = mgr.reserve_inbound("10.0.0.2")
    with pytest.raises(ResourceLimitError, match="handshakes"):
        mgr.reserve_inbound("10.0.0.3")
    # Registering ends a's handshake: a pending slot frees up, the per-IP count stays.
    conn = FakeConn(new_peer(), outbound=False, remote_ip="10.0.0.1")
    assert mgr.register(conn, a1)
    assert mgr.counts()["pending_inbound"] == 2
    with pytest.raises(ResourceLimitError):
        mgr.reserve_inbound("10.0.0.1")
    c1 = mgr.reserve_inbound("10.0.0.3")
    mgr.register(FakeConn(new_peer(), outbound=False, remote_ip="10.0.0.3"), c1)
    b1.release()  # b's handshake failed
    b1.release()  # idempotent
    mgr.reserve_inbound("10.0.0.4")
    with pytest.raises(ResourceLimitError, match="inbound connection limit"):
        mgr.reserve_inbound("10.0.0.5")
    assert mgr.unregister(conn)
    assert not mgr.unregister(conn)
    assert mgr.counts() == {"inbound": 3, "outbound": 0, "pending_inbound": 2, "connections": 1}
    mgr.check_invariants()


def test_outbound_limit_and_connection_reuse() -> None:
    mgr: ConnectionManager[FakeConn] = ConnectionManager(Limits(max_outbound_connections=1))
    peer = new_peer()
    res = mgr.reserve_outbound()
    with pytest.raises(ResourceLimitError):
        mgr.reserve_outbound()
    first = FakeConn(peer)
    assert mgr.register(first, res)
    second = FakeConn(peer, outbound=False)
    assert not mgr.register(second, mgr.reserve_inbound("127.0.0.1"))
    assert mgr.get(peer) is first
    first.can_open_streams = False  # e.g. GoAway received
    assert mgr.get(peer) is second
    assert not mgr.unregister(first)
    assert mgr.unregister(second)
    assert not mgr.is_connected(peer)
    assert mgr.counts()["outbound"] == 0


async def test_concurrent_dials_are_merged() -> None:
    mgr: ConnectionManager[FakeConn] = ConnectionManager(Limits())
    peer = new_peer()
    calls = 0
    gate = asyncio.Event()

    async def do_dial() -> FakeConn:
        nonlocal calls
        calls += 1
        await gate.wait()
        conn = FakeConn(peer)
        mgr.register(conn, mgr.reserve_outbound())
        return conn

    tasks = [asyncio.create_task(mgr.dial(peer, do_dial)) for _ in range(10)]
    await asyncio.sleep(0)
    assert mgr.pending_dials() == 1
    gate.set()
    conns = await asyncio.gather(*tasks)
    assert calls == 1
    assert all(c is conns[0] for c in conns)
    assert await mgr.dial(peer, do_dial) is conns[0]  # reused, no new dial
    assert calls == 1


async def test_failed_merged_dial_reaches_every_caller() -> None:
    mgr: ConnectionManager[FakeConn] = ConnectionManager(Limits())
    peer = new_peer()

    async def do_dial() -> FakeConn:
        await asyncio.sleep(0.01)
        raise DialError("nope")

    results = await asyncio.gather(
        *(mgr.dial(peer, do_dial) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, DialError) for r in results)
    assert mgr.pending_dials() == 0


async def test_trim_idle_and_watermarks() -> None:
    mgr: ConnectionManager[FakeConn] = ConnectionManager(
        Limits(idle_timeout=10, high_water=3, low_water=2)
    )
    busy = FakeConn(new_peer(), num_streams=1, idle_since=None)
    old_idle = FakeConn(new_peer(), idle_since=0.0)
    new_idle = FakeConn(new_peer(), idle_since=8.0)
    protected = FakeConn(new_peer(), idle_since=0.0)
    for c in (busy, old_idle, new_idle, protected):
        mgr.register(c, mgr.reserve_outbound())
    mgr.protect(protected.remote_peer)
    # At t=5 nothing has been idle 10 s, but 4 > high water 3: trim the longest idle to 2 left.
    assert mgr.select_for_trim(now=5.0) == [old_idle, new_idle]
    mgr.unprotect(protected.remote_peer)
    # At t=12 two have been idle for 10 s; closing them also brings the count to low water.
    assert await mgr.trim(now=12.0) == 2
    assert old_idle.is_closed
    assert protected.is_closed
    assert not busy.is_closed
    assert not new_idle.is_closed


async def test_cancelled_dial_gives_waiters_an_error_not_a_cancellation() -> None:
    mgr: ConnectionManager[FakeConn] = ConnectionManager(Limits())
    peer = new_peer()

    async def slow_dial() -> FakeConn:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    first = asyncio.create_task(mgr.dial(peer, slow_dial))
    await asyncio.sleep(0)
    second = asyncio.create_task(mgr.dial(peer, slow_dial))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(DialError, match="cancelled"):
        await second
    assert first.cancelled()
    assert mgr.pending_dials() == 0


def test_loopback_has_its_own_per_ip_limit() -> None:
    mgr: ConnectionManager[FakeConn] = ConnectionManager(
        Limits(max_connections_per_ip=1, max_connections_per_loopback_ip=3)
    )
    for _ in range(3):
        mgr.reserve_inbound("127.0.0.1")
    with pytest.raises(ResourceLimitError):
        mgr.reserve_inbound("127.0.0.1")
    mgr.reserve_inbound("::1")
    mgr.reserve_inbound("10.0.0.1")
    with pytest.raises(ResourceLimitError):
        mgr.reserve_inbound("10.0.0.1")
    # Raising the general per-IP limit raises it for loopback too.
    raised: ConnectionManager[FakeConn] = ConnectionManager(
        Limits(max_connections_per_ip=5, max_connections_per_loopback_ip=2)
    )
    for _ in range(5):
        raised.reserve_inbound("127.0.0.1")
    with pytest.raises(ResourceLimitError):
        raised.reserve_inbound("127.0.0.1")


@given(st.one_of(st.ip_addresses().map(str), st.text(max_size=20)))
def test_loopback_check_agrees_with_ipaddress(ip: str) -> None:
    import ipaddress

    from peerstack.host.connmgr import _is_loopback

    try:
        expected = ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        expected = False
    assert _is_loopback(ip) == expected

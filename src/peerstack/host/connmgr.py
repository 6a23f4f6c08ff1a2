"""The connection manager: one connection per peer, merged dials, limits and idle trimming.

It knows connections only through the small ``ManagedConnection`` protocol, so its bookkeeping
is tested without sockets. The host asks it for a *reservation* before a connection exists (a
dial we start, or a TCP connection a peer opened) and turns the reservation into a registered
connection once the upgrade succeeded; a refused reservation raises ``ResourceLimitError``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from peerstack.core.peer_id import PeerId
from peerstack.errors import DialError, ResourceLimitError, UsageError
from peerstack.host.limits import Limits

log = logging.getLogger(__name__)


def _is_loopback(ip: str) -> bool:
    # The usual loopback peers without parsing (one call per inbound connection).
    if ip in ("127.0.0.1", "::1"):
        return True
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class ManagedConnection(Protocol):
    """What the manager needs to know about a connection."""

    @property
    def remote_peer(self) -> PeerId: ...

    @property
    def outbound(self) -> bool: ...

    @property
    def remote_ip(self) -> str | None: ...

    @property
    def num_streams(self) -> int: ...

    @property
    def idle_since(self) -> float | None:
        """Clock time since which the connection has had no stream (``None``: streams open)."""
        ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def can_open_streams(self) -> bool:
        """False once the peer sent GoAway or the connection is closing."""
        ...

    async def close(self) -> None: ...


class Reservation:
    """A slot for one connection (pending until the upgrade is done). Release exactly once."""

    __slots__ = ("_done", "_mgr", "ip", "outbound", "pending")

    def __init__(self, mgr: ConnectionManager[Any], outbound: bool, ip: str | None) -> None:
        self._mgr = mgr
        self.outbound = outbound
        self.ip = ip
        # An inbound reservation counts as a pending handshake until it is registered.
        self.pending = not outbound
        self._done = False

    def release(self) -> None:
        """Give the slot back (the connection failed, or it closed after registration)."""
        if self._done:
            return
        self._done = True
        self._mgr._release(self)


C = TypeVar("C", bound=ManagedConnection)


class ConnectionManager(Generic[C]):
    """Bookkeeping of connections by peer, with limits and trimming."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._conns: dict[PeerId, list[C]] = {}
        self._reservations: dict[int, Reservation] = {}  # id(conn) -> its reservation
        self._inbound = 0  # pending + established
        self._outbound = 0
        self._pending_inbound = 0
        self._per_ip: dict[str, int] = {}
        self._dials: dict[PeerId, asyncio.Future[C]] = {}
        self._protected: set[PeerId] = set()

    # -- reservations ----------------------------------------------------------------------

    def reserve_inbound(self, ip: str | None) -> Reservation:
        """Admit a new inbound TCP connection into its handshake, or raise."""
        lim = self.limits
        if self._pending_inbound >= lim.max_pending_handshakes:
            raise ResourceLimitError("too many inbound handshakes in progress")
        if self._inbound >= lim.max_inbound_connections:
            raise ResourceLimitError("inbound connection limit reached")
        if ip is not None:
            per_ip = lim.max_connections_per_ip
            if _is_loopback(ip):
                per_ip = max(per_ip, lim.max_connections_per_loopback_ip)
            if self._per_ip.get(ip, 0) >= per_ip:
                raise ResourceLimitError(f"connection limit for {ip} reached")
        self._inbound += 1
        self._pending_inbound += 1
        if ip is not None:
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return Reservation(self, False, ip)

    def reserve_outbound(self) -> Reservation:
        """Admit a dial we are about to start, or raise ``ResourceLimitError``."""
        if self._outbound >= self.limits.max_outbound_connections:
            raise ResourceLimitError("outbound connection limit reached")
        self._outbound += 1
        return Reservation(self, True, None)

    def _release(self, res: Reservation) -> None:
        if res.outbound:
            self._outbound -= 1
            return
        self._inbound -= 1
        if res.ip is not None:
            left = self._per_ip.get(res.ip, 0) - 1
            if left > 0:
                self._per_ip[res.ip] = left
            else:
                self._per_ip.pop(res.ip, None)
        # Pending inbound is released at registration; a failed handshake releases it here.
        self._handshake_done(res)

    # -- registration ----------------------------------------------------------------------

    def register(self, conn: C, res: Reservation) -> bool:
        """Record an upgraded connection; returns whether it is the peer's first one."""
        self._handshake_done(res)
        peer = conn.remote_peer
        conns = self._conns.setdefault(peer, [])
        conns.append(conn)
        self._reservations[id(conn)] = res
        return len(conns) == 1

    def unregister(self, conn: C) -> bool:
        """Forget a closed connection; returns whether it was the peer's last one."""
        res = self._reservations.pop(id(conn), None)
        if res is None:
            return False
        res.release()
        conns = self._conns.get(conn.remote_peer, [])
        if conn in conns:
            conns.remove(conn)
        if not conns:
            self._conns.pop(conn.remote_peer, None)
            return True
        return False

    def _handshake_done(self, res: Reservation) -> None:
        if res.pending:
            res.pending = False
            self._pending_inbound -= 1

    # -- queries ---------------------------------------------------------------------------

    def get(self, peer: PeerId) -> C | None:
        """The best connection to ``peer`` for new streams (the first usable one)."""
        for conn in self._conns.get(peer, ()):
            if not conn.is_closed and conn.can_open_streams:
                return conn
        return None

    def connections(self, peer: PeerId | None = None) -> list[C]:
        if peer is not None:
            return list(self._conns.get(peer, ()))
        return [c for conns in self._conns.values() for c in conns]

    def peers(self) -> list[PeerId]:
        return list(self._conns)

    def is_connected(self, peer: PeerId) -> bool:
        return peer in self._conns

    def counts(self) -> dict[str, int]:
        return {
            "inbound": self._inbound,
            "outbound": self._outbound,
            "pending_inbound": self._pending_inbound,
            "connections": sum(len(c) for c in self._conns.values()),
        }

    def protect(self, peer: PeerId) -> None:
        """Never trim connections to ``peer``."""
        self._protected.add(peer)

    def unprotect(self, peer: PeerId) -> None:
        self._protected.discard(peer)

    # -- merged dials ----------------------------------------------------------------------

    async def dial(self, peer: PeerId, do_dial: Callable[[], Awaitable[C]]) -> C:
        """Return a usable connection to ``peer``; concurrent callers share one dial."""
        existing = self.get(peer)
        if existing is not None:
            return existing
        pending = self._dials.get(peer)
        if pending is not None:
            # shield: one impatient caller being cancelled must not cancel everyone's dial.
            return await asyncio.shield(pending)
        fut: asyncio.Future[C] = asyncio.get_running_loop().create_future()
        self._dials[peer] = fut
        try:
            conn = await do_dial()
        except BaseException as exc:
            # Waiters get an error, never the dialler's own cancellation: a CancelledError
            # out of nowhere would silently end their task.
            err = (
                exc
                if not isinstance(exc, asyncio.CancelledError)
                else DialError(f"the dial to {peer} was cancelled")
            )
            fut.set_exception(err)
            fut.exception()  # mark retrieved: there may be no waiter
            raise
        else:
            fut.set_result(conn)
            return conn
        finally:
            if self._dials.get(peer) is fut:
                del self._dials[peer]

    def pending_dials(self) -> int:
        return len(self._dials)

    # -- trimming --------------------------------------------------------------------------

    def select_for_trim(self, now: float | None = None) -> list[C]:
        """Connections to close now: idle past the timeout, and idle ones above high water."""
        if now is None:
            now = self._clock()
        idle: list[tuple[float, C]] = []
        for peer, conns in self._conns.items():
            if peer in self._protected:
                continue
            for conn in conns:
                since = conn.idle_since
                if since is not None and not conn.is_closed:
                    idle.append((since, conn))
        idle.sort(key=lambda item: item[0])
        victims = [c for since, c in idle if now - since >= self.limits.idle_timeout]
        total = sum(len(c) for c in self._conns.values())
        if total > self.limits.high_water:
            excess = total - self.limits.low_water - len(victims)
            chosen = {id(c) for c in victims}
            for _since, conn in idle:
                if excess <= 0:
                    break
                if id(conn) not in chosen:
                    victims.append(conn)
                    chosen.add(id(conn))
                    excess -= 1
        return victims

    async def trim(self, now: float | None = None) -> int:
        """Close the connections ``select_for_trim`` picks; returns how many."""
        victims = self.select_for_trim(now)
        for conn in victims:
            log.debug("trimming idle connection to %s", conn.remote_peer)
            await conn.close()
        return len(victims)

    def check_invariants(self) -> None:
        """Raise ``UsageError`` if the counters disagree (a bug); used by tests."""
        if min(self._inbound, self._outbound, self._pending_inbound) < 0:
            raise UsageError(f"negative connection counters: {self.counts()}")

"""What a DHT node keeps: provider records, value records, its own provides, its peers.

Two stores with the same behaviour: ``SqliteDhtStore`` (the node's state database, WAL mode,
one transaction per change, opened lazily) and ``MemoryDhtStore`` (tests and the simulator,
where ten thousand SQLite connections would be wasteful). Both enforce the limits: providers
per key, keys per providing peer, providers in total, records in total, records per sending
peer. Over a limit the store raises ``LimitExceeded`` and keeps nothing: a peer cannot make us
hold more, and one peer cannot fill the record store for everyone (cheap ``/pk/`` or
application records would otherwise lock IPNS out). ``gc`` drops expired providers and value
records older than the age after which they are no longer handed out.

Provider records expire after 48 h (``provider_ttl``); our own provides are republished every
22 h by the service (``due_republish``). Every ``now`` given to a store is wall-clock unix
time: the times are persisted and must mean the same after a reboot.

Our own provides are not provider records: they live in their own table, outside the limits
meant for remote peers (a hundred Sybil identities filling a key's provider slots must not
stop us from providing it), with a bound of their own (``max_own_provides``) whose excess is
a local ``OwnProvidesFull``, not a peer's fault.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.records import parse_rfc3339_ns
from peerstack.errors import DecodeError, LimitExceeded, PeerstackError, ResourceLimitError

PROVIDER_TTL = 48 * 3600.0
REPUBLISH_INTERVAL = 22 * 3600.0
# How long a write waits for another connection's lock on the database file before it fails
# (a DhtStoreError): the store runs on the event loop, which must not stall for seconds.
BUSY_TIMEOUT = 0.1

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class StoreLimits:
    provider_ttl: float = PROVIDER_TTL
    max_providers_per_key: int = 100
    max_keys_per_provider: int = 10_000
    max_providers_total: int = 1_000_000
    max_records: int = 100_000
    # Records one peer may have stored here (the last sender of a key owns its slot).
    max_records_per_peer: int = 1_000
    max_addrs_per_provider: int = 16
    # Keys we provide ourselves (a repo with provide="all" announces every block).
    max_own_provides: int = 10_000_000


class OwnProvidesFull(ResourceLimitError):
    """We already provide ``max_own_provides`` keys: a local limit, no peer's doing."""


class DhtStoreError(PeerstackError):
    """The database under the store failed (locked, full disk, damaged): a local condition.

    Raised instead of ``sqlite3`` errors so that callers (the request server, the upkeep loop)
    can answer the peer with a closed stream and log one line, never blame the peer.
    """


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    peer: PeerId
    addrs: tuple[Multiaddr, ...]
    expires: float


class DhtStore(Protocol):
    limits: StoreLimits

    def add_provider(
        self, key: bytes, peer: PeerId, addrs: tuple[Multiaddr, ...], now: float
    ) -> None: ...

    def get_providers(self, key: bytes, now: float, limit: int) -> list[ProviderEntry]: ...

    def put_record(
        self,
        key: bytes,
        value: bytes,
        received: str,
        *,
        sender: PeerId | None = None,
        received_at: float | None = None,
    ) -> None:
        """Store a record ``sender`` gave us (``None``: our own, no per-peer quota).

        ``received_at`` is the wall-clock time ``gc`` ages it by (default: ``received`` read as
        RFC 3339, or 0 when it cannot be read: such a record goes at the next ``gc``).
        """
        ...

    def get_record(self, key: bytes) -> tuple[bytes, str] | None: ...

    def remove_record(self, key: bytes) -> None: ...

    def add_own_provide(self, key: bytes, now: float) -> None:
        """Remember that we provide ``key``; raises ``OwnProvidesFull`` past the bound."""
        ...

    def has_own_provide(self, key: bytes) -> bool: ...

    def due_republish(self, now: float, interval: float) -> list[bytes]: ...

    def mark_republished(self, key: bytes, now: float) -> None: ...

    def save_peers(self, peers: list[tuple[PeerId, tuple[Multiaddr, ...]]]) -> None: ...

    def load_peers(self) -> list[tuple[PeerId, tuple[Multiaddr, ...]]]: ...

    def gc(self, now: float, max_record_age: float | None = None) -> int:
        """Drop providers expired at ``now`` and, with ``max_record_age``, records older."""
        ...

    def close(self) -> None: ...


def _received_at(received: str, received_at: float | None) -> float:
    if received_at is not None:
        return received_at
    try:
        return parse_rfc3339_ns(received.encode()) / 1e9
    except DecodeError:
        return 0.0


def _owner(sender: PeerId | None) -> bytes:
    """The key a record's quota is counted under (``b""``: ours, not counted)."""
    return sender.to_bytes() if sender is not None else b""


def _pack_addrs(addrs: tuple[Multiaddr, ...]) -> bytes:
    out = bytearray()
    for a in addrs:
        raw = a.to_bytes()
        out += len(raw).to_bytes(2, "big") + raw
    return bytes(out)


def _unpack_addrs(data: bytes) -> tuple[Multiaddr, ...]:
    out = []
    i = 0
    while i + 2 <= len(data):
        n = int.from_bytes(data[i : i + 2], "big")
        # Written by us; a parse failure means a protocol we dropped support for since.
        with contextlib.suppress(DecodeError):
            out.append(Multiaddr.from_bytes(data[i + 2 : i + 2 + n]))
        i += 2 + n
    return tuple(out)


class MemoryDhtStore:
    """The in-memory store (bounded like the SQLite one)."""

    def __init__(self, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self._providers: dict[bytes, dict[PeerId, ProviderEntry]] = {}
        self._keys_per_peer: dict[PeerId, int] = {}
        self._total = 0
        # key -> (value, received, owner, received_at); owner as in ``_owner``.
        self._records: dict[bytes, tuple[bytes, str, bytes, float]] = {}
        self._records_per_owner: dict[bytes, int] = {}
        self._own: dict[bytes, float] = {}
        self._peers: list[tuple[PeerId, tuple[Multiaddr, ...]]] = []

    def add_provider(
        self, key: bytes, peer: PeerId, addrs: tuple[Multiaddr, ...], now: float
    ) -> None:
        lim = self.limits
        entries = self._providers.get(key)
        entry = ProviderEntry(peer, addrs[: lim.max_addrs_per_provider], now + lim.provider_ttl)
        if entries is not None and peer in entries:
            entries[peer] = entry  # a refresh: same slot, new expiry
            return
        if entries is not None and len(entries) >= lim.max_providers_per_key:
            raise LimitExceeded("too many providers for this key")
        if self._keys_per_peer.get(peer, 0) >= lim.max_keys_per_provider:
            raise LimitExceeded("this peer provides too many keys")
        if self._total >= lim.max_providers_total:
            raise LimitExceeded("provider store full")
        if entries is None:
            entries = self._providers[key] = {}
        entries[peer] = entry
        self._keys_per_peer[peer] = self._keys_per_peer.get(peer, 0) + 1
        self._total += 1

    def get_providers(self, key: bytes, now: float, limit: int) -> list[ProviderEntry]:
        entries = self._providers.get(key, {})
        live = [e for e in entries.values() if e.expires > now]
        live.sort(key=lambda e: -e.expires)
        return live[:limit]

    def put_record(
        self,
        key: bytes,
        value: bytes,
        received: str,
        *,
        sender: PeerId | None = None,
        received_at: float | None = None,
    ) -> None:
        lim = self.limits
        owner = _owner(sender)
        held = self._records.get(key)
        if held is None and len(self._records) >= lim.max_records:
            raise LimitExceeded("record store full")
        new_for_owner = held is None or held[2] != owner
        mine = self._records_per_owner.get(owner, 0)
        if owner and new_for_owner and mine >= lim.max_records_per_peer:
            raise LimitExceeded("this peer stored too many records")
        if held is not None and new_for_owner:
            self._uncount(held[2])
        if new_for_owner:
            self._records_per_owner[owner] = self._records_per_owner.get(owner, 0) + 1
        self._records[key] = (value, received, owner, _received_at(received, received_at))

    def _uncount(self, owner: bytes) -> None:
        left = self._records_per_owner[owner] - 1
        if left:
            self._records_per_owner[owner] = left
        else:
            del self._records_per_owner[owner]

    def get_record(self, key: bytes) -> tuple[bytes, str] | None:
        held = self._records.get(key)
        return (held[0], held[1]) if held is not None else None

    def remove_record(self, key: bytes) -> None:
        held = self._records.pop(key, None)
        if held is not None:
            self._uncount(held[2])

    def add_own_provide(self, key: bytes, now: float) -> None:
        if key not in self._own and len(self._own) >= self.limits.max_own_provides:
            raise OwnProvidesFull(f"already providing {len(self._own)} keys")
        self._own[key] = now

    def has_own_provide(self, key: bytes) -> bool:
        return key in self._own

    def due_republish(self, now: float, interval: float) -> list[bytes]:
        return [k for k, t in self._own.items() if now - t >= interval]

    def mark_republished(self, key: bytes, now: float) -> None:
        if key in self._own:
            self._own[key] = now

    def save_peers(self, peers: list[tuple[PeerId, tuple[Multiaddr, ...]]]) -> None:
        self._peers = list(peers)

    def load_peers(self) -> list[tuple[PeerId, tuple[Multiaddr, ...]]]:
        return list(self._peers)

    def gc(self, now: float, max_record_age: float | None = None) -> int:
        removed = 0
        if max_record_age is not None:
            cutoff = now - max_record_age
            for key in [k for k, r in self._records.items() if r[3] <= cutoff]:
                self.remove_record(key)
                removed += 1
        for key in list(self._providers):
            entries = self._providers[key]
            for peer in [p for p, e in entries.items() if e.expires <= now]:
                del entries[peer]
                self._keys_per_peer[peer] -= 1
                if not self._keys_per_peer[peer]:
                    del self._keys_per_peer[peer]
                self._total -= 1
                removed += 1
            if not entries:
                del self._providers[key]
        return removed

    def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS dht_providers (
    key BLOB NOT NULL, peer BLOB NOT NULL, addrs BLOB NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (key, peer));
CREATE INDEX IF NOT EXISTS dht_providers_peer ON dht_providers(peer);
CREATE INDEX IF NOT EXISTS dht_providers_expires ON dht_providers(expires);
CREATE TABLE IF NOT EXISTS dht_records (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, received TEXT NOT NULL,
    sender BLOB NOT NULL DEFAULT x'', received_at REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS dht_own_provides (
    key BLOB PRIMARY KEY, last_published REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dht_peers (peer BLOB PRIMARY KEY, addrs BLOB NOT NULL);
"""
# Columns added to dht_records since its first version (a database from before gets them, its
# old rows with received_at 0: collected at the next gc, their owners republish them).
_RECORD_COLUMNS = {
    "sender": "BLOB NOT NULL DEFAULT x''",
    "received_at": "REAL NOT NULL DEFAULT 0",
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS dht_records_sender ON dht_records(sender);
CREATE INDEX IF NOT EXISTS dht_records_received_at ON dht_records(received_at);
"""


def _guarded(
    method: Callable[Concatenate[SqliteDhtStore, _P], _R],
) -> Callable[Concatenate[SqliteDhtStore, _P], _R]:
    """Turn ``sqlite3`` errors into ``DhtStoreError`` (and recount after a failed change)."""

    @functools.wraps(method)
    def guarded(self: SqliteDhtStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            self._forget_counts()
            raise DhtStoreError(f"DHT store: {exc}") from exc

    return guarded


class SqliteDhtStore:
    """The store in a SQLite database (``path``; ``":memory:"`` for a private one).

    It runs on the event loop, so every request's work is kept small: counts of whole tables
    are made once and kept in memory, per-key and per-peer counts stop at their limit on an
    index, commits go to the WAL without an fsync each (``synchronous=NORMAL``: a crash may
    lose the last moments, never consistency), and a lock held by another connection is
    waited for ``BUSY_TIMEOUT`` at most. A database of its own (not the one the blockstore
    writes to) keeps its writers from holding the lock these writes wait for.
    """

    def __init__(self, path: str | Path, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self._path = str(path)
        self._db: sqlite3.Connection | None = None
        # Rows of dht_own_provides and dht_records, counted once (a COUNT(*) over a table per
        # request would cost a scan of up to a million rows) and kept up to date; None means
        # "count again" (after a rollback).
        self._own_count: int | None = None
        self._record_count: int | None = None
        self._provider_count: int | None = None

    def _forget_counts(self) -> None:
        self._own_count = self._record_count = self._provider_count = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self._path, isolation_level=None, timeout=BUSY_TIMEOUT)
            if self._path != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(dht_records)")}
            for name, decl in _RECORD_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE dht_records ADD COLUMN {name} {decl}")
            db.executescript(_INDEXES)
            self._db = db
        return self._db

    def _count(self, sql: str, *args: object) -> int:
        row = self.db.execute(sql, args).fetchone()
        return int(row[0]) if row else 0

    def _providers_total(self) -> int:
        if self._provider_count is None:
            self._provider_count = self._count("SELECT COUNT(*) FROM dht_providers")
        return self._provider_count

    @_guarded
    def add_provider(
        self, key: bytes, peer: PeerId, addrs: tuple[Multiaddr, ...], now: float
    ) -> None:
        lim = self.limits
        pid = peer.to_bytes()
        packed = _pack_addrs(addrs[: lim.max_addrs_per_provider])
        expires = now + lim.provider_ttl
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            exists = db.execute(
                "SELECT 1 FROM dht_providers WHERE key=? AND peer=?", (key, pid)
            ).fetchone()
            total = self._providers_total()
            if exists is None:
                # Each count stops at its limit (an index range, never the whole table).
                n_key = self._count(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM dht_providers WHERE key=? LIMIT ?)",
                    key,
                    lim.max_providers_per_key,
                )
                if n_key >= lim.max_providers_per_key:
                    raise LimitExceeded("too many providers for this key")
                n_peer = self._count(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM dht_providers WHERE peer=? LIMIT ?)",
                    pid,
                    lim.max_keys_per_provider,
                )
                if n_peer >= lim.max_keys_per_provider:
                    raise LimitExceeded("this peer provides too many keys")
                if total >= lim.max_providers_total:
                    raise LimitExceeded("provider store full")
            db.execute(
                "INSERT OR REPLACE INTO dht_providers(key, peer, addrs, expires) "
                "VALUES (?, ?, ?, ?)",
                (key, pid, packed, expires),
            )
            if exists is None:
                self._provider_count = total + 1
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._provider_count = None
            raise
        db.execute("COMMIT")

    @_guarded
    def get_providers(self, key: bytes, now: float, limit: int) -> list[ProviderEntry]:
        rows = self.db.execute(
            "SELECT peer, addrs, expires FROM dht_providers WHERE key=? AND expires>? "
            "ORDER BY expires DESC LIMIT ?",
            (key, now, limit),
        ).fetchall()
        return [ProviderEntry(PeerId(p), _unpack_addrs(a), e) for p, a, e in rows]

    def _records_total(self) -> int:
        if self._record_count is None:
            self._record_count = self._count("SELECT COUNT(*) FROM dht_records")
        return self._record_count

    @_guarded
    def put_record(
        self,
        key: bytes,
        value: bytes,
        received: str,
        *,
        sender: PeerId | None = None,
        received_at: float | None = None,
    ) -> None:
        lim = self.limits
        owner = _owner(sender)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT sender FROM dht_records WHERE key=?", (key,)).fetchone()
            total = self._records_total()
            if row is None and total >= lim.max_records:
                raise LimitExceeded("record store full")
            if owner and (row is None or bytes(row[0]) != owner):
                # Bounded work: count no further than the quota, on the sender index.
                mine = self._count(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM dht_records WHERE sender=? LIMIT ?)",
                    owner,
                    lim.max_records_per_peer,
                )
                if mine >= lim.max_records_per_peer:
                    raise LimitExceeded("this peer stored too many records")
            db.execute(
                "INSERT OR REPLACE INTO dht_records(key, value, received, sender, received_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, value, received, owner, _received_at(received, received_at)),
            )
            if row is None:
                self._record_count = total + 1
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._record_count = None
            raise
        db.execute("COMMIT")

    @_guarded
    def get_record(self, key: bytes) -> tuple[bytes, str] | None:
        row = self.db.execute(
            "SELECT value, received FROM dht_records WHERE key=?", (key,)
        ).fetchone()
        return (bytes(row[0]), str(row[1])) if row else None

    @_guarded
    def remove_record(self, key: bytes) -> None:
        cur = self.db.execute("DELETE FROM dht_records WHERE key=?", (key,))
        if self._record_count is not None:
            self._record_count -= cur.rowcount

    @_guarded
    def add_own_provide(self, key: bytes, now: float) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if not self.has_own_provide(key):
                if self._own_count is None:
                    self._own_count = self._count("SELECT COUNT(*) FROM dht_own_provides")
                if self._own_count >= self.limits.max_own_provides:
                    raise OwnProvidesFull(f"already providing {self._own_count} keys")
                self._own_count += 1
            db.execute(
                "INSERT OR REPLACE INTO dht_own_provides(key, last_published) VALUES (?, ?)",
                (key, now),
            )
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._own_count = None  # recount on the next call
            raise
        db.execute("COMMIT")

    @_guarded
    def has_own_provide(self, key: bytes) -> bool:
        row = self.db.execute("SELECT 1 FROM dht_own_provides WHERE key=?", (key,)).fetchone()
        return row is not None

    @_guarded
    def due_republish(self, now: float, interval: float) -> list[bytes]:
        rows = self.db.execute(
            "SELECT key FROM dht_own_provides WHERE last_published <= ?", (now - interval,)
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    @_guarded
    def mark_republished(self, key: bytes, now: float) -> None:
        self.db.execute("UPDATE dht_own_provides SET last_published=? WHERE key=?", (now, key))

    @_guarded
    def save_peers(self, peers: list[tuple[PeerId, tuple[Multiaddr, ...]]]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM dht_peers")
            db.executemany(
                "INSERT OR REPLACE INTO dht_peers(peer, addrs) VALUES (?, ?)",
                [(p.to_bytes(), _pack_addrs(a)) for p, a in peers],
            )
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @_guarded
    def load_peers(self) -> list[tuple[PeerId, tuple[Multiaddr, ...]]]:
        out = []
        for raw, addrs in self.db.execute("SELECT peer, addrs FROM dht_peers"):
            try:
                out.append((PeerId(bytes(raw)), _unpack_addrs(bytes(addrs))))
            except DecodeError:
                continue  # a row we cannot read is no reason to refuse to start
        return out

    @_guarded
    def gc(self, now: float, max_record_age: float | None = None) -> int:
        removed = 0
        if max_record_age is not None:
            cur = self.db.execute(
                "DELETE FROM dht_records WHERE received_at <= ?", (now - max_record_age,)
            )
            removed += cur.rowcount
            if self._record_count is not None:
                self._record_count -= cur.rowcount
        cur = self.db.execute("DELETE FROM dht_providers WHERE expires <= ?", (now,))
        if self._provider_count is not None:
            self._provider_count -= cur.rowcount
        return removed + cur.rowcount

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

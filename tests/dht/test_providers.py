"""Provider and record stores: limits, expiry, republish bookkeeping, peers persisted."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.providers import (
    PROVIDER_TTL,
    DhtStore,
    DhtStoreError,
    MemoryDhtStore,
    OwnProvidesFull,
    SqliteDhtStore,
    StoreLimits,
)
from peerstack.errors import LimitExceeded

LIMITS = StoreLimits(
    max_providers_per_key=3, max_keys_per_provider=4, max_providers_total=6, max_records=2
)
ADDR = (Multiaddr("/ip4/1.2.3.4/tcp/4001"),)


def pid(i: int) -> PeerId:
    return PeerId(b"\x12\x20" + random.Random(i).randbytes(32))


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DhtStore:
    if request.param == "memory":
        return MemoryDhtStore(LIMITS)
    return SqliteDhtStore(tmp_path / "state.db", LIMITS)


def test_add_get_and_refresh(store: DhtStore) -> None:
    store.add_provider(b"k1", pid(1), ADDR, 0.0)
    store.add_provider(b"k1", pid(2), (), 1.0)
    store.add_provider(b"k1", pid(1), ADDR, 2.0)  # refresh: no new slot
    got = store.get_providers(b"k1", 3.0, 10)
    assert {e.peer for e in got} == {pid(1), pid(2)}
    assert next(e for e in got if e.peer == pid(1)).addrs == ADDR
    assert next(e for e in got if e.peer == pid(1)).expires == 2.0 + PROVIDER_TTL
    assert store.get_providers(b"other", 3.0, 10) == []


def test_limits_per_key_per_peer_and_total(store: DhtStore) -> None:
    for i in range(3):
        store.add_provider(b"key", pid(i), (), 0.0)
    with pytest.raises(LimitExceeded):
        store.add_provider(b"key", pid(9), (), 0.0)
    for j in range(3):
        store.add_provider(b"x%d" % j, pid(0), (), 0.0)
    with pytest.raises(LimitExceeded):
        store.add_provider(b"x9", pid(0), (), 0.0)  # pid(0) has 4 keys already
    with pytest.raises(LimitExceeded):
        store.add_provider(b"y", pid(5), (), 0.0)  # 6 in total
    assert len(store.get_providers(b"key", 0.0, 10)) == 3
    assert store.get_providers(b"x9", 0.0, 10) == []


def test_expiry_and_gc(store: DhtStore) -> None:
    store.add_provider(b"k", pid(1), (), 0.0)
    store.add_provider(b"k", pid(2), (), 100.0)
    assert len(store.get_providers(b"k", PROVIDER_TTL + 1, 10)) == 1
    assert store.gc(PROVIDER_TTL + 1) == 1
    # The freed slot is usable again.
    store.add_provider(b"k", pid(3), (), PROVIDER_TTL + 1)
    store.add_provider(b"k", pid(4), (), PROVIDER_TTL + 1)
    assert len(store.get_providers(b"k", PROVIDER_TTL + 2, 10)) == 3


def test_records_and_limit(store: DhtStore) -> None:
    store.put_record(b"/a/1", b"v1", "t")
    store.put_record(b"/a/2", b"v2", "t")
    store.put_record(b"/a/1", b"v1b", "t2")  # replacing is not growth
    with pytest.raises(LimitExceeded):
        store.put_record(b"/a/3", b"v3", "t")
    assert store.get_record(b"/a/1") == (b"v1b", "t2")
    store.remove_record(b"/a/1")
    assert store.get_record(b"/a/1") is None


def test_own_provides_republish(store: DhtStore) -> None:
    store.add_own_provide(b"mine", 0.0)
    assert store.due_republish(10.0, 22 * 3600) == []
    assert store.due_republish(22 * 3600, 22 * 3600) == [b"mine"]
    store.mark_republished(b"mine", 22 * 3600)
    assert store.due_republish(23 * 3600, 22 * 3600) == []


def test_peers_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SqliteDhtStore(path)
    first.save_peers([(pid(1), ADDR), (pid(2), ())])
    first.add_provider(b"k", pid(1), ADDR, 0.0)
    first.close()
    second = SqliteDhtStore(path)
    assert sorted(second.load_peers(), key=lambda x: x[0].to_bytes()) == sorted(
        [(pid(1), ADDR), (pid(2), ())], key=lambda x: x[0].to_bytes()
    )
    assert second.get_providers(b"k", 1.0, 5)[0].peer == pid(1)
    second.close()


def test_own_provides_have_their_own_bound(tmp_path: Path) -> None:
    limits = StoreLimits(max_keys_per_provider=1, max_providers_per_key=1, max_own_provides=3)
    for store in (MemoryDhtStore(limits), SqliteDhtStore(tmp_path / "own.db", limits)):
        for i in range(3):
            store.add_own_provide(b"k%d" % i, 0.0)  # past the per-peer limit of remote peers
        store.add_own_provide(b"k0", 1.0)  # again: not growth
        assert store.has_own_provide(b"k2")
        assert not store.has_own_provide(b"k3")
        with pytest.raises(OwnProvidesFull):  # a local limit, not a PeerError
            store.add_own_provide(b"k3", 0.0)
        assert not store.has_own_provide(b"k3")
        store.close()
    again = SqliteDhtStore(tmp_path / "own.db", limits)  # the count survives a restart
    with pytest.raises(OwnProvidesFull):
        again.add_own_provide(b"k4", 0.0)
    again.close()


def test_records_per_sender_quota(store: DhtStore) -> None:
    quota = StoreLimits(max_records=10, max_records_per_peer=2)
    store.limits = quota
    store.put_record(b"/pk/1", b"v", "t", sender=pid(1))
    store.put_record(b"/pk/2", b"v", "t", sender=pid(1))
    store.put_record(b"/pk/1", b"v2", "t", sender=pid(1))  # replacing its own: no growth
    with pytest.raises(LimitExceeded):
        store.put_record(b"/pk/3", b"v", "t", sender=pid(1))
    store.put_record(b"/pk/3", b"v", "t", sender=pid(2))  # others still have room
    store.put_record(b"/pk/4", b"v", "t")  # our own records are not counted per peer
    # Another sender taking over a key moves its slot: pid(1) gets room back.
    store.put_record(b"/pk/2", b"v3", "t", sender=pid(2))
    store.put_record(b"/pk/5", b"v", "t", sender=pid(1))
    with pytest.raises(LimitExceeded):
        store.put_record(b"/pk/6", b"v", "t", sender=pid(2))
    store.remove_record(b"/pk/3")
    store.put_record(b"/pk/6", b"v", "t", sender=pid(2))
    assert store.get_record(b"/pk/6") == (b"v", "t")


def test_gc_drops_old_records(store: DhtStore) -> None:
    store.limits = StoreLimits()
    store.put_record(b"/a/old", b"v", "t", sender=pid(1), received_at=1000.0)
    store.put_record(b"/a/new", b"v", "t", sender=pid(1), received_at=5000.0)
    store.put_record(b"/a/rfc", b"v", "1970-01-01T01:00:00.000000000Z")  # 3600 s
    store.put_record(b"/a/unreadable", b"v", "")
    assert store.gc(6000.0) == 0  # without an age, records stay (providers only)
    assert store.gc(6000.0, max_record_age=2000.0) == 3
    assert store.get_record(b"/a/new") is not None
    for key in (b"/a/old", b"/a/rfc", b"/a/unreadable"):
        assert store.get_record(key) is None
    # The freed slots count: the store is not full any more.
    store.limits = StoreLimits(max_records=2)
    store.put_record(b"/a/again", b"v", "t")


def test_old_database_gets_the_new_record_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE dht_records "
        "(key BLOB PRIMARY KEY, value BLOB NOT NULL, received TEXT NOT NULL)"
    )
    db.execute("INSERT INTO dht_records VALUES (?, ?, ?)", (b"/a/1", b"v", "t"))
    db.commit()
    db.close()
    store = SqliteDhtStore(path)
    assert store.get_record(b"/a/1") == (b"v", "t")
    store.put_record(b"/a/2", b"v", "t", sender=pid(1), received_at=100.0)
    assert store.gc(200.0, max_record_age=150.0) == 1  # the old row had no time: it goes
    assert store.get_record(b"/a/2") is not None
    store.close()


def test_sqlite_settings_for_a_store_on_the_event_loop(tmp_path: Path) -> None:
    store = SqliteDhtStore(tmp_path / "s.db")
    db = store.db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: no fsync per commit
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] <= 250
    store.close()


def test_a_locked_database_is_a_typed_local_error(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "shared.db"
    store = SqliteDhtStore(path)
    store.add_provider(b"k", pid(1), ADDR, 0.0)
    other = sqlite3.connect(path, isolation_level=None)  # e.g. the blockstore's connection
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    with pytest.raises(DhtStoreError):
        store.add_provider(b"k", pid(2), ADDR, 0.0)
    with pytest.raises(DhtStoreError):
        store.put_record(b"/a/1", b"v", "t", sender=pid(1))
    other.execute("ROLLBACK")
    other.close()
    # Released: the store works again and its counts are right.
    store.add_provider(b"k", pid(2), ADDR, 0.0)
    assert {e.peer for e in store.get_providers(b"k", 0.0, 10)} == {pid(1), pid(2)}
    assert store.gc(PROVIDER_TTL + 1) == 2
    store.close()


def test_provider_total_is_counted_once_and_kept_right(tmp_path: Path) -> None:
    path = tmp_path / "count.db"
    limits = StoreLimits(max_providers_total=3)
    store = SqliteDhtStore(path, limits)
    for i in range(3):
        store.add_provider(b"k%d" % i, pid(i), (), 0.0)
    store.add_provider(b"k0", pid(0), (), 1.0)  # a refresh is no growth
    with pytest.raises(LimitExceeded):
        store.add_provider(b"k9", pid(9), (), 0.0)
    store.close()
    again = SqliteDhtStore(path, limits)  # counted again at open
    with pytest.raises(LimitExceeded):
        again.add_provider(b"k9", pid(9), (), 0.0)
    assert again.gc(PROVIDER_TTL + 0.5) == 2  # k1, k2 expired; k0 was refreshed
    again.add_provider(b"k9", pid(9), (), PROVIDER_TTL)
    again.add_provider(b"k8", pid(8), (), PROVIDER_TTL)
    with pytest.raises(LimitExceeded):
        again.add_provider(b"k7", pid(7), (), PROVIDER_TTL)
    again.close()

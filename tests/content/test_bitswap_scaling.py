"""Work per step of the Bitswap logic stays bounded as the number of wants grows.

These count operations (tasks taken off a queue, wants looked at), never time: the logic must
do per step what the step needs, not a pass over every want.
"""

from __future__ import annotations

from peerstack.content.bitswap.messages import Message, WantEntry, WantType
from peerstack.content.bitswap.server import DecisionEngine, ServerConfig
from peerstack.content.bitswap.session import Session, SessionConfig
from peerstack.core.cid import CID
from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId

MIB = 1024 * 1024


def peer() -> PeerId:
    return PeerId.from_public_key(PrivateKey.generate().public_key)


def cids(n: int, tag: str = "") -> list[CID]:
    return [CID.hash_of(f"{tag}{i}".encode()) for i in range(n)]


def engine_examined_per_batch(n: int) -> tuple[float, list[CID], list[CID]]:
    blocks = cids(n)
    sizes = dict.fromkeys(blocks, MIB)
    cfg = ServerConfig(max_wantlist=n, flood_limit=n, max_bytes_in_flight=1 << 40)
    eng = DecisionEngine(sizes.get, cfg)
    p = peer()
    # priorities shuffled against arrival order: the engine must still serve highest first
    entries = [WantEntry(c, priority=(i * 7919) % n + 1) for i, c in enumerate(blocks)]
    eng.receive(p, Message(entries))
    served: list[CID] = []
    batches = 0
    while (batch := eng.next_batch()) is not None:
        batches += 1
        served += batch.blocks
        eng.batch_done(batch, batch.nbytes)
    expected = [e.cid for e in sorted(entries, key=lambda e: -e.priority)]
    return eng.tasks_examined / batches, served, expected


def test_engine_work_per_batch_does_not_grow_with_the_queue() -> None:
    small, served, expected = engine_examined_per_batch(64)
    assert served == expected
    big, served, expected = engine_examined_per_batch(2048)
    assert served == expected
    # one block of 1 MiB per batch: the served task plus the one put back for the next batch
    assert small <= 2.0
    assert big <= 2.0


def test_engine_cancel_and_replace_keep_the_heap_consistent() -> None:
    blocks = cids(200, "c")
    sizes = dict.fromkeys(blocks, 10)
    eng = DecisionEngine(sizes.get, ServerConfig(max_wantlist=1000))
    p = peer()
    eng.receive(p, Message([WantEntry(c, priority=5) for c in blocks]))
    eng.receive(p, Message([WantEntry(c, cancel=True) for c in blocks[:150]]))
    extra = CID.hash_of(b"have")
    eng.receive(p, Message([WantEntry(extra, priority=9, want_type=WantType.HAVE)]))
    batch = eng.next_batch()
    assert batch is not None
    assert batch.haves == []  # we lack it and it did not ask for DONT_HAVE
    assert batch.blocks == blocks[150:]
    assert eng.next_batch() is None


def session_examined_per_block(n: int) -> float:
    """One seeder that has everything; a tick after every message, as the service does."""
    s = Session()
    p = peer()
    s.add_peer(p, 0.0)
    wanted = cids(n, "s")
    s.want(wanted, 0.0)
    now = 0.0
    pending = s.tick(now).messages.get(p, [])
    delivered = 0
    while pending:
        entry = pending.pop(0)
        now += 0.001
        if entry.cancel:
            continue
        if entry.want_type == WantType.HAVE:
            s.on_have(p, entry.cid, now)
        else:
            assert s.on_block(p, entry.cid, 1, now)
            delivered += 1
        pending += s.tick(now).messages.get(p, [])
        deadline = s.next_deadline()
        assert deadline is None or deadline > now
    assert delivered == n
    assert s.done()
    return s.examined / n


def test_session_work_per_block_does_not_grow_with_the_wants() -> None:
    small = session_examined_per_block(256)
    big = session_examined_per_block(4096)
    # each want is looked at a bounded number of times: once to hand out, once for want-haves
    assert small <= 4.0
    assert big <= 4.0


def test_session_with_full_windows_examines_nothing() -> None:
    s = Session(SessionConfig(initial_window=2, max_window=2))
    p = peer()
    s.add_peer(p, 0.0)
    first = cids(1, "f")
    s.want(first, 0.0)
    s.tick(0.0)
    s.on_have(p, first[0], 0.01)  # a session peer now
    s.want(cids(3000, "g"), 0.01)
    s.tick(0.02)  # fills the window and broadcasts the first max_broadcast want-haves
    for _ in range(20):
        s.tick(0.03)
    before = s.examined
    for i in range(100):
        acts = s.tick(0.04 + i * 0.0001)
        assert not acts.messages.get(p, [])
    assert s.examined == before
    assert s.in_flight() == 2

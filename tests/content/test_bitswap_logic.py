"""The sans-IO parts of Bitswap: decision engine, ledger, wantlist, client session, progress."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.content.bitswap.messages import Message, WantEntry, WantType
from peerstack.content.bitswap.progress import ProgressTracker
from peerstack.content.bitswap.server import DecisionEngine, ServerConfig
from peerstack.content.bitswap.session import Session, SessionConfig
from peerstack.content.bitswap.wantlist import Wantlist
from peerstack.core.cid import CID
from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.errors import LimitExceeded


def peer() -> PeerId:
    return PeerId.from_public_key(PrivateKey.generate().public_key)


def cids(n: int, tag: str = "") -> list[CID]:
    return [CID.hash_of(f"{tag}{i}".encode()) for i in range(n)]


# -- wantlist and ledger ----------------------------------------------------------------------


def test_wantlist_bounds_and_order() -> None:
    wl = Wantlist(3)
    a, b, c, d = cids(4)
    wl.add(a, 1)
    wl.add(b, 5, WantType.HAVE)
    wl.add(c, 5)
    assert [w.cid for w in wl.sorted()] == [b, c, a]
    with pytest.raises(LimitExceeded):
        wl.add(d)
    wl.add(b, 5, WantType.BLOCK)  # an upgrade, not a new entry
    assert wl.get(b) is not None
    assert wl.get(b).want_type == WantType.BLOCK  # type: ignore[union-attr]
    wl.add(b, 5, WantType.HAVE)  # never downgraded
    assert wl.get(b).want_type == WantType.BLOCK  # type: ignore[union-attr]


# -- decision engine --------------------------------------------------------------------------


class Sizes:
    def __init__(self, have: dict[CID, int]) -> None:
        self.have = have

    def __call__(self, cid: CID) -> int | None:
        return self.have.get(cid)


def test_engine_answers_blocks_haves_and_dont_haves() -> None:
    blocks = cids(3)
    missing = CID.hash_of(b"missing")
    sizes = Sizes({c: 100 for c in blocks})
    eng = DecisionEngine(sizes)
    p = peer()
    eng.receive(
        p,
        Message(
            [
                WantEntry(blocks[0]),
                WantEntry(blocks[1], want_type=WantType.HAVE),
                WantEntry(missing, send_dont_have=True),
                WantEntry(blocks[2], want_type=WantType.HAVE, send_dont_have=True),
            ]
        ),
    )
    batch = eng.next_batch()
    assert batch is not None
    assert batch.blocks == [blocks[0]]
    assert set(batch.haves) == {blocks[1], blocks[2]}
    assert batch.dont_haves == [missing]
    assert batch.nbytes == 100
    assert eng.next_batch() is None
    led = eng.ledgers[p]
    assert missing in led.wantlist  # kept: sent if we get it later
    sizes.have[missing] = 7  # the block arrives
    assert eng.block_added(missing) == [p]
    again = eng.next_batch()
    assert again is not None
    assert again.blocks == [missing]
    assert missing not in led.wantlist
    eng.batch_done(batch, 100)
    assert led.blocks_sent == 1
    assert led.bytes_in_flight == 7  # the second batch is not written yet


def test_engine_cancel_and_full_wantlist() -> None:
    a, b, c = cids(3)
    eng = DecisionEngine(Sizes({}))
    p = peer()
    eng.receive(p, Message([WantEntry(a), WantEntry(b)]))
    eng.receive(p, Message([WantEntry(a, cancel=True)]))
    assert a not in eng.ledgers[p].wantlist
    eng.receive(p, Message([WantEntry(c)], full=True))
    assert [w.cid for w in eng.ledgers[p].wantlist] == [c]


def test_engine_is_fair_across_peers() -> None:
    size = 512 * 1024
    greedy, modest = peer(), peer()
    many, few = cids(64, "g"), cids(2, "m")
    eng = DecisionEngine(
        Sizes({c: size for c in [*many, *few]}), ServerConfig(max_bytes_in_flight=64 * size)
    )
    eng.receive(greedy, Message([WantEntry(c) for c in many]))
    eng.receive(modest, Message([WantEntry(c) for c in few]))
    order = []
    for _ in range(4):
        batch = eng.next_batch()
        assert batch is not None
        order.append(batch.peer)
    # the modest peer is served in the second turn, not after the greedy one's 32 MiB
    assert order[:2] == [greedy, modest]


def test_engine_limits_bytes_in_flight_per_peer() -> None:
    size = 1024 * 1024
    blocks = cids(10)
    eng = DecisionEngine(
        Sizes({c: size for c in blocks}),
        ServerConfig(max_bytes_in_flight=2 * size, target_message_bytes=size),
    )
    p = peer()
    eng.receive(p, Message([WantEntry(c) for c in blocks]))
    first, second = eng.next_batch(), eng.next_batch()
    assert first is not None
    assert second is not None
    assert eng.next_batch() is None  # 2 MiB queued and not written yet
    assert not eng.has_work()
    eng.batch_done(first, size)
    assert eng.has_work()
    assert eng.next_batch() is not None


def test_engine_counts_bytes_sent_past_a_disconnect() -> None:
    size = 1000
    blocks = cids(3, "sent")
    eng = DecisionEngine(Sizes({c: size for c in blocks}), ServerConfig(target_message_bytes=size))
    p = peer()
    eng.receive(p, Message([WantEntry(c) for c in blocks]))
    first, second = eng.next_batch(), eng.next_batch()
    assert first is not None
    assert second is not None
    eng.batch_done(first, size)
    assert eng.bytes_sent == eng.ledgers[p].bytes_sent == size
    eng.peer_disconnected(p)  # its ledger goes; the total stays, and a late batch counts
    eng.batch_done(second, size)
    assert p not in eng.ledgers
    assert eng.bytes_sent == 2 * size


def test_engine_wantlist_cap_and_flood() -> None:
    eng = DecisionEngine(Sizes({}), ServerConfig(max_wantlist=10, flood_limit=20))
    p = peer()
    eng.receive(p, Message([WantEntry(c) for c in cids(15)]))
    assert len(eng.ledgers[p].wantlist) == 10
    assert eng.ledgers[p].ignored_wants == 5
    with pytest.raises(LimitExceeded):
        eng.receive(p, Message([WantEntry(c) for c in cids(21, "f")]))
    assert len(eng.ledgers[p].wantlist) == 10  # unchanged by the refused message


def test_engine_keeps_messages_small() -> None:
    size = 700 * 1024
    blocks = cids(3)
    eng = DecisionEngine(Sizes({c: size for c in blocks}))
    p = peer()
    eng.receive(p, Message([WantEntry(c) for c in blocks]))
    batches = [eng.next_batch() for _ in range(3)]
    assert [len(b.blocks) for b in batches if b is not None] == [1, 1, 1]


# -- client session ---------------------------------------------------------------------------


def entries_for(actions_messages: dict[PeerId, list[WantEntry]], p: PeerId) -> list[WantEntry]:
    return actions_messages.get(p, [])


def test_session_discovers_with_want_have_then_asks_for_blocks() -> None:
    s = Session(SessionConfig(discovery_delay=1.0))
    p1, p2 = peer(), peer()
    s.add_peer(p1, 0.0)
    s.add_peer(p2, 0.0)
    root = CID.hash_of(b"root")
    s.want([root], 0.0)
    acts = s.tick(0.0)
    for p in (p1, p2):
        (e,) = acts.messages[p]
        assert e.want_type == WantType.HAVE
        assert e.send_dont_have
    s.on_dont_have(p1, root, 0.1)
    s.on_have(p2, root, 0.1)
    acts = s.tick(0.1)
    (e,) = acts.messages[p2]
    assert e.want_type == WantType.BLOCK
    assert p1 not in acts.messages
    assert s.on_block(p2, root, 100, 0.2)
    assert s.done()
    # p1 was asked (want-have) and gets a cancel
    acts = s.tick(0.2)
    assert [x.cancel for x in acts.messages[p1]] == [True]


def test_session_spreads_blocks_and_cancels_others() -> None:
    s = Session(SessionConfig(initial_window=4))
    p1, p2 = peer(), peer()
    for p in (p1, p2):
        s.add_peer(p, 0.0)
    first = CID.hash_of(b"first")
    s.want([first], 0.0)
    s.tick(0.0)
    s.on_have(p1, first, 0.0)
    s.on_have(p2, first, 0.0)
    s.tick(0.0)
    asked = next(p for p in (p1, p2) if first in s.peers[p].in_flight)
    assert s.on_block(asked, first, 10, 0.1)
    # both are session peers now: eight children go out as want-block over both windows
    kids = cids(8, "k")
    s.want(kids, 0.1)
    acts = s.tick(0.1)
    blocks = {
        p: [e for e in acts.messages.get(p, []) if e.want_type == WantType.BLOCK and not e.cancel]
        for p in (p1, p2)
    }
    other = p2 if asked == p1 else p1
    assert [e.cid for e in acts.messages[other] if e.cancel] == [first]
    assert len(blocks[p1]) + len(blocks[p2]) == 8
    assert blocks[p1]
    assert blocks[p2]
    assert s.in_flight() == 8


def test_a_full_window_is_refilled_in_batches() -> None:
    s = Session(SessionConfig(initial_window=16, max_window=16, refill_fraction=0.25, block_unit=0))
    p = peer()
    s.add_peer(p, 0.0)
    s.peers[p].session_peer = True
    wanted = cids(100)
    s.want(wanted, 0.0)

    def asked(now: float) -> list[CID]:
        acts = s.tick(now)
        return [e.cid for e in acts.messages.get(p, []) if e.want_type == WantType.BLOCK]

    first = asked(0.0)
    assert first == wanted[:16]  # an empty window fills at once, in order
    for i, cid in enumerate(first[:3]):
        s.on_block(p, cid, 10, 0.1 + i)
        assert asked(0.1 + i) == []  # 13 of 16 still queued at the peer: no message yet
    s.on_block(p, first[3], 10, 4.0)
    assert asked(4.0) == wanted[16:20]  # a quarter free: one message with four wants
    assert len(s.peers[p].in_flight) == 16


MIB = 1 << 20


def test_smaller_blocks_may_have_more_in_flight_for_the_same_bytes() -> None:
    s = Session(SessionConfig(initial_window=1000, max_window=1000, max_in_flight=64))
    (p,) = _session_peers(s, 1)
    s.want(cids(2000), 0.0)
    s.tick(0.0)
    assert s.in_flight() == 64  # block size unknown: 64 of the 1 MiB unit
    s.on_block(p, next(iter(s.peers[p].in_flight)), 256 * 1024, 0.1)
    s.tick(0.1)
    assert s.in_flight() == 256  # 64 MiB of 256 KiB blocks
    for i in range(60):  # small blocks (empty ones too): the mean falls, the count is capped
        s.on_block(p, next(iter(s.peers[p].in_flight)), 1000 if i % 2 else 0, 0.2)
    s.tick(0.2)
    assert s.in_flight() == SessionConfig().max_blocks_in_flight


def _session_peers(s: Session, n: int) -> list[PeerId]:
    out = []
    for _ in range(n):
        p = peer()
        s.add_peer(p, 0.0)
        s.peers[p].session_peer = True
        out.append(p)
    return out


def test_requests_in_flight_are_capped_across_peers() -> None:
    s = Session(SessionConfig(initial_window=128, max_window=128, max_in_flight=64))
    peers = _session_peers(s, 4)
    s.want(cids(300), 0.0)
    s.tick(0.0)
    assert s.in_flight() == 64  # not 4 x 128: more would only queue at the peers
    # a block in: no refill until a quarter of the session's allowance is free again
    first = next(iter(s.peers[peers[0]].in_flight))
    s.on_block(peers[0], first, MIB, 0.1)
    s.tick(0.1)
    assert s.in_flight() == 63


def test_each_peer_gets_its_share_and_the_fastest_the_rest() -> None:
    s = Session(SessionConfig(initial_window=64, max_window=64, max_in_flight=64, busy_seconds=0.5))
    fast, slow = _session_peers(s, 2)
    s.peers[fast].gap = 0.02  # 50 blocks a second: 25 keep it busy for half a second
    s.peers[slow].gap = 0.1  # ten blocks a second: five keep it busy
    s.want(cids(200), 0.0)
    s.tick(0.0)
    assert len(s.peers[slow].in_flight) == 5
    assert len(s.peers[fast].in_flight) == 59


def test_a_peer_that_carries_the_transfer_alone_keeps_it() -> None:
    s = Session(SessionConfig(initial_window=64, max_window=64, max_in_flight=64, busy_seconds=0.5))
    fast, other = _session_peers(s, 2)
    s.peers[fast].gap = 0.001  # its whole window is 64 ms of work: it needs no help
    s.peers[other].gap = 0.1
    s.want(cids(200), 0.0)
    s.tick(0.0)
    assert len(s.peers[fast].in_flight) == 64
    assert not s.peers[other].in_flight
    for cid in list(s.peers[fast].in_flight)[:40]:
        s.on_block(fast, cid, MIB, 1.0)
    s.peers[fast].gap = 0.5  # it slowed down: the other is the faster now, and takes what is free
    s.tick(1.0)
    assert len(s.peers[other].in_flight) == 40
    assert len(s.peers[fast].in_flight) == 24


def test_many_slow_peers_each_get_requests_past_max_in_flight() -> None:
    s = Session(SessionConfig(initial_window=8, max_in_flight=16, busy_seconds=0.5))
    peers = _session_peers(s, 20)
    for p in peers:
        s.peers[p].gap = 1.0  # a block a second each: two keep one busy
    s.want(cids(200), 0.0)
    s.tick(0.0)
    assert s.in_flight() == 40  # not 16: each of the 20 has a block coming and one queued
    assert all(len(s.peers[p].in_flight) == 2 for p in peers)


def test_a_peer_without_the_content_is_probed_not_flooded() -> None:
    s = Session(SessionConfig(initial_window=8, max_in_flight=8, max_probes=16))
    (seeder,) = _session_peers(s, 1)
    stranger = peer()
    s.add_peer(stranger, 0.0)
    s.want(cids(200), 0.0)
    acts = s.tick(0.0)
    probes = [e for e in acts.messages[stranger] if e.want_type == WantType.HAVE]
    assert len(probes) == 16  # not a want-have for each of the 192 waiting blocks
    assert s.tick(0.1).messages.get(stranger) is None  # nothing more while they are unanswered
    for e in probes:
        s.on_dont_have(stranger, e.cid, 0.2)
    more = cids(20, "more")
    s.want(more, 0.2)
    acts = s.tick(0.3)
    again = [e.cid for e in acts.messages.get(stranger, []) if e.want_type == WantType.HAVE]
    assert 0 < len(again) <= 16  # answered: it may be asked about others
    assert len(acts.messages.get(seeder, [])) == 0  # its allowance is still in flight


def test_session_peers_get_want_block_only_others_want_have() -> None:
    s = Session(SessionConfig(initial_window=2, discovery_delay=0.0))
    seeder, stranger = peer(), peer()
    s.add_peer(seeder, 0.0)
    s.add_peer(stranger, 0.0)
    s.peers[seeder].session_peer = True
    wanted = cids(6)
    s.want(wanted, 0.0)
    acts = s.tick(0.0)
    to_seeder = acts.messages[seeder]
    assert [e.want_type for e in to_seeder] == [WantType.BLOCK] * 2  # its window, nothing else
    assert {e.cid for e in acts.messages[stranger]} == set(wanted[2:])  # discovery
    assert all(e.want_type == WantType.HAVE for e in acts.messages[stranger])
    assert acts.find_providers == []  # a session peer may still send the rest
    for cid in wanted[2:]:  # ...until it refuses them
        s.on_dont_have(seeder, cid, 0.1)
    s.on_dont_have(stranger, wanted[2], 0.1)
    assert s.tick(0.2).find_providers == [wanted[2]]


def test_end_game_moves_queued_requests_to_an_idle_peer() -> None:
    s = Session(SessionConfig(initial_window=20, max_window=20, endgame_keep=4))
    fast, slow = peer(), peer()
    for p in (fast, slow):
        s.add_peer(p, 0.0)
        s.peers[p].session_peer = True
    wanted = cids(40)
    s.want(wanted, 0.0)
    s.tick(0.0)
    on_slow = list(s.peers[slow].in_flight)
    assert len(on_slow) == 20
    for i, cid in enumerate(list(s.peers[fast].in_flight)):
        s.on_block(fast, cid, 10, 0.01 * (i + 1))
    acts = s.tick(0.5)  # nothing left to hand out; the fast peer idles, the slow one has 20
    moved = [e.cid for e in acts.messages[fast] if e.want_type == WantType.BLOCK and not e.cancel]
    assert moved == on_slow[-10:]  # half the difference, the newest requests
    assert [e.cid for e in acts.messages[slow] if e.cancel] == on_slow[-10:]
    assert list(s.peers[slow].in_flight) == on_slow[:10]
    assert all(s.wants[c].requested_from == fast for c in moved)
    # a moved block the slow peer sent anyway still counts once, and cancels the other ask
    assert s.on_block(slow, moved[0], 10, 0.6)
    assert moved[0] not in s.peers[fast].in_flight
    assert s.tick(0.6).messages[fast] == [WantEntry(moved[0], cancel=True)]
    # balanced now: no more moves, and never below endgame_keep
    assert all(not e.cancel for e in s.tick(0.7).messages.get(slow, []))


@pytest.mark.parametrize(("giver_gap", "moved"), [(0.01, 20), (0.001, 3)])
def test_end_game_moves_what_evens_out_the_finish(giver_gap: float, moved: int) -> None:
    s = Session(
        SessionConfig(initial_window=40, max_window=40, max_in_flight=40, endgame_keep=4)
    )
    giver, taker = _session_peers(s, 2)
    s.want(cids(40), 0.0)
    s.peers[taker].window = 0.0  # everything goes to the giver
    s.tick(0.0)
    s.peers[taker].window = 40.0
    assert len(s.peers[giver].in_flight) == 40
    s.peers[giver].gap = giver_gap
    s.peers[taker].gap = 0.01
    acts = s.tick(0.1)
    to_taker = [e for e in acts.messages.get(taker, []) if not e.cancel]
    # as fast as the taker: half of its queue; ten times faster: it drains 37 in the time the
    # taker needs for 3 (37 x 1 ms ~ 3 x 10 ms)
    assert len(to_taker) == moved
    assert len(s.peers[giver].in_flight) == 40 - moved


def test_session_window_grows_and_stalled_peer_is_retried_elsewhere() -> None:
    cfg = SessionConfig(
        initial_window=2, max_window=8, min_stall_timeout=1.0, max_stall_timeout=4.0
    )
    s = Session(cfg)
    fast, slow = peer(), peer()
    s.add_peer(fast, 0.0)
    s.add_peer(slow, 0.0)
    s.peers[fast].session_peer = s.peers[slow].session_peer = True
    wanted = cids(4)
    s.want(wanted, 0.0)
    s.tick(0.0)
    on_slow = list(s.peers[slow].in_flight)
    on_fast = list(s.peers[fast].in_flight)
    assert len(on_slow) == 2
    assert len(on_fast) == 2
    for i, c in enumerate(on_fast):
        s.on_block(fast, c, 10, 0.1 * (i + 1))
    assert s.peers[fast].window == 4
    # the slow peer sends nothing; after its stall timeout its blocks move to the fast peer
    acts = s.tick(3.0)
    assert s.peers[slow].stalls == 1
    assert s.peers[slow].window == 1
    assert {e.cid for e in acts.messages[slow] if e.cancel} == set(on_slow)
    assert {e.cid for e in acts.messages[fast] if not e.cancel} == set(on_slow)
    assert s.next_deadline() is not None


def test_session_asks_for_providers_when_nobody_has_it() -> None:
    s = Session(SessionConfig(discovery_delay=1.0, provider_search_interval=10.0))
    cid = CID.hash_of(b"rare")
    s.want([cid], 0.0)
    assert s.tick(0.5).find_providers == []
    assert s.tick(1.0).find_providers == [cid]
    assert s.tick(2.0).find_providers == []  # not again before the interval
    assert s.tick(11.0).find_providers == [cid]


def test_banned_peer_is_not_added_again() -> None:
    s = Session()
    p = peer()
    s.add_peer(p, 0.0)
    s.ban(p)
    s.add_peer(p, 1.0)
    assert p not in s.peers


def test_progress_rate() -> None:
    t = ProgressTracker(started=0.0, window=2.0)
    p = peer()
    t.discovered(3)
    t.block(1000, 0.5, p)
    t.block(1000, 1.0, p)
    t.block(500, 1.0)  # from disk: counted as done, not as fetched
    snap = t.snapshot(1.0)
    assert snap.blocks_done == 3
    assert snap.bytes_done == 2500
    assert snap.bytes_fetched == 2000
    assert snap.peers == 1
    assert snap.rate == pytest.approx(2000.0)
    assert t.rate(10.0) == 0.0


def test_session_asks_again_when_nobody_answers() -> None:
    s = Session(SessionConfig(retry_interval=5.0, discovery_delay=100.0))
    p = peer()
    s.add_peer(p, 0.0)
    cid = CID.hash_of(b"silent")
    s.want([cid], 0.0)
    assert [e.want_type for e in s.tick(0.0).messages[p]] == [WantType.HAVE]
    assert s.tick(1.0).messages == {}
    assert s.next_deadline() == 5.0
    assert [e.want_type for e in s.tick(5.0).messages[p]] == [WantType.HAVE]


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(
            ["block", "have", "dont_have", "tick", "add_peer", "remove_peer", "ban", "want"]
        ),
        st.integers(0, 3),  # peer index
        st.integers(0, 7),  # cid index
        st.floats(0.0, 3.0),  # time step
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_session_invariants_under_random_events(events: list[tuple[str, int, int, float]]) -> None:
    peers = [peer() for _ in range(4)]
    wanted = cids(8, "r")
    s = Session(
        SessionConfig(
            initial_window=2,
            max_window=4,
            max_in_flight=6,
            min_stall_timeout=0.5,
            max_stall_timeout=2.0,
            block_unit=0,  # the limits in plain counts (the blocks here are 10 bytes)
        )
    )
    now = 0.0
    for p in peers[:2]:
        s.add_peer(p, now)
    s.want(wanted[:4], now)
    for kind, pi, ci, step in events:
        now += step
        p, c = peers[pi], wanted[ci]
        if kind == "block":
            s.on_block(p, c, 10, now)
            assert not s.is_wanted(c)
        elif kind == "have":
            s.on_have(p, c, now)
        elif kind == "dont_have":
            s.on_dont_have(p, c, now)
        elif kind == "add_peer":
            s.add_peer(p, now)
        elif kind == "remove_peer":
            s.remove_peer(p)
        elif kind == "ban":
            s.ban(p)
        elif kind == "want":
            s.want([c], now)
        acts = s.tick(now)
        for target in acts.messages:
            assert target not in s.banned
        for state in s.peers.values():
            assert len(state.in_flight) <= max(int(state.window), 1)
            assert 1 <= state.window <= 4
        sessions = sum(1 for st in s.peers.values() if st.session_peer)
        assert s.in_flight() <= max(6, 2 * sessions)
        for want in s.wants.values():
            if want.requested_from is not None:
                assert want.cid in s.peers[want.requested_from].in_flight
        deadline = s.next_deadline()
        assert deadline is None or deadline >= 0


class CountingSizes(Sizes):
    def __init__(self, have: dict[CID, int]) -> None:
        super().__init__(have)
        self.asked: list[CID] = []

    def __call__(self, cid: CID) -> int | None:
        self.asked.append(cid)
        return super().__call__(cid)


def test_engine_takes_a_message_s_sizes_in_one_batch() -> None:
    blocks, missing = cids(3), cids(2, "x")
    sizes = CountingSizes({c: 10 for c in blocks})
    eng = DecisionEngine(sizes)
    p = peer()
    wants = [WantEntry(c) for c in blocks] + [WantEntry(c, send_dont_have=True) for c in missing]
    pending = eng.receive(p, Message(wants), defer_sizes=True)
    assert pending == [*blocks, *missing]
    assert eng.next_batch() is None  # nothing is served before its size is known
    assert eng.unavailable() == set(pending)  # an import may land while they are looked up
    eng.set_sizes(p, pending, {c: sizes(c) for c in pending})
    sizes.asked.clear()
    batch = eng.next_batch()
    assert batch is not None
    assert batch.blocks == blocks
    assert batch.dont_haves == missing
    assert sizes.asked == []  # the engine did not look anything up itself
    assert eng.unavailable() == set(missing)
    # a block that arrives later comes with its size
    assert eng.block_added(missing[0], 7) == [p]
    again = eng.next_batch()
    assert again is not None
    assert again.blocks == [missing[0]]
    assert again.nbytes == 7
    assert sizes.asked == []


def test_engine_falls_back_to_lookups_when_sizes_never_came() -> None:
    blocks = cids(2)
    sizes = CountingSizes({c: 10 for c in blocks})
    eng = DecisionEngine(sizes)
    p = peer()
    pending = eng.receive(p, Message([WantEntry(c) for c in blocks]), defer_sizes=True)
    eng.set_sizes(p, pending, None)  # the lookup failed or was cancelled
    batch = eng.next_batch()
    assert batch is not None
    assert batch.blocks == blocks
    assert sizes.asked == blocks

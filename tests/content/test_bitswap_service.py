"""The Bitswap service between in-memory hosts: real service code, real blockstores."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from peerstack.content import dagpb
from peerstack.content.bitswap import messages as m
from peerstack.content.bitswap.messages import Message, WantEntry, WantType
from peerstack.content.bitswap.progress import Progress
from peerstack.content.bitswap.server import ServerConfig
from peerstack.content.bitswap.service import (
    EXPAND_FIRST,
    PROTOCOL_1_0,
    PROTOCOL_1_2,
    Bitswap,
    BitswapConfig,
    Provider,
    Reprovider,
    _Storing,
)
from peerstack.content.bitswap.session import Actions, Session, SessionConfig
from peerstack.content.blockstore import Blockstore, BlockstoreFull, FsyncPolicy
from peerstack.content.chunks import Buffer
from peerstack.content.dagpb import MalformedDagPb
from peerstack.content.exporter import cat
from peerstack.content.importer import ImportProfile, import_bytes
from peerstack.core import varint
from peerstack.core.cid import CID, DAG_PB, RAW
from peerstack.core.multihash import Multihash
from peerstack.core.peer_id import PeerId
from peerstack.errors import PeerstackError
from peerstack.host.interface import Stream, read_length_prefixed, write_length_prefixed
from tests.content.content_testkit import MemHost, MemNetwork, interrupt_after, pattern

SMALL_CHUNKS = ImportProfile(chunk_size=64 * 1024, max_links=16)


class Node:
    def __init__(self, host: MemHost, store: Blockstore, bitswap: Bitswap) -> None:
        self.host = host
        self.store = store
        self.bitswap = bitswap

    @property
    def peer(self) -> PeerId:
        return self.host.peer_id


@pytest.fixture
async def nodes(net: MemNetwork, tmp_path: Path) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        out: list[Node] = []
        for i in range(4):
            host = net.add_host()
            store = stack.enter_context(Blockstore(tmp_path / f"n{i}", FsyncPolicy.NEVER))
            bs = await stack.enter_async_context(Bitswap(host, store))
            out.append(Node(host, store, bs))
        yield out


async def read_all(store: Blockstore, cid: CID) -> bytes:
    return b"".join([p async for p in cat(store, cid)])


async def test_fetch_a_file_from_one_peer(nodes: list[Node]) -> None:
    a, b = nodes[0], nodes[1]
    data = pattern(5 * 1024 * 1024 + 123)
    res = await import_bytes(a.store, data)
    await b.host.connect(a.peer)
    events: list[Progress] = []
    result = await asyncio.wait_for(b.bitswap.fetch(res.cid, events.append), 30)
    assert result.blocks == 7  # 6 leaves + root
    assert result.fetched_bytes == result.bytes
    assert await read_all(b.store, res.cid) == data
    assert events[-1].done
    assert events[-1].bytes_done == result.bytes
    assert events[-1].peers == 1
    assert a.bitswap.engine.ledgers[b.peer].blocks_sent == 7
    assert (await b.store.verify()).ok


async def test_fetch_from_several_peers_in_parallel(nodes: list[Node]) -> None:
    a, b, c = nodes[0], nodes[1], nodes[2]
    data = pattern(3 * 1024 * 1024)
    ra = await import_bytes(a.store, data, SMALL_CHUNKS)
    rc = await import_bytes(c.store, data, SMALL_CHUNKS)
    assert ra.cid == rc.cid
    await b.host.connect(a.peer)
    await b.host.connect(c.peer)
    result = await asyncio.wait_for(b.bitswap.fetch(ra.cid), 30)
    assert result.blocks == 48 + 3 + 1
    assert await read_all(b.store, ra.cid) == data
    sent_a = a.bitswap.engine.ledgers[b.peer].blocks_sent
    sent_c = c.bitswap.engine.ledgers[b.peer].blocks_sent
    assert sent_a > 0
    assert sent_c > 0


async def test_two_fetchers_in_parallel_and_dont_have(nodes: list[Node]) -> None:
    a, b, c, empty = nodes
    data = pattern(2 * 1024 * 1024 + 5)
    res = await import_bytes(a.store, data, SMALL_CHUNKS)
    for n in (b, c):
        await n.host.connect(a.peer)
        await n.host.connect(empty.peer)
    await asyncio.wait_for(asyncio.gather(b.bitswap.fetch(res.cid), c.bitswap.fetch(res.cid)), 30)
    assert await read_all(b.store, res.cid) == data
    assert await read_all(c.store, res.cid) == data
    # the empty peer was asked (want-have) and never sent anything
    assert empty.bitswap.engine.ledgers[b.peer].blocks_sent == 0
    assert empty.bitswap.engine.ledgers[b.peer].messages_received > 0


async def test_get_file_resumes_and_renames_when_complete(
    nodes: list[Node], tmp_path: Path
) -> None:
    a, b = nodes[0], nodes[1]
    data = pattern(1024 * 1024 + 77)
    res = await import_bytes(a.store, data, SMALL_CHUNKS)
    # as if an earlier get had stopped half way: half the leaves are already on b's disk
    leaves = await a.store.children(res.cid)
    for leaf in leaves[: len(leaves) // 2]:
        await b.store.put(leaf, await a.store.get(leaf))
    await b.host.connect(a.peer)
    out = tmp_path / "out.bin"
    result = await asyncio.wait_for(b.bitswap.get_file(res.cid, out), 30)
    assert out.read_bytes() == data
    assert result.fetched_bytes < result.bytes
    assert [name for name in os.listdir(tmp_path) if "partial" in name] == []
    assert await b.store.transfers() == []


class FakeRouting:
    def __init__(self, providers: dict[CID, list[Provider]]) -> None:
        self.providers = providers
        self.provided: list[CID] = []

    async def find_providers(self, cid: CID, limit: int) -> AsyncIterator[Provider]:
        for prov in self.providers.get(cid, [])[:limit]:
            yield prov

    async def provide(self, cid: CID) -> None:
        self.provided.append(cid)


async def test_providers_from_the_router(net: MemNetwork, tmp_path: Path) -> None:
    ha, hb = net.add_host(), net.add_host()
    with Blockstore(tmp_path / "a") as sa, Blockstore(tmp_path / "b") as sb:
        routing = FakeRouting({})
        async with Bitswap(ha, sa, routing) as ba, Bitswap(hb, sb, routing) as bb:
            src = tmp_path / "file.bin"
            src.write_bytes(pattern(300_000))
            added = await ba.add(src)
            assert routing.provided == [added.cid]
            routing.providers[added.cid] = [Provider(ha.peer_id)]
            assert hb.connected_peers() == []
            await asyncio.wait_for(bb.fetch(added.cid), 30)
            assert await read_all(sb, added.cid) == pattern(300_000)
            assert ha.peer_id in hb.connected_peers()
            assert await Reprovider(sa, routing).reprovide_once() == 1
            assert routing.provided == [added.cid, added.cid]


# -- misbehaving peers -----------------------------------------------------------------------


class RawPeer:
    """A peer that speaks Bitswap by hand, to misbehave precisely."""

    def __init__(self, host: MemHost) -> None:
        self.host = host
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        for proto in (PROTOCOL_1_2,):
            host.set_stream_handler(proto, self._handle)

    async def _handle(self, stream: Stream) -> None:
        try:
            while True:
                data = await read_length_prefixed(stream, m.MAX_MESSAGE_SIZE)
                if data is None:
                    return
                await self.inbox.put(m.decode(data))
        except (PeerstackError, OSError):
            return  # the peer under test resets the stream when it cuts us off


async def _wait_banned(node: Node, peer: PeerId) -> None:
    for _ in range(200):
        if node.bitswap.is_banned(peer):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("peer was not banned")


async def test_corrupt_block_sender_is_cut_off(nodes: list[Node], net: MemNetwork) -> None:
    a, b = nodes[0], nodes[1]
    evil = RawPeer(net.add_host())
    data = pattern(200_000)
    res = await import_bytes(a.store, data, SMALL_CHUNKS)
    await b.host.connect(evil.host.peer_id)
    fetch = asyncio.create_task(b.bitswap.fetch(res.cid))
    msg = await asyncio.wait_for(evil.inbox.get(), 10)
    wanted = msg.wantlist[0].cid
    stream = await evil.host.new_stream(b.peer, [PROTOCOL_1_2])
    bad = Message(payload=[m.BlockPayload(wanted.prefix(), b"not the block")])
    await write_length_prefixed(stream, bad.encode())
    await _wait_banned(b, evil.host.peer_id)
    assert b.bitswap.penalties[evil.host.peer_id] == 1
    assert not await b.store.has(wanted)
    # an honest peer shows up and the fetch completes
    await b.host.connect(a.peer)
    await asyncio.wait_for(fetch, 30)
    assert await read_all(b.store, res.cid) == data
    assert (await b.store.verify()).ok


async def _send_raw(evil: RawPeer, target: Node, payload: bytes) -> None:
    stream = await evil.host.new_stream(target.peer, [PROTOCOL_1_2])
    await stream.write(payload)


async def test_wantlist_flood_is_cut_off(nodes: list[Node], net: MemNetwork) -> None:
    a = nodes[0]
    evil = RawPeer(net.add_host())
    wants = [WantEntry(CID.hash_of(i.to_bytes(4, "big"))) for i in range(9000)]
    await _send_raw(evil, a, varint.encode(len(Message(wants).encode())) + Message(wants).encode())
    await _wait_banned(a, evil.host.peer_id)
    assert evil.host.peer_id not in a.bitswap.engine.ledgers


async def test_oversized_message_is_cut_off(nodes: list[Node], net: MemNetwork) -> None:
    evil = RawPeer(net.add_host())
    await _send_raw(evil, nodes[0], varint.encode(m.MAX_MESSAGE_SIZE + 1) + b"x" * 100)
    await _wait_banned(nodes[0], evil.host.peer_id)


async def test_malformed_message_is_cut_off(nodes: list[Node], net: MemNetwork) -> None:
    evil = RawPeer(net.add_host())
    await _send_raw(evil, nodes[0], b"\x03\x0a\x05\x00")
    await _wait_banned(nodes[0], evil.host.peer_id)


async def test_unsolicited_block_is_cut_off(nodes: list[Node], net: MemNetwork) -> None:
    evil = RawPeer(net.add_host())
    cid = CID.hash_of(b"spam")
    msg = Message(payload=[m.BlockPayload(cid.prefix(), b"spam")]).encode()
    await _send_raw(evil, nodes[0], varint.encode(len(msg)) + msg)
    await _wait_banned(nodes[0], evil.host.peer_id)
    assert not await nodes[0].store.has(cid)


async def test_server_answers_have_dont_have_and_old_protocols(
    nodes: list[Node], net: MemNetwork
) -> None:
    a = nodes[0]
    client = RawPeer(net.add_host())
    client.host.set_stream_handler(PROTOCOL_1_0, client._handle)
    have = await a.store.put_data(b"present", RAW)
    missing = CID.hash_of(b"absent")
    msg = Message(
        [
            WantEntry(have, want_type=WantType.HAVE, send_dont_have=True),
            WantEntry(missing, want_type=WantType.BLOCK, send_dont_have=True),
        ]
    ).encode()
    await _send_raw(client, a, varint.encode(len(msg)) + msg)
    reply = await asyncio.wait_for(client.inbox.get(), 10)
    kinds = {(p.cid, p.type) for p in reply.presences}
    assert kinds == {(have, m.PresenceType.HAVE), (missing, m.PresenceType.DONT_HAVE)}
    # the block arrives later: the waiting want is served then
    await a.store.put(missing, b"absent")
    a.bitswap.notify_new_blocks([missing])
    reply = await asyncio.wait_for(client.inbox.get(), 10)
    assert [p.data for p in reply.payload] == [b"absent"]


async def test_full_disk_fails_the_fetch_cleanly(
    nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = nodes[0], nodes[1]
    res = await import_bytes(a.store, pattern(300_000), SMALL_CHUNKS)
    await b.host.connect(a.peer)

    def full(fd: int, buffers: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(BlockstoreFull):
        await asyncio.wait_for(b.bitswap.fetch(res.cid), 30)
    monkeypatch.undo()
    assert os.listdir(b.store.root / "tmp") == []
    assert (await b.store.verify()).ok
    assert not b.bitswap.is_banned(a.peer)  # not the peer's fault
    await asyncio.wait_for(b.bitswap.fetch(res.cid), 30)  # room again: it completes
    assert await read_all(b.store, res.cid) == pattern(300_000)


async def test_get_block(nodes: list[Node]) -> None:
    a, b = nodes[0], nodes[1]
    cid = await a.store.put_data(b"single block", RAW)
    await b.host.connect(a.peer)
    assert await asyncio.wait_for(b.bitswap.get_block(cid), 10) == b"single block"
    assert await b.store.has(cid)


async def test_bitswap_1_0_peer_gets_blocks_in_the_old_field(
    nodes: list[Node], net: MemNetwork
) -> None:
    a = nodes[0]
    host = net.add_host()
    old = RawPeer(host)
    host.remove_stream_handler(PROTOCOL_1_2)
    host.set_stream_handler(PROTOCOL_1_0, old._handle)
    cid = await a.store.put_data(b"raw", RAW)
    msg = Message([WantEntry(cid)]).encode()
    stream = await host.new_stream(a.peer, [PROTOCOL_1_0])
    await write_length_prefixed(stream, msg)
    reply = await asyncio.wait_for(old.inbox.get(), 10)
    assert reply.blocks == [b"raw"]
    assert reply.payload == []


async def test_peers_without_bitswap_are_skipped(nodes: list[Node], net: MemNetwork) -> None:
    a, b = nodes[0], nodes[1]
    mute = net.add_host()  # connected, but speaks no Bitswap at all
    res = await import_bytes(a.store, pattern(100_000), SMALL_CHUNKS)
    await b.host.connect(mute.peer_id)
    await b.host.connect(a.peer)
    await asyncio.wait_for(b.bitswap.fetch(res.cid), 30)
    assert mute.peer_id in b.bitswap.no_bitswap
    assert not b.bitswap.is_candidate(mute.peer_id)
    assert b.bitswap.penalties == {}


async def test_malformed_dag_pb_from_a_peer_fails_the_fetch(nodes: list[Node]) -> None:
    a, b = nodes[0], nodes[1]
    junk = b"\x0a\x00\x12\x00"  # Data before Links: hashes fine, but is not canonical dag-pb
    cid = CID.hash_of(junk, DAG_PB)
    path = a.store.path_for(cid)  # planted behind the store's back
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(junk)
    await b.host.connect(a.peer)
    with pytest.raises(MalformedDagPb):
        await asyncio.wait_for(b.bitswap.fetch(cid), 10)
    assert not await b.store.has(cid)
    assert b.bitswap.is_banned(a.peer)


class LiarPeer(RawPeer):
    """Says HAVE to everything and then never sends a block."""

    want_blocks: list[CID]

    def __init__(self, host: MemHost) -> None:
        super().__init__(host)
        self.want_blocks = []

    async def run(self, target: PeerId) -> None:
        out = await self.host.new_stream(target, [PROTOCOL_1_2])
        while True:
            msg = await self.inbox.get()
            self.want_blocks += [
                e.cid for e in msg.wantlist if not e.cancel and e.want_type == WantType.BLOCK
            ]
            haves = [
                m.Presence(e.cid, m.PresenceType.HAVE)
                for e in msg.wantlist
                if not e.cancel and e.want_type == WantType.HAVE
            ]
            if haves:
                await write_length_prefixed(out, Message(presences=haves).encode())


async def test_stalled_peer_is_timed_out_and_blocks_come_from_elsewhere(
    net: MemNetwork, tmp_path: Path
) -> None:
    cfg = BitswapConfig(session=SessionConfig(min_stall_timeout=0.2, max_stall_timeout=0.5))
    ha, hb = net.add_host(), net.add_host()
    liar = LiarPeer(net.add_host())
    with Blockstore(tmp_path / "a") as sa, Blockstore(tmp_path / "b") as sb:
        async with Bitswap(ha, sa, config=cfg), Bitswap(hb, sb, config=cfg) as bb:
            data = pattern(600_000)
            res = await import_bytes(sa, data, SMALL_CHUNKS)
            await hb.connect(liar.host.peer_id)
            liar_task = asyncio.create_task(liar.run(hb.peer_id))
            fetch = asyncio.create_task(bb.fetch(res.cid))
            await asyncio.sleep(0.3)  # the liar has been asked and said HAVE
            await hb.connect(ha.peer_id)
            await asyncio.wait_for(fetch, 30)
            liar_task.cancel()
            assert await read_all(sb, res.cid) == data
            assert bb.penalties == {}  # slow is not malicious
            assert res.cid in liar.want_blocks  # it was asked, stalled, and was replaced


async def test_interrupted_get_resumes(nodes: list[Node], tmp_path: Path) -> None:
    a, b = nodes[0], nodes[1]
    data = pattern(2 * 1024 * 1024)
    res = await import_bytes(a.store, data, SMALL_CHUNKS)
    await b.host.connect(a.peer)
    out = tmp_path / "resumed.bin"
    await interrupt_after(10, lambda watch: b.bitswap.get_file(res.cid, out, watch))
    assert not out.exists()
    assert b.bitswap.sessions == set()
    assert await b.store.transfers() == [(res.cid, str(out))]
    assert (await b.store.gc()).removed == 0  # a transfer in progress keeps its blocks
    result = await asyncio.wait_for(b.bitswap.get_file(res.cid, out), 30)
    assert out.read_bytes() == data
    assert result.fetched_bytes < result.bytes
    assert await b.store.transfers() == []


async def test_get_a_directory(nodes: list[Node], tmp_path: Path) -> None:
    a, b = nodes[0], nodes[1]
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "big.bin").write_bytes(pattern(700_000))
    (src / "small.txt").write_text("small")
    added = await a.bitswap.add(src, SMALL_CHUNKS, provide=False)
    await b.host.connect(a.peer)
    out = tmp_path / "copy"
    await asyncio.wait_for(b.bitswap.get_file(added.cid, out), 30)
    assert (out / "sub" / "big.bin").read_bytes() == pattern(700_000)
    assert (out / "small.txt").read_text() == "small"
    assert [name for name in os.listdir(tmp_path) if "partial" in name] == []
    assert [c for c, _ in await a.store.pins()] == [added.cid]


async def test_wants_waiting_before_an_add_are_served_after_it(
    nodes: list[Node], net: MemNetwork, tmp_path: Path
) -> None:
    a = nodes[0]
    client = RawPeer(net.add_host())
    data = pattern(200_000)
    leaf = CID.hash_of(data[: 64 * 1024])  # the first leaf of the file, before it exists
    msg = Message([WantEntry(leaf, send_dont_have=True)]).encode()
    await _send_raw(client, a, varint.encode(len(msg)) + msg)
    reply = await asyncio.wait_for(client.inbox.get(), 10)
    assert [p.type for p in reply.presences] == [m.PresenceType.DONT_HAVE]
    src = tmp_path / "later.bin"
    src.write_bytes(data)
    await a.bitswap.add(src, SMALL_CHUNKS, provide=False)
    reply = await asyncio.wait_for(client.inbox.get(), 10)
    assert [p.data for p in reply.payload] == [data[: 64 * 1024]]


async def test_bad_block_stored_after_its_message_was_cancelled_still_cuts_off_the_peer(
    nodes: list[Node], net: MemNetwork
) -> None:
    # The store of a received block runs in a worker thread of the service: it goes on after
    # its message is handled (stores overlap the next message) or that message's handling is
    # cancelled (the peer's stream died); its outcome must still be acted on, not dropped.
    b = nodes[1]
    evil = RawPeer(net.add_host())
    await b.host.connect(evil.host.peer_id)
    junk = b"\x0a\x00\x12\x00"  # hashes fine, but is not canonical dag-pb
    cid = CID.hash_of(junk, DAG_PB)
    session = b.bitswap.new_session()
    session.want(cid)
    loop = asyncio.get_running_loop()
    reports: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: reports.append(ctx))
    try:
        msg = Message(payload=[m.BlockPayload(cid.prefix(), junk)])
        handler = asyncio.create_task(b.bitswap.handle_message(evil.host.peer_id, msg))
        for _ in range(5000):
            if evil.host.peer_id in b.bitswap._storing or handler.done():
                break
            await asyncio.sleep(0)
        handler.cancel()  # a no-op if it already returned, its store still running
        with contextlib.suppress(asyncio.CancelledError):
            await handler
        await _wait_banned(b, evil.host.peer_id)
        assert isinstance(session.error, MalformedDagPb)
        assert not await b.store.has(cid)
        gc.collect()
        assert reports == []
    finally:
        loop.set_exception_handler(None)
        await b.bitswap._end_session(session)


async def test_server_looks_up_a_message_s_wants_off_the_event_loop(
    net: MemNetwork, tmp_path: Path
) -> None:
    loop_thread = threading.get_ident()
    on_loop: list[str] = []

    class WatchedPath(type(Path())):  # type: ignore[misc]
        def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
            if threading.get_ident() == loop_thread:
                on_loop.append(self.name)
            result: os.stat_result = super().stat(follow_symlinks=follow_symlinks)
            return result

    class WatchedStore(Blockstore):
        def path_for(self, cid: CID | Multihash) -> Path:
            return WatchedPath(super().path_for(cid))

    with WatchedStore(tmp_path / "a", FsyncPolicy.NEVER) as store:
        async with Bitswap(net.add_host(), store) as server:
            have = [await store.put_data(f"block {i}".encode(), RAW) for i in range(200)]
            absent = [CID.hash_of(f"absent {i}".encode()) for i in range(200)]
            client = RawPeer(net.add_host())
            wants = [WantEntry(c, want_type=WantType.HAVE, send_dont_have=True) for c in have]
            wants += [WantEntry(c, send_dont_have=True) for c in absent]
            msg = Message(wants).encode()
            on_loop.clear()
            stream = await client.host.new_stream(server.host.peer_id, [PROTOCOL_1_2])
            await stream.write(varint.encode(len(msg)) + msg)
            answered: dict[m.PresenceType, set[CID]] = {t: set() for t in m.PresenceType}
            while sum(len(v) for v in answered.values()) < 400:
                reply = await asyncio.wait_for(client.inbox.get(), 10)
                for p in reply.presences:
                    answered[p.type].add(p.cid)
            assert answered[m.PresenceType.HAVE] == set(have)
            assert answered[m.PresenceType.DONT_HAVE] == set(absent)
            assert on_loop == []


async def test_big_nodes_are_decoded_off_the_event_loop(
    nodes: list[Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy that calls through: it notes the size of every dag-pb node decoded on the loop.
    loop_thread = threading.get_ident()
    on_loop: list[int] = []
    real_decode = dagpb.decode

    def decode_spy(data: bytes | bytearray | memoryview) -> dagpb.PBNode:
        if threading.get_ident() == loop_thread:
            on_loop.append(len(data))
        return real_decode(data)

    monkeypatch.setattr(dagpb, "decode", decode_spy)
    a, b = nodes[0], nodes[1]
    data = pattern(401 * 64)
    # 401 leaves: a 400-link node (~18 KB) and a 2-link root
    res = await import_bytes(a.store, data, ImportProfile(chunk_size=64, max_links=400))
    assert len(await a.store.get((await a.store.children(res.cid))[0])) > 16 * 1024
    await b.host.connect(a.peer)
    await asyncio.wait_for(b.bitswap.get_file(res.cid, tmp_path / "out.bin"), 60)
    assert (tmp_path / "out.bin").read_bytes() == data
    assert on_loop == []  # get_file decodes every node in the walk's worker-thread trips
    # the exporter (cat, ranges, directories) decodes small nodes inline, big ones in a thread
    assert b"".join([piece async for piece in cat(b.store, res.cid)]) == data
    assert on_loop  # the small root was decoded inline
    assert max(on_loop) <= 16 * 1024


async def test_big_messages_are_decoded_off_the_event_loop(
    nodes: list[Node], net: MemNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy that calls through: it notes the size of every message decoded on the loop.
    loop_thread = threading.get_ident()
    on_loop: list[int] = []
    real_decode = m.decode

    def decode_spy(data: bytes) -> Message:
        if threading.get_ident() == loop_thread:
            on_loop.append(len(data))
        return real_decode(data)

    monkeypatch.setattr(m, "decode", decode_spy)
    a = nodes[0]
    have = await a.store.put_data(b"present", RAW)
    client = RawPeer(net.add_host())
    # a legal message of 8000 wants (~330 KB, ~190 ms of pure-Python decoding)
    wants = [WantEntry(have, want_type=WantType.HAVE)]  # first: wants past 1024 are ignored
    wants += [WantEntry(CID.hash_of(i.to_bytes(4, "big"))) for i in range(7999)]
    msg = Message(wants).encode()
    await _send_raw(client, a, varint.encode(len(msg)) + msg)
    reply = await asyncio.wait_for(client.inbox.get(), 10)
    assert [(p.cid, p.type) for p in reply.presences] == [(have, m.PresenceType.HAVE)]
    assert all(size <= 16 * 1024 for size in on_loop)
    assert not a.bitswap.is_banned(client.host.peer_id)


class CountingBitswap(Bitswap):
    """Counts the DAG walk's trips to a worker thread (the number, not their speed)."""

    trips = 0

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.trips += 1
        return await super().in_thread(fn, *args)


WIDE = ImportProfile(chunk_size=1024, max_links=174)  # 3 levels: root, 3 nodes, 400 leaves


async def test_walk_checks_a_node_s_children_in_one_or_two_worker_thread_trips(
    net: MemNetwork, tmp_path: Path
) -> None:
    host = net.add_host()
    with Blockstore(tmp_path / "n", FsyncPolicy.NEVER) as store:
        data = pattern(400 * 1024)
        res = await import_bytes(store, data, WIDE)
        bs = CountingBitswap(host, store)
        async with bs:
            events: list[Progress] = []
            result = await asyncio.wait_for(bs.fetch(res.cid, events.append), 30)
        assert result.blocks == 1 + 3 + 400
        assert result.fetched_bytes == 0
        # one trip for the root, one per dag-pb node (root + 3), and a second one for each
        # node with more than EXPAND_FIRST children (two of the three: 174, 174 and 52 leaves)
        # whose first children are wanted before the rest are looked up: not one per block
        assert 52 <= EXPAND_FIRST < 174
        assert bs.trips == 1 + 4 + 2
        assert events[-1].done
        assert events[-1].blocks_done == events[-1].blocks_known == 404


async def test_progress_is_monotonic_and_complete_only_at_the_end(nodes: list[Node]) -> None:
    a, b = nodes[0], nodes[1]
    data = pattern(400 * 1024 + 17)
    res = await import_bytes(a.store, data, WIDE)
    # a third of the leaves are local already, so found and fetched blocks interleave
    leaves = [
        leaf for node in await a.store.children(res.cid) for leaf in await a.store.children(node)
    ]
    for leaf in leaves[::3]:
        await b.store.put(leaf, await a.store.get(leaf))
    await b.host.connect(a.peer)
    events: list[Progress] = []
    result = await asyncio.wait_for(b.bitswap.fetch(res.cid, events.append), 30)
    assert len(events) > 2
    for before, after in itertools.pairwise(events):
        assert after.blocks_done >= before.blocks_done
        assert after.bytes_done >= before.bytes_done
        assert after.blocks_known >= before.blocks_known
    for event in events[:-1]:
        assert not event.done
        assert event.blocks_done < event.blocks_known  # never 100 % before the end
    last = events[-1]
    assert last.done
    assert last.blocks_done == last.blocks_known == result.blocks == 405
    assert last.bytes_done == result.bytes
    assert 0 < result.fetched_bytes < result.bytes
    assert await read_all(b.store, res.cid) == data


async def test_has_many_reports_sizes_and_dag_pb_bytes(store: Blockstore) -> None:
    res = await import_bytes(store, pattern(5000), ImportProfile(chunk_size=1024))
    leaves = await store.children(res.cid)
    absent = CID.hash_of(b"not stored")
    found = await store.has_many([res.cid, *leaves, absent])
    assert absent not in found
    assert found[res.cid] == (len(await store.get(res.cid)), await store.get(res.cid))
    assert [found[leaf] for leaf in leaves] == [(1024, None)] * 4 + [(904, None)]


async def test_block_stores_overlap_up_to_a_byte_bound_per_peer(
    net: MemNetwork, tmp_path: Path
) -> None:
    host, peer = net.add_host(), net.add_host().peer_id
    with Blockstore(tmp_path / "n", FsyncPolicy.NEVER) as store:
        data = [pattern(1000 + i) for i in range(4)]
        cids = [CID.hash_of(d, RAW) for d in data]
        msg = Message(
            payload=[m.BlockPayload(c.prefix(), d) for c, d in zip(cids, data, strict=True)]
        )
        for bound in (0, 10**6):
            bs = Bitswap(host, store, config=BitswapConfig(max_storing_bytes=bound))
            async with bs:
                session = bs.new_session()
                for cid in cids:
                    session.want(cid)
                await bs.handle_message(peer, msg)
                if bound == 0:  # no room: each store was waited for before the next began
                    assert bs._storing == {}
                    assert [await store.has(c) for c in cids] == [True] * 4
                else:  # room for all: handled at once, the four stores still to run
                    assert bs._storing[peer].nbytes == sum(map(len, data))
                for _ in range(4):
                    cid, _data, _peer = await asyncio.wait_for(session.arrivals.get(), 10)
                    assert cid in cids
                assert bs._storing == {}  # nothing left behind for the peer
                await bs._end_session(session)
            for cid in cids:
                await store.delete(cid)


async def test_received_blocks_are_hashed_off_the_event_loop(
    nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy that calls through: the thread of every hashing of a received message's blocks.
    loop_thread = threading.get_ident()
    threads: list[bool] = []
    real_hash = Bitswap._hash_blocks

    def hash_spy(msg: Message) -> list[tuple[CID, Buffer]]:
        threads.append(threading.get_ident() == loop_thread)
        return real_hash(msg)

    monkeypatch.setattr(Bitswap, "_hash_blocks", staticmethod(hash_spy))
    a, b = nodes[0], nodes[1]
    data = pattern(300 * 1024)  # big messages, and a small one after
    res = await import_bytes(a.store, data, ImportProfile(chunk_size=100 * 1024 - 5))
    await b.host.connect(a.peer)
    small = await import_bytes(a.store, b"tiny", ImportProfile())
    await asyncio.wait_for(b.bitswap.fetch(res.cid), 30)
    await asyncio.wait_for(b.bitswap.fetch(small.cid), 30)
    assert await read_all(b.store, res.cid) == data
    assert len(threads) >= 2
    assert not any(threads)


async def test_a_fetch_ticks_its_session_at_refills_not_per_block(
    net: MemNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From one peer, the session acts (sends wants) only when that peer's window is due for
    a refill: the blocks in between, one message each, must not each wake and tick it."""
    one_per_message = BitswapConfig(server=ServerConfig(target_message_bytes=1))
    async with AsyncExitStack() as stack:
        peers = []
        for name in ("a", "b"):
            host = net.add_host()
            store = stack.enter_context(Blockstore(tmp_path / name, FsyncPolicy.NEVER))
            bs = await stack.enter_async_context(Bitswap(host, store, config=one_per_message))
            peers.append(Node(host, store, bs))
        a, b = peers
        await b.host.connect(a.host.peer_id)
        data = pattern(400 * 1024)
        res = await import_bytes(a.store, data, ImportProfile(chunk_size=1024, max_links=1024))
        ticks = [0]
        real_tick = Session.tick

        def counting_tick(self: Session, now: float) -> Actions:
            ticks[0] += 1
            return real_tick(self, now)

        monkeypatch.setattr(Session, "tick", counting_tick)
        result = await asyncio.wait_for(b.bitswap.fetch(res.cid), 30)
        assert result.blocks == 401
        assert await read_all(b.store, res.cid) == data
        assert 0 < ticks[0] < result.blocks // 3


async def test_blocks_that_arrive_after_stop_are_dropped_quietly(
    net: MemNetwork, tmp_path: Path
) -> None:
    """A stopped service takes no blocks (its store pool is gone): a late message is not
    an error of the stream handling it, and nothing reaches the store."""
    host, peer = net.add_host(), net.add_host().peer_id
    with Blockstore(tmp_path / "n", FsyncPolicy.NEVER) as store:
        bs = Bitswap(host, store)
        async with bs:
            session = bs.new_session()
            data = pattern(1000)
            cid = CID.hash_of(data, RAW)
            session.want(cid)
        msg = Message(payload=[m.BlockPayload(cid.prefix(), data)])
        await bs.handle_message(peer, msg)
        assert bs._storing == {}
        assert not await store.has(cid)
        assert isinstance(session.error, PeerstackError)  # the stop failed the session


async def test_a_peer_s_stores_run_in_order_one_at_a_time() -> None:
    """A peer's messages are stored by one worker thread at a time, in the order they came
    (the thread that finishes one takes the next); another peer's run beside them."""
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        peers = [_Storing(), _Storing()]
        order: list[list[int]] = [[], []]
        active = [0, 0]
        most = [0, 0]
        lock = threading.Lock()
        finished = threading.Barrier(3)

        def job(p: int, i: int) -> Callable[[], None]:
            def run() -> None:
                with lock:
                    active[p] += 1
                    most[p] = max(most[p], active[p])
                time.sleep(0.0002)  # long enough for the next submission to find it busy
                with lock:
                    order[p].append(i)
                    active[p] -= 1
                if i == 59:
                    finished.wait(10)

            return run

        for i in range(60):
            for p in (0, 1):
                peers[p].run(pool, job(p, i))
        await asyncio.to_thread(finished.wait, 10)
        assert order == [list(range(60)), list(range(60))]
        assert most == [1, 1]
    finally:
        pool.shutdown(wait=True)


def test_a_peer_s_stores_take_a_second_lane_when_asked() -> None:
    """With ``lanes=2`` two of a peer's messages are stored at once (a second thread joins
    the first), never more than two, and every job runs once."""
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        storing = _Storing()
        started: list[int] = []
        active = 0
        most = 0
        lock = threading.Lock()
        both = threading.Barrier(2)  # the first two jobs wait for each other: both running
        all_done = threading.Event()

        def job(i: int) -> Callable[[], None]:
            def run() -> None:
                nonlocal active, most
                with lock:
                    started.append(i)
                    active += 1
                    most = max(most, active)
                if i < 2:
                    both.wait(10)  # raises BrokenBarrierError (the test fails) if alone
                time.sleep(0.0002)
                with lock:
                    active -= 1
                    if len(started) == 40 and not active:
                        all_done.set()

            return run

        for i in range(40):
            storing.run(pool, job(i), lanes=2)
        assert all_done.wait(10)
        assert sorted(started) == list(range(40))
        assert started[:2] in ([0, 1], [1, 0])
        assert most == 2
        deadline = time.monotonic() + 10
        while storing._running and time.monotonic() < deadline:
            time.sleep(0.001)  # the last job's thread returns just after it ran
        assert storing._running == 0  # both threads went back to the pool
    finally:
        pool.shutdown(wait=True)


class _ColdStore(Blockstore):
    """A store whose blocks are never in the page cache: every read takes ``get``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, FsyncPolicy.NEVER)
        self.gets = 0

    def read_cached(self, cid: CID) -> bytes | None:
        return None

    async def get(self, cid: CID) -> bytes:
        self.gets += 1
        return await super().get(cid)


@pytest.mark.parametrize("cold", [False, True])
async def test_blocks_are_served_from_the_page_cache_or_from_get(
    net: MemNetwork, tmp_path: Path, cold: bool
) -> None:
    cold_store = _ColdStore(tmp_path / "seed") if cold else None
    seed_store = cold_store or Blockstore(tmp_path / "seed")
    with seed_store, Blockstore(tmp_path / "leech", FsyncPolicy.NEVER) as leech_store:
        seed_host, leech_host = net.add_host(), net.add_host()
        seed, leech = Bitswap(seed_host, seed_store), Bitswap(leech_host, leech_store)
        async with seed, leech:
            data = pattern(3 * 256 * 1024 + 5)
            res = await import_bytes(seed_store, data, SMALL_CHUNKS)
            await leech_host.connect(seed_host.peer_id)
            result = await asyncio.wait_for(leech.fetch(res.cid), 30)
        assert await read_all(leech_store, res.cid) == data
        assert seed.engine.bytes_sent == result.fetched_bytes == result.bytes
        if cold_store is not None:
            assert cold_store.gets == result.blocks

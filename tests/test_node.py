"""Node: identify, push, ping, perf and echo between real hosts on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from peerstack.config import Config
from peerstack.core import varint
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import (
    DecodeError,
    LimitExceeded,
    NegotiationError,
    PeerError,
    PeerstackError,
    UsageError,
)
from peerstack.host.interface import Stream
from peerstack.node import MISBEHAVIOUR_KEY, PERF_MAX_SERVE, PERF_MAX_STREAMS, Node
from peerstack.protocols import perf
from peerstack.protocols.echo import ECHO
from peerstack.protocols.identify import (
    AGENT_VERSION,
    IDENTIFY,
    IDENTIFY_PUSH,
    PROTOCOL_VERSION,
    IdentifyKeyMismatch,
    encode_identify,
)
from peerstack.protocols.perf import PERF
from peerstack.protocols.ping import PING


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes that serve the optional measuring protocols too (perf, echo)."""
    async with Node(enable=("perf", "echo")) as a, Node(enable=("perf", "echo")) as b:
        yield a, b


async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_addrs_carry_peer_id(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    assert a.addrs
    for addr in a.addrs:
        assert addr.value_for("p2p") == str(a.peer_id)
        assert addr.value_for("ip4") == "127.0.0.1"
        assert addr.value_for("tcp") != "0"


async def test_identify_fields(pair: tuple[Node, Node]) -> None:
    a, b = pair
    peer = await a.connect(b.addrs[0])
    assert peer == b.peer_id
    info = a.identify_info(peer)
    assert info is not None
    assert info.public_key == b.private_key.public_key
    assert info.protocol_version == PROTOCOL_VERSION
    assert info.agent_version == AGENT_VERSION
    for proto in (IDENTIFY, IDENTIFY_PUSH, PING, PERF, ECHO):
        assert proto in info.protocols
    assert set(info.listen_addrs) == {m.decapsulate_p2p()[0] for m in b.addrs}
    # B saw A come from a loopback port: that is A's observed address.
    assert info.observed_addr is not None
    assert info.observed_addr.value_for("ip4") == "127.0.0.1"
    assert a.observed_addrs() == [info.observed_addr]

    # The same facts are in the peerstore.
    ps = a.peerstore
    assert ps.public_key(peer) == b.private_key.public_key
    assert PING in ps.protocols(peer)
    assert ps.metadata(peer, "agent_version") == AGENT_VERSION
    assert set(ps.addrs(peer)) >= set(info.listen_addrs)

    # B identified A too, on its own.
    back = await b.identify.wait_identified(a.peer_id)
    assert back.public_key == a.private_key.public_key
    assert back.observed_addr is not None


async def test_identify_push_on_new_handler(pair: tuple[Node, Node]) -> None:
    a, b = pair
    peer = await a.connect(b.addrs[0])
    info = a.identify_info(peer)
    assert info is not None
    assert "/custom/1.0.0" not in info.protocols

    async def handler(stream: Stream) -> None:
        await stream.close()

    b.set_stream_handler("/custom/1.0.0", handler)
    await eventually(lambda: "/custom/1.0.0" in a.peerstore.protocols(peer))
    pushed = a.identify_info(peer)
    assert pushed is not None
    assert "/custom/1.0.0" in pushed.protocols
    assert pushed.public_key == b.private_key.public_key  # kept from the first identify

    b.remove_stream_handler("/custom/1.0.0")
    await eventually(lambda: "/custom/1.0.0" not in a.peerstore.protocols(peer))


async def test_ping_records_latency(pair: tuple[Node, Node]) -> None:
    a, b = pair
    rtts = await a.ping(b.addrs[0], 4)
    assert len(rtts) == 4
    assert all(r > 0 for r in rtts)
    latency = a.peerstore.latency(b.peer_id)
    assert latency is not None
    assert latency > 0


@pytest.mark.parametrize(
    ("upload", "download"),
    [(0, 0), (3 * 1024 * 1024 + 1, 0), (0, 2 * 1024 * 1024 + 5), (1 << 20, 1 << 20)],
)
async def test_perf_sizes_exact(pair: tuple[Node, Node], upload: int, download: int) -> None:
    a, b = pair
    res = await a.perf(b.addrs[0], upload, download)
    assert res.upload_bytes == upload
    assert res.download_bytes == download


async def test_echo(pair: tuple[Node, Node]) -> None:
    a, b = pair
    data = bytes(range(256)) * 4000
    assert await a.echo(b.addrs[0], data) == data
    assert await a.echo(b.peer_id, b"") == b""


async def test_perf_and_echo_are_off_unless_enabled(pair: tuple[Node, Node]) -> None:
    """A default node does not serve perf or echo: any peer could spend its bandwidth."""
    a, _ = pair
    async with Node() as quiet:
        assert PERF not in quiet.protocols()
        assert ECHO not in quiet.protocols()
        with pytest.raises(NegotiationError):
            await a.perf(quiet.addrs[0], 0, 1024)
        with pytest.raises(NegotiationError):
            await a.echo(quiet.peer_id, b"x")
    with pytest.raises(UsageError):
        Node(enable=("telnet",))


async def test_perf_streams_at_once_and_bytes_per_stream_are_bounded(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    await a.connect(b.addrs[0])
    # Too many bytes asked for on one stream: the server resets it.
    with pytest.raises(PeerstackError):
        await perf.perf(a.host, b.peer_id, 0, PERF_MAX_SERVE + 1)
    # PERF_MAX_STREAMS requests that keep uploading hold every slot...
    held: list[Stream] = []
    try:
        for _ in range(PERF_MAX_STREAMS):
            stream = await a.host.new_stream(b.peer_id, [PERF])
            await stream.write((1024).to_bytes(8, "big") + b"upload...")
            held.append(stream)
        await eventually(lambda: b._perf_active == PERF_MAX_STREAMS)
        # ...so one more is refused at once, whatever it asks for.
        with pytest.raises(PeerstackError):
            await perf.perf(a.host, b.peer_id, 0, 10)
    finally:
        for s in held:
            s.reset()
    await eventually(lambda: b._perf_active == 0)
    res = await a.perf(b.peer_id, 10, 10)
    assert res.download_bytes == 10


async def test_connect_without_peer_id(pair: tuple[Node, Node]) -> None:
    a, b = pair
    bare = b.addrs[0].decapsulate_p2p()[0]
    assert await a.connect(bare) == b.peer_id


def _bad_identify(payload: bytes) -> Callable[[Stream], Awaitable[None]]:
    async def handler(stream: Stream) -> None:
        await stream.write(payload)
        await stream.close()

    return handler


def _framed(raw: bytes) -> bytes:
    return varint.encode(len(raw)) + raw


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (varint.encode(9000) + b"\x00" * 100, LimitExceeded),
        (_framed(b"\x0a\x05\x08\x01\x12\x01x"), DecodeError),  # publicKey: a 1-byte Ed25519 key
        (
            _framed(
                encode_identify(
                    public_key=PrivateKey.generate().public_key,
                    listen_addrs=[],
                    protocols=[],
                    observed_addr=None,
                )
            ),
            IdentifyKeyMismatch,
        ),
        (_framed(b"\xff\xff\xff"), DecodeError),
    ],
)
async def test_malformed_identify_is_refused_and_connection_survives(
    pair: tuple[Node, Node], payload: bytes, error: type[PeerError]
) -> None:
    a, b = pair
    b.host.set_stream_handler(IDENTIFY, _bad_identify(payload))
    peer = await a.connect(b.addrs[0])  # the automatic identify fails, connect does not
    assert isinstance(a.identify.last_error(peer), error)
    assert a.identify_info(peer) is None
    assert a.peerstore.metadata(peer, MISBEHAVIOUR_KEY) == 1
    with pytest.raises(error):
        await a.identify.identify(peer)
    # Nothing of the bad message reached the peerstore, and the connection still works.
    assert a.peerstore.protocols(peer) == []
    assert peer in a.host.connected_peers()
    assert len(await a.ping(peer, 2)) == 2


async def test_bad_push_is_ignored(pair: tuple[Node, Node]) -> None:
    a, b = pair
    peer = await a.connect(b.addrs[0])
    stream = await b.host.new_stream(a.peer_id, [IDENTIFY_PUSH])
    wrong = encode_identify(
        public_key=PrivateKey.generate().public_key,
        listen_addrs=[],
        protocols=["/evil/1.0.0"],
        observed_addr=None,
    )
    await stream.write(_framed(wrong))
    await stream.close()
    await eventually(lambda: a.identify.last_error(b.peer_id) is not None)
    assert isinstance(a.identify.last_error(b.peer_id), IdentifyKeyMismatch)
    assert "/evil/1.0.0" not in a.peerstore.protocols(peer)
    assert len(await a.ping(peer, 1)) == 1


async def test_repo_identity_persists(tmp_path: Path) -> None:
    async with Node(repo=tmp_path / "r", listen=["/ip4/127.0.0.1/tcp/0"]) as first:
        pid = first.peer_id
    async with Node(repo=tmp_path / "r", listen=["/ip4/127.0.0.1/tcp/0"]) as second:
        assert second.peer_id == pid


async def test_user_errors() -> None:
    async with Node() as a:
        with pytest.raises(UsageError):
            await a.connect("not a multiaddr")
        with pytest.raises(UsageError):
            await a.connect(a.addrs[0])  # ourselves
    with pytest.raises(UsageError):
        Node(listen=["/ip4/nope/tcp/1"])
    with pytest.raises(UsageError):
        _ = Node().host  # not started


async def test_listen_override() -> None:
    async with Node(listen=[Multiaddr("/ip4/127.0.0.1/tcp/0")]) as a:
        assert len(a.addrs) == 1


async def test_peerstore_limits_do_not_penalize(pair: tuple[Node, Node]) -> None:
    # 200 protocols: within identify's wire limit (256), over the peerstore's (128 per peer).
    a, b = pair

    async def handler(stream: Stream) -> None:
        await stream.close()

    for i in range(200):
        b.host.set_stream_handler(f"/many/{i}", handler)
    peer = await a.connect(b.addrs[0])
    info = a.identify_info(peer)
    assert info is not None
    assert len(info.protocols) > 200
    assert a.peerstore.metadata(peer, "agent_version") == AGENT_VERSION
    assert set(a.peerstore.addrs(peer)) >= set(info.listen_addrs)
    assert a.peerstore.metadata(peer, MISBEHAVIOUR_KEY) is None
    assert a.identify.last_error(peer) is None


async def test_wait_identified_for_absent_peer_times_out_cleanly() -> None:
    async with Node() as a:
        stranger = PrivateKey.generate().public_key
        service = a.identify
        service._timeout = 0.05  # a test-only shortcut for the 15 s default
        with pytest.raises(TimeoutError):
            await service.wait_identified(PeerId.from_public_key(stranger))
        assert not service._waiters


async def test_keepalive_times_come_from_the_config() -> None:
    cfg = Config(keepalive_interval=0.1, keepalive_timeout=2.0)
    async with Node(config=cfg) as a, Node() as b:
        peer = await a.connect(b.addrs[0])
        conn = a.host.connection(peer)
        assert conn is not None
        assert conn.session.config.keepalive_interval == 0.1
        assert conn.session.config.keepalive_timeout == 2.0
        # Idle for many keepalive intervals: a's pings are answered, so the connection stays.
        await asyncio.sleep(0.6)
        assert a.host.connection(peer) is conn
        assert not conn.is_closed
        other = b.host.connection(a.peer_id)
        assert other is not None
        assert other.session.config.keepalive_interval == 30.0

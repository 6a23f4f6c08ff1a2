"""identify, ping, perf and echo against real js-libp2p 3.x and py-libp2p peers, both ways.

Uses the interop harness in ``tests/interop`` (peers installed by ``scripts/setup-interop.sh``);
skipped with the reason when the peers are not installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from peerstack.core.peer_id import PeerId
from peerstack.node import Node
from peerstack.protocols.identify import AGENT_VERSION, PROTOCOL_VERSION
from tests.interop.harness import PeerKind, PeerProcess, missing_setup, start_peer

pytestmark = pytest.mark.interop

KINDS = [pytest.param(PeerKind.JS, id="js"), pytest.param(PeerKind.PY, id="py")]


@pytest.fixture(params=KINDS)
async def other(request: pytest.FixtureRequest) -> AsyncIterator[PeerProcess]:
    kind: PeerKind = request.param
    reason = missing_setup(kind)
    if reason is not None:
        pytest.skip(f"{kind.value} interop peer unavailable: {reason}")
    peer = await start_peer(kind)
    try:
        yield peer
    finally:
        await peer.stop()


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    async with Node(enable=("perf", "echo")) as n:  # the tests below exercise both
        yield n


async def test_we_identify_them(node: Node, other: PeerProcess) -> None:
    peer = await node.connect(other.addr)
    assert peer == PeerId.from_string(other.peer_id)
    info = await node.identify.wait_identified(peer)
    assert info.public_key is not None
    assert info.protocol_version == "ipfs/0.1.0"
    assert info.agent_version
    assert {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/perf/1.0.0", "/echo/1.0.0"} <= set(
        info.protocols
    )
    assert info.listen_addrs
    assert info.observed_addr is not None
    assert info.observed_addr.value_for("p2p") is None  # js appends /p2p/<us>: stripped
    assert node.identify.last_error(peer) is None
    assert "/ipfs/ping/1.0.0" in node.peerstore.protocols(peer)


async def test_they_identify_us(node: Node, other: PeerProcess) -> None:
    ident = await other.command("identify", addr=str(node.addrs[0]))
    assert ident["peerId"] == str(node.peer_id)
    assert ident["agentVersion"] == AGENT_VERSION
    assert ident["protocolVersion"] == PROTOCOL_VERSION
    assert {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/perf/1.0.0", "/echo/1.0.0"} <= set(
        ident["protocols"]
    )
    assert ident["publicKey"] == node.private_key.public_key.to_protobuf().hex()
    assert ident["listenAddrs"] == [str(node.addrs[0].decapsulate_p2p()[0])]
    assert ident["observedAddr"].startswith("/ip4/127.0.0.1/tcp/")


async def test_ping_both_ways(node: Node, other: PeerProcess) -> None:
    rtts = await node.ping(other.addr, 3)
    assert len(rtts) == 3
    assert node.peerstore.latency(PeerId.from_string(other.peer_id)) is not None
    theirs = await other.command("ping", addr=str(node.addrs[0]), count=3)
    assert len(theirs["rtts_ms"]) == 3


async def test_perf_both_ways(node: Node, other: PeerProcess) -> None:
    res = await node.perf(other.addr, 3 * 1024 * 1024 + 1, 2 * 1024 * 1024 + 3)
    assert res.upload_bytes == 3 * 1024 * 1024 + 1
    assert res.download_bytes == 2 * 1024 * 1024 + 3
    theirs = await other.command("perf", addr=str(node.addrs[0]), upload=1 << 20, download=1 << 20)
    assert theirs["upload_bytes"] == 1 << 20
    assert theirs["download_bytes"] == 1 << 20


async def test_echo_both_ways(node: Node, other: PeerProcess) -> None:
    data = bytes(range(256)) * 1200
    assert await node.echo(other.addr, data) == data
    theirs = await other.command("echo", addr=str(node.addrs[0]), size=300_000, streams=5)
    assert theirs["mismatched"] == 0


async def test_push_to_them_keeps_connection(node: Node, other: PeerProcess) -> None:
    peer = await node.connect(other.addr)

    async def handler(stream: object) -> None:
        return None

    node.set_stream_handler("/peerstack/test/1.0.0", handler)  # triggers identify push
    await node.identify.push([peer])
    ident = await other.command("identify", addr=str(node.addrs[0]))
    assert "/peerstack/test/1.0.0" in ident["protocols"]
    assert len(await node.ping(peer, 1)) == 1

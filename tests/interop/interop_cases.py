"""Interop cases between our ``Node`` (BasicHost + identify/ping/echo/perf) and a third-party
peer process. ``test_js_interop.py`` and ``test_pylibp2p_interop.py`` run them against
js-libp2p and py-libp2p; each case asserts what both sides saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import ConnectionClosed, StreamClosed, StreamReset
from peerstack.node import Node
from peerstack.protocols import echo, perf, ping
from peerstack.protocols.identify import IDENTIFY, PROTOCOL_VERSION
from tests.interop.harness import PeerKind, PeerProcess

MIB = 1 << 20


def our_addr(node: Node) -> str:
    """Our first loopback listen address with /p2p/<id>: what the third-party peer dials."""
    return str(node.addrs[0])


def bare(addr: str) -> str:
    """An address without its /p2p/ suffix."""
    return str(Multiaddr(addr).decapsulate_p2p()[0])


async def we_dial_them(node: Node, peer: PeerProcess) -> None:
    pid = await node.connect(peer.addr)
    assert str(pid) == peer.peer_id
    assert PeerId.from_string(peer.peer_id) in node.host.connected_peers()
    if peer.kind is PeerKind.JS:
        ev = await peer.next_event("connection:open")
        assert ev["peerId"] == str(node.peer_id)
        assert ev["direction"] == "inbound"
    rtts = await node.ping(peer.addr, count=3)
    assert len(rtts) == 3
    assert all(r >= 0 for r in rtts)
    # The same connection carries everything: one connection to the peer.
    assert len(node.host.connections(pid)) == 1


async def they_dial_us(node: Node, peer: PeerProcess) -> None:
    dialled = await peer.command("dial", addr=our_addr(node))
    assert dialled["peerId"] == str(node.peer_id)
    pinged = await peer.command("ping", addr=our_addr(node), count=3)
    assert len(pinged["rtts_ms"]) == 3
    pid = PeerId.from_string(peer.peer_id)
    # They dialled: we hold the inbound connection and can use it ourselves.
    assert pid in node.host.connected_peers()
    assert len(await ping.ping(node.host, pid, 2)) == 2


async def identify_agrees(node: Node, peer: PeerProcess) -> None:
    """Each side's identify of the other matches what the other says of itself."""
    pid = await node.connect(peer.addr)
    info = await node.identify.identify(pid)
    assert info.peer == pid
    assert info.public_key is not None
    assert PeerId.from_public_key(info.public_key) == pid
    assert set(peer.protocols) <= set(info.protocols)
    assert bare(peer.addr) in {str(a) for a in info.listen_addrs}
    assert info.agent_version is not None
    assert info.agent_version.startswith(peer.agent_version.split("/")[0])
    assert info.observed_addr is not None
    assert str(info.observed_addr).startswith("/ip4/127.0.0.1/tcp/")

    theirs = await peer.command("identify", addr=our_addr(node))
    assert theirs["peerId"] == str(node.peer_id)
    assert theirs["publicKey"] == node.private_key.public_key.to_protobuf().hex()
    assert set(theirs["protocols"]) == set(node.protocols())
    assert IDENTIFY in theirs["protocols"]
    assert theirs["agentVersion"] == node.config.agent_version
    assert theirs["protocolVersion"] == PROTOCOL_VERSION
    assert bare(our_addr(node)) in {bare(a) for a in theirs["listenAddrs"]}
    assert theirs["observedAddr"] is not None
    assert bare(theirs["observedAddr"]).startswith("/ip4/127.0.0.1/tcp/")


async def echo_both_ways(node: Node, peer: PeerProcess, size: int) -> None:
    data = os.urandom(size)
    assert await node.echo(peer.addr, data) == data
    ev = await peer.next_event("echo")
    assert ev["result"] == "closed"
    assert ev["bytes"] == size

    small = await peer.command("echo", addr=our_addr(node), data_hex=b"interop".hex())
    assert bytes.fromhex(small["echoed_hex"]) == b"interop"
    big = await peer.command("echo", addr=our_addr(node), size=size)
    assert big["mismatched"] == 0


async def concurrent_streams(node: Node, peer: PeerProcess, streams: int, size: int) -> None:
    """``streams`` echo streams at once on one connection, opened by us, then by them."""
    pid = await node.connect(peer.addr)
    payloads = [os.urandom(size) for _ in range(streams)]
    results = await asyncio.gather(*(echo.echo(node.host, pid, p) for p in payloads))
    assert results == payloads
    assert len(node.host.connections(pid)) == 1

    theirs = await peer.command("echo", addr=our_addr(node), size=size, streams=streams)
    assert theirs["streams"] == streams
    assert theirs["mismatched"] == 0
    assert len(node.host.connections(pid)) == 1


async def we_reset_mid_transfer(node: Node, peer: PeerProcess) -> None:
    """We reset an echo stream with data in flight both ways; the connection lives on."""
    pid = await node.connect(peer.addr)
    stream = await node.host.new_stream(pid, [echo.ECHO])
    sent = 4 * MIB

    async def writer() -> None:
        with contextlib.suppress(StreamReset, StreamClosed):
            block = bytes(64 * 1024)
            for _ in range(sent // len(block)):
                await stream.write(block)

    task = asyncio.create_task(writer())
    got = 0
    while got < 256 * 1024:
        chunk = await stream.read(64 * 1024)
        assert chunk, "the echo stream ended before we reset it"
        got += len(chunk)
    stream.reset()
    await asyncio.wait_for(task, 30)
    ev = await peer.next_event("echo")
    assert ev["result"] != "closed"
    # Frames the peer sent before it saw our RST must not hurt the connection.
    assert len(await ping.ping(node.host, pid, 3)) == 3
    assert await node.echo(pid, b"still here") == b"still here"


async def they_reset_mid_transfer(node: Node, peer: PeerProcess) -> None:
    """They reset an echo stream to us mid-transfer; the connection lives on."""
    out = await peer.command("echo-reset", addr=our_addr(node), size=4 * MIB, read_bytes=256 * 1024)
    assert out["connectionAlive"] is True
    assert out["read"] >= 256 * 1024
    pid = PeerId.from_string(peer.peer_id)
    assert len(await ping.ping(node.host, pid, 3)) == 3
    again = await peer.command("echo", addr=our_addr(node), size=100_000)
    assert again["mismatched"] == 0


async def they_hang_up_mid_transfer(node: Node, peer: PeerProcess) -> None:
    """The peer closes the connection while we are downloading: a typed error, then redial."""
    pid = await node.connect(peer.addr)

    async def hang_up_soon() -> None:
        await asyncio.sleep(0.2)
        await peer.command("hangup", addr=our_addr(node))

    hangup = asyncio.create_task(hang_up_soon())
    # A 1 TiB download cannot finish: the hangup must end it with one of our typed errors.
    with pytest.raises((StreamReset, StreamClosed, ConnectionClosed, perf.PerfShortRead)):
        await perf.perf(node.host, pid, 0, 1 << 40)
    await hangup
    # A fresh connection works.
    rtts = await node.ping(peer.addr)
    assert len(rtts) == 1


async def perf_both_ways(node: Node, peer: PeerProcess, size: int) -> None:
    res = await node.perf(peer.addr, size, size)
    assert res.upload_bytes == size
    assert res.download_bytes == size
    ev = await peer.next_event("perf") if peer.kind is PeerKind.JS else None
    if ev is not None:
        assert ev["received"] == size
        assert ev["sent"] == size
    theirs = await peer.command(
        "perf", addr=our_addr(node), upload=size, download=size, wait=60 + size / 1e6
    )
    assert theirs["upload_bytes"] == size
    assert theirs["download_bytes"] == size

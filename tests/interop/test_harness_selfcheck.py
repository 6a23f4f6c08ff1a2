"""The interop harness itself works: third-party peers talk to each other through it.

js-libp2p <-> js-libp2p, py-libp2p <-> py-libp2p and across (both directions): dial,
identify, ping, echo (one stream and many concurrent streams), a stream reset mid-transfer,
and perf with small sizes. If these fail, an interop failure of our own stack says nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.harness import InteropError, PeerKind, StartPeer

pytestmark = pytest.mark.interop

PAIRS = [
    pytest.param(PeerKind.JS, PeerKind.JS, id="js->js"),
    pytest.param(PeerKind.PY, PeerKind.PY, id="py->py"),
    pytest.param(PeerKind.JS, PeerKind.PY, id="js->py"),
    pytest.param(PeerKind.PY, PeerKind.JS, id="py->js"),
]


@pytest.mark.parametrize(("client_kind", "server_kind"), PAIRS)
async def test_dial_identify_ping(
    start_interop_peer: StartPeer, client_kind: PeerKind, server_kind: PeerKind
) -> None:
    server = await start_interop_peer(server_kind)
    client = await start_interop_peer(client_kind)
    assert server.addr.endswith(f"/p2p/{server.peer_id}")

    dialled = await client.command("dial", addr=server.addr)
    assert dialled["peerId"] == server.peer_id

    ident = await client.command("identify", addr=server.addr)
    assert ident["peerId"] == server.peer_id
    assert {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/echo/1.0.0", "/perf/1.0.0"} <= set(
        ident["protocols"]
    )
    # An Ed25519 public key in its libp2p protobuf form: type=1 (Ed25519), 32 bytes of key.
    assert ident["publicKey"].startswith("08011220")
    assert len(bytes.fromhex(ident["publicKey"])) == 36
    assert ident["listenAddrs"], "identify carried no listen address"
    assert ident["observedAddr"] is not None
    assert ident["observedAddr"].startswith("/ip4/127.0.0.1/tcp/")

    pinged = await client.command("ping", addr=server.addr, count=3)
    assert len(pinged["rtts_ms"]) == 3
    assert all(rtt >= 0 for rtt in pinged["rtts_ms"])


@pytest.mark.parametrize(("client_kind", "server_kind"), PAIRS)
async def test_echo(
    start_interop_peer: StartPeer, client_kind: PeerKind, server_kind: PeerKind
) -> None:
    server = await start_interop_peer(server_kind)
    client = await start_interop_peer(client_kind)

    small = await client.command("echo", addr=server.addr, data_hex=b"hello".hex())
    assert small["mismatched"] == 0
    assert bytes.fromhex(small["echoed_hex"]) == b"hello"
    ev = await server.next_event("echo")
    assert ev["result"] == "closed"
    assert ev["bytes"] == 5

    # Many concurrent streams on one connection, each bigger than a Yamux window, so flow
    # control has to work on every stream at once.
    many = await client.command("echo", addr=server.addr, size=300_000, streams=20)
    assert many["streams"] == 20
    assert many["mismatched"] == 0


@pytest.mark.parametrize(("client_kind", "server_kind"), PAIRS)
async def test_reset_mid_transfer_keeps_connection(
    start_interop_peer: StartPeer, client_kind: PeerKind, server_kind: PeerKind
) -> None:
    server = await start_interop_peer(server_kind)
    client = await start_interop_peer(client_kind)

    # 2 MB in flight, the client reads 64 KiB of the echo and resets the stream.
    out = await client.command("echo-reset", addr=server.addr, size=2_000_000, read_bytes=65536)
    assert out["read"] >= 65536
    assert out["connectionAlive"] is True
    ev = await server.next_event("echo")
    # The server may have read everything already (peers buffer generously), but it cannot
    # have finished echoing it: its stream must end in a reset or an error.
    assert ev["result"] != "closed", "the server's echo stream finished as if nothing was reset"


@pytest.mark.parametrize(("client_kind", "server_kind"), PAIRS)
async def test_perf_small(
    start_interop_peer: StartPeer, client_kind: PeerKind, server_kind: PeerKind
) -> None:
    server = await start_interop_peer(server_kind)
    client = await start_interop_peer(client_kind)

    for upload, download in [(0, 0), (1, 0), (0, 1), (100_000, 3_000_000), (3_000_000, 0)]:
        res = await client.command("perf", addr=server.addr, upload=upload, download=download)
        assert res["upload_bytes"] == upload
        assert res["download_bytes"] == download


async def test_unknown_command_is_an_error_answer(start_interop_peer: StartPeer) -> None:
    for kind in (PeerKind.JS, PeerKind.PY):
        peer = await start_interop_peer(kind)
        with pytest.raises(InteropError, match="unknown command"):
            await peer.command("no-such-command")
        # The peer still answers after a bad command.
        assert (await peer.command("peers"))["connections"] == []


def test_missing_setup_names_the_setup_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.interop import harness

    monkeypatch.setattr(harness, "NODE_BIN", tmp_path / "no-node")
    monkeypatch.setattr(harness, "PY_VENV", tmp_path / "no-venv")
    monkeypatch.setattr(harness, "PY_BIN", tmp_path / "no-venv" / "bin" / "python")
    for kind in PeerKind:
        reason = harness.missing_setup(kind)
        assert reason is not None
        assert "scripts/setup-interop.sh" in reason


async def test_js_dht_and_helia(start_interop_peer: StartPeer) -> None:
    """Three js peers in a line (a - b - c): routing tables fill, a provides a file that c finds
    through the DHT and fetches over bitswap, records put by a are read by c."""
    flags = ["--dht", "--helia"]
    a = await start_interop_peer(PeerKind.JS, flags)
    b = await start_interop_peer(PeerKind.JS, flags)
    c = await start_interop_peer(PeerKind.JS, flags)
    assert {"/ipfs/kad/1.0.0", "/ipfs/bitswap/1.2.0"} <= set(a.protocols)
    await a.command("dial", addr=b.addr)
    await c.command("dial", addr=b.addr)
    assert b.peer_id in (await a.command("dht-wait-table", size=1))["peers"]
    assert len((await b.command("dht-wait-table", size=2))["peers"]) == 2

    added = await a.command("add", size=3_000_000, provide=True)
    assert added["cid"].startswith("bafy")
    found = await c.command("dht-find-providers", cid=added["cid"])
    assert [p["peerId"] for p in found["providers"]] == [a.peer_id]
    got = await c.command("cat", cid=added["cid"])
    assert got["size"] == 3_000_000
    assert got["sha256"] == added["sha256"]

    key = b"/test/harness".hex()
    put = await a.command("dht-put", key_hex=key, value_hex=b"value".hex())
    assert put["errors"] == []
    assert bytes.fromhex((await c.command("dht-get", key_hex=key))["value_hex"]) == b"value"
    assert (await c.command("dht-find-peer", peerId=a.peer_id))["peerId"] == a.peer_id

    # The legacy profile gives kubo's CIDv0 for the same bytes.
    legacy = await a.command("add", data_hex=b"hello".hex(), profile="unixfs-v0-2015")
    assert legacy["cid"] == "QmWfVY9y3xjsixTgbd9AorQxH7VtMpzfx2HaWtsoUYecaX"


async def test_js_gossipsub(start_interop_peer: StartPeer) -> None:
    """Two js peers form a gossipsub mesh on a topic and a signed message crosses it."""
    a = await start_interop_peer(PeerKind.JS, ["--pubsub"])
    b = await start_interop_peer(PeerKind.JS, ["--pubsub"])
    assert "/meshsub/1.1.0" in a.protocols
    for peer in (a, b):
        await peer.command("subscribe", topic="harness")
    await a.command("dial", addr=b.addr)
    assert (await a.command("pubsub-wait-mesh", topic="harness", size=1))["mesh"] == [b.peer_id]
    sent = await a.command("publish", topic="harness", data_hex=b"gossip".hex())
    assert sent["recipients"] == [b.peer_id]
    ev = await b.next_event("pubsub")
    assert ev["topic"] == "harness"
    assert bytes.fromhex(ev["data_hex"]) == b"gossip"
    assert ev["from"] == a.peer_id
    assert ev["signed"] is True


async def test_pylibp2p_dht_with_js(start_interop_peer: StartPeer) -> None:
    """py-libp2p KadDHT peers a - b, a js DHT peer c dialling b: a provider record put by a is
    found by c (js) through b, and a value a stores under /test/ is read back by a py peer."""
    a = await start_interop_peer(PeerKind.PY, ["--dht"])
    b = await start_interop_peer(PeerKind.PY, ["--dht"])
    c = await start_interop_peer(PeerKind.JS, ["--dht"])
    assert "/ipfs/kad/1.0.0" in a.protocols
    assert b.peer_id in (await a.command("dht-add-peer", addr=b.addr))["peers"]
    await c.command("dial", addr=b.addr)
    assert b.peer_id in (await c.command("dht-wait-table", size=1))["peers"]

    cid = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"  # raw "hello"
    await a.command("dht-provide", cid=cid)
    found = await c.command("dht-find-providers", cid=cid)
    assert [p["peerId"] for p in found["providers"]] == [a.peer_id]

    await a.command("dht-put", key="/test/py", value_hex=b"from-py".hex())
    d = await start_interop_peer(PeerKind.PY, ["--dht"])
    await d.command("dht-add-peer", addr=b.addr)
    assert bytes.fromhex((await d.command("dht-get", key="/test/py"))["value_hex"]) == b"from-py"

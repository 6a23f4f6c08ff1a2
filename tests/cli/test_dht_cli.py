"""``peerstack dht ...`` and ``peerstack name ...`` across daemons and one-shot nodes."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli.clitools import (
    DEAD_PEER,
    Daemon,
    ok_json,
    one_line_error,
    peerstack,
    start_daemon,
)


def test_find_peer(daemons: list[Daemon], tmp_path: Path) -> None:
    d0, d1, d2 = daemons
    # One-shot: told only about d0, it finds d2 through the DHT.
    res = ok_json(
        "dht", "find-peer", d2.peer_id, "--repo", str(tmp_path / "c"), "--bootstrap", d0.addr
    )
    assert res["peer_id"] == d2.peer_id
    assert d2.addr.rsplit("/p2p/", 1)[0] in res["addrs"]
    assert isinstance(res["hops"], int)
    # Through d1's API (d1 too was told only about d0).
    res = ok_json("dht", "find-peer", d2.peer_id, "--repo", str(d1.repo))
    assert d2.addr.rsplit("/p2p/", 1)[0] in res["addrs"]
    plain = peerstack("dht", "find-peer", d2.peer_id, "--repo", str(d1.repo))
    assert plain.returncode == 0, plain.stderr
    assert f"found {d2.peer_id} in" in plain.stdout


def test_put_and_get(daemons: list[Daemon], tmp_path: Path) -> None:
    d0, d1, d2 = daemons
    put = ok_json("dht", "put", "colour", "blue", "--repo", str(d1.repo))
    assert put["peers"] >= 1
    got = ok_json("dht", "get", "colour", "--repo", str(tmp_path / "c"), "--bootstrap", d0.addr)
    assert got["value"] == "blue"
    proc = peerstack("dht", "get", "colour", "--repo", str(d2.repo))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "blue\n"
    # A newer write wins, also when it comes from a one-shot node.
    ok_json("dht", "put", "colour", "green", "--repo", str(tmp_path / "w"), "--bootstrap", d0.addr)
    assert ok_json("dht", "get", "colour", "--repo", str(d2.repo))["value"] == "green"
    assert "no value" in one_line_error(
        peerstack("dht", "get", "never-put", "--repo", str(d2.repo))
    )
    # --bootstrap also works against a daemon: it connects there first (and must reach one).
    via = ok_json("dht", "get", "colour", "--repo", str(d2.repo), "--bootstrap", d0.addr)
    assert via["value"] == "green"
    line = one_line_error(
        peerstack("dht", "get", "colour", "--repo", str(d2.repo), "--bootstrap", DEAD_PEER)
    )
    assert "bootstrap" in line


def test_provide_and_find_providers(daemons: list[Daemon], tmp_path: Path) -> None:
    d0, d1, d2 = daemons
    (tmp_path / "f").write_bytes(os.urandom(5000))
    cid = ok_json("add", str(tmp_path / "f"), "--provide", "none", "--repo", str(d1.repo))["cid"]
    before = ok_json("dht", "find-providers", cid, "--repo", str(d2.repo))
    assert d1.peer_id not in {p["peer_id"] for p in before["providers"]}
    assert ok_json("dht", "provide", cid, "--repo", str(d1.repo))["peers"] >= 1
    after = ok_json(
        "dht", "find-providers", cid, "--repo", str(tmp_path / "c"), "--bootstrap", d0.addr
    )
    assert d1.peer_id in {p["peer_id"] for p in after["providers"]}
    # add announces the root by default.
    (tmp_path / "g").write_bytes(os.urandom(5000))
    cid2 = ok_json("add", str(tmp_path / "g"), "--repo", str(d2.repo))["cid"]
    found = ok_json("dht", "find-providers", cid2, "--repo", str(d1.repo))
    assert d2.peer_id in {p["peer_id"] for p in found["providers"]}


def test_ipns_publish_and_resolve(daemons: list[Daemon], tmp_path: Path) -> None:
    d0, d1, d2 = daemons
    (tmp_path / "v1").write_text("one")
    cid = ok_json("add", str(tmp_path / "v1"), "--repo", str(d1.repo))["cid"]
    pub = ok_json("name", "publish", cid, "--repo", str(d1.repo))
    assert pub["name"] == d1.peer_id
    assert pub["value"] == f"/ipfs/{cid}"
    res = ok_json(
        "name", "resolve", d1.peer_id, "--repo", str(tmp_path / "c"), "--bootstrap", d0.addr
    )
    assert res["value"] == f"/ipfs/{cid}"
    # Publishing again moves the name; the sequence goes up.
    again = ok_json("name", "publish", f"/ipfs/{cid}/x", "--repo", str(d1.repo))
    assert again["sequence"] == pub["sequence"] + 1
    proc = peerstack("name", "resolve", f"/ipns/{d1.peer_id}", "--repo", str(d2.repo))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"/ipfs/{cid}/x"
    # A one-shot node publishes under its repo's key; a daemon resolves it.
    mine = ok_json("name", "publish", cid, "--repo", str(tmp_path / "p"), "--bootstrap", d0.addr)
    assert ok_json("name", "resolve", mine["name"], "--repo", str(d2.repo))["value"] == (
        f"/ipfs/{cid}"
    )


def test_bad_input_is_one_line(daemons: list[Daemon], tmp_path: Path) -> None:
    d0 = daemons[0]
    repo = ["--repo", str(tmp_path / "r")]
    assert "peer id" in one_line_error(peerstack("dht", "find-peer", "nobody", *repo))
    assert "IPNS name" in one_line_error(peerstack("name", "resolve", "not-a-name", *repo))
    assert "bad CID" in one_line_error(peerstack("dht", "provide", "xyz", *repo))
    assert "bad CID" in one_line_error(peerstack("name", "publish", "xyz", *repo))
    assert "multiaddr" in one_line_error(
        peerstack("dht", "get", "k", "--bootstrap", "/ip4/1.2.3/tcp/1", *repo)
    )
    line = one_line_error(peerstack("dht", "put", "k", "v", "--bootstrap", DEAD_PEER, *repo))
    assert "bootstrap" in line
    assert "/peerstack/" in one_line_error(peerstack("dht", "put", "/ipns/x", "v", *repo))
    assert "at most" in one_line_error(
        peerstack("dht", "put", "k", "v" * 5000, "--bootstrap", d0.addr, *repo)
    )
    ghost = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    assert "no DHT peer knows" in one_line_error(
        peerstack("dht", "find-peer", ghost, "--bootstrap", d0.addr, *repo)
    )


def test_restarted_daemon_rejoins_from_its_saved_table(tmp_path: Path) -> None:
    boot = start_daemon(tmp_path / "boot")
    try:
        node = start_daemon(tmp_path / "node", boot.addr)
        try:
            ok_json("dht", "find-peer", boot.peer_id, "--repo", str(node.repo))
        finally:
            node.stop()
        # No --bootstrap and none configured: the routing table saved in the repo is enough.
        node = start_daemon(tmp_path / "node")
        try:
            res = ok_json("dht", "find-peer", boot.peer_id, "--repo", str(node.repo))
            assert res["peer_id"] == boot.peer_id
            assert ok_json("dht", "put", "k", "v", "--repo", str(node.repo))["peers"] >= 1
        finally:
            node.stop()
    finally:
        boot.stop()


def test_daemon_announces_what_was_added_offline(daemons: list[Daemon], tmp_path: Path) -> None:
    d0, _, d2 = daemons
    repo = tmp_path / "offline"
    repo.mkdir()
    (repo / "config.toml").write_text(
        '[node]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n[content]\nreprovide_interval = 0.5\n'
    )
    (tmp_path / "f").write_bytes(os.urandom(4000))
    cid = ok_json("add", str(tmp_path / "f"), "--repo", str(repo))["cid"]  # one-shot: no announce
    before = ok_json("dht", "find-providers", cid, "--repo", str(d2.repo))
    assert before["providers"] == []
    node = start_daemon(repo, d0.addr)
    try:
        for _ in range(40):
            found = ok_json("dht", "find-providers", cid, "--repo", str(d2.repo))
            if node.peer_id in {p["peer_id"] for p in found["providers"]}:
                break
        else:
            raise AssertionError("the daemon's reprovider never announced the pinned root")
    finally:
        node.stop()


def test_one_shot_provide(daemons: list[Daemon], tmp_path: Path) -> None:
    d0, _, d2 = daemons
    repo = tmp_path / "oneshot"
    (tmp_path / "f").write_bytes(os.urandom(3000))
    cid = ok_json("add", str(tmp_path / "f"), "--repo", str(repo))["cid"]
    me = ok_json("dht", "provide", cid, "--repo", str(repo), "--bootstrap", d0.addr)
    assert me["peers"] >= 1
    peer_id = ok_json("id", "--repo", str(repo))["peer_id"]
    found = ok_json("dht", "find-providers", cid, "--repo", str(d2.repo))
    assert peer_id in {p["peer_id"] for p in found["providers"]}

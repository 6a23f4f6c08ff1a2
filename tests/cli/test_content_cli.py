"""``peerstack add|get|cat|pin|repo`` as real subprocesses: via the daemon and one-shot."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cli.clitools import (
    DEAD_PEER,
    PEERSTACK,
    Daemon,
    ok_json,
    one_line_error,
    peerstack,
    start_daemon,
)


def write_random(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_api_file_token_and_auth(daemons: list[Daemon]) -> None:
    d = daemons[0]
    api = (d.repo / "api").read_text().strip()
    assert api == d.api
    assert api.startswith("/ip4/127.0.0.1/tcp/")
    token_path = d.repo / "api.token"
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    port = api.rsplit("/", 1)[1]
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v0/repo.stat",
        data=b"{}",
        headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
    req.headers["Authorization"] = "Bearer " + token_path.read_text().strip()
    with urllib.request.urlopen(req, timeout=10) as resp:
        lines = [json.loads(x) for x in resp.read().splitlines()]
    assert lines[-1]["event"] == "result"
    assert lines[-1]["repo"] == str(d.repo)
    # Without the token an unknown verb is refused like a known one: no list of verbs leaks.
    probe = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v0/no.such.verb",
        data=b"{}",
        headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(probe, timeout=10)
    assert err.value.code == 401
    probe.headers["Authorization"] = "Bearer " + token_path.read_text().strip()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(probe, timeout=10)
    assert err.value.code == 404


def test_verbs_through_a_daemon_api_on_ipv6_loopback(tmp_path: Path) -> None:
    """The API on ::1 is published as /ip6/::1/... and the CLI reaches it (brackets in the URL)."""
    repo = tmp_path / "v6"
    args = ["daemon", "--repo", str(repo), "--listen", "/ip4/127.0.0.1/tcp/0"]
    proc = subprocess.Popen(
        [*PEERSTACK, *args, "--api", "/ip6/::1/tcp/0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["api"].startswith("/ip6/::1/tcp/")
        # The daemon holds the repo: only its API can answer this.
        assert ok_json("repo", "stat", "--repo", str(repo))["repo"] == str(repo)
    finally:
        proc.terminate()
        proc.wait(30)


def test_verbs_through_the_daemon(daemons: list[Daemon], tmp_path: Path) -> None:
    d = daemons[1]
    repo = ["--repo", str(d.repo)]  # the daemon holds it: verbs must go through its API
    want = write_random(tmp_path / "f.bin", 2_500_000)
    added = ok_json("add", str(tmp_path / "f.bin"), *repo)
    cid = added["cid"]
    assert cid.startswith("bafy")
    proc = peerstack("add", str(tmp_path / "f.bin"), *repo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == cid  # plain output: the CID alone

    assert {"cid": cid, "kind": "recursive"} in ok_json("pin", "ls", *repo)["pins"]
    cat = subprocess.run(
        [*PEERSTACK, "cat", cid, *repo], capture_output=True, timeout=60, check=False
    )
    assert cat.returncode == 0
    assert hashlib.sha256(cat.stdout).hexdigest() == want
    part = subprocess.run(
        [*PEERSTACK, "cat", cid, "--offset", "1000", "--length", "10", *repo],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert part.stdout == (tmp_path / "f.bin").read_bytes()[1000:1010]

    res = ok_json("get", cid, "-o", str(tmp_path / "copy"), *repo)
    assert sha256(tmp_path / "copy") == want
    assert res["bytes"] >= 2_500_000
    stats = ok_json("repo", "stat", *repo)
    assert stats["pins"] >= 1
    assert stats["blocks"] >= 3
    assert ok_json("repo", "verify", *repo)["ok"]

    # Unpinned content goes at gc; pinned content stays.
    write_random(tmp_path / "tmp.bin", 10_000)
    loose = ok_json("add", str(tmp_path / "tmp.bin"), "--no-pin", *repo)["cid"]
    gc = ok_json("repo", "gc", *repo)
    assert gc["removed"] >= 1
    assert loose not in {p["cid"] for p in ok_json("pin", "ls", *repo)["pins"]}
    assert ok_json("pin", "rm", cid, *repo) == {"cid": cid, "pinned": False}
    assert ok_json("pin", "add", cid, *repo)["pinned"]


def test_one_shot_get_and_cat_with_bootstrap(daemons: list[Daemon], tmp_path: Path) -> None:
    d0, d1, _ = daemons
    want = write_random(tmp_path / "share.bin", 3_000_000)
    cid = ok_json("add", str(tmp_path / "share.bin"), "--repo", str(d1.repo))["cid"]
    # A fresh repo, no daemon: start a node, join through d0 only, find d1 via the DHT.
    fresh = ["--repo", str(tmp_path / "client"), "--bootstrap", d0.addr]
    res = ok_json("get", cid, "-o", str(tmp_path / "out.bin"), *fresh)
    assert sha256(tmp_path / "out.bin") == want
    assert res["fetched_bytes"] > 0
    assert hidden(tmp_path) == []
    cat = subprocess.run(
        [*PEERSTACK, "cat", cid, "--repo", str(tmp_path / "other"), "--bootstrap", d0.addr],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert cat.returncode == 0, cat.stderr
    assert hashlib.sha256(cat.stdout).hexdigest() == want
    # What a one-shot get fetched stays in its repo: a second get needs no network.
    again = ok_json(
        "get", cid, "-o", str(tmp_path / "again.bin"), "--repo", str(tmp_path / "client")
    )
    assert again["fetched_bytes"] == 0
    assert sha256(tmp_path / "again.bin") == want

    # The leaves live in out.bin itself (no block copies): repo stat counts them apart,
    # verify re-hashes them there and names the file, gc drops the references, not the file.
    client = ["--repo", str(tmp_path / "client")]
    stats = ok_json("repo", "stat", *client)
    assert (stats["referenced_blocks"], stats["referenced_size"]) == (3, 3_000_000)
    assert stats["blocks"] == 1  # the root
    assert "referenced 3 blocks" in peerstack("repo", "stat", *client).stdout
    with (tmp_path / "out.bin").open("r+b") as fh:
        fh.write(b"\x00" if fh.read(1) != b"\x00" else b"\x01")
    proc = peerstack("repo", "verify", *client)
    assert proc.returncode == 1
    assert f"in {tmp_path / 'out.bin'}: the bytes there changed" in proc.stdout
    report = json.loads(peerstack("repo", "verify", "--json", *client).stdout)
    assert [r["offset"] for r in report["damaged_refs"]] == [0]
    assert ok_json("repo", "gc", *client)["refs_dropped"] == 3
    assert (tmp_path / "out.bin").stat().st_size == 3_000_000


def test_one_shot_repo_verbs_gc_and_verify(tmp_path: Path) -> None:
    repo = ["--repo", str(tmp_path / "r")]
    write_random(tmp_path / "keep", 1_500_000)
    write_random(tmp_path / "drop", 1000)
    keep = ok_json("add", str(tmp_path / "keep"), *repo)["cid"]
    ok_json("add", str(tmp_path / "drop"), "--no-pin", *repo)
    assert ok_json("repo", "gc", *repo)["removed"] == 1
    assert [p["cid"] for p in ok_json("pin", "ls", *repo)["pins"]] == [keep]
    cat = subprocess.run([*PEERSTACK, "cat", keep, *repo], capture_output=True, check=False)
    assert cat.stdout == (tmp_path / "keep").read_bytes()
    assert ok_json("repo", "verify", *repo)["ok"]

    # Damage one block file: verify says so, in one line per block, and exits 1.
    blocks = sorted((tmp_path / "r" / "blocks").rglob("*.data"))
    victim = blocks[0]
    victim.write_bytes(b"\x00" + victim.read_bytes()[1:] + b"!")
    proc = peerstack("repo", "verify", *repo)
    assert proc.returncode == 1
    assert f"damaged block {victim.stem}" in proc.stdout
    assert "DAMAGED" in proc.stdout
    report = json.loads(peerstack("repo", "verify", "--json", *repo).stdout)
    assert report["damaged"] == [victim.stem]


def test_directory_add_and_get(daemons: list[Daemon], tmp_path: Path) -> None:
    _, d1, d2 = daemons
    src = tmp_path / "tree"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "a" / "b" / "deep.bin").write_bytes(os.urandom(70_000))
    one_line_error(peerstack("add", str(src), "--repo", str(d1.repo)))  # no -r
    cid = ok_json("add", "-r", str(src), "--repo", str(d1.repo))["cid"]
    ok_json("get", cid, "-o", str(tmp_path / "copy"), "--repo", str(d2.repo))
    assert (tmp_path / "copy" / "top.txt").read_text() == "top"
    assert (tmp_path / "copy" / "a" / "b" / "deep.bin").read_bytes() == (
        src / "a" / "b" / "deep.bin"
    ).read_bytes()


def test_bad_input_is_one_line(daemons: list[Daemon], tmp_path: Path) -> None:
    d0 = daemons[0]
    repo = ["--repo", str(tmp_path / "r")]
    assert "bad CID" in one_line_error(peerstack("get", "not-a-cid", *repo))
    assert "bad CID" in one_line_error(peerstack("cat", "bafyXXX", *repo))
    assert "bad CID" in one_line_error(peerstack("pin", "add", "Qm123", *repo))
    assert "no such file" in one_line_error(peerstack("add", str(tmp_path / "nope"), *repo))
    assert "multiaddr" in one_line_error(
        peerstack(
            "get",
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "--bootstrap",
            "/ip4/300.1.1.1/tcp/1",
            *repo,
        )
    )
    (tmp_path / "exists").write_text("x")
    assert "already exists" in one_line_error(
        peerstack(
            "get",
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "-o",
            str(tmp_path / "exists"),
            *repo,
        )
    )
    assert (tmp_path / "exists").read_text() == "x"
    line = one_line_error(
        peerstack(
            "get",
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "-o",
            str(tmp_path / "o"),
            "--bootstrap",
            DEAD_PEER,
            *repo,
        )
    )
    assert "bootstrap" in line
    assert not (tmp_path / "o").exists()
    # Nobody has it: a clear line after the search time, nothing written.
    line = one_line_error(
        peerstack(
            "get",
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "-o",
            str(tmp_path / "o"),
            "--timeout",
            "1",
            "--bootstrap",
            d0.addr,
            *repo,
        )
    )
    assert "could not find" in line
    assert not (tmp_path / "o").exists()
    assert hidden(tmp_path) == []
    assert "--profile" in one_line_error(
        peerstack("add", str(tmp_path / "exists"), "--profile", "fancy", *repo)
    )


def test_repo_held_without_api_is_refused(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "held")
    try:
        (d.repo / "api").unlink()  # the daemon holds the repo but cannot be asked
        line = one_line_error(peerstack("repo", "stat", "--repo", str(d.repo)))
        assert "in use" in line
    finally:
        d.stop()
    assert not (d.repo / "api").exists()
    assert not (d.repo / "api.token").exists()  # the daemon took its token with it
    # Stopped: one-shot works again.
    assert ok_json("repo", "stat", "--repo", str(d.repo))["repo"] == str(d.repo)


def _kill_midway(args: list[str], total: int) -> None:
    """Run a ``get --json`` and SIGKILL it once a quarter of ``total`` bytes arrived."""
    proc = subprocess.Popen(
        [*PEERSTACK, *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("bytes_done", 0) >= total // 4 and not event.get("done"):
                proc.send_signal(signal.SIGKILL)
                break
        else:
            raise AssertionError("the get ended before it could be interrupted")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["one-shot", "daemon"])
def test_interrupted_get_resumes(daemons: list[Daemon], tmp_path: Path, mode: str) -> None:
    d0, d1, d2 = daemons
    size = 48 * 1024 * 1024
    want = write_random(tmp_path / "big", size)
    cid = ok_json("add", str(tmp_path / "big"), "--repo", str(d1.repo))["cid"]
    out = tmp_path / "dl" / "big.out"
    out.parent.mkdir()
    if mode == "one-shot":
        where = ["--repo", str(tmp_path / "client"), "--bootstrap", d0.addr]
    else:
        where = ["--repo", str(d2.repo)]
    _kill_midway(["get", cid, "-o", str(out), *where], size)
    assert not out.exists()  # nothing half-written under the final name
    res = ok_json("get", cid, "-o", str(out), *where)
    assert sha256(out) == want
    assert res["fetched_bytes"] < size  # resumed from the verified blocks it had
    assert hidden(out.parent) == []


def test_crashed_daemon_leaves_nothing_in_the_way(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "r")
    d.proc.kill()  # no clean shutdown: the api file stays behind, the lock goes with the process
    d.proc.wait(10)
    assert (d.repo / "api").exists()
    # The stale API does not answer: the verb runs one-shot on the repo.
    assert ok_json("repo", "stat", "--repo", str(d.repo))["repo"] == str(d.repo)
    again = start_daemon(tmp_path / "r")
    try:
        assert again.peer_id == d.peer_id
        assert (d.repo / "api").read_text().strip() == again.api  # the stale file replaced
        assert ok_json("pin", "ls", "--repo", str(d.repo)) == {"pins": []}
    finally:
        again.stop()


def test_one_shot_pin_add_fetches_and_pin_rm(daemons: list[Daemon], tmp_path: Path) -> None:
    d0, d1, _ = daemons
    want = write_random(tmp_path / "p.bin", 1_200_000)
    cid = ok_json("add", str(tmp_path / "p.bin"), "--repo", str(d1.repo))["cid"]
    repo = ["--repo", str(tmp_path / "pinner")]
    assert ok_json("pin", "add", cid, *repo, "--bootstrap", d0.addr)["pinned"]
    assert ok_json("repo", "gc", *repo)["removed"] == 0  # fetched and pinned: all kept
    cat = subprocess.run([*PEERSTACK, "cat", cid, *repo], capture_output=True, check=False)
    assert hashlib.sha256(cat.stdout).hexdigest() == want  # from the repo, no network
    assert ok_json("pin", "rm", cid, *repo)["pinned"] is False
    assert ok_json("repo", "gc", *repo)["removed"] >= 2
    assert "not pinned" in one_line_error(peerstack("pin", "rm", cid, *repo))


def test_ping_with_the_daemons_repo_leaves_the_daemon_alone(daemons: list[Daemon]) -> None:
    d0, d1, _ = daemons
    # The repo's identity, no DHT or blockstore: no clash with the daemon holding the repo.
    res = ok_json("ping", d0.addr, "-n", "1", "--repo", str(d1.repo))
    assert res["peer_id"] == d0.peer_id
    assert ok_json("repo", "stat", "--repo", str(d1.repo))["repo"] == str(d1.repo)


def _drop_a_leaf(repo: Path, root: str) -> None:
    """Delete one leaf block of ``root`` from a stopped node's repo: a seeder that cannot
    serve the whole file (as if every provider of that block had gone)."""
    import asyncio

    from peerstack.content.blockstore import Blockstore
    from peerstack.core.cid import CID

    async def go() -> None:
        store = Blockstore(repo)
        try:
            leaves = await store.children(CID.parse(root))
            assert len(leaves) >= 3
            assert await store.delete(leaves[1])
        finally:
            store.close()

    asyncio.run(go())


def _last_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Like ``one_line_error``, but plain progress lines may come before the error line."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("peerstack: ")] == lines[-1:], proc.stderr
    return lines[-1]


def test_get_and_cat_with_every_provider_gone_fail_in_one_line(tmp_path: Path) -> None:
    """When no peer sends a block for --timeout seconds, get and cat stop with one line that
    says how many blocks are missing and that the verified ones were kept, and exit non-zero."""
    write_random(tmp_path / "f", 3 * 1024 * 1024 + 5)
    cid = ok_json("add", str(tmp_path / "f"), "--repo", str(tmp_path / "seed"))["cid"]
    _drop_a_leaf(tmp_path / "seed", cid)
    seed = start_daemon(tmp_path / "seed")
    try:
        where = ["--bootstrap", seed.addr, "--timeout", "2"]
        out = tmp_path / "out"
        line = _last_line_error(
            peerstack("get", cid, "-o", str(out), "--repo", str(tmp_path / "c1"), *where)
        )
        assert "1 block(s) still missing" in line
        assert "kept for a resume" in line
        assert not out.exists()
        # cat writes the bytes it has before it stops: stdout is binary.
        cat = subprocess.run(
            [*PEERSTACK, "cat", cid, "--repo", str(tmp_path / "c2"), *where],
            capture_output=True,
            timeout=90,
            check=False,
        )
        line = one_line_error(
            subprocess.CompletedProcess(cat.args, cat.returncode, "", cat.stderr.decode())
        )
        assert "1 block(s) still missing" in line
        assert "kept for a resume" in line
    finally:
        seed.stop()

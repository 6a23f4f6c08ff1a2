"""peerstack's Bitswap and UnixFS against helia 7 (js-libp2p 3, @helia/unixfs, @helia/bitswap).

For every size (0 B, 1 B, 1 MiB, 1 MiB + 1 B, 300 MiB) and a directory tree, in both import
profiles (default: CIDv1 raw leaves 1 MiB chunks 1024 links; legacy: CIDv0 256 KiB 174 links):

* helia adds the bytes; we fetch them by Bitswap over our TCP host and check them;
* we add the same bytes; a second, empty helia node fetches them from us and reports the
  sha256 of what it got;
* both sides computed the same CID.

The bytes are generated into a temporary file (a 1 MiB piece at a time: the 300 MiB file is
never whole in memory on our side) and both sides import that same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from peerstack.content.bitswap.service import Bitswap, BitswapConfig  # noqa: E402
from peerstack.content.bitswap.session import SessionConfig  # noqa: E402
from peerstack.content.blockstore import Blockstore, FsyncPolicy  # noqa: E402
from peerstack.content.importer import DEFAULT_PROFILE, LEGACY_PROFILE, ImportProfile  # noqa: E402
from peerstack.core.cid import CID  # noqa: E402
from peerstack.core.identity import PrivateKey  # noqa: E402
from peerstack.core.peer_id import PeerId  # noqa: E402
from peerstack.host.host import BasicHost  # noqa: E402
from peerstack.protocols.identify import IdentifyService  # noqa: E402
from tests.interop.helia.helia_harness import (  # noqa: E402
    HeliaPeer,
    missing_install,
    running_helias,
)

# One event loop for the module, so that the helia pair (seconds to start on a busy machine)
# serves every file case.
pytestmark = [pytest.mark.interop, pytest.mark.asyncio(loop_scope="module")]

MiB = 1024 * 1024
PROFILES: dict[str, ImportProfile] = {"default": DEFAULT_PROFILE, "legacy": LEGACY_PROFILE}
SIZES = {"0B": 0, "1B": 1, "1MiB": MiB, "1MiB+1B": MiB + 1, "300MiB": 300 * MiB}
IDLE_TIMEOUT = 60.0  # a fetch with no block for this long fails instead of hanging the run


def _need_helia() -> None:
    reason = missing_install()
    if reason is not None:
        pytest.skip(f"helia interop peer unavailable: {reason}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def helia_pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[HeliaPeer, HeliaPeer]]:
    """A seeder helia (adds) and a leecher helia (fetches from us), shared by the file cases.

    Every case uses bytes of its own (the seed depends on the size) and each profile makes
    different blocks, so the leecher never holds a block of a case before it fetches it.
    """
    _need_helia()
    base = tmp_path_factory.mktemp("helia-pair")
    async with running_helias(base / "seeder", base / "leecher") as (seeder, leecher):
        yield seeder, leecher


# -- test data ---------------------------------------------------------------------------------


def write_pattern(path: Path, size: int, seed: bytes) -> str:
    """Write ``size`` deterministic, non-repeating bytes to ``path``; return their sha256.

    Piece i (1 MiB) is shake_128(seed || i): distinct pieces, so no block is deduplicated.
    """
    digest = hashlib.sha256()
    with path.open("wb") as out:
        done, i = 0, 0
        while done < size:
            n = min(MiB, size - done)
            piece = hashlib.shake_128(seed + i.to_bytes(8, "big")).digest(n)
            out.write(piece)
            digest.update(piece)
            done += n
            i += 1
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def make_tree(root: Path) -> None:
    """A small tree: text files (one upper-case name), a multi-chunk file, empties, nesting."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "emptydir").mkdir()
    (root / "a.txt").write_text("hello\n")
    (root / "B.txt").write_text("upper case sorts first\n")
    (root / "z.txt").write_text("zzz")
    (root / "sub" / "empty").write_bytes(b"")
    write_pattern(root / "sub" / "big.bin", 2 * MiB + 12345, b"tree-big")
    write_pattern(root / "sub" / "deeper" / "small.bin", 300_000, b"tree-small")


def tree_listing(root: Path) -> list[dict[str, Any]]:
    """Every entry under ``root`` as helia's ``tree`` command reports it, sorted by path."""
    out: list[dict[str, Any]] = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            out.append({"path": rel, "type": "directory", "size": None, "sha256": None})
        else:
            out.append(
                {"path": rel, "type": "file", "size": p.stat().st_size, "sha256": file_sha256(p)}
            )
    return out


# -- our side ----------------------------------------------------------------------------------


@dataclass
class OurNode:
    host: BasicHost
    store: Blockstore
    bitswap: Bitswap

    @property
    def addr(self) -> str:
        return f"{self.host.listen_addrs()[0]}/p2p/{self.host.peer_id}"


@asynccontextmanager
async def our_node(repo: Path, config: BitswapConfig | None = None) -> AsyncIterator[OurNode]:
    """BasicHost on loopback + identify (helia wants only peers it identified) + Bitswap."""
    key = PrivateKey.generate()
    async with AsyncExitStack() as stack:
        host = BasicHost(key, listen_addrs=["/ip4/127.0.0.1/tcp/0"])
        store = stack.enter_context(Blockstore(repo, FsyncPolicy.NEVER))
        bitswap = Bitswap(host, store, config=config)
        await bitswap.start()  # handlers before the listener opens
        stack.push_async_callback(bitswap.stop)
        identify = IdentifyService(host, host.peerstore, key.public_key, host.protocols)
        await host.start()
        stack.push_async_callback(host.close)
        identify.start()
        stack.push_async_callback(identify.close)
        yield OurNode(host, store, bitswap)


@dataclass
class Figures:
    helia_add_ms: int
    we_fetch_s: float
    we_add_s: float
    helia_fetch_ms: int


def report(case: str, cid: str, f: Figures) -> None:
    # Seen with `pytest -s`: the figures of the final report. Not asserted (no timing asserts).
    print(
        f"\n[helia-interop] {case}: cid={cid} helia add {f.helia_add_ms} ms, "
        f"we fetch {f.we_fetch_s:.2f} s, we add {f.we_add_s:.2f} s, "
        f"helia fetch {f.helia_fetch_ms} ms"
    )


# -- the cases ---------------------------------------------------------------------------------


def _marks(size: int, profile: str) -> list[pytest.MarkDecorator]:
    if size <= 10 * MiB:
        return []
    marks = [pytest.mark.timeout(600)]
    if profile != "default":
        marks.append(pytest.mark.slow)  # `-m "not slow"` keeps 300 MiB to the default profile
    return marks


CASES = [
    pytest.param(
        size_name, profile, id=f"{size_name}-{profile}", marks=_marks(SIZES[size_name], profile)
    )
    for size_name in SIZES
    for profile in PROFILES
]


@dataclass
class Source:
    path: Path
    size: int
    sha256: str


async def both_ways_file(
    tmp_path: Path, src: Source, profile: str, seeder: HeliaPeer, leecher: HeliaPeer
) -> tuple[str, Figures]:
    size, sha = src.size, src.sha256
    async with our_node(tmp_path / "fetcher") as fetcher, our_node(tmp_path / "adder") as adder:
        # helia adds; we fetch over Bitswap and check the bytes.
        added = await seeder.command("add-file", path=str(src.path), profile=profile, wait=600)
        assert added["sha256"] == sha
        assert added["size"] == size
        helia_cid = CID.parse(added["cid"])
        await fetcher.host.dial(seeder.addr)
        out = tmp_path / "fetched.bin"
        t0 = time.perf_counter()
        got = await fetcher.bitswap.get_file(helia_cid, out, idle_timeout=IDLE_TIMEOUT)
        we_fetch = time.perf_counter() - t0
        assert file_sha256(out) == sha
        assert got.root == helia_cid
        assert got.fetched_bytes == got.bytes  # all of it came from helia

        # we add the same file with the same profile: the same CID.
        t0 = time.perf_counter()
        ours = await adder.bitswap.add(src.path, PROFILES[profile], provide=False)
        we_add = time.perf_counter() - t0
        assert str(ours.cid) == added["cid"]

        # a helia node that has nothing fetches it from us.
        await leecher.command("dial", addr=adder.addr)
        cat = await leecher.command("cat", cid=str(ours.cid), timeout_ms=540_000, wait=600)
        assert cat["size"] == size
        assert cat["sha256"] == sha
        # it came from us: our server sent helia the blocks
        ledger = adder.bitswap.engine.ledgers[PeerId.from_string(leecher.peer_id)]
        assert ledger.blocks_sent >= 1
    return added["cid"], Figures(added["ms"], we_fetch, we_add, cat["ms"])


@pytest.mark.parametrize(("size_name", "profile"), CASES)
async def test_file_both_ways(
    tmp_path: Path, helia_pair: tuple[HeliaPeer, HeliaPeer], size_name: str, profile: str
) -> None:
    seeder, leecher = helia_pair
    size = SIZES[size_name]
    src = tmp_path / f"data-{size_name}.bin"
    sha = write_pattern(src, size, f"helia-interop-{size}".encode())
    cid, figures = await both_ways_file(tmp_path, Source(src, size, sha), profile, seeder, leecher)
    report(f"{size_name} {profile}", cid, figures)
    if profile == "legacy":
        assert cid.startswith("Qm")
    else:
        assert cid.startswith("baf")


@pytest.mark.parametrize("profile", list(PROFILES))
async def test_directory_tree_both_ways(tmp_path: Path, profile: str) -> None:
    # Helia nodes of its own: the tree's empty file is the 0 B case's block.
    _need_helia()
    src = tmp_path / "tree"
    make_tree(src)
    expected = tree_listing(src)
    async with AsyncExitStack() as stack:
        seeder, leecher = await stack.enter_async_context(
            running_helias(tmp_path / "helia-a", tmp_path / "helia-b")
        )
        fetcher = await stack.enter_async_context(our_node(tmp_path / "fetcher"))
        adder = await stack.enter_async_context(our_node(tmp_path / "adder"))

        added = await seeder.command("add-dir", path=str(src), profile=profile)
        root = CID.parse(added["cid"])
        listing = await seeder.command("ls", cid=added["cid"])
        top = sorted(e["path"] for e in expected if "/" not in e["path"])
        assert sorted(e["name"] for e in listing["entries"]) == top

        # we fetch helia's tree and write it out: the same files, the same bytes.
        await fetcher.host.dial(seeder.addr)
        out = tmp_path / "fetched"
        await fetcher.bitswap.get_file(root, out, idle_timeout=IDLE_TIMEOUT)
        assert tree_listing(out) == expected

        # we add the same tree: the same root CID.
        ours = await adder.bitswap.add(src, PROFILES[profile], provide=False)
        assert ours.cid == root

        # an empty helia node walks our tree over Bitswap: the same entries and bytes.
        await leecher.command("dial", addr=adder.addr)
        walked = await leecher.command("tree", cid=str(ours.cid))
        assert sorted(walked["entries"], key=lambda e: str(e["path"])) == expected
        ledger = adder.bitswap.engine.ledgers[PeerId.from_string(leecher.peer_id)]
        assert ledger.blocks_sent >= len(expected)  # every node and leaf came from us
    print(f"\n[helia-interop] tree {profile}: cid={root} helia walk {walked['ms']} ms")


async def _kill_when(node: OurNode, helia: HeliaPeer, blocks: int) -> int:
    """SIGKILL helia once we have ``blocks`` blocks from anyone (polled on our ledgers).

    Returns how many of them helia had sent.
    """
    peer = PeerId.from_string(helia.peer_id)
    while True:  # the ledgers have no event to wait on
        ledgers = node.bitswap.engine.ledgers
        if sum(led.blocks_received for led in ledgers.values()) >= blocks:
            helia.proc.kill()
            return ledgers[peer].blocks_received if peer in ledgers else 0
        await asyncio.sleep(0.002)


async def test_helia_seeder_killed_mid_transfer(tmp_path: Path) -> None:
    """helia and one of ours seed a 32 MiB file; helia is killed mid-transfer; we finish."""
    _need_helia()
    src = tmp_path / "data.bin"
    sha = write_pattern(src, 32 * MiB, b"helia-fault")
    # Few blocks in flight per peer, so both seeders carry part of the file.
    config = BitswapConfig(session=SessionConfig(initial_window=2, max_window=4))
    async with AsyncExitStack() as stack:
        (helia,) = await stack.enter_async_context(running_helias(tmp_path / "helia"))
        seeder = await stack.enter_async_context(our_node(tmp_path / "seeder"))
        leecher = await stack.enter_async_context(our_node(tmp_path / "leecher", config))
        added = await helia.command("add-file", path=str(src), profile="legacy")
        ours = await seeder.bitswap.add(src, LEGACY_PROFILE, provide=False)
        assert str(ours.cid) == added["cid"]
        await leecher.host.dial(helia.addr)
        await leecher.host.connect(seeder.host.peer_id, seeder.host.listen_addrs())
        # 129 blocks (128 leaves of 256 KiB and a root): kill helia a third of the way.
        killer = asyncio.get_running_loop().create_task(_kill_when(leecher, helia, 43))
        try:
            out = tmp_path / "out.bin"
            result = await leecher.bitswap.get_file(ours.cid, out, idle_timeout=IDLE_TIMEOUT)
        finally:
            killed = killer.done() and not killer.cancelled()
            killer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await killer
        assert killed, "helia was never killed: the transfer had no middle"
        print(f"\n[helia-interop] helia killed after sending {killer.result()} of 43 blocks")
        assert file_sha256(out) == sha
        assert result.fetched_bytes == result.bytes
        ledger = leecher.bitswap.engine.ledgers[seeder.host.peer_id]
        assert ledger.blocks_received > 0

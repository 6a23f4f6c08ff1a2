"""The exporter on hostile DAGs: any blocks give bytes or a typed error, never a crash or hang."""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.content import dagpb
from peerstack.content.exporter import cat, ls, stat
from peerstack.content.unixfs import DataType, UnixFSData
from peerstack.core.cid import CID, DAG_PB, RAW
from peerstack.errors import PeerstackError


class DictGetter:
    def __init__(self, blocks: dict[CID, bytes]) -> None:
        self.blocks = blocks
        self.reads = 0

    async def get(self, cid: CID) -> bytes:
        self.reads += 1
        if cid not in self.blocks:
            raise PeerstackError(f"missing {cid}")
        return self.blocks[cid]


@st.composite
def dags(draw: st.DrawFn) -> tuple[CID, dict[CID, bytes]]:
    """A small random DAG of raw leaves and UnixFS nodes, built bottom-up (so acyclic)."""
    blocks: dict[CID, bytes] = {}
    made: list[CID] = []
    for _ in range(draw(st.integers(1, 8))):
        make_node: bool = draw(st.booleans())
        if made and make_node:
            kids = draw(st.lists(st.sampled_from(made), max_size=4))
            sizes = draw(st.lists(st.integers(0, 50), min_size=0, max_size=5))
            data = UnixFSData(
                draw(st.sampled_from(list(DataType))),
                draw(st.binary(max_size=8)),
                draw(st.none() | st.integers(0, 300)),
                tuple(sizes),
                hash_type=draw(st.none() | st.just(0x22)),
                fanout=draw(st.none() | st.sampled_from([0, 8, 256, 3000])),
            ).encode()
            names = draw(st.lists(st.text(max_size=5), min_size=len(kids), max_size=len(kids)))
            links = dagpb.sort_links(
                [
                    dagpb.PBLink(k, n, draw(st.none() | st.integers(0, 99)))
                    for k, n in zip(kids, names, strict=True)
                ]
            )
            block = dagpb.encode(dagpb.PBNode(tuple(links), data))
            cid = CID.hash_of(block, DAG_PB)
        elif draw(st.booleans()):
            block = draw(st.binary(max_size=40))
            cid = CID.hash_of(block, RAW)
        else:
            block = draw(st.binary(max_size=40))  # arbitrary bytes claiming to be dag-pb
            cid = CID.hash_of(block, DAG_PB)
        blocks[cid] = block
        made.append(cid)
    return made[-1], blocks


@settings(max_examples=200, deadline=None)
@given(dags(), st.integers(0, 100), st.none() | st.integers(0, 100))
def test_cat_and_ls_on_random_dags(
    dag: tuple[CID, dict[CID, bytes]], offset: int, length: int | None
) -> None:
    root, blocks = dag
    getter = DictGetter(blocks)

    async def run() -> None:
        try:
            out = b"".join([p async for p in cat(getter, root, offset, length)])
            info = await stat(getter, root)
            assert info.size is None or len(out) <= info.size
        except PeerstackError:
            pass
        with contextlib.suppress(PeerstackError):
            await ls(getter, root)

    asyncio.run(run())
    assert getter.reads < 2_000  # empty subtrees are never fetched: no blow-up


@st.composite
def hamts(draw: st.DrawFn) -> tuple[CID, dict[CID, bytes]]:
    """HAMT-shaped DAGs whose shards link earlier shards any number of times (so a walk that
    followed every link could take exponential time), with odd fanouts, hashes and names."""
    leaf = CID.hash_of(b"leaf", RAW)
    blocks: dict[CID, bytes] = {leaf: b"leaf"}
    shards: list[CID] = []
    for _ in range(draw(st.integers(1, 12))):
        fanout = draw(st.sampled_from([16, 16, 16, 8, 256]))
        width = len(f"{fanout - 1:X}")
        links: list[dagpb.PBLink] = []
        for _ in range(draw(st.integers(0, 8))):
            label = f"{draw(st.integers(0, fanout - 1)):0{width}X}"
            to_shard: bool = draw(st.booleans())
            if shards and to_shard:
                links.append(dagpb.PBLink(draw(st.sampled_from(shards)), label, 0))
            else:
                links.append(dagpb.PBLink(leaf, label + draw(st.text(max_size=4)), 1))
        data = UnixFSData(
            draw(st.sampled_from([DataType.HAMT_SHARD] * 4 + [DataType.DIRECTORY])),
            draw(st.binary(max_size=2)),
            hash_type=draw(st.sampled_from([0x22, 0x22, 0x22, 0x11])),
            fanout=fanout,
        ).encode()
        block = dagpb.encode(dagpb.PBNode(tuple(dagpb.sort_links(links)), data))
        cid = CID.hash_of(block, DAG_PB)
        blocks[cid] = block
        shards.append(cid)
    return shards[-1], blocks


@settings(max_examples=300, deadline=None)
@given(hamts())
def test_ls_on_hostile_hamts_reads_each_block_at_most_once(
    dag: tuple[CID, dict[CID, bytes]],
) -> None:
    root, blocks = dag
    getter = DictGetter(blocks)

    async def run() -> None:
        with contextlib.suppress(PeerstackError):
            entries = await ls(getter, root)
            assert len(entries) <= 8 * len(blocks)

    asyncio.run(run())
    assert getter.reads <= len(blocks)

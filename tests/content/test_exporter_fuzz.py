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

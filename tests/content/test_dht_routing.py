"""Bitswap finds providers through the real Kademlia DHT (in-memory hosts)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from peerstack.content.bitswap.service import Bitswap, ContentRouting
from peerstack.content.blockstore import Blockstore, FsyncPolicy
from peerstack.content.exporter import cat
from peerstack.content.routing import DhtContentRouting
from peerstack.dht.config import DhtConfig, Mode
from peerstack.dht.service import KadDHT
from tests.content.content_testkit import MemNetwork, pattern


async def test_fetch_via_dht_providers(net: MemNetwork, tmp_path: Path) -> None:
    hosts = [net.add_host() for _ in range(3)]
    a, relay, b = hosts
    server = DhtConfig(background=False)
    client = DhtConfig(background=False, mode=Mode.CLIENT)  # b is in nobody's table
    dhts = [KadDHT(a, server), KadDHT(relay, server), KadDHT(b, client)]
    for dht in dhts:
        await dht.start()
    stores = [Blockstore(tmp_path / f"s{i}", FsyncPolicy.NEVER) for i in range(3)]
    routers = [DhtContentRouting(d) for d in dhts]
    swaps = [Bitswap(h, s, r) for h, s, r in zip(hosts, stores, routers, strict=True)]
    try:
        for sw in swaps:
            await sw.start()
        # a and b only know the relay; the DHT tables fill as the relay is probed
        await a.connect(relay.peer_id)
        await b.connect(relay.peer_id)
        for _ in range(100):
            if len(dhts[0].routing_table) and len(dhts[2].routing_table):
                break
            await asyncio.sleep(0.01)
        src = tmp_path / "f.bin"
        src.write_bytes(pattern(400_000))
        added = await swaps[0].add(src)  # imports, pins, and announces through the DHT
        assert b.connected_peers() == [relay.peer_id]
        await asyncio.wait_for(swaps[2].fetch(added.cid), 30)
        assert a.peer_id in b.connected_peers()  # found through the DHT and dialled
        got = b"".join([p async for p in cat(stores[2], added.cid)])
        assert got == pattern(400_000)
    finally:
        for sw in swaps:
            await sw.stop()
        for dht in dhts:
            await dht.stop()
        for s in stores:
            s.close()


def test_adapter_is_a_content_routing() -> None:
    def check(r: ContentRouting) -> ContentRouting:
        return r

    assert check(DhtContentRouting(KadDHT(MemNetwork().add_host()))) is not None

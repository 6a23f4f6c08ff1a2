"""The DHT on real hosts (TCP + Noise + Yamux) on loopback: the same service as in sim/."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from peerstack.core import multihash
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.config import DhtConfig, Mode
from peerstack.dht.messages import PROTOCOL_ID
from peerstack.dht.records import create_ipns_record, ipns_key, parse_ipns_record, pk_key
from peerstack.dht.service import KadDHT
from peerstack.node import Node

N = 6


def loopback_config(**kw: object) -> DhtConfig:
    # Every peer is 127.0.0.1: lift the /24 diversity limits, as on any single-host test.
    base: dict[str, object] = {
        "background": False,
        "max_per_group_bucket": None,
        "max_per_group_table": None,
        "rpc_timeout": 10.0,
    }
    base.update(kw)
    return DhtConfig(**base)  # type: ignore[arg-type]


def boot_addr(node: Node) -> Multiaddr:
    return node.addrs[0]


@pytest.fixture
async def network() -> AsyncIterator[list[KadDHT]]:
    # Nodes (BasicHost + identify): identify is what fills the peerstore with the listen
    # addresses the DHT hands out in its answers.
    nodes: list[Node] = []
    dhts: list[KadDHT] = []
    try:
        for i in range(N):
            node = Node()
            await node.start()
            nodes.append(node)
            boot = [boot_addr(nodes[0])] if i else []
            dht = KadDHT(node.host, loopback_config(bootstrap_peers=boot))
            await dht.start()
            dhts.append(dht)
            if i:
                assert await dht.bootstrap()
        for dht in dhts:
            await dht.refresh()
        yield dhts
    finally:
        for dht in dhts:
            await dht.stop()
        for node in nodes:
            await node.close()


async def test_tables_fill_and_find_peer(network: list[KadDHT]) -> None:
    for dht in network:
        assert len(dht.routing_table) == N - 1
    a, b = network[1], network[4]
    info = await a.find_peer(b.host.peer_id)
    assert info is not None
    assert set(b.host.listen_addrs()) <= set(info.addrs)


async def test_put_get_ipns_and_pk(network: list[KadDHT]) -> None:
    owner = PrivateKey.generate()
    name = PeerId.from_public_key(owner.public_key)
    rec = create_ipns_record(owner, b"/ipfs/bafkqaaa", 3, time.time_ns() + 10**13)
    assert await network[2].put_value(ipns_key(name), rec) == N - 1
    got = await network[5].get_value(ipns_key(name))
    assert parse_ipns_record(name, got, time.time()).sequence == 3
    me = network[3].host.peer_id
    assert me.extract_public_key() is not None
    pub = me.extract_public_key()
    assert pub is not None
    await network[3].put_value(pk_key(me), pub.to_protobuf())
    assert await network[0].get_value(pk_key(me)) == pub.to_protobuf()


async def test_provide_and_find_providers(network: list[KadDHT]) -> None:
    key = multihash.digest(b"some block").to_bytes()
    assert await network[1].provide(key) == N - 1
    found = await network[4].find_providers(key)
    assert [p.peer_id for p in found] == [network[1].host.peer_id]
    assert found[0].addrs


async def test_client_mode_on_a_real_host(network: list[KadDHT]) -> None:
    node = Node()
    await node.start()
    host = node.host
    first = network[0].host
    boot = [first.listen_addrs()[0].encapsulate(f"/p2p/{first.peer_id}")]
    client = KadDHT(host, loopback_config(mode=Mode.CLIENT, bootstrap_peers=boot))
    try:
        await client.start()
        assert PROTOCOL_ID not in host.protocols()
        assert await client.bootstrap()
        assert await client.find_peer(network[5].host.peer_id) is not None
        for dht in network:
            assert host.peer_id not in dht.routing_table
    finally:
        await client.stop()
        await node.close()

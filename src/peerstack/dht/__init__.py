"""Kademlia DHT (``/ipfs/kad/1.0.0``): routing table, lookups, records and providers.

Usage, on any ``peerstack.host.interface.Host``::

    dht = KadDHT(host, DhtConfig(bootstrap_peers=[...]), store=SqliteDhtStore(path))
    await dht.start()                       # serves (server mode), bootstraps, refreshes
    info = await dht.find_peer(peer_id)     # PeerInfo(peer_id, addrs) or None
    await dht.put_value(key, value)         # key "/ipns/<id>", "/pk/<id>" or a registered ns
    value = await dht.get_value(key)        # best valid record; stale holders corrected
    await dht.provide(multihash_bytes)      # announce; republished every 22 h
    providers = await dht.find_providers(multihash_bytes)
    await dht.stop()                        # saves the routing table

Modules: ``distance`` (keyspace), ``routing_table``, ``query`` (sans-IO lookup), ``messages``
(wire), ``records`` (validators, IPNS), ``cbor``, ``providers`` (stores), ``ratelimit``,
``rpc`` (client requests), ``server`` (handlers), ``service`` (``KadDHT``), ``config``.
"""

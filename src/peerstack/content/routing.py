"""Content routing for Bitswap on top of a Kademlia DHT (or anything shaped like one).

The DHT speaks in provider keys (multihashes) and returns peer infos; Bitswap speaks in CIDs and
wants providers as they are found. This adapter sits between them without importing the DHT
package: ``ProviderDht`` names the two calls it needs (``peerstack.dht.service.KadDHT`` has
them), so either side can change its internals freely.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from peerstack.content.bitswap.service import Provider
from peerstack.core.cid import CID
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId


class ProviderInfo(Protocol):
    @property
    def peer_id(self) -> PeerId: ...

    @property
    def addrs(self) -> Sequence[Multiaddr]: ...


class ProviderDht(Protocol):
    async def provide(self, key: bytes) -> int: ...

    async def find_providers(
        self, key: bytes, count: int | None = None
    ) -> Sequence[ProviderInfo]: ...


class DhtContentRouting:
    """``ContentRouting`` over a DHT: provider records are keyed by the CID's multihash."""

    def __init__(self, dht: ProviderDht) -> None:
        self.dht = dht

    async def provide(self, cid: CID) -> None:
        await self.dht.provide(cid.multihash.to_bytes())

    async def find_providers(self, cid: CID, limit: int) -> AsyncIterator[Provider]:
        for info in await self.dht.find_providers(cid.multihash.to_bytes(), limit):
            yield Provider(info.peer_id, tuple(info.addrs))

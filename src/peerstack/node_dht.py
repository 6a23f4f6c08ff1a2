"""The DHT as a node's user sees it: peer ids, text keys, CIDs and IPNS names.

``KadDHT`` speaks in raw keys and multihashes; this facade takes what a person types (a PeerId
string, ``KEY`` for the ``/peerstack/`` namespace, a CID, an IPNS name), refuses bad input with
``UsageError`` and reports how the lookup went (``last_lookup``: requests, hops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peerstack.app_records import decode_value, encode_value, record_key
from peerstack.core.cid import CID
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.messages import PeerInfo
from peerstack.dht.records import RecordError
from peerstack.dht.service import KadDHT, LookupStats, ValueNotFound
from peerstack.errors import DecodeError, PeerstackError, UsageError
from peerstack.protocols.identify import (
    IdentifyEvent,
    IdentifyFailed,
    IdentifyService,
    PeerIdentified,
)


class PeerNotFound(PeerstackError):
    """No DHT peer knew the peer we looked for."""


@dataclass(frozen=True, slots=True)
class FoundPeer:
    peer_id: PeerId
    addrs: tuple[Multiaddr, ...]
    hops: int
    requests: int


def parse_peer_id(text: str | PeerId) -> PeerId:
    if isinstance(text, PeerId):
        return text
    try:
        return PeerId.from_string(text.strip())
    except (DecodeError, UsageError, ValueError) as exc:
        raise UsageError(f"bad peer id {text!r}: {exc}") from None


def parse_name(text: str | PeerId) -> PeerId:
    """An IPNS name: a PeerId, its CID form, or either after ``/ipns/``."""
    if isinstance(text, str) and text.startswith("/ipns/"):
        text = text[len("/ipns/") :]
    try:
        return parse_peer_id(text)
    except UsageError:
        raise UsageError(f"bad IPNS name {text!r} (expected a peer id)") from None


def _key_of(cid: str | CID) -> bytes:
    from peerstack.node import parse_cid  # the CID parsing rules live with the node

    return parse_cid(cid).multihash.to_bytes()


def _ipfs_path(value: str) -> str:
    """``/ipfs/<cid>[/...]`` or ``/ipns/<name>[/...]``; a bare CID gets ``/ipfs/``."""
    from peerstack.node import parse_cid

    if not value.startswith("/"):
        return f"/ipfs/{parse_cid(value)}"
    parts = value.split("/", 3)  # "", "ipfs", "<cid>", "rest"
    if len(parts) < 3 or parts[1] not in ("ipfs", "ipns"):
        raise UsageError(
            f"an IPNS value is a CID, /ipfs/<cid>/... or /ipns/<name>/..., not {value!r}"
        )
    if parts[1] == "ipfs":
        parse_cid(parts[2])
    else:
        parse_name(parts[2])
    return value


def attach_identify(kad: KadDHT, identify: IdentifyService) -> Callable[[], None]:
    """Let identify tell ``kad`` which peers are DHT servers; returns the unsubscribe function.

    The DHT stops probing every new connection with a FIND_NODE (a stream and a request per
    connection): a peer whose identify lists the kad protocol is admitted to the routing table,
    one whose identify or push does not is left out (or removed), and only a peer whose
    identify failed is still probed. The DHT itself knows nothing of identify (it also runs on
    simulated hosts without it): this adapter hands it plain data.
    """

    def on_identify(event: IdentifyEvent) -> None:
        if isinstance(event, PeerIdentified):
            kad.peer_identified(event.peer, event.protocols, event.listen_addrs)
        elif isinstance(event, IdentifyFailed):
            kad.identify_failed(event.peer)

    unsubscribe = identify.add_listener(on_identify)
    kad.use_identify()
    return unsubscribe


class NodeDht:
    """find_peer, put, get, provide, find_providers, publish_name, resolve_name."""

    def __init__(self, kad: KadDHT) -> None:
        self.kad = kad

    @property
    def last_lookup(self) -> LookupStats:
        return self.kad.last_lookup

    async def find_peer(self, peer: str | PeerId) -> FoundPeer:
        target = parse_peer_id(peer)
        info = await self.kad.find_peer(target)
        stats = self.kad.last_lookup
        if info is None:
            raise PeerNotFound(f"no DHT peer knows {target} ({stats.requests} requests)")
        return FoundPeer(target, tuple(info.addrs), stats.hops, stats.requests)

    async def put(self, key: str, value: bytes) -> int:
        """Store ``value`` under ``key`` (``/peerstack/KEY``); how many peers took it."""
        raw = record_key(key)
        if not raw.startswith(b"/peerstack/"):
            raise UsageError("dht put writes /peerstack/ keys only (use name publish for IPNS)")
        return await self.kad.put_value(raw, encode_value(value))

    async def get(self, key: str) -> bytes:
        raw = record_key(key)
        try:
            value = await self.kad.get_value(raw)
        except ValueNotFound:
            raise ValueNotFound(f"no value for {key!r} in the DHT") from None
        except RecordError as exc:
            raise UsageError(f"cannot get {key!r}: {exc}") from None
        return decode_value(value) if raw.startswith(b"/peerstack/") else value

    async def provide(self, cid: str | CID) -> int:
        return await self.kad.provide(_key_of(cid))

    async def find_providers(self, cid: str | CID, count: int | None = None) -> list[PeerInfo]:
        return await self.kad.find_providers(_key_of(cid), count)

    async def publish_name(
        self, key: PrivateKey, value: str, *, lifetime: float, ttl: float
    ) -> tuple[PeerId, int]:
        if not value:
            raise UsageError("an IPNS value must not be empty")
        value = _ipfs_path(value)
        seq = await self.kad.publish_name(key, value.encode(), lifetime=lifetime, ttl=ttl)
        return PeerId.from_public_key(key.public_key), seq

    async def resolve_name(self, name: str | PeerId) -> str:
        target = parse_name(name)
        try:
            raw = await self.kad.resolve_name(target)
        except ValueNotFound:
            raise ValueNotFound(f"no IPNS record for {target} in the DHT") from None
        return raw.decode("utf-8", "replace")

"""Kademlia wire messages: typed views over the protobuf, with limits on everything.

Each message on a ``/ipfs/kad/1.0.0`` stream is ``uvarint(len) || Message`` (protobuf, see
``pb/dht.proto``). ``decode`` turns bytes from a peer into a ``KadMessage`` or raises a typed
``PeerError``; it never returns half-checked data.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError as PbDecodeError

from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.pb import dht_pb2
from peerstack.errors import DecodeError, LimitExceeded

PROTOCOL_ID = "/ipfs/kad/1.0.0"


class MessageType(enum.IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(enum.IntEnum):
    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@dataclass(frozen=True, slots=True)
class MessageLimits:
    """What a peer may make us parse in one message."""

    max_message_size: int = 256 * 1024
    max_key_size: int = 1024
    max_record_size: int = 16 * 1024
    max_peers: int = 64  # per closerPeers / providerPeers list; k = 20 is what peers send
    max_addrs_per_peer: int = 64


@dataclass(frozen=True, slots=True)
class PeerInfo:
    peer_id: PeerId
    addrs: tuple[Multiaddr, ...] = ()
    connection: ConnectionType = ConnectionType.NOT_CONNECTED


@dataclass(frozen=True, slots=True)
class KadRecord:
    key: bytes
    value: bytes
    time_received: str = ""


@dataclass(slots=True)
class KadMessage:
    type: MessageType
    key: bytes = b""
    record: KadRecord | None = None
    closer_peers: list[PeerInfo] = field(default_factory=list)
    provider_peers: list[PeerInfo] = field(default_factory=list)
    cluster_level: int = 0


def _peer_to_pb(info: PeerInfo, out: dht_pb2.Message.Peer) -> None:
    out.id = info.peer_id.to_bytes()
    out.addrs.extend(a.to_bytes() for a in info.addrs)
    out.connection = dht_pb2.Message.ConnectionType.ValueType(int(info.connection))


def encode(msg: KadMessage) -> bytes:
    pb = dht_pb2.Message()
    pb.type = dht_pb2.Message.MessageType.ValueType(int(msg.type))
    if msg.key:
        pb.key = msg.key
    if msg.cluster_level:
        pb.clusterLevelRaw = msg.cluster_level
    if msg.record is not None:
        pb.record.key = msg.record.key
        pb.record.value = msg.record.value
        if msg.record.time_received:
            pb.record.timeReceived = msg.record.time_received
    for info in msg.closer_peers:
        _peer_to_pb(info, pb.closerPeers.add())
    for info in msg.provider_peers:
        _peer_to_pb(info, pb.providerPeers.add())
    return pb.SerializeToString()


def _peers_from_pb(
    peers: Sequence[dht_pb2.Message.Peer], limits: MessageLimits, what: str
) -> list[PeerInfo]:
    if len(peers) > limits.max_peers:
        raise LimitExceeded(f"{len(peers)} {what} (limit {limits.max_peers})")
    out = []
    for p in peers:
        peer_id = PeerId(p.id)  # DecodeError on garbage: the whole message is refused
        if len(p.addrs) > limits.max_addrs_per_peer:
            raise LimitExceeded(f"{len(p.addrs)} addresses for one peer")
        addrs = []
        for raw in p.addrs:
            try:
                addrs.append(Multiaddr.from_bytes(raw))
            except DecodeError:
                # Peers advertise transports we do not know; such an address is useless to
                # us, not a protocol violation, so it is skipped and the peer kept.
                continue
        try:
            conn = ConnectionType(p.connection)
        except ValueError:
            conn = ConnectionType.NOT_CONNECTED
        out.append(PeerInfo(peer_id, tuple(addrs), conn))
    return out


def decode(data: bytes, limits: MessageLimits | None = None) -> KadMessage:
    """Parse one message from a peer; raises ``DecodeError`` or ``LimitExceeded``."""
    lim = limits or MessageLimits()
    if len(data) > lim.max_message_size:
        raise LimitExceeded(f"message of {len(data)} bytes (limit {lim.max_message_size})")
    pb = dht_pb2.Message()
    try:
        pb.ParseFromString(data)
    except (PbDecodeError, RecursionError, ValueError) as exc:
        raise DecodeError(f"malformed kad message: {exc}") from None
    try:
        mtype = MessageType(pb.type)
    except ValueError:
        raise DecodeError(f"unknown kad message type {pb.type}") from None
    if len(pb.key) > lim.max_key_size:
        raise LimitExceeded(f"key of {len(pb.key)} bytes (limit {lim.max_key_size})")
    record = None
    if pb.HasField("record"):
        r = pb.record
        if len(r.key) > lim.max_key_size:
            raise LimitExceeded("record key over the limit")
        if len(r.value) > lim.max_record_size:
            raise LimitExceeded(
                f"record value of {len(r.value)} bytes (limit {lim.max_record_size})"
            )
        record = KadRecord(r.key, r.value, r.timeReceived)
    closer = _peers_from_pb(pb.closerPeers, lim, "closer peers")
    providers = _peers_from_pb(pb.providerPeers, lim, "provider peers")
    return KadMessage(mtype, pb.key, record, closer, providers, pb.clusterLevelRaw)

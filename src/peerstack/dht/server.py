"""The server side of ``/ipfs/kad/1.0.0``: answering requests, within limits.

Every request is decoded with size limits, counted against the sender's rate, and answered
from the routing table and the store. Whatever a peer gets wrong (malformed bytes, records that
fail validation, an ADD_PROVIDER for someone else, too many streams or requests) raises a
typed ``PeerError``; the stream is reset and nothing is stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from peerstack.core import multihash
from peerstack.core.peer_id import PeerId
from peerstack.dht.config import DhtConfig
from peerstack.dht.distance import kad_key
from peerstack.dht.messages import KadMessage, KadRecord, MessageType, PeerInfo, decode, encode
from peerstack.dht.providers import DhtStore, DhtStoreError
from peerstack.dht.ratelimit import RateLimiter
from peerstack.dht.records import RecordError, Validators, format_rfc3339_ns, parse_rfc3339_ns
from peerstack.dht.routing_table import RoutingTable
from peerstack.dht.rpc import DhtCounters
from peerstack.errors import (
    ConnectionClosed,
    DecodeError,
    LimitExceeded,
    PeerError,
    ResourceLimitError,
    StreamError,
)
from peerstack.host.interface import Host, Stream, read_length_prefixed, write_length_prefixed

log = logging.getLogger(__name__)


class ProviderMismatch(PeerError):
    """An ADD_PROVIDER named a provider other than the peer that sent it."""


def check_provider_key(key: bytes) -> None:
    """Provider keys are multihashes (for a CID: its multihash bytes)."""
    if not key:
        raise DecodeError("empty provider key")
    multihash.Multihash.from_bytes(key)


class KadServer:
    """Answers kad requests for one node; also the keeper of its local records."""

    def __init__(
        self,
        host: Host,
        config: DhtConfig,
        *,
        routing_table: RoutingTable,
        store: DhtStore,
        validators: Validators,
        counters: DhtCounters,
        wall_clock: Callable[[], float],
    ) -> None:
        self.host = host
        self.config = config
        self.routing_table = routing_table
        self.store = store
        self.validators = validators
        self.counters = counters
        self.wall_clock = wall_clock
        self._inbound = 0
        self._inbound_per_peer: dict[PeerId, int] = {}
        self._rate = RateLimiter(config.peer_request_rate, config.peer_request_burst)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def fresh_record(self, key: bytes) -> tuple[bytes, str] | None:
        """Our record for ``key`` if it is still valid and not too old, else ``None``."""
        held = self.store.get_record(key)
        if held is None:
            return None
        wall = self.wall_clock()
        try:
            self.validators.validate(key, held[0], wall)
            received = parse_rfc3339_ns(held[1].encode()) / 1e9 if held[1] else wall
        except (RecordError, DecodeError):
            self.store.remove_record(key)  # expired or unreadable: do not hand it out
            return None
        if wall - received > self.config.max_record_age:
            self.store.remove_record(key)
            return None
        return held

    def keep_record(self, key: bytes, value: bytes) -> None:
        existing = self.store.get_record(key)
        if (
            existing is not None
            and existing[0] != value
            and self.validators.select(key, [value, existing[0]]) != 0
        ):
            return  # ours is older than what we hold: keep the better one
        wall = self.wall_clock()
        received = format_rfc3339_ns(int(wall * 1e9)).decode()
        self.store.put_record(key, value, received, received_at=wall)

    async def handle_stream(self, stream: Stream) -> None:
        cfg = self.config
        peer = stream.remote_peer
        per_peer = self._inbound_per_peer.get(peer, 0)
        if self._inbound >= cfg.max_inbound_streams or per_peer >= cfg.max_inbound_streams_per_peer:
            self.counters.streams_refused += 1
            log.debug("refusing a kad stream from %s: too many open", peer)
            stream.reset()
            return
        self._inbound += 1
        self._inbound_per_peer[peer] = per_peer + 1
        try:
            await self._serve(stream)
        except (PeerError, ResourceLimitError) as exc:
            self.counters.requests_refused += 1
            log.debug("kad stream from %s: %r", peer, exc)
            stream.reset()
        except (StreamError, ConnectionClosed, TimeoutError, OSError) as exc:
            log.debug("kad stream from %s ended: %r", peer, exc)
            stream.reset()
        except DhtStoreError as exc:
            # Our database failed (e.g. locked past the busy timeout): not the peer's fault.
            # The peer sees a reset stream and may retry elsewhere; one line, no traceback.
            self.counters.store_errors += 1
            log.warning("kad request from %s not served: %s", peer, exc)
            stream.reset()
        finally:
            self._inbound -= 1
            left = self._inbound_per_peer[peer] - 1
            if left:
                self._inbound_per_peer[peer] = left
            else:
                del self._inbound_per_peer[peer]

    async def _serve(self, stream: Stream) -> None:
        cfg = self.config
        limits = cfg.message_limits
        for _ in range(cfg.max_requests_per_stream):
            async with asyncio.timeout(cfg.stream_idle_timeout):
                raw = await read_length_prefixed(stream, limits.max_message_size)
            if raw is None:
                await stream.close()
                return
            self._rate.check(stream.remote_peer, self._now())
            msg = decode(raw, limits)
            reply = self._handle_message(stream.remote_peer, msg)
            self.counters.requests_served += 1
            if reply is not None:
                await write_length_prefixed(stream, encode(reply))
        raise LimitExceeded(f"more than {cfg.max_requests_per_stream} requests on one stream")

    def _peer_infos(self, peers: Sequence[PeerId]) -> list[PeerInfo]:
        out = []
        for p in peers:
            addrs = self.host.peer_addrs(p)
            if not addrs:
                entry = self.routing_table.get(p)
                addrs = list(entry.addrs) if entry else []
            out.append(PeerInfo(p, tuple(addrs)))
        return out

    def _closer(self, key: bytes, requester: PeerId) -> list[PeerInfo]:
        peers = self.routing_table.closest(kad_key(key), self.config.k, exclude=requester)
        infos = self._peer_infos(peers)
        if key == self.host.peer_id.to_bytes():
            infos.insert(0, PeerInfo(self.host.peer_id, tuple(self.host.listen_addrs())))
        return infos

    def _handle_message(self, sender: PeerId, msg: KadMessage) -> KadMessage | None:
        """Answer one request (``None``: no answer on the wire). Raises ``PeerError``."""
        t = msg.type
        if t is MessageType.FIND_NODE:
            return KadMessage(t, key=msg.key, closer_peers=self._closer(msg.key, sender))
        if t is MessageType.PING:
            return KadMessage(t)
        if t is MessageType.GET_VALUE:
            return self._handle_get_value(sender, msg)
        if t is MessageType.PUT_VALUE:
            return self._handle_put_value(sender, msg)
        if t is MessageType.ADD_PROVIDER:
            self._handle_add_provider(sender, msg)
            return None
        if t is MessageType.GET_PROVIDERS:
            check_provider_key(msg.key)
            # Provider expiry is persisted: wall time (loop time restarts with the machine).
            entries = self.store.get_providers(msg.key, self.wall_clock(), self.config.k)
            providers = [PeerInfo(e.peer, e.addrs) for e in entries if e.peer != self.host.peer_id]
            if self.store.has_own_provide(msg.key):
                me = PeerInfo(self.host.peer_id, tuple(self.host.listen_addrs()))
                providers = [me, *providers[: self.config.k - 1]]
            return KadMessage(
                t, key=msg.key, provider_peers=providers, closer_peers=self._closer(msg.key, sender)
            )
        raise DecodeError(f"unexpected message type {t.name}")  # pragma: no cover

    def _handle_get_value(self, sender: PeerId, msg: KadMessage) -> KadMessage:
        if not msg.key:
            raise DecodeError("GET_VALUE without a key")
        record = None
        held = self.fresh_record(msg.key)
        if held is not None:
            record = KadRecord(msg.key, held[0], held[1])
        return KadMessage(
            MessageType.GET_VALUE,
            key=msg.key,
            record=record,
            closer_peers=self._closer(msg.key, sender),
        )

    def _handle_put_value(self, sender: PeerId, msg: KadMessage) -> KadMessage:
        rec = msg.record
        if rec is None:
            raise DecodeError("PUT_VALUE without a record")
        if rec.key != msg.key:
            raise RecordError("PUT_VALUE record key differs from the message key")
        self.validators.validate(rec.key, rec.value, self.wall_clock())
        held = self.store.get_record(rec.key)
        if (
            held is not None
            and held[0] != rec.value
            and self.validators.select(rec.key, [rec.value, held[0]]) != 0
        ):
            raise RecordError("PUT_VALUE with a record older than the one held")
        wall = self.wall_clock()
        received = format_rfc3339_ns(int(wall * 1e9)).decode()
        # Counted against the sender's quota: one peer cannot fill the store for everyone.
        self.store.put_record(rec.key, rec.value, received, sender=sender, received_at=wall)
        return KadMessage(MessageType.PUT_VALUE, key=msg.key, record=KadRecord(rec.key, rec.value))

    def _handle_add_provider(self, sender: PeerId, msg: KadMessage) -> None:
        check_provider_key(msg.key)
        if not msg.provider_peers:
            raise DecodeError("ADD_PROVIDER without a provider")
        for info in msg.provider_peers:
            if info.peer_id != sender:
                raise ProviderMismatch(f"{sender} tried to add {info.peer_id} as a provider")
        info = msg.provider_peers[0]
        addrs = info.addrs or tuple(self.host.peer_addrs(sender))
        self.store.add_provider(msg.key, sender, addrs, self.wall_clock())

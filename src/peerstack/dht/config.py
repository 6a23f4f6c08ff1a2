"""Configuration of the DHT service (all the knobs in one place, defaults from the spec)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from peerstack.core.multiaddr import Multiaddr
from peerstack.dht.messages import MessageLimits
from peerstack.dht.providers import REPUBLISH_INTERVAL, StoreLimits


class Mode(enum.Enum):
    SERVER = "server"  # answers /ipfs/kad/1.0.0 and may enter other peers' routing tables
    CLIENT = "client"  # only asks: neither advertises nor serves the protocol


@dataclass(slots=True)
class DhtConfig:
    mode: Mode = Mode.SERVER
    k: int = 20
    alpha: int = 10
    beta: int = 3
    # Per-peer request timeout (dial + request + answer) and whole-lookup timeout.
    rpc_timeout: float = 10.0
    query_timeout: float = 120.0
    max_query_peers: int = 1000
    # Routing table diversity: peers per /24 (or /48) per bucket and per table; None lifts.
    max_per_group_bucket: int | None = 2
    max_per_group_table: int | None = 5
    bootstrap_peers: list[Multiaddr] = field(default_factory=list)
    bootstrap_backoff: float = 1.0
    bootstrap_backoff_max: float = 300.0
    refresh_interval: float = 600.0
    republish_interval: float = REPUBLISH_INTERVAL
    # A provide that reached no peer is tried again this much later (at the next upkeep round
    # after it), not a whole republish interval later.
    provide_retry_interval: float = 300.0
    gc_interval: float = 3600.0
    # Value records older than this (by their timeReceived) are no longer handed out.
    max_record_age: float = 36 * 3600.0
    # GET_VALUE: stop once this many peers returned a valid record.
    get_quorum: int = 3
    provider_count: int = 20
    message_limits: MessageLimits = field(default_factory=MessageLimits)
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    # Serving: concurrent inbound streams (all peers / one peer), requests per stream,
    # and how long a stream may sit idle between requests.
    max_inbound_streams: int = 512
    max_inbound_streams_per_peer: int = 16
    max_requests_per_stream: int = 1000
    # Requests one peer may make: a burst, then a steady rate per second.
    peer_request_rate: float = 50.0
    peer_request_burst: float = 200.0
    stream_idle_timeout: float = 60.0
    # Client side: outbound streams kept open for reuse (0: one stream per request).
    max_cached_streams: int = 64
    # Background work (bootstrap retries, bucket refresh, republish, gc). Off for simulations
    # and tests that drive the node by hand.
    background: bool = True
    # On a new connection, probe whether the peer is a DHT server and add it to the table.
    probe_on_connect: bool = True
    # When a bucket is full, check the least recently seen peer before keeping a newcomer.
    check_full_buckets: bool = True
    max_concurrent_checks: int = 8

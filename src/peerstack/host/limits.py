"""Resource limits of a host: connections, handshakes, streams and timeouts.

Every number here bounds something a remote peer can make us hold (a socket, a half-finished
handshake, a stream with its buffers). The defaults suit a desktop node; a server raises them,
a test lowers them to exercise the refusal paths.
"""

from __future__ import annotations

from dataclasses import dataclass

from peerstack.errors import UsageError


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits a ``BasicHost`` and its ``ConnectionManager`` enforce."""

    #: Established plus pending inbound connections.
    max_inbound_connections: int = 256
    #: Established plus pending outbound connections (dials we started).
    max_outbound_connections: int = 256
    #: Inbound connections (established or pending) from one remote IP address.
    max_connections_per_ip: int = 16
    #: At least this many for a loopback address (127.0.0.0/8, ::1; the larger of the two
    #: limits applies): those are local processes (a test's many nodes, tools talking to a
    #: local daemon), still under the inbound limit.
    max_connections_per_loopback_ip: int = 256
    #: Inbound connections still in the security/muxer handshake.
    max_pending_handshakes: int = 64
    #: Streams the peer opened on one connection that are still open.
    max_inbound_streams_per_connection: int = 256
    #: Streams we opened on one connection that are still open.
    max_outbound_streams_per_connection: int = 1024
    #: Seconds for the whole upgrade (multistream + Noise + muxer selection).
    handshake_timeout: float = 15.0
    #: Seconds for protocol negotiation on a new stream.
    stream_negotiation_timeout: float = 10.0
    #: Seconds a connection may stay without any stream before it is closed.
    idle_timeout: float = 120.0
    #: Trimming starts when the number of connections exceeds ``high_water`` ...
    high_water: int = 192
    #: ... and closes idle connections until ``low_water`` are left.
    low_water: int = 160
    #: Seconds between two trimming passes.
    trim_interval: float = 5.0
    #: Seconds to wait for one TCP connect to succeed.
    dial_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in (
            "max_inbound_connections",
            "max_outbound_connections",
            "max_connections_per_ip",
            "max_connections_per_loopback_ip",
            "max_pending_handshakes",
            "max_inbound_streams_per_connection",
            "max_outbound_streams_per_connection",
            "high_water",
            "low_water",
        ):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must not be negative")
        for name in (
            "handshake_timeout",
            "stream_negotiation_timeout",
            "idle_timeout",
            "trim_interval",
            "dial_timeout",
        ):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive")
        if self.low_water > self.high_water:
            raise UsageError("low_water must not exceed high_water")

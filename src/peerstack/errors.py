"""The exception hierarchy.

Two families, kept apart on purpose:

* ``PeerError``: a remote peer sent something wrong (malformed bytes, a bad signature, a
  protocol violation, more than a limit allows). The right reaction is to close that stream or
  connection and penalize the peer; the node keeps serving everyone else.
* ``UsageError``: our own caller misused an API (bad argument, wrong state). That is a bug or a
  user mistake on this side and must never be blamed on a peer.

Everything else that can go wrong at runtime without anyone misbehaving (a peer that cannot be
reached, a resource limit we hit ourselves, a timeout) derives from ``PeerstackError`` directly.
"""

from __future__ import annotations


class PeerstackError(Exception):
    """Base class of every error peerstack raises on purpose."""


class UsageError(PeerstackError, ValueError):
    """The caller used an API wrongly: a bad argument or a call in the wrong state."""


class PeerError(PeerstackError):
    """A remote peer sent bytes or behaved in a way the protocol does not allow."""


class DecodeError(PeerError):
    """Bytes from a peer could not be parsed (varint, protobuf, multiaddr, key, ...)."""


class LimitExceeded(PeerError):
    """A peer tried to make us hold more than a configured limit (size, count, buffer)."""


class HandshakeError(PeerError):
    """The security handshake failed: bad signature, wrong identity, unsupported key."""


class PeerIdMismatch(HandshakeError):
    """We dialled a known PeerId and met a different key."""


class NegotiationError(PeerstackError):
    """multistream-select found no protocol both sides support (not a fault of the peer)."""


class MultistreamError(PeerError):
    """A peer broke the multistream-select protocol."""


class NoiseError(PeerError):
    """A Noise frame could not be decrypted or the handshake was malformed."""


class MuxerError(PeerError):
    """A peer broke the Yamux protocol; the whole connection must close."""


class StreamError(PeerstackError):
    """An operation on a stream failed."""


class StreamReset(StreamError):
    """The stream was reset (by the peer or locally); no more data flows either way."""


class StreamClosed(StreamError):
    """Writing to a stream whose write side is closed, or reading past the end."""


class ConnectionClosed(PeerstackError):
    """The connection under a stream or request closed."""


class DialError(PeerstackError):
    """No address of a peer could be dialled and upgraded."""


class ResourceLimitError(PeerstackError):
    """A local limit (connections, streams, pending dials) refused a new resource."""

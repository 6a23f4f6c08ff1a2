"""The ``/peerstack/`` DHT namespace: small application values, the newest write wins.

``peerstack dht put KEY VALUE`` stores ``VALUE`` under ``/peerstack/KEY``. A DHT refuses keys
without a validator (it would be a free disk for strangers), so every peerstack node registers
this one. The values are not signed, so a record carries its own write time and ``select``
prefers the newest: the stored value is ``u64be(unix time in ns) || bytes``.

Anyone can overwrite a key; use IPNS (``peerstack name publish``) for values only their owner
may change.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from peerstack.dht.records import RecordError, split_key
from peerstack.errors import UsageError

NAMESPACE = "peerstack"
PREFIX = b"/" + NAMESPACE.encode() + b"/"
MAX_VALUE = 4096
MAX_KEY = 256
_STAMP = 8
# How far ahead of our clock a write time may be. Without a bound, a record stamped 2**64-1
# wins ``select`` forever and nobody can ever overwrite the key; a few minutes absorb clock skew.
MAX_FUTURE_SKEW_S = 300.0


def record_key(key: str) -> bytes:
    """The DHT key for a user's ``KEY``: ``/peerstack/KEY`` (``/...`` keys are taken as is)."""
    if not key:
        raise UsageError("a DHT key must not be empty")
    raw = key.encode("utf-8")
    if not key.startswith("/"):
        raw = PREFIX + raw
    if len(raw) > MAX_KEY:
        raise UsageError(f"a DHT key is at most {MAX_KEY} bytes")
    return raw


def encode_value(value: bytes, now_ns: int | None = None) -> bytes:
    if len(value) > MAX_VALUE:
        raise UsageError(f"a /{NAMESPACE}/ value is at most {MAX_VALUE} bytes")
    stamp = time.time_ns() if now_ns is None else now_ns
    return stamp.to_bytes(_STAMP, "big") + value


def decode_value(record: bytes) -> bytes:
    """The application bytes of a stored record (already validated)."""
    return record[_STAMP:]


class AppRecordValidator:
    """Validator for ``/peerstack/``: a size bound and a time stamp not far ahead of ``now``;
    the newest wins."""

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        _, rest = split_key(key)
        if not rest:
            raise RecordError(f"/{NAMESPACE}/ key without a name")
        if not _STAMP <= len(value) <= _STAMP + MAX_VALUE:
            raise RecordError(f"/{NAMESPACE}/ value of {len(value)} bytes out of bounds")
        stamp_ns = int.from_bytes(value[:_STAMP], "big")
        if stamp_ns > int((now + MAX_FUTURE_SKEW_S) * 1_000_000_000):
            raise RecordError(
                f"/{NAMESPACE}/ record stamped {stamp_ns / 1e9 - now:.0f} s in the future"
            )

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        best, best_stamp = 0, -1
        for i, v in enumerate(values):
            stamp = int.from_bytes(v[:_STAMP], "big")
            if stamp > best_stamp:
                best, best_stamp = i, stamp
        return best

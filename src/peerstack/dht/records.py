"""DHT records: validators per namespace, ``/pk/`` and ``/ipns/`` (IPNS V2 signed names).

A record key is ``/<namespace>/<rest>``; the validator registered for the namespace decides
whether a value may be stored or returned (``validate``) and which of several values is the
best (``select``). Keys without a registered namespace are refused: a DHT that stores anything
is a free disk for strangers. Applications add namespaces with ``Validators.register``.

IPNS (ipfs/specs ``ipns/ipns-record.md``): the record is an ``IpnsEntry`` protobuf whose
``data`` field is DAG-CBOR ``{Sequence, TTL, Validity, ValidityType, Value}``, signed with
``signatureV2`` over ``b"ipns-signature:" + data``. The V1 copies in the protobuf, if present,
must equal the signed ones; ``signatureV1`` is never trusted. The highest sequence wins.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import DecodeError as PbDecodeError

from peerstack.core.identity import PrivateKey, PublicKey
from peerstack.core.peer_id import PeerId
from peerstack.dht import cbor
from peerstack.dht.pb import ipns_pb2
from peerstack.errors import DecodeError, PeerError, UsageError

IPNS_MAX_RECORD_SIZE = 10 * 1024
IPNS_SIGNATURE_PREFIX = b"ipns-signature:"
VALIDITY_EOL = 0


class RecordError(PeerError):
    """A record failed validation (bad signature, wrong key, expired, unknown namespace...)."""


class Validator(Protocol):
    def validate(self, key: bytes, value: bytes, now: float) -> None:
        """Raise ``RecordError`` unless ``value`` may be kept under ``key`` at unix ``now``."""
        ...

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """The index of the best of ``values`` (all already validated)."""
        ...


def split_key(key: bytes) -> tuple[str, bytes]:
    """``/ns/rest`` -> ``("ns", rest)``; raises ``RecordError`` for other shapes."""
    if not key.startswith(b"/"):
        raise RecordError("record key does not start with '/'")
    end = key.find(b"/", 1)
    if end <= 1:
        raise RecordError("record key has no namespace")
    try:
        namespace = key[1:end].decode("ascii")
    except UnicodeDecodeError:
        raise RecordError("record namespace is not ASCII") from None
    return namespace, key[end + 1 :]


class Validators:
    """The namespace -> validator registry a DHT uses; ``pk`` and ``ipns`` come built in."""

    def __init__(self, *, defaults: bool = True) -> None:
        self._by_namespace: dict[str, Validator] = {}
        if defaults:
            self.register("pk", PublicKeyValidator())
            self.register("ipns", IpnsValidator())

    def register(self, namespace: str, validator: Validator) -> None:
        if not namespace or "/" in namespace:
            raise UsageError(f"bad namespace {namespace!r}")
        self._by_namespace[namespace] = validator

    def namespaces(self) -> list[str]:
        return sorted(self._by_namespace)

    def _validator(self, key: bytes) -> Validator:
        namespace, _ = split_key(key)
        validator = self._by_namespace.get(namespace)
        if validator is None:
            raise RecordError(f"no validator for namespace {namespace!r}")
        return validator

    def validate(self, key: bytes, value: bytes, now: float | None = None) -> None:
        self._validator(key).validate(key, value, time.time() if now is None else now)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        if not values:
            raise UsageError("select needs at least one value")
        index = self._validator(key).select(key, values)
        if not 0 <= index < len(values):
            raise UsageError(f"validator selected index {index} of {len(values)}")
        return index


# -- /pk/ -----------------------------------------------------------------------------------


def pk_key(peer: PeerId) -> bytes:
    return b"/pk/" + peer.to_bytes()


class PublicKeyValidator:
    """``/pk/<peer id>`` holds the peer's public key; the key must hash to that id."""

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        _, rest = split_key(key)
        try:
            peer = PeerId(rest)
            public_key = PublicKey.from_protobuf(value)
        except DecodeError as exc:
            raise RecordError(f"bad /pk/ record: {exc}") from None
        if not peer.matches(public_key):
            raise RecordError("public key does not match the PeerId in the key")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        return 0  # every valid value is the same key


# -- /ipns/ ---------------------------------------------------------------------------------

_RFC3339 = re.compile(
    rb"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339_ns(text: bytes) -> int:
    """Unix time in nanoseconds of an RFC 3339 timestamp (``DecodeError`` if malformed)."""
    m = _RFC3339.match(text)
    if m is None:
        raise DecodeError("not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = m.group(7) or b""
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60):
            raise ValueError("field out of range")
    except (ValueError, OverflowError):
        raise DecodeError("RFC 3339 timestamp out of range") from None
    tz = m.group(8)
    if tz not in (b"Z", b"z"):
        sign = 1 if tz[:1] == b"+" else -1
        seconds -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return seconds * 1_000_000_000 + int(frac.ljust(9, b"0") or b"0")


def format_rfc3339_ns(unix_ns: int) -> bytes:
    """The form go and js write: ``2006-01-02T15:04:05.000000000Z``."""
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    t = time.gmtime(seconds)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{nanos:09d}Z").encode()


def ipns_key(peer: PeerId) -> bytes:
    return b"/ipns/" + peer.to_bytes()


@dataclass(frozen=True, slots=True)
class IpnsRecord:
    value: bytes
    sequence: int
    validity: bytes
    validity_type: int
    ttl_ns: int
    eol_ns: int
    data: dict[str, cbor.CborValue]


def create_ipns_record(
    key: PrivateKey,
    value: bytes,
    sequence: int,
    eol_ns: int,
    ttl_ns: int = 3_600_000_000_000,
    *,
    v1_fields: bool = True,
) -> bytes:
    """A signed V2 record (with the V1 copies of the fields unless ``v1_fields`` is false).

    No ``signatureV1`` is written: it is deprecated and never used for verification. Keys that
    cannot be inlined in a PeerId (RSA) get ``pubKey`` set.
    """
    if sequence < 0 or ttl_ns < 0:
        raise UsageError("sequence and ttl must not be negative")
    validity = format_rfc3339_ns(eol_ns)
    data = cbor.encode(
        {
            "Value": value,
            "Validity": validity,
            "ValidityType": VALIDITY_EOL,
            "Sequence": sequence,
            "TTL": ttl_ns,
        }
    )
    entry = ipns_pb2.IpnsEntry()
    entry.data = data
    entry.signatureV2 = key.sign(IPNS_SIGNATURE_PREFIX + data)
    if v1_fields:
        entry.value = value
        entry.validity = validity
        entry.validityType = ipns_pb2.IpnsEntry.ValidityType.ValueType(VALIDITY_EOL)
        entry.sequence = sequence
        entry.ttl = ttl_ns
    peer = PeerId.from_public_key(key.public_key)
    if peer.extract_public_key() is None:
        entry.pubKey = key.public_key.to_protobuf()
    raw = entry.SerializeToString()
    if len(raw) > IPNS_MAX_RECORD_SIZE:
        raise UsageError(f"IPNS record of {len(raw)} bytes is over the 10 KiB limit")
    return raw


def _bytes_field(data: dict[str, cbor.CborValue], name: str) -> bytes:
    value = data.get(name)
    if not isinstance(value, bytes):
        raise RecordError(f"IPNS data field {name} missing or not bytes")
    return value


def _int_field(data: dict[str, cbor.CborValue], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RecordError(f"IPNS data field {name} missing or not an unsigned integer")
    return value


def parse_ipns_record(name: PeerId, raw: bytes, now: float) -> IpnsRecord:
    """Verify a record for ``name`` at unix time ``now`` (spec order); ``RecordError`` if bad."""
    if len(raw) > IPNS_MAX_RECORD_SIZE:
        raise RecordError(f"IPNS record of {len(raw)} bytes is over the 10 KiB limit")
    entry = ipns_pb2.IpnsEntry()
    try:
        entry.ParseFromString(raw)
    except (PbDecodeError, RecursionError, ValueError):
        raise RecordError("malformed IpnsEntry") from None
    if not entry.signatureV2 or not entry.data:
        raise RecordError("IPNS record without signatureV2 or data")
    try:
        if entry.HasField("pubKey"):
            public_key = PublicKey.from_protobuf(entry.pubKey)
            if not name.matches(public_key):
                raise RecordError("IPNS pubKey does not match the name")
        else:
            inlined = name.extract_public_key()
            if inlined is None:
                raise RecordError("IPNS name does not inline its key and the record has none")
            public_key = inlined
        decoded = cbor.decode(entry.data)
    except DecodeError as exc:
        raise RecordError(f"bad IPNS record: {exc}") from None
    if not isinstance(decoded, dict):
        raise RecordError("IPNS data is not a map")
    if not public_key.verify(entry.signatureV2, IPNS_SIGNATURE_PREFIX + entry.data):
        raise RecordError("IPNS signatureV2 does not verify")
    value = _bytes_field(decoded, "Value")
    validity = _bytes_field(decoded, "Validity")
    validity_type = _int_field(decoded, "ValidityType")
    sequence = _int_field(decoded, "Sequence")
    ttl = _int_field(decoded, "TTL")
    has_v1 = entry.HasField("signatureV1") or entry.HasField("value")
    if has_v1 and (
        entry.value != value
        or entry.validity != validity
        or entry.validityType != validity_type
        or entry.sequence != sequence
        or entry.ttl != ttl
    ):
        raise RecordError("IPNS V1 fields differ from the signed data")
    if validity_type != VALIDITY_EOL:
        raise RecordError(f"unknown IPNS validity type {validity_type}")
    try:
        eol_ns = parse_rfc3339_ns(validity)
    except DecodeError as exc:
        raise RecordError(f"bad IPNS validity: {exc}") from None
    if eol_ns <= int(now * 1_000_000_000):
        raise RecordError("IPNS record expired")
    return IpnsRecord(value, sequence, validity, validity_type, ttl, eol_ns, decoded)


class IpnsValidator:
    """``/ipns/<peer id>``: V2-signed records; the highest sequence (then latest EOL) wins."""

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        parse_ipns_record(self._name(key), value, now)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        name = self._name(key)
        best = -1
        best_rank: tuple[int, int] = (-1, -1)
        for i, raw in enumerate(values):
            try:
                rec = parse_ipns_record(name, raw, 0.0)
            except RecordError:
                continue
            rank = (rec.sequence, rec.eol_ns)
            if rank > best_rank:
                best, best_rank = i, rank
        return max(best, 0)

    @staticmethod
    def _name(key: bytes) -> PeerId:
        _, rest = split_key(key)
        try:
            return PeerId(rest)
        except DecodeError as exc:
            raise RecordError(f"IPNS key is not a PeerId: {exc}") from None

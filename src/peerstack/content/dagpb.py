"""dag-pb: the IPLD codec of UnixFS, hand-encoded.

``PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }`` is written Links first and Data
last, and ``PBLink { Hash = 1; Name = 2; Tsize = 3; }`` in field order. A generic protobuf encoder
writes Data first and gets every CID wrong, hence this module. The decoder is strict in the way the
IPLD dag-pb spec asks: only the canonical field order, no unknown or repeated fields, every link
has a Hash that is a CID we support. Anything else is a ``MalformedDagPb`` (a ``DecodeError``).
"""

from __future__ import annotations

from dataclasses import dataclass

from peerstack.content import _pb
from peerstack.core.cid import CID
from peerstack.errors import DecodeError, UsageError


class MalformedDagPb(DecodeError):
    """Bytes that are not canonical dag-pb."""


@dataclass(frozen=True, slots=True)
class PBLink:
    hash: CID
    name: str | None = None
    tsize: int | None = None


@dataclass(frozen=True, slots=True)
class PBNode:
    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


def _name_key(link: PBLink) -> bytes:
    return (link.name or "").encode("utf-8")


def sort_links(links: list[PBLink] | tuple[PBLink, ...]) -> list[PBLink]:
    """Links sorted by the bytes of their names (stable), as dag-pb requires of encoders."""
    return sorted(links, key=_name_key)


def encode_link(link: PBLink) -> bytes:
    out = bytearray()
    _pb.put_bytes(out, 1, link.hash.to_bytes())
    if link.name is not None:
        _pb.put_bytes(out, 2, link.name.encode("utf-8"))
    if link.tsize is not None:
        if link.tsize < 0:
            raise UsageError("Tsize must not be negative")
        _pb.put_varint(out, 3, link.tsize)
    return bytes(out)


def encode(node: PBNode) -> bytes:
    """Canonical bytes of ``node``; links must already be sorted by name (see ``sort_links``)."""
    out = bytearray()
    previous = b""
    for i, link in enumerate(node.links):
        name = _name_key(link)
        if i and name < previous:
            raise UsageError("dag-pb links must be sorted by name")
        previous = name
        _pb.put_bytes(out, 2, encode_link(link))
    if node.data is not None:
        _pb.put_bytes(out, 1, node.data)
    return bytes(out)


def _decode_link(data: memoryview) -> PBLink:
    cid: CID | None = None
    name: str | None = None
    tsize: int | None = None
    last = 0
    for field, wt, value in _pb.fields(data):
        if field <= last:
            raise MalformedDagPb("PBLink fields out of order or repeated")
        last = field
        if field == 1:
            cid = CID.from_bytes(_pb.as_bytes(value, wt))
        elif field == 2:
            try:
                name = bytes(_pb.as_bytes(value, wt)).decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedDagPb("PBLink Name is not UTF-8") from None
        elif field == 3:
            tsize = _pb.as_int(value, wt)
            if tsize >= 1 << 63:
                raise MalformedDagPb("PBLink Tsize too large")
        else:
            raise MalformedDagPb(f"unknown PBLink field {field}")
    if cid is None:
        raise MalformedDagPb("PBLink without Hash")
    return PBLink(cid, name, tsize)


def decode(data: bytes | bytearray | memoryview) -> PBNode:
    """Parse canonical dag-pb bytes; raise ``DecodeError`` for anything else."""
    links: list[PBLink] = []
    node_data: bytes | None = None
    seen_data = False
    try:
        for field, wt, value in _pb.fields(data):
            if field == 2:
                if seen_data:
                    raise MalformedDagPb("PBNode Links after Data")
                links.append(_decode_link(_pb.as_bytes(value, wt)))
            elif field == 1:
                if seen_data:
                    raise MalformedDagPb("PBNode with two Data fields")
                seen_data = True
                node_data = bytes(_pb.as_bytes(value, wt))
            else:
                raise MalformedDagPb(f"unknown PBNode field {field}")
    except MalformedDagPb:
        raise
    except DecodeError as exc:
        raise MalformedDagPb(str(exc)) from None
    return PBNode(tuple(links), node_data)

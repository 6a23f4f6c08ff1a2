"""The Bitswap message (spec: ipfs/specs BITSWAP.md), hand-encoded.

    message Message {
      message Wantlist {
        enum WantType { Block = 0; Have = 1; }
        message Entry { bytes block = 1; int32 priority = 2; bool cancel = 3;
                        WantType wantType = 4; bool sendDontHave = 5; }
        repeated Entry entries = 1; bool full = 2;
      }
      message Block { bytes prefix = 1; bytes data = 2; }
      enum BlockPresenceType { Have = 0; DontHave = 1; }
      message BlockPresence { bytes cid = 1; BlockPresenceType type = 2; }
      Wantlist wantlist = 1;
      repeated bytes blocks = 2;            // Bitswap 1.0.0: CIDv0 blocks
      repeated Block payload = 3;           // 1.1.0+
      repeated BlockPresence blockPresences = 4;  // 1.2.0
      int32 pendingBytes = 5;
    }

Decoding enforces the limits a peer could abuse: entries per message, block size, presences.
Wantlist entries whose CID is well formed but names a codec or hash we do not support are not an
error (other implementations may want such blocks from others); they are counted in
``Message.unsupported_wants`` and answered like any block we do not have.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from peerstack.content import _pb
from peerstack.content.chunks import Chunks
from peerstack.core import varint
from peerstack.core.cid import CID, UnsupportedCid
from peerstack.errors import DecodeError, LimitExceeded

MAX_MESSAGE_SIZE = 4 * 1024 * 1024
MAX_BLOCK_SIZE = 2 * 1024 * 1024
MAX_ENTRIES_PER_MESSAGE = 8192
MAX_PRESENCES_PER_MESSAGE = 8192


class WantType(enum.IntEnum):
    BLOCK = 0
    HAVE = 1


class PresenceType(enum.IntEnum):
    HAVE = 0
    DONT_HAVE = 1


@dataclass(frozen=True, slots=True)
class WantEntry:
    cid: CID
    priority: int = 1
    cancel: bool = False
    want_type: WantType = WantType.BLOCK
    send_dont_have: bool = False


@dataclass(frozen=True, slots=True)
class BlockPayload:
    """A block as it travels: the sender's CID prefix and the bytes (not verified yet).

    A decoded block's ``data`` is a view into the received message, or (``decode_pieces``)
    the pieces it arrived in: no copy of up to 2 MiB on the event loop. It keeps the received
    buffers alive while it lives.
    """

    prefix: bytes
    data: bytes | memoryview | Chunks


@dataclass(frozen=True, slots=True)
class Presence:
    cid: CID
    type: PresenceType


@dataclass(slots=True)
class Message:
    wantlist: list[WantEntry] = field(default_factory=list)
    full: bool = False
    blocks: list[bytes | memoryview | Chunks] = field(default_factory=list)  # 1.0.0 form
    payload: list[BlockPayload] = field(default_factory=list)
    presences: list[Presence] = field(default_factory=list)
    pending_bytes: int = 0
    unsupported_wants: int = 0

    def is_empty(self) -> bool:
        return not (self.wantlist or self.full or self.blocks or self.payload or self.presences)

    def encode(self) -> bytes:
        return b"".join(self._parts())

    def encode_framed(self) -> bytes:
        """``uvarint(length) || encode()``, as it goes on a stream, built in one copy.

        Block bytes are the bulk of a message (up to 4 MiB): nesting them field by field and
        then prefixing the length copied each block four times on the event loop.
        """
        parts = self._parts()
        return b"".join([varint.encode(sum(map(len, parts))), *parts])

    def encode_pieces(self, small: int = 64 * 1024) -> list[bytes]:
        """``encode_framed()`` as a list of buffers to write one after another, block bytes
        not copied at all: headers are joined together, each block of at least ``small``
        bytes stays the very object it was given as (and ``stream.write`` takes bytes
        without copying them). Smaller blocks are joined with their headers (fewer frames).
        """
        parts = self._parts()
        out: list[bytes] = []
        pending: list[bytes | bytearray | memoryview] = [varint.encode(sum(map(len, parts)))]
        for part in parts:
            if type(part) is bytes and len(part) >= small:
                out.append(b"".join(pending))
                out.append(part)
                pending = []
            elif part:
                pending.append(part)
        if pending:
            out.append(b"".join(pending))
        return [piece for piece in out if piece]

    def _parts(self) -> list[bytes | bytearray | memoryview]:
        """The encoded message in pieces: small headers built here, block bytes not copied."""
        out: list[bytes | bytearray | memoryview] = []
        head = bytearray()
        if self.wantlist or self.full:
            wl = bytearray()
            for e in self.wantlist:
                entry = bytearray()
                _pb.put_bytes(entry, 1, e.cid.to_bytes())
                if e.priority:
                    _pb.put_int(entry, 2, e.priority)
                if e.cancel:
                    _pb.put_varint(entry, 3, 1)
                if e.want_type != WantType.BLOCK:
                    _pb.put_varint(entry, 4, int(e.want_type))
                if e.send_dont_have:
                    _pb.put_varint(entry, 5, 1)
                _pb.put_bytes(wl, 1, entry)
            if self.full:
                _pb.put_varint(wl, 2, 1)
            _pb.put_bytes(head, 1, wl)
        for data in self.blocks:
            head += _pb.key(2, _pb.LEN)
            head += varint.encode(len(data))
            out.append(head)
            out += _parts_of(data)
            head = bytearray()
        for block in self.payload:
            inner = bytearray()
            _pb.put_bytes(inner, 1, block.prefix)
            inner += _pb.key(2, _pb.LEN)
            inner += varint.encode(len(block.data))
            head += _pb.key(3, _pb.LEN)
            head += varint.encode(len(inner) + len(block.data))
            head += inner
            out.append(head)
            out += _parts_of(block.data)
            head = bytearray()
        for p in self.presences:
            pres = bytearray()
            _pb.put_bytes(pres, 1, p.cid.to_bytes())
            if p.type != PresenceType.HAVE:
                _pb.put_varint(pres, 2, int(p.type))
            _pb.put_bytes(head, 4, pres)
        if self.pending_bytes:
            _pb.put_int(head, 5, self.pending_bytes)
        out.append(head)
        return out


def _parts_of(data: bytes | memoryview | Chunks) -> list[bytes | memoryview]:
    return data.parts if isinstance(data, Chunks) else [data]


def _bool(value: int | memoryview, wt: int) -> bool:
    return _pb.as_int(value, wt) != 0


def _decode_entry(data: memoryview) -> WantEntry | None:
    cid_bytes: bytes | None = None
    priority = 0
    cancel = False
    want_type = WantType.BLOCK
    send_dont_have = False
    for f, wt, value in _pb.fields(data):
        if f == 1:
            cid_bytes = bytes(_pb.as_bytes(value, wt))
        elif f == 2:
            priority = _pb.to_int32(_pb.as_int(value, wt))
        elif f == 3:
            cancel = _bool(value, wt)
        elif f == 4:
            raw = _pb.as_int(value, wt)
            if raw not in (0, 1):
                raise DecodeError(f"unknown want type {raw}")
            want_type = WantType(raw)
        elif f == 5:
            send_dont_have = _bool(value, wt)
    if cid_bytes is None:
        raise DecodeError("wantlist entry without a CID")
    try:
        cid = CID.from_bytes(cid_bytes)
    except UnsupportedCid:
        return None
    return WantEntry(cid, priority, cancel, want_type, send_dont_have)


def _decode_wantlist(data: memoryview, msg: Message) -> None:
    for f, wt, value in _pb.fields(data):
        if f == 1:
            if len(msg.wantlist) + msg.unsupported_wants >= MAX_ENTRIES_PER_MESSAGE:
                raise LimitExceeded(f"more than {MAX_ENTRIES_PER_MESSAGE} wantlist entries")
            entry = _decode_entry(_pb.as_bytes(value, wt))
            if entry is None:
                msg.unsupported_wants += 1
            else:
                msg.wantlist.append(entry)
        elif f == 2:
            msg.full = _bool(value, wt)


def _check_block(size: int) -> None:
    if size > MAX_BLOCK_SIZE:
        raise LimitExceeded(f"block of {size} bytes exceeds {MAX_BLOCK_SIZE}")


# Work worth a trip to a worker thread: more top-level fields than this, or a wantlist this big.
_INLINE_FIELDS = 64
_INLINE_WANTLIST = 16 * 1024


def cheap_to_decode(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``decode(data)`` is quick enough for the event loop, at a glance.

    Decoding costs per field, not per byte (block bytes are not copied): a message of a few
    blocks and presences decodes in microseconds, one of thousands of wants or presences takes
    up to ~190 ms. This looks at no more than the first ``_INLINE_FIELDS`` top-level fields.
    Raises ``DecodeError`` for bytes that are not a protobuf message at all.
    """
    for count, (f, _wt, value) in enumerate(_pb.fields(data)):
        if count >= _INLINE_FIELDS:
            return False
        if f == 1 and isinstance(value, memoryview) and len(value) > _INLINE_WANTLIST:
            return False
    return True


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse one message; ``DecodeError`` / ``LimitExceeded`` for anything a peer got wrong."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise LimitExceeded(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    if isinstance(data, bytearray) or (isinstance(data, memoryview) and not data.readonly):
        data = bytes(data)  # blocks are views into it: it must not change under them
    msg = Message()
    for f, wt, value in _pb.fields(data):
        if f == 1:
            _decode_wantlist(_pb.as_bytes(value, wt), msg)
        elif f == 2:
            block = _pb.as_bytes(value, wt)
            _check_block(len(block))
            msg.blocks.append(block)
        elif f == 3:
            prefix: bytes | None = None
            # proto3 leaves an empty bytes field out: a block with no data field is the empty
            # block (helia sends the 0-byte raw block of an empty file that way).
            payload: bytes | memoryview = b""
            for bf, bwt, bvalue in _pb.fields(_pb.as_bytes(value, wt)):
                if bf == 1:
                    prefix = bytes(_pb.as_bytes(bvalue, bwt))
                elif bf == 2:
                    raw = _pb.as_bytes(bvalue, bwt)
                    _check_block(len(raw))
                    payload = raw
            if prefix is None:
                raise DecodeError("block without a CID prefix")
            msg.payload.append(BlockPayload(prefix, payload))
        elif f == 4:
            if len(msg.presences) >= MAX_PRESENCES_PER_MESSAGE:
                raise LimitExceeded(f"more than {MAX_PRESENCES_PER_MESSAGE} block presences")
            cid_bytes: bytes | None = None
            ptype = PresenceType.HAVE
            for pf, pwt, pvalue in _pb.fields(_pb.as_bytes(value, wt)):
                if pf == 1:
                    cid_bytes = bytes(_pb.as_bytes(pvalue, pwt))
                elif pf == 2:
                    raw_type = _pb.as_int(pvalue, pwt)
                    if raw_type not in (0, 1):
                        raise DecodeError(f"unknown presence type {raw_type}")
                    ptype = PresenceType(raw_type)
            if cid_bytes is None:
                raise DecodeError("block presence without a CID")
            msg.presences.append(Presence(CID.from_bytes(cid_bytes), ptype))
        elif f == 5:
            msg.pending_bytes = max(0, _pb.to_int32(_pb.as_int(value, wt)))
    return msg


# -- a message held as the pieces it arrived in ------------------------------------------------


class _Pieces:
    """Random access into a message held as pieces; only its small parts are ever joined."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.pieces = [p for p in pieces if p]
        self.starts: list[int] = []
        pos = 0
        for piece in self.pieces:
            self.starts.append(pos)
            pos += len(piece)
        self.size = pos

    def views(self, start: int, end: int) -> list[memoryview]:
        out: list[memoryview] = []
        i = bisect.bisect_right(self.starts, start) - 1
        while start < end:
            piece, base = self.pieces[i], self.starts[i]
            stop = min(len(piece), end - base)
            out.append(memoryview(piece)[start - base : stop])
            start = base + stop
            i += 1
        return out

    def take(self, start: int, end: int) -> bytes:
        i = bisect.bisect_right(self.starts, start) - 1
        base = self.starts[i]
        piece = self.pieces[i]
        if end - base <= len(piece):  # the usual case: within one piece
            return piece[start - base : end - base]
        return b"".join(self.views(start, end))

    def data(self, start: int, end: int) -> bytes | memoryview | Chunks:
        views = self.views(start, end)
        if len(views) <= 1:
            return views[0] if views else b""
        return Chunks(views)

    def varint(self, off: int, end: int) -> tuple[int, int]:
        raw = memoryview(self.take(off, min(off + 10, end)))
        value, n = _pb.read_uvarint64(raw, 0)
        return value, off + n

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
        """``(field, wire_type, field_start, value_start, value_end)`` of [start, end); a
        varint value is at [value_start, value_end). The checks of ``_pb.fields``."""
        off = start
        while off < end:
            first = off
            tag, off = self.varint(off, end)
            f, wt = tag >> 3, tag & 7
            if f == 0 or f > (1 << 29) - 1:
                raise DecodeError(f"invalid protobuf field number {f}")
            if wt == _pb.VARINT:
                _, stop = self.varint(off, end)
            elif wt == _pb.LEN:
                length, off = self.varint(off, end)
                if length > end - off:
                    raise DecodeError("protobuf length runs past the end")
                stop = off + length
            elif wt in (_pb.I64, _pb.I32):
                stop = off + (8 if wt == _pb.I64 else 4)
                if stop > end:
                    raise DecodeError("truncated fixed-width field")
            else:
                raise DecodeError(f"unsupported protobuf wire type {wt}")
            yield f, wt, first, off, stop
            off = stop


def pieces_cheap_to_decode(pieces: Sequence[bytes]) -> bool:
    """``cheap_to_decode`` for a message held as pieces."""
    buf = _Pieces(pieces)
    for count, (f, wt, _first, start, end) in enumerate(buf.fields(0, buf.size)):
        if count >= _INLINE_FIELDS:
            return False
        if f == 1 and wt == _pb.LEN and end - start > _INLINE_WANTLIST:
            return False
    return True


def decode_pieces_if_cheap(pieces: Sequence[bytes]) -> Message | None:
    """``decode_pieces``, or None (having done little) when ``pieces_cheap_to_decode`` is
    False: one pass for the event loop, which hands a None to a worker thread."""
    return _decode_pieces(pieces, cheap_only=True)


def decode_pieces(pieces: Sequence[bytes]) -> Message:
    """``decode`` of the message ``b"".join(pieces)``, without joining its block bytes.

    Each block's ``data`` is a view into one piece or a ``Chunks`` of views into several. The
    other fields (wantlist, presences, pending bytes) are copied out and decoded by ``decode``,
    with all its checks. Raises ``DecodeError`` / ``LimitExceeded`` as ``decode`` does (which one,
    when a message has several faults, may differ).
    """
    msg = _decode_pieces(pieces, cheap_only=False)
    assert msg is not None  # only cheap_only gives up
    return msg


def _decode_pieces(pieces: Sequence[bytes], cheap_only: bool) -> Message | None:
    buf = _Pieces(pieces)
    if buf.size > MAX_MESSAGE_SIZE:
        raise LimitExceeded(f"message of {buf.size} bytes exceeds {MAX_MESSAGE_SIZE}")
    rest = bytearray()
    blocks: list[bytes | memoryview | Chunks] = []
    payload: list[BlockPayload] = []
    for count, (f, wt, first, start, end) in enumerate(buf.fields(0, buf.size)):
        if cheap_only and (
            count >= _INLINE_FIELDS or (f == 1 and wt == _pb.LEN and end - start > _INLINE_WANTLIST)
        ):
            return None
        if f == 2 and wt == _pb.LEN:
            _check_block(end - start)
            blocks.append(buf.data(start, end))
        elif f == 3 and wt == _pb.LEN:
            payload.append(_payload_of(buf, start, end))
        else:
            rest += buf.take(first, end)
    msg = decode(bytes(rest))
    msg.blocks = blocks
    msg.payload = payload
    return msg


def _payload_of(buf: _Pieces, start: int, end: int) -> BlockPayload:
    prefix: bytes | None = None
    data: bytes | memoryview | Chunks = b""  # proto3 leaves an empty bytes field out
    for f, wt, _first, vstart, vend in buf.fields(start, end):
        if f in (1, 2) and wt != _pb.LEN:
            raise DecodeError(f"expected a length-delimited field, got wire type {wt}")
        if f == 1:
            prefix = buf.take(vstart, vend)
        elif f == 2:
            _check_block(vend - vstart)
            data = buf.data(vstart, vend)
    if prefix is None:
        raise DecodeError("block without a CID prefix")
    return BlockPayload(prefix, data)

"""multistream-select 1.0 as sans-IO state machines.

Every message is ``uvarint(length) || utf8 text || "\\n"`` where ``length`` counts the newline.
Both sides open with the header ``/multistream/1.0.0``. The initiator proposes protocol ids one
at a time (its first proposal pipelined right after its header); the responder echoes an id it
supports, or answers ``na``. The responder also answers ``ls`` with the list of what it supports.

The machines only ever buffer one incomplete message (bounded by ``MAX_MESSAGE_LENGTH``): every
complete message is handled as soon as it arrives, and everything after the agreeing message is
kept untouched for the next layer (``unused_data``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence

from peerstack.core import varint
from peerstack.errors import DecodeError, MultistreamError, NegotiationError, UsageError

PROTOCOL_ID = "/multistream/1.0.0"
NA = "na"
LS = "ls"

# go and js cap a message at 1024 bytes: we never send more than that, and tolerate a little
# more from a peer (a varint or newline counted differently) so that it still negotiates.
MAX_SEND_LENGTH = 1024
MAX_MESSAGE_LENGTH = MAX_SEND_LENGTH + 64
# Proposals (and ``ls`` requests) we answer, or ``na`` answers we accept, per negotiation.
MAX_PROPOSALS = 32

# Two varint bytes already encode up to 16383, far above MAX_MESSAGE_LENGTH: an incomplete
# length prefix longer than this is an over-long message, refused without waiting for more.
_MAX_LENGTH_PREFIX = 2


def encode_message(text: str) -> bytes:
    """Frame one multistream message (``text`` without its newline)."""
    body = text.encode() + b"\n"
    return varint.encode(len(body)) + body


_HEADER = encode_message(PROTOCOL_ID)
_NA_MESSAGE = encode_message(NA)
# Our own protocol ids, checked and framed once (bounded: hosts propose a handful of ids).
_OWN_CACHE_SIZE = 512


def encode_ls_response(protocols: Sequence[str]) -> bytes:
    """The answer to ``ls``: one message whose body is varint-prefixed ``proto\\n`` entries
    followed by a final ``\\n``."""
    inner = b"".join(encode_message(p) for p in protocols) + b"\n"
    return varint.encode(len(inner)) + inner


def _check_own_protocol(proto: str) -> None:
    """Refuse an id of our own that we could not send or that a peer would refuse."""
    if not isinstance(proto, str) or not proto:
        raise UsageError("a protocol id must be a non-empty string")
    if "\n" in proto:
        raise UsageError(f"protocol id {proto!r} contains a newline")
    if len(proto.encode()) + 1 > MAX_SEND_LENGTH:
        raise UsageError(f"protocol id {proto[:40]!r}... is too long")


@functools.lru_cache(maxsize=_OWN_CACHE_SIZE)
def _own_message(proto: str) -> bytes:
    """One of our protocol ids, checked and framed (memoized; refusals are not cached)."""
    _check_own_protocol(proto)
    return encode_message(proto)


class ProtocolSet:
    """The protocol ids a ``Responder`` accepts, checked, indexed and listed once.

    A host answers every inbound stream from the same handlers: it keeps one of these and
    makes a new one when its handlers change, instead of checking and indexing them per stream.
    """

    __slots__ = ("_ids", "_listing")

    def __init__(self, protocols: Collection[str]) -> None:
        if isinstance(protocols, str):
            raise UsageError("pass a collection of protocol ids, not one string")
        ids = frozenset(protocols)
        for proto in ids:
            _check_own_protocol(proto)
        self._ids = ids
        self._listing = sorted(ids)

    def __contains__(self, proto: object) -> bool:
        return proto in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def listing(self) -> list[str]:
        """The ids in the order ``ls`` lists them."""
        return list(self._listing)


class _MessageReader:
    """Splits incoming bytes into multistream messages, buffering at most one partial one."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_message(self) -> str | None:
        """Return the next complete message without its newline, or ``None`` if incomplete."""
        buf = self._buf
        if not buf:
            return None
        try:
            length, start = varint.try_decode(buf, 0)
        except DecodeError as exc:
            raise MultistreamError(f"bad message length: {exc}") from None
        if start < 0:
            if len(buf) >= _MAX_LENGTH_PREFIX:
                raise MultistreamError("message length prefix too long")
            return None
        if length > MAX_MESSAGE_LENGTH:
            raise MultistreamError(f"message of {length} bytes exceeds {MAX_MESSAGE_LENGTH}")
        end = start + length
        if len(buf) < end:
            return None
        body = bytes(buf[start:end])
        del buf[:end]
        if not body.endswith(b"\n"):
            raise MultistreamError("message does not end with a newline")
        try:
            text = body[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise MultistreamError("message is not valid UTF-8") from None
        if not text:
            raise MultistreamError("empty message")
        return text

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


class _Negotiator:
    """What both roles share: output buffer, input framing, the result and leftover bytes."""

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._reader = _MessageReader()
        self._got_header = False
        self._protocol: str | None = None
        self._unused = b""
        self._failed = False

    def data_to_send(self) -> bytes:
        """Drain and return the bytes that should be written to the peer."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def done(self) -> bool:
        return self._protocol is not None

    @property
    def protocol(self) -> str | None:
        """The agreed protocol id, once ``done``."""
        return self._protocol

    def unused_data(self) -> bytes:
        """Bytes received after the agreeing message; they belong to the next layer."""
        if self._protocol is None:
            raise UsageError("negotiation is not done")
        rest, self._unused = self._unused, b""
        return rest

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; raises ``MultistreamError`` on a protocol violation."""
        if self._failed:
            raise UsageError("negotiation already failed")
        if self._protocol is not None:
            raise UsageError("negotiation is done; pass further bytes to the next layer")
        self._reader.feed(data)
        try:
            while self._protocol is None:
                text = self._reader.next_message()
                if text is None:
                    return
                if not self._got_header:
                    if text != PROTOCOL_ID:
                        raise MultistreamError(f"unexpected header {text[:64]!r}")
                    self._got_header = True
                else:
                    self._handle(text)
            self._unused = self._reader.take_rest()
        except (MultistreamError, NegotiationError):
            self._failed = True
            raise

    def _handle(self, text: str) -> None:
        raise NotImplementedError


class Initiator(_Negotiator):
    """The dialling side: proposes ``protocols`` in order of preference until one is accepted.

    Raises ``NegotiationError`` from ``receive_data`` when the peer answered ``na`` to all.
    """

    def __init__(self, protocols: Sequence[str]) -> None:
        super().__init__()
        if isinstance(protocols, str):
            raise UsageError("pass a sequence of protocol ids, not one string")
        self._proposals = list(protocols)
        if not self._proposals:
            raise UsageError("at least one protocol must be proposed")
        if len(self._proposals) > MAX_PROPOSALS:
            raise UsageError(f"at most {MAX_PROPOSALS} protocols can be proposed")
        framed = [_own_message(proto) for proto in self._proposals]
        self._framed = framed
        self._index = 0
        # The header and the first proposal travel together: one round trip in the usual case.
        self._out.append(_HEADER + framed[0])

    @property
    def proposed(self) -> str:
        """The protocol id currently awaiting an answer."""
        return self._proposals[self._index]

    def _handle(self, text: str) -> None:
        current = self._proposals[self._index]
        if text == current:
            self._protocol = current
        elif text == NA:
            self._index += 1
            if self._index >= len(self._proposals):
                raise NegotiationError(f"peer supports none of {', '.join(self._proposals)}")
            self._out.append(self._framed[self._index])
        else:
            raise MultistreamError(f"unexpected answer {text[:64]!r} to {current!r}")


class Responder(_Negotiator):
    """The listening side: accepts the first proposal it supports, answers ``na`` otherwise.

    ``supported`` is a ``ProtocolSet``, a collection of protocol ids, or a predicate; with a
    predicate, ``ls`` is answered with an empty list.
    """

    def __init__(self, supported: ProtocolSet | Collection[str] | Callable[[str], bool]) -> None:
        super().__init__()
        if isinstance(supported, str):
            raise UsageError("pass a collection of protocol ids, not one string")
        self._listing: list[str]
        if isinstance(supported, ProtocolSet):
            self._accepts: Callable[[str], bool] = supported._ids.__contains__
            self._listing = supported._listing
        elif callable(supported):
            self._accepts = supported
            self._listing = []
        else:
            protocols = ProtocolSet(supported)
            self._accepts = protocols._ids.__contains__
            self._listing = protocols._listing
        self._requests = 0
        self._out.append(_HEADER)

    def _handle(self, text: str) -> None:
        self._requests += 1
        if self._requests > MAX_PROPOSALS:
            raise MultistreamError(f"more than {MAX_PROPOSALS} proposals")
        if text == LS:
            self._out.append(encode_ls_response(self._listing))
        elif text != NA and self._accepts(text):
            self._out.append(encode_message(text))
            self._protocol = text
        else:
            self._out.append(_NA_MESSAGE)

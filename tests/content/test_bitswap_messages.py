"""Bitswap messages: round trips, known bytes, limits, and fuzzing."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.content import _pb, chunks
from peerstack.content.bitswap import messages as m
from peerstack.content.bitswap.messages import (
    BlockPayload,
    Message,
    Presence,
    PresenceType,
    WantEntry,
    WantType,
)
from peerstack.content.chunks import Chunks, as_bytes
from peerstack.core import varint
from peerstack.core.cid import CID, DAG_PB, RAW
from peerstack.errors import DecodeError, LimitExceeded, PeerError

A = CID.hash_of(b"a")
B = CID.hash_of(b"b", DAG_PB, 0)


def test_round_trip_all_fields() -> None:
    msg = Message(
        wantlist=[
            WantEntry(A, 5, False, WantType.HAVE, True),
            WantEntry(B, -3, True),
        ],
        full=True,
        blocks=[b"old style"],
        payload=[BlockPayload(A.prefix(), b"a")],
        presences=[Presence(A, PresenceType.HAVE), Presence(B, PresenceType.DONT_HAVE)],
        pending_bytes=1234,
    )
    back = m.decode(msg.encode())
    assert back == msg


def test_known_encoding_of_a_want_have() -> None:
    raw = Message([WantEntry(A, 1, False, WantType.HAVE, True)]).encode()
    entry = b"\x0a" + bytes([len(A.to_bytes())]) + A.to_bytes() + b"\x10\x01\x20\x01\x28\x01"
    assert raw == b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry


def test_unsupported_cids_in_wants_are_counted_not_fatal() -> None:
    odd = b"\x01\xa9\x02\x12\x20" + bytes(32)  # dag-json (0x0129)
    entry = b"\x0a" + bytes([len(odd)]) + odd
    wl = b"\x0a" + bytes([len(entry)]) + entry
    msg = m.decode(b"\x0a" + bytes([len(wl)]) + wl)
    assert msg.wantlist == []
    assert msg.unsupported_wants == 1


def test_limits() -> None:
    big = Message(payload=[BlockPayload(A.prefix(), bytes(m.MAX_BLOCK_SIZE + 1))]).encode()
    with pytest.raises(LimitExceeded):
        m.decode(big)
    too_many = Message([WantEntry(A)] * (m.MAX_ENTRIES_PER_MESSAGE + 1)).encode()
    with pytest.raises(LimitExceeded):
        m.decode(too_many)
    with pytest.raises(LimitExceeded):
        m.decode(bytes(m.MAX_MESSAGE_SIZE + 1))


@pytest.mark.parametrize(
    "bad",
    [
        b"\x1a\x02\x12\x00",  # block without a prefix
        b"\x22\x02\x10\x00",  # presence without a CID
        b"\x22\x03\x10\x05\x00",  # unknown presence type (and no CID)
        b"\x0a\x02\x0a\x00",  # want entry without a CID
        b"\x0a\x04\x0a\x02\x20\x07",  # unknown want type
    ],
)
def test_malformed(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        m.decode(bad)


def test_block_without_data_field_is_the_empty_block() -> None:
    # proto3 omits empty bytes: helia sends the 0-byte raw block (an empty file) like this.
    prefix = CID.hash_of(b"").prefix()
    msg = m.decode(b"\x1a" + bytes([len(prefix) + 2, 0x0A, len(prefix)]) + prefix)
    assert msg.payload == [m.BlockPayload(prefix, b"")]


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_decode_never_crashes(data: bytes) -> None:
    try:
        msg = m.decode(data)
    except DecodeError:
        return
    assert isinstance(msg, Message)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([A, B]),
            st.integers(-(2**31), 2**31 - 1),
            st.booleans(),
            st.sampled_from(list(WantType)),
            st.booleans(),
        ),
        max_size=6,
    ),
    st.lists(st.binary(max_size=50), max_size=3),
    st.lists(st.tuples(st.sampled_from([A, B]), st.sampled_from(list(PresenceType))), max_size=4),
)
def test_round_trip_property(
    wants: list[tuple[CID, int, bool, WantType, bool]],
    blocks: list[bytes],
    presences: list[tuple[CID, PresenceType]],
) -> None:
    msg = Message(
        wantlist=[WantEntry(*w) for w in wants],
        payload=[BlockPayload(CID.hash_of(b, RAW).prefix(), b) for b in blocks],
        presences=[Presence(*p) for p in presences],
    )
    assert m.decode(msg.encode()) == msg
    framed = msg.encode_framed()
    length, start = varint.decode(framed, 0)
    assert framed[start:] == msg.encode()
    assert length == len(framed) - start


@given(st.lists(st.binary(max_size=300), max_size=3), st.lists(st.binary(max_size=300), max_size=3))
def test_block_fields_encode_as_protobuf_does(old_form: list[bytes], blocks: list[bytes]) -> None:
    # Built by hand, field by field (protobuf's nesting), for the encoder that avoids copies.
    expected = bytearray()
    for data in old_form:
        _pb.put_bytes(expected, 2, data)
    for data in blocks:
        inner = bytearray()
        _pb.put_bytes(inner, 1, CID.hash_of(data, RAW).prefix())
        _pb.put_bytes(inner, 2, data)
        _pb.put_bytes(expected, 3, inner)
    msg = Message(
        blocks=list(old_form),
        payload=[BlockPayload(CID.hash_of(b, RAW).prefix(), b) for b in blocks],
    )
    assert msg.encode() == bytes(expected)
    assert m.decode(msg.encode_framed()[len(varint.encode(len(expected))) :]) == msg


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 3 * 64 * 1024), max_size=4),
    st.integers(0, 3),
    st.integers(1, 128 * 1024),
)
def test_encode_pieces_is_encode_framed_without_copying_big_blocks(
    sizes: list[int], n_presences: int, small: int
) -> None:
    blocks = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    msg = Message(
        [WantEntry(A, 3, False, WantType.HAVE, True)],
        payload=[BlockPayload(A.prefix(), b) for b in blocks],
        presences=[Presence(A, PresenceType.DONT_HAVE)] * n_presences,
    )
    pieces = msg.encode_pieces(small)
    assert b"".join(pieces) == msg.encode_framed()
    assert all(pieces)
    for block in blocks:
        if len(block) >= small:
            assert any(piece is block for piece in pieces)


# -- a message decoded from the pieces it arrived in -------------------------------------------


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _outcome(fn: object, arg: object) -> Message | type[Exception]:
    try:
        return fn(arg)  # type: ignore[operator,no-any-return]
    except (DecodeError, LimitExceeded):
        return PeerError


@settings(max_examples=400)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_decode_pieces_is_decode_of_the_joined_bytes(data: bytes, cuts: list[int]) -> None:
    assert _outcome(m.decode_pieces, _cut(data, cuts)) == _outcome(m.decode, data)


@settings(max_examples=200)
@given(
    st.lists(st.binary(max_size=3000), max_size=3),
    st.lists(st.binary(max_size=3000), max_size=2),
    st.lists(st.integers(0, 10_000), max_size=8),
    st.booleans(),
)
def test_decode_pieces_keeps_block_bytes_as_pieces(
    blocks: list[bytes], old_form: list[bytes], cuts: list[int], wants: bool
) -> None:
    msg = Message(
        wantlist=[WantEntry(A, 3), WantEntry(B, cancel=True)] if wants else [],
        blocks=list(old_form),
        payload=[BlockPayload(CID.hash_of(b, RAW).prefix(), b) for b in blocks],
        presences=[Presence(B, PresenceType.DONT_HAVE)],
        pending_bytes=7,
    )
    data = msg.encode()
    pieces = _cut(data, cuts)
    back = m.decode_pieces(pieces)
    assert back == msg
    assert [bytes(as_bytes(p.data)) for p in back.payload] == blocks
    for got in [*back.blocks, *(p.data for p in back.payload)]:
        assert isinstance(got, (bytes, memoryview, Chunks))
        if isinstance(got, Chunks):
            assert len(got.parts) > 1  # spans pieces, never joined
    assert m.pieces_cheap_to_decode(pieces)


def test_many_fields_are_not_cheap_to_decode() -> None:
    many = Message(presences=[Presence(A, PresenceType.HAVE)] * 100).encode()
    assert not m.cheap_to_decode(many)
    assert not m.pieces_cheap_to_decode(_cut(many, [1000, 2000]))
    wants = Message(wantlist=[WantEntry(CID.hash_of(i.to_bytes(2, "big"))) for i in range(500)])
    wants_bytes = wants.encode()
    assert len(wants_bytes) > 16 * 1024  # one field, but a big wantlist
    assert not m.cheap_to_decode(wants_bytes)
    assert not m.pieces_cheap_to_decode(_cut(wants_bytes, [5, 9000]))
    one_block = Message(payload=[BlockPayload(A.prefix(), bytes(500_000))]).encode()
    assert m.cheap_to_decode(one_block)
    assert m.pieces_cheap_to_decode(_cut(one_block, [65519, 2 * 65519]))


@pytest.mark.parametrize("step", [1, 3, 7, 10_000])
def test_chunk_writes_survive_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    real_writev, real_pwritev = os.writev, os.pwritev

    def short(buffers: list[memoryview]) -> list[bytes]:  # at most ``step`` bytes per call
        return [b"".join(bytes(b) for b in buffers)[:step]]

    monkeypatch.setattr(os, "writev", lambda fd, bufs: real_writev(fd, short(bufs)))
    monkeypatch.setattr(os, "pwritev", lambda fd, bufs, off: real_pwritev(fd, short(bufs), off))
    data = Chunks([b"abc", memoryview(b"defgh")[1:], b"", b"ijklmnopq"])
    assert data.tobytes() == b"abcefghijklmnopq"
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        chunks.write_all(fd, data)
        chunks.pwrite_all(fd, data, 20)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abcefghijklmnopq" + bytes(4) + b"abcefghijklmnopq"
    assert chunks.sha256(data) == hashlib.sha256(data.tobytes()).digest()


@settings(max_examples=200)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_decode_pieces_if_cheap_decodes_or_defers(data: bytes, cuts: list[int]) -> None:
    pieces = _cut(data, cuts)
    got = _outcome(m.decode_pieces_if_cheap, pieces)
    if got is None:  # deferred to a worker thread: only when it would be costly
        assert not m.pieces_cheap_to_decode(pieces)
    elif got is not PeerError:
        assert got == m.decode(data)

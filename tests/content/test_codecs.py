"""dag-pb and UnixFS: canonical bytes out, strict parsing in, typed errors for garbage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.content import dagpb, unixfs
from peerstack.content.dagpb import MalformedDagPb, PBLink, PBNode
from peerstack.content.unixfs import DataType, UnixFSData, UnixTime
from peerstack.core.cid import CID
from peerstack.errors import DecodeError, UsageError

CID_A = CID.hash_of(b"a")
CID_B = CID.hash_of(b"b")


def test_links_are_written_before_data() -> None:
    node = PBNode((PBLink(CID_A, "", 1),), b"\x08\x02")
    out = dagpb.encode(node)
    assert out[0] == 0x12  # field 2 (Links), length-delimited
    assert out.endswith(b"\x0a\x02\x08\x02")  # field 1 (Data) last
    assert dagpb.decode(out) == node


def test_empty_name_is_kept_and_absent_name_is_not() -> None:
    with_name = dagpb.encode_link(PBLink(CID_A, "", 5))
    without = dagpb.encode_link(PBLink(CID_A, None, 5))
    assert len(with_name) == len(without) + 2
    assert dagpb.decode(dagpb.encode(PBNode((PBLink(CID_A, None, None),)))).links[0].name is None


def test_the_empty_file_node_has_the_known_cid() -> None:
    data = UnixFSData(DataType.FILE).encode()
    assert data == b"\x08\x02\x18\x00"
    block = dagpb.encode(PBNode((), data))
    assert str(CID.hash_of(block, 0x70, 0)) == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"


def test_encoder_requires_sorted_links() -> None:
    with pytest.raises(UsageError):
        dagpb.encode(PBNode((PBLink(CID_A, "b"), PBLink(CID_B, "a"))))
    links = dagpb.sort_links([PBLink(CID_A, "b"), PBLink(CID_B, "B"), PBLink(CID_B, "a")])
    assert [link.name for link in links] == ["B", "a", "b"]


@pytest.mark.parametrize(
    "bad",
    [
        b"\x0a\x00\x12\x00",  # Data before Links
        b"\x0a\x00\x0a\x00",  # two Data fields
        b"\x1a\x00",  # unknown field 3
        b"\x12\x00",  # link without Hash
        b"\x12\x04\x12\x00\x0a\x00",  # link fields out of order
        b"\x08\x01",  # Data with a varint wire type
        b"\x12\x05\x0a\x03abc",  # Hash that is no CID
        b"\x12\x80",  # truncated length
        b"\x12\x05\x0a\x00",  # length past the end
    ],
)
def test_non_canonical_dag_pb_is_refused(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        dagpb.decode(bad)


def test_unixfs_round_trip_with_all_fields() -> None:
    data = UnixFSData(
        DataType.FILE,
        b"xyz",
        None,
        (10, 20),
        hash_type=0x22,
        fanout=256,
        mode=0o755,
        mtime=UnixTime(-5, 7),
    )
    back = unixfs.decode(data.encode())
    assert back.type == DataType.FILE
    assert back.data == b"xyz"
    assert back.blocksizes == (10, 20)
    assert back.filesize == 33
    assert back.mode == 0o755
    assert back.mtime == UnixTime(-5, 7)
    assert back.hash_type == 0x22
    assert back.fanout == 256


def test_unixfs_directory_has_no_filesize() -> None:
    assert UnixFSData(DataType.DIRECTORY).encode() == b"\x08\x01"


def test_unixfs_packed_blocksizes_are_accepted() -> None:
    assert unixfs.decode(b"\x08\x02\x22\x02\x05\x06").blocksizes == (5, 6)


@pytest.mark.parametrize("bad", [b"", b"\x08\x09", b"\x10\x01", b"\x08\x02\x42\x00", b"\x08"])
def test_bad_unixfs_is_refused(bad: bytes) -> None:
    with pytest.raises(unixfs.MalformedUnixFS):
        unixfs.decode(bad)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_dagpb_decode_never_crashes(data: bytes) -> None:
    try:
        node = dagpb.decode(data)
    except DecodeError:
        return
    # whatever parses strictly re-encodes to the same bytes when its links are sorted
    if list(node.links) == dagpb.sort_links(node.links):
        assert dagpb.encode(node) == data


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_unixfs_decode_never_crashes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        unixfs.decode(data)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([CID_A, CID_B]),
            st.none() | st.text(max_size=8),
            st.none() | st.integers(0, 2**40),
        ),
        max_size=5,
    ),
    st.none() | st.binary(max_size=20),
)
def test_dagpb_round_trip(
    links: list[tuple[CID, str | None, int | None]], data: bytes | None
) -> None:
    node = PBNode(tuple(dagpb.sort_links([PBLink(*link) for link in links])), data)
    assert dagpb.decode(dagpb.encode(node)) == node
    assert isinstance(MalformedDagPb("x"), DecodeError)

"""multistream-select 1.0: framing, negotiation in memory, limits, and fuzzing of both roles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.core import varint
from peerstack.errors import MultistreamError, NegotiationError, PeerError, UsageError
from peerstack.wire.multistream import (
    MAX_MESSAGE_LENGTH,
    MAX_PROPOSALS,
    PROTOCOL_ID,
    Initiator,
    Responder,
    encode_ls_response,
    encode_message,
)

HEADER = b"\x13/multistream/1.0.0\n"


def shuttle(init: Initiator, resp: Responder, chunk: int | None = None) -> None:
    """Move bytes both ways until neither side has anything to send."""
    for _ in range(100):
        a = init.data_to_send()
        b = resp.data_to_send()
        if not a and not b:
            return
        for src, dst in ((a, resp), (b, init)):
            if not src or dst.done:
                continue
            step = chunk or len(src)
            for i in range(0, len(src), step):
                dst.receive_data(src[i : i + step])
    raise AssertionError("negotiation did not settle")


def test_message_framing_matches_spec() -> None:
    assert encode_message(PROTOCOL_ID) == HEADER
    assert encode_message("na") == b"\x03na\n"
    assert encode_message("/noise") == b"\x07/noise\n"


def test_initiator_pipelines_header_and_first_proposal() -> None:
    init = Initiator(["/noise", "/tls/1.0.0"])
    assert init.data_to_send() == HEADER + b"\x07/noise\n"
    assert init.data_to_send() == b""


def test_negotiation_first_choice() -> None:
    init = Initiator(["/yamux/1.0.0"])
    resp = Responder({"/yamux/1.0.0", "/mplex/6.7.0"})
    shuttle(init, resp)
    assert init.done
    assert resp.done
    assert init.protocol == resp.protocol == "/yamux/1.0.0"
    assert init.unused_data() == b""
    assert resp.unused_data() == b""


def test_negotiation_falls_back_after_na() -> None:
    init = Initiator(["/a", "/b", "/c"])
    resp = Responder(lambda p: p == "/c")
    shuttle(init, resp, chunk=1)
    assert init.protocol == resp.protocol == "/c"


def test_all_refused_raises_negotiation_error() -> None:
    init = Initiator(["/a", "/b"])
    resp = Responder(["/z"])
    with pytest.raises(NegotiationError):
        shuttle(init, resp)
    assert not init.done
    with pytest.raises(UsageError):
        init.receive_data(b"x")


def test_responder_parses_pipelined_header_proposal_and_next_layer_bytes() -> None:
    resp = Responder(["/noise"])
    resp.receive_data(HEADER + encode_message("/noise") + b"\x00\x20noise-msg1")
    assert resp.done
    assert resp.protocol == "/noise"
    assert resp.data_to_send() == HEADER + encode_message("/noise")
    assert resp.unused_data() == b"\x00\x20noise-msg1"
    assert resp.unused_data() == b""


def test_initiator_keeps_bytes_after_the_agreeing_answer() -> None:
    init = Initiator(["/ipfs/ping/1.0.0"])
    init.data_to_send()
    init.receive_data(HEADER + encode_message("/ipfs/ping/1.0.0") + b"pong-bytes")
    assert init.protocol == "/ipfs/ping/1.0.0"
    assert init.unused_data() == b"pong-bytes"


def test_responder_answers_na_then_accepts() -> None:
    resp = Responder(["/b"])
    resp.receive_data(HEADER + encode_message("/a"))
    assert resp.data_to_send() == HEADER + encode_message("na")
    assert not resp.done
    resp.receive_data(encode_message("/b"))
    assert resp.data_to_send() == encode_message("/b")
    assert resp.protocol == "/b"


def test_ls_lists_supported_protocols() -> None:
    resp = Responder(["/b", "/a"])
    resp.data_to_send()
    resp.receive_data(HEADER + encode_message("ls"))
    out = resp.data_to_send()
    assert out == encode_ls_response(["/a", "/b"])
    # Decode by hand: one outer message of varint-prefixed "proto\n" entries and a final "\n".
    length, i = varint.decode(out)
    body = out[i:]
    assert len(body) == length
    assert body.endswith(b"\n")
    entries = []
    j = 0
    while j < len(body) - 1:
        n, j = varint.decode(body, j)
        entries.append(body[j : j + n])
        j += n
    assert entries == [b"/a\n", b"/b\n"]
    assert not resp.done


def test_ls_with_predicate_is_empty_list() -> None:
    resp = Responder(lambda p: True)
    resp.data_to_send()
    resp.receive_data(HEADER + encode_message("ls"))
    assert resp.data_to_send() == b"\x01\n"


def test_wrong_header_is_refused() -> None:
    resp = Responder(["/a"])
    with pytest.raises(MultistreamError):
        resp.receive_data(encode_message("/multistream/2.0.0"))
    init = Initiator(["/a"])
    with pytest.raises(MultistreamError):
        init.receive_data(encode_message("/a"))


def test_unexpected_answer_is_refused() -> None:
    init = Initiator(["/a"])
    with pytest.raises(MultistreamError):
        init.receive_data(HEADER + encode_message("/b"))


@pytest.mark.parametrize(
    "bad",
    [
        b"\x03nax",  # no newline at the end
        b"\x02n\x00",  # no newline at the end
        b"\x01\n",  # empty protocol id
        b"\x03\xff\xfe\n",  # not UTF-8
        b"\xff\xff\xff",  # length prefix too long
        b"\x80\x00",  # non-minimal varint
        varint.encode(MAX_MESSAGE_LENGTH + 1),  # too long, refused before the body arrives
    ],
)
def test_malformed_messages(bad: bytes) -> None:
    resp = Responder(["/a"])
    with pytest.raises(MultistreamError):
        resp.receive_data(HEADER + bad)


def test_message_of_1024_bytes_is_accepted() -> None:
    proto = "/" + "x" * 1022  # 1023 bytes + newline = 1024
    resp = Responder([proto])
    resp.receive_data(HEADER + encode_message(proto))
    assert resp.protocol == proto


def test_too_many_proposals() -> None:
    resp = Responder(["/never"])
    resp.receive_data(HEADER)
    for i in range(MAX_PROPOSALS):
        resp.receive_data(encode_message(f"/p{i}"))
    with pytest.raises(MultistreamError):
        resp.receive_data(encode_message("/one-more"))


def test_own_protocol_ids_are_checked() -> None:
    for bad in ([], [""], ["a\nb"], ["/" + "x" * 2000]):
        with pytest.raises(UsageError):
            Initiator(bad)
    with pytest.raises(UsageError):
        Initiator("/noise")
    with pytest.raises(UsageError):
        Initiator([f"/p{i}" for i in range(MAX_PROPOSALS + 1)])
    with pytest.raises(UsageError):
        Responder([""])
    with pytest.raises(UsageError):
        Initiator(["/a"]).unused_data()


def test_receive_after_done_is_usage_error() -> None:
    resp = Responder(["/a"])
    resp.receive_data(HEADER + encode_message("/a"))
    with pytest.raises(UsageError):
        resp.receive_data(b"more")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_fuzz_responder(chunks: list[bytes], with_header: bool) -> None:
    resp = Responder(["/a", "/b"])
    if with_header:
        chunks = [HEADER, *chunks]
    try:
        for c in chunks:
            if resp.done:
                break
            resp.receive_data(c)
            assert len(resp._reader._buf) <= MAX_MESSAGE_LENGTH + 2
    except PeerError:
        return
    assert resp.done or len(resp._reader._buf) <= MAX_MESSAGE_LENGTH + 2


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from(["/a", "/b", "na", "ls", "/zz"]).map(encode_message),
        ),
        max_size=8,
    )
)
def test_fuzz_initiator(chunks: list[bytes]) -> None:
    init = Initiator(["/x", "/a", "/b"])
    chunks = [HEADER, *chunks]
    try:
        for c in chunks:
            if init.done:
                break
            init.receive_data(c)
            assert len(init._reader._buf) <= MAX_MESSAGE_LENGTH + 2
    except (PeerError, NegotiationError):
        return
    if init.done:
        assert init.protocol in ("/x", "/a", "/b")


def test_we_send_at_most_1024_bytes_but_tolerate_a_little_more() -> None:
    Initiator(["/" + "x" * 1022])  # 1023 bytes + newline: the most we send
    with pytest.raises(UsageError):
        Initiator(["/" + "x" * 1023])
    proto = "/" + "y" * 1040
    resp = Responder(lambda p: p == proto)
    resp.receive_data(HEADER + encode_message(proto))
    assert resp.protocol == proto

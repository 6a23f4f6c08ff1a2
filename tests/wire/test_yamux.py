"""Yamux: frame bytes against the spec, two sessions in memory, limits, timers, and fuzzing."""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections import defaultdict
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstack.errors import (
    ConnectionClosed,
    MuxerError,
    PeerError,
    ResourceLimitError,
    StreamClosed,
    UsageError,
)
from peerstack.errors import StreamReset as StreamResetError
from peerstack.wire.yamux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GOAWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    DataReceived,
    Event,
    GoAwayReceived,
    KeepaliveTimeout,
    PongReceived,
    SendWindowUpdated,
    SessionClosedError,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    YamuxConfig,
    YamuxLimitExceeded,
    YamuxSession,
    encode_header,
)

KIB = 1024
MIB = 1024 * 1024


def frame(ftype: int, flags: int, sid: int, length: int, payload: bytes = b"") -> bytes:
    """A frame built by hand from the spec layout, independent of the module's encoder."""
    return struct.pack(">BBHII", 0, ftype, flags, sid, length) + payload


class Pair:
    """A client and a server session joined in memory; events are collected per side."""

    def __init__(
        self,
        client_config: YamuxConfig | None = None,
        server_config: YamuxConfig | None = None,
    ) -> None:
        self.client = YamuxSession(is_client=True, config=client_config, now=0.0)
        self.server = YamuxSession(is_client=False, config=server_config, now=0.0)
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.now = 0.0

    def flush(self, chunk: int | None = None) -> None:
        """Deliver queued bytes both ways until both sides are quiet."""
        for _ in range(1000):
            c2s = self.client.data_to_send()
            s2c = self.server.data_to_send()
            if not c2s and not s2c:
                return
            self._deliver(c2s, self.server, self.server_events, chunk)
            self._deliver(s2c, self.client, self.client_events, chunk)
        raise AssertionError("sessions did not settle")

    def _deliver(
        self, data: bytes, dst: YamuxSession, sink: list[Event], chunk: int | None
    ) -> None:
        step = chunk or len(data) or 1
        for i in range(0, len(data), step):
            sink.extend(dst.receive_data(data[i : i + step], self.now))

    def take(self, side: str) -> list[Event]:
        events = self.client_events if side == "client" else self.server_events
        out = list(events)
        events.clear()
        return out


def received(events: Iterable[Event], sid: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


# --------------------------------------------------------------------------------------------
# Bytes on the wire


def test_open_stream_sends_syn_window_update_bytes() -> None:
    client = YamuxSession(is_client=True)
    assert client.open_stream() == 1
    assert client.open_stream() == 3
    # version 0, type 1 (WindowUpdate), flags 0x0001 (SYN), stream 1, delta 0
    assert client.data_to_send() == bytes.fromhex(
        "00 01 0001 00000001 00000000" + "00 01 0001 00000003 00000000"
    )
    assert client.data_to_send() == b""


def test_server_ids_are_even_and_larger_window_rides_on_syn() -> None:
    server = YamuxSession(is_client=False, config=YamuxConfig(initial_window=MIB))
    assert server.open_stream() == 2
    assert server.data_to_send() == frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, MIB - INITIAL_WINDOW)


def test_inbound_syn_is_acked_and_data_framed_per_spec() -> None:
    server = YamuxSession(is_client=False)
    events = server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), 0.0)
    assert events == [StreamOpened(1)]
    assert server.data_to_send() == bytes.fromhex("00 01 0002 00000001 00000000")
    assert server.send_data(1, b"abc") == 3
    assert server.data_to_send() == bytes.fromhex("00 00 0000 00000001 00000003") + b"abc"
    server.close_stream(1)
    assert server.data_to_send() == frame(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0)


def test_partial_drains_give_the_same_bytes() -> None:
    def loaded() -> YamuxSession:
        session = YamuxSession(is_client=True, config=YamuxConfig(max_frame_payload=5000))
        sid = session.open_stream()
        session.send_data(sid, bytes(range(256)) * 40)
        session.send_data(sid, memoryview(bytearray(b"tail" * 100)))
        session.ping(0.0)
        return session

    whole = loaded().data_to_send()
    assert len(whole) > 10_000
    for step in (1, 7, 12, 13, 4096, 1 << 20):
        session = loaded()
        assert session.pending_output == len(whole)
        pieces = []
        while piece := session.data_to_send(step):
            assert len(piece) <= step
            pieces.append(piece)
        assert b"".join(pieces) == whole
        session = loaded()
        scratch = bytearray(step)
        copied = bytearray()
        while n := session.data_to_send_into(scratch):
            copied += scratch[:n]
        assert copied == whole
        assert session.pending_output == 0
    with pytest.raises(UsageError):
        loaded().data_to_send(0)


def test_reset_and_goaway_bytes() -> None:
    client = YamuxSession(is_client=True)
    sid = client.open_stream()
    client.data_to_send()
    client.reset_stream(sid)
    assert client.data_to_send() == bytes.fromhex("00 01 0008 00000001 00000000")
    client.go_away()
    assert client.data_to_send() == bytes.fromhex("00 03 0000 00000000 00000000")
    assert encode_header(TYPE_GO_AWAY, 0, 0, 2) == frame(TYPE_GO_AWAY, 0, 0, 2)


def test_ping_syn_is_answered_with_same_value_and_ack() -> None:
    session = YamuxSession(is_client=False)
    assert session.receive_data(frame(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF), 1.0) == []
    assert session.data_to_send() == bytes.fromhex("00 02 0002 00000000 deadbeef")


def test_our_ping_measures_rtt_on_matching_ack() -> None:
    session = YamuxSession(is_client=True)
    assert session.rtt is None
    session.ping(10.0)
    out = session.data_to_send()
    version, ftype, flags, sid, opaque = struct.unpack(">BBHII", out)
    assert (version, ftype, flags, sid) == (0, TYPE_PING, FLAG_SYN, 0)
    # An ACK with another value is not ours: ignored.
    assert session.receive_data(frame(TYPE_PING, FLAG_ACK, 0, opaque + 1), 10.1) == []
    events = session.receive_data(frame(TYPE_PING, FLAG_ACK, 0, opaque), 10.25)
    assert len(events) == 1
    assert isinstance(events[0], PongReceived)
    assert events[0].rtt == pytest.approx(0.25)
    assert session.rtt == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------
# Streams between two sessions


def test_open_data_fin_both_directions() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    assert pair.client.send_data(sid, b"hello") == 5
    pair.flush()
    assert pair.take("server") == [StreamOpened(sid), DataReceived(sid, b"hello")]
    assert pair.take("client") == [StreamAccepted(sid)]
    pair.server.accept(sid)
    assert pair.server.accept_backlog == 0

    pair.server.send_data(sid, b"world")
    pair.server.close_stream(sid)
    pair.flush()
    assert pair.take("client") == [DataReceived(sid, b"world"), StreamEnded(sid)]
    assert pair.server.has_stream(sid)  # only the server's side is closed

    pair.client.close_stream(sid)
    pair.flush()
    assert pair.take("server") == [StreamEnded(sid)]
    assert not pair.client.has_stream(sid)
    assert not pair.server.has_stream(sid)
    assert pair.client.stream_count == pair.server.stream_count == 0


def test_server_opens_stream_to_client() -> None:
    pair = Pair()
    sid = pair.server.open_stream()
    assert sid % 2 == 0
    pair.server.send_data(sid, b"push")
    pair.flush()
    assert pair.take("client") == [StreamOpened(sid), DataReceived(sid, b"push")]
    assert pair.take("server") == [StreamAccepted(sid)]


def test_data_arrives_with_syn_before_ack() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"request")
    # Deliver the client's SYN + data but not the server's ACK yet.
    events = pair.server.receive_data(pair.client.data_to_send(), 0.0)
    assert events == [StreamOpened(sid), DataReceived(sid, b"request")]
    # The server answers before the client saw the ACK; the ACK comes first on the wire.
    pair.server.send_data(sid, b"response")
    events = pair.client.receive_data(pair.server.data_to_send(), 0.0)
    assert events == [StreamAccepted(sid), DataReceived(sid, b"response")]


def test_data_frame_carrying_syn_opens_stream() -> None:
    # rust-yamux sends the SYN on the first Data frame.
    server = YamuxSession(is_client=False)
    events = server.receive_data(frame(TYPE_DATA, FLAG_SYN, 1, 3, b"abc"), 0.0)
    assert events == [StreamOpened(1), DataReceived(1, b"abc")]
    ack = server.data_to_send()
    assert ack == frame(TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0)


def test_data_frame_with_fin_ends_after_payload() -> None:
    server = YamuxSession(is_client=False)
    wire = frame(TYPE_DATA, FLAG_SYN | FLAG_FIN, 1, 4, b"last")
    events: list[Event] = []
    for i in range(len(wire)):  # one byte at a time: FIN must wait for the whole payload
        events += server.receive_data(wire[i : i + 1], 0.0)
    assert received(events, 1) == b"last"
    assert events[0] == StreamOpened(1)
    assert events[-1] == StreamEnded(1)


def test_rst_after_data_was_sent() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"first")
    pair.flush()
    pair.take("server")
    assert pair.take("client") == [StreamAccepted(sid)]
    pair.client.send_data(sid, b"in flight")
    in_flight = pair.client.data_to_send()
    pair.server.reset_stream(sid)
    pair.flush()
    assert pair.take("client") == [StreamReset(sid)]
    assert not pair.client.has_stream(sid)
    # Data the client sent before it saw the RST reaches a server that forgot the stream.
    assert pair.server.receive_data(in_flight, 0.0) == []
    with pytest.raises(StreamResetError):
        pair.client.send_data(sid, b"more")
    with pytest.raises(StreamResetError):
        pair.client.send_window(sid)
    # Closing or resetting a gone stream is harmless.
    pair.client.close_stream(sid)
    pair.client.reset_stream(sid)
    assert pair.client.data_to_send() == b""


def test_local_reset_while_a_payload_is_half_received() -> None:
    server = YamuxSession(is_client=False)
    server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), 0.0)
    wire = frame(TYPE_DATA, FLAG_FIN, 1, 10, b"0123456789") + frame(TYPE_PING, FLAG_SYN, 0, 5)
    assert server.receive_data(wire[:15], 0.0) == [DataReceived(1, b"012")]
    server.reset_stream(1)
    # The rest of the payload is skipped, its FIN ignored, and the next frame parsed.
    assert server.receive_data(wire[15:], 0.0) == []
    assert server.data_to_send().endswith(frame(TYPE_PING, FLAG_ACK, 0, 5))
    assert server.stream_count == 0


def test_local_reset_forgets_stream_and_peer_sees_reset() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.flush()
    pair.take("server")
    pair.client.reset_stream(sid)
    pair.flush()
    assert pair.take("server") == [StreamReset(sid)]
    assert pair.server.stream_count == 0
    assert pair.server.accept_backlog == 0  # the un-accepted stream left the backlog


def test_half_close_keeps_other_direction_open() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"upload")
    pair.client.close_stream(sid)
    pair.flush()
    assert pair.take("server") == [
        StreamOpened(sid),
        DataReceived(sid, b"upload"),
        StreamEnded(sid),
    ]
    with pytest.raises(StreamClosed):
        pair.client.send_data(sid, b"x")
    assert pair.client.send_window(sid) == 0
    for _ in range(3):
        pair.server.send_data(sid, b"download")
    pair.server.close_stream(sid)
    pair.flush()
    events = pair.take("client")
    assert received(events, sid) == b"download" * 3
    assert events[-1] == StreamEnded(sid)
    assert pair.client.stream_count == pair.server.stream_count == 0


def test_window_exhaustion_and_update() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.flush()
    pair.take("server")
    pair.take("client")
    blob = bytes(range(256)) * 1024 * 2  # 512 KiB
    assert pair.client.send_data(sid, blob) == INITIAL_WINDOW
    assert pair.client.send_window(sid) == 0
    assert pair.client.send_data(sid, blob) == 0
    pair.flush()
    data = received(pair.take("server"), sid)
    assert data == blob[:INITIAL_WINDOW]
    # Consuming less than half the window sends no update.
    pair.server.consumed(sid, INITIAL_WINDOW // 2 - 1, 0.0)
    assert pair.server.data_to_send() == b""
    pair.server.consumed(sid, 1, 0.0)
    pair.flush()
    assert pair.take("client") == [SendWindowUpdated(sid)]
    assert pair.client.send_window(sid) == INITIAL_WINDOW // 2
    assert pair.client.send_data(sid, blob[INITIAL_WINDOW:]) == INITIAL_WINDOW // 2


def test_window_update_is_one_frame_per_half_window() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.flush()
    pair.take("server")
    chunk = b"x" * 1000
    updates = 0
    for _ in range(1000):
        assert pair.client.send_data(sid, chunk) == len(chunk)
        pair.flush()
        for event in pair.take("server"):
            if isinstance(event, DataReceived):
                pair.server.consumed(sid, len(event.data), 0.0)
        updates += sum(isinstance(e, SendWindowUpdated) for e in pair.take("client"))
    # 1 MB at 128 KiB per update: about 7 updates, not one per frame.
    assert 5 <= updates <= 8


def test_frames_are_split_at_max_frame_payload() -> None:
    client = YamuxSession(is_client=True, config=YamuxConfig(max_frame_payload=1000))
    server = YamuxSession(is_client=False)
    sid = client.open_stream()
    blob = bytearray(b"y" * 2500)
    assert client.send_data(sid, blob) == 2500
    blob[:] = b"z" * 2500  # mutable input was copied
    events = server.receive_data(client.data_to_send(), 0.0)
    sizes = [len(e.data) for e in events if isinstance(e, DataReceived)]
    assert sizes == [1000, 1000, 500]
    assert received(events, sid) == b"y" * 2500


def test_send_data_views() -> None:
    client = YamuxSession(is_client=True, config=YamuxConfig(max_frame_payload=4))
    server = YamuxSession(is_client=False)
    sid = client.open_stream()
    backing = bytearray(b"mutable!")
    assert client.send_data(sid, memoryview(backing)[2:]) == 6
    backing[:] = b"XXXXXXXX"  # views of mutable buffers were copied
    with memoryview(b"immutable") as view:
        assert client.send_data(sid, view[2:7]) == 5  # views of bytes are referenced
    words = memoryview(bytearray(8)).cast("H")  # non-byte formats are sent as their bytes
    assert client.send_data(sid, words) == 8
    events = server.receive_data(client.data_to_send(), 0.0)
    assert received(events, sid) == b"table!" + b"mutab" + bytes(8)


def test_window_grows_with_fast_consumption() -> None:
    config = YamuxConfig(max_window=4 * MIB)
    pair = Pair(client_config=config, server_config=config)
    # The receiver measures an RTT of 50 ms with its own ping.
    pair.server.ping(0.0)
    pair.now = 0.05
    pair.flush()
    assert pair.server.rtt == pytest.approx(0.05)
    sid = pair.client.open_stream()
    pair.flush()
    windows = [pair.server.recv_window(sid)]
    payload = b"\0" * MIB
    now = 1.0
    for _ in range(40):
        pair.client.send_data(sid, payload)
        pair.flush()
        for event in pair.take("server"):
            if isinstance(event, DataReceived):
                now += 0.001  # consumption far faster than 2 RTT per half window
                pair.server.consumed(sid, len(event.data), now)
        windows.append(pair.server.recv_window(sid))
    assert windows[0] == INITIAL_WINDOW
    assert windows[-1] == 4 * MIB
    assert sorted(windows) == windows  # only ever grows
    assert pair.server.granted_window == 4 * MIB
    # The sender saw the larger window: more than the initial window fits in one write.
    pair.flush()
    assert pair.client.send_window(sid) > INITIAL_WINDOW


def test_listener_window_grows_when_its_clock_reads_a_zero_rtt() -> None:
    # A millisecond event-loop clock (uvloop) reads the same value when a loopback ping is sent
    # and when its pong arrives: the listener measures an RTT of 0.0. Its windows must still grow
    # under fast consumption (they stayed at 256 KiB, halving the dialer's upload throughput).
    pair = Pair()
    pair.server.ping(0.0)
    pair.flush()
    assert pair.server.rtt == 0.0
    sid = pair.client.open_stream()
    pair.flush()
    now = 1.0
    for _ in range(40):
        pair.client.send_data(sid, b"\0" * MIB)
        pair.flush()
        for event in pair.take("server"):
            if isinstance(event, DataReceived):
                now += 0.001  # the clock's tick: consumption as fast as it can tell
                pair.server.consumed(sid, len(event.data), now)
    # Doubled from 256 KiB several times (the exact top depends on the simulated pace).
    assert pair.server.recv_window(sid) >= 16 * INITIAL_WINDOW
    pair.flush()
    assert pair.client.send_window(sid) > INITIAL_WINDOW


def test_window_stays_when_consumption_is_slow() -> None:
    pair = Pair()
    pair.server.ping(0.0)
    pair.now = 0.01
    pair.flush()
    sid = pair.client.open_stream()
    pair.flush()
    now = 1.0
    for _ in range(8):
        pair.client.send_data(sid, b"\0" * INITIAL_WINDOW)
        pair.flush()
        for event in pair.take("server"):
            if isinstance(event, DataReceived):
                now += 1.0  # one second per frame: slower than 2 RTT
                pair.server.consumed(sid, len(event.data), now)
    assert pair.server.recv_window(sid) == INITIAL_WINDOW


def test_window_growth_capped_by_session_buffer() -> None:
    config = YamuxConfig(max_session_buffer=INITIAL_WINDOW * 2 + 100 * KIB)
    pair = Pair(client_config=config, server_config=config)
    pair.server.ping(0.0)
    pair.now = 0.05
    pair.flush()
    sids = [pair.client.open_stream() for _ in range(2)]
    pair.flush()
    now = 1.0
    for _ in range(10):
        for sid in sids:
            pair.client.send_data(sid, b"\0" * MIB)
        pair.flush()
        for event in pair.take("server"):
            if isinstance(event, DataReceived):
                now += 0.001
                pair.server.consumed(event.stream_id, len(event.data), now)
    assert pair.server.granted_window == config.max_session_buffer
    assert sum(pair.server.recv_window(s) for s in sids) == config.max_session_buffer


def test_consumed_more_than_delivered_is_usage_error() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"abc")
    pair.flush()
    with pytest.raises(UsageError):
        pair.server.consumed(sid, 4, 0.0)
    with pytest.raises(UsageError):
        pair.server.consumed(sid, -1, 0.0)
    pair.server.consumed(sid, 3, 0.0)
    pair.server.consumed(999, 10, 0.0)  # a gone stream: nothing to return


# --------------------------------------------------------------------------------------------
# Limits


def test_accept_backlog_limit_refuses_with_rst() -> None:
    # A client that does not hold back its own opens (our default would stop at 256).
    pair = Pair(client_config=YamuxConfig(max_outbound_unacked=1000))
    sids = [pair.client.open_stream() for _ in range(257)]
    pair.flush()
    opened = [e for e in pair.take("server") if isinstance(e, StreamOpened)]
    assert len(opened) == 256
    assert pair.server.accept_backlog == 256
    client_events = pair.take("client")
    assert StreamReset(sids[-1]) in client_events
    assert sum(isinstance(e, StreamAccepted) for e in client_events) == 256
    # Accepting one makes room for the next stream; the session itself is fine.
    pair.server.accept(sids[0])
    sid = pair.client.open_stream()
    pair.flush()
    assert pair.take("server") == [StreamOpened(sid)]
    assert not pair.server.is_closed


def test_outbound_ack_backlog() -> None:
    client = YamuxSession(is_client=True, config=YamuxConfig(max_outbound_unacked=2))
    a = client.open_stream()
    b = client.open_stream()
    with pytest.raises(ResourceLimitError):
        client.open_stream()
    assert client.outbound_unacked == 2
    assert client.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_ACK, a, 0), 0.0) == [
        StreamAccepted(a)
    ]
    c = client.open_stream()
    # A refused (RST) stream frees its slot too.
    assert client.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_RST, b, 0), 0.0) == [StreamReset(b)]
    client.open_stream()
    assert client.outbound_unacked == 2
    client.reset_stream(c)
    assert client.outbound_unacked == 1


def test_refused_syn_data_is_skipped() -> None:
    server = YamuxSession(is_client=False, config=YamuxConfig(max_inbound_unacked=0))
    events = server.receive_data(
        frame(TYPE_DATA, FLAG_SYN, 1, 5, b"hello") + frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0),
        0.0,
    )
    assert events == []
    assert server.data_to_send() == frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0) + frame(
        TYPE_WINDOW_UPDATE, FLAG_RST, 3, 0
    )


def test_max_streams_local_and_remote() -> None:
    config = YamuxConfig(max_streams=2)
    pair = Pair(client_config=config, server_config=config)
    a = pair.client.open_stream()
    pair.client.open_stream()
    with pytest.raises(ResourceLimitError):
        pair.client.open_stream()
    pair.flush()
    pair.take("client")
    # The server's table is full too: a SYN from a third client stream is refused with RST.
    pair.client.reset_stream(a)
    pair.flush()
    pair.take("server")
    sid = pair.client.open_stream()
    pair.server.open_stream()  # fills the server's table again before the SYN arrives
    pair.flush()
    assert StreamReset(sid) in pair.take("client")


def test_ping_flood_without_draining_is_refused() -> None:
    server = YamuxSession(is_client=False)
    flood = frame(TYPE_PING, FLAG_SYN, 0, 7) * 4096  # 48 KiB of pings, 48 KiB of pongs
    for _ in range(20):  # 960 KiB of pongs queued: still within the bound
        server.receive_data(flood, 0.0)
    with pytest.raises(YamuxLimitExceeded):
        server.receive_data(flood * 2, 0.0)
    assert server.is_closed


# --------------------------------------------------------------------------------------------
# Protocol violations: MuxerError, and a GoAway(protocol error) to flush


def _assert_protocol_error(session: YamuxSession, wire: bytes) -> None:
    with pytest.raises(MuxerError):
        session.receive_data(wire, 0.0)
    assert session.data_to_send().endswith(frame(TYPE_GO_AWAY, 0, 0, GOAWAY_PROTOCOL_ERROR))
    assert session.is_closed
    with pytest.raises(MuxerError):
        session.receive_data(frame(TYPE_PING, FLAG_SYN, 0, 1), 0.0)
    with pytest.raises(SessionClosedError):
        session.open_stream()


def test_bad_version() -> None:
    wire = struct.pack(">BBHII", 1, TYPE_PING, FLAG_SYN, 0, 1)
    _assert_protocol_error(YamuxSession(is_client=True), wire)


def test_bad_type() -> None:
    _assert_protocol_error(YamuxSession(is_client=True), frame(4, 0, 0, 0))


def test_stream_id_reuse() -> None:
    server = YamuxSession(is_client=False)
    server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), 0.0)
    server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0), 0.0)
    assert not server.has_stream(1)
    server.data_to_send()
    _assert_protocol_error(server, frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))


def test_syn_on_existing_stream() -> None:
    server = YamuxSession(is_client=False)
    server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), 0.0)
    _assert_protocol_error(server, frame(TYPE_DATA, FLAG_SYN, 1, 0))


def test_wrong_parity() -> None:
    # The client's peer (a server) must use even ids.
    _assert_protocol_error(YamuxSession(is_client=True), frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0))
    _assert_protocol_error(YamuxSession(is_client=False), frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0))


def test_stream_zero() -> None:
    _assert_protocol_error(YamuxSession(is_client=False), frame(TYPE_DATA, 0, 0, 0))


def test_window_overrun() -> None:
    server = YamuxSession(is_client=False)
    server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), 0.0)
    server.receive_data(frame(TYPE_DATA, 0, 1, 1000, b"a" * 1000), 0.0)
    rest = INITIAL_WINDOW - 1000
    # Exactly the window is fine; the header alone of a longer frame is already an error.
    server.receive_data(frame(TYPE_DATA, 0, 1, rest - 1, b"b" * (rest - 1)), 0.0)
    _assert_protocol_error(server, frame(TYPE_DATA, 0, 1, 2))


def test_oversized_data_frame_header() -> None:
    server = YamuxSession(is_client=False)
    _assert_protocol_error(server, frame(TYPE_DATA, FLAG_SYN, 1, INITIAL_WINDOW + 1))


def test_data_after_fin() -> None:
    server = YamuxSession(is_client=False)
    server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_FIN, 1, 0), 0.0)
    _assert_protocol_error(server, frame(TYPE_DATA, 0, 1, 1, b"x"))


def test_frame_for_never_opened_streams() -> None:
    _assert_protocol_error(YamuxSession(is_client=False), frame(TYPE_DATA, 0, 5, 1, b"x"))
    # Our own parity, an id we never allocated.
    _assert_protocol_error(YamuxSession(is_client=False), frame(TYPE_WINDOW_UPDATE, 0, 2, 9))


def test_out_of_order_syns_are_accepted_once() -> None:
    # go-yamux can write the SYN of stream 3 before that of stream 1.
    server = YamuxSession(is_client=False)
    assert server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0), 0.0) == [StreamOpened(3)]
    assert server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), 0.0) == [StreamOpened(1)]
    server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0), 0.0)
    _assert_protocol_error(server, frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))


def test_late_frames_for_closed_streams_are_ignored() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.client.close_stream(sid)
    pair.flush()
    pair.server.close_stream(sid)
    pair.flush()
    assert pair.server.stream_count == 0
    events = pair.server.receive_data(frame(TYPE_WINDOW_UPDATE, 0, sid, 100), 0.0)
    assert events == []
    assert not pair.server.is_closed


# --------------------------------------------------------------------------------------------
# GoAway and keepalive


def test_go_away() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.flush()
    pair.client.go_away()
    pair.flush()
    assert GoAwayReceived(0) in pair.take("server")
    assert pair.server.goaway_received
    assert pair.client.goaway_sent
    with pytest.raises(SessionClosedError):
        pair.client.open_stream()
    with pytest.raises(ConnectionClosed):
        pair.server.open_stream()
    # Existing streams carry on after GoAway.
    pair.server.send_data(sid, b"still here")
    pair.flush()
    assert received(pair.take("client"), sid) == b"still here"
    assert not pair.client.is_closed
    pair.server.go_away(2)
    pair.flush()
    assert pair.take("client") == [GoAwayReceived(2)]
    assert pair.client.is_closed
    assert pair.server.is_closed


def test_syn_after_local_go_away_is_refused() -> None:
    server = YamuxSession(is_client=False)
    server.go_away()
    server.data_to_send()
    assert server.receive_data(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), 0.0) == []
    assert server.data_to_send() == frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0)


def test_keepalive_ping_pong() -> None:
    config = YamuxConfig(keepalive_interval=10.0, keepalive_timeout=5.0, rtt_interval=0)
    pair = Pair(client_config=config, server_config=config)
    assert pair.client.next_deadline() == 10.0
    assert pair.client.tick(9.0) == []
    assert pair.client.data_to_send() == b""
    assert pair.client.tick(10.0) == []
    ping = pair.client.data_to_send()
    assert ping[:8] == frame(TYPE_PING, FLAG_SYN, 0, 0)[:8]
    assert pair.client.next_deadline() == 15.0
    pair.server.receive_data(ping, 10.5)
    pair.now = 10.5
    events = pair.client.receive_data(pair.server.data_to_send(), 10.5)
    assert events == [PongReceived(0.5)]
    assert pair.client.next_deadline() == 20.5
    assert not pair.client.is_closed


def test_keepalive_timeout() -> None:
    config = YamuxConfig(keepalive_interval=10.0, keepalive_timeout=5.0, rtt_interval=0)
    client = YamuxSession(is_client=True, config=config)
    assert client.next_deadline() is None  # no time seen yet
    assert client.tick(100.0) == []
    assert client.next_deadline() == 110.0
    client.tick(110.0)
    assert client.data_to_send()  # the keepalive ping
    assert client.tick(114.9) == []
    assert client.tick(115.0) == [KeepaliveTimeout()]
    assert client.is_closed
    assert client.next_deadline() is None
    assert client.tick(200.0) == []
    with pytest.raises(SessionClosedError):
        client.open_stream()


def test_received_bytes_postpone_keepalive() -> None:
    config = YamuxConfig(keepalive_interval=10.0, rtt_interval=0)
    session = YamuxSession(is_client=True, config=config, now=0.0)
    session.receive_data(frame(TYPE_PING, FLAG_SYN, 0, 1), 8.0)
    session.data_to_send()
    assert session.next_deadline() == 18.0
    assert session.tick(12.0) == []
    assert session.data_to_send() == b""


def test_keepalive_disabled() -> None:
    config = YamuxConfig(keepalive_interval=0, rtt_interval=0)
    session = YamuxSession(is_client=True, config=config, now=0.0)
    assert session.next_deadline() is None
    assert session.tick(1e9) == []
    assert session.data_to_send() == b""


def test_rtt_is_probed_at_start_and_periodically_while_busy() -> None:
    config = YamuxConfig(keepalive_interval=100.0, rtt_interval=10.0)
    pair = Pair(client_config=config, server_config=config)
    assert pair.client.next_deadline() == 0.0  # the first probe is due at once
    pair.client.tick(0.0)
    pair.now = 0.02
    pair.flush()
    assert pair.client.rtt == pytest.approx(0.02)
    assert pair.client.next_deadline() == pytest.approx(10.02)
    # Busy: bytes keep arriving, which postpones keepalive but not the RTT probe.
    sid = pair.server.open_stream()
    for t in range(1, 11):
        pair.now = float(t)
        pair.server.send_data(sid, b"x")
        pair.flush()
        assert pair.client.tick(float(t)) == []
    assert pair.client.data_to_send() == b""
    pair.client.tick(10.02)
    pair.now = 10.07
    pair.flush()
    assert pair.client.rtt == pytest.approx(0.05)


def test_unanswered_rtt_probe_without_keepalive_is_no_timeout() -> None:
    config = YamuxConfig(keepalive_interval=0, rtt_interval=10.0)
    session = YamuxSession(is_client=True, config=config, now=0.0)
    session.tick(0.0)
    assert session.data_to_send()  # the probe
    assert session.next_deadline() is None  # nothing to do until the pong
    assert session.tick(1e6) == []
    assert not session.is_closed


def test_config_validation() -> None:
    with pytest.raises(UsageError):
        YamuxConfig(initial_window=1000)
    with pytest.raises(UsageError):
        YamuxConfig(max_window=INITIAL_WINDOW - 1)
    with pytest.raises(UsageError):
        YamuxConfig(max_frame_payload=0)


# --------------------------------------------------------------------------------------------
# Splitting and streaming


@settings(max_examples=100, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=40_000), sizes=st.lists(st.integers(0, 70_000)))
def test_any_split_delivers_same_bytes(chunk: int, sizes: list[int]) -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    expected = b"".join(bytes([i % 251]) * size for i, size in enumerate(sizes))
    pos = 0
    got = bytearray()
    for _ in range(1000):
        if pos < len(expected):
            pos += pair.client.send_data(sid, expected[pos : pos + 50_000])
        pair.flush(chunk)
        assert pair.server.buffered_input < HEADER_SIZE
        for event in pair.take("server"):
            if isinstance(event, DataReceived):
                got += event.data
                pair.server.consumed(sid, len(event.data), 0.0)
        if pos == len(expected):
            break
    assert bytes(got) == expected


def test_large_frame_streamed_in_pieces_buffers_only_headers() -> None:
    config = YamuxConfig(initial_window=4 * MIB)
    pair = Pair(client_config=config, server_config=config)
    sid = pair.client.open_stream()
    pair.flush()  # the server's ACK grants the 4 MiB window
    blob = bytes(range(256)) * 8192  # 2 MiB
    assert pair.client.send_data(sid, blob) == len(blob)
    wire = pair.client.data_to_send()
    events: list[Event] = []
    for i in range(0, len(wire), 65519):  # Noise-sized pieces
        events += pair.server.receive_data(wire[i : i + 65519], 0.0)
        assert pair.server.buffered_input < HEADER_SIZE
    assert received(events, sid) == blob


# --------------------------------------------------------------------------------------------
# Fuzzing: any input gives events or a PeerError, never another exception, buffers bounded


def _feed(session: YamuxSession, pieces: list[bytes]) -> None:
    try:
        for piece in pieces:
            events = session.receive_data(piece, 0.0)
            assert all(not isinstance(e, DataReceived) or e.data for e in events)
            assert session.buffered_input < HEADER_SIZE
            if len(session.data_to_send()) > 2 * sum(map(len, pieces)) + 64:
                raise AssertionError("output grew out of proportion to input")
    except PeerError:
        assert session.is_closed


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_fuzz_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    for is_client in (True, False):
        _feed(YamuxSession(is_client=is_client), _split(data, cuts))


_frames = st.builds(
    lambda ftype, flags, sid, length, payload_len: frame(
        ftype, flags, sid, length, b"p" * min(payload_len, length) if ftype == 0 else b""
    ),
    st.sampled_from([0, 0, 1, 1, 2, 3, 7]),
    st.integers(0, 15),
    st.sampled_from([0, 1, 2, 3, 4, 5, 7, 0xFFFFFFFF]),
    st.one_of(st.integers(0, 64), st.sampled_from([INITIAL_WINDOW, INITIAL_WINDOW + 1])),
    st.integers(0, 64),
)


@settings(max_examples=400, deadline=None)
@given(frames=st.lists(_frames, max_size=20), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_fuzz_plausible_frames(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frames)
    for is_client in (True, False):
        session = YamuxSession(is_client=is_client)
        if is_client:
            session.open_stream()
            session.open_stream()
        _feed(session, _split(data, cuts))


_ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["open", "send", "send", "close", "reset", "consume", "ping", "accept", "pump", "pump"]
        ),
        st.booleans(),  # which side acts
        st.integers(0, 7),  # which of its streams
        st.integers(0, 300_000),  # size
    ),
    max_size=50,
)


@settings(max_examples=200, deadline=None)
@given(ops=_ops)
def test_random_operations_keep_both_sides_consistent(
    ops: list[tuple[str, bool, int, int]],
) -> None:
    """Random API use on both sides with bytes delivered in random slices.

    Nothing raises, every stream delivers a prefix of what was sent, and all of it once the
    wire is drained (unless the stream was reset, after which a prefix is all one can expect).
    """
    client = YamuxSession(is_client=True, now=0.0)
    server = YamuxSession(is_client=False, now=0.0)
    sides = {True: client, False: server}
    in_flight: dict[bool, bytearray] = {True: bytearray(), False: bytearray()}  # by sender
    sent: dict[tuple[bool, int], bytearray] = defaultdict(bytearray)  # by sender
    got: dict[tuple[bool, int], bytearray] = defaultdict(bytearray)  # by sender
    unread: dict[tuple[bool, int], int] = defaultdict(int)  # by receiver
    was_reset: set[int] = set()
    streams: dict[bool, list[int]] = {True: [], False: []}
    counter = 0

    def deliver(sender: bool, size: int) -> int:
        in_flight[sender] += sides[sender].data_to_send()
        piece = bytes(in_flight[sender][:size])
        del in_flight[sender][:size]
        receiver = not sender
        for event in sides[receiver].receive_data(piece, 1.0):
            if isinstance(event, StreamOpened):
                streams[receiver].append(event.stream_id)
            elif isinstance(event, DataReceived):
                got[(sender, event.stream_id)] += event.data
                unread[(receiver, event.stream_id)] += len(event.data)
            elif isinstance(event, StreamReset):
                was_reset.add(event.stream_id)
        assert sides[receiver].buffered_input < HEADER_SIZE
        return len(piece)

    for op, side, index, size in ops:
        session = sides[side]
        known = [s for s in streams[side] if session.has_stream(s)]
        sid = known[index % len(known)] if known else None
        if op == "open":
            with contextlib.suppress(ResourceLimitError):
                streams[side].append(session.open_stream())
        elif op == "pump":
            deliver(True, size % 70_000 + 1)
            deliver(False, size % 50_000 + 1)
        elif sid is None:
            pass
        elif op == "send" and session.send_window(sid) > 0:
            counter += 1
            payload = bytes([counter % 256]) * size
            n = session.send_data(sid, payload)
            sent[(side, sid)] += payload[:n]
        elif op == "close":
            session.close_stream(sid)
        elif op == "reset":
            session.reset_stream(sid)
            was_reset.add(sid)
        elif op == "consume":
            n = min(size, unread[(side, sid)])
            session.consumed(sid, n, 1.0)
            unread[(side, sid)] -= n
        elif op == "ping":
            session.ping(0.0)
        elif op == "accept":
            session.accept(sid)
        for key, data in got.items():
            assert data == sent[key][: len(data)]
    for _ in range(100):
        if not deliver(True, 1 << 30) + deliver(False, 1 << 30):
            break
    for key, data in got.items():
        assert data == sent[key][: len(data)]
    for key, data in sent.items():
        if key[1] not in was_reset:
            assert got[key] == data
    assert not client.is_closed
    assert not server.is_closed


# --------------------------------------------------------------------------------------------
# The single-Data-frame fast path and small sends


def _fast_then_general(session: YamuxSession, piece: bytes) -> list[Event]:
    """What a caller using the fast paths sees: the same events as receive_data() alone."""
    sid = session.receive_fast(piece, 0.0)
    if sid < 0:
        return [DataReceived(-sid, piece)]
    if sid:
        assert piece[HEADER_SIZE:]
        return [DataReceived(sid, piece[HEADER_SIZE:])]
    return session.receive_data(piece, 0.0)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frames, max_size=20), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_fast_path_matches_general_parser(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frames)
    pieces = [*frames, *_split(data, cuts)]  # whole frames (fast path hits) and arbitrary cuts
    for is_client in (True, False):
        plain = YamuxSession(is_client=is_client)
        fast = YamuxSession(is_client=is_client)
        for s in (plain, fast):
            if is_client:
                s.open_stream()
                s.open_stream()
        for piece in pieces:
            try:
                want: list[Event] | type[PeerError] = plain.receive_data(piece, 0.0)
            except PeerError:
                want = PeerError
            try:
                got: list[Event] | type[PeerError] = _fast_then_general(fast, piece)
            except PeerError:
                got = PeerError
            assert got == want
            assert fast.data_to_send() == plain.data_to_send()
            if want is PeerError:
                break
            for sid in (1, 2, 3, 4, 5):
                assert fast.recv_window(sid) == plain.recv_window(sid)
                assert fast.has_stream(sid) == plain.has_stream(sid)


def test_fast_path_refuses_what_is_not_one_plain_data_frame() -> None:
    p = Pair()
    sid = p.client.open_stream()
    p.flush()
    p.take("server")
    server = p.server
    # one flagless Data frame on a live stream within credit: accepted, window accounted
    assert server.receive_fast(frame(TYPE_DATA, 0, sid, 3, b"abc"), 1.0) == sid
    server.consumed(sid, 3, 1.0)  # 3 bytes were delivered by the fast path
    # anything else: 0, nothing consumed
    assert server.receive_fast(frame(TYPE_DATA, FLAG_FIN, sid, 1, b"x"), 1.0) == 0
    assert server.receive_fast(frame(TYPE_WINDOW_UPDATE, 0, sid, 5), 1.0) == 0
    assert server.receive_fast(frame(TYPE_DATA, 0, sid, 3, b"ab"), 1.0) == 0
    assert server.receive_fast(frame(TYPE_DATA, 0, sid, 1, b"ab"), 1.0) == 0
    assert server.receive_fast(frame(TYPE_DATA, 0, 99, 1, b"a"), 1.0) == 0
    assert server.receive_fast(frame(TYPE_DATA, 0, sid, 0), 1.0) == 0
    big = INITIAL_WINDOW + 1
    assert server.receive_fast(frame(TYPE_DATA, 0, sid, big, b"z" * big), 1.0) == 0
    # a header half received by the general parser blocks the fast path until it completes
    whole = frame(TYPE_DATA, 0, sid, 2, b"hi")
    assert server.receive_data(whole[:5], 1.0) == []
    assert server.receive_fast(frame(TYPE_DATA, 0, sid, 1, b"a"), 1.0) == 0
    assert server.receive_data(whole[5:], 1.0) == [DataReceived(sid, b"hi")]
    # the window is enforced across both paths
    assert server.recv_window(sid) == INITIAL_WINDOW
    with pytest.raises(MuxerError):
        server.receive_data(frame(TYPE_DATA, 0, sid, big, b"z" * big), 1.0)
    assert server.receive_fast(frame(TYPE_DATA, 0, sid, 1, b"a"), 1.0) == 0


def test_small_sends_give_the_same_bytes_as_large_ones() -> None:
    p = Pair()
    sid = p.client.open_stream()
    p.client.data_to_send()
    for payload in (b"a", b"x" * 1024, b"y" * 1025, bytearray(b"mutable")):
        assert p.client.send_data(sid, payload) == len(payload)
        assert p.client.data_to_send() == frame(TYPE_DATA, 0, sid, len(payload), bytes(payload))
    assert p.client.send_data(sid, b"") == 0
    assert not p.client.has_output
    # the window still bounds small sends
    left = INITIAL_WINDOW - (1 + 1024 + 1025 + 7)
    assert p.client.send_window(sid) == left
    assert p.client.send_data(sid, b"z" * (left - 1)) == left - 1
    assert p.client.send_data(sid, b"qr") == 1
    assert p.client.send_window(sid) == 0
    assert p.client.send_data(sid, b"q") == 0


def test_payload_rest_fast_path() -> None:
    p = Pair()
    sid = p.client.open_stream()
    p.flush()
    p.take("server")
    server = p.server
    assert server.receive_fast(b"abc", 1.0) == 0  # nothing in flight
    wire = frame(TYPE_DATA, FLAG_FIN, sid, 10, b"0123456789")
    assert server.receive_data(wire[:14], 1.0) == [DataReceived(sid, b"01")]
    assert server.receive_fast(b"2345", 1.0) == -sid  # the middle of the payload
    assert server.receive_fast(b"6789x", 1.0) == 0  # runs past the frame
    assert server.receive_fast(b"6789", 1.0) == 0  # ends a frame that carries FIN
    assert server.receive_data(b"6789", 1.0) == [DataReceived(sid, b"6789"), StreamEnded(sid)]
    server.consumed(sid, 10, 1.0)  # all ten bytes were accounted for, by both paths
    with pytest.raises(UsageError):
        server.consumed(sid, 1, 1.0)


def test_take_output_gives_the_queued_pieces() -> None:
    p = Pair()
    sid = p.client.open_stream()
    big = b"B" * 5000
    p.client.send_data(sid, big)
    parts = p.client.take_output()
    assert b"".join(parts) == (
        frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0) + frame(TYPE_DATA, 0, sid, 5000, big)
    )
    assert any(part is big for part in parts)  # referenced, not copied
    assert p.client.take_output() == []
    assert not p.client.has_output


def test_frame_data_now_matches_send_data() -> None:
    p = Pair()
    sid = p.client.open_stream()
    assert p.client.frame_data_now(sid, b"hi") == b""  # the SYN is still queued
    p.flush()
    twin = Pair()
    tsid = twin.client.open_stream()
    twin.flush()
    assert tsid == sid
    for payload in (b"a", b"x" * 5000):
        framed = p.client.frame_data_now(sid, payload)
        assert twin.client.send_data(sid, payload) == len(payload)
        assert framed == twin.client.data_to_send()
        assert p.client.send_window(sid) == twin.client.send_window(sid)
    assert not p.client.has_output  # nothing was queued
    # cases it leaves to send_data(): empty, beyond the window, unknown or closed stream
    assert p.client.frame_data_now(sid, b"") == b""
    assert p.client.frame_data_now(sid, b"z" * (p.client.send_window(sid) + 1)) == b""
    assert p.client.frame_data_now(99, b"z") == b""
    p.client.close_stream(sid)
    p.client.data_to_send()
    assert p.client.frame_data_now(sid, b"z") == b""
    with pytest.raises(StreamClosed):
        p.client.send_data(sid, b"z")
    # and the peer reads what was framed
    q = Pair()
    qsid = q.client.open_stream()
    q.flush()
    q.take("server")
    frame_bytes = q.client.frame_data_now(qsid, b"hello")
    assert q.server.receive_data(frame_bytes, 0.0) == [DataReceived(qsid, b"hello")]


def test_fast_paths_stop_when_the_session_fails() -> None:
    """After a protocol error or a keepalive timeout neither fast path takes anything; the
    general calls then report the failure as before. frame_data_now honours the configured
    largest frame."""
    config = YamuxConfig(keepalive_interval=10.0, keepalive_timeout=5.0, rtt_interval=0)
    for failure in ("protocol", "keepalive"):
        p = Pair(client_config=config)
        sid = p.client.open_stream()
        p.flush()
        assert p.client.frame_data_now(sid, b"ok") != b""
        p.client.data_to_send()
        if failure == "protocol":
            with pytest.raises(MuxerError):
                p.client.receive_data(frame(7, 0, 0, 0), 1.0)  # unknown frame type
        else:
            p.client.tick(10.0)  # keepalive ping sent
            assert p.client.tick(15.0) == [KeepaliveTimeout()]
        p.client.data_to_send()
        assert p.client.frame_data_now(sid, b"late") == b""
        assert p.client.receive_fast(frame(TYPE_DATA, 0, sid, 1, b"a"), 16.0) == 0
        with pytest.raises(SessionClosedError):
            p.client.send_data(sid, b"late")
    small = Pair(client_config=YamuxConfig(max_frame_payload=4))
    sid = small.client.open_stream()
    small.flush()
    assert small.client.frame_data_now(sid, b"12345") == b""
    assert small.client.frame_data_now(sid, b"1234") != b""

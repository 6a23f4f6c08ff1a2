"""The upgrade path and misbehaving peers, with raw sockets driving the wire machines by hand."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import pytest

from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import (
    ConnectionClosed,
    DialError,
    MuxerError,
    NegotiationError,
    NoiseError,
    PeerIdMismatch,
    PeerstackError,
)
from peerstack.host.host import BasicHost
from peerstack.host.interface import Stream
from peerstack.net import tcp
from peerstack.net.connection import Connection
from peerstack.net.stream import YamuxStream
from peerstack.net.upgrader import UpgradeOptions, upgrade
from peerstack.wire import multistream, noise, yamux

ECHO = "/test/echo/1.0.0"

# The make_host fixture (conftest.py): start a host on 127.0.0.1, closed at teardown.
MakeHost = Callable[..., Awaitable[BasicHost]]
# The eventually fixture (conftest.py): poll a condition until it holds.
Eventually = Callable[..., Awaitable[None]]


async def echo_handler(stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)


def addr_of(host: BasicHost) -> str:
    return f"{host.listen_addrs()[0]}/p2p/{host.peer_id}"


def target_of(host: BasicHost) -> tuple[str, int]:
    target = host.listen_addrs()[0].tcp_target()
    assert target is not None
    return target


async def assert_echo(client: BasicHost, server: BasicHost) -> None:
    stream = await client.new_stream(server.peer_id, [ECHO])
    await stream.write(b"ping")
    assert await stream.readexactly(4) == b"ping"


async def read_until(reader: asyncio.StreamReader, machine: multistream.Initiator) -> None:
    while not machine.done:
        data = await reader.read(65536)
        assert data, "peer closed during negotiation"
        machine.receive_data(data)


class RawPeer:
    """A hand-driven libp2p dialer: just enough to reach the muxer, then anything we like."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.key = PrivateKey.generate()
        self.peer_id = PeerId.from_public_key(self.key.public_key)
        self.transport: noise.NoiseTransport | None = None

    @classmethod
    async def connect(cls, host: BasicHost) -> RawPeer:
        return cls(*await asyncio.open_connection(*target_of(host)))

    async def secure(self, *, early_muxer: bool) -> noise.NoiseTransport:
        ms = multistream.Initiator([noise.PROTOCOL_ID])
        self.writer.write(ms.data_to_send())
        await read_until(self.reader, ms)
        muxers = [yamux.PROTOCOL_ID] if early_muxer else []
        hs = noise.NoiseHandshake(self.key, initiator=True, muxers=muxers)
        rest = ms.unused_data()
        if rest:
            hs.receive_data(rest)
        self.writer.write(hs.data_to_send())
        while not hs.complete:
            hs.receive_data(await self.reader.read(65536))
            self.writer.write(hs.data_to_send())
        transport = hs.transport()
        assert not hs.unused_data()
        if not early_muxer:
            inner = multistream.Initiator([yamux.PROTOCOL_ID])
            self.writer.write(transport.encrypt(inner.data_to_send()))
            while not inner.done:
                inner.receive_data(transport.decrypt(await self.reader.read(65536)))
        self.transport = transport
        return transport

    async def frames_until_eof(self) -> list[tuple[int, int, int, int]]:
        """Decrypt everything up to EOF; return the yamux headers (type, flags, id, length)."""
        assert self.transport is not None
        plain = b""
        try:
            while data := await self.reader.read(65536):
                plain += self.transport.decrypt(data)
        except ConnectionResetError:
            pass
        frames = []
        pos = 0
        while pos + 12 <= len(plain):
            _, ftype, flags, sid, length = struct.unpack_from(">BBHII", plain, pos)
            frames.append((ftype, flags, sid, length))
            pos += 12 + (length if ftype == yamux.TYPE_DATA else 0)
        return frames


UpgradedPair = tuple[tcp.TcpConnection, tcp.TcpConnection, Connection, Connection]


@contextlib.asynccontextmanager
async def upgraded_pair(key_a: PrivateKey, key_b: PrivateKey) -> AsyncIterator[UpgradedPair]:
    """Two TCP connections on loopback (a dials b, naming b's PeerId), upgraded without
    hosts and not started: (raw_a, raw_b, conn_a, conn_b)."""
    accepted: asyncio.Queue[tcp.TcpConnection] = asyncio.Queue()
    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), accepted.put_nowait)
    try:
        raw_a = await tcp.dial(listener.multiaddrs[0])
        raw_b = await accepted.get()
        conn_a, conn_b = await asyncio.gather(
            upgrade(
                raw_a, key_a, outbound=True, expected_peer=PeerId.from_public_key(key_b.public_key)
            ),
            upgrade(raw_b, key_b, outbound=False),
        )
        yield raw_a, raw_b, conn_a, conn_b
    finally:
        await listener.close()


def start_pair(conn_a: Connection, conn_b: Connection) -> asyncio.Queue[YamuxStream]:
    """Start both connections; b's inbound streams arrive on the queue returned."""
    inbound: asyncio.Queue[YamuxStream] = asyncio.Queue()
    conn_b.on_stream = inbound.put_nowait
    conn_a.start()
    conn_b.start()
    return inbound


async def test_upgrade_without_host() -> None:
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    async with upgraded_pair(key_a, key_b) as (raw_a, raw_b, conn_a, conn_b):
        assert raw_b.remote_addr == raw_a.local_addr
        inbound = start_pair(conn_a, conn_b)
        stream = conn_a.open_stream()
        await stream.write(b"raw stream")
        await stream.close()
        peer_stream = await inbound.get()
        assert peer_stream.__class__.__name__ == "YamuxStream"
        assert await peer_stream.read_until_eof(100) == b"raw stream"
        assert conn_b.remote_peer == PeerId.from_public_key(key_a.public_key)
        assert conn_a.stats()["bytes_sent"] == 10
        await conn_a.close()
        await conn_b.wait_closed()
        assert conn_b.is_closed


@pytest.mark.parametrize("early", [True, False])
async def test_both_muxer_selection_paths(make_host: MakeHost, early: bool) -> None:
    server = await make_host()
    server.set_stream_handler(ECHO, echo_handler)
    client = BasicHost(PrivateKey.generate(), early_muxer_negotiation=early)
    async with client:
        await client.dial(addr_of(server))
        await assert_echo(client, server)


async def test_wrong_peer_id_is_refused(make_host: MakeHost, eventually: Eventually) -> None:
    a = await make_host()
    b = await make_host()
    other = PeerId.from_public_key(PrivateKey.generate().public_key)
    with pytest.raises(PeerIdMismatch):
        await a.dial(f"{b.listen_addrs()[0]}/p2p/{other}")
    assert a.connected_peers() == []
    assert a.connmgr.counts()["outbound"] == 0
    await eventually(lambda: b.connmgr.counts()["inbound"] == 0)
    assert b.connected_peers() == []


async def negotiate_raw(
    ms: multistream.Initiator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(ms.data_to_send())
    while not ms.done:
        ms.receive_data(await reader.read(65536))
        writer.write(ms.data_to_send())


async def test_insecure_channels_are_refused(make_host: MakeHost) -> None:
    host = await make_host()
    for proposals in (["/plaintext/2.0.0"], ["/secio/1.0.0"], ["/plaintext/2.0.0", "/secio/1.0.0"]):
        reader, writer = await asyncio.open_connection(*target_of(host))
        with pytest.raises(NegotiationError):
            await negotiate_raw(multistream.Initiator(proposals), reader, writer)
        writer.close()
    await asyncio.sleep(0.05)
    assert host.connected_peers() == []


@pytest.mark.parametrize("pipeline", [True, False])
@pytest.mark.parametrize("ending", ["close", "abort", "stay"])
async def test_dialing_a_plaintext_only_peer_fails(pipeline: bool, ending: str) -> None:
    """A peer without /noise answers ``na``: the dial fails with ``NegotiationError``.

    Pipelined, the peer then reads our Noise message 1 as a multistream message and gives up:
    it closes (FIN), resets (RST) or just stops answering; whichever, the ``na`` it wrote
    first is what the dialler reports.
    """
    chokes: list[bool] = []

    async def plaintext_only(raw: tcp.TcpConnection) -> None:
        ms = multistream.Responder(["/plaintext/2.0.0", "/secio/1.0.0"])
        try:
            while not ms.done and (data := await raw.read_some()):
                ms.receive_data(data)
                raw.write(ms.data_to_send())
        except PeerstackError:
            chokes.append(True)
            raw.write(ms.data_to_send())  # the ``na`` answered before the bad message
            if ending == "close":
                raw.close()
            elif ending == "abort":
                # A hard reset (RST, not FIN) right behind the ``na``.
                assert raw.transport is not None
                sock = raw.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.abort()
            else:
                await asyncio.sleep(0.5)
                raw.abort()

    tasks: list[asyncio.Task[None]] = []
    listener = await tcp.listen(
        Multiaddr("/ip4/127.0.0.1/tcp/0"),
        lambda raw: tasks.append(asyncio.create_task(plaintext_only(raw))),
    )
    try:
        opts = UpgradeOptions(pipeline_security=pipeline, handshake_timeout=5.0)
        raw = await tcp.dial(listener.multiaddrs[0])
        with pytest.raises(NegotiationError):
            await upgrade(raw, PrivateKey.generate(), outbound=True, options=opts)
        assert raw.is_closed
        await asyncio.gather(*tasks)
        # Pipelined, the peer did choke on the Noise bytes: the case this test is about.
        assert chokes == ([True] if pipeline else [])
        async with BasicHost(PrivateKey.generate()) as host:  # the default options, via a host
            with pytest.raises(NegotiationError):
                await host.dial(listener.multiaddrs[0])
            assert host.connected_peers() == []
        await asyncio.gather(*tasks)
    finally:
        await listener.close()


async def test_our_listener_answers_na_before_refusing_pipelined_bytes(
    make_host: MakeHost,
) -> None:
    """A dialler that pipelines bytes behind a proposal we refuse (rust's V1Lazy with TLS, say)
    gets our ``na`` before the connection closes, so it can tell why."""
    host = await make_host()
    reader, writer = await asyncio.open_connection(*target_of(host))
    ms = multistream.Initiator(["/tls/1.0.0"])
    # Bytes of the next protocol that happen to frame as a message without its newline: our
    # multistream parser fails on them in the same read that carried the proposal.
    writer.write(ms.data_to_send() + b"\x05hello")

    async def answers() -> None:
        while True:
            data = await reader.read(65536)
            assert data, "closed without an answer"
            ms.receive_data(data)

    with pytest.raises(NegotiationError):
        await answers()
    writer.close()
    assert host.connected_peers() == []


@pytest.mark.parametrize("early", [True, False])
async def test_malformed_yamux_frame_closes_only_that_connection(
    make_host: MakeHost, eventually: Eventually, early: bool
) -> None:
    server = await make_host()
    server.set_stream_handler(ECHO, echo_handler)
    good = await make_host()
    await good.dial(addr_of(server))
    raw = await RawPeer.connect(server)
    transport = await raw.secure(early_muxer=early)
    await eventually(lambda: server.connection(raw.peer_id) is not None)
    conn = server.connection(raw.peer_id)
    assert isinstance(conn, Connection)
    # Yamux version 1 does not exist.
    raw.writer.write(transport.encrypt(struct.pack(">BBHII", 1, 0, 0, 0, 0)))
    frames = await raw.frames_until_eof()
    assert (yamux.TYPE_GO_AWAY, 0, 0, yamux.GOAWAY_PROTOCOL_ERROR) in frames
    assert isinstance(conn.error, MuxerError)
    assert conn.is_closed
    assert raw.peer_id not in server.connected_peers()
    await assert_echo(good, server)


async def test_garbage_ciphertext_closes_with_noise_error(
    make_host: MakeHost, eventually: Eventually
) -> None:
    server = await make_host()
    server.set_stream_handler(ECHO, echo_handler)
    good = await make_host()
    await good.dial(addr_of(server))
    raw = await RawPeer.connect(server)
    await raw.secure(early_muxer=True)
    await eventually(lambda: server.connection(raw.peer_id) is not None)
    conn = server.connection(raw.peer_id)
    assert conn is not None
    raw.writer.write(b"\x00\x20" + os.urandom(32))
    await raw.frames_until_eof()
    assert isinstance(conn.error, NoiseError)
    assert server.connected_peers() == [good.peer_id]
    await assert_echo(good, server)


async def test_garbage_before_handshake(make_host: MakeHost) -> None:
    server = await make_host()
    server.set_stream_handler(ECHO, echo_handler)
    good = await make_host()
    await good.dial(addr_of(server))
    for junk in (os.urandom(2000), b"\x13/multistream/1.0.0\n" + os.urandom(500), b"\xff" * 20):
        reader, writer = await asyncio.open_connection(*target_of(server))
        writer.write(junk)
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass
        writer.close()
    assert server.connected_peers() == [good.peer_id]
    assert server.connmgr.counts()["pending_inbound"] == 0
    await assert_echo(good, server)


async def test_handshake_timeout_on_dial() -> None:
    silent: list[tcp.TcpConnection] = []
    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), silent.append)
    try:
        raw = await tcp.dial(listener.multiaddrs[0])
        with pytest.raises(PeerstackError, match="not finished"):
            await upgrade(
                raw,
                PrivateKey.generate(),
                outbound=True,
                options=UpgradeOptions(handshake_timeout=0.2),
            )
        assert raw.is_closed
    finally:
        await listener.close()


async def test_data_pipelined_after_the_proposal_reaches_the_handler(make_host: MakeHost) -> None:
    """Initiators may send their first bytes right after the proposal, before the answer (as
    js-libp2p does with one protocol): those bytes belong to the handler."""
    server = await make_host()
    server.set_stream_handler(ECHO, echo_handler)
    raw = await RawPeer.connect(server)
    transport = await raw.secure(early_muxer=True)
    body = multistream.Initiator([ECHO]).data_to_send() + b"pipelined payload"
    frames = struct.pack(">BBHII", 0, yamux.TYPE_DATA, yamux.FLAG_SYN, 1, len(body)) + body
    frames += struct.pack(">BBHII", 0, yamux.TYPE_WINDOW_UPDATE, yamux.FLAG_FIN, 1, 0)
    raw.writer.write(transport.encrypt(frames))
    received = b""
    while not received.endswith(b"pipelined payload"):
        plain = transport.decrypt(await raw.reader.read(65536))
        pos = 0
        while pos + 12 <= len(plain):
            _, ftype, _, sid, length = struct.unpack_from(">BBHII", plain, pos)
            pos += 12
            if ftype == yamux.TYPE_DATA:
                if sid == 1:
                    received += plain[pos : pos + length]
                pos += length
    answer = multistream.encode_message(multistream.PROTOCOL_ID)
    answer += multistream.encode_message(ECHO)
    assert received == answer + b"pipelined payload"
    raw.writer.close()


async def test_dial_errors_name_their_reason() -> None:
    # A port nobody listens on (bound, then closed) refuses at once.
    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), lambda raw: None)
    addr = listener.multiaddrs[0]
    await listener.close()
    with pytest.raises(DialError, match=r"cannot connect to .+: \S"):
        await tcp.dial(addr)
    # A listener whose accept queue is full drops further SYNs: the dial times out, and the
    # error names the timeout (the message of a TimeoutError itself is empty).
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        with pytest.raises(DialError, match=r"no answer within 0\.3 s"):
            await tcp.dial(Multiaddr(f"/ip4/127.0.0.1/tcp/{port}"), connect_timeout=0.3)
    finally:
        for filler in fillers:
            filler.close()
        sock.close()


async def _upgrading_listener(
    key: PrivateKey, options: UpgradeOptions
) -> tuple[asyncio.Future[Connection], tcp.TcpListener]:
    """A loopback listener that upgrades its first inbound connection into the future."""
    inbound: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()

    async def accept(raw: tcp.TcpConnection) -> None:
        try:
            inbound.set_result(await upgrade(raw, key, outbound=False, options=options))
        except PeerstackError as exc:
            inbound.set_exception(exc)

    tasks: list[asyncio.Task[None]] = []
    listener = await tcp.listen(
        Multiaddr("/ip4/127.0.0.1/tcp/0"),
        lambda raw: tasks.append(asyncio.create_task(accept(raw))),
    )
    return inbound, listener


async def _upgrade_pair(
    dial_opts: UpgradeOptions,
    listen_opts: UpgradeOptions,
    keys: tuple[PrivateKey, PrivateKey] | None = None,
) -> tuple[Connection, Connection]:
    """Upgrade one loopback TCP connection with ``upgrade`` on both ends (``keys``: the
    dialler's and the listener's identities, fresh ones by default)."""
    dial_key, listen_key = keys or (PrivateKey.generate(), PrivateKey.generate())
    inbound, listener = await _upgrading_listener(listen_key, listen_opts)
    try:
        raw = await tcp.dial(listener.multiaddrs[0])
        expected = PeerId.from_public_key(listen_key.public_key)
        out = await upgrade(raw, dial_key, outbound=True, expected_peer=expected, options=dial_opts)
        return out, await inbound
    finally:
        await listener.close()


@pytest.mark.parametrize("early", [True, False])
async def test_pipelined_security_selection_upgrades(early: bool) -> None:
    """The dialler's Noise message 1 behind its /noise proposal: the listener keeps it."""
    dial_opts = UpgradeOptions(pipeline_security=True, early_muxer_negotiation=early)
    listen_opts = UpgradeOptions(early_muxer_negotiation=early)
    out, inb = await _upgrade_pair(dial_opts, listen_opts)
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    inb.on_stream = lambda s: asyncio.ensure_future(s.readexactly(5)).add_done_callback(
        lambda f: got.set_result(f.result())
    )
    out.on_stream = lambda s: None
    out.start()
    inb.start()
    stream = out.open_stream()
    await stream.write(b"hello")
    assert await asyncio.wait_for(got, 10) == b"hello"
    await out.close()
    await inb.close()


async def test_noise_credentials_are_made_once_per_options() -> None:
    opts = UpgradeOptions()
    key = PrivateKey.generate()
    first = opts.noise_credentials(key, [yamux.PROTOCOL_ID])
    assert opts.noise_credentials(key, [yamux.PROTOCOL_ID]) is first
    # another muxer list or identity gets its own
    assert opts.noise_credentials(key, []) is not first
    other = PrivateKey.generate()
    assert opts.noise_credentials(other, []).identity is other
    # a handshake refuses credentials of another identity or muxer list
    with pytest.raises(PeerstackError):
        noise.NoiseHandshake(key, initiator=True, muxers=[], credentials=first)
    with pytest.raises(PeerstackError):
        noise.NoiseHandshake(other, initiator=True, muxers=[yamux.PROTOCOL_ID], credentials=first)
    # two connections upgraded with the same options share the static key, and both work
    a, b = await _upgrade_pair(opts, UpgradeOptions())
    c, d = await _upgrade_pair(opts, UpgradeOptions())
    for conn in (a, b, c, d):
        await conn.close()


async def test_returning_peers_signatures_are_verified_once_and_keys_made_ahead() -> None:
    """Options shared by the upgrades of a host: the second connection between the same two
    hosts finds both signatures remembered, and each handshake leaves the next one's
    ephemeral key made (that a key serves once is tested in tests/wire/test_noise.py)."""
    dial_opts, listen_opts = UpgradeOptions(), UpgradeOptions()
    keys = (PrivateKey.generate(), PrivateKey.generate())
    dial_opts.prepare(keys[0])
    assert dial_opts.ephemeral_keys.ready
    conns: list[Connection] = []
    for round_no in range(3):
        out, inb = await _upgrade_pair(dial_opts, listen_opts, keys)
        conns += [out, inb]
        assert out.remote_peer == PeerId.from_public_key(keys[1].public_key)
        assert inb.remote_peer == PeerId.from_public_key(keys[0].public_key)
        assert len(dial_opts.verified_signatures) == len(listen_opts.verified_signatures) == 1
        # Each side refilled its supply while it waited for the other's next message.
        assert dial_opts.ephemeral_keys.ready, round_no
        assert listen_opts.ephemeral_keys.ready, round_no
    # A peer with another identity is verified (and remembered) on its own.
    stranger_opts = UpgradeOptions()
    out, inb = await _upgrade_pair(stranger_opts, listen_opts, (PrivateKey.generate(), keys[1]))
    conns += [out, inb]
    assert len(listen_opts.verified_signatures) == 2
    for conn in conns:
        await conn.close()


async def test_start_sends_one_rtt_probe() -> None:
    out, inb = await _upgrade_pair(UpgradeOptions(), UpgradeOptions())
    out.on_stream = inb.on_stream = lambda s: None
    out.start()
    queued = out.session.data_to_send()  # what start() queued for its flush
    pings = [
        queued[i : i + yamux.HEADER_SIZE]
        for i in range(0, len(queued), yamux.HEADER_SIZE)
        if queued[i + 1] == yamux.TYPE_PING
    ]
    assert len(queued) == len(pings) * yamux.HEADER_SIZE
    assert len(pings) == 1
    await out.close()
    await inb.close()


class _CountingTransport:
    """Forwards to a real transport and records the size of every write."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes: list[int] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))
        self.inner.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("arrives", ["with_the_handshake", "after_start"])
async def test_probe_ack_and_first_answer_leave_in_one_write(arrives: str) -> None:
    """A stream opened by the dialler gets its ACK, the listener's RTT probe and the handler's
    first answer in one segment, whether the stream came in with the handshake's last bytes
    (handled by start()) or just after start() (its flush still pending)."""
    out, inb = await _upgrade_pair(UpgradeOptions(), UpgradeOptions())
    # The dialler's side of a stream, built by hand so we choose when its bytes arrive.
    sid = out.session.open_stream()
    out.session.send_data(sid, b"hello")
    request = out._noise.encrypt(out.session.data_to_send())

    async def answer(stream: Stream) -> None:
        await stream.write((await stream.read()).upper())

    tasks: list[asyncio.Task[None]] = []
    inb.on_stream = lambda s: tasks.append(asyncio.ensure_future(answer(s)))
    counter = _CountingTransport(cast(asyncio.Transport, inb._tcp.transport))
    inb._tcp.transport = cast(asyncio.Transport, counter)
    if arrives == "with_the_handshake":
        out._tcp.write(request)
        for _ in range(1000):
            if inb._tcp._pending:
                break
            await asyncio.sleep(0.001)
        assert inb._tcp._pending
        inb.start()
    else:
        inb.start()
        inb._feed_reads(request)  # as a read would, before the start flush has run
    await asyncio.gather(*tasks)
    for _ in range(1000):
        if counter.writes:
            break
        await asyncio.sleep(0.001)
    # One Noise frame: RTT probe, window update with ACK, Data header and the 5 bytes.
    assert counter.writes == [noise.NoiseTransport.sealed_size(3 * yamux.HEADER_SIZE + 5)]
    out.on_stream = lambda s: None
    out._streams[sid] = stream = YamuxStream(out, sid, outbound=True)
    out.start()
    assert await asyncio.wait_for(stream.readexactly(5), 10) == b"HELLO"
    await out.close()
    await inb.close()


class _RecordingTransport(_CountingTransport):
    """A counting transport that also keeps the bytes of every write."""

    def __init__(self, inner: asyncio.Transport) -> None:
        super().__init__(inner)
        self.data: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data.append(bytes(data))
        super().write(data)


async def _dial_recorded(
    early: bool,
) -> tuple[Connection, asyncio.Future[Connection], _RecordingTransport, tcp.TcpListener]:
    """Upgrade a loopback dial whose socket writes are recorded; the listener's end is a
    future (it completes only once the dialler's Noise message 3 has arrived)."""
    dial_key, listen_key = PrivateKey.generate(), PrivateKey.generate()
    opts = UpgradeOptions(early_muxer_negotiation=early)
    inbound, listener = await _upgrading_listener(listen_key, opts)
    raw = await tcp.dial(listener.multiaddrs[0])
    recorder = _RecordingTransport(cast(asyncio.Transport, raw.transport))
    raw.transport = cast(asyncio.Transport, recorder)
    expected = PeerId.from_public_key(listen_key.public_key)
    out = await upgrade(raw, dial_key, outbound=True, expected_peer=expected, options=opts)
    return out, inbound, recorder, listener


@pytest.mark.parametrize("early", [True, False])
async def test_dial_writes_message_3_before_upgrade_returns(early: bool) -> None:
    """The dialler's Noise message 3 leaves as soon as the handshake completes, not held back
    to share a segment with the connection's first flush: the listener spends ~0.2-0.25 ms
    on message 3 (DH, signature check), and it overlaps the dialler building that flush. Held
    back (tried), the two serialise and dial + identify p50 got worse (2.41 -> 2.86 ms,
    8 alternating runs of bench/dial_latency, load ~2.5) for one write saved."""
    out, inbound, recorder, listener = await _dial_recorded(early)
    try:
        # header + /noise + message 1; then message 3 (alone, or with the /yamux proposal)
        assert len(recorder.data) == 2
        (msg3_len,) = struct.unpack(">H", recorder.data[1][:2])
        if early:
            assert len(recorder.data[1]) == 2 + msg3_len
        else:
            assert len(recorder.data[1]) > 2 + msg3_len
        # The listener finishes its handshake without the dialler ever starting.
        inb = await asyncio.wait_for(inbound, 10)
        out.on_stream = inb.on_stream = lambda s: None
        out.start()
        inb.start()
        await out.close()
        await asyncio.wait_for(inb.wait_closed(), 10)
        assert inb.error is None  # a clean close (GoAway), not a broken handshake
    finally:
        await listener.close()


async def _upgraded_pair_exchange() -> None:
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    async with upgraded_pair(key_a, key_b) as (raw_a, raw_b, conn_a, conn_b):
        inbound = start_pair(conn_a, conn_b)
        # The loop now reads for the Connection itself, with no hop through the TcpConnection.
        for raw, conn in ((raw_a, conn_a), (raw_b, conn_b)):
            assert raw.transport is not None
            assert raw.transport.get_protocol() is conn
        bulk = os.urandom(3 * 1024 * 1024 + 12345)  # frames cut by reads, read into place
        stream = conn_a.open_stream()
        writing = asyncio.ensure_future(stream.write(bulk))  # more than the stream's window
        peer = await inbound.get()
        assert await peer.readexactly(len(bulk)) == bulk
        await writing
        for size in (1, 32, 5000, noise.MAX_PLAINTEXT + 1):
            msg = os.urandom(size)
            await peer.write(msg)
            assert await stream.readexactly(size) == msg
        await stream.close()
        assert await peer.read_until_eof(10) == b""
        # The end of the TCP connection still reaches both sides.
        await conn_a.close()
        await conn_b.wait_closed()
        assert conn_b.is_closed
        assert raw_b.is_closed
        # b's stream was still open for writing, so the GoAway alone did not close b: the
        # TCP close (connection_lost, forwarded by the Connection) did.
        assert isinstance(conn_b.error, ConnectionClosed)


@pytest.mark.parametrize("loop_kind", ["production", "asyncio"])
def test_upgraded_connection_is_the_transports_protocol(loop_kind: str) -> None:
    """After start() the event loop calls the Connection's get_buffer/buffer_updated directly
    (uvloop and asyncio transports both take the new protocol): bulk data, small messages and
    the close all arrive intact."""
    if loop_kind == "asyncio":
        loop = asyncio.DefaultEventLoopPolicy().new_event_loop()
    else:
        loop = tcp.best_event_loop_policy().new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(_upgraded_pair_exchange(), 30))
    finally:
        loop.close()


async def test_pong_is_written_after_the_tasks_its_read_woke() -> None:
    """One read brings a ping and the message a reader waits for; the reader wakes a waiter
    of its own (identify's reader and wait_identified() do this). Both run before the pong
    is written, so the waiter is not held up by an encrypted write of its own for the pong,
    and the pong still goes out (the peer measures its RTT)."""
    out, inb = await _upgrade_pair(UpgradeOptions(), UpgradeOptions())
    inbound: asyncio.Queue[YamuxStream] = asyncio.Queue()
    inb.on_stream = inbound.put_nowait
    out.on_stream = lambda s: None
    rtts: list[float] = []
    inb.on_rtt = rtts.append
    out.start()
    inb.start()
    stream = out.open_stream()
    await stream.write(b"hi")
    peer = await inbound.get()
    assert await peer.readexactly(2) == b"hi"
    await asyncio.sleep(0.05)  # the start probes and their pongs are done with
    rtts.clear()
    counter = _CountingTransport(cast(asyncio.Transport, out._tcp.transport))
    out._tcp.transport = cast(asyncio.Transport, counter)
    seen: dict[str, int] = {}
    told: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def reader() -> None:
        assert await stream.readexactly(3) == b"msg"
        seen["reader"] = len(counter.writes)
        told.set_result(None)

    async def waiter() -> None:
        await told
        seen["waiter"] = len(counter.writes)

    tasks = [asyncio.ensure_future(reader()), asyncio.ensure_future(waiter())]
    await asyncio.sleep(0)  # both wait now
    # A ping and the message in one flush, so in one read on the other side.
    inb.session.ping(asyncio.get_running_loop().time())
    inb.send(stream.stream_id, b"msg")
    await asyncio.gather(*tasks)
    assert seen == {"reader": 0, "waiter": 0}
    for _ in range(1000):
        if rtts:
            break
        await asyncio.sleep(0.001)
    assert rtts  # the pong went out after them
    assert counter.writes
    await out.close()
    await inb.close()

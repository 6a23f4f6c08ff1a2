"""The upgrade of a raw TCP connection into a secured, multiplexed ``Connection``.

    multistream-select /noise  ->  Noise XX (libp2p payload)  ->  muxer  ->  YamuxSession

The muxer is chosen by *early muxer negotiation* when both sides announced ``/yamux/1.0.0`` in
their Noise extensions (go-libp2p and js-libp2p >= noise 16.1 do; they then skip the inner
negotiation, so we must too), and otherwise by multistream-select over the encrypted channel.
Only ``/noise`` is offered or accepted: never a plaintext channel, never secio.

Round trips and segments, dialler -> listener, with a peer that negotiates early:

    header + /noise + Noise message 1          (pipeline_security: no wait for the echo)
    <- header + echo + Noise message 2         (the listener's header waits for the dialler's)
    Noise message 3, then the first frames     (the connection is up on the dialler's side)

The whole sequence runs under one handshake timeout; any failure closes the socket.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from peerstack.core.identity import PrivateKey
from peerstack.core.peer_id import PeerId
from peerstack.errors import ConnectionClosed, HandshakeError, PeerIdMismatch, PeerstackError
from peerstack.net.connection import Connection
from peerstack.net.tcp import TcpConnection
from peerstack.wire import multistream, noise, yamux

log = logging.getLogger(__name__)

SECURITY_PROTOCOL = noise.PROTOCOL_ID
MUXER_PROTOCOL = yamux.PROTOCOL_ID


class HandshakeTimeout(HandshakeError, TimeoutError):
    """The peer did not finish the upgrade within the handshake timeout."""


@dataclass(frozen=True, slots=True)
class UpgradeOptions:
    """How connections are upgraded."""

    handshake_timeout: float = 15.0
    #: Announce our muxer in the Noise extensions (and skip the inner negotiation when the
    #: peer announced it too).
    early_muxer_negotiation: bool = True
    yamux_config: yamux.YamuxConfig = field(default_factory=yamux.YamuxConfig)
    max_inbound_streams: int = 256
    max_outbound_streams: int = 1024
    #: The dialler sends Noise message 1 right behind its ``/noise`` proposal instead of
    #: waiting for the echo: one round trip less per dial (rust-libp2p's "V1Lazy"; go's and
    #: js's listeners keep bytes that follow a proposal for the next protocol). ``/noise`` is
    #: the only security protocol we offer, so a peer without it fails the dial either way,
    #: and still with ``NegotiationError``: it answers ``na`` before it reads (and chokes on)
    #: the Noise bytes, and that ``na`` is read before the close that follows.
    pipeline_security: bool = True
    #: The Noise static key and signed payload of the last identity used with these options
    #: (one per host): made once, not per connection.
    _credentials: list[noise.NoiseCredentials] = field(
        default_factory=list, init=False, repr=False, compare=False
    )
    #: The next handshake's ephemeral key, made while the previous one waited for its peer
    #: (see _noise_handshake).
    ephemeral_keys: noise.EphemeralKeys = field(
        default_factory=noise.EphemeralKeys, init=False, repr=False, compare=False
    )
    #: Handshake signatures already verified: a returning peer's is not checked again.
    verified_signatures: noise.VerifiedSignatures = field(
        default_factory=noise.VerifiedSignatures, init=False, repr=False, compare=False
    )

    @property
    def noise_muxers(self) -> list[str]:
        """The muxers announced in our Noise extensions (early muxer negotiation)."""
        return [MUXER_PROTOCOL] if self.early_muxer_negotiation else []

    def prepare(self, identity: PrivateKey) -> None:
        """Make the credentials and the first ephemeral key now (a host calls this when it
        starts), so that its first handshake does not wait for a signature and a key."""
        self.noise_credentials(identity, self.noise_muxers)
        self.ephemeral_keys.refill()

    def noise_credentials(self, identity: PrivateKey, muxers: list[str]) -> noise.NoiseCredentials:
        """The cached credentials for ``identity`` and ``muxers`` (made on first use)."""
        cached = self._credentials
        if cached and cached[0].identity is identity and cached[0].muxers == tuple(muxers):
            return cached[0]
        creds = noise.NoiseCredentials(identity, muxers)
        cached[:] = [creds]
        return creds


async def _read(tcp: TcpConnection, stage: str) -> bytes:
    data = await tcp.read_some()
    if not data:
        raise ConnectionClosed(f"the peer closed the connection during {stage}")
    return data


async def _select_security_initiator(
    tcp: TcpConnection, pipelined: bytes, keys: noise.EphemeralKeys
) -> bytes:
    """The dialler's ``/noise`` selection in the clear; returns the bytes after the echo.

    ``pipelined`` (Noise message 1, or nothing) goes out in the same segment as the header and
    the proposal. A peer without ``/noise`` answers ``na`` before it reads those bytes (go, js
    and rust read message by message; so does our listener, see below), and ``na`` to our only
    proposal raises ``NegotiationError`` as soon as it is read, whatever follows it: a close, a
    reset, or the peer's complaint about the Noise bytes it took for a proposal.
    """
    ms = multistream.Initiator([SECURITY_PROTOCOL])
    tcp.write(ms.data_to_send() + pipelined)
    if pipelined:
        keys.refill()  # the answer is a round trip and the listener's message 2 away
    while not ms.done:
        ms.receive_data(await _read(tcp, "security negotiation"))
        out = ms.data_to_send()
        if out:  # only with several proposals (the next one after an ``na``)
            tcp.write(out)
    return ms.unused_data()


async def _select_security_responder(tcp: TcpConnection) -> tuple[bytes, bytes]:
    """The listener's ``/noise`` selection: (bytes after the agreement, our unsent answer).

    Our header waits for the dialler's first bytes (js-libp2p's listener does the same; every
    dialler sends its header without waiting for ours), so that header, echo and Noise message
    2 leave in one segment when the dialler pipelined its message 1: one write here and one
    wake-up of the dialler instead of three. What we answered before a malformed or
    unexpected message (an ``na``) is still written before the error closes the connection,
    so that a dialler who pipelined other bytes behind its proposal learns why.
    """
    ms = multistream.Responder([SECURITY_PROTOCOL])
    while True:
        data = await _read(tcp, "security negotiation")
        try:
            ms.receive_data(data)
        except PeerstackError:
            out = ms.data_to_send()
            if out:
                tcp.write(out)
            raise
        out = ms.data_to_send()
        if ms.done:
            return ms.unused_data(), out
        if out:
            tcp.write(out)


async def _noise_handshake(
    tcp: TcpConnection,
    hs: noise.NoiseHandshake,
    *,
    expected: PeerId | None,
    leftover: bytes,
    keys: noise.EphemeralKeys,
    unsent: bytes = b"",
) -> bytes:
    """Run the handshake; ``unsent`` goes out in front of our first message.

    Returns our last handshake message if the handshake completed on our side with it unsent
    (the dialler's message 3): the caller writes it together with what follows it.
    """
    if leftover:
        hs.receive_data(leftover)
    out = unsent + hs.data_to_send()
    while not hs.complete:
        if out:
            tcp.write(out)
            # The next handshake's ephemeral key is made now, while the peer works on what
            # we sent (a round trip and its DH and signature work at the least), instead of
            # delaying our own next message. Each key still serves one handshake only.
            keys.refill()
        hs.receive_data(await _read(tcp, "the noise handshake"))
        out = hs.data_to_send()
    if expected is not None and hs.remote_peer != expected:  # noise checks too; be certain
        raise PeerIdMismatch(f"expected peer {expected}, met {hs.remote_peer}")
    return out


async def _select_muxer(
    tcp: TcpConnection,
    transport: noise.NoiseTransport,
    outbound: bool,
    ciphertext: bytes,
    unsent: bytes,
) -> bytes:
    """multistream-select the muxer inside the encrypted channel; returns leftover plaintext.

    The dialler's proposal rides with ``unsent`` (its Noise message 3); the listener answers
    header and echo in one frame, once the dialler's header arrived (as for security).
    """
    ms: multistream.Initiator | multistream.Responder
    if outbound:
        ms = multistream.Initiator([MUXER_PROTOCOL])
        tcp.write(unsent + transport.encrypt(ms.data_to_send()))
    else:
        ms = multistream.Responder([MUXER_PROTOCOL])
        if unsent:
            tcp.write(unsent)
    data = ciphertext
    while not ms.done:
        if not data:
            data = await _read(tcp, "muxer negotiation")
        plain = transport.decrypt(data)
        data = b""
        if plain:
            try:
                ms.receive_data(plain)
            finally:
                out = ms.data_to_send()
                if out:
                    tcp.write(transport.encrypt(out))
    return ms.unused_data()


async def upgrade(
    tcp: TcpConnection,
    identity: PrivateKey,
    *,
    outbound: bool,
    expected_peer: PeerId | None = None,
    options: UpgradeOptions | None = None,
) -> Connection:
    """Secure and multiplex ``tcp``; returns a ``Connection`` to ``start()``, or raises.

    Raises ``PeerIdMismatch`` when ``expected_peer`` is given and someone else answered,
    ``NegotiationError`` when the peer offers neither Noise nor Yamux, ``HandshakeTimeout``,
    and the wire layers' ``PeerError`` subclasses for malformed input.
    """
    opts = options if options is not None else UpgradeOptions()
    keys = opts.ephemeral_keys
    loop = asyncio.get_running_loop()
    try:
        try:
            async with asyncio.timeout(opts.handshake_timeout):
                muxers = opts.noise_muxers
                hs = noise.NoiseHandshake(
                    identity,
                    initiator=outbound,
                    remote_peer=expected_peer,
                    muxers=muxers,
                    credentials=opts.noise_credentials(identity, muxers),
                    ephemeral_keys=keys,
                    verified=opts.verified_signatures,
                )
                # Noise message 1 rides behind the proposal (see pipeline_security).
                unsent = b""
                if outbound:
                    first = hs.data_to_send() if opts.pipeline_security else b""
                    rest = await _select_security_initiator(tcp, first, keys)
                else:
                    rest, unsent = await _select_security_responder(tcp)
                unsent = await _noise_handshake(
                    tcp, hs, expected=expected_peer, leftover=rest, keys=keys, unsent=unsent
                )
                transport = hs.transport()
                ciphertext = hs.unused_data()
                early = bool(muxers) and MUXER_PROTOCOL in hs.remote_muxers
                if early:
                    plaintext = b""
                    if unsent:
                        # Message 3 goes now, alone, not held for the connection's first
                        # flush: the listener's ~0.2 ms on it (DH, signature check) then
                        # overlaps our building of that flush (held back, dial + identify
                        # p50 got worse; see test_dial_writes_message_3_before_upgrade_returns).
                        tcp.write(unsent)
                else:
                    plaintext = await _select_muxer(tcp, transport, outbound, ciphertext, unsent)
                    ciphertext = b""
        except TimeoutError:
            raise HandshakeTimeout(
                f"upgrade not finished within {opts.handshake_timeout} s"
            ) from None
    except BaseException:
        tcp.abort()
        raise
    session = yamux.YamuxSession(is_client=outbound, config=opts.yamux_config, now=loop.time())
    conn = Connection(
        tcp,
        transport,
        session,
        remote_peer=hs.remote_peer,
        remote_public_key=hs.remote_public_key,
        outbound=outbound,
        max_inbound_streams=opts.max_inbound_streams,
        max_outbound_streams=opts.max_outbound_streams,
        leftover_plaintext=plaintext,
        leftover_ciphertext=ciphertext,
    )
    log.debug(
        "upgraded %s connection to %s (muxer by %s negotiation)",
        "outbound" if outbound else "inbound",
        conn,
        "early" if early else "multistream",
    )
    return conn

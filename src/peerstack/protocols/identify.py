"""identify ``/ipfs/id/1.0.0`` and identify push ``/ipfs/id/push/1.0.0``.

On every new connection each side opens an identify stream to the other; the responder writes
one uvarint-length-prefixed ``Identify`` protobuf (see ``core/pb/identify.proto``) and closes.
go-libp2p may split a large message (one carrying a signed peer record) into several
length-prefixed messages on the same stream, so the reader merges up to ``MAX_MESSAGES`` of them
until the end of the stream, as js-libp2p does.

Push is the same message sent the other way, unasked, on its own stream when our protocols or
listen addresses change. A push is a partial update: only the fields present replace what we
knew.

Other services learn from identify through ``IdentifyService.add_listener``: a
``PeerIdentified`` event after every successful identify and every push received (the DHT
admits a peer to its routing table when it lists the kad protocol), and ``IdentifyFailed`` when
the identify run on a connection ends without an answer while the peer is still connected (so a
service may fall back to asking the peer itself).

Everything a peer sends is bounded and validated before it reaches the peerstore: the message
size, the number of addresses and protocols, the length of each protocol id, and the public key,
which must belong to the PeerId the secure channel authenticated. A peer that breaks these rules
gets a typed ``PeerError``; its stream is reset, the connection itself stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from google.protobuf.message import DecodeError as ProtobufDecodeError

from peerstack import __version__
from peerstack.core import varint
from peerstack.core.identity import PublicKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.pb.identify_pb2 import Identify
from peerstack.core.peer_id import PeerId
from peerstack.errors import (
    DecodeError,
    LimitExceeded,
    NegotiationError,
    PeerError,
    PeerstackError,
)
from peerstack.host.interface import (
    Host,
    HostEvent,
    PeerConnected,
    PeerDisconnected,
    Stream,
    read_length_prefixed,
    write_length_prefixed,
)

log = logging.getLogger(__name__)

IDENTIFY = "/ipfs/id/1.0.0"
IDENTIFY_PUSH = "/ipfs/id/push/1.0.0"
PROTOCOL_VERSION = "ipfs/0.1.0"
AGENT_VERSION = f"peerstack/{__version__}"

# Limits on what a peer may send (go-libp2p and js-libp2p use 8 KiB and 10 messages too).
MAX_MESSAGE_SIZE = 8 * 1024
MAX_MESSAGES = 10
MAX_ADDRS = 128
MAX_PROTOCOLS = 256
MAX_PROTOCOL_LENGTH = 256
MAX_VERSION_LENGTH = 256

# How long one identify exchange may take before we give up on it.
IDENTIFY_TIMEOUT = 15.0
# Addresses learnt from identify stay in the peerstore this long (go uses an hour-ish TTL for
# addresses of connected peers; they are refreshed on every identify).
ADDR_TTL = 3600.0
# How many identify results and observed addresses we keep.
MAX_CACHED_INFOS = 4096
MAX_OBSERVED_ADDRS = 32
MAX_PUSH_CONCURRENCY = 32


class IdentifyKeyMismatch(PeerError):
    """The public key in an identify message does not belong to the peer that sent it."""


class IdentifyPeerstore(Protocol):
    """The part of the host's peerstore identify writes to."""

    def add_addrs(self, peer: PeerId, addrs: Sequence[Multiaddr], ttl: float) -> None: ...

    def set_protocols(self, peer: PeerId, protocols: Sequence[str]) -> None: ...

    def set_public_key(self, peer: PeerId, key: PublicKey) -> None: ...

    def set_metadata(self, peer: PeerId, key: str, value: str) -> None: ...


@dataclass(frozen=True, slots=True)
class IdentifyInfo:
    """What a peer told us about itself. ``None``/empty means the field was absent."""

    peer: PeerId
    public_key: PublicKey | None
    listen_addrs: tuple[Multiaddr, ...]
    protocols: tuple[str, ...]
    observed_addr: Multiaddr | None
    protocol_version: str | None
    agent_version: str | None
    # Which of the repeated fields were present (a push carries only what changed).
    has_listen_addrs: bool = True
    has_protocols: bool = True


@dataclass(frozen=True, slots=True)
class PeerIdentified:
    """``peer`` identified itself (``push=False``) or pushed an update (``push=True``).

    The fields are what we now know about the peer, the push merged in: a push that carried no
    protocols leaves ``protocols`` as they were.
    """

    peer: PeerId
    protocols: tuple[str, ...]
    listen_addrs: tuple[Multiaddr, ...]
    agent_version: str | None
    push: bool


@dataclass(frozen=True, slots=True)
class IdentifyFailed:
    """The identify run on a connection to ``peer`` ended without an answer (peer still there)."""

    peer: PeerId
    error: BaseException


IdentifyEvent = PeerIdentified | IdentifyFailed
IdentifyListener = Callable[[IdentifyEvent], None]


def encode_identify(
    *,
    public_key: PublicKey | None,
    listen_addrs: Sequence[Multiaddr],
    protocols: Sequence[str],
    observed_addr: Multiaddr | None,
    protocol_version: str = PROTOCOL_VERSION,
    agent_version: str = AGENT_VERSION,
) -> bytes:
    """Serialize an ``Identify`` message (without the length prefix)."""
    msg = Identify()
    msg.protocolVersion = protocol_version
    msg.agentVersion = agent_version
    if public_key is not None:
        msg.publicKey = public_key.to_protobuf()
    msg.listenAddrs.extend(_strip_p2p(a).to_bytes() for a in listen_addrs)
    msg.protocols.extend(protocols)
    if observed_addr is not None:
        msg.observedAddr = _strip_p2p(observed_addr).to_bytes()
    return msg.SerializeToString()


class _MessageCache:
    """Our identify message, serialized once per (listen addresses, protocols).

    The observed address is the only per-connection field: the message is kept as the bytes
    before it (fields 1-3) and after it (5-6), and each answer is ``head + observed + tail``:
    the same bytes ``encode_identify`` writes, without a protobuf encode per connection.
    """

    __slots__ = ("_agent_version", "_head", "_key", "_public_key", "_tail")

    def __init__(self, public_key: PublicKey | None, agent_version: str) -> None:
        self._public_key = public_key
        self._agent_version = agent_version
        self._key: tuple[tuple[Multiaddr, ...], tuple[str, ...]] | None = None
        self._head = b""
        self._tail = b""

    def message(
        self,
        listen_addrs: Sequence[Multiaddr],
        protocols: Sequence[str],
        observed_addr: Multiaddr | None,
    ) -> bytes:
        key = (tuple(listen_addrs), tuple(protocols))
        if key != self._key:
            head = Identify()
            if self._public_key is not None:
                head.publicKey = self._public_key.to_protobuf()
            head.listenAddrs.extend(_strip_p2p(a).to_bytes() for a in key[0])
            head.protocols.extend(key[1])
            tail = Identify()
            tail.protocolVersion = PROTOCOL_VERSION
            tail.agentVersion = self._agent_version
            self._head = head.SerializeToString()
            self._tail = tail.SerializeToString()
            self._key = key
        if observed_addr is None:
            return self._head + self._tail
        observed = _strip_p2p(observed_addr).to_bytes()
        # field 4 (observedAddr), wire type 2: tag 0x22, length, bytes
        return self._head + b"\x22" + varint.encode(len(observed)) + observed + self._tail


def decode_identify(messages: Sequence[bytes], peer: PeerId) -> IdentifyInfo:
    """Merge and validate the identify messages ``peer`` sent.

    Raises ``DecodeError`` for bytes that do not parse, ``LimitExceeded`` for a message over the
    limits, and ``IdentifyKeyMismatch`` when the key is not ``peer``'s. Addresses that do not
    parse are skipped (a peer may advertise transports we do not know).
    """
    if len(messages) > MAX_MESSAGES:
        raise LimitExceeded(f"more than {MAX_MESSAGES} identify messages")
    msg = Identify()
    for raw in messages:
        if len(raw) > MAX_MESSAGE_SIZE:
            raise LimitExceeded(f"identify message of {len(raw)} bytes")
        try:
            msg.MergeFromString(raw)
        except (ProtobufDecodeError, UnicodeDecodeError) as exc:
            raise DecodeError(f"malformed identify message: {exc}") from None

    if len(msg.listenAddrs) > MAX_ADDRS:
        raise LimitExceeded(f"{len(msg.listenAddrs)} listen addrs (limit {MAX_ADDRS})")
    if len(msg.protocols) > MAX_PROTOCOLS:
        raise LimitExceeded(f"{len(msg.protocols)} protocols (limit {MAX_PROTOCOLS})")
    for proto in msg.protocols:
        # identify.proto is proto2: a string field that is not UTF-8 comes back as bytes.
        if not isinstance(proto, str):
            raise DecodeError("protocol id is not UTF-8")
        if len(proto.encode()) > MAX_PROTOCOL_LENGTH:
            raise LimitExceeded(f"protocol id of {len(proto.encode())} bytes")
    for name in ("protocolVersion", "agentVersion"):
        value = getattr(msg, name)
        if not isinstance(value, str):
            raise DecodeError(f"{name} is not UTF-8")
        if len(value.encode()) > MAX_VERSION_LENGTH:
            raise LimitExceeded(f"{name} too long")

    public_key: PublicKey | None = None
    if msg.HasField("publicKey"):
        public_key = PublicKey.from_protobuf(msg.publicKey)
        if not peer.matches(public_key):
            raise IdentifyKeyMismatch(f"identify public key does not belong to {peer}")

    addrs: list[Multiaddr] = []
    peer_bytes = peer.to_bytes()
    for raw_addr in msg.listenAddrs:
        try:
            full = Multiaddr.from_bytes(raw_addr)
        except DecodeError:
            continue
        pid = full.p2p_bytes
        if pid is not None and pid != peer_bytes:
            continue  # an address of some other peer has no place in this peer's list
        addr = full.decapsulate_p2p()[0] if pid is not None else full
        if addr not in addrs:
            addrs.append(addr)

    observed: Multiaddr | None = None
    if msg.HasField("observedAddr"):
        # js-libp2p appends /p2p/<our id>; the address is what matters.
        with contextlib.suppress(DecodeError):
            observed = Multiaddr.from_bytes(msg.observedAddr).decapsulate_p2p()[0]

    return IdentifyInfo(
        peer=peer,
        public_key=public_key,
        listen_addrs=tuple(addrs),
        protocols=tuple(dict.fromkeys(msg.protocols)),
        observed_addr=observed,
        protocol_version=msg.protocolVersion if msg.HasField("protocolVersion") else None,
        agent_version=msg.agentVersion if msg.HasField("agentVersion") else None,
        has_listen_addrs=len(msg.listenAddrs) > 0,
        has_protocols=len(msg.protocols) > 0,
    )


async def read_identify(stream: Stream) -> IdentifyInfo:
    """Read every identify message on ``stream`` up to its end and validate them."""
    messages: list[bytes] = []
    while True:
        raw = await read_length_prefixed(stream, MAX_MESSAGE_SIZE)
        if raw is None:
            break
        if len(messages) >= MAX_MESSAGES:
            raise LimitExceeded(f"more than {MAX_MESSAGES} identify messages")
        messages.append(raw)
    if not messages:
        raise DecodeError("identify stream closed without a message")
    return decode_identify(messages, stream.remote_peer)


def _settle(
    fut: asyncio.Future[IdentifyInfo], info: IdentifyInfo | None, error: BaseException | None
) -> None:
    """Complete ``fut`` once; an error is marked as retrieved since nobody may be waiting."""
    if fut.done():
        return
    if info is not None:
        fut.set_result(info)
    else:
        fut.set_exception(error or PeerstackError("identify did not complete"))
        fut.exception()


_Outcome = asyncio.Future[IdentifyInfo]


_second = operator.itemgetter(1)


async def _close_stream(stream: Stream) -> None:
    """Half-close an identify stream whose answer we have; a stream already gone is fine."""
    try:
        await stream.close()
    except PeerstackError:
        pass  # reset or closed by the peer or the connection: nothing left to close
    except BaseException:
        stream.reset()
        raise


def _strip_p2p(addr: Multiaddr) -> Multiaddr:
    return addr.decapsulate_p2p()[0]


class ObservedAddrs:
    """Addresses other peers saw us at, with the set of peers that reported each.

    Bounded: at most ``MAX_OBSERVED_ADDRS`` addresses; when full, the address with the fewest
    observers gives way. One peer counts once per address, so a single peer cannot make an
    address look popular.
    """

    def __init__(self, max_addrs: int = MAX_OBSERVED_ADDRS) -> None:
        self._max = max_addrs
        self._seen: dict[Multiaddr, set[PeerId]] = {}
        # addr -> len(self._seen[addr]), so that finding the weakest needs no Python call per
        # address (the table is full most of the time: each dial is seen from a new port).
        self._counts: dict[Multiaddr, int] = {}

    def add(self, addr: Multiaddr, observer: PeerId) -> None:
        peers = self._seen.get(addr)
        if peers is None:
            if len(self._seen) >= self._max:
                # Over (address, count) pairs: no Multiaddr hash per entry (the table is
                # full on every dial, each dial seen from a new port).
                weakest = min(self._counts.items(), key=_second)[0]
                del self._seen[weakest]
                del self._counts[weakest]
            peers = self._seen[addr] = set()
        if len(peers) < 1024:
            peers.add(observer)
            self._counts[addr] = len(peers)

    def addrs(self, min_observers: int = 1) -> list[Multiaddr]:
        """Addresses reported by at least ``min_observers`` peers, most reported first."""
        ranked = sorted(self._seen.items(), key=lambda kv: -len(kv[1]))
        return [a for a, peers in ranked if len(peers) >= min_observers]


class IdentifyService:
    """Runs identify and identify push on a host and keeps the peerstore up to date.

    ``protocols`` returns the protocol ids we currently serve (the host does not list its own
    handlers through the service interface). Call ``notify_changed()`` after our protocols or
    listen addresses change; a push follows after ``push_delay`` seconds, so a burst of changes
    makes one push.
    """

    def __init__(
        self,
        host: Host,
        peerstore: IdentifyPeerstore,
        public_key: PublicKey,
        protocols: Callable[[], Sequence[str]],
        *,
        agent_version: str = AGENT_VERSION,
        push_delay: float = 0.2,
        timeout: float = IDENTIFY_TIMEOUT,
        on_peer_error: Callable[[PeerId, PeerError], None] | None = None,
    ) -> None:
        self._host = host
        self._peerstore = peerstore
        self._public_key = public_key
        self._protocols = protocols
        self._agent_version = agent_version
        self._push_delay = push_delay
        self._timeout = timeout
        self._on_peer_error = on_peer_error
        self._infos: OrderedDict[PeerId, IdentifyInfo] = OrderedDict()
        self._errors: OrderedDict[PeerId, PeerError] = OrderedDict()
        # The outcome of the identify run for each connected peer (done futures stay until the
        # peer disconnects), and callers waiting for a peer that has not connected yet.
        self._pending: dict[PeerId, asyncio.Future[IdentifyInfo]] = {}
        self._waiters: dict[PeerId, asyncio.Future[IdentifyInfo]] = {}
        # The wait_identified() callers of each of those futures, each on a future of its own
        # that is settled together with the shared one (see _resolve): a cancelled caller
        # cancels only its own, and the caller wakes in the next loop turn, not two turns
        # later as behind asyncio.shield (whose inner callback is a turn of its own).
        self._callers: dict[_Outcome, list[_Outcome]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._push_task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._push_limit = asyncio.Semaphore(MAX_PUSH_CONCURRENCY)
        self._message = _MessageCache(public_key, agent_version)
        self._listeners: list[IdentifyListener] = []
        # Listener calls that raised (each one logged with its traceback).
        self.listener_errors = 0
        self.observed = ObservedAddrs()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Register the handlers and identify every peer that connects from now on."""
        self._host.set_stream_handler(IDENTIFY, self._handle_identify)
        self._host.set_stream_handler(IDENTIFY_PUSH, self._handle_push)
        self._unsubscribe = self._host.add_listener(self._on_event)
        for peer in self._host.connected_peers():
            self._start_identify(peer)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = list(self._tasks)
        if self._push_task is not None:
            tasks.append(self._push_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for fut in [*self._pending.values(), *self._waiters.values()]:
            fut.cancel()
        for callers in self._callers.values():
            for caller in callers:
                caller.cancel()
        self._pending.clear()
        self._waiters.clear()
        self._callers.clear()

    def _resolve(
        self, fut: _Outcome, info: IdentifyInfo | None, error: BaseException | None
    ) -> None:
        """Settle ``fut`` and the futures of the callers waiting on it."""
        _settle(fut, info, error)
        for caller in self._callers.pop(fut, ()):
            _settle(caller, info, error)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_event(self, event: HostEvent) -> None:
        if isinstance(event, PeerConnected):
            self._start_identify(event.peer, inbound=not event.outbound)
        elif isinstance(event, PeerDisconnected):
            for table in (self._pending, self._waiters):
                fut = table.pop(event.peer, None)
                if fut is not None and not fut.done():
                    # Built only when someone may wait for it (a PeerId's text costs a base58
                    # encode, and most disconnects find identify long finished).
                    gone = PeerstackError(f"{event.peer} disconnected before identify finished")
                    self._resolve(fut, None, gone)

    def _start_identify(self, peer: PeerId, *, inbound: bool = False) -> None:
        old = self._pending.get(peer)
        if old is not None and not old.done():
            return  # already running for this peer
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[IdentifyInfo] = loop.create_future()
        self._pending[peer] = fut
        if inbound:
            # Our request starts two loop turns later: the new connection's first turn serves
            # the streams the dialler opened right behind its last handshake message (its own
            # identify request above all) and the next one flushes the answer, so the answer
            # the dialler waits for leaves alone, ahead of our request, and the dialler reads
            # it without first serving our request.
            loop.call_soon(loop.call_soon, self._begin_identify, peer, fut)
        else:
            self._begin_identify(peer, fut)

    def _begin_identify(self, peer: PeerId, fut: asyncio.Future[IdentifyInfo]) -> None:
        if self._unsubscribe is None or fut.done() or self._pending.get(peer) is not fut:
            return  # closed, disconnected or superseded in the meantime
        self._spawn(self._identify_quietly(peer, fut))

    # -- listeners ----------------------------------------------------------------------------

    def add_listener(self, listener: IdentifyListener) -> Callable[[], None]:
        """Call ``listener`` with every ``PeerIdentified`` / ``IdentifyFailed`` from now on.

        Returns the function that unsubscribes it (calling it twice is harmless). Listeners run
        synchronously in the identify task: they must not block; one that raises is logged and
        the others still run.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, event: IdentifyEvent) -> None:
        # A copy: a listener may unsubscribe (itself or another) while we iterate.
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                # A subscriber's bug is its own: identify has already stored what it learnt and
                # must go on for this peer and the next. Logged with the traceback, not hidden.
                self.listener_errors += 1
                log.exception("identify listener %r failed on %s", listener, type(event).__name__)

    # -- what we learnt -----------------------------------------------------------------------

    def info(self, peer: PeerId) -> IdentifyInfo | None:
        """The last identify result for ``peer``, pushes applied."""
        return self._infos.get(peer)

    def last_error(self, peer: PeerId) -> PeerError | None:
        """The last identify failure ``peer`` caused, if any."""
        return self._errors.get(peer)

    async def wait_identified(self, peer: PeerId) -> IdentifyInfo:
        """The result of the identify exchange run on the connection to ``peer``.

        Waits for it if it is still running, or for the peer to connect if it has not yet.
        Gives up after the service's identify timeout; raises the error identify ended with.
        """
        fut = self._pending.get(peer)
        if fut is not None and fut.done():
            if not fut.cancelled() and fut.exception() is None:
                return self._infos.get(peer) or fut.result()  # pushes may have updated it
            return fut.result()  # raises what the run ended with
        loop = asyncio.get_running_loop()
        if fut is None:
            known = self._infos.get(peer)
            if known is not None:
                return known
            fut = self._waiters.get(peer)
            if fut is None:
                fut = self._waiters[peer] = loop.create_future()
        mine: _Outcome = loop.create_future()
        self._callers.setdefault(fut, []).append(mine)
        try:
            async with asyncio.timeout(self._timeout):
                return await mine
        finally:
            if not mine.done():
                mine.cancel()
            others = self._callers.get(fut)
            if others is not None:
                if mine in others:
                    others.remove(mine)
                if not others:
                    del self._callers[fut]
                    others = None
            if others is None and self._waiters.get(peer) is fut and not fut.done():
                # Nobody waits any more for a peer that has not shown up (timed out or
                # cancelled): forget the waiter, so that they cannot pile up.
                del self._waiters[peer]
                fut.cancel()

    # -- outbound identify --------------------------------------------------------------------

    async def identify(self, peer: PeerId) -> IdentifyInfo:
        """Ask ``peer`` to identify itself, validate the answer and store it.

        Raises a ``PeerError`` subclass when the peer's answer breaks the rules; the connection
        stays open, only the stream is reset.
        """
        info, stream = await self._ask(peer)
        await _close_stream(stream)
        return info

    async def _ask(self, peer: PeerId) -> tuple[IdentifyInfo, Stream]:
        """identify() up to the stored result; the caller closes the stream (after telling
        whoever waits for the result: closing sends a FIN, and that write need not come
        first)."""
        stream = await self._host.new_stream(peer, [IDENTIFY])
        try:
            async with asyncio.timeout(self._timeout):
                info = await read_identify(stream)
        except PeerError as exc:
            stream.reset()
            self._record_error(peer, exc)
            raise
        except BaseException:
            stream.reset()
            raise
        self._apply(info, push=False)
        return info, stream

    async def _identify_quietly(self, peer: PeerId, fut: asyncio.Future[IdentifyInfo]) -> None:
        info: IdentifyInfo | None = None
        error: BaseException | None = None
        stream: Stream | None = None
        try:
            info, stream = await self._ask(peer)
        except NegotiationError as exc:
            log.debug("%s does not speak identify", peer)
            error = exc
        except PeerError as exc:
            log.info("identify with %s failed: %s", peer, exc)
            error = exc
        except (PeerstackError, OSError, TimeoutError) as exc:
            log.debug("identify with %s did not complete: %s", peer, exc)
            error = exc
        except asyncio.CancelledError:
            fut.cancel()
            raise
        if error is not None and self._listeners and self._pending.get(peer) is fut:
            # Only while this connection's run is still the current one: after a disconnect
            # nobody should act on the peer (a fallback would dial it again).
            self._emit(IdentifyFailed(peer, error))
        self._resolve(fut, info, error)
        waiter = self._waiters.pop(peer, None)
        if waiter is not None:
            self._resolve(waiter, info, error)
        if stream is not None:
            await _close_stream(stream)

    def _record_error(self, peer: PeerId, exc: PeerError) -> None:
        self._errors[peer] = exc
        self._errors.move_to_end(peer)
        while len(self._errors) > MAX_CACHED_INFOS:
            self._errors.popitem(last=False)
        if self._on_peer_error is not None:
            self._on_peer_error(peer, exc)

    def _apply(self, info: IdentifyInfo, *, push: bool) -> None:
        """Merge ``info`` into what we know about its peer and into the peerstore."""
        peer = info.peer
        old = self._infos.get(peer)
        if push and old is not None:
            info = replace(
                old,
                public_key=info.public_key or old.public_key,
                listen_addrs=info.listen_addrs if info.has_listen_addrs else old.listen_addrs,
                protocols=info.protocols if info.has_protocols else old.protocols,
                observed_addr=info.observed_addr or old.observed_addr,
                protocol_version=info.protocol_version or old.protocol_version,
                agent_version=info.agent_version or old.agent_version,
            )
        self._infos[peer] = info
        self._infos.move_to_end(peer)
        while len(self._infos) > MAX_CACHED_INFOS:
            self._infos.popitem(last=False)

        self._store(info, push=push)
        if info.observed_addr is not None and not push:
            self.observed.add(info.observed_addr, peer)

        waiter = self._waiters.pop(peer, None)
        if waiter is not None:
            self._resolve(waiter, info, None)
        if self._listeners:
            self._emit(
                PeerIdentified(peer, info.protocols, info.listen_addrs, info.agent_version, push)
            )

    def _store(self, info: IdentifyInfo, *, push: bool) -> None:
        """Write ``info`` to the peerstore, each fact on its own.

        The peerstore may have tighter limits than the wire (addresses or protocols per peer).
        Of more addresses than it holds it keeps the first ones (identify allows 128, the
        peerstore 32); what it refuses is logged and left out; the rest still counts, and the
        peer is not penalized for a message the protocol allows.
        """
        ps = self._peerstore
        peer = info.peer
        writes: list[tuple[str, Callable[[], None]]] = []
        if info.public_key is not None:
            key = info.public_key
            writes.append(("public key", lambda: ps.set_public_key(peer, key)))
        if info.agent_version is not None:
            agent = info.agent_version
            writes.append(("agent", lambda: ps.set_metadata(peer, "agent_version", agent)))
        if info.protocol_version is not None:
            version = info.protocol_version
            writes.append(("version", lambda: ps.set_metadata(peer, "protocol_version", version)))
        if info.has_protocols or not push:
            writes.append(("protocols", lambda: ps.set_protocols(peer, info.protocols)))
        if info.has_listen_addrs or not push:
            writes.append(("addrs", lambda: ps.add_addrs(peer, info.listen_addrs, ADDR_TTL)))
        for what, write in writes:
            try:
                write()
            except PeerError as exc:
                log.info("peerstore refused the %s of %s: %s", what, peer, exc)

    # -- inbound ------------------------------------------------------------------------------

    def _our_message(self, observed: Multiaddr | None) -> bytes:
        # Re-encoded only when our addresses or protocols changed since the last answer.
        return self._message.message(self._host.listen_addrs(), self._protocols(), observed)

    async def _handle_identify(self, stream: Stream) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await write_length_prefixed(stream, self._our_message(stream.remote_addr))
                await stream.close()
        except (PeerstackError, OSError, TimeoutError) as exc:
            log.debug("answering identify from %s failed: %s", stream.remote_peer, exc)
            stream.reset()

    async def _handle_push(self, stream: Stream) -> None:
        peer = stream.remote_peer
        try:
            async with asyncio.timeout(self._timeout):
                info = await read_identify(stream)
        except PeerError as exc:
            log.info("bad identify push from %s: %s", peer, exc)
            stream.reset()
            self._record_error(peer, exc)
            return
        except (PeerstackError, OSError, TimeoutError) as exc:
            log.debug("identify push from %s did not complete: %s", peer, exc)
            stream.reset()
            return
        with contextlib.suppress(PeerstackError):
            await stream.close()
        self._apply(info, push=True)

    # -- push ---------------------------------------------------------------------------------

    def notify_changed(self) -> None:
        """Our protocols or listen addresses changed: push to connected peers soon."""
        if self._push_task is not None and not self._push_task.done():
            return  # a push is already scheduled and will carry the latest state
        self._push_task = asyncio.get_running_loop().create_task(self._delayed_push())

    async def _delayed_push(self) -> None:
        await asyncio.sleep(self._push_delay)
        await self.push()

    async def push(self, peers: Sequence[PeerId] | None = None) -> None:
        """Push our current identify message to ``peers`` (default: every connected peer)."""
        targets = list(peers) if peers is not None else self._host.connected_peers()
        await asyncio.gather(*(self._push_one(p) for p in targets))

    async def _push_one(self, peer: PeerId) -> None:
        async with self._push_limit:
            try:
                stream = await self._host.new_stream(peer, [IDENTIFY_PUSH])
            except (PeerstackError, OSError) as exc:
                log.debug("cannot push identify to %s: %s", peer, exc)
                return
            try:
                async with asyncio.timeout(self._timeout):
                    # A push carries no observed address: we are not answering a dial.
                    await write_length_prefixed(stream, self._our_message(None))
                    await stream.close()
            except (PeerstackError, OSError, TimeoutError) as exc:
                log.debug("identify push to %s failed: %s", peer, exc)
                stream.reset()

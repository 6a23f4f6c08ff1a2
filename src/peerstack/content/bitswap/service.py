"""The Bitswap service on a ``Host``: server, client sessions, DAG fetching, providing.

Bitswap is message based: each side sends its messages on its *own* outbound stream
(``/ipfs/bitswap/1.2.0``; 1.1.0 and 1.0.0 are accepted inbound and spoken to peers that only know
them). A message is a uvarint-length-prefixed protobuf of at most 4 MiB, a block at most 2 MiB.

Trust: every received block is hashed (in a worker thread) and must match a CID some session of
ours wants, or recently wanted (a block that crossed our cancel is fine). Anything else, and any
malformed or oversized message or wantlist flood, is a ``PeerError``: the peer's streams are reset,
it is dropped from every session, the server forgets its ledger, and it is banned for a while.
Nothing unverified ever reaches the blockstore.

Providers: connected peers are asked first (want-have); when nobody has a block, the optional
``ContentRouting`` (the DHT) is asked for providers, which are dialled and added to the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from peerstack.content import chunks, dagpb, exporter
from peerstack.content.bitswap import messages as m
from peerstack.content.bitswap.messages import Message, Presence, PresenceType, WantEntry
from peerstack.content.bitswap.progress import ProgressCallback, ProgressTracker
from peerstack.content.bitswap.ratelimit import UploadLimiter
from peerstack.content.bitswap.server import Batch, DecisionEngine, ServerConfig
from peerstack.content.bitswap.session import Actions, Session, SessionConfig
from peerstack.content.blockstore import BlockNotFound, Blockstore, BlockstoreError, PinKind
from peerstack.content.chunks import Buffer, Chunks, as_bytes
from peerstack.content.filesink import FileSink, partial_path
from peerstack.content.importer import DEFAULT_PROFILE, ImportProfile, ImportResult, import_path
from peerstack.core.cid import CID, DAG_PB, RAW, Prefix
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.multihash import SHA2_256, Multihash
from peerstack.core.peer_id import PeerId
from peerstack.errors import (
    ConnectionClosed,
    DecodeError,
    DialError,
    NegotiationError,
    PeerError,
    PeerstackError,
    StreamClosed,
    StreamError,
    UsageError,
)
from peerstack.host.interface import (
    Host,
    HostEvent,
    PeerConnected,
    PeerDisconnected,
    Stream,
    read_length_prefix,
)

log = logging.getLogger(__name__)

PROTOCOL_1_2 = "/ipfs/bitswap/1.2.0"
PROTOCOL_1_1 = "/ipfs/bitswap/1.1.0"
PROTOCOL_1_0 = "/ipfs/bitswap/1.0.0"
PROTOCOLS = (PROTOCOL_1_2, PROTOCOL_1_1, PROTOCOL_1_0)


class UnexpectedBlock(PeerError):
    """A peer sent a block that hashes to nothing we asked for (corrupt or unsolicited)."""


class FetchError(PeerstackError):
    """A fetch could not complete (the DAG is malformed, or the service stopped)."""


class BlocksUnavailable(FetchError):
    """No peer delivered a block of a fetch for its ``idle_timeout``: every provider is gone.

    ``missing`` are the blocks still wanted (the known frontier of the DAG: blocks under a
    missing node are not known yet, so the total may be larger). The verified blocks already
    received stay in the store, so a later fetch of ``root`` asks only for the rest.
    """

    def __init__(self, root: CID, missing: list[CID], kept: int, idle_timeout: float) -> None:
        self.root = root
        self.missing = missing
        self.kept = kept
        shown = ", ".join(str(c) for c in missing[:3]) + (", ..." if len(missing) > 3 else "")
        super().__init__(
            f"fetch of {root} stalled: no peer sent a block for {idle_timeout:g} s; "
            f"{len(missing)} block(s) still missing ({shown}), and any under them; "
            f"{kept} verified block(s) kept for a resume"
        )


@dataclass(frozen=True, slots=True)
class Provider:
    peer: PeerId
    addrs: tuple[Multiaddr, ...] = ()


class ContentRouting(Protocol):
    """What Bitswap needs from the DHT (or any other router)."""

    def find_providers(self, cid: CID, limit: int) -> AsyncIterator[Provider]: ...

    async def provide(self, cid: CID) -> None: ...


def _usable_cpus(low: int, high: int) -> int:
    """The CPUs this process may run on (its affinity, where the OS tells), within
    [low, high]."""
    affinity = getattr(os, "sched_getaffinity", None)
    n = len(affinity(0)) if affinity is not None else (os.cpu_count() or low)
    return max(low, min(high, n))


@dataclass(frozen=True, slots=True)
class BitswapConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    server_workers: int = 4  # batches sent concurrently (to different peers)
    max_providers: int = 10  # providers dialled per search
    connect_timeout: float = 10.0
    ban_seconds: float = 600.0
    recent_blocks: int = 8192  # received/cancelled CIDs a late duplicate may still match
    # Each inbound stream may hold a few messages (up to 4 MiB each) while they are processed;
    # more streams than this from one peer are refused.
    max_inbound_streams_per_peer: int = 4
    max_banned: int = 10_000
    # Verified blocks of one peer being written to disk at once (held in memory meanwhile).
    max_storing_bytes: int = 16 * 1024 * 1024
    # Worker threads that hash and store received blocks (a message's blocks per trip): one
    # per CPU this process may use, 2 to 8. More threads than CPUs only take turns with each
    # other and the event loop: with four on two CPUs, a get from four seeders spent ~10%
    # more CPU per MiB (context switches, a shared file's lock spun on) than with two.
    store_threads: int = field(default_factory=lambda: _usable_cpus(2, 8))
    # Of those, how many may store one peer's messages at once when they pile up (over half
    # of max_storing_bytes waiting); below that, one at a time.
    store_lanes_per_peer: int = 2
    # get_file stores a block file of each leaf it writes into its output, as well as the
    # output. Off: the output is the leaves' storage (the store references them there and
    # re-hashes them when it reads them), so each byte is written once.
    get_keeps_copies: bool = False
    # get_file writes the leaves of an output of 16 MiB or more past the page cache (O_DIRECT,
    # where the file system allows it; see FileSink.open). On the 2-core bench VM, whose free
    # memory goes back to the host, a 1 GiB get into fresh page-cache pages made ~325 MB/s
    # and 537 MB/s written this way; with pages still warm both made ~570.
    get_direct_io: bool = True


@dataclass(frozen=True, slots=True)
class FetchResult:
    root: CID
    blocks: int
    bytes: int
    fetched_bytes: int  # of ``bytes``, what came over the network


def _spawn_into(tasks: set[asyncio.Task[Any]], coro: Any) -> asyncio.Task[Any]:
    """Run ``coro`` as a task held in ``tasks`` until it ends, its outcome always read.

    The loop keeps only a weak reference to a task, so one nobody holds may vanish mid-run; and
    an error nobody reads is reported only when the task is garbage collected, if at all.
    """
    task = asyncio.get_running_loop().create_task(coro)
    tasks.add(task)
    task.add_done_callback(_task_done(tasks))
    return task


def _task_done(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, (PeerstackError, OSError)):
            log.debug("bitswap background task %s failed: %r", task.get_name(), exc)
        else:
            log.error("bitswap background task %s failed", task.get_name(), exc_info=exc)

    return done


class _Outbound:
    """Our own outbound stream to one peer; messages are written one at a time."""

    def __init__(self, host: Host, peer: PeerId) -> None:
        self.host = host
        self.peer = peer
        self.lock = asyncio.Lock()
        self.stream: Stream | None = None

    async def send(self, msg: Message) -> None:
        async with self.lock:
            for attempt in (0, 1):
                if self.stream is None:
                    self.stream = await self.host.new_stream(self.peer, PROTOCOLS)
                # the block bytes go to the stream as they are, never joined into one buffer
                pieces = _for_protocol(msg, self.stream.protocol).encode_pieces()
                try:
                    for piece in pieces:
                        await self.stream.write(piece)
                    return
                except (StreamError, ConnectionClosed):
                    self.stream.reset()
                    self.stream = None
                    if attempt:
                        raise

    def close(self) -> None:
        if self.stream is not None:
            self.stream.reset()
            self.stream = None


def _for_protocol(msg: Message, protocol: str) -> Message:
    """Downgrade a message for a peer that speaks 1.1.0 or 1.0.0.

    Those peers know neither want-have nor presences: a want-have becomes a want-block (the
    block itself is the answer), and presences are left out.
    """
    if protocol == PROTOCOL_1_2:
        return msg
    wants = [WantEntry(e.cid, e.priority, e.cancel) for e in msg.wantlist]
    out = Message(wantlist=wants, full=msg.full)
    if protocol == PROTOCOL_1_0:
        out.blocks = [b.data for b in msg.payload]
    else:
        out.payload = msg.payload
    return out


def _hashed(prefix: Prefix, data: Buffer) -> tuple[CID, Buffer]:
    """The CID ``data`` has under the sender's ``prefix``; a block that is not a raw leaf
    comes back as one buffer (it is parsed as dag-pb and may be kept)."""
    if isinstance(data, Chunks):
        if prefix.codec == RAW and prefix.hash_code == SHA2_256:
            mh = Multihash(SHA2_256, chunks.sha256(data))
            return CID(prefix.version, prefix.codec, mh), data
        data = data.tobytes()
    return prefix.cid_for(data), data


@dataclass(slots=True)
class _Received:
    """One block of a received message, hashed: who wanted it, and what storing it raised."""

    cid: CID
    data: Buffer
    wanting: list[FetchSession]
    error: PeerstackError | None = None


class _Storing:
    """One peer's messages whose blocks are being verified and stored in worker threads, and
    their bytes; ``wait_for_room`` is how the peer's reader waits while they are too many.

    A peer's messages normally run one after the other on one worker thread at a time
    (``run``): the thread that stored a message takes the peer's next one itself, so a steady
    stream from one peer keeps one thread busy instead of waking an idle one per message (a
    futex hand-off each way); different peers still use different threads. When the peer's
    stored-but-not-done bytes build up (the caller passes ``lanes`` > 1), more threads take
    its messages side by side: one thread is then the slowest stage of a get (hashing, and
    writing into a page cache whose fresh pages can cost several times the copy on a virtual
    machine), and with one lane the reader stopped at ``max_storing_bytes``, the socket filled
    and both event loops (ours and the seeder's) slept while it caught up. Messages may then
    finish out of order; nothing depends on their order (each block is delivered on its own).
    """

    def __init__(self) -> None:
        self.count = 0
        self.nbytes = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._lock = threading.Lock()  # _jobs and _running, shared with the worker threads
        self._jobs: deque[Callable[[], None]] = deque()
        self._running = 0  # worker threads taking this peer's jobs

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, nbytes: int) -> None:
        self.count += 1
        self.nbytes += nbytes

    def done(self, nbytes: int) -> None:
        self.count -= 1
        self.nbytes -= nbytes
        self._wake()

    def abandon(self) -> None:
        """The service stopped: what is queued is dropped and nobody waits for room."""
        with self._lock:
            self._jobs.clear()
        self.count = self.nbytes = 0
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:  # each checks again whether there is room now
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_room(self, limit: int) -> None:
        loop = asyncio.get_running_loop()
        while self.count and self.nbytes > limit:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            await waiter

    def run(self, pool: ThreadPoolExecutor, job: Callable[[], None], lanes: int = 1) -> None:
        """Run ``job`` in a worker thread after the peer's jobs before it have started, on
        up to ``lanes`` threads at once (1: in order, one at a time)."""
        with self._lock:
            self._jobs.append(job)
            if self._running >= max(1, lanes):
                return  # a thread running the peer's jobs takes it
            self._running += 1
        pool.submit(self._drain)

    def _drain(self) -> None:
        """(worker thread) The peer's jobs, in order, until none is left."""
        while True:
            with self._lock:
                if not self._jobs:
                    self._running -= 1
                    return
                job = self._jobs.popleft()
            job()


class FetchSession:
    """The asyncio side of one ``Session``: drives it, and collects the blocks it gets."""

    def __init__(self, bitswap: Bitswap) -> None:
        self.bitswap = bitswap
        self.core = Session(bitswap.config.session)
        self.wake = asyncio.Event()
        self.arrivals: asyncio.Queue[tuple[CID, bytes | None, PeerId | None]] = asyncio.Queue()
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._searching = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.sizes: dict[CID, int] = {}  # size of every block this session received
        # get_file's output: raw leaves are written into it by the thread that stores them
        self.sink: FileSink | None = None

    def start(self) -> None:
        now = self.bitswap.now()
        for peer in self.bitswap.host.connected_peers():
            if self.bitswap.is_candidate(peer):
                self.core.add_peer(peer, now)
        self._task = asyncio.get_running_loop().create_task(self._drive())

    async def close(self) -> list[CID]:
        """Cancel what is still wanted; return those CIDs (late answers are not an offence)."""
        cancelled = list(self.core.wants)
        for cid in cancelled:
            self.core.cancel(cid)
        self._flush(self.core.tick(self.bitswap.now()))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._tasks):
            task.cancel()
        return cancelled

    def want(self, cid: CID) -> None:
        self.core.want([cid], self.bitswap.now())
        self.wake.set()

    def deliver(self, peer: PeerId, cid: CID, data: Buffer) -> None:
        core = self.core
        wake = core.block_wakes(peer, cid)
        if core.on_block(peer, cid, len(data), self.bitswap.now()):
            # a node is kept until the walk expands it: as bytes of its own, not a view that
            # would pin the whole received message
            node = bytes(as_bytes(data)) if cid.codec == DAG_PB else None
            self.arrivals.put_nowait((cid, node, peer))
            self.sizes[cid] = len(data)
        if wake or core.peer_due(peer):
            self.wake.set()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.arrivals.put_nowait((CID.hash_of(b""), None, None))
        self.wake.set()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        return _spawn_into(self._tasks, coro)

    def _flush(self, actions: Actions) -> None:
        for peer, entries in actions.messages.items():
            # Sends belong to the service, not the session: a session that ends must not cut
            # a message in half on the stream (or lose its cancels).
            self.bitswap._spawn(self._send(peer, entries))
        if actions.find_providers and not self._searching:
            self._searching = True
            self._spawn(self._find_providers(actions.find_providers[0]))

    async def _send(self, peer: PeerId, entries: list[WantEntry]) -> None:
        try:
            await self.bitswap.send(peer, Message(wantlist=entries))
        except (PeerstackError, OSError) as exc:
            log.debug("cannot send wants to %s: %r", peer, exc)
            if isinstance(exc, NegotiationError):
                self.bitswap.no_bitswap.add(peer)
            self.core.remove_peer(peer)
            self.wake.set()

    async def _find_providers(self, cid: CID) -> None:
        try:
            async for peer in self.bitswap.find_providers(cid):
                self.core.add_peer(peer, self.bitswap.now())
                self.wake.set()
        except (PeerstackError, OSError, TimeoutError) as exc:
            log.info("provider search for %s failed: %r", cid, exc)  # retried later
        finally:
            self._searching = False

    async def _drive(self) -> None:
        try:
            await self._drive_loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must fail the fetch (re-raised there), not hang it
            log.exception("bitswap session failed")
            self.fail(exc)

    async def _drive_loop(self) -> None:
        while True:
            self.wake.clear()
            now = self.bitswap.now()
            self._flush(self.core.tick(now))
            deadline = self.core.next_deadline()
            timeout = None if deadline is None else max(deadline - now, 0.01)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()


class Bitswap:
    """Serve blocks from ``store`` to peers and fetch blocks and DAGs from them."""

    def __init__(
        self,
        host: Host,
        store: Blockstore,
        routing: ContentRouting | None = None,
        config: BitswapConfig | None = None,
        *,
        upload_rate: float | None = None,
        upload_rate_per_peer: float | None = None,
    ) -> None:
        """``upload_rate`` caps the blocks we send, in bytes/s for the whole node and (with
        ``upload_rate_per_peer``) for each peer; None: no cap."""
        self.host = host
        self.store = store
        self.routing = routing
        self.config = config if config is not None else BitswapConfig()
        self.engine = DecisionEngine(self._block_size, self.config.server)
        self.upload_limit = UploadLimiter(upload_rate, upload_rate_per_peer)
        self.sessions: set[FetchSession] = set()
        self._outbound: dict[PeerId, _Outbound] = {}
        self._banned: dict[PeerId, float] = {}
        self._recent: OrderedDict[CID, None] = OrderedDict()
        self._work = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._inbound: dict[PeerId, set[Stream]] = {}
        self._storing: dict[PeerId, _Storing] = {}
        # Received messages are hashed and stored here, each completion handed to the loop by
        # one call_soon_threadsafe: no task, no asyncio future per message (see _receive_blocks).
        self._store_pool: ThreadPoolExecutor | None = None
        self.penalties: dict[PeerId, int] = {}
        # connected peers that refused the Bitswap protocols (until they disconnect)
        self.no_bitswap: set[PeerId] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        for proto in PROTOCOLS:
            self.host.set_stream_handler(proto, self._handle_stream)
        self._unsubscribe = self.host.add_listener(self._on_host_event)
        self._store_pool = ThreadPoolExecutor(
            max_workers=max(1, self.config.store_threads), thread_name_prefix="bitswap-store"
        )
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._serve_loop()) for _ in range(self.config.server_workers)
        ]

    async def stop(self) -> None:
        for proto in PROTOCOLS:
            self.host.remove_stream_handler(proto)
        if self._unsubscribe is not None:
            self._unsubscribe()
        tasks = [*self._workers, *self._tasks]
        for task in tasks:
            task.cancel()
        # Background tasks report their own errors (see _spawn_into); one that failed before
        # it was cancelled must not make stop() raise and skip the rest of the clean-up.
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes[: len(self._workers)]:
            if isinstance(outcome, Exception):
                log.error("bitswap server worker failed", exc_info=outcome)
        pool, self._store_pool = self._store_pool, None
        if pool is not None:
            # Stores in progress finish (a file being written stays consistent); queued ones
            # are dropped (their blocks were never delivered, so nothing counts on them).
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        for storing in self._storing.values():
            storing.abandon()
        self._storing.clear()
        for session in list(self.sessions):
            session.fail(FetchError("bitswap stopped"))
        for out in self._outbound.values():
            out.close()
        self._outbound.clear()

    async def __aenter__(self) -> Bitswap:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- peers ----------------------------------------------------------------------------

    def is_banned(self, peer: PeerId) -> bool:
        until = self._banned.get(peer)
        if until is None:
            return False
        if self.now() >= until:
            del self._banned[peer]
            return False
        return True

    def is_candidate(self, peer: PeerId) -> bool:
        """Worth asking for blocks: not banned, not known to lack Bitswap."""
        return peer not in self.no_bitswap and not self.is_banned(peer)

    def penalize(self, peer: PeerId, reason: BaseException) -> None:
        """Cut ``peer`` off: it broke the protocol or sent bad data."""
        log.warning("bitswap: cutting off %s: %r", peer, reason)
        self.penalties[peer] = self.penalties.pop(peer, 0) + 1
        while len(self.penalties) > self.config.max_banned:
            del self.penalties[next(iter(self.penalties))]
        now = self.now()
        if len(self._banned) >= self.config.max_banned:
            for other, until in list(self._banned.items()):
                if until <= now:
                    del self._banned[other]
            while len(self._banned) >= self.config.max_banned:
                del self._banned[next(iter(self._banned))]  # the oldest ban goes first
        self._banned[peer] = now + self.config.ban_seconds
        self.engine.peer_disconnected(peer)
        for session in self.sessions:
            session.core.ban(peer)
            session.wake.set()
        out = self._outbound.pop(peer, None)
        if out is not None:
            out.close()
        for stream in self._inbound.pop(peer, set()):
            stream.reset()
        disconnect = getattr(self.host, "disconnect", None)
        if disconnect is not None:
            self._spawn(disconnect(peer))

    def _on_host_event(self, event: HostEvent) -> None:
        if isinstance(event, PeerConnected):
            if not self.is_candidate(event.peer):
                return
            for session in self.sessions:
                session.core.add_peer(event.peer, self.now())
                session.wake.set()
        elif isinstance(event, PeerDisconnected):
            self.no_bitswap.discard(event.peer)
            self.engine.peer_disconnected(event.peer)
            self.upload_limit.forget(event.peer)
            out = self._outbound.pop(event.peer, None)
            if out is not None:
                out.close()
            for session in self.sessions:
                session.core.remove_peer(event.peer)
                session.wake.set()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        return _spawn_into(self._tasks, coro)

    async def send(self, peer: PeerId, msg: Message) -> None:
        if self.is_banned(peer):
            raise DialError(f"{peer} is banned")
        out = self._outbound.get(peer)
        if out is None:
            out = self._outbound[peer] = _Outbound(self.host, peer)
        await out.send(msg)

    # -- inbound --------------------------------------------------------------------------

    async def _handle_stream(self, stream: Stream) -> None:
        peer = stream.remote_peer
        if self.is_banned(peer):
            stream.reset()
            return
        streams = self._inbound.setdefault(peer, set())
        if len(streams) >= self.config.max_inbound_streams_per_peer:
            log.debug("refusing another bitswap stream from %s", peer)
            stream.reset()
            return
        streams.add(stream)
        # Each message is handled before the next is read: a message's blocks are hashed and
        # stored in the background (handle_message returns at once unless the peer has more
        # than max_storing_bytes of them in flight, when not reading is the backpressure), and
        # a wantlist's size lookup is one short thread trip.
        try:
            while True:
                data = await _read_message(stream)
                if data is None:
                    break
                await self.handle_message(peer, await _decode(data))
                if self.is_banned(peer):
                    break
        except PeerError as exc:
            self.penalize(peer, exc)
        except (StreamError, ConnectionClosed) as exc:
            log.debug("bitswap stream from %s ended: %r", peer, exc)
        finally:
            streams.discard(stream)
            if not streams and self._inbound.get(peer) is streams:
                del self._inbound[peer]

    async def handle_message(self, peer: PeerId, msg: Message) -> None:
        """Process one decoded message from ``peer``; raises ``PeerError`` for misbehaviour."""
        if msg.unsupported_wants:
            log.debug("%s wants %d blocks with codecs we do not serve", peer, msg.unsupported_wants)
        if msg.wantlist or msg.full:
            pending = self.engine.receive(peer, msg, defer_sizes=True)
            self._work.set()
            if pending:
                await self._size_wants(peer, pending)
        now = self.now()
        for p in msg.presences:
            for session in self.sessions:
                if p.type == PresenceType.HAVE:
                    session.core.on_have(peer, p.cid, now)
                else:
                    session.core.on_dont_have(peer, p.cid, now)
                session.wake.set()
        if msg.blocks or msg.payload:
            await self._receive_blocks(peer, msg)

    @staticmethod
    def _hash_blocks(msg: Message) -> list[tuple[CID, Buffer]]:
        out: list[tuple[CID, Buffer]] = []
        v0 = Prefix(0, DAG_PB, SHA2_256, 32)
        for data in msg.blocks:
            out.append(_hashed(v0, data))
        for block in msg.payload:
            out.append(_hashed(Prefix.from_bytes(block.prefix), block.data))
        return out

    async def _receive_blocks(self, peer: PeerId, msg: Message) -> None:
        """Verify, store and deliver a message's blocks: in a worker thread, in the background.

        The thread hashes and stores them (``_verify_and_store``), and its completion delivers
        them on the loop (``_stored``): stored and delivered together, whatever happens to the
        peer's stream or this call meanwhile (a cancel between the two once left a block on
        disk that the fetch never heard of). The work overlaps with reading the next message,
        up to ``max_storing_bytes`` per peer; a bad block is acted on when it is found.
        """
        pool = self._store_pool
        if pool is None:  # stopped: no session takes blocks any more
            log.debug("bitswap stopped: blocks from %s dropped", peer)
            return
        nbytes = sum(map(len, msg.blocks)) + sum(len(b.data) for b in msg.payload)
        storing = self._storing.get(peer)
        if storing is None:
            storing = self._storing[peer] = _Storing()
        storing.add(nbytes)
        loop = asyncio.get_running_loop()
        done = functools.partial(self._stored, peer, storing, nbytes)
        sessions = list(self.sessions)

        def job() -> None:  # in a worker thread; the outcome goes back to the loop
            received: list[_Received] | None = None  # None: dropped (stopped) or failed
            if self._store_pool is not None:
                try:
                    received = self._verify_and_store(msg, sessions)
                except Exception:  # a bug (a peer's faults are in the results), not hidden
                    log.exception("storing blocks from %s failed", peer)
            loop.call_soon_threadsafe(done, received)

        # A second thread joins once half the peer's storing allowance is taken: one thread
        # is falling behind (see _Storing), and the reader would soon stop.
        limit = self.config.max_storing_bytes
        lanes = self.config.store_lanes_per_peer if storing.nbytes > limit // 2 else 1
        storing.run(pool, job, lanes)
        if storing.nbytes > limit:
            await storing.wait_for_room(limit)

    def _stored(
        self,
        peer: PeerId,
        storing: _Storing,
        nbytes: int,
        received: list[_Received] | None,
    ) -> None:
        """(on the loop) A message's blocks were hashed and stored (``received``): deliver
        them, and cut the peer off if one was bad. None: dropped by a stop, or failed."""
        storing.done(nbytes)
        if not storing and self._storing.get(peer) is storing:
            del self._storing[peer]
        if received is None or self._store_pool is None:
            return  # the service stopped
        bad = self._deliver_received(peer, received)
        if bad is not None and not self.is_banned(peer):
            self.penalize(peer, bad)

    def _verify_and_store(self, msg: Message, sessions: list[FetchSession]) -> list[_Received]:
        """(runs in a worker thread) Hash each block, and store those a session wants; a raw
        leaf of a get_file goes into its output file instead, where the store references it
        (a block file too only when the sink cannot hold it). One trip for all of it.

        ``sessions`` were taken on the loop; a session's wants are only looked up here (a
        lookup in a dict the loop may change at the same time is safe).
        """
        out: list[_Received] = []
        for cid, data in self._hash_blocks(msg):
            wanting = [s for s in sessions if s.core.is_wanted(cid)]
            if not wanting:
                out.append(_Received(cid, data, wanting))
                continue
            try:
                held = False  # by reference, in an output file
                if cid.codec == RAW:
                    for session in wanting:  # every sink writes its places
                        if session.sink is not None and session.sink.leaf(cid, data):
                            held = True
                if not held:
                    self.store.put_sync(cid, data, verify=False)  # verified: we just hashed it
            except (PeerError, BlockstoreError) as exc:
                out.append(_Received(cid, data, wanting, exc))
                continue
            out.append(_Received(cid, data, wanting))
        return out

    def _deliver_received(self, peer: PeerId, received: list[_Received]) -> PeerError | None:
        """Hand a message's verified blocks to the sessions that want them; the first offence
        among them (a block nobody asked for, malformed dag-pb), if any."""
        ledger = self.engine.ledger(peer)
        bad: PeerError | None = None
        added = False
        for item in received:
            cid, data, wanting = item.cid, item.data, item.wanting
            ledger.blocks_received += 1
            ledger.bytes_received += len(data)
            if not wanting:
                if cid in self._recent:
                    continue  # a duplicate that crossed our cancel
                bad = bad or UnexpectedBlock(f"{peer} sent {cid}, which nobody asked for")
                continue
            if item.error is not None:
                for session in wanting:  # malformed dag-pb (the peer's fault), or our disk
                    session.fail(item.error)
                if isinstance(item.error, PeerError):
                    bad = bad or item.error
                continue
            self._remember(cid)
            for session in wanting:
                if session.sink is not None and session.sink.error is not None:
                    session.fail(session.sink.error)  # our output's disk, not the peer's fault
                else:
                    session.deliver(peer, cid, data)
            if self.engine.block_added(cid, len(data)):
                added = True
        if added:
            self._work.set()
        return bad

    def _remember(self, cid: CID) -> None:
        self._recent[cid] = None
        self._recent.move_to_end(cid)
        while len(self._recent) > self.config.recent_blocks:
            self._recent.popitem(last=False)

    # -- server ---------------------------------------------------------------------------

    def _block_size(self, cid: CID) -> int | None:
        """One block's size, on the calling thread: the engine's fallback for the odd want
        (``notify_new_blocks``); the wants of a message go through ``_block_sizes``."""
        return self._block_sizes([cid])[cid]

    def _block_sizes(self, cids: list[CID]) -> dict[CID, int | None]:
        """The size of each block we have, None for the others (runs in a worker thread)."""
        return self.store.sizes_sync(cids)  # block files and file references alike

    async def _size_wants(self, peer: PeerId, cids: list[CID]) -> None:
        """Look up the sizes of a message's wants in one trip to a worker thread.

        A peer's message may carry a thousand wants: a stat() each on the event loop stalled
        every other peer and stream while they ran.
        """
        sizes = None
        try:
            sizes = await asyncio.to_thread(self._block_sizes, cids)
        finally:  # even when cancelled: the wants must not wait for sizes forever
            self.engine.set_sizes(peer, cids, sizes)
            self._work.set()

    def notify_new_blocks(self, cids: list[CID]) -> None:
        """Blocks were added locally: serve peers that were waiting for them."""
        if any([self.engine.block_added(cid) for cid in cids]):
            self._work.set()

    def recheck_waiting(self) -> int:
        """After an import, serve every want we could not serve before and can serve now.

        The blocks are looked for in a worker thread, in the background; returns how many
        wants are rechecked. ``await recheck_waiting_now()`` waits for the answer.
        """
        wants = self.engine.unavailable()
        if wants:
            self._spawn(self._recheck(wants))
        return len(wants)

    async def recheck_waiting_now(self) -> int:
        """``recheck_waiting``, done when it returns; returns how many wants can be served."""
        return await self._recheck(self.engine.unavailable())

    async def _recheck(self, wants: set[CID]) -> int:
        if not wants:
            return 0
        sizes = await asyncio.to_thread(self._block_sizes, list(wants))
        found = 0
        for cid, size in sizes.items():
            if size is not None:
                found += 1
                if self.engine.block_added(cid, size):
                    self._work.set()
        return found

    async def _serve_loop(self) -> None:
        while True:
            batch = self.engine.next_batch()
            if batch is None:
                self._work.clear()
                await self._work.wait()
                continue
            sent = 0
            try:
                sent = await self._send_batch(batch)
            except (PeerstackError, OSError) as exc:
                log.debug("bitswap: cannot answer %s: %r", batch.peer, exc)
            finally:
                self.engine.batch_done(batch, sent)
                self._work.set()

    async def _send_batch(self, batch: Batch) -> int:
        msg = Message()
        sent = 0
        for cid in batch.blocks:
            # A block the page cache holds is read here, on the loop: a memory copy. A trip to
            # a worker thread per block cost the seeder more CPU than the read itself (thread
            # wake-ups, GIL hand-offs, a fresh megabyte faulted in per block).
            data = self.store.read_cached(cid)
            if data is None:
                try:
                    data = await self.store.get(cid)
                except BlockNotFound:
                    msg.presences.append(Presence(cid, PresenceType.DONT_HAVE))
                    continue
            msg.payload.append(m.BlockPayload(cid.prefix(), data))
            sent += len(data)
        msg.presences += [Presence(c, PresenceType.HAVE) for c in batch.haves]
        msg.presences += [Presence(c, PresenceType.DONT_HAVE) for c in batch.dont_haves]
        if not msg.is_empty():
            if sent and self.upload_limit.active:
                delay = self.upload_limit.reserve(batch.peer, sent, self.now())
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.send(batch.peer, msg)
        return sent

    # -- client ---------------------------------------------------------------------------

    async def find_providers(self, cid: CID) -> AsyncIterator[PeerId]:
        """Providers of ``cid`` from the router, connected; nothing without a router."""
        if self.routing is None:
            return
        found = 0
        async for prov in self.routing.find_providers(cid, self.config.max_providers):
            if prov.peer == self.host.peer_id or not self.is_candidate(prov.peer):
                continue
            if prov.addrs:
                self.host.add_peer_addrs(prov.peer, prov.addrs, 3600.0)
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    await self.host.connect(prov.peer)
            except (PeerstackError, OSError, TimeoutError) as exc:
                log.debug("provider %s unreachable: %r", prov.peer, exc)
                continue
            yield prov.peer
            found += 1
            if found >= self.config.max_providers:
                return

    def new_session(self) -> FetchSession:
        session = FetchSession(self)
        self.sessions.add(session)
        session.start()
        return session

    async def _end_session(self, session: FetchSession) -> None:
        # Remember what it still wants before the first await: a block already on its way
        # may land while the session closes, and must count as a late answer, not an offence.
        for cid in list(session.core.wants):
            self._remember(cid)
        self.sessions.discard(session)
        for cid in [*await session.close(), *session.sizes]:
            self._remember(cid)

    async def get_block(self, cid: CID) -> bytes:
        """One block, from the store or the network (verified and stored)."""
        with contextlib.suppress(BlockNotFound):
            return await self.store.get(cid)
        session = self.new_session()
        try:
            session.want(cid)
            while True:
                got, _data, _peer = await session.arrivals.get()
                if session.error is not None:
                    raise session.error
                if got == cid:
                    return await self.store.get(cid)
        finally:
            await self._end_session(session)

    async def fetch(
        self,
        root: CID,
        progress: ProgressCallback | None = None,
        idle_timeout: float | None = None,
    ) -> FetchResult:
        """Fetch the whole DAG under ``root`` into the store; blocks already there are kept.

        Blocks are verified and stored as they arrive, so an interrupted fetch resumes where it
        stopped. dag-pb nodes are parsed as they come and their children wanted at once.
        With ``idle_timeout``, a fetch during which no block arrives for that many seconds
        fails with ``BlocksUnavailable`` (None: wait for providers forever).
        """
        with self.store.hold(root):
            return await self._fetch(root, progress, idle_timeout)

    async def _fetch(
        self,
        root: CID,
        progress: ProgressCallback | None,
        idle_timeout: float | None,
        sink: FileSink | None = None,
    ) -> FetchResult:
        session = self.new_session()
        session.sink = sink
        walk = _Walk(self, session, ProgressTracker(self.now()))
        try:
            await walk.visit([root])
            while True:
                # Count every block already verified and stored before walking further: a
                # node's walk takes a worker-thread trip, and arrivals must not queue behind it.
                while not session.arrivals.empty():
                    walk.arrived(session.arrivals.get_nowait())
                if walk.pending:
                    await walk.expand(walk.pending.pop())
                    if progress is not None:
                        progress(walk.tracker.snapshot(self.now()))
                    continue
                if progress is not None:
                    progress(walk.tracker.snapshot(self.now(), done=walk.outstanding == 0))
                if walk.outstanding == 0:
                    break
                try:
                    async with asyncio.timeout(idle_timeout):
                        item = await session.arrivals.get()
                except TimeoutError:
                    missing = list(session.core.wants)
                    raise BlocksUnavailable(
                        root, missing, walk.tracker.blocks_done, idle_timeout or 0.0
                    ) from None
                walk.arrived(item)
        finally:
            await self._end_session(session)
        t = walk.tracker
        return FetchResult(root, t.blocks_done, t.bytes_done, t.bytes_fetched)

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One trip to a worker thread for the DAG walk (one place to count them)."""
        return await asyncio.to_thread(fn, *args)

    async def get_file(
        self,
        root: CID,
        dest: str | os.PathLike[str],
        progress: ProgressCallback | None = None,
        idle_timeout: float | None = None,
    ) -> FetchResult:
        """Fetch ``root`` and write it (file or directory) to ``dest``.

        A file is written as its blocks arrive, each leaf at its offset as soon as it is
        verified (``FileSink``), so little is left once the last block lands: an fsync (per the
        store's policy) and a rename. A directory, or a file the sink cannot place, is exported
        from the store after the fetch. The leaves written into the output are referenced there
        by the store (no second copy; ``get_keeps_copies`` stores one anyway), the other blocks
        go to the store, and the transfer is recorded there, so its blocks survive GC and a
        second call after an interruption fetches only what is missing. The output appears
        under ``dest`` only once complete (written under a temporary name, ``.<name>.partial``,
        then renamed). A get that failed for a reason a retry may overcome (no provider, a
        cancel, a full disk) keeps that file for the next call to continue; one that can never
        complete (malformed content) removes it.
        """
        target = Path(dest)
        if await asyncio.to_thread(os.path.lexists, target):
            raise UsageError(f"{target} already exists")
        await self.store.begin_transfer(root, str(target))
        with self.store.hold(root):
            sink = await asyncio.to_thread(
                FileSink.open,
                target,
                self.store,
                root,
                keep_copies=self.config.get_keeps_copies,
                direct_io=self.config.get_direct_io,
            )
            try:
                result = await self._fetch(root, progress, idle_timeout, sink)
                if not await asyncio.to_thread(sink.finish):
                    # the exporter takes over: it reads the leaves referenced in the sink's
                    # file, which discard copies into the store before it removes the file
                    await asyncio.to_thread(sink.discard)
                    tmp = partial_path(target)
                    await exporter.export(self.store, root, tmp)
                    await asyncio.to_thread(os.replace, tmp, target)
            except BaseException as exc:
                # In a thread, but waited for even when cancelled: the file is closed only
                # once no worker thread writes into it any more.
                end: Callable[[], None] = sink.suspend  # kept for the next get to continue
                if isinstance(exc, DecodeError | UsageError):  # this content never completes
                    end = functools.partial(sink.discard, keep_blocks=False)
                await asyncio.shield(asyncio.to_thread(end))
                raise
        await self.store.end_transfer(root)
        return result

    # -- providing ------------------------------------------------------------------------

    async def provide(self, cid: CID) -> bool:
        """Announce ``cid`` to the content router; False without one."""
        if self.routing is None:
            return False
        await self.routing.provide(cid)
        return True

    async def add(
        self,
        path: str | os.PathLike[str],
        profile: ImportProfile = DEFAULT_PROFILE,
        pin: bool = True,
        provide: bool = True,
    ) -> ImportResult:
        """Import a file or directory, pin it, serve waiting peers, announce the root."""
        result = await import_path(self.store, path, profile)
        if pin:
            await self.store.pin(result.cid, PinKind.RECURSIVE)
        await self.recheck_waiting_now()
        if provide:
            try:
                await self.provide(result.cid)
            except (PeerstackError, OSError) as exc:
                log.warning("could not announce %s: %r", result.cid, exc)
        return result


# Message decoding is pure Python: a legal 330 KB message of 8000 wants takes ~190 ms, so any
# message bigger than this is decoded in a worker thread (a smaller one faster than the trip).
DECODE_INLINE_MAX = 16 * 1024


# A node's children past this many are looked up in the store on a second worker-thread trip,
# once the first ones are wanted: as many as a session has in flight of 1 MiB blocks
# (SessionConfig.max_in_flight); the rest are wanted a few milliseconds later.
EXPAND_FIRST = 64

# A message at least this big is read as the pieces it arrives in, not joined into one buffer.
READ_PIECES_MIN = 128 * 1024


async def _read_message(stream: Stream) -> bytes | list[bytes] | None:
    """One ``uvarint(len) || message`` off ``stream``: a big one as its pieces (its block
    bytes are never copied into a fresh buffer); None at a clean end of the stream.

    ``LimitExceeded`` when the length is over ``MAX_MESSAGE_SIZE`` (before reading the body),
    ``StreamClosed`` when the stream ends inside a message.
    """
    length = await read_length_prefix(stream, m.MAX_MESSAGE_SIZE)
    if length is None:
        return None
    if length < READ_PIECES_MIN:
        return await stream.readexactly(length) if length else b""
    pieces: list[bytes] = []
    left = length
    while left:
        piece = await stream.read(left)
        if not piece:
            raise StreamClosed("stream ended inside a message")
        pieces.append(piece)
        left -= len(piece)
    return pieces


async def _decode(data: bytes | list[bytes]) -> Message:
    # A message of a few blocks is quick to decode whatever its size (its blocks are views, not
    # copies): only one of many fields (thousands of wants or presences) is worth a trip.
    if isinstance(data, list):
        msg = m.decode_pieces_if_cheap(data)
        if msg is not None:
            return msg
        return await asyncio.to_thread(m.decode_pieces, data)
    if len(data) <= DECODE_INLINE_MAX or m.cheap_to_decode(data):
        return m.decode(data)
    return await asyncio.to_thread(m.decode, data)


@dataclass(slots=True)
class _PendingNode:
    """A dag-pb node we hold whose children are not looked at yet."""

    cid: CID
    data: bytes
    size: int
    peer: PeerId | None  # who sent it; None when it was in the store


class _Walk:
    """The state of one fetch's DAG walk: what is seen, wanted, and still to expand.

    A dag-pb node counts as done only once its children are discovered, so ``blocks_done``
    reaches ``blocks_known`` exactly when the whole DAG is stored.
    """

    def __init__(self, bitswap: Bitswap, session: FetchSession, tracker: ProgressTracker) -> None:
        self.bitswap = bitswap
        self.session = session
        self.tracker = tracker
        self.seen: set[CID] = set()
        self.pending: list[_PendingNode] = []
        self.outstanding = 0

    def arrived(self, item: tuple[CID, bytes | None, PeerId | None]) -> None:
        """A block of the session was verified and stored (or the session failed)."""
        if self.session.error is not None:
            raise self.session.error
        cid, data, peer = item
        self.outstanding -= 1
        size = self.session.sizes.get(cid, 0)
        if data is None:
            self.tracker.block(size, self.bitswap.now(), peer)
        else:
            self.pending.append(_PendingNode(cid, data, size, peer))

    async def visit(self, cids: list[CID]) -> None:
        """Look up all of ``cids`` in the store in one worker-thread trip; want the rest."""
        fresh, local, _ = await self.bitswap.in_thread(self._lookup, None, None, cids)
        self._check_sink()
        self._found(fresh, local)

    async def expand(self, node: _PendingNode) -> None:
        """Decode ``node`` and look up its children: one worker-thread trip for both, and a
        second for the children past the first ``EXPAND_FIRST`` of a big node (those are
        wanted meanwhile: the store lookups of a thousand children took longer than the
        first blocks take to arrive)."""
        fresh, local, rest = await self.bitswap.in_thread(
            self._lookup, node.cid, node.data, [], EXPAND_FIRST
        )
        self._check_sink()
        self.tracker.block(node.size, self.bitswap.now(), node.peer)
        self._found(fresh, local)
        if rest:
            fresh, local, _ = await self.bitswap.in_thread(self._lookup, None, None, rest)
            self._check_sink()
            self._found(fresh, local)

    def _check_sink(self) -> None:
        sink = self.session.sink
        if sink is not None and sink.error is not None:
            raise sink.error

    def _lookup(
        self, cid: CID | None, data: bytes | None, cids: list[CID], limit: int | None = None
    ) -> tuple[list[CID], dict[CID, tuple[int, bytes | None]], list[CID]]:
        """(runs in a worker thread) The unseen CIDs among ``cids`` or the links of node
        ``cid`` (its bytes ``data``), and those of them that are stored. A get_file's output
        gets the node's place in the file and the stored leaves under it on the same trip.
        With ``limit``, only the first ``limit`` unseen CIDs are looked up; the others come
        back third, not looked up. ``seen`` is only read here; the loop awaits this call."""
        sink = self.session.sink
        if cid is not None and data is not None:
            node = dagpb.decode(data)
            if sink is not None:
                sink.node(cid, node)  # places the children before they are looked up
            cids = [link.hash for link in node.links]
        fresh = list(dict.fromkeys(c for c in cids if c not in self.seen))
        rest: list[CID] = []
        if limit is not None:
            fresh, rest = fresh[:limit], fresh[limit:]
        local = self.bitswap.store.lookup_many_sync(fresh)
        if sink is not None:
            for absent in sink.from_store(list(local)):
                del local[absent]  # a referenced file changed: fetch the block instead
        return fresh, local, rest

    def _found(self, fresh: list[CID], local: dict[CID, tuple[int, bytes | None]]) -> None:
        self.seen.update(fresh)
        self.tracker.discovered(len(fresh))
        now = self.bitswap.now()
        nodes: list[_PendingNode] = []
        for cid in fresh:
            hit = local.get(cid)
            if hit is None:
                self.session.want(cid)
                self.outstanding += 1
            elif hit[1] is None:
                self.tracker.block(hit[0], now)
            else:
                nodes.append(_PendingNode(cid, hit[1], hit[0], None))
        self.pending.extend(reversed(nodes))  # depth first, in link order


class Reprovider:
    """Re-announces every pinned root at an interval, so provider records do not expire.

    Provider records live 48 h in the DHT and are republished every 22 h by convention; the
    default here (12 h) leaves room for a missed round.
    """

    def __init__(
        self, store: Blockstore, routing: ContentRouting, interval: float = 12 * 3600.0
    ) -> None:
        self.store = store
        self.routing = routing
        self.interval = interval
        self.last_count = 0

    async def reprovide_once(self) -> int:
        count = 0
        for cid, _kind in await self.store.pins():
            try:
                await self.routing.provide(cid)
                count += 1
            except (PeerstackError, OSError) as exc:
                log.warning("reprovide of %s failed: %r", cid, exc)
        self.last_count = count
        return count

    async def run(self) -> None:
        while True:
            await self.reprovide_once()
            await asyncio.sleep(self.interval)


__all__ = [
    "PROTOCOLS",
    "Bitswap",
    "BitswapConfig",
    "BlocksUnavailable",
    "ContentRouting",
    "FetchError",
    "FetchResult",
    "FetchSession",
    "Provider",
    "Reprovider",
    "UnexpectedBlock",
]

"""``Node``: a host with the standard services, its identity, configuration and repo.

    async with Node(repo="~/.peerstack") as node:
        print(node.addrs)
        rtts = await node.ping("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...", count=3)
        cid = await node.add("photo.jpg")
        info = await node.dht.find_peer(some_peer_id)

Without a repo a node gets a fresh identity and listens on ``/ip4/127.0.0.1/tcp/0`` (any free
loopback port); with one it uses the repo's key and ``config.toml``. ``listen`` overrides the
configured listen addresses either way.

Every node serves identify (+push) and ping; perf and echo only when the config's
``[services]`` or ``enable=`` turns them on (a perf server sends a peer whatever it asks for:
on by default, any peer could spend our bandwidth), and then at most ``PERF_MAX_STREAMS`` perf
streams at once, each at most ``PERF_MAX_SERVE`` bytes. A node on a repo also runs, by default,
the Kademlia DHT (state in the repo's SQLite database) and Bitswap over the repo's blockstore,
with the DHT as its content router (pins the DHT does not provide yet are handed to it
periodically; the DHT republishes what it provides); ``dht=`` and ``content=`` turn them on or
off (a node without a repo is a bare host unless given ``dht=True``: tests and tools that bring
their own services use it so). Handlers registered through ``Node.set_stream_handler`` after
start are announced to connected peers by identify push.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from peerstack.app_records import NAMESPACE, AppRecordValidator
from peerstack.config import EPHEMERAL_LISTEN, Config, parse_multiaddr
from peerstack.content import exporter
from peerstack.content.bitswap.progress import Progress
from peerstack.content.bitswap.service import (
    Bitswap,
    BitswapConfig,
    BlocksUnavailable,
    FetchResult,
)
from peerstack.content.blockstore import (
    Blockstore,
    GCResult,
    PinKind,
    VerifyReport,
)
from peerstack.content.dagpb import decode as decode_dagpb
from peerstack.content.importer import DEFAULT_PROFILE, LEGACY_PROFILE, ImportProfile, import_path
from peerstack.content.routing import DhtContentRouting
from peerstack.core.cid import CID, DAG_PB
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.config import DhtConfig, Mode
from peerstack.dht.providers import DhtStore, MemoryDhtStore, SqliteDhtStore
from peerstack.dht.records import Validators
from peerstack.dht.service import KadDHT
from peerstack.errors import DecodeError, DialError, PeerError, PeerstackError, UsageError
from peerstack.host.host import BasicHost
from peerstack.host.interface import Stream, StreamHandler
from peerstack.host.peerstore import Peerstore
from peerstack.node_dht import NodeDht, attach_identify
from peerstack.protocols import echo, perf, ping
from peerstack.protocols.identify import IdentifyInfo, IdentifyService
from peerstack.repo import Repo
from peerstack.wire.yamux import YamuxConfig

log = logging.getLogger(__name__)

Target = str | Multiaddr | PeerId

#: Peerstore metadata key counting a peer's protocol violations.
MISBEHAVIOUR_KEY = "misbehaviour"

#: Seconds from start to a long-lived node's first reprovide round.
REPROVIDE_FIRST_DELAY = 30.0

#: Seconds a get, cat or pin waits for the next block before it calls the content
#: unavailable (every provider gone): long enough for a slow peer, short enough to tell.
DEFAULT_IDLE_TIMEOUT = 60.0

#: The most one perf stream may ask this node to send (enough for any benchmark here).
PERF_MAX_SERVE = 16 * 1024**3
#: Perf streams served at once, over all peers; more are reset at once.
PERF_MAX_STREAMS = 4

#: Import profiles by the names the CLI offers.
PROFILES: dict[str, ImportProfile] = {
    "default": DEFAULT_PROFILE,
    "legacy": LEGACY_PROFILE,
    "kubo-legacy": LEGACY_PROFILE,
}


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """Progress of an ``add`` or a ``get``, as the CLI's progress bars show it."""

    bytes_done: int
    bytes_total: int | None  # None while unknown
    blocks_done: int
    peers: int = 0  # peers that delivered blocks (get)
    rate: float = 0.0  # bytes per second, recent
    done: bool = False


ProgressFn = Callable[[TransferProgress], None]


class GcLock:
    """Imports and fetches share it; ``repo gc`` takes it alone.

    Blocks of an import are unpinned until the import ends (the root is known last), so a GC
    running meanwhile would delete them: work that writes blocks holds the lock shared and GC
    waits for all of it to finish (and keeps new work waiting while it runs).
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            async with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._exclusive = True
        try:
            yield
        finally:
            async with self._cond:
                self._exclusive = False
                self._cond.notify_all()

    @property
    def busy(self) -> int:
        """How many imports and fetches hold the lock now."""
        return self._shared


def parse_cid(text: str | CID) -> CID:
    """A CID from user input; a bad one is the caller's ``UsageError``."""
    if isinstance(text, CID):
        return text
    try:
        return CID.parse(text.strip())
    except (DecodeError, UsageError) as exc:
        raise UsageError(f"bad CID {text!r}: {exc}") from None


class NotFound(PeerstackError):
    """Nobody on the network gave us the content (or the record) in time."""


class Node:
    """A peerstack node: ``BasicHost`` + identify, ping, perf, echo (+ DHT, Bitswap on a repo)."""

    def __init__(
        self,
        *,
        repo: Repo | Path | str | None = None,
        key: PrivateKey | None = None,
        listen: Sequence[str | Multiaddr] | None = None,
        config: Config | None = None,
        dht: bool | None = None,
        content: bool | None = None,
        dht_mode: str | None = None,
        bootstrap: Sequence[str | Multiaddr] = (),
        background: bool = True,
        enable: Sequence[str] = (),
        upload_rate: float | None = None,
    ) -> None:
        """``dht``/``content`` default to on with a repo, off without one (content needs one).

        ``upload_rate`` (bytes/s) overrides the configured node-wide cap on the blocks Bitswap
        serves (``[bitswap] upload_rate``); None keeps the configured one.

        ``enable`` turns on optional services (``perf``, ``echo``) besides the configured ones.

        ``dht_mode`` (``server``/``client``) overrides the configured mode; ``bootstrap`` adds
        peers to the configured ones. ``background`` runs the upkeep a long-lived node needs
        (DHT bootstrap retries and refresh, reprovider); one-shot commands turn it off.
        """
        if isinstance(repo, str | Path):
            repo = Repo.open(repo)
        self.repo = repo
        if config is None:
            config = repo.config() if repo is not None else Config(listen=EPHEMERAL_LISTEN)
        if listen is not None:
            config = dataclasses.replace(config, listen=tuple(str(a) for a in listen))
        if dht_mode is not None:
            config = dataclasses.replace(config, dht_mode=dht_mode)
        if upload_rate is not None:
            config = dataclasses.replace(config, upload_rate=upload_rate)
        config = config.with_services(enable)
        self.config = config
        self._bootstrap = [parse_multiaddr(a) for a in (*config.bootstrap, *bootstrap)]
        for addr in self._bootstrap:
            if addr.decapsulate_p2p()[1] is None:
                raise UsageError(f"bootstrap address {addr} needs a /p2p/<peer id> part")
        self._want_dht = (repo is not None) if dht is None else dht
        self._want_content = (repo is not None) if content is None else content
        if self._want_content and repo is None:
            raise UsageError("content services need a repo (Node(repo=...))")
        self._background = background
        if key is None:
            key = repo.identity() if repo is not None else PrivateKey.generate()
        self._key = key
        self._peer_id = PeerId.from_public_key(key.public_key)
        self._host: BasicHost | None = None
        self._identify: IdentifyService | None = None
        self._kad: KadDHT | None = None
        self._dht_store: DhtStore | None = None
        self._dht: NodeDht | None = None
        self._blockstore: Blockstore | None = None
        self._bitswap: Bitswap | None = None
        self._reprovider: PinAnnouncer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._locked = False
        self.gc_lock = GcLock()
        self._perf_active = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._host is not None:
            raise UsageError("node already started")
        if self.repo is not None and (self._want_dht or self._want_content):
            self.repo.lock()  # state on disk: one process at a time
            self._locked = True
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        cfg = self.config
        host = BasicHost(
            self._key,
            listen_addrs=cfg.listen_addrs(),
            limits=cfg.limits,
            yamux_config=YamuxConfig(
                keepalive_interval=cfg.keepalive_interval, keepalive_timeout=cfg.keepalive_timeout
            ),
        )
        self._host = host
        # Handlers go in before the listeners open, so no early peer meets a missing protocol;
        # identify starts right after (no await in between), so it sees every connection.
        ping.register(host)
        if self.config.perf:
            host.set_stream_handler(perf.PERF, self._serve_perf)
        if self.config.echo:
            echo.register(host)
        if self._want_dht:
            self._kad = self._make_dht(host)  # started below, once identify and listeners are up
            self._dht = NodeDht(self._kad)
        if self._want_content:
            assert self.repo is not None
            self._blockstore = await asyncio.to_thread(Blockstore, self.repo.path)
            routing = DhtContentRouting(self._kad) if self._kad is not None else None
            self._bitswap = Bitswap(
                host,
                self._blockstore,
                routing,
                BitswapConfig(
                    get_keeps_copies=self.config.get_keeps_copies,
                    get_direct_io=self.config.get_direct_io,
                ),
                upload_rate=self.config.upload_rate,
                upload_rate_per_peer=self.config.upload_rate_per_peer,
            )
            await self._bitswap.start()
            if self._kad is not None and self._dht_store is not None:
                self._reprovider = PinAnnouncer(
                    self._blockstore, self._kad, self._dht_store, self.config.reprovide_interval
                )
        identify = IdentifyService(
            host,
            host.peerstore,
            self._key.public_key,
            host.protocols,
            agent_version=self.config.agent_version,
            on_peer_error=self._penalize,
        )
        self._identify = identify
        if self._kad is not None:
            attach_identify(self._kad, identify)  # servers admitted from identify, no probe
        identify.start()
        await host.start()
        if self._kad is not None:
            # Its upkeep dials at once: earlier, a peer would meet us without identify (and be
            # admitted without our addresses). No await between host.start() and the handler
            # going in, so no inbound stream can meet the kad protocol missing.
            await self._kad.start()
        if self._background and self._reprovider is not None:
            self._spawn(self._reprovide_loop(self._reprovider))
        if self._background and self._kad is not None and self._bootstrap:
            self._spawn(self._bootstrap_loop())

    def _make_dht(self, host: BasicHost) -> KadDHT:
        cfg = self.config
        loopback_only = all(_is_loopback(a) for a in cfg.listen_addrs())
        lift = cfg.dht_diversity == "off" or (cfg.dht_diversity == "auto" and loopback_only)
        dht_config = DhtConfig(
            mode=Mode(cfg.dht_mode),
            bootstrap_peers=list(self._bootstrap),
            background=self._background,
            max_per_group_bucket=None if lift else 2,
            max_per_group_table=None if lift else 5,
        )
        validators = Validators()
        validators.register(NAMESPACE, AppRecordValidator())
        store: DhtStore
        if self.repo is not None:
            store = SqliteDhtStore(self.repo.state_db_path, dht_config.store_limits)
        else:
            store = MemoryDhtStore(dht_config.store_limits)
        self._dht_store = store
        return KadDHT(host, dht_config, store=store, validators=validators)

    async def _bootstrap_loop(self, backoff: float = 1.0, backoff_max: float = 300.0) -> None:
        """Reach a configured bootstrap peer, retrying with exponential backoff until one answers.

        The DHT bootstraps by itself only while its routing table is empty; a table loaded from
        the repo may hold only peers that are gone, so the node keeps at its bootstrap peers
        until one of them answers (and then lets the DHT look itself up through it).
        """
        while True:
            try:
                await self.join(self._bootstrap)
                return
            except (PeerstackError, OSError) as exc:
                log.info("bootstrap failed, retrying in %.0f s: %s", backoff, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, backoff_max)

    async def _reprovide_loop(self, reprovider: PinAnnouncer) -> None:
        # The first round comes soon after start (once the DHT has had time to join), so what
        # was pinned while no daemon ran gets announced with this node's addresses.
        await asyncio.sleep(min(REPROVIDE_FIRST_DELAY, reprovider.interval))
        while True:
            await reprovider.announce_new_pins()
            await asyncio.sleep(reprovider.interval)

    async def _serve_perf(self, stream: Stream) -> None:
        """One perf request, within the node's bounds on streams at once and bytes per stream."""
        if self._perf_active >= PERF_MAX_STREAMS:
            log.debug(
                "perf: refused a stream from %s: %d already served",
                stream.remote_peer,
                self._perf_active,
            )
            stream.reset()
            return
        self._perf_active += 1
        try:
            await perf.handle_perf(stream, max_serve=PERF_MAX_SERVE)
        finally:
            self._perf_active -= 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("node background task failed: %r", task.exception())

    async def close(self) -> None:
        """Stop everything, in order: background tasks, services, the host, then the files.

        Every step runs even when an earlier one fails (the first failure is raised after),
        so a failing service never leaves the host listening, SQLite open or the repo locked.
        The blockstore closes in a worker thread: closing waits on its lock for a worker thread
        that may still be using it, and that wait must not block the event loop.
        """
        tasks, self._tasks = list(self._tasks), set()
        bitswap, self._bitswap = self._bitswap, None
        kad, self._kad, self._dht = self._kad, None, None
        identify, self._identify = self._identify, None
        host, self._host = self._host, None
        store, self._dht_store = self._dht_store, None
        blockstore, self._blockstore = self._blockstore, None
        self._reprovider = None
        locked, self._locked = self._locked, False
        async with contextlib.AsyncExitStack() as steps:
            # Callbacks run last-in first-out: pushed here in the reverse of the stop order.
            if locked and self.repo is not None:
                steps.callback(self.repo.unlock)
            if blockstore is not None:
                steps.push_async_callback(asyncio.to_thread, blockstore.close)
            if store is not None:
                steps.callback(store.close)  # its handle belongs to the loop's thread
            if host is not None:
                steps.push_async_callback(host.close)
            if identify is not None:
                steps.push_async_callback(identify.close)
            if kad is not None:
                steps.push_async_callback(kad.stop)  # saves the routing table
            if bitswap is not None:
                steps.push_async_callback(bitswap.stop)
            for task in tasks:
                task.cancel()
            # A task that fails while it stops was already logged by _task_done.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _penalize(self, peer: PeerId, error: PeerError) -> None:
        """Count a peer's protocol violations in the peerstore (``misbehaviour``).

        The connection manager and the DHT can read the count to prefer well-behaved peers;
        nothing is disconnected here, the offending stream was already reset.
        """
        ps = self.host.peerstore
        count = ps.metadata(peer, MISBEHAVIOUR_KEY)
        with contextlib.suppress(PeerstackError):
            ps.set_metadata(peer, MISBEHAVIOUR_KEY, (count if isinstance(count, int) else 0) + 1)
        log.info("%s misbehaved: %s", peer, error)

    # -- parts --------------------------------------------------------------------------------

    @property
    def host(self) -> BasicHost:
        if self._host is None:
            raise UsageError("node is not started")
        return self._host

    @property
    def identify(self) -> IdentifyService:
        if self._identify is None:
            raise UsageError("node is not started")
        return self._identify

    @property
    def dht(self) -> NodeDht:
        """The DHT verbs (find_peer, put, get, provide, find_providers, names)."""
        if self._dht is None:
            raise UsageError("this node runs no DHT" if self._host else "node is not started")
        return self._dht

    @property
    def kad(self) -> KadDHT:
        """The Kademlia service itself (routing table, lookup statistics)."""
        return self.dht.kad

    @property
    def blockstore(self) -> Blockstore:
        if self._blockstore is None:
            raise UsageError(
                "this node has no blockstore (it needs a repo)"
                if self._host
                else "node is not started"
            )
        return self._blockstore

    @property
    def bitswap(self) -> Bitswap:
        if self._bitswap is None:
            raise UsageError(
                "this node runs no Bitswap (it needs a repo)"
                if self._host
                else "node is not started"
            )
        return self._bitswap

    @property
    def peerstore(self) -> Peerstore:
        return self.host.peerstore

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    @property
    def private_key(self) -> PrivateKey:
        return self._key

    @property
    def addrs(self) -> list[Multiaddr]:
        """Our listen addresses with ``/p2p/<our id>``, ready to hand to another peer."""
        suffix = Multiaddr(f"/p2p/{self._peer_id}")
        return [a.decapsulate_p2p()[0].encapsulate(suffix) for a in self.host.listen_addrs()]

    def protocols(self) -> list[str]:
        """The protocol ids we serve."""
        return self.host.protocols()

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``; connected peers learn of it through identify push."""
        new = protocol not in self.host.protocols()
        self.host.set_stream_handler(protocol, handler)
        if new:
            self.identify.notify_changed()

    def remove_stream_handler(self, protocol: str) -> None:
        known = protocol in self.host.protocols()
        self.host.remove_stream_handler(protocol)
        if known:
            self.identify.notify_changed()

    # -- talking to peers ---------------------------------------------------------------------

    async def connect(self, target: Target) -> PeerId:
        """Connect to a multiaddr (with or without ``/p2p/<id>``) or a known peer.

        Returns the peer's id once the connection is up and identify has had its chance to
        run (a peer that fails identify is still connected).
        """
        if isinstance(target, PeerId):
            peer = target
            await self.host.connect(peer)
        else:
            addr = parse_multiaddr(target)
            bare, pid = addr.decapsulate_p2p()
            if pid is None:
                peer = await self.host.dial(bare)
            else:
                try:
                    peer = PeerId.from_string(pid)
                except DecodeError as exc:
                    raise UsageError(f"bad peer id {pid!r}: {exc}") from None
                if peer == self._peer_id:
                    raise UsageError("cannot connect to ourselves")
                await self.host.connect(peer, [bare])
        with contextlib.suppress(PeerstackError, TimeoutError):
            await self.identify.wait_identified(peer)
        return peer

    async def bootstrap(self, attempts: int = 3, backoff: float = 0.5) -> int:
        """Join the DHT through the bootstrap peers now, retrying with backoff.

        For one-shot commands (long-lived nodes do this in the background). Returns the size of
        the routing table; ``DialError`` if no bootstrap peer could be reached at all.
        """
        kad = self.kad
        if not self._bootstrap:
            return len(kad.routing_table)
        for attempt in range(attempts):
            if await kad.bootstrap():
                return len(kad.routing_table)
            if attempt + 1 < attempts:
                await asyncio.sleep(backoff * 2**attempt)
        addrs = ", ".join(str(a) for a in self._bootstrap)
        raise DialError(f"could not reach any bootstrap peer ({addrs})")

    async def join(self, addrs: Sequence[str | Multiaddr]) -> int:
        """Connect to ``addrs`` (any one is enough) and bootstrap the DHT through them.

        Unlike ``bootstrap`` this checks the peers named here, not just the routing table
        (which may hold peers saved by an earlier run): ``DialError`` if none answers.
        """
        targets = [parse_multiaddr(a) for a in addrs]
        errors: list[str] = []
        for addr in targets:
            try:
                await self.connect(addr)
            except (PeerstackError, OSError, TimeoutError) as exc:
                errors.append(f"{addr}: {exc or type(exc).__name__}")
        if targets and len(errors) == len(targets):
            raise DialError("could not reach any bootstrap peer: " + "; ".join(errors))
        if self._kad is None:
            return 0
        await self._kad.bootstrap()
        return len(self._kad.routing_table)

    async def ping(self, target: Target, count: int = 1) -> list[float]:
        """Ping ``target`` ``count`` times; round-trip times in seconds (also in the peerstore)."""
        peer = await self.connect(target)
        return await ping.ping(self.host, peer, count, peerstore=self.peerstore)

    async def perf(self, target: Target, upload: int, download: int) -> perf.PerfResult:
        """Send ``upload`` bytes to ``target`` and receive ``download`` bytes back."""
        peer = await self.connect(target)
        return await perf.perf(self.host, peer, upload, download)

    async def echo(self, target: Target, data: bytes) -> bytes:
        peer = await self.connect(target)
        return await echo.echo(self.host, peer, data)

    def identify_info(self, peer: PeerId) -> IdentifyInfo | None:
        """What ``peer`` told us about itself in identify (and later pushes)."""
        return self.identify.info(peer)

    def observed_addrs(self) -> list[Multiaddr]:
        """Addresses other peers reported seeing us at, most reported first."""
        return self.identify.observed.addrs()

    # -- names (IPNS) -------------------------------------------------------------------------

    async def name_publish(
        self, value: str, *, lifetime: float = 48 * 3600.0, ttl: float = 3600.0
    ) -> tuple[PeerId, int]:
        """Point our IPNS name (our PeerId) at ``value``; returns the name and the sequence.

        A bare CID becomes ``/ipfs/<cid>``.
        """
        return await self.dht.publish_name(self._key, value, lifetime=lifetime, ttl=ttl)

    async def name_resolve(self, name: str | PeerId) -> str:
        """What the IPNS name (a PeerId, or ``/ipns/<peer id>``) points at now."""
        return await self.dht.resolve_name(name)

    # -- content ------------------------------------------------------------------------------

    async def add(
        self,
        path: str | os.PathLike[str],
        *,
        recursive: bool = False,
        profile: str | ImportProfile = "default",
        pin: bool = True,
        provide: str | None = None,
        progress: ProgressFn | None = None,
    ) -> CID:
        """Import a file (or with ``recursive`` a directory tree), pin it and announce it.

        ``provide`` (``roots``, ``all`` or ``none``; default from config) says what goes to the
        DHT. A failed announcement is logged, not raised: the content is stored either way.
        """
        store, bitswap = self.blockstore, self.bitswap
        prof = _profile(profile)
        mode = self.config.provide if provide is None else provide
        if mode not in ("roots", "all", "none"):
            raise UsageError(f"provide must be roots, all or none, not {mode!r}")
        src = Path(path)
        total = await asyncio.to_thread(_input_size, src, recursive)
        # The importer counts bytes per file. A report of at most one chunk is the first of a
        # new file (every later report of a file is past its first full chunk), so the bytes
        # of the files before it are added in to give the whole import's progress.
        done = {"files": 0, "file": 0, "blocks": 0, "file_blocks": 0}

        def on_progress(nbytes: int, blocks: int) -> None:
            if nbytes <= prof.chunk_size:
                done["files"] += done["file"]
                done["blocks"] += done["file_blocks"]
            done["file"], done["file_blocks"] = nbytes, blocks
            if progress is not None:
                progress(TransferProgress(done["files"] + nbytes, total, done["blocks"] + blocks))

        async with self.gc_lock.shared():
            result = await import_path(store, src, prof, on_progress if progress else None)
            if pin:
                await store.pin(result.cid, PinKind.RECURSIVE)
        # Awaited, not left to a background task: a peer waiting for these blocks is queued
        # for them before add returns.
        await bitswap.recheck_waiting_now()
        if progress is not None:
            progress(TransferProgress(total, total, 0, done=True))
        if mode != "none" and self._kad is not None and len(self._kad.routing_table):
            await self._announce(result.cid, everything=mode == "all")
        return result.cid

    async def _announce(self, root: CID, everything: bool) -> None:
        cids = [root]
        if everything:
            cids = await self._dag_cids(root)
        for cid in cids:
            try:
                await self.bitswap.provide(cid)
            except (PeerstackError, OSError) as exc:
                log.warning("could not announce %s: %r", cid, exc)

    async def _dag_cids(self, root: CID) -> list[CID]:
        out: list[CID] = []
        seen: set[CID] = set()
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            out.append(cid)
            stack.extend(await self.blockstore.children(cid))
        return out

    async def _root_block(self, root: CID, find_timeout: float | None) -> bytes:
        """The root block, from the store or the network; ``NotFound`` after ``timeout`` s."""
        try:
            async with asyncio.timeout(find_timeout):
                return await self.bitswap.get_block(root)
        except TimeoutError:
            raise NotFound(
                f"could not find {root} on the network (nobody had it within {find_timeout:g} s)"
            ) from None

    async def _dag_size(self, root: CID, find_timeout: float | None) -> int | None:
        """Bytes of every block under ``root``: the root block plus its links' Tsizes."""
        block = await self._root_block(root, find_timeout)
        if root.codec != DAG_PB:
            return len(block)
        links = decode_dagpb(block).links
        if any(link.tsize is None for link in links):
            return None
        return len(block) + sum(link.tsize or 0 for link in links)

    async def get(
        self,
        cid: str | CID,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressFn | None = None,
        find_timeout: float | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    ) -> FetchResult:
        """Fetch ``cid`` (file or directory) and write it to ``dest``, which must not exist.

        Blocks are verified and stored as they arrive and the transfer is recorded, so an
        interrupted get resumes from the blocks it has. The output is written under a hidden
        temporary name next to ``dest`` and renamed only when complete; the leaves in it are
        held by reference, not copied into the store (``[content] get_keeps_copies``), so a get
        that fails for a reason a retry may overcome leaves that file for the next get of the
        same ``dest`` to continue in. ``find_timeout`` bounds the
        search for the root block (``NotFound``), not the transfer. ``idle_timeout`` bounds the
        wait for the next block once the transfer runs (``BlocksUnavailable``: every provider
        is gone; None waits forever).
        """
        root = parse_cid(cid)
        target = Path(dest)
        await asyncio.to_thread(_check_dest, target)
        store, bitswap = self.blockstore, self.bitswap
        async with self.gc_lock.shared():
            with store.hold(root):
                # Recorded once the root is here: a CID nobody has leaves no transfer behind.
                total = await self._dag_size(root, find_timeout)
                await store.begin_transfer(root, str(target))

                def on_fetch(p: Progress) -> None:
                    if progress is not None:
                        progress(_transfer_progress(p, total))

                await asyncio.to_thread(_clean_partials, target)
                try:
                    # a file is written as its blocks arrive; a directory is exported after
                    result = await bitswap.get_file(root, target, on_fetch, idle_timeout)
                except BaseException:
                    await asyncio.to_thread(_clean_partials, target)
                    raise
            await store.end_transfer(root)
        if progress is not None:
            progress(
                TransferProgress(
                    result.bytes,
                    total if total is not None else result.bytes,
                    result.blocks,
                    0,
                    0.0,
                    done=True,
                )
            )
        return result

    async def cat(
        self,
        cid: str | CID,
        offset: int = 0,
        length: int | None = None,
        *,
        find_timeout: float | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    ) -> AsyncGenerator[bytes, None]:
        """The bytes of the file at ``cid`` (fetched as needed), from ``offset``, ``length``.

        ``find_timeout`` and ``idle_timeout`` as for ``get``.
        """
        root = parse_cid(cid)
        if offset < 0 or (length is not None and length < 0):
            raise UsageError("offset and length must not be negative")
        bitswap = self.bitswap
        async with self.gc_lock.shared():
            with self.blockstore.hold(root):
                await self._root_block(root, find_timeout)
                getter = _getter(bitswap, root, idle_timeout)
                async for piece in exporter.cat(getter, root, offset, length):
                    yield piece

    async def pin_add(
        self,
        cid: str | CID,
        *,
        recursive: bool = True,
        find_timeout: float | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    ) -> CID:
        """Pin ``cid``; its blocks are fetched first if missing (all of them when recursive).

        ``find_timeout`` and ``idle_timeout`` as for ``get``.
        """
        root = parse_cid(cid)
        async with self.gc_lock.shared():
            await self._root_block(root, find_timeout)
            if recursive:
                await self.bitswap.fetch(root, None, idle_timeout)
            else:
                await self.bitswap.get_block(root)
            await self.blockstore.pin(root, PinKind.RECURSIVE if recursive else PinKind.DIRECT)
        return root

    async def pin_rm(self, cid: str | CID) -> CID:
        root = parse_cid(cid)
        if not await self.blockstore.unpin(root):
            raise UsageError(f"{root} is not pinned")
        return root

    async def pin_ls(self) -> list[tuple[CID, PinKind]]:
        return await self.blockstore.pins()

    async def repo_gc(self) -> GCResult:
        """Delete unpinned blocks; waits for imports and fetches in progress to finish."""
        async with self.gc_lock.exclusive():
            return await self.blockstore.gc()

    async def repo_verify(self, *, remove_damaged: bool = False) -> VerifyReport:
        return await self.blockstore.verify(remove_damaged)

    async def repo_stat(self) -> dict[str, Any]:
        store = self.blockstore
        held = await asyncio.to_thread(store.stat_sync)
        pins = await store.pins()
        transfers = await store.transfers()
        return {
            "repo": str(self.repo.path) if self.repo is not None else None,
            "blocks": held.blocks,  # block files in the store
            "size": held.size,
            # blocks held by reference in files outside the store (the outputs of gets)
            "referenced_blocks": held.referenced_blocks,
            "referenced_size": held.referenced_size,
            "pins": len(pins),
            "transfers": len(transfers),
        }


class PinAnnouncer:
    """Hands every pinned root to the DHT once; the DHT's own republish keeps it announced.

    The DHT persists the keys it provides and republishes them itself (every 22 h), so this
    only announces pins it does not know yet (added with ``provide=none``, pinned by a one-shot
    command, or from before the DHT's table existed): each root is announced once per DHT
    republish interval, not once by each of two schedulers.
    """

    def __init__(
        self, store: Blockstore, kad: KadDHT, dht_store: DhtStore, interval: float
    ) -> None:
        self.store = store
        self.kad = kad
        self.dht_store = dht_store
        self.interval = interval
        #: Rounds done and roots handed over, for status and tests.
        self.rounds = 0
        self.last_count = 0

    async def announce_new_pins(self) -> int:
        count = 0
        for cid, _kind in await self.store.pins():
            key = cid.multihash.to_bytes()
            if self.dht_store.has_own_provide(key):
                continue
            try:
                reached = await self.kad.provide(key)
            except (PeerstackError, OSError) as exc:
                log.warning("announcing pin %s failed: %r", cid, exc)
                continue
            if not reached:
                # Nobody heard it (no peers yet): make it due, so the DHT's next republish
                # round tries again instead of waiting a whole interval.
                self.dht_store.mark_republished(key, 0.0)
            count += 1
        self.last_count = count
        self.rounds += 1
        return count


class _BlockGetter:
    """Blocks for the exporter: from the store, or fetched (verified, stored) by Bitswap.

    With ``idle_timeout``, a block that no peer delivers within that many seconds ends the
    read with ``BlocksUnavailable``, as a whole-DAG fetch does; the blocks read so far are
    verified and stay in the store.
    """

    def __init__(self, bitswap: Bitswap, root: CID, idle_timeout: float | None) -> None:
        self._bitswap = bitswap
        self._root = root
        self._idle_timeout = idle_timeout
        self._read = 0

    async def get(self, cid: CID) -> bytes:
        try:
            async with asyncio.timeout(self._idle_timeout):
                data = await self._bitswap.get_block(cid)
        except TimeoutError:
            raise BlocksUnavailable(
                self._root, [cid], self._read, self._idle_timeout or 0.0
            ) from None
        self._read += 1
        return data


def _getter(bitswap: Bitswap, root: CID, idle_timeout: float | None = None) -> _BlockGetter:
    return _BlockGetter(bitswap, root, idle_timeout)


def _transfer_progress(p: Progress, total: int | None) -> TransferProgress:
    return TransferProgress(p.bytes_done, total, p.blocks_done, p.peers, p.rate, done=False)


def _profile(profile: str | ImportProfile) -> ImportProfile:
    if isinstance(profile, ImportProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise UsageError(f"unknown profile {profile!r} (choose default or legacy)") from None


def _is_loopback(addr: Multiaddr) -> bool:
    v4 = addr.value_for("ip4")
    if v4 is not None:
        return v4.startswith("127.")
    return addr.value_for("ip6") == "::1"


def _input_size(path: Path, recursive: bool) -> int:
    """Bytes ``add`` will read; ``UsageError`` for what it cannot add."""
    if not os.path.lexists(path):
        raise UsageError(f"{path}: no such file or directory")
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link")
    if path.is_dir():
        if not recursive:
            raise UsageError(f"{path} is a directory (use -r to add it)")
        total = 0
        for root, _dirs, files in os.walk(path):
            for name in files:
                p = Path(root) / name
                if not p.is_symlink():
                    with contextlib.suppress(OSError):
                        total += p.stat().st_size
        return total
    if not path.is_file():
        raise UsageError(f"{path} is neither a file nor a directory")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: permission denied")
    return path.stat().st_size


def _check_dest(target: Path) -> None:
    if os.path.lexists(target):
        raise UsageError(f"{target} already exists")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"{parent}: no such directory")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{parent}: permission denied")


def _partials(target: Path) -> Iterator[Path]:
    """Leftovers of an interrupted get of ``target``: the exporter's temporary files. The
    partial output itself (``.<name>.partial``) is not one: it holds the verified leaves a
    failed get keeps for the next one (``FileSink`` decides whether to continue in it)."""
    yield from target.parent.glob(f"..{_glob_escape(target.name)}.partial.*.part")


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _clean_partials(target: Path) -> None:
    import shutil

    for p in list(_partials(target)):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

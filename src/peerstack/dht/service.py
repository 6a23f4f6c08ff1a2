"""The Kademlia DHT service on a ``Host``: lookups, storing, providing, upkeep.

Written only against ``peerstack.host.interface``: the same object runs on the TCP host and on
the simulated host in ``sim/``. Pure logic lives elsewhere (``routing_table``, ``query``,
``records``, ``providers``); requests go out through ``rpc.KadClient`` and are answered by
``server.KadServer``; this module drives lookups and keeps the routing table alive.

Time: ``loop.time()`` (monotonic, virtual in the simulator) for timeouts and for scheduling
refresh and gc; ``wall_clock()`` (unix time) for everything that is persisted or compared with
persisted times (provider expiry, when our provides were last announced, record age) and where
the wire needs it (IPNS validity, ``timeReceived``). The monotonic clock restarts with the
machine: a time stored from it would put republish off until the uptime caught up and keep
remote providers far past their 48 h.

Who enters the routing table: a peer that answered one of our requests, and, once the node has
called ``use_identify()``, a peer whose identify (or identify push) lists ``/ipfs/kad/1.0.0``
(``peer_identified``); a peer whose identify no longer lists it leaves. This is how the libp2p
kad-dht spec and the go/js implementations learn of servers, and it costs nothing: identify
runs on every connection anyway. Without identify (the simulated host, or a peer whose identify
failed: ``identify_failed``) a newly connected peer is probed with a FIND_NODE instead
(``DhtConfig.probe_on_connect``). The DHT takes plain data here, not identify's types: it must
stay runnable on hosts without identify.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.config import DhtConfig, Mode
from peerstack.dht.distance import kad_key
from peerstack.dht.messages import PROTOCOL_ID, KadMessage, KadRecord, MessageType, PeerInfo
from peerstack.dht.providers import DhtStore, DhtStoreError, MemoryDhtStore
from peerstack.dht.query import Query
from peerstack.dht.records import (
    RecordError,
    Validators,
    create_ipns_record,
    ipns_key,
    parse_ipns_record,
)
from peerstack.dht.routing_table import AddResult, RoutingTable
from peerstack.dht.rpc import RPC_ERRORS, DhtCounters, KadClient
from peerstack.dht.server import KadServer, ProviderMismatch, check_provider_key
from peerstack.errors import DecodeError, LimitExceeded, PeerError, PeerstackError, UsageError
from peerstack.host.interface import Host, HostEvent, PeerConnected

log = logging.getLogger(__name__)

# Addresses learned from DHT answers are kept for this long in the host's peerstore.
ADDR_TTL = 3600.0


class ValueNotFound(PeerstackError):
    """No peer had a valid record for the key."""


@dataclass(slots=True)
class LookupStats:
    """What the last lookup cost: for the simulator's tables and for debugging."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    hops: int = 0
    found: bool = False


class KadDHT:
    """A Kademlia DHT node (``/ipfs/kad/1.0.0``) on ``host``."""

    def __init__(
        self,
        host: Host,
        config: DhtConfig | None = None,
        *,
        store: DhtStore | None = None,
        validators: Validators | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.config = cfg = config or DhtConfig()
        self.store: DhtStore = store or MemoryDhtStore(cfg.store_limits)
        self.validators = validators or Validators()
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.routing_table = RoutingTable(
            host.peer_id,
            k=cfg.k,
            max_per_group_bucket=cfg.max_per_group_bucket,
            max_per_group_table=cfg.max_per_group_table,
        )
        self.counters = DhtCounters()
        self.client = KadClient(host, cfg, self.counters)
        self.server = KadServer(
            host,
            cfg,
            routing_table=self.routing_table,
            store=self.store,
            validators=self.validators,
            counters=self.counters,
            wall_clock=wall_clock,
        )
        self.last_lookup = LookupStats()
        self._local_key = kad_key(host.peer_id.to_bytes())
        self._checking: set[PeerId] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._identify_wired = False
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self.config.mode

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def start(self) -> None:
        """Load the saved table, serve (server mode), and start the background work."""
        if self._started:
            raise UsageError("DHT already started")
        self._started = True
        now = self._now()
        for peer, addrs in self.store.load_peers():
            if addrs:
                self.host.add_peer_addrs(peer, addrs, ADDR_TTL)
            self.routing_table.add(peer, now, addrs)
        if self.config.mode is Mode.SERVER:
            self.host.set_stream_handler(PROTOCOL_ID, self.server.handle_stream)
        if self.config.probe_on_connect and not self._identify_wired:
            self._unsubscribe = self.host.add_listener(self._on_host_event)
        if self.config.background:
            self._spawn(self._maintenance_loop())

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self.config.mode is Mode.SERVER:
            self.host.remove_stream_handler(PROTOCOL_ID)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Requests that outlived their lookups may have ended with an error: not ours to raise.
        await asyncio.gather(*tasks, return_exceptions=True)
        self.client.close()
        self.save_routing_table()

    def save_routing_table(self) -> None:
        """Persist the table so a restarted node rejoins at once."""
        self.store.save_peers([(e.peer, e.addrs) for e in self.routing_table.entries()])

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("DHT background task failed: %r", task.exception())

    # -- background ----------------------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        cfg = self.config
        backoff = cfg.bootstrap_backoff
        while len(self.routing_table) == 0:
            if await self.bootstrap():
                break
            await asyncio.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, cfg.bootstrap_backoff_max)
        last_gc = self._now()
        while True:
            await self._step("refresh", self.refresh)
            now = self._now()
            if now - last_gc >= cfg.gc_interval:
                await self._step("gc", self._gc)
                last_gc = now
            await self._step("republish", self.republish)
            await self._step("saving the routing table", self._save_routing_table)
            await asyncio.sleep(min(cfg.refresh_interval, cfg.gc_interval))
            if len(self.routing_table) == 0:
                await self._step("bootstrap", self.bootstrap)

    async def _step(self, what: str, step: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Run one upkeep step; its failure is logged and the loop goes on.

        The maintenance loop is the node's only refresher, republisher and collector: one step
        that fails (a bad answer, a locked database, a bug) must not end it for good, so every
        ``Exception`` is caught here, logged with its traceback (not hidden) and the next round
        tries again. Cancellation (``stop()``) is a ``BaseException`` and still ends the loop.
        """
        try:
            await step()
        except Exception:
            log.exception("DHT upkeep: %s failed; trying again next round", what)

    async def _gc(self) -> None:
        self.store.gc(self.wall_clock(), self.config.max_record_age)

    async def _save_routing_table(self) -> None:
        self.save_routing_table()

    async def bootstrap(self) -> bool:
        """Contact the configured bootstrap peers, then look ourselves up.

        Returns whether the routing table has any peer afterwards.
        """
        peers: list[PeerId] = []
        for addr in self.config.bootstrap_peers:
            base, pid_text = addr.decapsulate_p2p()
            if pid_text is None:
                log.warning("bootstrap address %s has no /p2p/ part", addr)
                continue
            try:
                peer = PeerId.from_string(pid_text)
            except DecodeError:
                log.warning("bootstrap address %s has a bad PeerId", addr)
                continue
            if peer == self.host.peer_id:
                continue
            self.host.add_peer_addrs(peer, [base], ADDR_TTL)
            peers.append(peer)
        results = await asyncio.gather(*(self._check_peer(p) for p in peers))
        for peer, alive in zip(peers, results, strict=True):
            if alive:
                self._peer_responded(peer)
        if len(self.routing_table):
            await self.get_closest_peers(self.host.peer_id.to_bytes())
        return len(self.routing_table) > 0

    async def refresh(self) -> None:
        """Self-lookup, then a random lookup in every bucket not used for a while."""
        await self.get_closest_peers(self.host.peer_id.to_bytes())
        now = self._now()
        for cpl in self.routing_table.stale_buckets(now, self.config.refresh_interval):
            target = self.routing_table.random_peer_id_in_bucket(cpl, self.rng)
            await self.get_closest_peers(target.to_bytes())

    async def republish(self) -> int:
        """Provide again every key of ours whose last announcement is getting old."""
        count = 0
        now = self.wall_clock()
        for key in self.store.due_republish(now, self.config.republish_interval):
            # One key that cannot be provided (a bad row, a full table, a bug) must not stop
            # the others: each is tried on its own and its failure logged with a traceback.
            try:
                reached = await self.provide(key)
            except Exception:
                log.exception("republishing %s failed", key.hex()[:32])
                continue
            if reached:
                count += 1
        return count

    # -- learning of servers: identify, or a probe without it ------------------------------

    def use_identify(self) -> None:
        """From now on the node reports identify results: no FIND_NODE probe per connection.

        The caller must then pass every identify result to ``peer_identified`` and every failed
        identify to ``identify_failed`` (``node_dht.attach_identify`` does both); the probe
        remains only as the fallback for peers identify could not tell about.
        """
        self._identify_wired = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def peer_identified(
        self, peer: PeerId, protocols: Collection[str], addrs: Sequence[Multiaddr] = ()
    ) -> None:
        """Identify (or a push) told us ``peer``'s protocols and listen addresses.

        A peer that lists the kad protocol is a DHT server: it is offered to the table like a
        peer that answered (the table's diversity limits, replacement cache and check of the
        oldest peer of a full bucket apply). A peer that does not is a client or has stopped
        serving: it is not probed, and leaves the table (and its replacement cache) if it was
        there. Works in client mode too: a client still routes through servers.
        """
        if not self._started or peer == self.host.peer_id:
            return
        if PROTOCOL_ID in protocols:
            self.counters.identify_admitted += 1
            self._offer(peer, addrs or self.host.peer_addrs(peer))
        elif self.routing_table.remove(peer):
            self.counters.identify_removed += 1
            self.client.forget(peer)

    def identify_failed(self, peer: PeerId) -> None:
        """Identify could not tell what ``peer`` serves: fall back to probing it."""
        if self._started and self.config.probe_on_connect:
            self._probe_if_new(peer)

    def _on_host_event(self, event: HostEvent) -> None:
        if isinstance(event, PeerConnected):
            self._probe_if_new(event.peer)

    def _probe_if_new(self, peer: PeerId) -> None:
        if peer in self.routing_table:
            return
        if self._reserve_check(peer):
            self.counters.probes += 1
            self._spawn(self._probe_new_peer(peer))

    async def _probe_new_peer(self, peer: PeerId) -> None:
        if await self._check_peer(peer):
            self._peer_responded(peer)

    # -- routing table upkeep ------------------------------------------------------------

    def _peer_responded(self, peer: PeerId) -> None:
        """``peer`` answered a DHT request: it is a live server, offer it to the table."""
        self._offer(peer, self.host.peer_addrs(peer))

    def _offer(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None:
        outcome = self.routing_table.add(peer, self._now(), addrs)
        if outcome.result is AddResult.FULL and outcome.to_check is not None:
            self._maybe_check(outcome.to_check)

    def _peer_failed(self, peer: PeerId) -> None:
        self.routing_table.remove(peer)
        self.client.forget(peer)

    def _maybe_check(self, peer: PeerId) -> None:
        if not self.config.check_full_buckets:
            return
        if self._reserve_check(peer):
            self._spawn(self._check_and_update(peer))

    def _reserve_check(self, peer: PeerId) -> bool:
        """Claim one of the bounded check slots for ``peer`` (released by ``_check_peer``)."""
        if peer in self._checking or len(self._checking) >= self.config.max_concurrent_checks:
            self.counters.checks_skipped += 1
            return False
        self._checking.add(peer)
        return True

    async def _check_and_update(self, peer: PeerId) -> None:
        if await self._check_peer(peer):
            self.routing_table.mark_seen(peer, self._now())
        else:
            self._peer_failed(peer)

    async def _check_peer(self, peer: PeerId) -> bool:
        """Is ``peer`` a live DHT server? (A FIND_NODE for our own key works with everyone.)"""
        self._checking.add(peer)
        try:
            await self.client.request(
                peer, KadMessage(MessageType.FIND_NODE, key=self.host.peer_id.to_bytes())
            )
        except RPC_ERRORS as exc:
            log.debug("peer %s failed its check: %r", peer, exc)
            return False
        finally:
            self._checking.discard(peer)
        return True

    # -- client: lookups -----------------------------------------------------------------

    def _learn_peers(self, infos: Sequence[PeerInfo]) -> list[PeerId]:
        """Note the addresses of the peers an answer named; returns their ids.

        Raises ``PeerError`` (after keeping the good entries) if the peerstore refused one
        entry, e.g. an address whose ``/p2p/`` names another peer: the answer is malformed and
        the caller counts it as the sender's failure, without giving up on the lookup.
        """
        me = self.host.peer_id
        out = []
        refused: PeerError | None = None
        for info in infos:
            if info.peer_id == me:
                continue
            if info.addrs:
                try:
                    self.host.add_peer_addrs(info.peer_id, info.addrs, ADDR_TTL)
                except PeerError as exc:
                    refused = exc
                    continue
            out.append(info.peer_id)
        if refused is not None:
            raise refused
        return out

    async def _run_query(
        self,
        key: bytes,
        request: KadMessage,
        on_reply: Callable[[Query, PeerId, KadMessage], None] | None = None,
        *,
        drain: bool = False,
    ) -> Query:
        """Drive a ``Query`` for ``key`` with ``request`` sent to every peer it picks.

        With ``drain``, the requests still in flight when the query is done are awaited (no new
        ones are sent), so the result holds more of the k closest peers that answered.
        """
        cfg = self.config
        target = kad_key(key)
        query = Query(
            target,
            self.routing_table.closest(target, cfg.k),
            k=cfg.k,
            alpha=cfg.alpha,
            beta=cfg.beta,
            timeout=cfg.rpc_timeout,
            max_peers=cfg.max_query_peers,
            exclude=(self.host.peer_id,),
        )
        pending: dict[asyncio.Task[KadMessage | None], PeerId] = {}
        loop = asyncio.get_running_loop()
        finished = False
        try:
            async with asyncio.timeout(cfg.query_timeout):
                while True:
                    for peer in query.requests(loop.time()):
                        task = loop.create_task(self.client.request(peer, request))
                        pending[task] = peer
                    if not pending or (query.finished and not drain):
                        break
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    now = loop.time()
                    for task in done:
                        peer = pending.pop(task)
                        exc = task.exception()
                        if exc is not None:
                            if not isinstance(exc, RPC_ERRORS):
                                raise exc
                            log.debug("query: %s failed: %r", peer, exc)
                            query.on_failure(peer, now)
                            self._peer_failed(peer)
                            continue
                        reply = task.result()
                        if reply is None:  # pragma: no cover - requests expect replies
                            query.on_failure(peer, now)
                            continue
                        try:
                            closer = self._learn_peers(reply.closer_peers)
                        except PeerError as exc:
                            # One peer's bad answer costs that peer, not the whole lookup.
                            log.debug("query: %s answered with a bad peer: %r", peer, exc)
                            query.on_failure(peer, now)
                            self._peer_failed(peer)
                            continue
                        query.on_response(peer, closer, now)
                        self._peer_responded(peer)
                        if on_reply is not None:
                            try:
                                on_reply(query, peer, reply)
                            except PeerError as exc:
                                log.debug("query: bad answer from %s: %r", peer, exc)
                                self._peer_failed(peer)
                    query.check_timeouts(now)
            finished = True
        except TimeoutError:
            log.debug("query for %s hit the %.0f s limit", key.hex()[:16], cfg.query_timeout)
        finally:
            if finished:
                # The lookup is done but some requests are still out: let them finish in the
                # background so the routing table learns who answered and who is gone.
                for task, peer in pending.items():
                    self._tasks.add(task)
                    task.add_done_callback(functools.partial(self._settle, peer))
            else:
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)
                    for task in pending:  # retrieve exceptions so none is reported as lost
                        if not task.cancelled():
                            task.exception()
        self.routing_table.mark_refreshed(target, loop.time())
        stats = query.stats
        self.last_lookup = LookupStats(
            stats.requests, stats.successes, stats.failures, query.hops(), False
        )
        return query

    def _settle(self, peer: PeerId, task: asyncio.Task[KadMessage | None]) -> None:
        """A request that outlived its lookup ended: update the routing table with it."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._peer_responded(peer)
        elif isinstance(exc, RPC_ERRORS):
            self._peer_failed(peer)
        else:
            log.warning("late DHT request to %s failed: %r", peer, exc)

    async def get_closest_peers(self, key: bytes) -> list[PeerId]:
        """The k closest DHT servers to ``key`` that answered us, nearest first."""
        query = await self._run_query(key, KadMessage(MessageType.FIND_NODE, key=key))
        return query.closest(self.config.k)

    async def _closest_for_store(self, key: bytes) -> list[PeerId]:
        """The k closest peers we know of that have not failed: where records go."""
        query = await self._run_query(key, KadMessage(MessageType.FIND_NODE, key=key), drain=True)
        return query.closest_candidates(self.config.k)

    async def find_peer(self, peer: PeerId) -> PeerInfo | None:
        """Addresses of ``peer``, from the DHT (or ``None`` if nobody knows it)."""
        if peer == self.host.peer_id:
            return PeerInfo(peer, tuple(self.host.listen_addrs()))
        found: list[PeerInfo] = []

        def on_reply(query: Query, sender: PeerId, reply: KadMessage) -> None:
            if sender == peer:
                found.append(PeerInfo(peer, tuple(self.host.peer_addrs(peer))))
                query.stop()
                return
            for info in reply.closer_peers:
                if info.peer_id == peer:
                    found.append(info)
                    # A peer that names the target without addresses (it has not learned them
                    # yet) is no answer: go on asking until someone gives a way to reach it.
                    if info.addrs:
                        query.stop()
                    return

        key = peer.to_bytes()
        query = await self._run_query(key, KadMessage(MessageType.FIND_NODE, key=key), on_reply)
        if found:
            depth = query.depth_of(peer)
            self.last_lookup.found = True
            self.last_lookup.hops = depth if depth is not None else self.last_lookup.hops
            info = next((i for i in found if i.addrs), found[0])
            addrs = info.addrs or tuple(self.host.peer_addrs(peer))
            return PeerInfo(peer, addrs)
        return None

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Store a record on the k closest peers (and here); returns how many peers took it."""
        self.validators.validate(key, value, self.wall_clock())
        self._keep_local(key, value)
        peers = await self._closest_for_store(key)
        record = KadRecord(key, value)
        msg = KadMessage(MessageType.PUT_VALUE, key=key, record=record)
        results = await asyncio.gather(
            *(self.client.request(p, msg) for p in peers), return_exceptions=True
        )
        ok = 0
        for peer, res in zip(peers, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, RPC_ERRORS):
                    raise res
                log.debug("PUT_VALUE to %s failed: %r", peer, res)
            else:
                ok += 1
        return ok

    async def get_value(self, key: bytes, quorum: int | None = None) -> bytes:
        """The best record for ``key`` among ``quorum`` peers; stale holders get corrected."""
        need = self.config.get_quorum if quorum is None else quorum
        if need < 1:
            raise UsageError("quorum must be at least 1")
        wall = self.wall_clock()
        got: list[tuple[PeerId | None, bytes]] = []
        local = self.server.fresh_record(key)
        if local is not None:
            got.append((None, local[0]))

        def on_reply(query: Query, sender: PeerId, reply: KadMessage) -> None:
            rec = reply.record
            if rec is None:
                return
            if rec.key != key:
                log.debug("%s answered GET_VALUE with another key", sender)
                return
            try:
                self.validators.validate(key, rec.value, wall)
            except RecordError as exc:
                log.debug("%s returned an invalid record: %s", sender, exc)
                return
            got.append((sender, rec.value))
            if sum(1 for s, _ in got if s is not None) >= need:
                query.stop()

        query = await self._run_query(key, KadMessage(MessageType.GET_VALUE, key=key), on_reply)
        if not got:
            raise ValueNotFound(f"no valid record for {key!r}")
        values = [v for _, v in got]
        best = values[self.validators.select(key, values)]
        self.last_lookup.found = True
        # Correct the peers that returned something else, and keep the best ourselves.
        stale = [p for p, v in got if p is not None and v != best]
        if local is None or local[0] != best:
            self._keep_local(key, best)
        if stale:
            msg = KadMessage(MessageType.PUT_VALUE, key=key, record=KadRecord(key, best))
            await asyncio.gather(
                *(self.client.request(p, msg) for p in stale), return_exceptions=True
            )
        del query
        return best

    def _keep_local(self, key: bytes, value: bytes) -> None:
        """Keep a copy of our own or a fetched record; best effort.

        The local copy only saves a lookup: a store filled by others (LimitExceeded) or a
        failing database must not fail our put or get, whose result is on the network.
        """
        try:
            self.server.keep_record(key, value)
        except (LimitExceeded, DhtStoreError) as exc:
            log.warning("record %r not kept locally: %s", key[:40], exc)

    async def publish_name(
        self,
        key: PrivateKey,
        value: bytes,
        *,
        lifetime: float = 48 * 3600.0,
        ttl: float = 3600.0,
    ) -> int:
        """Publish an IPNS record for ``key``'s name pointing at ``value``; returns its sequence.

        The sequence follows the newest record found (ours or the network's), so a publisher
        that lost its local state still supersedes what it published before.
        """
        name = PeerId.from_public_key(key.public_key)
        rkey = ipns_key(name)
        sequence = 0
        try:
            current = await self.get_value(rkey)
            sequence = parse_ipns_record(name, current, self.wall_clock()).sequence + 1
        except ValueNotFound:
            pass
        eol_ns = int((self.wall_clock() + lifetime) * 1e9)
        record = create_ipns_record(key, value, sequence, eol_ns, int(ttl * 1e9))
        await self.put_value(rkey, record)
        return sequence

    async def resolve_name(self, name: PeerId, quorum: int | None = None) -> bytes:
        """The value the newest valid IPNS record of ``name`` points at."""
        raw = await self.get_value(ipns_key(name), quorum)
        return parse_ipns_record(name, raw, self.wall_clock()).value

    async def provide(self, key: bytes) -> int:
        """Announce that we provide ``key`` (a multihash) to the k closest peers.

        Returns how many peers took the announcement. Only an announcement that reached at
        least one peer counts as published: until then the key stays due again after
        ``provide_retry_interval``, so a node that provided while offline (or whose every
        ADD_PROVIDER failed) announces at its next upkeep round instead of 22 h later.
        """
        _check_own_provider_key(key)
        now = self.wall_clock()  # persisted: wall time survives a reboot, loop time does not
        # Our own table, not the provider records of remote peers (and their limits): the
        # server answers GET_PROVIDERS for it with us. Recorded as "not yet announced" (due
        # after the retry interval) first, so a provide cancelled or failed half-way is retried.
        cfg = self.config
        retry_at = now - cfg.republish_interval + cfg.provide_retry_interval
        if not self.store.has_own_provide(key):
            self.store.add_own_provide(key, retry_at)
        peers = await self._closest_for_store(key)
        me = PeerInfo(self.host.peer_id, tuple(self.host.listen_addrs()))
        msg = KadMessage(MessageType.ADD_PROVIDER, key=key, provider_peers=[me])
        results = await asyncio.gather(
            *(self.client.request(p, msg, expect_response=False) for p in peers),
            return_exceptions=True,
        )
        ok = 0
        for res in results:
            if isinstance(res, BaseException):
                if not isinstance(res, RPC_ERRORS):
                    raise res
            else:
                ok += 1
        self.store.mark_republished(key, now if ok else retry_at)
        return ok

    async def find_providers(self, key: bytes, count: int | None = None) -> list[PeerInfo]:
        """Up to ``count`` peers that provide ``key``."""
        _check_own_provider_key(key)
        want = self.config.provider_count if count is None else count
        found: dict[PeerId, PeerInfo] = {}
        if self.config.mode is Mode.SERVER and self.store.has_own_provide(key):
            me = self.host.peer_id
            found[me] = PeerInfo(me, tuple(self.host.listen_addrs()))
        for entry in self.store.get_providers(key, self.wall_clock(), want):
            found[entry.peer] = PeerInfo(entry.peer, entry.addrs)
        if len(found) >= want:
            return list(found.values())[:want]

        def on_reply(query: Query, sender: PeerId, reply: KadMessage) -> None:
            for info in reply.provider_peers:
                if info.peer_id not in found and len(found) < want:
                    if info.addrs and info.peer_id != self.host.peer_id:
                        try:
                            self.host.add_peer_addrs(info.peer_id, info.addrs, ADDR_TTL)
                        except PeerError as exc:
                            # Addresses that cannot be the provider's: skip that entry only.
                            log.debug("%s sent a bad provider entry: %r", sender, exc)
                            continue
                    found[info.peer_id] = info
            if len(found) >= want:
                query.stop()

        await self._run_query(key, KadMessage(MessageType.GET_PROVIDERS, key=key), on_reply)
        self.last_lookup.found = bool(found)
        return list(found.values())


def _check_own_provider_key(key: bytes) -> None:
    try:
        check_provider_key(key)
    except DecodeError as exc:
        raise UsageError(f"a provider key must be a multihash: {exc}") from None


__all__ = ["KadDHT", "LookupStats", "ProviderMismatch", "ValueNotFound"]

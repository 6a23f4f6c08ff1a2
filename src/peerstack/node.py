"""``Node``: a host with the standard services, its identity and configuration.

    async with Node(repo="~/.peerstack") as node:
        print(node.addrs)
        rtts = await node.ping("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...", count=3)

Without a repo a node gets a fresh identity and listens on ``/ip4/127.0.0.1/tcp/0`` (any free
loopback port); with one it uses the repo's key and ``config.toml``. ``listen`` overrides the
configured listen addresses either way.

The node serves identify (+push), ping, perf and echo. Handlers registered through
``Node.set_stream_handler`` after start are announced to connected peers by identify push.
Later issues attach the DHT and bitswap here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from peerstack.config import EPHEMERAL_LISTEN, Config, parse_multiaddr
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.errors import DecodeError, PeerError, PeerstackError, UsageError
from peerstack.host.host import BasicHost
from peerstack.host.interface import StreamHandler
from peerstack.host.peerstore import Peerstore
from peerstack.protocols import echo, perf, ping
from peerstack.protocols.identify import IdentifyInfo, IdentifyService
from peerstack.repo import Repo

log = logging.getLogger(__name__)

Target = str | Multiaddr | PeerId

#: Peerstore metadata key counting a peer's protocol violations.
MISBEHAVIOUR_KEY = "misbehaviour"


class Node:
    """A peerstack node: ``BasicHost`` + identify, ping, perf and echo."""

    def __init__(
        self,
        *,
        repo: Repo | Path | str | None = None,
        key: PrivateKey | None = None,
        listen: Sequence[str | Multiaddr] | None = None,
        config: Config | None = None,
    ) -> None:
        if isinstance(repo, str | Path):
            repo = Repo.open(repo)
        self.repo = repo
        if config is None:
            config = repo.config() if repo is not None else Config(listen=EPHEMERAL_LISTEN)
        if listen is not None:
            config = dataclasses.replace(config, listen=tuple(str(a) for a in listen))
        self.config = config
        if key is None:
            key = repo.identity() if repo is not None else PrivateKey.generate()
        self._key = key
        self._peer_id = PeerId.from_public_key(key.public_key)
        self._host: BasicHost | None = None
        self._identify: IdentifyService | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._host is not None:
            raise UsageError("node already started")
        host = BasicHost(
            self._key, listen_addrs=self.config.listen_addrs(), limits=self.config.limits
        )
        # Handlers go in before the listeners open, so no early peer meets a missing protocol;
        # identify starts right after (no await in between), so it sees every connection.
        for module in (ping, perf, echo):
            module.register(host)
        identify = IdentifyService(
            host,
            host.peerstore,
            self._key.public_key,
            host.protocols,
            agent_version=self.config.agent_version,
            on_peer_error=self._penalize,
        )
        await host.start()
        self._host = host
        self._identify = identify
        identify.start()

    async def close(self) -> None:
        identify, self._identify = self._identify, None
        host, self._host = self._host, None
        if identify is not None:
            await identify.close()
        if host is not None:
            await host.close()

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

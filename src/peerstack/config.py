"""Node configuration: what ``config.toml`` in a repo holds, as typed dataclasses.

The default listen address is ``/ip4/127.0.0.1/tcp/4001``: loopback only, so a node started
without thinking about it is not reachable from the network. Pass ``--listen
/ip4/0.0.0.0/tcp/4001`` (or set it in ``config.toml``) to serve other machines.

Unknown keys in the file are refused rather than ignored, so a typo does not silently fall back
to a default.

Sections: ``[node]`` (listen, bootstrap, agent, the Yamux keepalive), ``[limits]`` (the host's
``Limits``), ``[dht]`` (mode, the per-/24 diversity limits), ``[content]`` (what ``add``
announces, the reprovider, whether ``get`` keeps block copies) and
``[services]`` (the measuring protocols perf and echo, off by default: any peer could make a node
send gigabytes with them) and ``[bitswap]`` (``upload_rate``/``upload_rate_per_peer``: caps on the
blocks we serve, in bytes per second; absent means no cap).

The upload rates are plain numbers of bytes per second in the file (``20_000_000``): the size
parser with suffixes (``20MB``) lives in the CLI, a layer above this module, so only the
``--upload-rate`` option takes them.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerstack import __version__
from peerstack.core.multiaddr import Multiaddr
from peerstack.errors import DecodeError, UsageError
from peerstack.host.limits import Limits

DEFAULT_LISTEN = ("/ip4/127.0.0.1/tcp/4001",)
EPHEMERAL_LISTEN = ("/ip4/127.0.0.1/tcp/0",)
DEFAULT_AGENT = f"peerstack/{__version__}"

DHT_MODES = ("server", "client")
#: ``auto``: lift the routing table's per-/24 limits when the node listens on loopback only
#: (every peer it can meet there shares 127.0.0.0/24); ``on``/``off`` force them.
DIVERSITY_CHOICES = ("auto", "on", "off")
#: What ``add`` announces to the DHT: the root only, every block, or nothing.
PROVIDE_CHOICES = ("roots", "all", "none")
#: Optional services a node serves only when asked to (``[services]``, ``--enable``): perf
#: sends a peer as many bytes as it asks for and echo returns what it sends, so on by default
#: they would let any peer spend our bandwidth.
OPTIONAL_SERVICES = ("perf", "echo")
#: ``[node]`` keys for the Yamux keepalive, in seconds.
KEEPALIVE_KEYS = ("keepalive_interval", "keepalive_timeout")
#: ``[content]`` keys.
CONTENT_KEYS = ("provide", "reprovide_interval", "get_keeps_copies", "get_direct_io")
#: ``[bitswap]`` keys: the upload caps ``Bitswap`` takes, in bytes per second.
UPLOAD_RATE_KEYS = ("upload_rate", "upload_rate_per_peer")


def parse_multiaddr(text: str | Multiaddr) -> Multiaddr:
    """A multiaddr from user input; a bad one is the caller's ``UsageError``, not a peer's."""
    if isinstance(text, Multiaddr):
        return text
    try:
        return Multiaddr(text)
    except DecodeError as exc:
        raise UsageError(f"bad multiaddr {text!r}: {exc}") from None


def _check_addrs(name: str, addrs: Sequence[str]) -> tuple[str, ...]:
    out = []
    for a in addrs:
        if not isinstance(a, str):
            raise UsageError(f"{name}: {a!r} is not a multiaddr string")
        try:
            Multiaddr(a)
        except DecodeError as exc:
            raise UsageError(f"{name}: bad multiaddr {a!r}: {exc}") from None
        out.append(a)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a ``Node`` needs besides its identity key."""

    listen: tuple[str, ...] = DEFAULT_LISTEN
    bootstrap: tuple[str, ...] = ()
    agent_version: str = DEFAULT_AGENT
    # Yamux keepalive: a ping after this many seconds without hearing from a peer (0: never),
    # and the connection is dropped when that ping goes unanswered this long.
    keepalive_interval: float = 30.0
    keepalive_timeout: float = 30.0
    limits: Limits = field(default_factory=Limits)
    dht_mode: str = "server"
    dht_diversity: str = "auto"
    provide: str = "roots"
    reprovide_interval: float = 12 * 3600.0
    # False (the default): a downloaded file's leaves are held by reference to the file
    # itself, so every byte is written once (the store re-hashes them when it reads them, and
    # drops a reference whose bytes the user changed). True: a block copy of each leaf is
    # stored too, for a store that must keep serving the content whatever becomes of the
    # file, at the price of writing every byte twice.
    get_keeps_copies: bool = False
    # True (the default): a downloaded file of 16 MiB or more is written past the page cache
    # (O_DIRECT, where the file system allows it): it does not push the user's working set out,
    # and on a virtual machine whose free memory goes back to the host it is much cheaper. The
    # price: reading the file right after the download comes from the disk.
    get_direct_io: bool = True
    perf: bool = False
    echo: bool = False
    upload_rate: float | None = None
    upload_rate_per_peer: float | None = None

    def __post_init__(self) -> None:
        _check_addrs("listen", self.listen)
        _check_addrs("bootstrap", self.bootstrap)
        for name in KEEPALIVE_KEYS:
            _check_seconds(f"[node] {name}", getattr(self, name))
        _check_choice("[dht] mode", self.dht_mode, DHT_MODES)
        _check_choice("[dht] diversity", self.dht_diversity, DIVERSITY_CHOICES)
        _check_choice("[content] provide", self.provide, PROVIDE_CHOICES)
        if isinstance(self.reprovide_interval, bool) or not (
            isinstance(self.reprovide_interval, int | float) and self.reprovide_interval > 0
        ):
            raise UsageError("[content] reprovide_interval must be a positive number of seconds")
        for name in ("get_keeps_copies", "get_direct_io"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"[content] {name} must be true or false")
        for name in OPTIONAL_SERVICES:
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"[services] {name} must be true or false")
        for name in UPLOAD_RATE_KEYS:
            _check_rate(f"[bitswap] {name}", getattr(self, name))

    def with_services(self, names: Sequence[str]) -> Config:
        """This config with the named optional services (``perf``, ``echo``) turned on."""
        for name in names:
            _check_choice("service", name, OPTIONAL_SERVICES)
        return dataclasses.replace(
            self, perf=self.perf or "perf" in names, echo=self.echo or "echo" in names
        )

    def listen_addrs(self) -> list[Multiaddr]:
        return [Multiaddr(a) for a in self.listen]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Build from the parsed TOML; ``UsageError`` names the offending key."""
        unknown_sections = set(data) - {"node", "limits", "dht", "content", "services", "bitswap"}
        if unknown_sections:
            raise UsageError(f"unknown config section(s): {', '.join(sorted(unknown_sections))}")
        for section, value in data.items():
            if not isinstance(value, Mapping):
                raise UsageError(f"[{section}] must be a table")
        node = dict(data.get("node", {}))
        limits_data = dict(data.get("limits", {}))
        dht = dict(data.get("dht", {}))
        content = dict(data.get("content", {}))
        services = dict(data.get("services", {}))
        bitswap = dict(data.get("bitswap", {}))
        known = {"listen", "bootstrap", "agent_version", *KEEPALIVE_KEYS}
        unknown = set(node) - known
        if unknown:
            raise UsageError(f"unknown [node] key(s): {', '.join(sorted(unknown))}")
        limit_fields = {f.name: f for f in dataclasses.fields(Limits)}
        unknown = set(limits_data) - set(limit_fields)
        if unknown:
            raise UsageError(f"unknown [limits] key(s): {', '.join(sorted(unknown))}")
        for key, value in limits_data.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"[limits] {key} must be a number")
        kwargs: dict[str, Any] = {}
        for section, values, keys in (
            ("dht", dht, {"mode": "dht_mode", "diversity": "dht_diversity"}),
            ("content", content, {k: k for k in CONTENT_KEYS}),
            ("services", services, {k: k for k in OPTIONAL_SERVICES}),
            ("bitswap", bitswap, {k: k for k in UPLOAD_RATE_KEYS}),
        ):
            unknown = set(values) - set(keys)
            if unknown:
                raise UsageError(f"unknown [{section}] key(s): {', '.join(sorted(unknown))}")
            for key, attr in keys.items():
                if key in values:
                    kwargs[attr] = values[key]
        for key in ("listen", "bootstrap"):
            if key in node:
                if not isinstance(node[key], list):
                    raise UsageError(f"[node] {key} must be a list of multiaddrs")
                kwargs[key] = tuple(node[key])
        if "agent_version" in node:
            if not isinstance(node["agent_version"], str):
                raise UsageError("[node] agent_version must be a string")
            kwargs["agent_version"] = node["agent_version"]
        for key in KEEPALIVE_KEYS:
            if key in node:
                kwargs[key] = node[key]
        return cls(limits=Limits(**limits_data), **kwargs)

    @classmethod
    def load(cls, path: Path) -> Config:
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: {exc}") from None
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        return cls.from_dict(data)

    def to_toml(self) -> str:
        """The config as TOML text (what ``Repo.init`` writes)."""

        def strings(values: Sequence[str]) -> str:
            return "[" + ", ".join(_toml_str(v) for v in values) + "]"

        lines = [
            "# peerstack node configuration",
            "[node]",
            "# Loopback only by default; use /ip4/0.0.0.0/tcp/4001 to accept remote peers.",
            f"listen = {strings(self.listen)}",
            f"bootstrap = {strings(self.bootstrap)}",
            f"agent_version = {_toml_str(self.agent_version)}",
            "# Seconds of silence before a keepalive ping (0: none), and how long it may go",
            "# unanswered before the connection is dropped.",
            f"keepalive_interval = {self.keepalive_interval!r}",
            f"keepalive_timeout = {self.keepalive_timeout!r}",
            "",
            "[limits]",
        ]
        for f in dataclasses.fields(Limits):
            lines.append(f"{f.name} = {getattr(self.limits, f.name)!r}")
        lines += [
            "",
            "[dht]",
            "# server: answer DHT queries and enter routing tables; client: only ask.",
            f"mode = {_toml_str(self.dht_mode)}",
            "# Per-/24 routing table limits: auto lifts them on a loopback-only node.",
            f"diversity = {_toml_str(self.dht_diversity)}",
            "",
            "[content]",
            "# What add announces to the DHT: roots, all (every block) or none.",
            f"provide = {_toml_str(self.provide)}",
            f"reprovide_interval = {self.reprovide_interval!r}",
            "# false: a downloaded file is the storage of its blocks (referenced, re-hashed",
            "# when read); true: a block copy of each is stored too (every byte written twice).",
            f"get_keeps_copies = {str(self.get_keeps_copies).lower()}",
            "# true: a downloaded file of 16 MiB or more is written past the page cache.",
            f"get_direct_io = {str(self.get_direct_io).lower()}",
            "",
            "[services]",
            "# Measuring protocols: a peer may ask perf for gigabytes. Turn on to benchmark.",
            f"perf = {str(self.perf).lower()}",
            f"echo = {str(self.echo).lower()}",
            "",
            "[bitswap]",
            "# Caps on the blocks we serve, in bytes per second (20_000_000 = 20 MB/s); a",
            "# commented-out key means no cap.",
        ]
        for name in UPLOAD_RATE_KEYS:
            rate = getattr(self, name)
            lines.append(f"# {name} = 20_000_000" if rate is None else f"{name} = {rate!r}")
        return "\n".join(lines) + "\n"

    def with_listen(self, listen: Sequence[str]) -> Config:
        return dataclasses.replace(self, listen=tuple(listen))


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _check_seconds(name: str, value: object) -> None:
    """A duration: a finite number of seconds, zero or more."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise UsageError(f"{name} must be a number of seconds (0 or more), not {value!r}")


def _check_rate(name: str, value: object) -> None:
    """An upload rate is None (no cap) or a finite number of bytes per second above zero."""
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise UsageError(
            f"{name} must be a positive number of bytes per second (e.g. 20_000_000), not {value!r}"
        )


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'

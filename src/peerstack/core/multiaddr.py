"""Multiaddr: self-describing network addresses, in text and binary form.

Supported protocols: /ip4 /ip6 /tcp /udp /dns /dns4 /dns6 /dnsaddr /p2p, plus the components
other peers commonly advertise (/quic-v1 /ws /wss /tls /p2p-circuit /webtransport /certhash) so
that their addresses parse; we only dial /ip4, /ip6 and /dns* with /tcp.

Every connection parses a few addresses (the dialled one, the socket's, identify's listen and
observed addresses), and peers repeat the same ones, so parsing is memoized: a bounded LRU of
text and of binary forms (``PARSE_CACHE_SIZE`` entries each; a ``Multiaddr`` is immutable, so
sharing one is safe). Only successful parses are kept; input is bounded by
``MAX_MULTIADDR_BYTES`` before it reaches the cache.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from peerstack.core import base58, multibase, varint
from peerstack.errors import DecodeError

MAX_MULTIADDR_BYTES = 1024
MAX_DNS_NAME = 255
#: Parsed multiaddrs remembered per form (text, bytes): peers control what we parse, so bounded.
PARSE_CACHE_SIZE = 1024
# Longest text form we parse (a binary form is at most MAX_MULTIADDR_BYTES; its text, with
# base58/base64 values, is longer but well under this).
_MAX_MULTIADDR_TEXT = 4 * MAX_MULTIADDR_BYTES

# name -> (code, size): size is bytes for fixed-width values, -1 for varint-length-prefixed,
# 0 for components without a value.
_PROTOCOLS: dict[str, tuple[int, int]] = {
    "ip4": (4, 4),
    "tcp": (6, 2),
    "udp": (273, 2),
    "ip6": (41, 16),
    "dns": (53, -1),
    "dns4": (54, -1),
    "dns6": (55, -1),
    "dnsaddr": (56, -1),
    "p2p": (421, -1),
    "p2p-circuit": (290, 0),
    "quic": (460, 0),
    "quic-v1": (461, 0),
    "tls": (448, 0),
    "ws": (477, 0),
    "wss": (478, 0),
    "webtransport": (465, 0),
    "certhash": (466, -1),
    "webrtc-direct": (280, 0),
    "webrtc": (281, 0),
    "sni": (449, -1),
    "noise": (454, 0),
    "yamux": (0x3F3, 0),
}
_BY_CODE = {code: (name, size) for name, (code, size) in _PROTOCOLS.items()}
_ALIASES = {"ipfs": "p2p"}


def _ip4_to_bytes(text: str) -> bytes:
    """Dotted-quad text to 4 bytes, as strict as ``ipaddress.IPv4Address`` (which it falls
    back to for anything unusual, so the error messages stay the same)."""
    parts = text.split(".")
    if len(parts) == 4:
        octets = []
        for part in parts:
            if not (0 < len(part) <= 3 and part.isascii() and part.isdigit()):
                break
            if len(part) > 1 and part[0] == "0":
                break  # ipaddress refuses leading zeros (octal ambiguity)
            value = int(part)
            if value > 255:
                break
            octets.append(value)
        else:
            return bytes(octets)
    return ipaddress.IPv4Address(text).packed


def _value_to_bytes(name: str, text: str) -> bytes:
    try:
        if name == "ip4":
            return _ip4_to_bytes(text)
        if name == "ip6":
            return ipaddress.IPv6Address(text).packed
        if name in ("tcp", "udp"):
            port = int(text, 10)
            if not 0 <= port <= 65535:
                raise DecodeError(f"port out of range: {text}")
            return port.to_bytes(2, "big")
        if name == "p2p":
            # PeerId text (base58 or CID); imported here to keep core modules acyclic.
            from peerstack.core.peer_id import PeerId

            return PeerId.from_string(text).to_bytes()
        if name == "certhash":
            return multibase.decode(text)
    except ValueError as exc:
        raise DecodeError(f"invalid /{name} value {text!r}: {exc}") from None
    if name in ("dns", "dns4", "dns6", "dnsaddr", "sni"):
        raw = text.encode("utf-8")
        if not raw or len(raw) > MAX_DNS_NAME or "/" in text:
            raise DecodeError(f"invalid /{name} name {text!r}")
        return raw
    raise DecodeError(f"/{name} takes no value")


def _ip6_to_text(raw: bytes) -> str:
    """The canonical (RFC 5952) text of 16 address bytes.

    ``socket.inet_ntop`` would be ~10 times faster, but core stays free of the network
    modules (tests/test_layering.py), and IPv6 addresses are the rarer ones here.
    """
    return str(ipaddress.IPv6Address(raw))


def _value_to_text(name: str, raw: bytes) -> str:
    if name == "ip4":
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    if name == "ip6":
        return _ip6_to_text(raw)
    if name in ("tcp", "udp"):
        return str(int.from_bytes(raw, "big"))
    if name == "p2p":
        return base58.encode(raw)
    if name == "certhash":
        return multibase.encode(raw, "base64")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"/{name} value is not UTF-8") from None


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    value: str | None
    raw: bytes

    def encode(self) -> bytes:
        code, size = _PROTOCOLS[self.name]
        out = varint.encode(code)
        if size == -1:
            out += varint.encode(len(self.raw))
        return out + self.raw


def _slot_setter(field: str) -> Callable[[Component, object], None]:
    setter: Callable[[Component, object], None] = vars(Component)[field].__set__
    return setter


# A Component made without the frozen dataclass's __init__ (three object.__setattr__ calls,
# ~0.9 us): the slots are set through their descriptors. For values already checked.
_component_new = object.__new__
_set_component_name = _slot_setter("name")
_set_component_value = _slot_setter("value")
_set_component_raw = _slot_setter("raw")


def _component(name: str, value: str | None, raw: bytes) -> Component:
    comp: Component = _component_new(Component)
    _set_component_name(comp, name)
    _set_component_value(comp, value)
    _set_component_raw(comp, raw)
    return comp


class Multiaddr:
    """An immutable multiaddr. Build from text (``Multiaddr("/ip4/1.2.3.4/tcp/1")``) or bytes."""

    __slots__ = ("_bytes", "_components")
    _bytes: bytes
    _components: tuple[Component, ...]

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise DecodeError(f"a multiaddr text must be a str, not {type(text).__name__}")
        if len(text) > _MAX_MULTIADDR_TEXT:
            raise DecodeError("multiaddr text too long")
        other = _parse_text(text)
        self._components = other._components
        self._bytes = other._bytes

    @classmethod
    def from_components(cls, comps: tuple[Component, ...]) -> Multiaddr:
        obj = cls.__new__(cls)
        obj._components = comps
        obj._bytes = b"".join(c.encode() for c in comps)
        return obj

    @classmethod
    def from_bytes(cls, data: bytes) -> Multiaddr:
        if len(data) > MAX_MULTIADDR_BYTES:
            raise DecodeError("multiaddr too long")
        if type(data) is bytes:
            return _parse_bytes(data)
        return cls._from_bytes(bytes(data))

    @classmethod
    def _from_bytes(cls, data: bytes) -> Multiaddr:
        # Runs for every new address a peer shows us (an observed address has a new port on
        # every connection), so the common cases are inline: one-byte varints, ip4 and port
        # text. Varints must be minimal (varint.decode refuses others), so the input is the
        # canonical binary form and is kept as it is rather than encoded again.
        comps: list[Component] = []
        n = len(data)
        i = 0
        while i < n:
            code = data[i]
            if code < 0x80:
                i += 1
            else:
                code, i = varint.decode(data, i)
            entry = _BY_CODE.get(code)
            if entry is None:
                raise DecodeError(f"unknown multiaddr protocol code {code}")
            name, size = entry
            if size == -1:
                if i < n and data[i] < 0x80:
                    size = data[i]
                    i += 1
                else:
                    size, i = varint.decode(data, i)
            end = i + size
            if end > n:
                raise DecodeError(f"truncated /{name} value")
            raw = data[i:end]
            i = end
            if entry[1] == 0:
                value = None
            elif name == "ip4":
                value = f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
            elif name in {"tcp", "udp"}:
                value = str((raw[0] << 8) | raw[1])
            else:
                value = _value_to_text(name, raw)
                if name == "p2p":
                    from peerstack.core.peer_id import PeerId

                    PeerId(raw)  # validates the multihash
            comps.append(_component(name, value, raw))
        obj = cls.__new__(cls)
        obj._components = tuple(comps)
        obj._bytes = data
        return obj

    def to_bytes(self) -> bytes:
        return self._bytes

    def __iter__(self) -> Iterator[Component]:
        return iter(self._components)

    @property
    def components(self) -> tuple[Component, ...]:
        return self._components

    def value_for(self, name: str) -> str | None:
        for c in self._components:
            if c.name == name:
                return c.value
        return None

    def encapsulate(self, other: Multiaddr | str) -> Multiaddr:
        if isinstance(other, str):
            other = Multiaddr(other)
        return Multiaddr.from_components(self._components + other._components)

    def decapsulate_p2p(self) -> tuple[Multiaddr, str | None]:
        """Split off a trailing ``/p2p/<id>``; return the rest and the id text (or ``None``)."""
        comps = self._components
        if comps and comps[-1].name == "p2p":
            last = comps[-1]
            rest = Multiaddr.__new__(Multiaddr)
            rest._components = comps[:-1]
            rest._bytes = self._bytes[: len(self._bytes) - len(last.encode())]
            return rest, last.value
        return self, None

    @property
    def p2p_bytes(self) -> bytes | None:
        """The binary PeerId of a trailing ``/p2p/<id>`` (no text conversion), else ``None``."""
        comps = self._components
        if comps and comps[-1].name == "p2p":
            return comps[-1].raw
        return None

    def tcp_target(self) -> tuple[str, int] | None:
        """``(host, port)`` if this is a dialable /ip4|/ip6|/dns*/tcp address, else ``None``."""
        comps = self._components
        if comps and comps[-1].name == "p2p":
            comps = comps[:-1]
        if len(comps) != 2 or comps[1].name != "tcp":
            return None
        if comps[0].name not in ("ip4", "ip6", "dns", "dns4", "dns6"):
            return None
        assert comps[0].value is not None
        assert comps[1].value is not None
        return comps[0].value, int(comps[1].value)

    def __str__(self) -> str:
        out = []
        for c in self._components:
            out.append("/" + c.name)
            if c.value is not None:
                out.append("/" + c.value)
        return "".join(out)

    def __repr__(self) -> str:
        return f"Multiaddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Multiaddr) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)


def _from_text(text: str) -> Multiaddr:
    if not text.startswith("/"):
        raise DecodeError(f"multiaddr must start with '/': {text!r}")
    parts = text.strip("/").split("/") if text.strip("/") else []
    comps: list[Component] = []
    i = 0
    while i < len(parts):
        name = _ALIASES.get(parts[i], parts[i])
        if name not in _PROTOCOLS:
            raise DecodeError(f"unknown multiaddr protocol /{parts[i]}")
        _, size = _PROTOCOLS[name]
        if size == 0:
            comps.append(Component(name, None, b""))
            i += 1
            continue
        if i + 1 >= len(parts):
            raise DecodeError(f"/{name} needs a value")
        value = parts[i + 1]
        raw = _value_to_bytes(name, value)
        if name == "p2p" and value.startswith(("1", "Qm")):
            # Parsed as base58btc, which round-trips exactly: the text is already canonical
            # (saves a bignum base58 encode per dialled /p2p address).
            text_value = value
        else:
            text_value = _value_to_text(name, raw)
        comps.append(Component(name, text_value, raw))
        i += 2
    return Multiaddr.from_components(tuple(comps))


# Memoized parsers (see the module docstring). Exceptions are not cached: bad input is parsed
# (and refused) every time, but it is bounded in size before it gets here.
_parse_text = functools.lru_cache(maxsize=PARSE_CACHE_SIZE)(_from_text)
_parse_bytes = functools.lru_cache(maxsize=PARSE_CACHE_SIZE)(Multiaddr._from_bytes)

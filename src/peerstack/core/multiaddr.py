"""Multiaddr: self-describing network addresses, in text and binary form.

Supported protocols: /ip4 /ip6 /tcp /udp /dns /dns4 /dns6 /dnsaddr /p2p, plus the components
other peers commonly advertise (/quic-v1 /ws /wss /tls /p2p-circuit /webtransport /certhash) so
that their addresses parse; we only dial /ip4, /ip6 and /dns* with /tcp.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from peerstack.core import base58, multibase, varint
from peerstack.errors import DecodeError

MAX_MULTIADDR_BYTES = 1024
MAX_DNS_NAME = 255

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


def _value_to_bytes(name: str, text: str) -> bytes:
    try:
        if name == "ip4":
            return ipaddress.IPv4Address(text).packed
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


def _value_to_text(name: str, raw: bytes) -> str:
    if name == "ip4":
        return str(ipaddress.IPv4Address(raw))
    if name == "ip6":
        return str(ipaddress.IPv6Address(raw))
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


class Multiaddr:
    """An immutable multiaddr. Build from text (``Multiaddr("/ip4/1.2.3.4/tcp/1")``) or bytes."""

    __slots__ = ("_bytes", "_components")

    def __init__(self, text: str) -> None:
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
            raw = _value_to_bytes(name, parts[i + 1])
            comps.append(Component(name, _value_to_text(name, raw), raw))
            i += 2
        self._components = tuple(comps)
        self._bytes = b"".join(c.encode() for c in comps)

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
        comps: list[Component] = []
        i = 0
        while i < len(data):
            code, i = varint.decode(data, i)
            if code not in _BY_CODE:
                raise DecodeError(f"unknown multiaddr protocol code {code}")
            name, size = _BY_CODE[code]
            if size == -1:
                size, i = varint.decode(data, i)
            if i + size > len(data):
                raise DecodeError(f"truncated /{name} value")
            raw = bytes(data[i : i + size])
            i += size
            if name in ("ip4", "ip6", "tcp", "udp") and size != _PROTOCOLS[name][1]:
                raise DecodeError(f"bad /{name} length")
            value = _value_to_text(name, raw) if _PROTOCOLS[name][1] != 0 else None
            if name == "p2p":
                from peerstack.core.peer_id import PeerId

                PeerId(raw)  # validates the multihash
            comps.append(Component(name, value, raw))
        return cls.from_components(tuple(comps))

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
        if self._components and self._components[-1].name == "p2p":
            return Multiaddr.from_components(self._components[:-1]), self._components[-1].value
        return self, None

    def tcp_target(self) -> tuple[str, int] | None:
        """``(host, port)`` if this is a dialable /ip4|/ip6|/dns*/tcp address, else ``None``."""
        comps = self.decapsulate_p2p()[0]._components
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

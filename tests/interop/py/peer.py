# mypy: disable-error-code="import-not-found,import-untyped,unused-ignore"
# (This program runs in its own venv, .venv-pylibp2p, where py-libp2p and trio are installed;
# the project's venv type-checks it without them.)
"""A py-libp2p peer that the peerstack test suite drives as a subprocess.

Usage: ``.venv-pylibp2p/bin/python peer.py --listen /ip4/127.0.0.1/tcp/0 [--seed-hex HEX32]``

The same line protocol as ``tests/interop/js/peer.mjs``: when ready it prints one JSON line
``{"peerId": ..., "addrs": [...], "protocols": [...], "agentVersion": ...}`` on stdout, serves
identify, ping, ``/echo/1.0.0`` and ``/perf/1.0.0`` (py-libp2p's own PerfService), then reads
JSON commands on stdin (``dial``, ``ping``, ``identify``, ``perf``, ``echo``, ``echo-reset``,
``hangup``, ``peers``, ``stop``) and answers each with one JSON line carrying the same ``id``.
Server-side events are JSON lines with an ``event`` key. Logs go to stderr.

With ``--dht`` it also runs py-libp2p's KadDHT in server mode, with the commands
``dht-table``, ``dht-add-peer`` (connect to ``addr`` and add it to the routing table: py-libp2p
adds a peer on its own only when that peer queries it), ``dht-find-peer`` (``peerId``),
``dht-put``/``dht-get`` (``key`` as text, ``value_hex``), ``dht-provide`` and
``dht-find-providers`` (``cid`` as text).

Security is Noise only and the muxer Yamux only, so that a test never silently falls back to
something our stack does not speak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import secrets
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.identity.identify.identify import ID as IDENTIFY_ID
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.peer.id import ID as PeerID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.perf.perf_service import PerfService
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

log = logging.getLogger("py-peer")

ECHO_PROTOCOL = TProtocol("/echo/1.0.0")
PERF_PROTOCOL = TProtocol("/perf/1.0.0")
PING_PROTOCOL = TProtocol("/ipfs/ping/1.0.0")
CHUNK = 64 * 1024
MAX_LINE = 16 << 20
MAX_IDENTIFY = 8192

Json = dict[str, Any]


def emit(obj: Json) -> None:
    """One JSON object per stdout line; trio runs tasks on one thread, so lines never mix."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def remote_peer(stream: INetStream) -> str:
    return str(stream.muxed_conn.peer_id)


async def read_some(stream: INetStream, n: int = CHUNK) -> bytes:
    """Read up to n bytes; b"" at end of stream (py-libp2p raises StreamEOF there)."""
    try:
        data: bytes = await stream.read(n)
    except StreamEOF:
        return b""
    return data


async def read_exactly(stream: INetStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await read_some(stream, n - len(buf))
        if not chunk:
            raise EOFError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_to_end(stream: INetStream, sink: bytearray | None = None) -> int:
    total = 0
    while True:
        chunk = await read_some(stream)
        if not chunk:
            return total
        total += len(chunk)
        if sink is not None:
            sink += chunk


def uvarint_decode(data: bytes) -> tuple[int, int]:
    value = 0
    for i, byte in enumerate(data[:10]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise ValueError("bad or incomplete uvarint")


# --- server handlers ---


async def handle_echo(stream: INetStream) -> None:
    """Echo every byte until the remote closes its write side, then close ours."""
    peer = remote_peer(stream)
    total = 0
    try:
        while True:
            chunk = await read_some(stream)
            if not chunk:
                break
            total += len(chunk)
            await stream.write(chunk)
        await stream.close()
        emit({"event": "echo", "peerId": peer, "bytes": total, "result": "closed"})
    except StreamReset as exc:
        emit(
            {"event": "echo", "peerId": peer, "bytes": total, "result": "reset", "error": str(exc)}
        )
    except Exception as exc:  # noqa: BLE001 - reported to the test driver, then the stream resets
        emit(
            {"event": "echo", "peerId": peer, "bytes": total, "result": "error", "error": repr(exc)}
        )
        await stream.reset()


# --- client actions ---


async def connect(host: IHost, addr: str) -> PeerID:
    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    await host.connect(info)
    peer_id: PeerID = info.peer_id
    return peer_id


async def cmd_dial(host: IHost, msg: Json) -> Json:
    peer_id = await connect(host, msg["addr"])
    conns = host.get_network().get_connections(peer_id)
    remote = None
    if conns:
        raw = conns[0].get_transport_addresses()
        remote = str(raw[0]) if raw else None
    return {"peerId": str(peer_id), "remoteAddr": remote}


async def cmd_ping(host: IHost, msg: Json) -> Json:
    peer_id = await connect(host, msg["addr"])
    stream = await host.new_stream(peer_id, [PING_PROTOCOL])
    rtts: list[float] = []
    try:
        for _ in range(int(msg.get("count", 1))):
            ping = secrets.token_bytes(32)
            start = time.perf_counter()
            await stream.write(ping)
            pong = await read_exactly(stream, 32)
            rtts.append((time.perf_counter() - start) * 1000.0)
            if pong != ping:
                raise ValueError("ping: payload mismatch")
    finally:
        await stream.close()
    return {"rtts_ms": rtts}


async def cmd_identify(host: IHost, msg: Json) -> Json:
    peer_id = await connect(host, msg["addr"])
    stream = await host.new_stream(peer_id, [IDENTIFY_ID])
    buf = bytearray()
    with trio.fail_after(10):
        while len(buf) <= MAX_IDENTIFY:
            chunk = await read_some(stream)
            if not chunk:
                break
            buf += chunk
    await stream.close()
    length, off = uvarint_decode(bytes(buf))
    if off + length > len(buf):
        raise ValueError(f"identify: truncated message ({len(buf) - off} of {length} bytes)")
    ident = Identify()
    ident.ParseFromString(bytes(buf[off : off + length]))
    observed = None
    if ident.HasField("observed_addr"):
        observed = str(multiaddr.Multiaddr(ident.observed_addr))
    return {
        "peerId": str(peer_id),
        "protocols": list(ident.protocols),
        "listenAddrs": [str(multiaddr.Multiaddr(a)) for a in ident.listen_addrs],
        "observedAddr": observed,
        "publicKey": ident.public_key.hex() if ident.HasField("public_key") else None,
        "agentVersion": ident.agent_version if ident.HasField("agent_version") else None,
        "protocolVersion": (ident.protocol_version if ident.HasField("protocol_version") else None),
        "signedPeerRecord": ident.HasField("signedPeerRecord"),
    }


async def cmd_perf(host: IHost, msg: Json) -> Json:
    upload = int(msg.get("upload", 0))
    download = int(msg.get("download", 0))
    peer_id = await connect(host, msg["addr"])
    t0 = time.perf_counter()
    stream = await host.new_stream(peer_id, [PERF_PROTOCOL])
    await stream.write(struct.pack(">Q", download))
    block = bytes(CHUNK)
    left = upload
    while left > 0:
        n = min(left, CHUNK)
        await stream.write(block if n == CHUNK else block[:n])
        left -= n
    await stream.close_write()  # type: ignore[attr-defined]
    t1 = time.perf_counter()
    got = await read_to_end(stream)
    t2 = time.perf_counter()
    await stream.close()
    if got != download:
        raise ValueError(f"perf: expected {download} bytes back, got {got}")
    seconds = t2 - t0
    return {
        "upload_bytes": upload,
        "download_bytes": got,
        "seconds": seconds,
        "upload_seconds": t1 - t0,
        "download_seconds": t2 - t1,
        "bytes_per_second": (upload + got) / seconds,
    }


async def echo_once(host: IHost, peer_id: PeerID, data: bytes) -> bytes:
    stream = await host.new_stream(peer_id, [ECHO_PROTOCOL])
    got = bytearray()

    async def writer() -> None:
        for off in range(0, len(data), CHUNK):
            await stream.write(data[off : off + CHUNK])
        await stream.close_write()  # type: ignore[attr-defined]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await read_to_end(stream, got)
    await stream.close()
    return bytes(got)


def payload(msg: Json) -> bytes:
    """The bytes a command sends: data_hex, or "size" random bytes (no hex on the wire)."""
    if "size" in msg:
        return secrets.token_bytes(int(msg["size"]))
    return bytes.fromhex(msg.get("data_hex", ""))


async def cmd_echo(host: IHost, msg: Json) -> Json:
    data = payload(msg)
    streams = int(msg.get("streams", 1))
    peer_id = await connect(host, msg["addr"])
    results: list[bytes] = [b""] * streams

    async def one(i: int) -> None:
        results[i] = await echo_once(host, peer_id, data)

    async with trio.open_nursery() as nursery:
        for i in range(streams):
            nursery.start_soon(one, i)
    mismatched = sum(1 for r in results if r != data)
    return {
        "streams": streams,
        "bytes": len(data),
        "mismatched": mismatched,
        "echoed_hex": results[0].hex() if len(data) <= 4096 else None,
    }


async def cmd_echo_reset(host: IHost, msg: Json) -> Json:
    """Send data on an echo stream, read read_bytes of the echo, then reset the stream."""
    data = payload(msg)
    want = int(msg.get("read_bytes", 0))
    peer_id = await connect(host, msg["addr"])
    stream = await host.new_stream(peer_id, [ECHO_PROTOCOL])
    got = 0

    async def writer() -> None:
        # Not cancelled from outside: a trio cancellation inside py-libp2p's write can leave
        # half a frame on the connection. The reset below makes a blocked write fail instead.
        try:
            for off in range(0, len(data), CHUNK):
                await stream.write(data[off : off + CHUNK])
        except (StreamReset, StreamClosed, StreamError) as exc:
            log.info("echo-reset writer stopped: %r", exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        while got < want:
            chunk = await read_some(stream)
            if not chunk:
                break
            got += len(chunk)
        await stream.reset()
    # The connection must outlive the stream: prove it with a ping on it.
    ping = await cmd_ping(host, {"addr": msg["addr"], "count": 1})
    return {"read": got, "connectionAlive": True, "rtt_ms": ping["rtts_ms"][0]}


async def cmd_hangup(host: IHost, msg: Json) -> Json:
    info = info_from_p2p_addr(multiaddr.Multiaddr(msg["addr"]))
    conns = host.get_network().get_connections(info.peer_id)
    await host.disconnect(info.peer_id)
    return {"closed": len(conns)}


async def cmd_peers(host: IHost, msg: Json) -> Json:
    del msg
    return {"connections": [{"peerId": str(p)} for p in host.get_connected_peers()]}


# --- Kademlia DHT (--dht): py-libp2p's KadDHT in server mode ---


class DhtCommands:
    """DHT commands; keys are text (``key``) the way py-libp2p's KadDHT takes them."""

    def __init__(self, dht: KadDHT | None) -> None:
        self.dht = dht

    def _dht(self) -> KadDHT:
        if self.dht is None:
            raise RuntimeError("this peer runs without --dht")
        return self.dht

    def table(self) -> list[str]:
        return [str(p) for p in self._dht().routing_table.get_peer_ids()]

    async def cmd_table(self, host: IHost, msg: Json) -> Json:
        del host, msg
        return {"peers": self.table(), "mode": str(self._dht().mode.name).lower()}

    async def cmd_add_peer(self, host: IHost, msg: Json) -> Json:
        """Connect to addr and put the peer in our routing table (py-libp2p does not on dial)."""
        peer_id = await connect(host, msg["addr"])
        added = await self._dht().add_peer(peer_id)
        return {"added": bool(added), "peers": self.table()}

    async def cmd_find_peer(self, host: IHost, msg: Json) -> Json:
        del host
        with trio.fail_after(float(msg.get("timeout_ms", 30000)) / 1000):
            info = await self._dht().find_peer(PeerID.from_base58(msg["peerId"]))
        if info is None:
            raise LookupError(f"peer {msg['peerId']} not found")
        return {"peerId": str(info.peer_id), "addrs": [str(a) for a in info.addrs]}

    async def cmd_put(self, host: IHost, msg: Json) -> Json:
        del host
        with trio.fail_after(float(msg.get("timeout_ms", 30000)) / 1000):
            await self._dht().put_value(msg["key"], bytes.fromhex(msg["value_hex"]))
        return {}

    async def cmd_get(self, host: IHost, msg: Json) -> Json:
        del host
        with trio.fail_after(float(msg.get("timeout_ms", 30000)) / 1000):
            value = await self._dht().get_value(msg["key"])
        if value is None:
            raise LookupError("no value found")
        return {"value_hex": bytes(value).hex()}

    async def cmd_provide(self, host: IHost, msg: Json) -> Json:
        del host
        with trio.fail_after(float(msg.get("timeout_ms", 30000)) / 1000):
            ok = await self._dht().provide(msg["cid"])
        return {"ok_provide": bool(ok)}

    async def cmd_find_providers(self, host: IHost, msg: Json) -> Json:
        del host
        with trio.fail_after(float(msg.get("timeout_ms", 30000)) / 1000):
            found = await self._dht().find_providers(msg["cid"], int(msg.get("count", 20)))
        return {
            "providers": [
                {"peerId": str(p.peer_id), "addrs": [str(a) for a in p.addrs]} for p in found
            ]
        }

    def commands(self) -> dict[str, Callable[[IHost, Json], Awaitable[Json]]]:
        return {
            "dht-table": self.cmd_table,
            "dht-add-peer": self.cmd_add_peer,
            "dht-find-peer": self.cmd_find_peer,
            "dht-put": self.cmd_put,
            "dht-get": self.cmd_get,
            "dht-provide": self.cmd_provide,
            "dht-find-providers": self.cmd_find_providers,
        }


COMMANDS: dict[str, Callable[[IHost, Json], Awaitable[Json]]] = {
    "dial": cmd_dial,
    "ping": cmd_ping,
    "identify": cmd_identify,
    "perf": cmd_perf,
    "echo": cmd_echo,
    "echo-reset": cmd_echo_reset,
    "hangup": cmd_hangup,
    "peers": cmd_peers,
}


async def run_command(
    host: IHost, msg: Json, commands: dict[str, Callable[[IHost, Json], Awaitable[Json]]]
) -> None:
    ident = msg.get("id")
    fn = commands.get(str(msg.get("cmd")))
    if fn is None:
        emit({"id": ident, "ok": False, "error": f"unknown command {msg.get('cmd')}"})
        return
    try:
        result = await fn(host, msg)
    except Exception as exc:  # every failure is reported to the test driver
        log.warning("%s failed", msg.get("cmd"), exc_info=True)
        emit(
            {
                "id": ident,
                "ok": False,
                "error": str(exc) or repr(exc),
                "errorName": type(exc).__name__,
            }
        )
        return
    emit({"id": ident, "ok": True, **result})


async def stdin_lines() -> Any:
    """Yield stdin lines without blocking the trio loop."""
    stream = trio.lowlevel.FdStream(sys.stdin.fileno())
    buf = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            if buf.strip():
                yield buf.decode()
            return
        buf += chunk
        if len(buf) > MAX_LINE and b"\n" not in buf:
            raise ValueError("command line too long")
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", action="append", default=None)
    parser.add_argument("--seed-hex", default=None, help="32-byte Ed25519 seed, hex")
    parser.add_argument("--dht", action="store_true", help="run py-libp2p's KadDHT (server)")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> None:
    seed = bytes.fromhex(args.seed_hex) if args.seed_hex else None
    key_pair = create_new_key_pair(seed)
    listen = [multiaddr.Multiaddr(a) for a in (args.listen or ["/ip4/127.0.0.1/tcp/0"])]
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        listen_addrs=listen,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
    )
    async with host.run(listen_addrs=listen), contextlib.AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        host.set_stream_handler(ECHO_PROTOCOL, handle_echo)
        perf = PerfService(host)
        await perf.start()
        dht: KadDHT | None = None
        if args.dht:
            dht = KadDHT(host, DHTMode.SERVER)
            await stack.enter_async_context(background_trio_service(dht))
        commands = {**COMMANDS, **DhtCommands(dht).commands()}
        me = host.get_id()
        addrs = []
        for a in host.get_addrs():
            text = str(a)
            addrs.append(text if "/p2p/" in text else f"{text}/p2p/{me}")
        emit(
            {
                "peerId": str(me),
                "addrs": addrs,
                "protocols": sorted(str(p) for p in host.get_mux().get_protocols() if p),
                "agentVersion": "py-libp2p/" + _libp2p_version(),
            }
        )
        async for line in stdin_lines():
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError as exc:
                emit({"id": None, "ok": False, "error": f"bad JSON: {exc}"})
                continue
            if msg.get("cmd") == "stop":
                emit({"id": msg.get("id"), "ok": True})
                break
            nursery.start_soon(run_command, host, msg, commands)
        nursery.cancel_scope.cancel()


def _libp2p_version() -> str:
    from importlib.metadata import version

    return version("libp2p")


def main() -> None:
    args = parse_args(sys.argv[1:])
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="[py-peer] %(message)s")
    trio.run(amain, args)


if __name__ == "__main__":
    main()

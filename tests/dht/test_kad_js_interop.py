"""Our DHT against js-libp2p's kad-dht (the third-party peer in ``tests/interop/js``).

Both directions of FIND_NODE, ADD_PROVIDER/GET_PROVIDERS and PUT/GET of ``/pk/`` records.
With the npm package ``ipns`` installed next to js-libp2p, IPNS records too: js validates the
records we sign, and we validate the V1+V2 and V2-only records js signs.
The js peer is a short script run with ``node --input-type=module`` in that directory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from peerstack.core import multibase, multihash
from peerstack.core.identity import PrivateKey
from peerstack.core.multiaddr import Multiaddr
from peerstack.core.peer_id import PeerId
from peerstack.dht.config import DhtConfig
from peerstack.dht.records import create_ipns_record, ipns_key, parse_ipns_record, pk_key
from peerstack.dht.service import KadDHT
from peerstack.node import Node

pytestmark = pytest.mark.interop

JS_DIR = Path(__file__).resolve().parents[1] / "interop" / "js"
NODE_BIN = JS_DIR / "node_modules" / ".bin" / "node"

JS_PEER = r"""
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { peerIdFromString, peerIdFromPrivateKey } from '@libp2p/peer-id'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { CID } from 'multiformats/cid'
import { createInterface } from 'node:readline'

let ipns = null
try {
  ipns = {
    ...(await import('ipns')),
    ...(await import('ipns/validator')),
    ...(await import('ipns/selector'))
  }
} catch {}
const emit = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (u) => Buffer.from(u).toString('hex')
const dhtInit = {
  protocol: '/ipfs/kad/1.0.0',
  clientMode: false,
  peerInfoMapper: passthroughMapper,  // loopback addresses are all we have here
  allowQueryWithZeroPeers: true
}
if (ipns) {
  dhtInit.validators = { ipns: ipns.ipnsValidator }
  dhtInit.selectors = { ipns: ipns.ipnsSelector }
}
const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), ping: ping(), dht: kadDHT(dhtInit) }
})
emit({ peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(String), ipns: !!ipns })
const signal = () => AbortSignal.timeout(20000)
const bytes = (h) => Buffer.from(h, 'hex')
const commands = {
  rt: async () => ({ size: node.services.dht.routingTable.size }),
  findPeer: async (m) => {
    const info = await node.peerRouting.findPeer(peerIdFromString(m.peer), { signal: signal() })
    return { addrs: info.multiaddrs.map(String) }
  },
  provide: async (m) => {
    await node.contentRouting.provide(CID.parse(m.cid), { signal: signal() })
    return {}
  },
  findProviders: async (m) => {
    const out = []
    const found = node.contentRouting.findProviders(CID.parse(m.cid), { signal: signal() })
    for await (const p of found) {
      out.push(p.id.toString())
      break
    }
    return { providers: out }
  },
  get: async (m) => {
    return { value: hex(await node.contentRouting.get(bytes(m.key), { signal: signal() })) }
  },
  put: async (m) => {
    await node.contentRouting.put(bytes(m.key), bytes(m.value), { signal: signal() })
    return {}
  },
  mkipns: async (m) => {
    const key = await generateKeyPair('Ed25519')
    const opts = m.v2only ? { v1Compatible: false } : {}
    const rec = await ipns.createIPNSRecord(key, '/ipfs/bafkqaaa', 5n, 3600000, opts)
    const pid = peerIdFromPrivateKey(key)
    return {
      record: hex(ipns.marshalIPNSRecord(rec)),
      key: hex(ipns.multihashToIPNSRoutingKey(pid.toMultihash())),
      peer: pid.toString()
    }
  }
}
const rl = createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  const m = JSON.parse(line)
  try {
    emit({ id: m.id, ok: true, ...(await commands[m.cmd](m)) })
  } catch (e) {
    emit({ id: m.id, ok: false, error: String(e?.stack ?? e) })
  }
})
rl.on('close', async () => { await node.stop(); process.exit(0) })
"""


class JsDht:
    def __init__(self, proc: asyncio.subprocess.Process, hello: dict[str, Any]) -> None:
        self.proc = proc
        self.peer_id = PeerId.from_string(hello["peerId"])
        self.addr = Multiaddr(hello["addrs"][0])
        self.has_ipns = bool(hello["ipns"])
        self._next = 0

    async def cmd(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._next += 1
        self.proc.stdin.write((json.dumps({"id": self._next, "cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 60))
        assert reply["id"] == self._next
        assert reply["ok"], reply.get("error")
        return reply


@pytest.fixture
async def js_dht() -> AsyncIterator[JsDht]:
    if not NODE_BIN.exists() or not (JS_DIR / "node_modules" / "@libp2p" / "kad-dht").exists():
        pytest.skip("js-libp2p with @libp2p/kad-dht is not installed (scripts/setup-interop.sh)")
    proc = await asyncio.create_subprocess_exec(
        str(NODE_BIN),
        "--input-type=module",
        "-e",
        JS_PEER,
        cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        hello = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        yield JsDht(proc, hello)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def our_dht(js_dht: JsDht) -> AsyncIterator[KadDHT]:
    async with Node() as node:
        cfg = DhtConfig(
            background=False,
            max_per_group_bucket=None,
            max_per_group_table=None,
            bootstrap_peers=[js_dht.addr],
        )
        dht = KadDHT(node.host, cfg)
        await dht.start()
        try:
            assert await dht.bootstrap()
            yield dht
        finally:
            await dht.stop()


def cid_of(data: bytes) -> tuple[bytes, str]:
    mh = multihash.digest(data).to_bytes()
    return mh, multibase.encode(b"\x01\x55" + mh, "base32")  # CIDv1, raw


async def test_routing_both_ways(js_dht: JsDht, our_dht: KadDHT) -> None:
    assert js_dht.peer_id in our_dht.routing_table
    info = await our_dht.find_peer(js_dht.peer_id)
    assert info is not None
    assert info.addrs
    # js adds us to its table after identify (which lists the kad protocol) and a ping.
    for _ in range(50):
        if (await js_dht.cmd("rt"))["size"] >= 1:
            break
        await asyncio.sleep(0.1)
    found = await js_dht.cmd("findPeer", peer=str(our_dht.host.peer_id))
    assert found["addrs"]


async def test_providers_both_ways(js_dht: JsDht, our_dht: KadDHT) -> None:
    mh, cid = cid_of(b"provided by us")
    assert await our_dht.provide(mh) == 1
    got = await js_dht.cmd("findProviders", cid=cid)
    assert got["providers"] == [str(our_dht.host.peer_id)]
    mh2, cid2 = cid_of(b"provided by js")
    await js_dht.cmd("provide", cid=cid2)
    found = await our_dht.find_providers(mh2)
    assert [p.peer_id for p in found] == [js_dht.peer_id]


async def test_pk_record_both_ways(js_dht: JsDht, our_dht: KadDHT) -> None:
    me = our_dht.host.peer_id
    pub = me.extract_public_key()
    assert pub is not None
    assert await our_dht.put_value(pk_key(me), pub.to_protobuf()) == 1
    got = await js_dht.cmd("get", key=pk_key(me).hex())
    assert bytes.fromhex(got["value"]) == pub.to_protobuf()


async def test_ipns_records_both_ways(js_dht: JsDht, our_dht: KadDHT) -> None:
    if not js_dht.has_ipns:
        pytest.skip("the npm package 'ipns' is not installed next to js-libp2p")
    owner = PrivateKey.generate()
    name = PeerId.from_public_key(owner.public_key)
    ours = create_ipns_record(owner, b"/ipfs/bafkqaaa", 1, time.time_ns() + 10**13)
    assert await our_dht.put_value(ipns_key(name), ours) == 1  # js's validator accepted it
    got = await js_dht.cmd("get", key=ipns_key(name).hex())
    assert bytes.fromhex(got["value"]) == ours
    for v2only in (False, True):
        made = await js_dht.cmd("mkipns", v2only=v2only)
        peer = PeerId.from_string(made["peer"])
        raw = bytes.fromhex(made["record"])
        assert bytes.fromhex(made["key"]) == ipns_key(peer)
        rec = parse_ipns_record(peer, raw, time.time())
        assert rec.sequence == 5
        assert rec.value == b"/ipfs/bafkqaaa"
        await js_dht.cmd("put", key=made["key"], value=made["record"])
        assert await our_dht.get_value(ipns_key(peer)) == raw

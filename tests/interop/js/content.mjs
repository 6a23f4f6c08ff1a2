// Kademlia DHT and helia (bitswap + UnixFS) for the js test peer, enabled by peer.mjs's
// --dht and --helia flags. Everything stays on loopback: no bootstrap list, no HTTP routers or
// gateways, no mDNS; the peer only talks to the peers a test tells it to dial.
//
// Commands (JSON lines on stdin, answered like the others in peer.mjs):
//   {"cmd": "dht-table"}                                   -> {"peers": [peerId...], "mode": "server"}
//   {"cmd": "dht-wait-table", "size": N, "timeout_ms": T}  -> {"peers": [...]} once >= N peers
//   {"cmd": "dht-find-peer", "peerId": "..."}              -> {"peerId", "addrs": [...]}
//   {"cmd": "dht-closest", "key_hex": "..."}               -> {"peers": [peerId...]}
//   {"cmd": "dht-put", "key_hex": "...", "value_hex": "..."}  (keys under /test/ are accepted
//                                                            by a permissive validator)
//   {"cmd": "dht-get", "key_hex": "..."}                   -> {"value_hex": "..."}
//   {"cmd": "dht-provide", "cid": "..."}                   -> {}
//   {"cmd": "dht-find-providers", "cid": "...", "count": 1} -> {"providers": [{peerId, addrs}]}
//   {"cmd": "add", "size": N | "data_hex": "...", "profile": "unixfs-v1-2025"|"unixfs-v0-2015",
//    "chunk_size": B, "max_links": L, "raw_leaves": bool, "cid_version": 0|1, "provide": bool}
//                                                          -> {"cid", "size", "sha256"}
//   {"cmd": "cat", "cid": "...", "addr": "..." (dial first, optional), "timeout_ms": T}
//                                                          -> {"size", "sha256", "data_hex" if <= 4 KiB}
//   {"cmd": "has", "cid": "..."}                           -> {"has": bool}

import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { createHeliaLight } from 'helia'
import { withLibp2pLight } from '@helia/libp2p'
import { withBitswap } from '@helia/bitswap'
import { unixfs } from '@helia/unixfs'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { CID } from 'multiformats/cid'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { createHash } from 'node:crypto'

const SMALL = 4096

function toHex (bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')
}

function fromHex (text) {
  return new Uint8Array(Buffer.from(text ?? '', 'hex'))
}

// The DHT service for createLibp2p's `services`. Server mode, the standard protocol id,
// loopback addresses kept (the default mapper drops private addresses, which is all a test
// network has), and a permissive /test/ record namespace for put/get tests.
export function dhtService () {
  return kadDHT({
    protocol: '/ipfs/kad/1.0.0',
    clientMode: false,
    peerInfoMapper: passthroughMapper,
    allowQueryWithZeroPeers: true,
    validators: { test: async () => {} },
    selectors: { test: () => 0 }
  })
}

// A helia node whose libp2p is built from `libp2pOptions` (no defaults merged in: the helia
// defaults would add public bootstrap peers, delegated HTTP routing and more).
export async function startHelia (libp2pOptions) {
  const helia = withBitswap(withLibp2pLight(createHeliaLight({}), libp2pOptions))
  await helia.start()
  return helia
}

async function drain (events) {
  const out = []
  for await (const ev of events) {
    out.push(ev)
  }
  return out
}

function dhtOf (node) {
  const dht = node.services.dht
  if (dht == null) {
    throw new Error('this peer runs without --dht')
  }
  return dht
}

function peerInfoJson (info) {
  return { peerId: info.id.toString(), addrs: (info.multiaddrs ?? []).map(a => a.toString()) }
}

function tablePeers (dht) {
  // kadDHT() returns a wrapper with a routing table per mode; the LAN/WAN split is gone in
  // recent versions, so take whichever table is there.
  const table = dht.routingTable ?? dht.wan?.routingTable ?? dht.lan?.routingTable
  if (table == null) return []
  return [...table.kb.toIterable()].map(c => c.peerId.toString())
}

// @helia/unixfs spreads its own defaults (CIDv1, raw leaves, 1 MiB chunks, 1024 links) before
// the caller's options, and the importer applies a profile only to fields left unset: so
// {profile: 'unixfs-v0-2015'} alone still gives CIDv1 raw leaves. Spell the profiles out.
const PROFILES = {
  'unixfs-v0-2015': { cid_version: 0, raw_leaves: false, chunk_size: 262144, max_links: 174 },
  'unixfs-v1-2025': { cid_version: 1, raw_leaves: true, chunk_size: 1048576, max_links: 1024 }
}

function unixfsOptions (request) {
  const opts = {}
  if (request.profile != null && PROFILES[request.profile] == null) {
    throw new Error(`unknown profile ${request.profile}`)
  }
  const msg = { ...(PROFILES[request.profile] ?? {}), ...request }
  if (msg.profile != null) opts.profile = msg.profile
  if (msg.raw_leaves != null) opts.rawLeaves = msg.raw_leaves
  if (msg.cid_version != null) opts.cidVersion = msg.cid_version
  if (msg.chunk_size != null) opts.chunker = fixedSize({ chunkSize: msg.chunk_size })
  if (msg.max_links != null) opts.layout = balanced({ maxChildrenPerNode: msg.max_links })
  return opts
}

export function contentCommands (helia, payload) {
  return {
    'dht-table': async (node) => {
      const dht = dhtOf(node)
      return { peers: tablePeers(dht), mode: dht.getMode() }
    },
    'dht-wait-table': async (node, msg) => {
      const dht = dhtOf(node)
      const deadline = Date.now() + (msg.timeout_ms ?? 20000)
      for (;;) {
        const peers = tablePeers(dht)
        if (peers.length >= (msg.size ?? 1)) return { peers }
        if (Date.now() > deadline) {
          throw new Error(`routing table has ${peers.length} peers, wanted ${msg.size ?? 1}`)
        }
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    },
    'dht-find-peer': async (node, msg) => {
      const found = await node.peerRouting.findPeer(peerIdFromString(msg.peerId), { signal: AbortSignal.timeout(msg.timeout_ms ?? 30000) })
      return peerInfoJson(found)
    },
    'dht-closest': async (node, msg) => {
      const events = await drain(dhtOf(node).getClosestPeers(fromHex(msg.key_hex), { signal: AbortSignal.timeout(msg.timeout_ms ?? 30000) }))
      const peers = events.filter(e => e.name === 'FINAL_PEER').map(e => e.peer.id.toString())
      return { peers: [...new Set(peers)] }
    },
    'dht-put': async (node, msg) => {
      const events = await drain(dhtOf(node).put(fromHex(msg.key_hex), fromHex(msg.value_hex), { signal: AbortSignal.timeout(msg.timeout_ms ?? 30000) }))
      const errors = events.filter(e => e.name === 'QUERY_ERROR').map(e => String(e.error?.message ?? e.error))
      return { events: events.length, errors }
    },
    'dht-get': async (node, msg) => {
      const events = await drain(dhtOf(node).get(fromHex(msg.key_hex), { signal: AbortSignal.timeout(msg.timeout_ms ?? 30000) }))
      const values = events.filter(e => e.name === 'VALUE')
      if (values.length === 0) throw new Error('no value found')
      return { value_hex: toHex(values[values.length - 1].value), from: values[values.length - 1].from.toString() }
    },
    'dht-provide': async (node, msg) => {
      await node.contentRouting.provide(CID.parse(msg.cid), { signal: AbortSignal.timeout(msg.timeout_ms ?? 30000) })
      return {}
    },
    'dht-find-providers': async (node, msg) => {
      const want = msg.count ?? 1
      const providers = []
      const signal = AbortSignal.timeout(msg.timeout_ms ?? 30000)
      for await (const p of node.contentRouting.findProviders(CID.parse(msg.cid), { signal })) {
        providers.push(peerInfoJson(p))
        if (providers.length >= want) break
      }
      return { providers }
    },
    add: async (node, msg) => {
      if (helia == null) throw new Error('this peer runs without --helia')
      const data = payload(msg)
      const cid = await unixfs(helia).addBytes(data, unixfsOptions(msg))
      if (msg.provide === true) {
        await node.contentRouting.provide(cid, { signal: AbortSignal.timeout(msg.timeout_ms ?? 30000) })
      }
      return { cid: cid.toString(), size: data.byteLength, sha256: createHash('sha256').update(data).digest('hex') }
    },
    cat: async (node, msg) => {
      if (helia == null) throw new Error('this peer runs without --helia')
      if (msg.addr != null) {
        await node.dial(multiaddr(msg.addr))
      }
      const hash = createHash('sha256')
      const small = []
      let size = 0
      const signal = AbortSignal.timeout(msg.timeout_ms ?? 60000)
      for await (const chunk of unixfs(helia).cat(CID.parse(msg.cid), { signal })) {
        hash.update(chunk)
        size += chunk.byteLength
        if (size <= SMALL) small.push(Buffer.from(chunk))
      }
      return { size, sha256: hash.digest('hex'), data_hex: size <= SMALL ? Buffer.concat(small).toString('hex') : null }
    },
    has: async (node, msg) => {
      if (helia == null) throw new Error('this peer runs without --helia')
      return { has: await helia.blockstore.has(CID.parse(msg.cid)) }
    }
  }
}

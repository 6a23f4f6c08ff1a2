// A helia 7 node that the helia interop tests drive (tests/interop/test_helia_interop.py).
//
// libp2p with TCP + Noise + Yamux + identify and helia's Bitswap, listening on 127.0.0.1 only:
// no bootstrap list, no HTTP routers or gateways, no DHT. It prints one JSON line
// {"peerId", "addrs"} when ready, then takes JSON commands on stdin, one a line, and answers
// each with a JSON line {"id", "ok": true, ...} or {"id", "ok": false, "error"}.
//
// Node resolves imports next to the script: the harness copies this file into a scratch folder
// whose node_modules links to tests/interop/js/node_modules (helia, @helia/unixfs...).
//
// Commands ("profile" is "default" or "legacy"):
//   {"cmd": "add-file", "path", "profile"}   -> {"cid", "size", "sha256", "ms"}  (streamed from disk)
//   {"cmd": "add-dir", "path", "profile"}    -> {"cid", "ms"}  (the folder itself is the root)
//   {"cmd": "hash-file", "path", "profile"}  -> {"cid"}  (import into a scratch store: a CID only)
//   {"cmd": "dial", "addr"}                  -> {"peerId"}
//   {"cmd": "cat", "cid", "out"?, "timeout_ms"?} -> {"size", "sha256", "ms"}  (bytes to "out" if given)
//   {"cmd": "ls", "cid"}                     -> {"entries": [{"name", "cid", "type", "size"}]}
//   {"cmd": "tree", "cid", "timeout_ms"?}    -> {"entries": [{"path", "type", "size", "sha256"}], "ms"}
//   {"cmd": "has", "cid"}                    -> {"has"}
//
// default profile: CIDv1, raw leaves, 1 MiB chunks, balanced tree of 1024 links (helia's).
// legacy profile: CIDv0, 256 KiB chunks, balanced tree of 174 links, UnixFS file leaves (kubo's).
import { createHeliaLight } from 'helia'
import { withLibp2pLight } from '@helia/libp2p'
import { withBitswap } from '@helia/bitswap'
import { unixfs } from '@helia/unixfs'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { multiaddr } from '@multiformats/multiaddr'
import { MemoryBlockstore } from 'blockstore-core'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { CID } from 'multiformats/cid'
import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { createInterface } from 'node:readline'
import { once } from 'node:events'

// @helia/unixfs puts its own defaults under the caller's options; both profiles are spelled out
// in full so that neither depends on those defaults.
function profileOptions (name) {
  if (name == null || name === 'default') {
    return { cidVersion: 1, rawLeaves: true, chunker: fixedSize({ chunkSize: 1048576 }), layout: balanced({ maxChildrenPerNode: 1024 }) }
  }
  if (name === 'legacy') {
    return { cidVersion: 0, rawLeaves: false, chunker: fixedSize({ chunkSize: 262144 }), layout: balanced({ maxChildrenPerNode: 174 }) }
  }
  throw new Error(`unknown profile ${name}`)
}

const helia = withBitswap(withLibp2pLight(createHeliaLight({ blockstore: new MemoryBlockstore() }), {
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify() },
  // The tests dial this peer many times from one host in quick succession; js-libp2p's default
  // (5 new inbound connections per second per host) would refuse them mid-handshake.
  connectionManager: {
    inboundConnectionThreshold: 100000,
    maxIncomingPendingConnections: 1000
  }
}))
await helia.start()
const fs = unixfs(helia)

async function fileSha256 (path) {
  const hash = createHash('sha256')
  for await (const buf of createReadStream(path)) hash.update(buf)
  return hash.digest('hex')
}

// Entries for addAll: the folder and everything under it, paths starting with its name.
async function * dirEntries (root, prefix) {
  yield { path: prefix }
  const names = (await readdir(root)).sort()
  for (const name of names) {
    const full = join(root, name)
    const info = await stat(full)
    if (info.isDirectory()) {
      yield * dirEntries(full, `${prefix}/${name}`)
    } else {
      yield { path: `${prefix}/${name}`, content: createReadStream(full) }
    }
  }
}

async function catTo (cid, out, signal) {
  const hash = createHash('sha256')
  const sink = out == null ? null : createWriteStream(out)
  let size = 0
  for await (const buf of fs.cat(cid, { signal })) {
    hash.update(buf)
    size += buf.byteLength
    if (sink != null && !sink.write(buf)) await once(sink, 'drain')
  }
  if (sink != null) {
    sink.end()
    await once(sink, 'finish')
  }
  return { size, sha256: hash.digest('hex') }
}

async function walk (cid, prefix, signal, out) {
  for await (const entry of fs.ls(cid, { signal })) {
    const path = `${prefix}${entry.name}`
    // ls entries carry no type in @helia/unixfs 8: stat says what each one is.
    const info = await fs.stat(entry.cid, { signal })
    if (info.type === 'directory') {
      out.push({ path, type: 'directory', size: null, sha256: null })
      await walk(entry.cid, `${path}/`, signal, out)
    } else {
      const got = await catTo(entry.cid, null, signal)
      out.push({ path, type: 'file', size: got.size, sha256: got.sha256 })
    }
  }
  return out
}

const commands = {
  'add-file': async (msg) => {
    const t = Date.now()
    const cid = await fs.addByteStream(createReadStream(msg.path), profileOptions(msg.profile))
    const ms = Date.now() - t
    const info = await stat(msg.path)
    return { cid: cid.toString(), size: info.size, sha256: await fileSha256(msg.path), ms }
  },
  'add-dir': async (msg) => {
    const t = Date.now()
    const name = basename(msg.path)
    let root = null
    for await (const entry of fs.addAll(dirEntries(msg.path, name), profileOptions(msg.profile))) {
      if (entry.path === name) root = entry.cid
    }
    if (root == null) throw new Error('the importer yielded no root')
    return { cid: root.toString(), ms: Date.now() - t }
  },
  'hash-file': async (msg) => {
    const scratch = unixfs({ blockstore: new MemoryBlockstore() })
    const cid = await scratch.addByteStream(createReadStream(msg.path), profileOptions(msg.profile))
    return { cid: cid.toString() }
  },
  dial: async (msg) => {
    const conn = await helia.libp2p.dial(multiaddr(msg.addr))
    return { peerId: conn.remotePeer.toString() }
  },
  cat: async (msg) => {
    const t = Date.now()
    const got = await catTo(CID.parse(msg.cid), msg.out, AbortSignal.timeout(msg.timeout_ms ?? 120000))
    return { ...got, ms: Date.now() - t }
  },
  ls: async (msg) => {
    const entries = []
    for await (const e of fs.ls(CID.parse(msg.cid), { signal: AbortSignal.timeout(msg.timeout_ms ?? 60000) })) {
      const info = await fs.stat(e.cid)
      entries.push({ name: e.name, cid: e.cid.toString(), type: info.type, size: Number(e.size ?? 0) })
    }
    return { entries }
  },
  tree: async (msg) => {
    const t = Date.now()
    const entries = await walk(CID.parse(msg.cid), '', AbortSignal.timeout(msg.timeout_ms ?? 60000), [])
    return { entries, ms: Date.now() - t }
  },
  has: async (msg) => ({ has: await helia.blockstore.has(CID.parse(msg.cid)) })
}

console.log(JSON.stringify({ peerId: helia.libp2p.peerId.toString(), addrs: helia.libp2p.getMultiaddrs().map(String) }))

// Commands run one after another: the tests wait for each answer anyway.
const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (line.trim() === '') continue
  let msg
  try {
    msg = JSON.parse(line)
  } catch (err) {
    console.log(JSON.stringify({ ok: false, error: `bad JSON: ${err.message}` }))
    continue
  }
  const handler = commands[msg.cmd]
  try {
    if (handler == null) throw new Error(`unknown command ${msg.cmd}`)
    const answer = await handler(msg)
    console.log(JSON.stringify({ id: msg.id, ok: true, ...answer }))
  } catch (err) {
    console.log(JSON.stringify({ id: msg.id, ok: false, error: `${err.name}: ${err.message}` }))
  }
}
await helia.stop()
process.exit(0)

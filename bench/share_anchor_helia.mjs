// helia -> helia over TCP on loopback: the IPFS anchor of bench/share_1gib.py.
//
// Run with Node 22 from the npm install at tests/interop/js (its package.json has helia,
// @helia/unixfs, blockstore-core, libp2p, @libp2p/tcp, noise, yamux, identify). This file lives
// in bench/, outside that install, so packages are loaded from --js-dir explicitly.
//
//   node share_anchor_helia.mjs seed  --js-dir DIR --src FILE
//        -> one JSON line {"addr": "/ip4/127.0.0.1/tcp/P/p2p/...", "cid": "..."} once the file
//           is imported; serves until stdin closes
//   node share_anchor_helia.mjs leech --js-dir DIR --cid CID --out FILE --peer ADDR [--peer ...]
//                                    --expect-sha256 HEX [--block-read-concurrency N]
//                                    [--window-mib W]
//        -> one JSON line with the timings and the configuration used
//
// Each peer is a light helia (createHeliaLight + withLibp2pLight + withBitswap with its default
// options) on a libp2p with TCP on 127.0.0.1, Noise and Yamux and identify only: no DHT, no
// bootstrap, no delegated HTTP routing, no mDNS, so nothing leaves loopback and the seeders are
// found only because the leecher dials them (bitswap asks connected peers). Blockstores are in
// memory (blockstore-core), so the leecher's only disk write is the output file; a 1 GiB file
// costs a seeder about 1.3 GB and the leecher about 1.4 GB of RSS (measured), which fits, so
// an on-disk blockstore is not needed to finish. The file is imported with @helia/unixfs
// defaults (CIDv1, raw leaves, 1 MiB chunks, balanced 1024), the profile peerstack uses by
// default, so both produce the same CID.
//
// How the leecher reads, and why (helia 7.1.15, @helia/bitswap 4.0.19, ipfs-unixfs-exporter
// 16.2.2, it-parallel 3.0.16, libp2p 3.3.11):
//
//   * The file is read with `unixfs.cat` in consecutive byte ranges of --window-mib (32 MiB by
//     default; `offset`/`length` are ordinary cat options), one range after the other, so at
//     most one window of blocks is wanted at a time. A single `cat` of the whole file does NOT
//     bound its wants: the exporter walks the root's 1024 links through it-parallel (ordered,
//     concurrency = blockReadConcurrency), and it-parallel 3.0.16 (the newest) frees a slot
//     twice: taking a finished task off its list lets the source refill the slot, and resolving
//     the slot promise again after the consumer resumes from `yield` wakes the source once more,
//     so a 9th task starts; its check is `if (ops.length === concurrency)`, which a count past
//     the limit never meets again. Measured here with concurrency 8: 8 wants, then the other
//     1016 leaves all at once; a standalone it-parallel test reaches 190 of 200 tasks in flight
//     (8 with the check made `while (ops.length >= concurrency)`).
//   * 1016 wants at once make each seeder build one reply of every wanted block (the bitswap
//     ledger batches all pending wants, about 1 GiB, before it writes a byte), then push it down
//     one connection. js-libp2p's connection monitor pings every connection each 10 s with a
//     timeout of at least 5 s; its ping queues behind that data, times out on a loaded machine,
//     and the monitor aborts the connection ("aborting connection due to ping failure"), the
//     leecher's inbound bitswap streams time out after 10 s, and a seeder whose connection is
//     gone drops that peer's ledger with its wants. With no routing the leecher never finds the
//     seeders again: the transfer stops. That was the 1 GiB stall (4 seeders: after 8 MiB; a
//     run that finished ended with 1 of its 4 connections left).
//   * With 4 seeders, helia's bitswap client sends want-block for every block to every
//     connected peer and cancels only once a copy has arrived, so each seeder sends (nearly) the
//     whole file: measured on 1 GiB, each of the 4 seeders' sockets acked 1.074 GB, so the
//     leecher received 4 copies. That is helia's behaviour, kept as is; the figures measure it.
//
// Everything else is helia's default, the connection monitor included: with the window its
// pings stay well inside their timeout (the leecher reports the largest round trip it saw as
// ping_rtt_max_ms; 0.7 s in a 4 -> 1 run on a loaded machine).
//
// --block-read-concurrency is still passed to cat (the driver sends 8); with the window it
// limits nothing beyond the window, for the reason above. --window-mib 0 reads the whole file
// with one cat, as before (stalls on 1 GiB with several seeders).
//
// A leecher that gets no data for --stall-seconds (60) exits with code 3 ("stalled"), so the
// driver records a failure instead of hanging.
//
// Time in the leecher starts just before dialling the seeders and stops when the file written by
// `unixfs.cat` is closed and its sha256 equals the source's (bitswap checks every block's hash).
import { createReadStream, createWriteStream, readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'js-dir': { type: 'string' },
    src: { type: 'string' },
    cid: { type: 'string' },
    out: { type: 'string' },
    peer: { type: 'string', multiple: true, default: [] },
    'expect-sha256': { type: 'string', default: '' },
    timeout: { type: 'string', default: '900' },
    'block-read-concurrency': { type: 'string' },
    'stall-seconds': { type: 'string', default: '60' },
    'window-mib': { type: 'string', default: '32' }
  }
})
const role = positionals[0]
if (args['js-dir'] == null) throw new Error('--js-dir is required')

// Import a package installed under --js-dir (its "exports" entry for `import`).
async function load (name) {
  const dir = join(args['js-dir'], 'node_modules', name)
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
  let entry = pkg.exports?.['.'] ?? pkg.exports ?? pkg.module ?? pkg.main ?? 'index.js'
  while (typeof entry === 'object') entry = entry.import ?? entry.default
  return import(pathToFileURL(join(dir, entry)).href)
}

const version = (name) =>
  JSON.parse(readFileSync(join(args['js-dir'], 'node_modules', name, 'package.json'), 'utf8')).version

async function startHelia () {
  const [{ createHeliaLight }, { withLibp2pLight }, { withBitswap }, { tcp }, { noise }, { yamux }, { identify }, { MemoryBlockstore }, { MemoryDatastore }] =
    await Promise.all(['helia', '@helia/libp2p', '@helia/bitswap', '@libp2p/tcp', '@libp2p/noise', '@libp2p/yamux', '@libp2p/identify', 'blockstore-core', 'datastore-core'].map(load))
  const helia = withBitswap(withLibp2pLight(createHeliaLight({
    blockstore: new MemoryBlockstore(),
    datastore: new MemoryDatastore()
  }), {
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() },
    // js-libp2p refuses more than 5 inbound connections per second from one host by default
    connectionManager: { inboundConnectionThreshold: 1000 }
  }))
  await helia.start()
  return helia
}

function sha256File (path) {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256')
    createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })
      .on('data', (chunk) => hash.update(chunk))
      .on('end', () => resolve(hash.digest('hex')))
      .on('error', reject)
  })
}

async function seed () {
  const { unixfs } = await load('@helia/unixfs')
  const helia = await startHelia()
  const fs = unixfs(helia)
  const cid = await fs.addByteStream(createReadStream(args.src, { highWaterMark: 1024 * 1024 }))
  const addr = helia.libp2p.getMultiaddrs().map(String).find(a => a.startsWith('/ip4/127.0.0.1/tcp/'))
  console.log(JSON.stringify({ addr, cid: cid.toString(), version: version('helia') }))
  // serve until the driver closes stdin
  for await (const _ of createInterface({ input: process.stdin })) { /* no commands */ }
  await helia.stop()
}

async function leech () {
  const { unixfs } = await load('@helia/unixfs')
  const { multiaddr } = await load('@multiformats/multiaddr')
  const { CID } = await load('multiformats')
  const helia = await startHelia()
  const fs = unixfs(helia)
  const cid = CID.parse(args.cid)
  const signal = AbortSignal.timeout(Number(args.timeout) * 1000)
  const t0 = performance.now()
  await Promise.all(args.peer.map(a => helia.libp2p.dial(multiaddr(a), { signal })))
  const out = createWriteStream(args.out)
  let bytes = 0
  // A transfer that stops moving is reported as such instead of waiting for the timeout.
  let lastProgress = performance.now()
  const stallMs = Number(args['stall-seconds']) * 1000
  // js-libp2p's connection monitor stores each ping's round trip in `rtt`; the largest seen
  // shows how close the pings came to their 5 s timeout, which aborts the connection.
  let rttMaxMs = 0
  const watchdog = setInterval(() => {
    for (const conn of helia.libp2p.getConnections()) rttMaxMs = Math.max(rttMaxMs, conn.rtt ?? 0)
    if (performance.now() - lastProgress > stallMs) {
      console.error(`stalled: no data for ${args['stall-seconds']} s after ${bytes} bytes`)
      process.exit(3)
    }
  }, 1000)
  const catOptions = { signal }
  if (args['block-read-concurrency'] != null) catOptions.blockReadConcurrency = Number(args['block-read-concurrency'])
  // Consecutive byte ranges of one window each (see the header for why), or one cat with 0.
  const windowBytes = Number(args['window-mib']) * 1024 * 1024
  const ranges = [{}]
  if (windowBytes > 0) {
    const size = Number((await fs.stat(cid, { signal })).size)
    ranges.length = 0
    for (let offset = 0; offset < size; offset += windowBytes) {
      ranges.push({ offset, length: Math.min(windowBytes, size - offset) })
    }
  }
  for (const range of ranges) {
    for await (const chunk of fs.cat(cid, { ...catOptions, ...range })) {
      bytes += chunk.byteLength
      lastProgress = performance.now()
      if (!out.write(chunk)) await once(out, 'drain')
    }
  }
  clearInterval(watchdog)
  out.end()
  await once(out, 'close')
  const tDisk = performance.now()
  const digest = await sha256File(args.out)
  const tVerified = performance.now()
  console.log(JSON.stringify({
    ok: digest === args['expect-sha256'],
    sha256: digest,
    bytes,
    seconds_on_disk: (tDisk - t0) / 1000,
    seconds_verified: (tVerified - t0) / 1000,
    peers: helia.libp2p.getConnections().length,
    version: version('helia'),
    window_mib: Number(args['window-mib']),
    block_read_concurrency: catOptions.blockReadConcurrency ?? null,
    blockstore: 'memory',
    ping_rtt_max_ms: Math.round(rttMaxMs)
  }))
  await helia.stop()
}

if (role === 'seed') await seed()
else if (role === 'leech') await leech()
else throw new Error(`unknown role ${role}`)
process.exit(0)

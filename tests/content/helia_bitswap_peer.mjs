// A helia 7 node on 127.0.0.1 with Bitswap only, used by hand to check our Bitswap against
// helia's (both directions passed with 3 and 20 MB files, default and kubo-legacy DAGs).
// Node resolves its imports next to the script: copy it beside a node_modules that has
// helia, @helia/unixfs, @helia/bitswap, @helia/libp2p (tests/interop/js has them) and run it
// with Node 22:
//   node helia_bitswap_peer.mjs serve <size>            -> {peerId, addrs, cid}; serves until killed
//   node helia_bitswap_peer.mjs fetch <multiaddr> <cid> -> dials, cats the file, {sha256, size, ms}
// Our side must run identify too: helia only sends wants to peers that list the protocol.
// The bytes are the pattern of helia_vectors.mjs.
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
import { CID } from 'multiformats/cid'
import { createHash } from 'node:crypto'

function pattern (n) {
  const out = new Uint8Array(Math.ceil(n / 32) * 32)
  const counter = Buffer.alloc(8)
  for (let j = 0; j * 32 < n; j++) {
    counter.writeBigUInt64BE(BigInt(j))
    out.set(createHash('sha256').update(counter).digest(), j * 32)
  }
  return out.subarray(0, n)
}

const helia = withBitswap(withLibp2pLight(createHeliaLight({ blockstore: new MemoryBlockstore() }), {
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify() }
}))
await helia.start()
const fs = unixfs(helia)
const [mode, a, b] = process.argv.slice(2)
if (mode === 'serve') {
  const cid = await fs.addBytes(pattern(Number(a)))
  console.log(JSON.stringify({ peerId: helia.libp2p.peerId.toString(), addrs: helia.libp2p.getMultiaddrs().map(String), cid: cid.toString() }))
} else {
  await helia.libp2p.dial(multiaddr(a))
  const h = createHash('sha256')
  let size = 0
  const t = Date.now()
  for await (const buf of fs.cat(CID.parse(b), { signal: AbortSignal.timeout(60000) })) { h.update(buf); size += buf.length }
  console.log(JSON.stringify({ sha256: h.digest('hex'), size, ms: Date.now() - t }))
  await helia.stop()
  process.exit(0)
}

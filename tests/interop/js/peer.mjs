// A js-libp2p 3.x peer that the peerstack test suite drives as a subprocess.
//
// Usage: node peer.mjs --listen /ip4/127.0.0.1/tcp/0 [--listen ...] [--seed-hex HEX32]
//                      [--dht] [--helia] [--pubsub]   (Kademlia DHT server / helia with bitswap
//                      + UnixFS / gossipsub: see content.mjs and pubsub.mjs for their commands)
//
// When ready it prints one JSON line on stdout:
//   {"peerId": "...", "addrs": ["/ip4/.../tcp/.../p2p/..."], "protocols": [...], "agentVersion": "..."}
// It serves identify, ping, /echo/1.0.0 and /perf/1.0.0. It then reads JSON commands on stdin,
// one per line, and answers each with one JSON line on stdout carrying the same "id":
//   {"id": 1, "cmd": "dial", "addr": "..."}                     -> {"id":1,"ok":true,"peerId":...,"remoteAddr":...}
//   {"id": 2, "cmd": "ping", "addr": "...", "count": 3}         -> {"id":2,"ok":true,"rtts_ms":[...]}
//   {"id": 3, "cmd": "identify", "addr": "..."}                 -> {"id":3,"ok":true,"protocols":[...],...}
//   {"id": 4, "cmd": "perf", "addr": "...", "upload": N, "download": M}
//   {"id": 5, "cmd": "echo", "addr": "...", "data_hex": "...", "streams": 100}  (or "size": N
//                                 random bytes instead of data_hex; each stream is checked)
//   {"id": 6, "cmd": "echo-reset", "addr": "...", "size": N, "read_bytes": K}
//   {"id": 7, "cmd": "hangup", "addr": "...", "abort": false}   (abort: no graceful close)
//   {"id": 8, "cmd": "peers"}
//   {"id": 9, "cmd": "stop"}
// A failed command answers {"id":..,"ok":false,"error":"...","errorName":"..."}.
// Commands run concurrently; answers may come out of order (match them by id).
// Unsolicited events (server side) are JSON lines with an "event" key, e.g.
//   {"event":"connection:open","peerId":..,"remoteAddr":..,"direction":"inbound"}
//   {"event":"echo","peerId":..,"bytes":N,"result":"closed"|"reset"|"error","error":..}
//   {"event":"perf","peerId":..,"received":N,"sent":M,"result":..}
// Logs go to stderr only, so stdout stays machine-readable.

import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { generateKeyPair, generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { Uint8ArrayList } from 'uint8arraylist'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { contentCommands, dhtService, startHelia } from './content.mjs'
import { pubsubCommands, pubsubService, watchPubsub } from './pubsub.mjs'

export const ECHO_PROTOCOL = '/echo/1.0.0'
export const PERF_PROTOCOL = '/perf/1.0.0'
const CHUNK = 64 * 1024
const STREAM_LIMIT = 1024

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function log (...args) {
  process.stderr.write('[js-peer] ' + args.map(String).join(' ') + '\n')
}

function toHex (bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')
}

function fromHex (text) {
  return new Uint8Array(Buffer.from(text ?? '', 'hex'))
}

// The bytes a command sends: data_hex, or "size" random bytes (keeps big payloads off stdin).
function payload (msg) {
  if (msg.size != null) {
    const out = new Uint8Array(msg.size)
    for (let off = 0; off < out.byteLength; off += 65536) {
      crypto.getRandomValues(out.subarray(off, Math.min(off + 65536, out.byteLength)))
    }
    return out
  }
  return fromHex(msg.data_hex)
}

function chunkBytes (chunk) {
  return chunk instanceof Uint8Array ? chunk : chunk.subarray()
}

// Send honouring backpressure: js-libp2p 3.x streams return false from send() when their
// buffer is full, and we must wait for drain before sending again.
async function sendAll (stream, data, connection) {
  // Once its connection is closing, a js-libp2p stream still accepts send() without error and
  // drops the bytes; stop instead of "sending" the rest of a long transfer into the void.
  if (stream.status !== 'open' || stream.writeStatus !== 'writable') {
    throw new Error(`stream is ${stream.status}, write side ${stream.writeStatus}`)
  }
  if (connection != null && connection.status !== 'open') {
    throw new Error(`connection is ${connection.status}`)
  }
  if (!stream.send(data)) {
    await waitDrain(stream)
  }
}

// stream.onDrain() of js-libp2p 3.x (@libp2p/utils 7.4.1) keeps its first, resolved promise
// (onDrainPromise is never reset), so after one drain it returns at once and the write buffer
// grows without bound. Wait for the 'drain' event ourselves.
async function waitDrain (stream) {
  if (!stream.writableNeedsDrain) return
  await new Promise((resolve, reject) => {
    const cleanup = () => {
      stream.removeEventListener('drain', onDrain)
      stream.removeEventListener('close', onClose)
    }
    const onDrain = () => { cleanup(); resolve() }
    const onClose = (evt) => { cleanup(); reject(evt.error ?? new Error('stream closed while waiting for drain')) }
    stream.addEventListener('drain', onDrain)
    stream.addEventListener('close', onClose)
  })
}

async function sendZeros (stream, total, onSent = () => {}, connection = undefined) {
  const block = new Uint8Array(CHUNK)
  let left = total
  while (left > 0) {
    const n = Math.min(left, CHUNK)
    await sendAll(stream, n === CHUNK ? block : block.subarray(0, n), connection)
    onSent(n)
    left -= n
  }
}

async function drainCount (stream) {
  let n = 0
  for await (const chunk of stream) {
    n += chunk.byteLength
  }
  return n
}

// Streams sometimes reject with a bare Event (e.g. a close event) rather than an Error.
function errorText (err) {
  if (err instanceof Error) return err.message
  if (err?.type != null) return `${err.constructor?.name ?? 'Event'} ${err.type}${err.error != null ? ': ' + err.error.message : ''}`
  return String(err)
}

function classify (err) {
  const name = err?.name ?? ''
  if (/Reset|Abort/i.test(name) || /reset/i.test(err?.message ?? '')) {
    return 'reset'
  }
  return 'error'
}

// --- server handlers ---

async function handleEcho (stream, connection) {
  let bytes = 0
  try {
    for await (const chunk of stream) {
      bytes += chunk.byteLength
      await sendAll(stream, chunkBytes(chunk), connection)
    }
    await stream.close()
    emit({ event: 'echo', peerId: connection.remotePeer.toString(), bytes, result: 'closed' })
  } catch (err) {
    emit({ event: 'echo', peerId: connection.remotePeer.toString(), bytes, result: classify(err), error: errorText(err), errorName: err?.name })
    stream.abort(err)
  }
}

async function handlePerf (stream, connection) {
  const header = new Uint8ArrayList()
  let received = 0
  let sent = 0
  try {
    for await (const chunk of stream) {
      if (header.byteLength < 8) {
        header.append(chunk)
        if (header.byteLength > 8) {
          received += header.byteLength - 8
        }
      } else {
        received += chunk.byteLength
      }
    }
    if (header.byteLength < 8) {
      throw new Error(`perf: stream closed after ${header.byteLength} header bytes`)
    }
    const want = header.subarray(0, 8)
    const n = new DataView(want.buffer, want.byteOffset, 8).getBigUint64(0, false)
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new Error('perf: requested size too large')
    }
    await sendZeros(stream, Number(n), (k) => { sent += k }, connection)
    await stream.close()
    emit({ event: 'perf', peerId: connection.remotePeer.toString(), received, sent, result: 'closed' })
  } catch (err) {
    emit({ event: 'perf', peerId: connection.remotePeer.toString(), received, sent, result: classify(err), error: errorText(err) })
    stream.abort(err)
  }
}

// --- client actions ---

async function connectionTo (node, addr) {
  return await node.dial(multiaddr(addr))
}

async function cmdDial (node, msg) {
  const conn = await connectionTo(node, msg.addr)
  return { peerId: conn.remotePeer.toString(), remoteAddr: conn.remoteAddr.toString(), direction: conn.direction }
}

async function cmdPing (node, msg) {
  const count = msg.count ?? 1
  const rtts = []
  for (let i = 0; i < count; i++) {
    rtts.push(await node.services.ping.ping(multiaddr(msg.addr)))
  }
  return { rtts_ms: rtts }
}

async function cmdIdentify (node, msg) {
  const conn = await connectionTo(node, msg.addr)
  const r = await node.services.identify.identify(conn)
  return {
    peerId: r.peerId.toString(),
    protocols: r.protocols,
    listenAddrs: r.listenAddrs.map(a => a.toString()),
    observedAddr: r.observedAddr?.toString() ?? null,
    publicKey: r.publicKey != null ? toHex(r.publicKey) : null,
    agentVersion: r.agentVersion ?? null,
    protocolVersion: r.protocolVersion ?? null,
    signedPeerRecord: r.signedPeerRecord != null
  }
}

async function cmdPerf (node, msg) {
  const upload = Number(msg.upload ?? 0)
  const download = Number(msg.download ?? 0)
  const conn = await connectionTo(node, msg.addr)
  const t0 = performance.now()
  const stream = await conn.newStream(PERF_PROTOCOL)
  const header = new Uint8Array(8)
  new DataView(header.buffer).setBigUint64(0, BigInt(download), false)
  await sendAll(stream, header)
  await sendZeros(stream, upload)
  await stream.close()
  const t1 = performance.now()
  const got = await drainCount(stream)
  const t2 = performance.now()
  if (got !== download) {
    throw new Error(`perf: expected ${download} bytes back, got ${got}`)
  }
  const seconds = (t2 - t0) / 1000
  return {
    upload_bytes: upload,
    download_bytes: got,
    seconds,
    upload_seconds: (t1 - t0) / 1000,
    download_seconds: (t2 - t1) / 1000,
    bytes_per_second: (upload + got) / seconds
  }
}

async function echoOnce (conn, data) {
  const stream = await conn.newStream(ECHO_PROTOCOL, { maxOutboundStreams: STREAM_LIMIT })
  const reader = (async () => {
    const got = new Uint8ArrayList()
    for await (const chunk of stream) {
      got.append(chunk)
    }
    return got.subarray()
  })()
  for (let off = 0; off < data.byteLength; off += CHUNK) {
    await sendAll(stream, data.subarray(off, Math.min(off + CHUNK, data.byteLength)))
  }
  await stream.close()
  return await reader
}

async function cmdEcho (node, msg) {
  const data = payload(msg)
  const streams = msg.streams ?? 1
  const conn = await connectionTo(node, msg.addr)
  const results = await Promise.all(Array.from({ length: streams }, async () => await echoOnce(conn, data)))
  const mismatched = results.filter(r => Buffer.compare(Buffer.from(r), Buffer.from(data)) !== 0).length
  return {
    streams,
    bytes: data.byteLength,
    mismatched,
    echoed_hex: data.byteLength <= 4096 ? toHex(results[0]) : null
  }
}

// Open an echo stream, send data, read back read_bytes of it, then reset the stream
// (abort = yamux RST) while the remote still has work in flight.
async function cmdEchoReset (node, msg) {
  const data = payload(msg)
  const readBytes = msg.read_bytes ?? 0
  const conn = await connectionTo(node, msg.addr)
  const stream = await conn.newStream(ECHO_PROTOCOL, { maxOutboundStreams: STREAM_LIMIT })
  let got = 0
  const reader = (async () => {
    try {
      for await (const chunk of stream) {
        got += chunk.byteLength
        if (got >= readBytes) {
          return
        }
      }
    } catch (err) {
      log('echo-reset reader:', err?.message ?? err)
    }
  })()
  await sendAll(stream, data)
  await reader
  stream.abort(new Error('reset by test'))
  // The connection must survive a stream reset: prove it with a ping on it.
  const rtt = await node.services.ping.ping(conn.remotePeer)
  return { read: got, connectionAlive: true, rtt_ms: rtt }
}

async function cmdHangup (node, msg) {
  const ma = multiaddr(msg.addr)
  const peer = ma.getComponents().find(c => c.name === 'p2p')?.value
  if (peer == null) {
    throw new Error('hangup needs an address with /p2p/')
  }
  const conns = node.getConnections().filter(c => c.remotePeer.toString() === peer)
  if (msg.abort === true) {
    // Abrupt: the socket is torn down without closing streams first.
    conns.forEach(c => { c.abort(new Error('hangup')) })
    return { closed: conns.length, aborted: conns.length }
  }
  // Graceful as far as js-libp2p's close timeout allows: a stream still sending (a download
  // the other side is reading) can outlast it on a loaded machine, and close() then rejects
  // with the timeout's abort event, leaving the connection up. The peer hangs up either way:
  // what the timeout cut short is torn down.
  let aborted = 0
  await Promise.all(conns.map(async c => {
    try {
      await c.close()
    } catch (err) {
      aborted++
      c.abort(err instanceof Error ? err : new Error('hangup: graceful close timed out'))
    }
  }))
  return { closed: conns.length, aborted }
}

function cmdPeers (node) {
  return {
    connections: node.getConnections().map(c => ({
      peerId: c.remotePeer.toString(),
      remoteAddr: c.remoteAddr.toString(),
      direction: c.direction,
      multiplexer: c.multiplexer ?? null,
      encryption: c.encryption ?? null,
      streams: c.streams.length
    }))
  }
}

async function main () {
  const { values } = parseArgs({
    options: {
      listen: { type: 'string', multiple: true, default: ['/ip4/127.0.0.1/tcp/0'] },
      'seed-hex': { type: 'string' },
      dht: { type: 'boolean', default: false },
      helia: { type: 'boolean', default: false },
      pubsub: { type: 'boolean', default: false }
    }
  })
  const privateKey = values['seed-hex'] != null
    ? await generateKeyPairFromSeed('Ed25519', fromHex(values['seed-hex']))
    : await generateKeyPair('Ed25519')

  const services = {
    // The default of one identify stream per connection makes an explicit identify
    // command race the automatic one run on connection open.
    identify: identify({ maxInboundStreams: 16, maxOutboundStreams: 16 }),
    ping: ping({ maxInboundStreams: STREAM_LIMIT, maxOutboundStreams: STREAM_LIMIT })
  }
  if (values.dht) {
    services.dht = dhtService()
  }
  if (values.pubsub) {
    services.pubsub = pubsubService()
  }
  const options = {
    privateKey,
    addresses: { listen: values.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ maxInboundStreams: STREAM_LIMIT, maxOutboundStreams: STREAM_LIMIT })],
    // Tests open many connections from one host in a burst; the defaults (5 new inbound
    // connections per second per host, 10 pending upgrades) would refuse them.
    connectionManager: {
      inboundConnectionThreshold: 100000,
      maxIncomingPendingConnections: 1000,
      maxConnections: 10000,
      maxParallelDials: 1000
    },
    services
  }
  let helia = null
  let node
  if (values.helia) {
    helia = await startHelia(options)
    node = helia.libp2p
  } else {
    node = await createLibp2p(options)
  }

  const handlerOpts = { maxInboundStreams: STREAM_LIMIT, maxOutboundStreams: STREAM_LIMIT }
  await node.handle(ECHO_PROTOCOL, handleEcho, handlerOpts)
  await node.handle(PERF_PROTOCOL, handlePerf, handlerOpts)

  node.addEventListener('connection:open', (evt) => {
    const c = evt.detail
    emit({ event: 'connection:open', peerId: c.remotePeer.toString(), remoteAddr: c.remoteAddr.toString(), direction: c.direction })
  })
  node.addEventListener('connection:close', (evt) => {
    const c = evt.detail
    emit({ event: 'connection:close', peerId: c.remotePeer.toString(), remoteAddr: c.remoteAddr.toString(), direction: c.direction })
  })

  const commands = {
    dial: cmdDial,
    ping: cmdPing,
    identify: cmdIdentify,
    perf: cmdPerf,
    echo: cmdEcho,
    'echo-reset': cmdEchoReset,
    hangup: cmdHangup,
    peers: cmdPeers,
    ...contentCommands(helia, payload),
    ...pubsubCommands()
  }
  watchPubsub(node, emit)

  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    await (helia ?? node).stop()
    process.exit(0)
  }
  process.on('SIGTERM', () => { void stop() })
  process.on('SIGINT', () => { void stop() })

  emit({
    peerId: node.peerId.toString(),
    addrs: node.getMultiaddrs().map(a => a.toString()),
    protocols: node.getProtocols(),
    agentVersion: 'js-libp2p/' + (await import('libp2p/version')).version
  })

  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
  rl.on('line', (line) => {
    if (line.trim() === '') return
    let msg
    try {
      msg = JSON.parse(line)
    } catch (err) {
      emit({ id: null, ok: false, error: `bad JSON: ${err.message}` })
      return
    }
    if (msg.cmd === 'stop') {
      emit({ id: msg.id ?? null, ok: true })
      void stop()
      return
    }
    const fn = commands[msg.cmd]
    if (fn == null) {
      emit({ id: msg.id ?? null, ok: false, error: `unknown command ${msg.cmd}` })
      return
    }
    Promise.resolve().then(async () => await fn(node, msg)).then(
      (result) => { emit({ id: msg.id ?? null, ok: true, ...result }) },
      (err) => {
        log(msg.cmd, 'failed:', err?.stack ?? err)
        emit({ id: msg.id ?? null, ok: false, error: String(err?.message ?? err), errorName: err?.name ?? null })
      }
    )
  })
  // Our parent closing stdin means the test is over.
  rl.on('close', () => { void stop() })
}

main().catch((err) => {
  log('fatal:', err?.stack ?? err)
  process.exit(1)
})

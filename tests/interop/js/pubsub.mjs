// Gossipsub for the js test peer, enabled by peer.mjs's --pubsub flag.
//
// Commands (JSON lines on stdin, answered like the others in peer.mjs):
//   {"cmd": "subscribe", "topic": "t"}                 -> {}
//   {"cmd": "unsubscribe", "topic": "t"}               -> {}
//   {"cmd": "publish", "topic": "t", "data_hex": "..."} -> {"recipients": [peerId...]}
//   {"cmd": "pubsub-peers", "topic": "t"}              -> {"subscribers": [...], "mesh": [...]}
//   {"cmd": "pubsub-wait-mesh", "topic": "t", "size": N, "timeout_ms": T} -> {"mesh": [...]}
// Every message received on a subscribed topic is an event line:
//   {"event": "pubsub", "topic": "t", "data_hex": "...", "from": peerId|null,
//    "seqno": "hex"|null, "signed": bool, "via": peerId}

import { gossipsub } from '@libp2p/gossipsub'

function toHex (bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')
}

// Spec defaults (D=6 ...) and StrictSign come from the library; publishing with no peers in
// the topic is allowed so that a test can publish first and check delivery itself.
export function pubsubService () {
  return gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false })
}

export function watchPubsub (node, emit) {
  const ps = node.services.pubsub
  if (ps == null) return
  ps.addEventListener('gossipsub:message', (evt) => {
    const { msg, propagationSource } = evt.detail
    emit({
      event: 'pubsub',
      topic: msg.topic,
      data_hex: toHex(msg.data),
      from: msg.type === 'signed' ? msg.from.toString() : null,
      seqno: msg.type === 'signed' ? msg.sequenceNumber.toString(16) : null,
      signed: msg.type === 'signed',
      via: propagationSource.toString()
    })
  })
}

function pubsubOf (node) {
  const ps = node.services.pubsub
  if (ps == null) throw new Error('this peer runs without --pubsub')
  return ps
}

export function pubsubCommands () {
  return {
    subscribe: async (node, msg) => { pubsubOf(node).subscribe(msg.topic); return {} },
    unsubscribe: async (node, msg) => { pubsubOf(node).unsubscribe(msg.topic); return {} },
    publish: async (node, msg) => {
      const res = await pubsubOf(node).publish(msg.topic, new Uint8Array(Buffer.from(msg.data_hex ?? '', 'hex')))
      return { recipients: res.recipients.map(p => p.toString()) }
    },
    'pubsub-peers': async (node, msg) => {
      const ps = pubsubOf(node)
      return { subscribers: ps.getSubscribers(msg.topic).map(p => p.toString()), mesh: ps.getMeshPeers(msg.topic) }
    },
    'pubsub-wait-mesh': async (node, msg) => {
      const ps = pubsubOf(node)
      const deadline = Date.now() + (msg.timeout_ms ?? 20000)
      for (;;) {
        const mesh = ps.getMeshPeers(msg.topic)
        if (mesh.length >= (msg.size ?? 1)) return { mesh }
        if (Date.now() > deadline) throw new Error(`mesh of ${msg.topic} has ${mesh.length} peers, wanted ${msg.size ?? 1}`)
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    }
  }
}

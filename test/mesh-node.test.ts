/**
 * Mesh membership with real libp2p nodes on 127.0.0.1 (mDNS off): nodes joined through one bootstrap
 * peer see each other, a stopped node expires from every view, a node holding another mesh key never
 * connects, bad heartbeats from a peer inside the mesh are dropped and counted by reason, and a node's
 * peer id survives a restart with the same data directory. Short intervals keep the test quick; every
 * test stops its nodes and bounds its own time.
 */
import { statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import { encodeHeartbeat, HEARTBEAT_VERSION } from '../core/mesh/heartbeat.ts'
import type { MeshRole } from '../core/mesh/heartbeat.ts'
import { generateSwarmKey, parseSwarmKey } from '../core/mesh/swarm-key.ts'
import { Metrics } from '../server/shell/metrics.ts'
import { PEER_KEY_FILE } from '../server/mesh/keys.ts'
import { MeshNode } from '../server/mesh/mesh-node.ts'
import type { MeshNodeOptions } from '../server/mesh/mesh-node.ts'
import { sleep, tmpDir } from './helpers/process.ts'

const INTERVAL = 300
const EXPIRY = 1500
const KEY = parseSwarmKey(generateSwarmKey(), 'test key')

function startNode (t: Test, id: string, options: Partial<MeshNodeOptions> = {}, role: MeshRole = 'edge'): Promise<MeshNode> {
  const node = new MeshNode({
    id,
    role,
    meshKey: KEY,
    heartbeatInterval: INTERVAL,
    expiry: EXPIRY,
    heartbeat: () => ({ http: `http://127.0.0.1:8080/${id}`, sw: '0.1.0', uptime: 1, rate: 0, outbox: 0, pipelines: [{ name: 'p', version: 1, watermark: null }] }),
    ...options
  })
  t.teardown(() => node.stop())
  return node.start().then(() => node)
}

async function until (what: string, ms: number, check: () => boolean): Promise<number> {
  const start = Date.now()
  while (!check()) {
    if (Date.now() - start > ms) throw new Error(`not within ${ms} ms: ${what}`)
    await sleep(25)
  }
  return Date.now() - start
}

function alive (node: MeshNode): string[] {
  return node.view().peers.filter(p => p.state === 'alive').map(p => p.id)
}

function connectedTo (node: MeshNode): string[] {
  return node.libp2p?.getConnections().map(c => c.remotePeer.toString()) ?? []
}

t.test('five nodes joined through the first see each other, and a stopped one expires everywhere', { timeout: 30_000 }, async t => {
  const first = await startNode(t, 'n0')
  const nodes = [first]
  for (let i = 1; i < 5; i++) nodes.push(await startNode(t, `n${i}`, { bootstrap: [first.multiaddr()] }))
  const ids = nodes.map(n => n.options.id)
  const took = await until('every view complete', 10_000, () => nodes.every(n => alive(n).length === 4))
  t.pass(`converged in ${took} ms`)
  for (const n of nodes) {
    const view = n.view()
    t.same(view.peers.map(p => p.id), ids.filter(id => id !== n.options.id), `${n.options.id} sees every other node`)
    t.same(view.self, { id: n.options.id, role: 'edge', peerId: n.peerId })
    const peer = view.peers[0]
    t.equal(peer.http, `http://127.0.0.1:8080/${peer.id}`)
    t.equal(peer.heartbeat.pipelines[0].name, 'p')
  }

  const gone = nodes.pop() as MeshNode
  const goneId = gone.options.id
  await gone.stop()
  const expired = await until(`${goneId} expired everywhere`, EXPIRY + 2 * INTERVAL + 1000, () =>
    nodes.every(n => n.view().peers.find(p => p.id === goneId)?.state === 'expired'))
  t.pass(`expired everywhere ${expired} ms after the stop`)
  for (const n of nodes) t.same(alive(n), ids.filter(id => id !== n.options.id && id !== goneId))
})

t.test('a node with another mesh key never connects and never appears in a view', { timeout: 30_000 }, async t => {
  const a = await startNode(t, 'a')
  const b = await startNode(t, 'b', { bootstrap: [a.multiaddr()] })
  const outsider = await startNode(t, 'outsider', { bootstrap: [a.multiaddr(), b.multiaddr()], meshKey: parseSwarmKey(generateSwarmKey(), 'other') })
  const open = await startNode(t, 'open', { bootstrap: [a.multiaddr()], meshKey: undefined })
  await until('a and b see each other', 10_000, () => alive(a).includes('b') && alive(b).includes('a'))
  // Several bootstrap retries and heartbeats of the outsiders happen in this time.
  await sleep(6 * INTERVAL)
  for (const stranger of [outsider, open]) {
    t.same(connectedTo(stranger), [], `${stranger.options.id} has no connection`)
    t.same(stranger.view().peers, [], `${stranger.options.id} sees nobody`)
    for (const n of [a, b]) {
      t.notOk(connectedTo(n).includes(stranger.peerId), `${n.options.id} is not connected to ${stranger.options.id}`)
      t.notOk(n.view().peers.some(p => p.id === stranger.options.id), `${n.options.id} does not see ${stranger.options.id}`)
    }
  }
  t.same(alive(a), ['b'])
  t.same(alive(b), ['a'])
})

t.test('bad heartbeats from a peer inside the mesh are dropped, counted by reason, and not forwarded', { timeout: 30_000 }, async t => {
  const a = await startNode(t, 'a')
  const b = await startNode(t, 'b', { bootstrap: [a.multiaddr()] })
  const rogue = await startNode(t, 'rogue', { bootstrap: [a.multiaddr()] })
  const metrics = new Metrics()
  a.registerMetrics(metrics)
  await until('a sees b and rogue, b sees rogue through a', 10_000, () =>
    alive(a).length === 2 && alive(b).includes('rogue') && alive(rogue).includes('a'))
  t.notOk(connectedTo(b).includes(rogue.peerId), 'b hears the rogue only through a')

  const pubsub = rogue.libp2p!.services.pubsub
  const topic = rogue.options.topic
  const base = { v: HEARTBEAT_VERSION as typeof HEARTBEAT_VERSION, role: 'edge' as const, http: 'http://127.0.0.1:1', sw: '0.1.0', uptime: 1, rate: 0, outbox: 0, pipelines: [] }
  await pubsub.publish(topic, new Uint8Array([0xff, 0x00, 0x13, 0x37])) // not CBOR
  await pubsub.publish(topic, new Uint8Array(16_384).fill(0x41)) // over the bound
  await pubsub.publish(topic, encodeHeartbeat({ ...base, id: 'spoof', peerId: b.peerId, at: Date.now() + 60_000 })) // speaks for b
  await pubsub.publish(topic, encodeHeartbeat({ ...base, v: 2 as typeof HEARTBEAT_VERSION, id: 'future', peerId: rogue.peerId, at: Date.now() }))
  await pubsub.publish(topic, encodeHeartbeat({ ...base, id: 'rogue', peerId: rogue.peerId, at: Date.now(), http: 'ftp://x' as string }))

  const expected = { malformed: 1, too_large: 1, sender_mismatch: 1, bad_version: 1, bad_field: 1 }
  await until('a counted every bad heartbeat', 5_000, () => Object.values(a.stats.rejected).reduce((s, n) => s + n, 0) >= 5)
  await sleep(3 * INTERVAL) // room for anything forwarded by mistake to reach b
  t.same(a.stats.rejected, expected)
  t.same(b.stats.rejected, {}, 'b never received them: rejected messages are not forwarded')
  const text = await metrics.text()
  for (const [reason, n] of Object.entries(expected)) t.match(text, `fogmesh_gossip_rejected_total{reason="${reason}"} ${n}`)
  t.match(text, /fogmesh_gossip_bytes_total\{direction="received"\} [1-9]/)

  for (const n of [a, b]) {
    t.same(n.view().peers.map(p => p.id).sort(), ['a', 'b', 'rogue'].filter(id => id !== n.options.id), `${n.options.id}: no spoofed entries`)
    t.equal(n.view().peers.find(p => p.peerId === rogue.peerId)?.http, 'http://127.0.0.1:8080/rogue', `${n.options.id}: the rogue's entry is its valid heartbeat`)
  }
  t.equal(a.view().peers.find(p => p.peerId === b.peerId)?.id, 'b', 'b is still b')
})

t.test('the peer id survives a restart with the same data directory', { timeout: 30_000 }, async t => {
  const dir = await tmpDir()
  t.teardown(dir.cleanup)
  const first = await startNode(t, 'e', { dataDir: dir.path })
  const peerId = first.peerId
  await first.stop()
  t.equal(statSync(join(dir.path, PEER_KEY_FILE)).mode & 0o777, 0o600)
  const again = await startNode(t, 'e', { dataDir: dir.path })
  t.equal(again.peerId, peerId)
  t.match(again.multiaddr(), new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+/p2p/${peerId}$`))
  await again.stop()

  const other = await tmpDir()
  t.teardown(other.cleanup)
  const fresh = await startNode(t, 'f', { dataDir: other.path })
  t.not(fresh.peerId, peerId, 'another data directory, another identity')
  await fresh.stop()

  writeFileSync(join(other.path, PEER_KEY_FILE), 'not a key')
  const broken = new MeshNode({ id: 'g', role: 'edge', dataDir: other.path, heartbeat: () => { throw new Error('unused') } })
  await t.rejects(broken.start(), { code: 'config_invalid', message: /peer key .*peer\.key: not a libp2p private key/ })
})

t.test('bootstrap addresses are checked up front', async t => {
  const make = (bootstrap: string[]) => () => new MeshNode({ id: 'x', role: 'edge', bootstrap, heartbeat: () => { throw new Error('unused') } })
  t.throws(make(['not a multiaddr']), { code: 'config_invalid', message: /--bootstrap: not a multiaddr/ })
  t.throws(make(['/ip4/127.0.0.1/tcp/4001']), { code: 'config_invalid', message: /lacks \/p2p\/<peer id>/ })
})

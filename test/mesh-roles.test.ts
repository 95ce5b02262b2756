/**
 * Every role in one mesh, in real processes on loopback: a fog, a cloud and two edges with a mesh key,
 * the edges given only the fog's mesh address (no --fog). Every node's /v1/mesh lists every other node
 * alive; the edges find the fog through gossip and their readings reach its results; an edge killed
 * with SIGKILL turns expired in every view within the expiry. Short heartbeats (--mesh-heartbeat,
 * --mesh-expiry) keep it to seconds.
 */
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import mqtt from 'mqtt'
import t from 'tap'
import { fetchJson, fogmeshBin, repoRoot, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'

const MESH = new URL('fixtures/mesh.yaml', import.meta.url).pathname
const START = Date.UTC(2026, 0, 1)
const HEARTBEAT = 300
const EXPIRY = 1500
/** Room for a few heartbeats, a gossip hop and a loaded machine. */
const BOUND = 15_000

interface MeshJson {
  self: { id: string, role: string, peerId: string | null }
  peers: Array<{ id: string, role: string, state: string, lastSeen: string, http: string }>
}

interface Result { key: string, start: string, final: boolean, values: { n: number } }

async function meshOf (p: RunningProcess): Promise<MeshJson> {
  return (await fetchJson(`${p.http}/v1/mesh`)).body as MeshJson
}

async function publish (broker: string, readings: Array<{ room: string, device: string, ts: number }>): Promise<void> {
  const client = await mqtt.connectAsync(broker, { reconnectPeriod: 0, connectTimeout: 5000 })
  try {
    for (const r of readings) {
      await client.publishAsync(`sensors/${r.room}/temperature`, JSON.stringify({ device: r.device, room: r.room, value: 20.5, humidity: 40.1, ts: r.ts }), { qos: 1 })
    }
  } finally {
    await client.endAsync()
  }
}

t.test('fog, cloud and two edges form one mesh; edges find the fog through it', { timeout: 90_000 }, async t => {
  const dir = await tmpDir()
  const running = new Set<RunningProcess>()
  t.teardown(async () => {
    for (const p of running) await p.stop().catch(() => { p.kill('SIGKILL') })
    await dir.cleanup()
  })
  const launch = async (args: string[]): Promise<RunningProcess> => {
    const p = await startFogmesh(args)
    running.add(p)
    return p
  }
  const key = join(dir.path, 'mesh.key')
  const keygen = spawnSync(process.execPath, [fogmeshBin, 'keygen', key], { cwd: repoRoot, encoding: 'utf8', timeout: 20_000 })
  t.equal(keygen.status, 0, 'fogmesh keygen writes the mesh key')
  const meshArgs = ['--mesh-port', '0', '--mesh-key', key, '--mesh-heartbeat', `${HEARTBEAT}ms`, '--mesh-expiry', `${EXPIRY}ms`]

  const fog = await launch(['fog', '--id', 'f1', '--data-dir', join(dir.path, 'f1'), '--pipelines', MESH, '--tick', '100ms', '--finalize-after', '30s', ...meshArgs])
  t.match(fog.mesh, /^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/12D3Koo\w+$/, 'the ready line has the mesh address with the peer id')
  const join_ = ['--bootstrap', fog.mesh!]
  const [cloud, e1, e2] = await Promise.all([
    launch(['cloud', '--id', 'c1', '--data-dir', join(dir.path, 'c1'), ...meshArgs, ...join_]),
    ...[1, 2].map(async i => await launch(['edge', '--id', `e${i}`, '--pipelines', MESH, '--mqtt-port', '0', '--data-dir', join(dir.path, `e${i}`),
      '--uplink-retry-max', '500ms', ...meshArgs, ...join_]))
  ])
  const nodes = [fog, cloud, e1, e2]
  for (const p of [cloud, e1, e2]) t.ok(p.mesh?.includes('/p2p/'), `${p.id}: mesh= in the ready line`)

  await waitFor(async () => {
    for (const p of nodes) {
      const view = await meshOf(p)
      const alive = new Set(view.peers.filter(x => x.state === 'alive').map(x => x.id))
      if (nodes.some(o => o !== p && !alive.has(o.id))) return false
    }
    return true
  }, { timeoutMs: BOUND, message: 'every node sees every other alive' })
  const view = await meshOf(e1)
  t.equal(view.self.id, 'e1')
  t.equal(view.self.role, 'edge')
  t.match(view.self.peerId, /^12D3Koo/)
  const fogPeer = view.peers.find(p => p.id === 'f1')!
  t.equal(fogPeer.role, 'fog')
  t.equal(fogPeer.http, fog.http)
  t.ok(!Number.isNaN(Date.parse(fogPeer.lastSeen)) && fogPeer.lastSeen.endsWith('Z'), 'lastSeen is ISO-8601')
  const fogView = (await fetchJson(`${fog.http}/v1/mesh`)).body as MeshJson & { fog: { leader: string, status: string }, edges: unknown[] }
  t.equal(fogView.fog.leader, 'f1', 'the fog keeps its own fields')
  t.ok(Array.isArray(fogView.edges))

  // Readings in both edges' brokers; a tail an hour later moves both watermarks past the first window.
  const first = Array.from({ length: 10 }, (_, i) => ({ room: 'r1', device: 'd1', ts: START + i * 500 }))
  await publish(e1.mqtt!, first)
  await publish(e2.mqtt!, first.slice(0, 6).map(r => ({ ...r, device: 'd2' })))
  await publish(e1.mqtt!, [{ room: 'r1', device: 'd1', ts: START + 3_600_000 }])
  await publish(e2.mqtt!, [{ room: 'r1', device: 'd2', ts: START + 3_600_000 }])
  const merged = await waitFor(async () => {
    const body = (await fetchJson(`${fog.http}/v1/aggregates/room-temp?from=${START}&to=${START + 10_000}`)).body as { results: Result[] }
    const w = body.results.find(r => r.key === 'r1' && r.final)
    return w !== undefined && w.values.n === 16 ? w : undefined
  }, { timeoutMs: BOUND, message: 'the fog has both edges\' readings merged' })
  t.equal(merged.values.n, 16, 'readings of edges started with only a bootstrap address reach the fog')
  const uplink = ((await fetchJson(`${e1.http}/v1/mesh`)).body as { uplink: { fog: string[] } }).uplink
  t.same(uplink.fog, [fog.http], 'the edge took the fog from the mesh')

  // e2 gets a reading for a window an hour on and dies with it open (not idle: the fog must wait for it).
  const later = START + 3_610_000
  await publish(e2.mqtt!, [{ room: 'r1', device: 'd2', ts: later }])
  await waitFor(async () => ((await fetchJson(`${e2.http}/v1/aggregates/room-temp?from=${later}`)).body as { results: Result[] }).results.some(r => !r.final),
    { timeoutMs: BOUND, message: 'e2 holding an open window' })
  // …and the fog has heard so (a batch with the new watermark, so without the idle flag).
  await waitFor(async () => {
    const edges = ((await fetchJson(`${fog.http}/v1/mesh`)).body as { edges: Array<{ id: string, watermarks: Record<string, string> }> }).edges
    return Date.parse(edges.find(e => e.id === 'e2')?.watermarks['room-temp'] ?? '') >= later - 2_000
  }, { timeoutMs: BOUND, message: 'the fog knowing e2 is active again' })
  e2.kill('SIGKILL')
  await e2.exited
  running.delete(e2)
  const killedAt = Date.now()
  await waitFor(async () => {
    for (const p of [fog, cloud, e1]) {
      const gone = (await meshOf(p)).peers.find(x => x.id === 'e2')
      if (gone !== undefined && gone.state !== 'expired') return false
    }
    return true
  }, { timeoutMs: BOUND, message: 'the killed edge expires in every view' })
  t.ok(Date.now() - killedAt < EXPIRY + 5_000, 'within the expiry and a few heartbeats')

  // The fog stops waiting for e2 once its heartbeats stopped: e1's window is final long before the
  // fog's --finalize-after (30 s), though e2's watermark stays below its end.
  await publish(e1.mqtt!, [{ room: 'r1', device: 'd1', ts: later }, { room: 'r1', device: 'd1', ts: later + 20_000 }])
  const alone = await waitFor(async () => {
    const body = (await fetchJson(`${fog.http}/v1/aggregates/room-temp?from=${later - 10_000}&to=${later + 10_000}`)).body as { results: Result[] }
    return body.results.find(r => r.key === 'r1' && r.final)
  }, { timeoutMs: BOUND, message: 'e1\'s window final at the fog without the expired e2' })
  t.equal(alone.values.n, 1, 'e1\'s reading, without e2\'s (lost with it)')
  t.ok(Date.now() - killedAt < 20_000, `final ${Date.now() - killedAt} ms after e2 died, not after --finalize-after`)
  const fogEdges = ((await fetchJson(`${fog.http}/v1/mesh`)).body as { edges: Array<{ id: string, lastSeen: string | null }> }).edges
  t.same(fogEdges.find(e => e.id === 'e2')?.lastSeen, null, 'the fog still lists e2, not waited for any more')
})

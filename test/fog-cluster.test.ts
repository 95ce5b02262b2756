/**
 * The replicated fog cluster as users run it: a real three-member etcd cluster on loopback and three
 * `fogmesh fog --etcd …` processes, driven with batches of partials over HTTP. Shard ownership and
 * 421 refusals, queries that answer the same everywhere, a coordinator SIGKILLed with open windows, a
 * coordinator cut off from etcd, quorum lost and back, and etcd's state kept bounded.
 */
import { join } from 'node:path'
import { Etcd3 } from 'etcd3'
import t from 'tap'
import type { Test } from 'tap'
import { getAggregate } from '../core/aggregates/index.ts'
import { encodeBatch } from '../core/upstream/batch.ts'
import type { Batch, PipelineDef, Watermark, WindowEntry } from '../core/upstream/batch.ts'
import { shardOf } from '../core/upstream/shards.ts'
import type { ShardMapView } from '../core/upstream/shards.ts'
import { startEtcdCluster } from '../simulators/etcd-cluster.ts'
import type { EtcdCluster } from '../simulators/etcd-cluster.ts'
import { startTcpProxy } from '../simulators/tcp-proxy.ts'
import type { TcpProxy } from '../simulators/tcp-proxy.ts'
import { fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import { fetchJson, freePort, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { JsonResponse, RunningProcess } from './helpers/process.ts'

const START = Date.UTC(2026, 0, 1)
const SIZE = 10_000
const LEASE_TTL = 2_000
/** The failover bound the issue sets: shards move within this after the lease expires. */
const FAILOVER_BOUND = 5_000
const DEF: PipelineDef = {
  name: 'temp',
  version: 1,
  window: 'tumbling',
  selects: [{ name: 'n', fn: 'count', params: [] }, { name: 'total', fn: 'sum', params: [] }]
}

/** One edge's partial of a window holding `values`. */
function contribution (edge: string, values: number[], revision = 0): WindowEntry['contributions'][number] {
  const count = getAggregate('count')!
  const sum = getAggregate('sum')!
  let n = count.create([])
  let s = sum.create([])
  for (const v of values) {
    n = count.add(n, undefined, START)
    s = sum.add(s, v, START)
  }
  return { edge, revision, states: [count.encode(n), sum.encode(s)] }
}

function windowOf (key: string, w: number, contributions: WindowEntry['contributions']): WindowEntry {
  return { pipeline: DEF.name, key, start: START + w * SIZE, end: START + (w + 1) * SIZE, contributions }
}

let seq = 0
async function post (base: string, sender: string, windows: WindowEntry[], watermarks: Watermark[] = []): Promise<JsonResponse> {
  const batch: Batch = { seq: ++seq, sender, role: 'edge', pipelines: [DEF], watermarks, windows }
  const { body, encoding } = encodeBatch(batch)
  const headers: Record<string, string> = { 'content-type': 'application/cbor' }
  if (encoding !== undefined) headers['content-encoding'] = encoding
  return await fetchJson(`${base}/v1/partials`, { method: 'POST', headers, body })
}

function past (w: number, ...edges: string[]): Watermark[] {
  return edges.map(edge => ({ pipeline: DEF.name, edge, watermark: START + (w + 1) * SIZE }))
}

interface Cluster {
  etcd: EtcdCluster
  fogs: Map<string, RunningProcess>
  /** Each coordinator's proxies to the etcd members, when asked for. */
  proxies: Map<string, TcpProxy[]>
  start: (id: string) => Promise<RunningProcess>
  map: (id?: string) => Promise<ShardMapView>
  cloud?: RunningProcess
}

/** Three etcd members and three coordinators f1..f3; `proxied` coordinators reach etcd through proxies. */
async function startCluster (t: Test, opts: { proxied?: string[], fog?: string[], cloud?: boolean } = {}): Promise<Cluster> {
  const dir = await tmpDir('fogmesh-cluster-')
  const etcd = await startEtcdCluster({ members: 3, dir: join(dir.path, 'etcd') })
  const fogs = new Map<string, RunningProcess>()
  const proxies = new Map<string, TcpProxy[]>()
  const cloud = opts.cloud === true
    ? await startFogmesh(['cloud', '--id', 'c1', '--http-port', '0', '--data-dir', join(dir.path, 'cloud'), '--tick', '100ms', '--finalize-after', '30s'])
    : undefined
  t.teardown(async () => {
    await Promise.all([...fogs.values(), ...cloud === undefined ? [] : [cloud]].map(p => p.stop(5_000).catch(() => p.kill('SIGKILL'))))
    for (const list of proxies.values()) for (const p of list) await p.close()
    await etcd.stop()
    await dir.cleanup()
  })
  const ports = new Map<string, number>()
  for (const id of ['f1', 'f2', 'f3']) ports.set(id, await freePort())
  for (const id of opts.proxied ?? []) {
    proxies.set(id, await Promise.all(etcd.members.map(m => {
      const [host, port] = m.endpoint.split(':')
      return startTcpProxy({ host, port: Number(port) })
    })))
  }
  const cluster: Cluster = {
    cloud,
    etcd,
    fogs,
    proxies,
    start: async id => {
      const endpoints = proxies.get(id)?.map(p => p.address) ?? etcd.endpoints
      const p = await startFogmesh(['fog', '--id', id, '--http-port', String(ports.get(id)), '--data-dir', join(dir.path, id),
        '--etcd', endpoints.join(','), '--lease-ttl', `${LEASE_TTL}ms`, '--etcd-timeout', '1s', '--tick', '100ms', '--finalize-after', '30s',
        ...cloud === undefined ? [] : ['--cloud', cloud.http, '--uplink-retry-max', '500ms'], ...opts.fog ?? []])
      fogs.set(id, p)
      return p
    },
    map: async id => (await fetchJson(`${fogs.get(id ?? [...fogs.keys()][0])!.http}/v1/shards`)).body as ShardMapView
  }
  await Promise.all(['f1', 'f2', 'f3'].map(id => cluster.start(id)))
  await waitFor(async () => {
    const maps = await Promise.all([...fogs.keys()].map(id => cluster.map(id)))
    return maps.every(m => m.members.length === 3 && m.version === maps[0].version && m.status === 'ok')
  }, { timeoutMs: 15_000, message: 'every coordinator holding one map of three members' })
  return cluster
}

/** A key whose shard `owner` owns in `map`. */
function keyOwnedBy (map: ShardMapView, owner: string, not: string[] = []): string {
  for (let i = 0; i < 10_000; i++) {
    const key = `k${i}`
    if (!not.includes(key) && map.owners[shardOf(DEF.name, key, map.shards)] === owner) return key
  }
  throw new Error(`no key of ${owner}`)
}

async function finalOf (base: string, key: string): Promise<{ final: boolean, revision: number, sources: number, values: Record<string, unknown> } | undefined> {
  return (await fetchResults(base, DEF.name)).find(r => r.key === key && r.final)
}

t.test('shards: a balanced map, 421 for another owner\'s window, the same results from every coordinator and the cloud', { timeout: 60_000 }, async t => {
  const c = await startCluster(t, { cloud: true })
  const map = await c.map('f1')
  t.equal(map.shards, 64)
  const counts: number[] = ['f1', 'f2', 'f3'].map(id => map.owners.filter(o => o === id).length)
  const total = counts.reduce((a, b) => a + b)
  t.ok(total === 64 && counts.every(n => n === 21 || n === 22), `balanced: ${counts.join('/')}`)
  t.ok(['f1', 'f2', 'f3'].includes(map.leader ?? ''), `a leader: ${map.leader}`)

  const key = keyOwnedBy(map, 'f2')
  const refused = await post(c.fogs.get('f1')!.http, 'e1', [windowOf(key, 0, [contribution('e1', [1, 2, 3])])], past(0, 'e1'))
  t.equal(refused.status, 421)
  const error = (refused.body as { error: { code: string, shardMap: ShardMapView } }).error
  t.equal(error.code, 'wrong_shard')
  t.equal(error.shardMap.version, map.version, 'the refusal carries the current map')
  t.equal(error.shardMap.owners[shardOf(DEF.name, key, 64)], 'f2')

  const f2 = c.fogs.get('f2')!.http
  t.equal((await post(f2, 'e1', [windowOf(key, 0, [contribution('e1', [1, 2, 3])])])).status, 200)
  t.equal((await post(f2, 'e2', [windowOf(key, 0, [contribution('e2', [10])])])).status, 200)
  for (const id of ['f1', 'f2', 'f3']) t.equal((await post(c.fogs.get(id)!.http, 'e1', [], past(0, 'e1', 'e2'))).status, 200, `watermarks to ${id}`)
  for (const id of ['f1', 'f2', 'f3']) {
    const r = await waitFor(() => finalOf(c.fogs.get(id)!.http, key), { timeoutMs: 10_000, message: `the final window at ${id}` })
    t.same({ revision: r.revision, sources: r.sources, values: r.values }, { revision: 0, sources: 2, values: { n: 4, total: 16 } }, `${id} answers the merged window`)
  }
  t.equal((await fetchMetric(c.fogs.get('f1')!.http, 'fogmesh_cluster_members')).get(''), 3)

  // Forwarded by the owner; its "to forward" mark goes once the cloud has it.
  const atCloud = await waitFor(() => finalOf(c.cloud!.http, key), { timeoutMs: 10_000, message: 'the window at the cloud' })
  t.same(atCloud.values, { n: 4, total: 16 }, 'the cloud has the merged window')
  const client = new Etcd3({ hosts: c.etcd.members.map(m => m.clientUrl) })
  t.teardown(() => client.close())
  await waitFor(async () => (await client.getAll().prefix('/fogmesh/f/').count()) === 0, { timeoutMs: 10_000, message: 'the mark cleared' })
  t.equal(await client.getAll().prefix('/fogmesh/w/').count(), 1, 'the window record stays (until retention)')
})

t.test('a coordinator SIGKILLed with open windows: its shards move, the new owner finishes them exactly once', { timeout: 60_000 }, async t => {
  const c = await startCluster(t)
  const map = await c.map()
  const victim = map.leader === 'f1' ? 'f2' : 'f1'
  const keys = [keyOwnedBy(map, victim), keyOwnedBy(map, map.leader!)]
  // Open windows at both: e1 has delivered, e2 not yet, nobody's watermark is past the end.
  for (const key of keys) {
    const owner = map.owners[shardOf(DEF.name, key, 64)]!
    t.equal((await post(c.fogs.get(owner)!.http, 'e1', [windowOf(key, 0, [contribution('e1', [1, 2])])])).status, 200)
  }
  for (const id of ['f1', 'f2', 'f3']) await post(c.fogs.get(id)!.http, 'e1', [], [{ pipeline: DEF.name, edge: 'e2', watermark: START }])

  // First a follower, then the leader: each time the map drops it within the bound after its lease.
  const failovers: number[] = []
  for (const id of [victim, map.leader!]) {
    const killedAt = Date.now()
    c.fogs.get(id)!.kill('SIGKILL')
    c.fogs.delete(id)
    const after = await waitFor(async () => {
      const m = await c.map()
      return !m.members.some(x => x.id === id) && !m.owners.includes(id) && m.status === 'ok' ? m : undefined
    }, { timeoutMs: LEASE_TTL + FAILOVER_BOUND + 2_000, intervalMs: 50, message: `the map without ${id}` })
    failovers.push(Date.now() - killedAt)
    t.ok(after.version > map.version, `a new map version (${after.version})`)
    t.ok(after.owners.every(o => o !== null), 'every shard has an owner')
  }
  t.ok(failovers.every(ms => ms < LEASE_TTL + FAILOVER_BOUND), `shards moved ${failovers.join(' ms, ')} ms after the kills (lease TTL ${LEASE_TTL} ms)`)

  const [last] = [...c.fogs.keys()]
  const base = c.fogs.get(last)!.http
  // The survivor has e1's partials from etcd; e2's come now, e1's again as replays.
  const got = await post(base, 'e2', keys.map(key => windowOf(key, 0, [contribution('e2', [5]), contribution('e1', [1, 2])])), past(0, 'e1', 'e2'))
  t.equal(got.status, 200, 'the survivor takes both windows')
  t.same(got.body, { acked: seq, applied: 2, ignored: 2 }, 'e1\'s partials were already there (replicated): replays')
  for (const key of keys) {
    const r = await waitFor(() => finalOf(base, key), { timeoutMs: 10_000, message: `the final window ${key}` })
    t.same({ revision: r.revision, sources: r.sources, values: r.values }, { revision: 0, sources: 2, values: { n: 3, total: 8 } }, `${key}: both edges, once`)
  }

  // A killed coordinator comes back with an empty mirror: it loads the state and gets shards again.
  const back = await c.start(victim)
  await waitFor(async () => (await c.map()).owners.includes(victim), { timeoutMs: 10_000, message: `${victim} owning shards again` })
  for (const key of keys) {
    const r = await waitFor(() => finalOf(back.http, key), { timeoutMs: 5_000, message: `${victim} serving ${key}` })
    t.same(r.values, { n: 3, total: 8 }, `the restarted ${victim} answers the same`)
  }
})

t.test('quorum lost: 503 no_quorum and queries still served; quorum back: partials taken again', { timeout: 60_000 }, async t => {
  const c = await startCluster(t)
  const map = await c.map()
  const key = keyOwnedBy(map, 'f1')
  const f1 = c.fogs.get('f1')!.http
  t.equal((await post(f1, 'e1', [windowOf(key, 0, [contribution('e1', [4])])], past(0, 'e1'))).status, 200)
  await waitFor(() => finalOf(f1, key), { timeoutMs: 10_000, message: 'a final window' })

  await Promise.all([c.etcd.kill(c.etcd.members[0].name), c.etcd.kill(c.etcd.members[1].name)])
  const refused = await waitFor(async () => {
    const r = await post(f1, 'e1', [windowOf(key, 1, [contribution('e1', [7])])])
    return r.status === 503 ? r : undefined
  }, { timeoutMs: 10_000, intervalMs: 200, message: 'a 503 while etcd has no quorum' })
  t.equal((refused.body as { error: { code: string } }).error.code, 'no_quorum')
  await waitFor(async () => (await c.map('f2')).status === 'no_quorum', { timeoutMs: 10_000, message: 'GET /v1/shards saying no_quorum' })
  t.equal((await fetchMetric(f1, 'fogmesh_cluster_quorum')).get(''), 0)
  t.same((await finalOf(f1, key))?.values, { n: 1, total: 4 }, 'results are still served')

  await Promise.all([c.etcd.restart(c.etcd.members[0].name), c.etcd.restart(c.etcd.members[1].name)])
  const taken = await waitFor(async () => {
    const r = await post(f1, 'e1', [windowOf(key, 1, [contribution('e1', [7])])], past(1, 'e1'))
    return r.status === 200 ? r : undefined
  }, { timeoutMs: 15_000, intervalMs: 200, message: 'partials taken again' })
  t.equal(taken.status, 200)
  const r = await waitFor(async () => (await fetchResults(c.fogs.get('f3')!.http, DEF.name)).find(x => x.key === key && x.start === new Date(START + SIZE).toISOString() && x.final), { timeoutMs: 10_000, message: 'the next window final everywhere' })
  t.same(r.values, { n: 1, total: 7 })
})

t.test('a coordinator cut off from etcd commits nothing and loses its shards; healed, it rejoins', { timeout: 60_000 }, async t => {
  const c = await startCluster(t, { proxied: ['f3'] })
  const map = await c.map()
  const key = keyOwnedBy(map, 'f3')
  const f3 = c.fogs.get('f3')!.http
  for (const p of c.proxies.get('f3')!) p.cut()
  const refused = await waitFor(async () => {
    const r = await post(f3, 'e1', [windowOf(key, 0, [contribution('e1', [1])])], past(0, 'e1'))
    return r.status !== 200 ? r : undefined
  }, { timeoutMs: 10_000, intervalMs: 200, message: 'f3 refusing partials' })
  t.equal(refused.status, 503)
  const others = await waitFor(async () => {
    const m = await c.map('f1')
    return m.owners.includes('f3') ? undefined : m
  }, { timeoutMs: LEASE_TTL + FAILOVER_BOUND + 2_000, intervalMs: 50, message: 'the others taking f3\'s shards' })
  const owner = others.owners[shardOf(DEF.name, key, 64)]!
  t.not(owner, 'f3')
  t.equal((await post(c.fogs.get(owner)!.http, 'e1', [windowOf(key, 0, [contribution('e1', [1])])], past(0, 'e1'))).status, 200, `${owner} takes the window`)
  t.equal((await post(f3, 'e1', [windowOf(key, 0, [contribution('e1', [1])])], past(0, 'e1'))).status, 503, 'f3 still takes nothing')

  for (const p of c.proxies.get('f3')!) p.heal()
  await waitFor(async () => (await c.map('f1')).owners.includes('f3') && (await c.map('f3')).status === 'ok', { timeoutMs: 15_000, message: 'f3 back in the map' })
  // As an edge does with every batch: the watermark to every coordinator (f3 may own the shard again,
  // and waits for e1, which it knows from the replicated window, until e1 reports to it).
  for (const id of ['f1', 'f2', 'f3']) t.equal((await post(c.fogs.get(id)!.http, 'e1', [], past(0, 'e1'))).status, 200, `the watermark to ${id}`)
  const r = await waitFor(() => finalOf(f3, key), { timeoutMs: 10_000, message: 'f3 serving the window committed while it was away' })
  t.same({ revision: r.revision, values: r.values }, { revision: 0, values: { n: 1, total: 1 } }, 'committed once, by the owner of the time')
})

t.test('bounded state: windows past --etcd-retention leave etcd, and its history is compacted', { timeout: 60_000 }, async t => {
  const c = await startCluster(t, { fog: ['--etcd-retention', '3s', '--etcd-maintain-every', '1s', '--retention', '3s'] })
  const map = await c.map()
  const client = new Etcd3({ hosts: c.etcd.members.map(m => m.clientUrl) })
  t.teardown(() => client.close())
  const keys = ['f1', 'f2', 'f3'].map(id => keyOwnedBy(map, id))
  // Windows of "now", so that they expire a few seconds later.
  const w = Math.floor((Date.now() - START) / SIZE)
  for (const key of keys) {
    const owner = map.owners[shardOf(DEF.name, key, 64)]!
    t.equal((await post(c.fogs.get(owner)!.http, 'e1', [windowOf(key, w, [contribution('e1', [1])])], past(w, 'e1'))).status, 200)
  }
  const count = async () => await client.getAll().prefix('/fogmesh/w/').count()
  await waitFor(async () => (await count()) === 3, { timeoutMs: 5_000, message: 'three window records in etcd' })
  await waitFor(async () => (await count()) === 0, { timeoutMs: 15_000, message: 'the window records removed after retention' })
  const leader = c.fogs.get((await c.map()).leader!)!.http
  await waitFor(async () => ((await fetchMetric(leader, 'fogmesh_cluster_compactions_total')).get('') ?? 0) > 0, { timeoutMs: 10_000, message: 'a compaction' })
  t.ok(((await fetchMetric(leader, 'fogmesh_etcd_db_bytes')).get('') ?? 0) > 0, 'the leader reports etcd\'s size')
  t.equal(await client.getAll().prefix('/fogmesh/f/').count(), 0, 'no marks left')
})

t.test('pipelines deployed at any coordinator: one set in etcd, served by every coordinator, also after a restart', { timeout: 60_000 }, async t => {
  const token = 'cluster-test-token-0123456789'
  const c = await startCluster(t, { fog: ['--admin-token', token] })
  const yaml = (where: string) => `name: deployed\nfrom: sensors/+room/temperature\n${where}window: { tumbling: 10s }\nselect:\n  n: count()\n`
  const at = (id: string) => c.fogs.get(id)!.http
  const change = async (id: string, method: 'PUT' | 'DELETE', body?: string) =>
    await fetchJson(`${at(id)}/v1/pipelines/deployed`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/yaml' }, body })
  const version = async (id: string) => ((await fetchJson(`${at(id)}/v1/pipelines`)).body.pipelines as Array<{ name: string, version: number }>).find(p => p.name === 'deployed')?.version
  const revision = async (id: string) => (await fetchJson(`${at(id)}/v1/deployments`)).body.revision as number

  t.equal((await change('f1', 'PUT', yaml(''))).status, 201, 'deployed at f1')
  for (const id of ['f2', 'f3']) await waitFor(async () => (await version(id)) === 1, { timeoutMs: 5_000, message: `${id} serving v1` })
  const v2 = await change('f2', 'PUT', yaml('where: value > 0.0\n'))
  t.same({ status: v2.status, version: v2.body.pipeline.version, revision: v2.body.revision }, { status: 200, version: 2, revision: 2 }, 'v2 deployed at f2, from the set f1 stored')
  for (const id of ['f1', 'f3']) await waitFor(async () => (await version(id)) === 2, { timeoutMs: 5_000, message: `${id} serving v2` })

  const client = new Etcd3({ hosts: c.etcd.members.map(m => m.clientUrl) })
  t.teardown(() => client.close())
  const stored = JSON.parse((await client.get('/fogmesh/deployed').string())!) as { revision: number, pipelines: Array<{ name: string, version: number }> }
  t.same({ revision: stored.revision, pipelines: stored.pipelines.map(p => [p.name, p.version]) }, { revision: 2, pipelines: [['deployed', 2]] }, 'one set in etcd')

  t.equal(await c.fogs.get('f3')!.stop(), 0)
  await c.start('f3')
  t.same({ version: await version('f3'), revision: await revision('f3') }, { version: 2, revision: 2 }, 'f3 restarted serves the set from its start')

  t.equal((await change('f3', 'DELETE')).status, 200, 'deleted at f3')
  for (const id of ['f1', 'f2']) await waitFor(async () => (await revision(id)) === 3, { timeoutMs: 5_000, message: `${id} at revision 3` })
  t.same((await fetchJson(`${at('f1')}/v1/deployments`)).body, { revision: 3, pipelines: [] }, 'the set is empty everywhere')
})

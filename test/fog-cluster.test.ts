/**
 * The replicated fog cluster as users run it: a real three-member etcd cluster on loopback and three
 * `fogmesh fog --etcd …` processes, driven with batches of partials over HTTP. Shard ownership and
 * 421 refusals, queries that answer the same everywhere, a coordinator SIGKILLed with open windows, a
 * coordinator cut off from etcd, quorum lost and back, and etcd's state kept bounded.
 */
import { Etcd3 } from 'etcd3'
import t from 'tap'
import type { Watermark, WindowEntry } from '../core/upstream/batch.ts'
import { shardOf } from '../core/upstream/shards.ts'
import type { ShardMapView } from '../core/upstream/shards.ts'
import { fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import { LEASE_TTL, startCluster } from './helpers/fog-cluster.ts'
import { waitFor } from './helpers/process.ts'
import type { JsonResponse } from './helpers/process.ts'
import { COUNT_SUM_DEF, countSumContribution } from './helpers/specs.ts'
import { postBatch } from './helpers/partials.ts'

const START = Date.UTC(2026, 0, 1)
const SIZE = 10_000
/** The failover bound the issue sets: shards move within this after the lease expires. */
const FAILOVER_BOUND = 5_000
const DEF = COUNT_SUM_DEF

/** One edge's partial of a window holding `values`. */
function contribution (edge: string, values: number[], revision = 0): WindowEntry['contributions'][number] {
  return countSumContribution(edge, values, START, revision)
}

function windowOf (key: string, w: number, contributions: WindowEntry['contributions']): WindowEntry {
  return { pipeline: DEF.name, key, start: START + w * SIZE, end: START + (w + 1) * SIZE, contributions }
}

let seq = 0
async function post (base: string, sender: string, windows: WindowEntry[], watermarks: Watermark[] = []): Promise<JsonResponse> {
  return await postBatch(base, { seq: ++seq, sender, role: 'edge', pipelines: [DEF], watermarks, windows })
}

function past (w: number, ...edges: string[]): Watermark[] {
  return edges.map(edge => ({ pipeline: DEF.name, edge, watermark: START + (w + 1) * SIZE }))
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
  // and waits for e1, which it knows from the replicated window, until e1 reports to it). Sent again
  // after a 503, as edges do: just healed, f3 may not have caught up with what was committed meanwhile
  // (a batch that would define the pipeline again is refused with 503 retry until its watch has).
  for (const id of ['f1', 'f2', 'f3']) {
    const codes: string[] = []
    const taken = await waitFor(async () => {
      const r = await post(c.fogs.get(id)!.http, 'e1', [], past(0, 'e1'))
      if (r.status === 503) codes.push(r.body.error.code)
      return r.status === 503 ? undefined : r
    }, { timeoutMs: 5_000, intervalMs: 200, message: `${id} taking the watermark` })
    t.equal(taken.status, 200, `the watermark to ${id}${codes.length > 0 ? ` (after 503 ${codes.join(', ')})` : ''}`)
  }
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

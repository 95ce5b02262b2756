/**
 * A fog cluster's sinks get every final window and every later revision, also when a coordinator is
 * SIGKILLed after etcd took its final windows and before its sinks' queues did: a real three-member
 * etcd cluster, three `fogmesh fog --etcd …` coordinators each with a webhook sink (one recording
 * server for all) and a postgres sink (one table for all), driven with batches of partials over HTTP.
 *
 * The gap is hit with a fault point of the coordinator, FOGMESH_FAULT_AFTER_FINAL_COMMIT=N: its N-th
 * commit of final windows, once etcd took it, logs `fault.after_final_commit` and never returns (the
 * pass stops before the sinks' queues); the test then SIGKILLs it. Two ways back are covered:
 * - f1 (a long lease) is restarted at once and keeps its shards: it hands its own results to its
 *   sinks again at its start;
 * - f2 (a short lease) stays down during a revision: the coordinators that take its shards over hand
 *   its results to their sinks.
 * Every (key, revision) must reach the webhook with exactly its values, and the table must hold every
 * window at its last revision.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import type { Watermark, WindowEntry } from '../core/upstream/batch.ts'
import { shardOf } from '../core/upstream/shards.ts'
import type { ShardMapView } from '../core/upstream/shards.ts'
import { startEtcdCluster } from '../simulators/etcd-cluster.ts'
import { fetchResults } from './helpers/ground-truth.ts'
import { fetchJson, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { JsonResponse, RunningProcess } from './helpers/process.ts'
import { startPostgres } from './helpers/postgres.ts'
import { startRecorder } from './helpers/recorder.ts'
import { COUNT_SUM_DEF, countSumContribution } from './helpers/specs.ts'
import { postBatch } from './helpers/partials.ts'

t.setTimeout(150_000)

const START = Date.UTC(2026, 0, 1)
const SIZE = 10_000
const DEF = COUNT_SUM_DEF
/** f1 outlives its restart in the map; f2 and f3 lose their shards within seconds of dying. */
const LONG_LEASE = '60s'
const SHORT_LEASE = '2s'

function windowOf (key: string, contributions: WindowEntry['contributions']): WindowEntry {
  return { pipeline: DEF.name, key, start: START, end: START + SIZE, contributions }
}

function contribution (edge: string, values: number[]): WindowEntry['contributions'][number] {
  return countSumContribution(edge, values, START)
}

let seq = 0
async function post (base: string, sender: string, windows: WindowEntry[], watermarks: Watermark[] = []): Promise<JsonResponse> {
  return await postBatch(base, { seq: ++seq, sender, role: 'edge', pipelines: [DEF], watermarks, windows })
}

function past (...edges: string[]): Watermark[] {
  return edges.map(edge => ({ pipeline: DEF.name, edge, watermark: START + SIZE }))
}

/** `n` keys whose shards `owner` owns in `map`, each in a shard of its own. */
function keysOwnedBy (map: ShardMapView, owner: string, n: number): string[] {
  const keys: string[] = []
  const shards = new Set<number>()
  for (let i = 0; keys.length < n && i < 100_000; i++) {
    const key = `k${i}`
    const s = shardOf(DEF.name, key, map.shards)
    if (map.owners[s] === owner && !shards.has(s)) {
      keys.push(key)
      shards.add(s)
    }
  }
  if (keys.length < n) throw new Error(`not ${n} keys of ${owner}`)
  return keys
}

interface Delivered { pipeline: string, key: string, revision: number, final: boolean, sources: number, values: Record<string, unknown> }

t.test('every final window and revision reaches the sinks across coordinators SIGKILLed between etcd and their sinks\' queues', async t => {
  const dir = await tmpDir('fogmesh-cluster-sinks-')
  const etcd = await startEtcdCluster({ members: 3, dir: join(dir.path, 'etcd') })
  const hook = await startRecorder()
  const pg = await startPostgres()
  const fogs = new Map<string, RunningProcess>()
  t.teardown(async () => {
    await Promise.all([...fogs.values()].map(p => p.stop(5_000).catch(() => { p.kill('SIGKILL') })))
    await hook.close()
    await pg.stop()
    await etcd.stop()
    await dir.cleanup()
  })
  const config = join(dir.path, 'fog.yaml')
  await writeFile(config, stringify({
    sinks: [
      { name: 'hook', type: 'webhook', url: hook.url, 'retry-max': '500ms' },
      { name: 'warehouse', type: 'postgres', url: pg.url, table: 'warehouse', 'retry-max': '500ms' }
    ]
  }))
  // A restart takes the port of the first start (advertised in the map).
  const ports = new Map<string, number>()
  const start = async (id: string, lease: string, fault?: number): Promise<RunningProcess> => {
    const p = await startFogmesh(['fog', '--id', id, '--config', config, '--http-port', String(ports.get(id) ?? 0), '--data-dir', join(dir.path, id),
      '--etcd', etcd.endpoints.join(','), '--lease-ttl', lease, '--etcd-timeout', '1s', '--tick', '100ms', '--finalize-after', '60s'],
    { env: { FOGMESH_FAULT_AFTER_FINAL_COMMIT: fault === undefined ? undefined : String(fault) } })
    fogs.set(id, p)
    ports.set(id, Number(new URL(p.http).port))
    return p
  }
  const map = async (id: string): Promise<ShardMapView> => (await fetchJson(`${fogs.get(id)!.http}/v1/shards`)).body as ShardMapView
  const stableMap = async (ids: string[]): Promise<ShardMapView> => await waitFor(async () => {
    const maps = await Promise.all(ids.map(map))
    const ok = maps.every(m => m.status === 'ok' && m.version === maps[0].version && m.members.length === ids.length &&
      m.owners.every(o => o !== null && ids.includes(o)))
    return ok ? maps[0] : undefined
  }, { timeoutMs: 20_000, message: `every coordinator of ${ids.join(', ')} holding one map of them` })

  // f2 first, so that the leader is not f1, whose old lease outlives its restart.
  await start('f2', SHORT_LEASE, 2)
  await start('f3', SHORT_LEASE)
  await start('f1', LONG_LEASE, 1)
  const m = await stableMap(['f1', 'f2', 'f3'])
  const [a1, b1] = keysOwnedBy(m, 'f1', 2)
  const [a2, b2] = keysOwnedBy(m, 'f2', 2)
  const [a3] = keysOwnedBy(m, 'f3', 1)

  // What the sinks must get: every (key, revision) with exactly these values.
  const expected = new Map<string, { sources: number, values: { n: number, total: number } }>()
  const expect = (key: string, revision: number, sources: number, n: number, total: number): void => {
    expected.set(`${key}@${revision}`, { sources, values: { n, total } })
  }
  const delivered = (): Map<string, Delivered[]> => {
    const by = new Map<string, Delivered[]>()
    for (const r of hook.accepted) {
      const d = JSON.parse(r.body) as Delivered
      const id = `${d.key}@${d.revision}`
      by.set(id, [...by.get(id) ?? [], d])
    }
    return by
  }
  const reached = (ids: string[]): boolean => { const got = delivered(); return ids.every(id => got.has(id)) }

  const http = (id: string): string => fogs.get(id)!.http
  t.equal((await post(http('f1'), 'e1', [windowOf(a1, [contribution('e1', [1, 2, 3])]), windowOf(b1, [contribution('e1', [5])])])).status, 200)
  t.equal((await post(http('f1'), 'e2', [windowOf(a1, [contribution('e2', [10])])])).status, 200)
  t.equal((await post(http('f2'), 'e1', [windowOf(a2, [contribution('e1', [4, 4])])])).status, 200)
  t.equal((await post(http('f2'), 'e2', [windowOf(b2, [contribution('e2', [7])])])).status, 200)
  t.equal((await post(http('f3'), 'e1', [windowOf(a3, [contribution('e1', [2])])])).status, 200)
  expect(a1, 0, 2, 4, 16)
  expect(b1, 0, 1, 1, 5)
  expect(a2, 0, 1, 2, 8)
  expect(b2, 0, 1, 1, 7)
  expect(a3, 0, 1, 1, 2)
  // Every window is due once both edges are past it, at every coordinator.
  for (const id of ['f1', 'f2', 'f3']) t.equal((await post(http(id), 'e1', [], past('e1', 'e2'))).status, 200, `watermarks to ${id}`)

  // f1's first final commit is in etcd, and f1 stops there: SIGKILLed before its sinks' queues took it.
  await fogs.get('f1')!.waitForLine(/fault\.after_final_commit/, 20_000)
  fogs.get('f1')!.kill('SIGKILL')
  await fogs.get('f1')!.exited
  // The windows are final for the cluster (the other members' mirrors) ...
  await waitFor(async () => {
    const rows = await fetchResults(http('f3'), DEF.name)
    return [a1, b1].every(k => rows.some(r => r.key === k && r.final))
  }, { timeoutMs: 10_000, message: 'f1\'s windows final at f3' })
  // ... and f2's and f3's went through their sinks, but f1's did not.
  await waitFor(() => reached([`${a2}@0`, `${b2}@0`, `${a3}@0`]), { timeoutMs: 15_000, message: 'f2\'s and f3\'s windows at the sink' })
  t.notOk(delivered().has(`${a1}@0`) || delivered().has(`${b1}@0`), 'f1 was killed before its sinks\' queues took its windows')

  // f1 back at once, with its shards (its lease outlives the restart): it hands its results to its sinks again.
  await start('f1', LONG_LEASE)
  t.equal((await stableMap(['f1', 'f2', 'f3'])).version, m.version, 'f1 kept its shards across its restart')
  await waitFor(() => reached([`${a1}@0`, `${b1}@0`]), { timeoutMs: 20_000, message: 'f1\'s windows at the sink after its restart' })

  // Late partials: revision 1 of a window of each coordinator. f2's second final commit (its revision)
  // stops before its sinks' queues; f2 is SIGKILLed and stays down, f1 and f3 take its shards over.
  t.equal((await post(http('f2'), 'e3', [windowOf(a2, [contribution('e3', [100])])])).status, 200)
  expect(a2, 1, 2, 3, 108)
  await fogs.get('f2')!.waitForLine(/fault\.after_final_commit/, 20_000)
  fogs.get('f2')!.kill('SIGKILL')
  await fogs.get('f2')!.exited
  fogs.delete('f2')
  t.equal((await post(http('f1'), 'e3', [windowOf(a1, [contribution('e3', [1])])])).status, 200)
  expect(a1, 1, 3, 5, 17)
  t.equal((await post(http('f3'), 'e3', [windowOf(a3, [contribution('e3', [3, 3])])])).status, 200)
  expect(a3, 1, 2, 3, 8)
  const after = await stableMap(['f1', 'f3'])
  t.ok(after.owners[shardOf(DEF.name, a2, after.shards)] !== 'f2', 'f2\'s shards moved')

  await waitFor(() => reached([...expected.keys()]), { timeoutMs: 30_000, message: 'every final window and revision at the sink' })
  const got = delivered()
  t.same([...got.keys()].sort(), [...expected.keys()].sort(), 'the sink got every (key, revision), and nothing else')
  for (const [id, want] of expected) {
    for (const d of got.get(id) ?? []) {
      t.same({ pipeline: d.pipeline, final: d.final, sources: d.sources, values: d.values }, { pipeline: DEF.name, final: true, ...want }, `${id} (every delivery)`)
    }
  }

  // The table: one row per window, at its last revision.
  const last = [[a1, 1], [b1, 0], [a2, 1], [b2, 0], [a3, 1]] as const
  const want = last.map(([key, revision]) => ({ pipeline: DEF.name, key, revision, final: true, ...expected.get(`${key}@${revision}`)! }))
    .sort((x, y) => x.key < y.key ? -1 : 1)
  const table = async () => (await pg.query('SELECT pipeline, key, revision, final, sources, "values" FROM warehouse ORDER BY key').catch(() => ({ rows: [] }))).rows
  await waitFor(async () => (await table()).length === want.length && (await table()).every((r, i) => r.revision === want[i].revision),
    { timeoutMs: 20_000, message: 'the table holding every window at its last revision' })
  t.same(await table(), want, 'the postgres sink holds every window at its last revision, with its values')
})

/**
 * The cloud tier on PostgreSQL, batch by batch: two `fogmesh cloud --store` processes on one real
 * PostgreSQL, CBOR batches of real aggregate states POSTed to either, results read from both and
 * checked against the aggregates of all readings in one state (an oracle that does not merge).
 * Also: the store unreachable at start (the process waits, says so, serves once it is up) and the
 * password kept out of every log line.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import { getAggregate } from '../core/aggregates/index.ts'
import { encodeBatch } from '../core/upstream/batch.ts'
import type { Batch, PipelineDef } from '../core/upstream/batch.ts'
import type { Values } from '../core/windows/window.ts'
import { fetchMetric } from './helpers/ground-truth.ts'
import type { ServedResult } from './helpers/ground-truth.ts'
import { PgStore } from '../cloud-sink/pg-store.ts'
import { silentLogger } from '../server/shell/log.ts'
import { startPostgres } from './helpers/postgres.ts'
import type { Postgres } from './helpers/postgres.ts'
import { fetchJson, freePort, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { JsonResponse, RunningProcess } from './helpers/process.ts'

t.setTimeout(110_000)

const START = Date.UTC(2026, 0, 1)
const SIZE = 10_000
const PASSWORD = 'Sesame-73-not-in-logs'

const DEF: PipelineDef = {
  name: 'temp',
  version: 1,
  window: 'tumbling',
  selects: [
    { name: 'n', fn: 'count', params: [] },
    { name: 'total', fn: 'sum', params: [] },
    { name: 'high', fn: 'max', params: [] },
    { name: 'devices', fn: 'distinct', params: [] }
  ]
}

interface Reading { value: number, device: string }

function fold (rs: Reading[]): unknown[] {
  return DEF.selects.map(s => {
    const agg = getAggregate(s.fn)!
    let state = agg.create(s.params)
    rs.forEach((r, i) => { state = agg.add(state, s.fn === 'count' ? undefined : s.fn === 'distinct' ? r.device : r.value, START + i) })
    return state
  })
}

/** The oracle: every reading in one state. */
function expected (rs: Reading[]): Values {
  const states = fold(rs)
  return Object.fromEntries(DEF.selects.map((s, i) => [s.name, getAggregate(s.fn)!.result(states[i])]))
}

function batch (sender: string, seq: number, parts: Array<{ key: string, w: number, revision?: number, readings: Reading[] }>, watermark?: number): Batch {
  return {
    sender,
    role: 'edge',
    seq,
    pipelines: [DEF],
    watermarks: watermark === undefined ? [] : [{ pipeline: DEF.name, edge: sender, watermark }],
    windows: parts.map(p => ({
      pipeline: DEF.name,
      key: p.key,
      start: START + p.w * SIZE,
      end: START + (p.w + 1) * SIZE,
      contributions: [{ edge: sender, revision: p.revision ?? 0, states: fold(p.readings).map((s, i) => getAggregate(DEF.selects[i].fn)!.encode(s)) }]
    }))
  }
}

async function post (base: string, b: Batch): Promise<JsonResponse> {
  const encoded = encodeBatch(b)
  const headers: Record<string, string> = { 'content-type': 'application/cbor' }
  if (encoded.encoding !== undefined) headers['content-encoding'] = encoded.encoding
  return await fetchJson(`${base}/v1/partials`, { method: 'POST', body: encoded.body, headers })
}

async function result (base: string, key: string, w: number): Promise<unknown> {
  const res = await fetchJson(`${base}/v1/aggregates/${DEF.name}?key=${key}`)
  if (res.status !== 200) throw new Error(`GET aggregates: ${res.status} ${JSON.stringify(res.body)}`)
  const r = (res.body.results as ServedResult[]).find(x => x.start === new Date(START + w * SIZE).toISOString())
  return r === undefined ? undefined : { final: r.final, revision: r.revision, sources: r.sources, values: r.values }
}

function withPassword (pg: Postgres): string {
  return pg.url.replace('postgres@', `fogmesh:${PASSWORD}@`)
}

/** A role with the password, which the store's URL carries (trust authentication ignores it). */
async function addRole (pg: Postgres): Promise<void> {
  await pg.query(`CREATE ROLE fogmesh LOGIN SUPERUSER PASSWORD '${PASSWORD}'`)
}

async function cloud (t: Test, args: string[], env: Record<string, string> = {}): Promise<RunningProcess> {
  const dir = await tmpDir('fogmesh-cloud-pg-')
  const p = await startFogmesh(['cloud', '--http-port', '0', '--data-dir', join(dir.path, 'data'), '--tick', '100ms', '--finalize-after', '20s', '--log-format', 'json', ...args],
    { env, timeoutMs: 40_000 })
  t.teardown(async () => {
    if (p.proc.exitCode === null && p.proc.signalCode === null) await p.stop().catch(() => p.kill('SIGKILL'))
    await dir.cleanup()
  })
  return p
}

function noPassword (t: Test, p: RunningProcess): void {
  t.notOk([...p.stdout, ...p.stderr].some(l => l.includes(PASSWORD)), `${p.id}: the password appears in no output line`)
}

t.test('two clouds on one store: one tier', async t => {
  const pg = await startPostgres()
  t.teardown(() => pg.stop())
  await addRole(pg)
  const dir = await tmpDir('fogmesh-cloud-pg-url-')
  t.teardown(() => dir.cleanup())
  const urlFile = join(dir.path, 'store-url')
  writeFileSync(urlFile, withPassword(pg) + '\n', { mode: 0o600 })
  // Both deliver their final windows to a postgres sink (a table of the same database, here).
  const config = join(dir.path, 'cloud.yaml')
  writeFileSync(config, `sinks:\n  - { name: warehouse, type: postgres, url: "${pg.url}", table: warehouse }\n`)
  // One reads the URL from a file, the other takes the password from the environment.
  const [a, b] = await Promise.all([
    cloud(t, ['--id', 'ca', '--config', config, '--store-file', urlFile]),
    cloud(t, ['--id', 'cb', '--config', config, '--store', pg.url.replace('postgres@', 'fogmesh:${FOGMESH_STORE_PASSWORD}@')], { FOGMESH_STORE_PASSWORD: PASSWORD })
  ])
  const versions = await pg.query<{ version: number }>('SELECT version FROM fogmesh_schema_version ORDER BY version')
  t.same(versions.rows.map(r => r.version), [1], 'the schema was created once, though both started at once')
  t.equal((await fetchJson(`${a.http}/v1/aggregates/${DEF.name}`)).status, 404, 'a pipeline is unknown until a batch defines it')

  const e1 = [{ value: 1, device: 'd1' }, { value: 5, device: 'd2' }]
  const e2 = [{ value: 7, device: 'd3' }]
  const e2more = [...e2, { value: 9, device: 'd4' }]

  // The same batch to both: it counts once.
  const b1 = batch('e1', 1, [{ key: 'r1', w: 0, readings: e1 }], START + 5_000)
  const [ra, rb] = await Promise.all([post(a.http, b1), post(b.http, b1)])
  t.equal(ra.status, 200)
  t.equal(rb.status, 200)
  t.same([ra.body.applied + rb.body.applied, ra.body.ignored + rb.body.ignored], [1, 1], 'applied by one process, ignored by the other')
  t.same((await post(a.http, b1)).body, { acked: 1, applied: 0, ignored: 1 }, 'a replay is acknowledged and ignored')
  for (const p of [a, b]) t.same(await result(p.http, 'r1', 0), { final: false, revision: 0, sources: 1, values: expected(e1) }, `${p.id}: not final, merged so far`)

  // e2 at B, then a higher revision at A, then the older one again at B.
  t.same((await post(b.http, batch('e2', 1, [{ key: 'r1', w: 0, readings: e2 }], START + 5_000))).body, { acked: 1, applied: 1, ignored: 0 })
  t.same((await post(a.http, batch('e2', 2, [{ key: 'r1', w: 0, revision: 1, readings: e2more }]))).body, { acked: 2, applied: 1, ignored: 0 })
  t.same((await post(b.http, batch('e2', 3, [{ key: 'r1', w: 0, readings: e2 }]))).body, { acked: 3, applied: 0, ignored: 1 }, 'an older revision is ignored')

  // Both watermarks past the end, one through each process: final, revision 0.
  await post(a.http, batch('e1', 2, [], START + SIZE))
  await post(b.http, batch('e2', 4, [], START + SIZE))
  const want0 = { final: true, revision: 0, sources: 2, values: expected([...e1, ...e2more]) }
  await waitFor(async () => (await result(a.http, 'r1', 0) as { final?: boolean } | undefined)?.final, { timeoutMs: 10_000, message: 'r1 final' })
  for (const p of [a, b]) t.same(await result(p.http, 'r1', 0), want0, `${p.id}: final, revision 0`)

  // A contribution after final, sent to both at once: revision 1, exactly once.
  const e3 = [{ value: 100, device: 'd9' }]
  const late = batch('e3', 1, [{ key: 'r1', w: 0, readings: e3 }])
  await Promise.all([post(a.http, late), post(b.http, late)])
  const want1 = { final: true, revision: 1, sources: 3, values: expected([...e1, ...e2more, ...e3]) }
  await waitFor(async () => (await result(b.http, 'r1', 0) as { revision?: number } | undefined)?.revision === 1, { timeoutMs: 10_000, message: 'revision 1' })
  // Time for a wrong second revision to show, had one been made.
  await new Promise(resolve => setTimeout(resolve, 1_000))
  for (const p of [a, b]) t.same(await result(p.http, 'r1', 0), want1, `${p.id}: revision 1, once`)
  const row = await pg.query<{ final_revision: number, dirty: boolean }>('SELECT final_revision, dirty FROM fogmesh_windows')
  t.same(row.rows, [{ final_revision: 1, dirty: false }], 'the window was finalized twice in all: revisions 0 and 1')
  // The sink got the final window, whichever process finalized it, at its last revision.
  const sink = async () => (await pg.query('SELECT key, revision, sources, final, "values" FROM warehouse').catch(() => ({ rows: [] }))).rows
  await waitFor(async () => (await sink())[0]?.revision === 1, { timeoutMs: 10_000, message: 'the sink holding revision 1' })
  t.same(await sink(), [{ key: 'r1', revision: 1, sources: 3, final: true, values: want1.values }], 'the sink has the window at revision 1')
  let delivered = 0
  for (const p of [a, b]) delivered += (await fetchMetric(p.http, 'fogmesh_sink_delivered_total')).get('{sink="warehouse"}') ?? 0
  t.ok(delivered >= 2, `revisions 0 and 1 were both delivered (${delivered} deliveries across the tier)`)

  const sum = async (name: string): Promise<number> => {
    let n = 0
    for (const p of [a, b]) n += (await fetchMetric(p.http, name)).get(`{pipeline="${DEF.name}"}`) ?? 0
    return n
  }
  t.equal(await sum('fogmesh_windows_finalized_total'), 1, 'finalized once across the tier')
  t.equal(await sum('fogmesh_windows_revised_total'), 1, 'revised once across the tier')
  t.equal(await sum('fogmesh_partials_after_final_total'), 1, 'one contribution after final')

  const pa = (await fetchJson(`${a.http}/v1/pipelines`)).body
  t.same((await fetchJson(`${b.http}/v1/pipelines`)).body, pa, 'both list the same pipelines')
  t.equal((pa.pipelines as Array<{ name: string }>)[0].name, DEF.name)
  noPassword(t, a)
  noPassword(t, b)
})

t.test('late contributions racing the finalization at two processes: every window exact, each revision made once', async t => {
  const pg = await startPostgres()
  t.teardown(() => pg.stop())
  const [a, b] = await Promise.all([cloud(t, ['--id', 'ra', '--store', pg.url]), cloud(t, ['--id', 'rb', '--store', pg.url])])
  const KEYS = 40
  const keys = Array.from({ length: KEYS }, (_, i) => `k${i}`)
  const part = (edge: string, k: number): Reading[] => [{ value: k + edge.length, device: `${edge}-d${k % 3}` }, { value: k * 2, device: `${edge}-x` }]
  // e1 and e2 through different processes, their contributions first (with watermarks short of the
  // end, so the tier waits for both), then their watermarks past the end: every window becomes due.
  // Had e2's data come after e1's watermark, a pass between the two could finalize without e2.
  // e3 (never waited for: it reports no watermark) sends the same late batches to both processes at
  // once, one key at a time, while those finalizations run: each lands before a window's
  // finalization, or after it and makes a revision.
  const e3 = (async () => {
    for (const [i, key] of keys.entries()) {
      const late = batch('e3', i + 1, [{ key, w: 0, readings: part('e3', i) }])
      const [ra, rb] = await Promise.all([post(a.http, late), post(b.http, late)])
      if (ra.status !== 200 || rb.status !== 200) throw new Error(`e3 batch ${i + 1}: ${ra.status} ${rb.status}`)
    }
  })()
  await Promise.all([
    (async () => {
      const [r1, r2] = await Promise.all([post(a.http, batch('e1', 1, keys.map((key, i) => ({ key, w: 0, readings: part('e1', i) })), START + SIZE / 2)),
        post(b.http, batch('e2', 1, keys.map((key, i) => ({ key, w: 0, readings: part('e2', i) })), START + SIZE / 2))])
      if (r1.status !== 200 || r2.status !== 200) throw new Error(`e1, e2 batches: ${r1.status} ${r2.status}`)
      await Promise.all([post(a.http, batch('e1', 2, [], START + SIZE)), post(b.http, batch('e2', 2, [], START + SIZE))])
    })(),
    e3
  ])
  const all = async (base: string) => (await fetchJson(`${base}/v1/aggregates/${DEF.name}`)).body.results as ServedResult[]
  await waitFor(async () => {
    const rs = await all(a.http)
    const pending = await pg.query('SELECT 1 FROM fogmesh_windows WHERE final_revision IS NULL OR dirty')
    return rs.length === KEYS && rs.every(r => r.final && r.sources === 3) && pending.rowCount === 0
  }, { timeoutMs: 20_000, message: 'every window final with its three contributions' })
  const results = await all(a.http)
  t.same(await all(b.http), results, 'both processes serve the same results')
  const wrong = results.filter(r => JSON.stringify(r.values) !== JSON.stringify(expected([...part('e1', Number(r.key.slice(1))), ...part('e2', Number(r.key.slice(1))), ...part('e3', Number(r.key.slice(1)))])))
  t.same(wrong.map(r => r.key), [], 'every window holds the merge of all three edges')
  let finalized = 0
  let revised = 0
  for (const p of [a, b]) {
    finalized += (await fetchMetric(p.http, 'fogmesh_windows_finalized_total')).get(`{pipeline="${DEF.name}"}`) ?? 0
    revised += (await fetchMetric(p.http, 'fogmesh_windows_revised_total')).get(`{pipeline="${DEF.name}"}`) ?? 0
  }
  const revisions = results.reduce((n, r) => n + r.revision, 0)
  t.equal(finalized, KEYS, 'each window finalized once (revision 0)')
  t.equal(revised, revisions, `each later revision made once (${revisions} in all)`)
  t.ok(results.every(r => r.revision <= 1), 'one late contribution per window: at most revision 1')

  // Pruning beyond --max-results keeps the newest final windows, whole (window, contributions, result).
  const store = new PgStore({ url: pg.url, shown: pg.url, pool: 3 }, silentLogger, 'fogmesh-test')
  t.teardown(() => store.close())
  await store.prune(0, 10)
  const left = async (table: string) => Number((await pg.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`)).rows[0].n)
  t.same([await left('fogmesh_windows'), await left('fogmesh_contributions'), await left('fogmesh_results')], [10, 30, 10], '10 windows left, with their 3 contributions and result each')
  t.same((await all(a.http)).map(r => r.key), results.map(r => r.key).sort().reverse().slice(0, 10).sort(), 'the newest (by start, then key) are kept')
})

t.test('a fog\'s final window is final at once, whichever process takes it, and counts once', async t => {
  const pg = await startPostgres()
  t.teardown(() => pg.stop())
  const [a, b] = await Promise.all([cloud(t, ['--id', 'fa', '--store', pg.url]), cloud(t, ['--id', 'fb', '--store', pg.url])])
  const e1 = [{ value: 3, device: 'd1' }]
  const e2 = [{ value: 4, device: 'd2' }, { value: 8, device: 'd3' }]
  const contribution = (edge: string, rs: Reading[]) => batch(edge, 1, [{ key: 'r', w: 2, readings: rs }]).windows[0].contributions[0]
  const fog: Batch = {
    sender: 'f1',
    role: 'fog',
    seq: 1,
    pipelines: [DEF],
    watermarks: [],
    windows: [{ pipeline: DEF.name, key: 'r', start: START + 2 * SIZE, end: START + 3 * SIZE, final: 0, contributions: [contribution('e1', e1), contribution('e2', e2)] }]
  }
  t.same((await post(a.http, fog)).body, { acked: 1, applied: 2, ignored: 0 })
  const want = { final: true, revision: 0, sources: 2, values: expected([...e1, ...e2]) }
  await waitFor(async () => (await result(b.http, 'r', 2) as { final?: boolean } | undefined)?.final, { timeoutMs: 10_000, message: 'final without any watermark' })
  t.same((await post(b.http, fog)).body, { acked: 1, applied: 0, ignored: 2 }, 'the same batch at the other process changes nothing')
  await new Promise(resolve => setTimeout(resolve, 500))
  for (const p of [a, b]) t.same(await result(p.http, 'r', 2), want, `${p.id}: final at revision 0`)
})

t.test('a store of a newer release is refused: the cloud exits with the reason, writing nothing', async t => {
  const pg = await startPostgres()
  t.teardown(() => pg.stop())
  await pg.query('CREATE TABLE fogmesh_schema_version (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())')
  await pg.query('INSERT INTO fogmesh_schema_version (version) VALUES (99)')
  const dir = await tmpDir('fogmesh-cloud-pg-')
  t.teardown(() => dir.cleanup())
  const err = await startFogmesh(['cloud', '--http-port', '0', '--data-dir', join(dir.path, 'data'), '--store', pg.url], { timeoutMs: 20_000 })
    .then(p => { p.kill('SIGKILL'); return undefined }, (e: unknown) => e as Error)
  t.match(err?.message, /exited \(2\)[^]*schema is version 99, newer than this release's/, 'it exits (status 2), saying why')
  const tables = await pg.query("SELECT count(*)::int AS n FROM information_schema.tables WHERE table_name LIKE 'fogmesh_%'")
  t.equal(tables.rows[0].n, 1, 'no table was created')
})

t.test('the store unreachable at start: the cloud waits, says so, and serves once it is up', async t => {
  const pg = await startPostgres()
  t.teardown(() => pg.stop())
  await addRole(pg)
  await pg.pause()
  const port = await freePort()
  const dir = await tmpDir('fogmesh-cloud-pg-')
  t.teardown(() => dir.cleanup())
  const p = startFogmesh(['cloud', '--id', 'cw', '--http-port', String(port), '--data-dir', join(dir.path, 'data'), '--tick', '100ms', '--log-format', 'json',
    '--store', pg.url.replace('postgres@', 'fogmesh@')], { env: { PGPASSWORD: PASSWORD }, timeoutMs: 60_000 })
  t.teardown(async () => {
    const r = await p.catch(() => undefined)
    if (r !== undefined && r.proc.exitCode === null && r.proc.signalCode === null) await r.stop().catch(() => r.kill('SIGKILL'))
  })
  // Not ready meanwhile: /healthz answers 503.
  await waitFor(async () => (await fetchJson(`http://127.0.0.1:${port}/healthz`).catch(() => ({ status: 0 }))).status === 503, { timeoutMs: 15_000, message: '/healthz 503 while waiting' })
  await new Promise(resolve => setTimeout(resolve, 1_500))
  await pg.resume()
  const running = await p
  t.ok(running.stderr.some(l => l.includes('store.unreachable') && l.includes(`waiting for the store postgres://***@127.0.0.1:${pg.port}/postgres`)), 'a clear line names the store it waits for')
  t.same((await fetchJson(`${running.http}/healthz`)).body, { status: 'ok', role: 'cloud', id: 'cw' })
  t.same((await post(running.http, batch('e1', 1, [{ key: 'k', w: 0, readings: [{ value: 2, device: 'd' }] }]))).body, { acked: 1, applied: 1, ignored: 0 })
  t.same(await result(running.http, 'k', 0), { final: false, revision: 0, sources: 1, values: expected([{ value: 2, device: 'd' }]) })

  // PostgreSQL going away mid-run: batches get 503, and the process recovers by itself.
  await pg.pause()
  const refused = await post(running.http, batch('e1', 2, [{ key: 'k', w: 1, readings: [{ value: 3, device: 'd' }] }]))
  t.equal(refused.status, 503, 'a batch while the store is down gets 503')
  t.equal((refused.body as { error: { code: string } }).error.code, 'store_unavailable')
  await pg.resume()
  const again = await waitFor(async () => {
    const r = await post(running.http, batch('e1', 2, [{ key: 'k', w: 1, readings: [{ value: 3, device: 'd' }] }]))
    return r.status === 200 ? r : undefined
  }, { timeoutMs: 15_000, message: 'batches taken again' })
  t.same(again.body, { acked: 2, applied: 1, ignored: 0 })
  noPassword(t, running)
})

/**
 * The postgres sink against a real PostgreSQL started by the test: an edge's closed windows, fed by the
 * simulator, end up as one row per window holding the highest revision, equal to the ground truth,
 * also when the database was down during the run (it catches up; no duplicates thanks to the upsert);
 * a row PostgreSQL refuses is set aside and counted; SQL in a key stays data.
 */
import t from 'tap'
import { silentLogger } from '../server/shell/log.ts'
import { Metrics } from '../server/shell/metrics.ts'
import { Sinks } from '../server/sinks/delivery.ts'
import { parseSinks } from '../server/sinks/index.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { startPostgres } from './helpers/postgres.ts'
import type { Postgres } from './helpers/postgres.ts'
import { tmpDir, waitFor } from './helpers/process.ts'
import { compareResults, drained, feed, sinkMetric, startEdgeWithSinks, truthOf } from './helpers/sinks.ts'
import type { ServedResult } from './helpers/ground-truth.ts'

interface Row {
  pipeline: string
  key: string
  window_start: Date
  window_end: Date
  revision: number
  sources: number
  final: boolean
  values: Record<string, unknown>
}

async function rows (pg: Postgres, table: string, pipeline: string): Promise<ServedResult[]> {
  const res = await pg.query<Row>(`SELECT * FROM ${table} WHERE pipeline = $1`, [pipeline])
  return res.rows.map(r => ({
    key: r.key,
    start: r.window_start.toISOString(),
    end: r.window_end.toISOString(),
    final: r.final,
    revision: r.revision,
    sources: r.sources,
    values: r.values as ServedResult['values']
  }))
}

t.test('closed windows reach PostgreSQL, one row per window, also after it was down', async t => {
  const pg = await startPostgres()
  t.teardown(() => pg.stop())
  // Down from the start: the edge queues, and the pipeline does not wait for it.
  await pg.pause()
  const run = await startEdgeWithSinks(t, [
    // The user comes from the environment; the password from a variable the config names.
    { name: 'warehouse', type: 'postgres', url: `postgres://\${SINK_PG_USER}@127.0.0.1:${pg.port}/postgres`, 'password-env': 'SINK_PG_PASSWORD', 'retry-max': '2s' },
    { name: 'rooms', type: 'postgres', url: pg.url, table: 'public.room_results', pipelines: ['room-temp'], 'retry-max': '2s' }
  ], { SINK_PG_USER: 'postgres', SINK_PG_PASSWORD: 'not-a-real-secret-4711' })
  const truth = await feed(t, run)
  t.ok(await sinkMetric(run.edge.http, 'pending', 'warehouse') > 0, 'results wait in the queue while PostgreSQL is down')
  t.equal(await sinkMetric(run.edge.http, 'delivered_total', 'warehouse'), 0)
  t.ok(await sinkMetric(run.edge.http, 'retries_total', 'warehouse') > 0, 'deliveries were retried')

  await pg.resume()
  const total = run.specs.reduce((n, s) => n + truthOf(truth, s.name).length, 0)
  await drained(run.edge.http, 'warehouse', total)
  await drained(run.edge.http, 'rooms', truthOf(truth, 'room-temp').length)
  for (const spec of run.specs) {
    const want = truthOf(truth, spec.name)
    const got = await rows(pg, 'fogmesh_results', spec.name)
    t.equal(got.length, want.length, `${spec.name}: one row per window`)
    t.same(compareResults(spec, got, want, { sources: 1 }), [], `${spec.name}: the rows equal the ground truth`)
  }
  t.ok(truthOf(truth, 'device-hopping').some(r => r.revision > 0), 'the run has late revisions (the rows hold the highest)')
  t.same(compareResults(run.specs[0], await rows(pg, 'room_results', 'room-temp'), truthOf(truth, 'room-temp'), { sources: 1 }), [], 'a sink of one pipeline')
  t.equal((await pg.query('SELECT count(*)::int AS n FROM room_results WHERE pipeline <> $1', ['room-temp'])).rows[0].n, 0, 'and only of that one')
  t.equal(await sinkMetric(run.edge.http, 'errors_total', 'warehouse'), 0)
  const logs = [...run.edge.stdout, ...run.edge.stderr].join('\n')
  t.match(logs, /sink\.unavailable/, 'the outage is logged')
  t.notMatch(logs, /not-a-real-secret-4711/, 'the password is never logged')

  // A restart replays nothing twice: the rows stay one per window.
  await run.edge.stop()
  await run.restart()
  const rowsNow = (await pg.query('SELECT count(*)::int AS n FROM fogmesh_results')).rows[0].n as number
  t.equal(rowsNow, total, 'no duplicates after a restart')
})

t.test('a row PostgreSQL refuses is set aside and counted; SQL in a key stays data', async t => {
  const pg = await startPostgres()
  t.teardown(() => pg.stop())
  const dir = await tmpDir()
  t.teardown(() => dir.cleanup())
  const metrics = new Metrics()
  const sinks = new Sinks(parseSinks([{ name: 'w', type: 'postgres', url: pg.url }]), { dataDir: dir.path, log: silentLogger, metrics })
  t.teardown(() => sinks.stop())
  sinks.start()
  const at = Date.UTC(2026, 0, 1)
  const result = (key: string, revision = 0, n = 1): WindowResult =>
    ({ pipeline: 'p', key, start: at, end: at + 10_000, final: true, revision, sources: 1, values: { n, note: "it's" } })
  const evil = "x'); DROP TABLE fogmesh_results; --"
  sinks.append([result('a'), result(evil), result('nul\u0000key'), result('b'), result('a', 2, 5), result('a', 1, 3)])
  await waitFor(() => sinks.status()[0].pending === 0 && sinks.status()[0].delivered + sinks.status()[0].errors === 6, { timeoutMs: 20_000, message: 'the queue to drain' })
  t.equal(sinks.status()[0].errors, 1, 'the key with a NUL character is refused, and counted')
  const got = (await pg.query<{ key: string, revision: number, values: { n: number } }>('SELECT key, revision, "values" FROM fogmesh_results ORDER BY key')).rows
  t.same(got.map(r => [r.key, r.revision, r.values.n]), [['a', 2, 5], ['b', 0, 1], [evil, 0, 1]], 'the highest revision wins; the SQL is a key like any other')
  t.match(await metrics.text(), /fogmesh_sink_errors_total\{sink="w"\} 1/)
  t.match(await metrics.text(), /fogmesh_sink_delivered_total\{sink="w"\} 5/)
})

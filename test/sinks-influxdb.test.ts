/**
 * The influxdb sink of the cloud, against a real InfluxDB 1.x started by the test: every final window
 * of a run (edge fed by the simulator, straight to the cloud) is one point (measurement = pipeline,
 * tag key, values and revision as fields, time = window start), equal to the ground truth, also when
 * InfluxDB was down while the windows were finalized (the cloud catches up; a repeat overwrites the
 * point, so there is one per window); a point InfluxDB refuses (a field type conflict) is set aside
 * and counted, the others go through; names with spaces, commas and equals signs are escaped.
 */
import t from 'tap'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { silentLogger } from '../server/shell/log.ts'
import { Metrics } from '../server/shell/metrics.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { Sinks } from '../server/sinks/delivery.ts'
import { parseSinks } from '../server/sinks/index.ts'
import type { WindowResult as TruthResult } from '../simulators/truth.ts'
import type { ServedResult } from './helpers/ground-truth.ts'
import { startInflux } from './helpers/influxdb.ts'
import type { Influx } from './helpers/influxdb.ts'
import { tmpDir, waitFor } from './helpers/process.ts'
import { compareTier, drained, feed, servesTruth, sinkMetric, startEdgeWithSinks, startFogWithSinks, truthOf } from './helpers/sinks.ts'

/** The points of a pipeline as results; the window end (not stored) from the truth's window with that key and start. */
async function points (influx: Influx, db: string, spec: PipelineSpec, truth: TruthResult[]): Promise<ServedResult[]> {
  const res = await influx.query(`SELECT * FROM "${spec.name}" GROUP BY "key"`, db)
  if (res.results[0].error !== undefined) throw new Error(res.results[0].error)
  const ends = new Map(truth.map(w => [`${w.key}@${w.start}`, w.end]))
  const out: ServedResult[] = []
  for (const series of res.results[0].series ?? []) {
    for (const row of series.values) {
      const fields = Object.fromEntries(series.columns.map((c, i) => [c, row[i]]))
      const start = new Date(fields.time as number).toISOString()
      const key = series.tags?.key ?? ''
      out.push({
        key,
        start,
        end: ends.get(`${key}@${start}`) ?? 'not in the truth',
        final: true,
        revision: fields.revision as number,
        sources: 1,
        values: Object.fromEntries(spec.select.map(s => [s.name, (fields[s.name] ?? null) as number | null]))
      })
    }
  }
  return out
}

t.test('the cloud writes every final window as one point, also after InfluxDB was down', async t => {
  const influx = await startInflux()
  t.teardown(() => influx.stop())
  await influx.query('CREATE DATABASE plant')
  await influx.pause()
  const cloud = await startFogWithSinks(t, [{ name: 'tsdb', type: 'influxdb', url: influx.url, database: 'plant', 'retry-max': '2s' }], 'cloud')
  const run = await startEdgeWithSinks(t, [], {}, ['--cloud', cloud.http])
  const truth = await feed(t, run)
  await servesTruth(t, cloud.http, run.specs, truth)
  t.ok(await sinkMetric(cloud.http, 'pending', 'tsdb') > 0, 'final windows wait while InfluxDB is down')

  await influx.resume()
  const total = run.specs.reduce((n, s) => n + truthOf(truth, s.name).length, 0)
  await drained(cloud.http, 'tsdb', total)
  for (const spec of run.specs) {
    const want = truthOf(truth, spec.name)
    const got = await points(influx, 'plant', spec, want)
    t.equal(got.length, want.length, `${spec.name}: one point per window`)
    t.same(compareTier(spec, got, want), [], `${spec.name}: the points equal the ground truth`)
  }
  t.equal(await sinkMetric(cloud.http, 'errors_total', 'tsdb'), 0)
})

t.test('a point InfluxDB refuses is set aside and counted; names are escaped', async t => {
  const influx = await startInflux()
  t.teardown(() => influx.stop())
  await influx.query('CREATE DATABASE plant')
  const at = Date.UTC(2026, 0, 1)
  // `n` is a string in this measurement already: a float `n` is a field type conflict (400).
  const seeded = await influx.write('plant', `p,key=seed n="text" ${at - 60_000}`)
  t.equal(seeded.status, 204)
  const dir = await tmpDir()
  t.teardown(() => dir.cleanup())
  const metrics = new Metrics()
  const sinks = new Sinks(parseSinks([{ name: 'tsdb', type: 'influxdb', url: influx.url, database: 'plant' }]), { dataDir: dir.path, log: silentLogger, metrics })
  t.teardown(() => sinks.stop())
  sinks.start()
  const result = (pipeline: string, key: string, values: WindowResult['values'], revision = 0): WindowResult =>
    ({ pipeline, key, start: at, end: at + 10_000, final: true, revision, sources: 1, values })
  sinks.append([
    result('p', 'a', { n: 1 }),
    result('q', 'b', { n: 2 }),
    result('room temp', 'r 1,x=y', { 'avg temp': 21.5, label: 'say "hi"' }),
    result('q', 'b', { n: 5 }, 1)
  ])
  await waitFor(() => sinks.status()[0].pending === 0 && sinks.status()[0].delivered + sinks.status()[0].errors === 4, { timeoutMs: 20_000, message: 'the queue to drain' })
  t.equal(sinks.status()[0].errors, 1, 'the conflicting point is set aside, and counted')
  t.match(await metrics.text(), /fogmesh_sink_errors_total\{sink="tsdb"\} 1/)
  const q = await influx.query('SELECT "n", "revision" FROM "q"', 'plant')
  t.same(q.results[0].series?.[0].values, [[at, 5, 1]], 'the later revision overwrote the point')
  const spaced = await influx.query('SELECT * FROM "room temp" GROUP BY "key"', 'plant')
  const series = spaced.results[0].series?.[0]
  t.same(series?.tags, { key: 'r 1,x=y' })
  t.same(series?.columns, ['time', 'avg temp', 'label', 'revision'])
  t.same(series?.values, [[at, 21.5, 'say "hi"', 0]])
  const p = await influx.query('SELECT count("n") FROM "p" WHERE "key" = \'a\'', 'plant')
  t.equal(p.results[0].series, undefined, 'the refused point is not there')
})

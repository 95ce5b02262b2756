/**
 * The webhook sink against a recording HTTP server: every closed window of an edge fed by the
 * simulator is POSTed with its Idempotency-Key, equal to the ground truth (the highest revision of each
 * window), also when the receiver answered 503 for a while; a 4xx sets the result aside and counts it;
 * 429 and 5xx are retried.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { silentLogger } from '../server/shell/log.ts'
import { Metrics } from '../server/shell/metrics.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { Sinks } from '../server/sinks/delivery.ts'
import { parseSinks } from '../server/sinks/index.ts'
import type { ServedResult } from './helpers/ground-truth.ts'
import { tmpDir, waitFor } from './helpers/process.ts'
import { startRecorder } from './helpers/recorder.ts'
import { compareResults, drained, feed, latest, sinkMetric, startEdgeWithSinks, truthOf } from './helpers/sinks.ts'

t.test('every closed window is POSTed, also after the receiver was down', async t => {
  const hook = await startRecorder()
  t.teardown(() => hook.close())
  hook.answer = () => 503
  const dir = await tmpDir()
  t.teardown(() => dir.cleanup())
  const tokenFile = join(dir.path, 'hook-token')
  await writeFile(tokenFile, 'hook-secret-0123456789\n', { mode: 0o600 })
  const run = await startEdgeWithSinks(t, [{ name: 'hook', type: 'webhook', url: hook.url, 'token-file': tokenFile, 'retry-max': '2s' }])
  const truth = await feed(t, run)
  t.ok(await sinkMetric(run.edge.http, 'pending', 'hook') > 0, 'results wait while the receiver answers 503')
  t.equal(hook.accepted.length, 0)

  hook.answer = () => 204
  const total = run.specs.reduce((n, s) => n + truthOf(truth, s.name).length, 0)
  await drained(run.edge.http, 'hook', total)
  const bodies = hook.accepted.map(r => ({ r, body: JSON.parse(r.body) as ServedResult & { pipeline: string } }))
  for (const { r, body } of bodies) {
    if (r.headers['idempotency-key'] !== `${encodeURIComponent(body.pipeline)}/${encodeURIComponent(body.key)}/${body.start}/${body.revision}`) {
      t.fail(`idempotency key ${String(r.headers['idempotency-key'])} of ${r.body}`)
    }
  }
  t.ok(hook.accepted.every(r => r.headers.authorization === 'Bearer hook-secret-0123456789' && r.headers['content-type'] === 'application/json'), 'JSON, with the token from the file')
  for (const spec of run.specs) {
    const got = latest(bodies.filter(b => b.body.pipeline === spec.name).map(b => b.body))
    t.same(compareResults(spec, got, truthOf(truth, spec.name), { sources: 1 }), [], `${spec.name}: the POSTed results equal the ground truth`)
  }
  t.equal(await sinkMetric(run.edge.http, 'errors_total', 'hook'), 0)
  t.notMatch(run.edge.stderr.join('\n'), /hook-secret/, 'the token is never logged')
})

t.test('a 4xx sets the result aside and counts it; 429 and 5xx are retried', async t => {
  const hook = await startRecorder()
  t.teardown(() => hook.close())
  const dir = await tmpDir()
  t.teardown(() => dir.cleanup())
  let throttled = 0
  hook.answer = r => {
    const key = (JSON.parse(r.body) as { key: string }).key
    if (key === 'bad') return 422
    if (key === 'slow' && throttled++ < 2) return throttled === 1 ? 429 : 500
    return 200
  }
  const metrics = new Metrics()
  const sinks = new Sinks(parseSinks([{ name: 'hook', type: 'webhook', url: hook.url }]), { dataDir: dir.path, log: silentLogger, metrics })
  t.teardown(() => sinks.stop())
  sinks.start()
  const at = Date.UTC(2026, 0, 1)
  const result = (key: string): WindowResult => ({ pipeline: 'p', key, start: at, end: at + 1000, final: true, revision: 0, sources: 1, values: { n: 1 } })
  sinks.append([result('a'), result('bad'), result('slow'), result('b')])
  await waitFor(() => sinks.status()[0].pending === 0, { timeoutMs: 20_000, message: 'the queue to drain' })
  t.same(hook.accepted.map(r => (JSON.parse(r.body) as { key: string }).key), ['a', 'slow', 'b'], 'the others go through, in order')
  t.equal(hook.requests.filter(r => r.body.includes('"bad"')).length, 1, 'a 4xx is not retried')
  t.match(await metrics.text(), /fogmesh_sink_errors_total\{sink="hook"\} 1/)
  t.match(await metrics.text(), /fogmesh_sink_delivered_total\{sink="hook"\} 3/)
  t.match(await metrics.text(), /fogmesh_sink_retries_total\{sink="hook"\} 2/)
})

t.test('a full queue drops the oldest results and counts them', async t => {
  const hook = await startRecorder()
  t.teardown(() => hook.close())
  hook.answer = () => 503
  const dir = await tmpDir()
  t.teardown(() => dir.cleanup())
  const metrics = new Metrics()
  const sinks = new Sinks(parseSinks([{ name: 'hook', type: 'webhook', url: hook.url, 'max-pending': '4kib', 'retry-max': '300ms' }]), { dataDir: dir.path, log: silentLogger, metrics })
  t.teardown(() => sinks.stop())
  sinks.start()
  const at = Date.UTC(2026, 0, 1)
  const results: WindowResult[] = Array.from({ length: 100 }, (_, i) => ({ pipeline: 'p', key: `k${i}`, start: at, end: at + 1000, final: true, revision: 0, sources: 1, values: { n: i } }))
  for (const r of results) sinks.append([r])
  const { pending, dropped } = sinks.status()[0]
  t.ok(dropped > 0 && pending + dropped === 100, `bounded: ${pending} kept, ${dropped} dropped`)
  t.match(await metrics.text(), new RegExp(`fogmesh_sink_dropped_total\\{sink="hook"\\} ${dropped}`))
  hook.answer = () => 204
  await waitFor(() => sinks.status()[0].pending === 0, { timeoutMs: 20_000, message: 'the queue to drain' })
  const keys = hook.accepted.map(r => (JSON.parse(r.body) as { key: string }).key)
  t.same(keys, results.slice(100 - pending).map(r => r.key), 'the newest are kept and delivered, in order')
})

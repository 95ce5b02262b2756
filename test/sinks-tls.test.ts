/**
 * Sinks over TLS trust the node's --tls-ca: an https webhook, InfluxDB over https and an mqtts broker
 * whose certificates come from a site CA take results from a node that has that CA, and never from
 * one that does not (verification is never turned off: such a sink keeps its results and retries).
 * End to end, an edge started with --tls-ca delivers every closed window to an https webhook, equal to
 * the ground truth.
 */
import { readFile } from 'node:fs/promises'
import mqtt from 'mqtt'
import t from 'tap'
import type { Test } from 'tap'
import { silentLogger } from '../server/shell/log.ts'
import { Metrics } from '../server/shell/metrics.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { NodeSecurity } from '../server/shell/security.ts'
import { Sinks } from '../server/sinks/delivery.ts'
import { parseSinks } from '../server/sinks/index.ts'
import { linePoint } from '../server/sinks/influxdb.ts'
import { resultBody } from '../server/sinks/webhook.ts'
import { makeSite } from './helpers/certs.ts'
import type { Site } from './helpers/certs.ts'
import type { ServedResult } from './helpers/ground-truth.ts'
import { startMosquitto } from './helpers/mosquitto.ts'
import { freePort, tmpDir, waitFor } from './helpers/process.ts'
import { startRecorder } from './helpers/recorder.ts'
import type { Recorder } from './helpers/recorder.ts'
import { compareResults, drained, feed, latest, startEdgeWithSinks, truthOf } from './helpers/sinks.ts'

t.setTimeout(180_000)

const at = Date.UTC(2026, 0, 1)
const results: WindowResult[] = ['a', 'b', 'c'].map((key, i) => ({ pipeline: 'p', key, start: at + i * 1000, end: at + (i + 1) * 1000, final: true, revision: 0, sources: 1, values: { n: i + 1, mean: 20.5 } }))

let site: Site
let hook: Recorder
let caFile: string

t.before(async () => {
  const dir = await tmpDir()
  t.teardown(() => dir.cleanup())
  site = await makeSite(dir.path)
  caFile = site.caCert
  const server = await site.node('cloud', 'hooks')
  hook = await startRecorder({ tls: { cert: await readFile(server.cert), key: await readFile(server.key) } })
  t.teardown(() => hook.close())
})

/** Sinks over `configs`, trusting the site CA or (security undefined) only the system's CAs. */
async function sinksWith (t: Test, configs: unknown[], trustSite: boolean): Promise<{ sinks: Sinks, metrics: Metrics }> {
  const dir = await tmpDir()
  t.teardown(() => dir.cleanup())
  const security = trustSite ? new NodeSecurity({ tlsCa: caFile }) : undefined
  const metrics = new Metrics()
  const sinks = new Sinks(parseSinks(configs), { dataDir: dir.path, log: silentLogger, metrics, security })
  t.teardown(async () => {
    await sinks.stop()
    security?.close()
  })
  sinks.start()
  return { sinks, metrics }
}

/** Waits until the only sink has retried `n` times, and checks nothing was delivered meanwhile. */
async function refused (t: Test, sinks: Sinks, metrics: Metrics, name: string): Promise<void> {
  await waitFor(async () => new RegExp(`fogmesh_sink_retries_total\\{sink="${name}"\\} [2-9]`).test(await metrics.text()), { timeoutMs: 20_000, message: `${name}: two failed deliveries` })
  const [status] = sinks.status()
  t.equal(status.delivered, 0, `${name}: nothing delivered to a server the node cannot verify`)
  t.equal(status.pending, results.length, `${name}: the results are kept, to retry`)
}

t.test('an https webhook with a site certificate: delivered with the node\'s --tls-ca, refused without', async t => {
  const before = hook.requests.length
  const untrusting = await sinksWith(t, [{ name: 'blind', type: 'webhook', url: hook.url, 'retry-max': '300ms' }], false)
  untrusting.sinks.append(results)
  await refused(t, untrusting.sinks, untrusting.metrics, 'blind')
  t.equal(hook.requests.length, before, 'no request got through the TLS handshake')

  const { sinks } = await sinksWith(t, [{ name: 'hook', type: 'webhook', url: hook.url }], true)
  sinks.append(results)
  await waitFor(() => sinks.status()[0].pending === 0, { timeoutMs: 20_000, message: 'the webhook queue to drain' })
  const got = hook.accepted.slice(before)
  t.same(got.map(r => r.body), results.map(resultBody), 'every result POSTed over https, in order')
  t.ok(got.every(r => r.url === '/hook' && r.headers['idempotency-key'] !== undefined), 'to the hook, with its Idempotency-Key')
})

t.test('InfluxDB over https with a site certificate: the points are written with the node\'s --tls-ca', async t => {
  const before = hook.requests.length
  const config = { type: 'influxdb', url: hook.url.replace(/\/hook$/, ''), database: 'plant', 'retry-max': '300ms' }
  const untrusting = await sinksWith(t, [{ ...config, name: 'blind' }], false)
  untrusting.sinks.append(results)
  await refused(t, untrusting.sinks, untrusting.metrics, 'blind')
  t.equal(hook.requests.length, before, 'no request got through the TLS handshake')

  const { sinks } = await sinksWith(t, [{ ...config, name: 'tsdb' }], true)
  sinks.append(results)
  await waitFor(() => sinks.status()[0].pending === 0, { timeoutMs: 20_000, message: 'the influxdb queue to drain' })
  const writes = hook.accepted.slice(before)
  t.same(writes.map(r => r.url), ['/write?db=plant&precision=ms'], 'one write, to the v1 endpoint')
  t.equal(writes[0].body, results.map(linePoint).join('\n'), 'one point per result')
})

t.test('an mqtts broker with a site certificate: results are published with the node\'s --tls-ca', async t => {
  const server = await site.node('cloud', 'broker')
  const tlsPort = await freePort()
  const broker = await startMosquitto({ extraConfig: [`listener ${tlsPort} 127.0.0.1`, `certfile ${server.cert}`, `keyfile ${server.key}`] })
  t.teardown(() => broker.stop())
  const got: Array<{ topic: string, body: string }> = []
  const watcher = await mqtt.connectAsync(broker.url, { clientId: 'sinks-tls-watcher' })
  t.teardown(() => watcher.endAsync(true))
  watcher.on('message', (topic, payload) => got.push({ topic, body: payload.toString('utf8') }))
  await watcher.subscribeAsync('results/#', { qos: 1 })
  const url = `mqtts://127.0.0.1:${tlsPort}`

  const untrusting = await sinksWith(t, [{ name: 'blind', type: 'mqtt', url, 'retry-max': '300ms', timeout: '1s' }], false)
  untrusting.sinks.append(results)
  await refused(t, untrusting.sinks, untrusting.metrics, 'blind')
  t.equal(got.length, 0, 'nothing published through an unverified connection')

  const { sinks } = await sinksWith(t, [{ name: 'bus', type: 'mqtt', url }], true)
  sinks.append(results)
  await waitFor(() => sinks.status()[0].pending === 0 && got.length >= results.length, { timeoutMs: 20_000, message: 'the mqtt results to arrive' })
  t.same(got, results.map(r => ({ topic: `results/p/${r.key}`, body: resultBody(r) })), 'every result, on its topic')
})

t.test('an edge with --tls-ca delivers every closed window to an https webhook', async t => {
  const before = hook.accepted.length
  const run = await startEdgeWithSinks(t, [{ name: 'hook', type: 'webhook', url: hook.url, 'retry-max': '2s' }], {}, ['--tls-ca', caFile])
  const truth = await feed(t, run)
  const total = run.specs.reduce((n, s) => n + truthOf(truth, s.name).length, 0)
  await drained(run.edge.http, 'hook', total)
  const bodies = hook.accepted.slice(before).map(r => JSON.parse(r.body) as ServedResult & { pipeline: string })
  for (const spec of run.specs) {
    t.same(compareResults(spec, latest(bodies.filter(b => b.pipeline === spec.name)), truthOf(truth, spec.name), { sources: 1 }), [], `${spec.name}: the results POSTed over https equal the ground truth`)
  }
})

/**
 * An edge reading from an existing broker over TLS (`--mqtt-url mqtts://…`), against a real Mosquitto
 * with a certificate of a site CA: with `--tls-ca` of that site the edge subscribes and serves the exact
 * aggregates of the readings published; without it (the system's CAs) or with another site's CA it
 * refuses the broker, says why (`mqtt.error` naming the certificate problem), takes nothing and keeps
 * running. A broker that requires client certificates takes the edge's `--tls-cert` (it names the edge
 * by it) and refuses an edge without one, or with one of another site.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { getCACertificates, setDefaultCACertificates } from 'node:tls'
import mqtt from 'mqtt'
import t from 'tap'
import type { Test } from 'tap'
import { makeSite } from './helpers/certs.ts'
import { fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import { startMosquitto } from './helpers/mosquitto.ts'
import type { Mosquitto } from './helpers/mosquitto.ts'
import { startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'
import { beforeTail, TAIL_TOPIC, tailOf, tailPayload } from './helpers/tail.ts'

t.setTimeout(150_000)
const SUBTEST = { timeout: 40_000 }

const START = Date.UTC(2026, 0, 1)
const TAIL = tailOf(START)
const PIPELINE = 'room-temp'

const dir = await tmpDir('fogmesh-mqtts-url-')
t.teardown(() => dir.cleanup())
const site = await makeSite(join(dir.path, 'site'))
const other = await makeSite(join(dir.path, 'other'))
const brokerFiles = await site.node('cloud', 'broker')
const sensorFiles = await site.node('edge', 'sensor-1')
const siteCa = await readFile(site.caCert)
// An edge with --tls-cert serves https: this process reads its API trusting both sites' CAs.
setDefaultCACertificates([...getCACertificates('default'), siteCa.toString('utf8'), await readFile(other.caCert, 'utf8')])

// Only the tail closes windows (idle far beyond the test), so the results do not depend on timing.
const pipelines = join(dir.path, 'pipelines.yaml')
await writeFile(pipelines, `pipelines:
  - name: ${PIPELINE}
    from: sensors/+room/temperature
    timestamp: ts
    key: room
    window: { tumbling: 10s }
    idle: 1h
    select:
      n: count()
      total: sum(value)
      low: min(value)
      high: max(value)
      mean: avg(value)
`)

const READINGS = [
  { room: 'r1', value: 20, at: 1_000 },
  { room: 'r2', value: 18, at: 2_000 },
  { room: 'r1', value: 22.5, at: 4_000 },
  { room: 'r2', value: 19.5, at: 9_000 },
  { room: 'r1', value: 30, at: 12_000 }
]

/** The closed windows of READINGS, worked out by hand, sorted by start then key as the API serves them. */
const EXPECTED = [
  { key: 'r1', from: 0, values: { n: 2, total: 42.5, low: 20, high: 22.5, mean: 21.25 } },
  { key: 'r2', from: 0, values: { n: 2, total: 37.5, low: 18, high: 19.5, mean: 18.75 } },
  { key: 'r1', from: 10_000, values: { n: 1, total: 30, low: 30, high: 30, mean: 30 } }
].map(w => ({
  key: w.key,
  start: new Date(START + w.from).toISOString(),
  end: new Date(START + w.from + 10_000).toISOString(),
  final: true,
  revision: 0,
  sources: 1,
  values: w.values
}))

/** Mosquitto with one TLS listener on the site's broker certificate; `requireCertificate`: clients must present one of the site. */
async function startBroker (t: Test, requireCertificate = false): Promise<Mosquitto> {
  const broker = await startMosquitto({
    tls: { cert: brokerFiles.cert, key: brokerFiles.key, ca: site.caCert, requireCertificate },
    // The broker then names each client by its certificate's CN, in its log.
    extraConfig: requireCertificate ? ['use_identity_as_username true'] : []
  })
  t.teardown(() => broker.stop())
  t.match(broker.url, /^mqtts:\/\/127\.0\.0\.1:\d+$/)
  return broker
}

async function startEdge (t: Test, broker: Mosquitto, extra: string[]): Promise<RunningProcess> {
  const data = await tmpDir('fogmesh-mqtts-edge-')
  t.teardown(() => data.cleanup())
  const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', pipelines, '--http-port', '0', '--data-dir', join(data.path, 'data'), '--mqtt-url', broker.url, ...extra])
  t.teardown(async () => {
    if (edge.proc.exitCode === null) await edge.stop().catch(() => edge.kill('SIGKILL'))
  })
  return edge
}

/** A sensor that trusts the site CA (and presents a site certificate) publishes READINGS, then the tail. */
async function publishReadings (t: Test, broker: Mosquitto): Promise<void> {
  const sensor = await mqtt.connectAsync(broker.url, { clientId: 'sensor-1', ca: siteCa, cert: await readFile(sensorFiles.cert), key: await readFile(sensorFiles.key) })
  t.teardown(() => sensor.endAsync(true))
  for (const r of READINGS) {
    await sensor.publishAsync(`sensors/${r.room}/temperature`, JSON.stringify({ device: 'd1', room: r.room, value: r.value, ts: START + r.at }), { qos: 1 })
  }
  await sensor.publishAsync(TAIL_TOPIC, tailPayload(TAIL), { qos: 1 })
}

/** The edge connected over TLS, took every reading and serves exactly the expected windows. */
async function expectExact (t: Test, edge: RunningProcess): Promise<void> {
  await waitFor(async () => beforeTail(await fetchResults(edge.http, PIPELINE), TAIL).filter(r => r.final).length >= EXPECTED.length,
    { timeoutMs: 15_000, message: `${EXPECTED.length} closed windows` })
  t.same(beforeTail(await fetchResults(edge.http, PIPELINE), TAIL), EXPECTED, 'the closed windows of the readings, exactly')
  const accepted = await fetchMetric(edge.http, 'fogmesh_readings_total')
  t.equal(accepted.get(`{pipeline="${PIPELINE}"}`), READINGS.length + 1, 'every reading (and the tail) accepted once')
}

/** Handshakes Mosquitto refused so far (its log has one of these lines per refused connection). */
async function refusedHandshakes (broker: Mosquitto): Promise<number> {
  return (await broker.log()).match(/OpenSSL Error|Client connection from \S+ failed/g)?.length ?? 0
}

/**
 * The edge refused the broker (or the broker refused the edge): an `mqtt.error` line whose reason
 * matches `reason`, never connected, took none of the readings published meanwhile, and still runs.
 */
async function expectRefused (t: Test, edge: RunningProcess, broker: Mosquitto, reason: RegExp): Promise<void> {
  const [line] = await edge.waitForLine(/^{.*"event":"mqtt\.error".*}$/)
  const event = JSON.parse(line) as { level: string, url: string, reason: string }
  t.equal(event.level, 'warn')
  t.equal(event.url, broker.url)
  t.match(event.reason, reason, `the reason says why: ${event.reason.trim()}`)
  t.ok(edge.stderr.some(l => l.includes('"event":"mqtt.unreachable"')), 'mqtt.unreachable: the edge serves and keeps retrying')

  const before = await refusedHandshakes(broker)
  await publishReadings(t, broker)
  await waitFor(async () => await refusedHandshakes(broker) >= before + 2,
    { timeoutMs: 10_000, message: 'two more refused attempts after the readings were published' })

  t.notOk(edge.stderr.some(l => l.includes('"event":"mqtt.connected"')), 'the edge never logged mqtt.connected')
  t.notMatch(await broker.log(), /New client connected .* as fogmesh-e1/, 'the broker never had the edge as a client')
  t.equal((await fetchMetric(edge.http, 'fogmesh_mqtt_messages_total')).get('') ?? 0, 0, 'no MQTT message taken')
  t.same(await fetchResults(edge.http, PIPELINE), [], 'no window')
  t.equal(edge.proc.exitCode, null, 'the edge still runs')
  t.equal(await edge.stop(), 0, 'and stops cleanly')
}

t.test('--tls-ca of the site: the edge subscribes over TLS and serves the exact aggregates', SUBTEST, async t => {
  const broker = await startBroker(t)
  const edge = await startEdge(t, broker, ['--tls-ca', site.caCert])
  t.match(edge.stdout[0], /^ready edge e1 http=http:\/\/127\.0\.0\.1:\d+ mqtt=mqtts:\/\/127\.0\.0\.1:\d+$/)
  await edge.waitForLine(/"event":"mqtt\.connected"/)
  await publishReadings(t, broker)
  await expectExact(t, edge)
  t.equal(await edge.stop(), 0)
})

t.test('without --tls-ca (the system\'s CAs) the edge refuses the broker, says why and takes nothing', SUBTEST, async t => {
  const broker = await startBroker(t)
  const edge = await startEdge(t, broker, [])
  await expectRefused(t, edge, broker, /certificate/)
})

t.test('with another site\'s CA the edge refuses the broker, says why and takes nothing', SUBTEST, async t => {
  const broker = await startBroker(t)
  const edge = await startEdge(t, broker, ['--tls-ca', other.caCert])
  await expectRefused(t, edge, broker, /certificate/)
})

t.test('a broker that requires client certificates takes the edge\'s --tls-cert', SUBTEST, async t => {
  const broker = await startBroker(t, true)
  const files = await site.node('edge', 'e1')
  const edge = await startEdge(t, broker, ['--tls-ca', site.caCert, '--tls-cert', files.cert, '--tls-key', files.key])
  await edge.waitForLine(/"event":"mqtt\.connected"/)
  await waitFor(async () => /New client connected from \S+ as fogmesh-e1 \(.*u'e1'\)/.test(await broker.log()),
    { timeoutMs: 5_000, message: 'the broker to log the edge by its certificate' })
  t.pass('the broker knows the edge by its certificate (CN e1)')
  await publishReadings(t, broker)
  await expectExact(t, edge)
  t.equal(await edge.stop(), 0)
})

t.test('a broker that requires client certificates refuses an edge without one', SUBTEST, async t => {
  const broker = await startBroker(t, true)
  const edge = await startEdge(t, broker, ['--tls-ca', site.caCert])
  await expectRefused(t, edge, broker, /certificate required/)
})

t.test('a broker that requires client certificates refuses an edge with another site\'s', SUBTEST, async t => {
  const broker = await startBroker(t, true)
  const files = await other.node('edge', 'e1')
  const edge = await startEdge(t, broker, ['--tls-ca', site.caCert, '--tls-cert', files.cert, '--tls-key', files.key])
  await expectRefused(t, edge, broker, /unknown ca/)
})

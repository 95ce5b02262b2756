/**
 * The edge agent as users run it: a real process, readings over real MQTT (the embedded broker and
 * Mosquitto), results over HTTP, checked against the simulator's ground truth.
 */
import { execFile } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import mqtt from 'mqtt'
import t from 'tap'
import type { Test } from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { runSimulator } from '../simulators/sim.ts'
import type { SimInput } from '../simulators/options.ts'
import type { TruthFile } from '../simulators/truth.ts'
import { compareResults, fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import { startMosquitto } from './helpers/mosquitto.ts'
import { fetchJson, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'

const run = promisify(execFile)
const ALL_WINDOWS = new URL('fixtures/all-windows.yaml', import.meta.url).pathname
const START = Date.UTC(2026, 0, 1)

async function startEdge (t: Test, pipelines: string, extra: string[] = []): Promise<RunningProcess> {
  const dir = await tmpDir('fogmesh-edge-')
  const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', pipelines, '--http-port', '0', '--data-dir', join(dir.path, 'data'), ...extra])
  t.teardown(async () => {
    if (edge.proc.exitCode === null) await edge.stop().catch(() => edge.kill('SIGKILL'))
    await dir.cleanup()
  })
  return edge
}

/**
 * Waits until the agent has emitted every window the truth expects (the wall clock closes the last ones after the stream ends), then
 * returns every difference between served results and the truth, pipeline by pipeline.
 */
async function checkAgainstTruth (base: string, specs: PipelineSpec[], truth: TruthFile): Promise<string[]> {
  const edge = Object.keys(truth.pipelines[specs[0].name].edges)[0]
  const finals = async (name: string) => (await fetchResults(base, name)).filter(r => r.final).length
  for (const spec of specs) {
    const want = truth.pipelines[spec.name].edges[edge].results.length
    await waitFor(async () => (await finals(spec.name)) >= want, { timeoutMs: 35_000, message: `${spec.name}: ${want} final windows` })
  }
  const problems: string[] = []
  for (const spec of specs) {
    problems.push(...compareResults(spec, await fetchResults(base, spec.name), truth.pipelines[spec.name].edges[edge].results, { sources: 1 }))
  }
  return problems
}

/** Compares the agent's counters with the truth: accepted, late and rejections by reason. */
async function checkCounters (t: Test, base: string, specs: PipelineSpec[], truth: TruthFile): Promise<void> {
  const accepted = await fetchMetric(base, 'fogmesh_readings_total')
  const late = await fetchMetric(base, 'fogmesh_readings_late_total')
  const rejected = await fetchMetric(base, 'fogmesh_pipeline_readings_rejected_total')
  for (const spec of specs) {
    const want = Object.values(truth.pipelines[spec.name].edges)[0]
    t.equal(accepted.get(`{pipeline="${spec.name}"}`), want.accepted, `${spec.name}: accepted readings`)
    t.equal(late.get(`{pipeline="${spec.name}"}`), want.late, `${spec.name}: late readings`)
    const got: Record<string, number> = {}
    for (const [labels, n] of rejected) {
      const m = /pipeline="([^"]+)",reason="([^"]+)"/.exec(labels)
      if (m !== null && m[1] === spec.name && n > 0) got[m[2]] = n
    }
    t.same(got, want.rejected, `${spec.name}: rejections by reason`)
  }
}

const RUN: SimInput = {
  start: START,
  devices: 12,
  rooms: 3,
  rate: 5,
  duration: 60_000,
  seed: 7,
  jitter: 1_500, // within every pipeline's 2s lateness: out of order, never late
  lateShare: 0.02,
  lateBy: 30_000,
  duplicateShare: 0.01,
  malformedShare: 0.02
}

t.test('embedded broker: every window kind matches the ground truth', async t => {
  const specs = await loadPipelinesFile(ALL_WINDOWS)
  const edge = await startEdge(t, ALL_WINDOWS, ['--mqtt-port', '0'])
  t.match(edge.stdout[0], /^ready edge e1 http=http:\/\/127\.0\.0\.1:\d+ mqtt=mqtt:\/\/127\.0\.0\.1:\d+$/)

  // A local action: alerts for rooms whose high passed 25 degrees.
  const alerts: Array<{ topic: string, body: { key: string, values: { high: number } } }> = []
  const watcher = await mqtt.connectAsync(edge.mqtt!)
  t.teardown(() => watcher.endAsync())
  await watcher.subscribeAsync('alerts/#', { qos: 0 })
  watcher.on('message', (topic, payload) => alerts.push({ topic, body: JSON.parse(payload.toString()) }))

  const sim = await runSimulator({ ...RUN, mqtt: [edge.mqtt!], pipelines: specs })
  const truth = sim.truth!
  t.ok(sim.stats.late > 0 && Object.keys(sim.stats.malformed).length > 0 && sim.stats.duplicates > 0, 'the run has late, malformed and duplicate readings')

  t.same(await checkAgainstTruth(edge.http, specs, truth), [], 'served results equal the ground truth')
  await checkCounters(t, edge.http, specs, truth)

  const expectedAlerts = Object.values(truth.pipelines['room-temp'].edges)[0].results.filter(r => (r.values.high as number) > 25)
  t.ok(expectedAlerts.length > 0, 'the run has windows that raise alerts')
  await waitFor(() => alerts.length >= expectedAlerts.length, { timeoutMs: 5_000 })
  t.same(alerts.map(a => `${a.topic} ${a.body.values.high}`).sort(), expectedAlerts.map(r => `alerts/${r.key} ${String(r.values.high)}`).sort(), 'one alert per window with high > 25, on alerts/{room}')

  const health = await fetchJson(`${edge.http}/healthz`)
  t.same(health.body, { status: 'ok', role: 'edge', id: 'e1' })
  t.equal(await edge.stop(), 0, 'SIGTERM stops the agent cleanly')
})

t.test('an existing broker (Mosquitto): results match the ground truth, in every payload format', async t => {
  // Mosquitto drops QoS 1 messages beyond 1000 queued per client by default; an agent that falls
  // behind a burst must not lose readings, so give its session room (as a deployment should).
  const broker = await startMosquitto({ extraConfig: ['max_queued_messages 1000000'] })
  t.teardown(() => broker.stop())
  const dir = await tmpDir('fogmesh-formats-')
  t.teardown(() => dir.cleanup())
  // One pipeline per format, each on its own topic; SenML carries the device in its name.
  const file = join(dir.path, 'formats.yaml')
  await writeFile(file, `pipelines:
  - name: json-temp
    from: json/+room/temperature
    timestamp: ts
    key: room
    window: { tumbling: 5s }
    lateness: 2s
    idle: 1s
    select:
      n: count()
      mean: avg(value)
      p95: percentile(value, 0.95)
      devices: distinct(device)
  - name: cbor-temp
    from: cbor/+room/temperature
    format: cbor
    timestamp: ts
    key: room
    window: { hopping: 10s, every: 5s }
    lateness: 2s
    idle: 1s
    select: { n: count(), sd: stddev(value), first: first(value), last: last(value) }
  - name: senml-temp
    from: senml/+room/temperature
    format: senml
    timestamp: time
    key: name
    window: { tumbling: 5s }
    lateness: 2s
    idle: 1s
    select: { n: count(), low: min(value), high: max(value) }
`)
  const specs = await loadPipelinesFile(file)
  const edge = await startEdge(t, file, ['--mqtt-url', broker.url])
  t.match(edge.stdout[0], new RegExp(`^ready edge e1 http=\\S+ mqtt=${broker.url}$`))
  for (const [format, spec] of [['json', specs[0]], ['cbor', specs[1]], ['senml', specs[2]]] as const) {
    const sim = await runSimulator({ ...RUN, duration: 30_000, format, topic: `${format}/{room}/temperature`, mqtt: [broker.url], pipelines: [spec] })
    t.same(await checkAgainstTruth(edge.http, [spec], sim.truth!), [], `${format}: served results equal the ground truth`)
    await checkCounters(t, edge.http, [spec], sim.truth!)
  }
})

t.test('bad input: clear errors and counted rejections, the agent keeps running', async t => {
  const edge = await startEdge(t, ALL_WINDOWS, ['--mqtt-port', '0', '--max-payload', '4kib'])
  const client = await mqtt.connectAsync(edge.mqtt!)
  t.teardown(() => client.endAsync())
  const topic = 'sensors/r1/temperature'
  const ts = START
  const payloads: Array<[string | Buffer, string]> = [
    [Buffer.alloc(100_000, 7), 'too_large'],
    [Buffer.from([0xff, 0xfe, 0x00, 0x81]), 'parse'],
    ['{"device":"d1","value":21.5,"ts":', 'parse'],
    ['[1,2,3]', 'parse'],
    [JSON.stringify({ device: 'd1', value: 21.5 }), 'missing_field'],
    [JSON.stringify({ device: 'd1', value: '21.5', ts }), 'expression'], // where: value > -40.0 on a string
    [JSON.stringify({ device: 'd1', value: 21.5, ts: 'not a time' }), 'bad_timestamp'],
    [JSON.stringify({ device: 'd1', value: 21.5, ts: '3000-01-01T00:00:00Z' }), 'bad_timestamp'],
    ['{"device":"d1","value":1e999,"ts":1767225600000}', 'non_finite']
  ]
  for (const [payload] of payloads) await client.publishAsync(topic, payload, { qos: 1 })
  await client.publishAsync(topic, JSON.stringify({ device: 'd1', value: 21.5, ts }), { qos: 1 })

  const want: Record<string, number> = {}
  for (const [, reason] of payloads) want[reason] = (want[reason] ?? 0) + 1
  const rejected = await waitFor(async () => {
    const m = await fetchMetric(edge.http, 'fogmesh_readings_rejected_total')
    const got: Record<string, number> = {}
    for (const [labels, n] of m) if (n > 0) got[/reason="(\w+)"/.exec(labels)![1]] = n
    return Object.values(got).reduce((a, b) => a + b, 0) >= payloads.length ? got : undefined
  }, { timeoutMs: 5_000 })
  // room-temp, device-hopping, sessions and batches all see these topics. A message refused as a whole
  // (too large, or a payload that does not decode) counts once, before any pipeline looks at it; each
  // pipeline counts the readings it refused.
  const perPipeline = await fetchMetric(edge.http, 'fogmesh_pipeline_readings_rejected_total')
  const roomTemp: Record<string, number> = {}
  const expected: Record<string, number> = { too_large: 1, parse: 3, non_finite: 1 }
  for (const [labels, n] of perPipeline) {
    const m = /pipeline="([\w-]+)",reason="(\w+)"/.exec(labels)!
    if (m[1] === 'room-temp') roomTemp[m[2]] = n
    if (n > 0) expected[m[2]] = (expected[m[2]] ?? 0) + n
  }
  const total = await fetchMetric(edge.http, 'fogmesh_readings_rejected_total')
  const got: Record<string, number> = {}
  for (const [labels, n] of total) if (n > 0) got[/reason="(\w+)"/.exec(labels)![1]] = n
  t.same(got, expected, 'the total counts each message refused as a whole once, plus each reading a pipeline refused')
  t.same(roomTemp, { missing_field: 1, expression: 1, bad_timestamp: 2 }, 'room-temp counts the readings it refused by reason, not the messages refused as a whole')
  t.equal(rejected.too_large, want.too_large, 'the oversized payload is rejected once')
  t.equal((await fetchMetric(edge.http, 'fogmesh_readings_total')).get('{pipeline="room-temp"}'), 1, 'the good reading is accepted')

  // HTTP: bad parameters and unknown routes get a clear error with a stable code.
  const cases: Array<[string, number, string]> = [
    ['/v1/aggregates/room-temp?limit=0', 400, 'bad_parameter'],
    ['/v1/aggregates/room-temp?limit=10001', 400, 'bad_parameter'],
    ['/v1/aggregates/room-temp?limit=abc', 400, 'bad_parameter'],
    ['/v1/aggregates/room-temp?from=yesterday', 400, 'bad_parameter'],
    ['/v1/aggregates/room-temp?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z', 400, 'bad_parameter'],
    ['/v1/aggregates/room-temp?colour=red', 400, 'bad_parameter'],
    ['/v1/aggregates/no-such-pipeline', 404, 'unknown_pipeline'],
    ['/v1/nothing-here', 404, 'not_found'],
    ['/v1/aggregates/%E0%A4%A', 400, 'bad_request']
  ]
  for (const [path, status, code] of cases) {
    const res = await fetchJson(`${edge.http}${path}`)
    t.equal(res.status, status, `${path}: ${status}`)
    t.equal((res.body as { error: { code: string } }).error.code, code, `${path}: ${code}`)
  }
  const del = await fetchJson(`${edge.http}/v1/aggregates/room-temp`, { method: 'DELETE' })
  t.equal(del.status, 405)

  const ok = await fetchJson(`${edge.http}/v1/aggregates/room-temp?from=2026-01-01T00:00:00Z&to=${START + 10_000}&key=r1`)
  t.equal(ok.status, 200)
  t.same((ok.body as { results: Array<{ key: string, final: boolean }> }).results.map(r => [r.key, r.final]), [['r1', false]], 'the open window is served, not final yet')
  t.equal((await fetchJson(`${edge.http}/healthz`)).status, 200, 'still healthy')
})

t.test('an invalid pipelines file stops the agent with located errors', async t => {
  const edge = startFogmesh(['edge', '--pipelines', new URL('fixtures/broken-pipelines.yaml', import.meta.url).pathname, '--mqtt-port', '0'])
  await t.rejects(edge, /exited \(1\)[\s\S]*broken-pipelines\.yaml:2:11: pipeline name "Room_Temp" must match/)
  const dir = await tmpDir('fogmesh-badcfg-')
  t.teardown(() => dir.cleanup())
  await writeFile(join(dir.path, 'edge.yaml'), 'http-port: lots\n')
  await t.rejects(startFogmesh(['edge', '--config', join(dir.path, 'edge.yaml')]), /http-port: expected a whole number/)
})

t.test('embedded broker users: authentication and per-user topic rules', async t => {
  const dir = await tmpDir('fogmesh-users-')
  t.teardown(() => dir.cleanup())
  const config = join(dir.path, 'edge.yaml')
  await writeFile(config, `users:
  - { username: sensor, password: s3cret, publish: [sensors/#], subscribe: [] }
  - { username: viewer, password: v1ew, publish: [], subscribe: [alerts/#] }
`)
  const edge = await startEdge(t, ALL_WINDOWS, ['--config', config, '--mqtt-port', '0'])
  await t.rejects(mqtt.connectAsync(edge.mqtt!, { username: 'sensor', password: 'wrong', reconnectPeriod: 0 }), /Not authorized|Bad username/)
  await t.rejects(mqtt.connectAsync(edge.mqtt!, { reconnectPeriod: 0 }), /Not authorized|Bad username/, 'anonymous clients are refused')

  const viewer = await mqtt.connectAsync(edge.mqtt!, { username: 'viewer', password: 'v1ew', reconnectPeriod: 0 })
  t.teardown(() => viewer.endAsync(true))
  t.same((await viewer.subscribeAsync('alerts/#')).map(g => g.qos), [0], 'a subscription inside the rules is granted')
  await t.rejects(viewer.subscribeAsync('sensors/#'), /Subscribe error/, 'a subscription outside the rules is refused')

  const sensor = await mqtt.connectAsync(edge.mqtt!, { username: 'sensor', password: 's3cret', reconnectPeriod: 0 })
  await sensor.publishAsync('sensors/r1/temperature', JSON.stringify({ device: 'd1', value: 20, ts: START }), { qos: 1 })
  const closed = new Promise<void>(resolve => sensor.once('close', () => resolve()))
  sensor.publish('alerts/fake', 'x', { qos: 1 })
  await closed
  t.pass('a publish outside the rules closes the connection')
  sensor.end(true)
  await waitFor(async () => (await fetchMetric(edge.http, 'fogmesh_readings_total')).get('{pipeline="room-temp"}') === 1, { timeoutMs: 5_000 })
  const denied = await fetchMetric(edge.http, 'fogmesh_mqtt_denied_total')
  t.same(Object.fromEntries(denied), { '{what="connect"}': 2, '{what="publish"}': 1, '{what="subscribe"}': 1 })
})

t.test('results survive a restart: the store is durable', async t => {
  const dir = await tmpDir('fogmesh-restart-')
  t.teardown(() => dir.cleanup())
  const args = ['edge', '--id', 'e1', '--pipelines', ALL_WINDOWS, '--mqtt-port', '0', '--http-port', '0', '--data-dir', join(dir.path, 'data')]
  const first = await startFogmesh(args)
  const specs = await loadPipelinesFile(ALL_WINDOWS)
  const sim = await runSimulator({ ...RUN, duration: 20_000, lateShare: 0, malformedShare: 0, duplicateShare: 0, mqtt: [first.mqtt!], pipelines: specs })
  t.same(await checkAgainstTruth(first.http, [specs[0]], sim.truth!), [])
  const before = await fetchResults(first.http, 'room-temp')
  t.equal(await first.stop(), 0)
  const second = await startFogmesh(args)
  t.teardown(() => second.stop())
  t.same(await fetchResults(second.http, 'room-temp'), before, 'the same results after a restart')

  // fogmesh query prints the same results as a table, or as JSON.
  const table = await run(process.execPath, ['bin/fogmesh.js', 'query', second.http, 'room-temp', '--key', 'r1', '--limit', '2'])
  const lines = table.stdout.trim().split('\n')
  t.match(lines[0], /^key\s+start\s+end\s+final\s+rev\s+src\s+n\s+total\s+low\s+high\s+mean\s+sd\s+p95\s+devices\s+first\s+last$/)
  t.equal(lines.length, 3)
  const r1 = before.find(r => r.key === 'r1')!
  t.match(lines[1], new RegExp(`^r1\\s+${r1.start}\\s+${r1.end}\\s+yes\\s+0\\s+1\\s+${String(r1.values.n)}\\s`))
  const json = await run(process.execPath, ['bin/fogmesh.js', 'query', second.http, 'room-temp', '--json'])
  t.same(JSON.parse(json.stdout).results, before)
  const missing = await run(process.execPath, ['bin/fogmesh.js', 'query', second.http, 'nope']).catch((e: { code: number, stderr: string }) => e)
  t.equal((missing as { code: number }).code, 1)
  t.match((missing as { stderr: string }).stderr, /404: no pipeline named "nope"/)
})

t.test('an existing broker: the persistent session keeps readings while the agent is away, and it reconnects', async t => {
  const broker = await startMosquitto({ extraConfig: ['max_queued_messages 1000000'] })
  t.teardown(() => broker.stop())
  const dir = await tmpDir('fogmesh-session-')
  t.teardown(() => dir.cleanup())
  const args = ['edge', '--id', 'e1', '--pipelines', ALL_WINDOWS, '--mqtt-url', broker.url, '--http-port', '0', '--data-dir', join(dir.path, 'data')]
  const accepted = async (base: string) => (await fetchMetric(base, 'fogmesh_mqtt_messages_total')).get('') ?? 0
  const publisher = await mqtt.connectAsync(broker.url, { reconnectPeriod: 200 })
  t.teardown(() => publisher.endAsync(true))
  const reading = (i: number) => JSON.stringify({ device: `d${i % 5}`, room: 'r1', value: 20 + i / 100, humidity: 50, ts: START + i * 100 })

  const first = await startFogmesh(args)
  for (let i = 0; i < 50; i++) await publisher.publishAsync('sensors/r1/temperature', reading(i), { qos: 1 })
  await waitFor(async () => (await accepted(first.http)) === 50, { timeoutMs: 5_000, message: 'the first 50 readings' })
  t.equal(await first.stop(), 0)

  // Published while no agent runs: the broker queues them in the agent's session.
  for (let i = 50; i < 100; i++) await publisher.publishAsync('sensors/r1/temperature', reading(i), { qos: 1 })
  const second = await startFogmesh(args)
  t.teardown(() => second.stop())
  await waitFor(async () => (await accepted(second.http)) === 50, { timeoutMs: 5_000, message: 'the 50 readings queued while the agent was away' })
  t.pass('readings published while the agent was down arrive when it is back')

  // The broker restarts (its sessions are gone): the agent reconnects and subscribes again.
  await broker.stop()
  const again = await startMosquitto({ port: broker.port, extraConfig: ['max_queued_messages 1000000'] })
  t.teardown(() => again.stop())
  const late = await mqtt.connectAsync(again.url)
  t.teardown(() => late.endAsync(true))
  await waitFor(async () => {
    await late.publishAsync('sensors/r1/temperature', reading(100), { qos: 1 })
    return (await accepted(second.http)) > 50
  }, { timeoutMs: 10_000, intervalMs: 300, message: 'a reading after the broker restarted' })
  t.pass('after a broker restart the agent receives readings again')
})

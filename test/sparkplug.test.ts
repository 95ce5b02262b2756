/**
 * Sparkplug B through a real edge process: births then alias-only data from the simulator, exact
 * against the ground truth; bad Sparkplug input refused and counted while the agent keeps running.
 * Results published as a Sparkplug Edge Node (emit: sparkplug) are in sparkplug-output.test.ts.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import mqtt from 'mqtt'
import t from 'tap'
import type { Test } from 'tap'
import { DataType, decodeSparkplug, encodeSparkplug, REBIRTH_METRIC } from '../core/formats/sparkplug-wire.ts'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import { runSimulator } from '../simulators/sim.ts'
import { compareResults, fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import { startBrowser } from './helpers/browser.ts'
import { fetchJson, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'

const START = Date.UTC(2026, 0, 1)

const PIPELINES = `pipelines:
  - name: room-temp
    from: spBv1.0/sim/#
    format: sparkplug
    timestamp: timestamp
    where: name == "temperature"
    key: node
    window: { tumbling: 5s }
    lateness: 2s
    idle: 1s
    select:
      n: count()
      mean: avg(value)
      high: max(value)
      devices: distinct(device)
  - name: device-humidity
    from: spBv1.0/+group/DDATA/#
    format: sparkplug
    timestamp: timestamp
    where: name == "humidity"
    key: [node, device]
    window: { hopping: 10s, every: 5s }
    lateness: 2s
    idle: 1s
    select:
      n: count()
      low: min(value)
`

async function startEdge (t: Test): Promise<{ edge: RunningProcess, file: string }> {
  const dir = await tmpDir('fogmesh-sparkplug-')
  const file = join(dir.path, 'pipelines.yaml')
  await writeFile(file, PIPELINES)
  const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', file, '--http-port', '0', '--mqtt-port', '0', '--data-dir', join(dir.path, 'data')])
  t.teardown(async () => {
    if (edge.proc.exitCode === null) await edge.stop().catch(() => edge.kill('SIGKILL'))
    await dir.cleanup()
  })
  return { edge, file }
}

async function rejected (base: string, reason: string): Promise<number> {
  return (await fetchMetric(base, 'fogmesh_readings_rejected_total')).get(`{reason="${reason}"}`) ?? 0
}

t.test('births then alias-only data, out of order within the lateness: exact against the ground truth', async t => {
  const { edge, file } = await startEdge(t)
  const specs = await loadPipelinesFile(file)
  const sim = await runSimulator({
    start: START,
    format: 'sparkplug',
    devices: 9,
    rooms: 3,
    rate: 5,
    duration: 40_000,
    seed: 11,
    jitter: 1_500, // within the 2s lateness: out of order, never late
    lateShare: 0.02,
    lateBy: 30_000,
    duplicateShare: 0.01,
    malformedShare: 0.03,
    mqtt: [edge.mqtt!],
    pipelines: specs
  })
  const truth = sim.truth!
  t.ok(sim.stats.malformed.unknown_alias! > 0 && sim.stats.malformed.truncated! > 0 && sim.stats.malformed.garbage! > 0, 'the run has unknown aliases, truncated and garbage payloads')
  const edgeName = Object.keys(truth.pipelines['room-temp'].edges)[0]
  for (const spec of specs) {
    const want = truth.pipelines[spec.name].edges[edgeName].results
    t.ok(want.length > 0, `${spec.name}: the truth has windows`)
    await waitFor(async () => (await fetchResults(edge.http, spec.name)).filter(r => r.final).length >= want.length, { timeoutMs: 35_000, message: `${spec.name}: ${want.length} final windows` })
    t.same(compareResults(spec, await fetchResults(edge.http, spec.name), want, { sources: 1 }), [], `${spec.name}: served results equal the ground truth`)
    const accepted = await fetchMetric(edge.http, 'fogmesh_readings_total')
    t.equal(accepted.get(`{pipeline="${spec.name}"}`), truth.pipelines[spec.name].edges[edgeName].accepted, `${spec.name}: accepted readings`)
  }
  const refused = truth.refused[edgeName]
  for (const reason of ['sparkplug_alias', 'parse'] as const) {
    t.ok((refused[reason] ?? 0) > 0, `the truth refuses some as ${reason}`)
    t.equal(await rejected(edge.http, reason), refused[reason], `${reason}: counted as the truth says`)
  }
  const online = await fetchMetric(edge.http, 'fogmesh_sparkplug_online')
  t.equal(online.get('{group="sim",node="r0",device="d0"}'), 1, 'the devices are online')
  t.equal(online.get('{group="sim",node="r1",device=""}'), 1, 'and their nodes')
  t.equal(await edge.stop(), 0)
})

t.test('unknown alias, data before birth, garbage, wrong topic: each refused and counted, a rebirth asked for, the agent keeps running', async t => {
  const { edge } = await startEdge(t)
  const client = await mqtt.connectAsync(edge.mqtt!)
  t.teardown(() => client.endAsync())
  const commands: Array<{ topic: string, metrics: Array<[string, boolean]> }> = []
  await client.subscribeAsync('spBv1.0/+/NCMD/#', { qos: 1 })
  client.on('message', (topic, payload) => {
    commands.push({ topic, metrics: decodeSparkplug(payload).metrics.map(m => [String(m.name), m.booleanValue === true]) })
  })
  const now = Date.now()
  const send = async (topic: string, payload: Uint8Array) => { await client.publishAsync(topic, Buffer.from(payload), { qos: 1 }) }

  await send('spBv1.0/sim/DDATA/ghost/d1', encodeSparkplug({ timestamp: now, seq: 1, metrics: [{ alias: 1, doubleValue: 20 }] }))
  await waitFor(async () => await rejected(edge.http, 'sparkplug_no_birth') === 1, { timeoutMs: 5_000, message: 'DATA before BIRTH counted' })
  await waitFor(() => commands.length === 1, { timeoutMs: 5_000, message: 'a rebirth request' })
  t.same(commands[0], { topic: 'spBv1.0/sim/NCMD/ghost', metrics: [[REBIRTH_METRIC, true]] }, 'NCMD Node Control/Rebirth = true to the node')

  await send('spBv1.0/sim/NBIRTH/n1', encodeSparkplug({ timestamp: now, seq: 0, metrics: [{ name: 'bdSeq', datatype: DataType.Int64, longValue: 0 }] }))
  await send('spBv1.0/sim/DBIRTH/n1/d1', encodeSparkplug({ timestamp: now, seq: 1, metrics: [{ name: 'temperature', alias: 1, datatype: DataType.Double, isNull: true }] }))
  await send('spBv1.0/sim/DDATA/n1/d1', encodeSparkplug({ timestamp: now, seq: 2, metrics: [{ alias: 5, doubleValue: 20 }, { alias: 1, doubleValue: 21 }] }))
  await waitFor(async () => await rejected(edge.http, 'sparkplug_alias') === 1, { timeoutMs: 5_000, message: 'the unknown alias counted' })
  const accepted = await fetchMetric(edge.http, 'fogmesh_readings_total')
  t.equal(accepted.get('{pipeline="room-temp"}'), 1, 'the known alias of the same message is accepted')
  await waitFor(() => commands.some(c => c.topic === 'spBv1.0/sim/NCMD/n1'), { timeoutMs: 5_000, message: 'a rebirth request to n1' })

  await send('spBv1.0/sim/DDATA/n1/d1', encodeSparkplug({ timestamp: now, metrics: [{ alias: 1, doubleValue: 21 }] }).slice(0, 12))
  await send('spBv1.0/sim/DDATA/n1/d1', new Uint8Array([0xff, 0xfe, 7, 7, 7, 7]))
  await waitFor(async () => await rejected(edge.http, 'parse') === 2, { timeoutMs: 5_000, message: 'truncated and garbage protobuf counted as parse' })
  await send('spBv1.0/sim/DDATA/n1', encodeSparkplug({ timestamp: now, metrics: [{ alias: 1, doubleValue: 21 }] }))
  await send('spBv1.0/sim/whatever/n1/d1/extra', encodeSparkplug({ timestamp: now }))
  await waitFor(async () => await rejected(edge.http, 'sparkplug_topic') === 2, { timeoutMs: 5_000, message: 'wrong topic shapes counted' })

  await send('spBv1.0/sim/DDEATH/n1/d1', encodeSparkplug({ timestamp: now, seq: 3 }))
  await waitFor(async () => (await fetchMetric(edge.http, 'fogmesh_sparkplug_online')).get('{group="sim",node="n1",device="d1"}') === 0, { timeoutMs: 5_000, message: 'DDEATH: offline' })
  await send('spBv1.0/sim/NDEATH/n1', encodeSparkplug({ metrics: [{ name: 'bdSeq', datatype: DataType.Int64, longValue: 0 }] }))
  await waitFor(async () => (await fetchMetric(edge.http, 'fogmesh_sparkplug_online')).get('{group="sim",node="n1",device=""}') === 0, { timeoutMs: 5_000, message: 'NDEATH: offline' })

  // The edge's console shows them offline too.
  const browser = await startBrowser()
  t.teardown(() => browser.close())
  const page = await browser.page()
  await page.goto(`${edge.http}/#edge`)
  await page.waitForFunction(`document.querySelectorAll('#sparkplug-table tbody tr[data-key^="sim/n1/"]').length === 2`, { timeout: 15_000 })
  const rows = await page.$$eval('#sparkplug-table tbody tr[data-key^="sim/n1/"]', trs => trs.map(tr => [...tr.querySelectorAll('td')].map(td => td.textContent)))
  t.same(rows.sort(), [['sim', 'n1', '(node)', 'offline'], ['sim', 'n1', 'd1', 'offline']], 'the console lists the node and the device, offline')

  t.same((await fetchJson(`${edge.http}/healthz`)).body, { status: 'ok', role: 'edge', id: 'e1' }, 'the agent keeps running')
  t.equal(await edge.stop(), 0)
})

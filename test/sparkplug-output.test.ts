/**
 * emit: sparkplug, read back as a host application does (subscribed, decoding with the Eclipse Tahu
 * library): births and data equal to the edge's results and the NDEATH will, at a Mosquitto broker and
 * at the embedded broker with users; windows closed while the broker was down forwarded after the next
 * births as historical DDATA, then live data; the queue's bound and its drop counter.
 *
 * The brokers that go down and come back keep sessions (QoS 0 messages included) across the restart, so
 * the host's persistent session gets what the node publishes before the host has reconnected: which of
 * the two reconnects first is then of no consequence.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import mqtt from 'mqtt'
import type { MqttClient } from 'mqtt'
import { get as getSparkplug } from 'sparkplug-payload'
import t from 'tap'
import type { Test } from 'tap'
import { REBIRTH_METRIC, rebirthRequest, sparkplugClientId } from '../core/formats/sparkplug-wire.ts'
import type { WindowOperator } from '../core/windows/operator.ts'
import type { WindowState } from '../core/windows/window.ts'
import { EmbeddedBroker, INTERNAL_USER, internalLogin } from '../edge-agent/broker.ts'
import type { EdgeOptions } from '../edge-agent/config.ts'
import type { OutputParts } from '../edge-agent/output.ts'
import { SparkplugOutput } from '../edge-agent/sparkplug-output.ts'
import { silentLogger } from '../server/shell/log.ts'
import { Metrics } from '../server/shell/metrics.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { runSimulator } from '../simulators/sim.ts'
import { fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import { startMosquitto } from './helpers/mosquitto.ts'
import { fetchJson, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'

const GROUP = 'plant'
const NODE = 'edge-1'
const DEVICE = 'room-temp'
const topic = (type: string, device?: string): string => `spBv1.0/${GROUP}/${type}/${NODE}${device === undefined ? '' : `/${device}`}`

const tahu = getSparkplug('spBv1.0')!
type Decoded = ReturnType<typeof tahu.decodePayload>
interface Seen { topic: string, payload: Decoded }

function pipelines (window: string, lateness: string): string {
  return `pipelines:
  - name: ${DEVICE}
    from: sensors/+room/+device/temperature
    timestamp: ts
    key: room
    window: { tumbling: ${window} }
    lateness: ${lateness}
    idle: 1s
    select:
      n: count()
      mean: avg(value)
      high: max(value)
    emit:
      - sparkplug: { group: ${GROUP}, node: ${NODE} }
`
}

/** A host application subscribed to the group, keeping every message it reads, decoded. */
async function startHost (t: Test, url: string, options: mqtt.IClientOptions = {}): Promise<{ client: MqttClient, seen: Seen[] }> {
  const client = await mqtt.connectAsync(url, options)
  t.teardown(() => client.endAsync(true))
  const seen: Seen[] = []
  client.on('message', (topic, payload) => seen.push({ topic, payload: tahu.decodePayload(payload) }))
  await client.subscribeAsync(`spBv1.0/${GROUP}/#`, { qos: 1 })
  return { client, seen }
}

/** Mosquitto lines that keep sessions, with their QoS 0 messages, across a restart (in `dir`). */
function keepingSessions (dir: string): string[] {
  return ['persistence true', `persistence_location ${dir}/`, 'queue_qos0_messages true']
}

interface HostWindow { key: string, end: string, values: Record<string, unknown>, historical: boolean }

/**
 * What the host reads, in order: each DDATA is one key's window, its aliases resolved through the
 * latest DBIRTH before it; `historical` when every metric says so. Also the seq gaps (seq follows on
 * over every message but the NDEATH, 0–255 wrapping, from the NBIRTH's 0) and the DDATA metrics that
 * carry a name (they should go by alias only).
 */
function hostView (seen: Seen[]): { windows: HostWindow[], gaps: number, named: number } {
  const aliases = new Map<number, string>()
  const windows: HostWindow[] = []
  let lastSeq: number | undefined
  let gaps = 0
  let named = 0
  for (const { topic: at, payload } of seen) {
    const seq = payload.seq === undefined || payload.seq === null ? undefined : Number(payload.seq)
    if (seq !== undefined && lastSeq !== undefined && seq !== (lastSeq + 1) % 256 && at !== topic('NBIRTH')) gaps++
    if (seq !== undefined) lastSeq = seq
    if (at === topic('DBIRTH', DEVICE)) {
      for (const m of payload.metrics ?? []) aliases.set(Number(m.alias), m.name!)
    } else if (at === topic('DDATA', DEVICE)) {
      const metrics = payload.metrics ?? []
      const values: Record<string, unknown> = {}
      let key = ''
      for (const m of metrics) {
        if (m.name !== undefined && m.name !== null) named++
        const [k, field] = aliases.get(Number(m.alias))!.split('/')
        key = k
        values[field] = m.value
      }
      const end = new Date(Number(payload.timestamp)).toISOString()
      if (metrics.some(m => new Date(Number(m.timestamp)).toISOString() !== end)) throw new Error(`a metric of the DDATA ending ${end} has another timestamp`)
      windows.push({ key, end, values, historical: metrics.length > 0 && metrics.every(m => m.isHistorical === true) })
    }
  }
  return { windows, gaps, named }
}

/** The edge's final windows, as the host should read them. */
async function served (base: string): Promise<HostWindow[]> {
  return (await fetchResults(base, DEVICE)).filter(r => r.final).map(r => ({ key: r.key, end: r.end, values: r.values, historical: false }))
}

const byKeyAndEnd = (a: HostWindow, b: HostWindow): number => a.key < b.key ? -1 : a.key > b.key ? 1 : a.end < b.end ? -1 : a.end > b.end ? 1 : 0

t.test('emit: sparkplug: NBIRTH, DBIRTH and DDATA decode with the reference library to the edge\'s results; the NDEATH will fires on SIGKILL', { timeout: 60_000 }, async t => {
  const broker = await startMosquitto()
  t.teardown(() => broker.stop())
  const dir = await tmpDir('fogmesh-sparkplug-emit-')
  t.teardown(() => dir.cleanup())
  const file = join(dir.path, 'pipelines.yaml')
  await writeFile(file, pipelines('5s', '1s'))
  // Subscribed before the edge starts.
  const { seen } = await startHost(t, broker.url)

  const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', file, '--http-port', '0', '--mqtt-url', broker.url, '--data-dir', join(dir.path, 'data')])
  t.teardown(async () => { if (edge.proc.exitCode === null) edge.kill('SIGKILL') })
  await waitFor(() => seen.some(m => m.topic === topic('NBIRTH')), { timeoutMs: 10_000, message: 'NBIRTH' })
  const nbirth = seen.find(m => m.topic === topic('NBIRTH'))!.payload
  const bdSeq = Number(nbirth.metrics!.find(m => m.name === 'bdSeq')!.value)
  t.ok(nbirth.metrics!.some(m => m.name === REBIRTH_METRIC && m.value === false), 'the NBIRTH has Node Control/Rebirth')
  t.equal(Number(nbirth.seq), 0, 'NBIRTH seq 0')

  await runSimulator({ start: Date.now() - 20_000, speed: 0, devices: 4, rooms: 2, rate: 5, duration: 20_000, seed: 5, jitter: 500, topic: 'sensors/{room}/{device}/temperature', mqtt: [broker.url] })
  await waitFor(async () => (await served(edge.http)).length >= 8, { timeoutMs: 20_000, message: 'closed windows' })
  const results = await served(edge.http)
  await waitFor(() => hostView(seen).windows.length >= results.length, { timeoutMs: 10_000, message: 'one DDATA per closed window' })
  const view = hostView(seen)
  t.equal(view.gaps, 0, 'seq follows on, wrapping at 256')
  t.equal(view.named, 0, 'DDATA metrics go by alias only')
  t.same(view.windows.sort(byKeyAndEnd), results.sort(byKeyAndEnd), 'one DDATA per closed window, at the window end, with the edge\'s values')

  edge.kill('SIGKILL')
  await waitFor(() => seen.some(m => m.topic === topic('NDEATH')), { timeoutMs: 10_000, message: 'the NDEATH will' })
  const death = seen.find(m => m.topic === topic('NDEATH'))!.payload
  t.equal(Number(death.metrics!.find(m => m.name === 'bdSeq')!.value), bdSeq, 'the NDEATH carries the bdSeq of the NBIRTH')
})

t.test('emit: sparkplug at the embedded broker with users: the node gets in as the edge\'s own user, which no sensor can take', { timeout: 60_000 }, async t => {
  const dir = await tmpDir('fogmesh-sparkplug-users-')
  t.teardown(() => dir.cleanup())
  const file = join(dir.path, 'pipelines.yaml')
  await writeFile(file, pipelines('5s', '1s'))
  const config = join(dir.path, 'edge.yaml')
  await writeFile(config, `users:
  - { username: sensor, password: s3cret, publish: [sensors/#], subscribe: [] }
  - { username: scada, password: sc4da-pass, publish: ["spBv1.0/+/NCMD/+"], subscribe: ["spBv1.0/#"] }
`)
  const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', file, '--config', config, '--http-port', '0', '--mqtt-port', '0', '--data-dir', join(dir.path, 'data')])
  t.teardown(async () => { if (edge.proc.exitCode === null) await edge.stop().catch(() => edge.kill('SIGKILL')) })

  const own = await waitFor(async () => {
    const { clients } = (await fetchJson(`${edge.http}/v1/broker`)).body as { clients: Array<{ id: string, user: string | null }> }
    return clients.find(c => c.id.startsWith(`fogmesh-sparkplug/${GROUP}/${NODE}/`))
  }, { timeoutMs: 10_000, message: 'the node connected' })
  t.equal(own.user, '(fogmesh)', 'GET /v1/broker lists the node under the edge\'s own user')
  for (const clientId of [own.id, 'thermo-1']) {
    await t.rejects(mqtt.connectAsync(edge.mqtt!, { clientId, username: '(fogmesh)', password: 's3cret', reconnectPeriod: 0 }), /Not authorized|Bad username/,
      `a sensor presenting the edge's own user with a wrong password is refused (client id ${clientId})`)
  }
  t.same(Object.fromEntries(await fetchMetric(edge.http, 'fogmesh_mqtt_denied_total')), { '{what="connect"}': 2, '{what="publish"}': 0, '{what="subscribe"}': 0 }, 'and counted')

  // The host comes after the births: it asks for new ones, as host applications do.
  const { client: host, seen } = await startHost(t, edge.mqtt!, { username: 'scada', password: 'sc4da-pass', reconnectPeriod: 0 })
  await host.publishAsync(topic('NCMD'), Buffer.from(rebirthRequest(Date.now())), { qos: 1 })
  await waitFor(() => seen.some(m => m.topic === topic('NBIRTH')), { timeoutMs: 10_000, message: 'NBIRTH after the rebirth request' })

  const sensor = await mqtt.connectAsync(edge.mqtt!, { username: 'sensor', password: 's3cret', reconnectPeriod: 0 })
  t.teardown(() => sensor.endAsync(true))
  const start = Math.floor(Date.now() / 5_000) * 5_000 - 30_000
  for (let i = 0; i < 12; i++) {
    await sensor.publishAsync(`sensors/r${i % 2}/d${i % 3}/temperature`, JSON.stringify({ value: 20 + i / 4, ts: start + i * 1_000 }), { qos: 1 })
  }
  await waitFor(async () => (await served(edge.http)).length === 6, { timeoutMs: 15_000, message: 'the 6 windows closed' })
  await waitFor(() => hostView(seen).windows.length === 6, { timeoutMs: 10_000, message: 'their DDATA' })
  const view = hostView(seen)
  t.equal(view.gaps, 0, 'seq follows on')
  t.same(view.windows.sort(byKeyAndEnd), (await served(edge.http)).sort(byKeyAndEnd), 'the host reads the edge\'s results (GET /v1/aggregates)')

  t.equal(await edge.stop(), 0, 'a clean stop')
  await waitFor(() => seen.some(m => m.topic === topic('NDEATH')), { timeoutMs: 5_000, message: 'the NDEATH of a clean stop' })
})

t.test('windows closed while the broker is down reach the host after the next births, as historical DDATA, then live data', { timeout: 90_000 }, async t => {
  const dir = await tmpDir('fogmesh-sparkplug-forward-')
  t.teardown(() => dir.cleanup())
  let broker = await startMosquitto({ extraConfig: keepingSessions(dir.path) })
  t.teardown(() => broker.stop())
  const file = join(dir.path, 'pipelines.yaml')
  // Windows close 3 s or more after their last reading (lateness 5s, idle 1s): time to stop the broker first.
  await writeFile(file, pipelines('2s', '5s'))
  const { seen } = await startHost(t, broker.url, { clientId: 'scada', clean: false, reconnectPeriod: 200 })
  const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', file, '--http-port', '0', '--mqtt-url', broker.url, '--data-dir', join(dir.path, 'data')])
  t.teardown(async () => { if (edge.proc.exitCode === null) await edge.stop().catch(() => edge.kill('SIGKILL')) })
  await waitFor(() => seen.some(m => m.topic === topic('NBIRTH')), { timeoutMs: 10_000, message: 'NBIRTH' })

  const sensor = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 })
  const send = async (room: string, value: number, ts: number): Promise<void> => {
    await sensor.publishAsync(`sensors/${room}/d1/temperature`, JSON.stringify({ value, ts }), { qos: 1 })
  }
  // Two 2 s windows for each of two rooms, all open until the idle rule moves event time on.
  const t0 = Math.floor(Date.now() / 2_000) * 2_000 - 60_000
  for (let i = 0; i < 8; i++) await send(`r${i % 2}`, 10 + i, t0 + i * 500)
  await send('r1', 99, t0 + 3_900)
  await sensor.endAsync()
  await waitFor(async () => (await fetchMetric(edge.http, 'fogmesh_readings_total')).get(`{pipeline="${DEVICE}"}`) === 9, { timeoutMs: 5_000, message: 'the readings taken' })
  await broker.stop()
  t.equal((await served(edge.http)).length, 0, 'no window closed before the broker went down')
  await waitFor(async () => (await served(edge.http)).length === 4, { timeoutMs: 15_000, message: 'the 4 windows closed while it was down' })
  const missed = (await served(edge.http)).map(w => ({ ...w, historical: true }))
  t.same(seen.filter(m => m.topic === topic('DDATA', DEVICE)), [], 'none of them was published then')

  broker = await startMosquitto({ port: broker.port, extraConfig: keepingSessions(dir.path) })
  await waitFor(() => hostView(seen).windows.length === 4, { timeoutMs: 15_000, message: 'the missed windows' })
  const births = seen.filter(m => m.topic === topic('NBIRTH')).length
  t.equal(births, 2, 'a new NBIRTH on the new connection')
  const firstData = seen.findIndex(m => m.topic === topic('DDATA', DEVICE))
  t.same(seen.slice(firstData - 2, firstData).map(m => m.topic), [topic('NBIRTH'), topic('DBIRTH', DEVICE)], 'the births come first')
  const dbirth = seen[firstData - 1].payload.metrics!.map(m => [m.name, m.value])
  const latest = (key: string) => missed.filter(w => w.key === key).sort(byKeyAndEnd).at(-1)!.values
  t.same(Object.fromEntries(dbirth), Object.fromEntries(['r0', 'r1'].flatMap(k => Object.entries(latest(k)).map(([f, v]) => [`${k}/${f}`, v]))), 'the DBIRTH carries the current values')
  const forwarded = hostView(seen)
  t.same(forwarded.windows.slice().sort(byKeyAndEnd), missed.sort(byKeyAndEnd), 'every missed window, historical, at its window end, with the edge\'s values')
  t.same(forwarded.windows.map(w => w.end), forwarded.windows.map(w => w.end).sort(), 'in the order they closed')
  t.equal(forwarded.gaps, 0, 'seq follows on from the births')

  // Live again, once the edge reads the broker again.
  const again = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 })
  t.teardown(() => again.endAsync(true))
  const t1 = Math.floor(Date.now() / 2_000) * 2_000 - 10_000
  await again.publishAsync('sensors/r0/d1/temperature', JSON.stringify({ value: 7, ts: t1 + 100 }), { qos: 1 })
  await waitFor(async () => (await fetchMetric(edge.http, 'fogmesh_readings_total')).get(`{pipeline="${DEVICE}"}`) === 10, { timeoutMs: 10_000, message: 'the edge reads again' })
  await waitFor(() => hostView(seen).windows.length === 5, { timeoutMs: 15_000, message: 'a live window' })
  t.same(hostView(seen).windows.at(-1), { key: 'r0', end: new Date(t1 + 2_000).toISOString(), values: { n: 1, mean: 7, high: 7 }, historical: false }, 'then live DDATA')
  t.equal((await fetchMetric(edge.http, 'fogmesh_sparkplug_dropped_total')).size, 0, 'nothing dropped')
})

t.test('the queue keeps the last maxQueued windows per device, counts those dropped, and forwards the rest', { timeout: 60_000 }, async t => {
  const dir = await tmpDir('fogmesh-sparkplug-queue-')
  t.teardown(() => dir.cleanup())
  // The host's session is made first: the node then starts with its broker down.
  let broker = await startMosquitto({ extraConfig: keepingSessions(dir.path) })
  t.teardown(() => broker.stop())
  const options = { clientId: 'scada', clean: false, reconnectPeriod: 0 }
  await (await startHost(t, broker.url, options)).client.endAsync()
  await broker.stop()

  const metrics = new Metrics()
  const operator = { pipeline: { name: DEVICE, emits: [{ kind: 'sparkplug', group: GROUP, node: NODE }] } } as unknown as WindowOperator
  const parts: OutputParts = {
    options: { dataDir: dir.path, sparkplugMaxQueued: 2 } as EdgeOptions,
    discoverFog: false,
    log: silentLogger,
    metrics,
    security: {} as OutputParts['security'],
    source: { url: broker.url, start: async () => {}, publish: async () => {}, stop: async () => {} },
    operators: new Map([[DEVICE, operator]]),
    committed: () => {}
  }
  const output = new SparkplugOutput(parts)
  t.teardown(() => output.sourceDown())
  output.sourceUp()
  const t0 = Math.floor(Date.now() / 2_000) * 2_000 - 60_000
  const result = (i: number): WindowResult => ({ pipeline: DEVICE, key: 'r1', start: t0 + i * 2_000, end: t0 + (i + 1) * 2_000, final: true, revision: 0, sources: 1, values: { n: i, mean: i / 2 } })
  for (let i = 0; i < 5; i++) output.window(operator, {} as WindowState, result(i))
  t.match(await metrics.text(), `fogmesh_sparkplug_dropped_total{group="${GROUP}",node="${NODE}",device="${DEVICE}"} 3`, 'the 3 oldest dropped and counted')

  broker = await startMosquitto({ port: broker.port, extraConfig: keepingSessions(dir.path) })
  const { seen } = await startHost(t, broker.url, options)
  const expected = (i: number, historical: boolean): HostWindow => ({ key: 'r1', end: new Date(t0 + (i + 1) * 2_000).toISOString(), values: { n: i, mean: i / 2 }, historical })
  await waitFor(() => hostView(seen).windows.length === 2, { timeoutMs: 10_000, message: 'the queued windows' })
  output.window(operator, {} as WindowState, result(5))
  await waitFor(() => hostView(seen).windows.length === 3, { timeoutMs: 10_000, message: 'a live window' })
  t.same(hostView(seen).windows, [expected(3, true), expected(4, true), expected(5, false)], 'the last 2 as historical DDATA, then live')
})

t.test('the edge\'s own login at the embedded broker: only for a node\'s client id, only that node\'s topics; the user name is reserved', { timeout: 30_000 }, async t => {
  const login = internalLogin()
  const users = [{ username: 'sensor', password: 's3cret', publish: ['#'], subscribe: ['#'] }]
  t.throws(() => new EmbeddedBroker({ host: '127.0.0.1', port: 0, users: [{ ...users[0], username: INTERNAL_USER }], internal: login }), { code: 'config_invalid' }, 'no configured user may take the name')
  const broker = new EmbeddedBroker({ host: '127.0.0.1', port: 0, users, internal: login })
  const topics: string[] = []
  await broker.start(at => { topics.push(at); return true })
  t.teardown(() => broker.stop())

  await t.rejects(mqtt.connectAsync(broker.url, { clientId: 'thermo-1', ...login, reconnectPeriod: 0 }), /Not authorized|Bad username/, 'not for a client id that names no node')
  const own = await mqtt.connectAsync(broker.url, { clientId: sparkplugClientId(GROUP, NODE, 1), ...login, reconnectPeriod: 0 })
  t.teardown(() => own.endAsync(true))
  await t.rejects(mqtt.connectAsync(broker.url, { clientId: sparkplugClientId(GROUP, NODE, 1), username: 'sensor', password: 's3cret', reconnectPeriod: 0 }), /Not authorized|Bad username/,
    'a user cannot take a node\'s client id (and so its connection) over')
  t.same((await own.subscribeAsync(topic('NCMD'), { qos: 1 })).map(g => g.qos), [1], 'its NCMD')
  await t.rejects(own.subscribeAsync(`spBv1.0/${GROUP}/#`), /Subscribe error/, 'nothing else')
  await own.publishAsync(topic('DDATA', DEVICE), 'x', { qos: 1 })
  await waitFor(() => topics.length === 1, { timeoutMs: 5_000, message: 'its own DDATA' })
  const closed = new Promise<void>(resolve => own.once('close', () => resolve()))
  own.publish(`spBv1.0/${GROUP}/DDATA/other-node/${DEVICE}`, 'x', { qos: 1 })
  await closed
  t.same(topics, [topic('DDATA', DEVICE)], 'another node\'s topic is refused')
  t.same(broker.clients().denied, { connect: 2, publish: 1, subscribe: 1 })
})

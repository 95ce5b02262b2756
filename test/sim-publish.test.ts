// The simulator against real brokers: embedded aedes instances on loopback.
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import type { AddressInfo, Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Aedes } from 'aedes'
import mqtt from 'mqtt'
import t from 'tap'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { simCommand, parseSimArgs } from '../simulators/cli.ts'
import { runSimulator } from '../simulators/sim.ts'
import { loadTruth } from '../simulators/truth.ts'

const START = Date.UTC(2024, 5, 1, 12)

interface Broker {
  url: string
  stop: () => Promise<void>
}

async function startBroker (): Promise<Broker> {
  const aedes = await Aedes.createBroker()
  const server: Server = createServer(aedes.handle)
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    url: `mqtt://127.0.0.1:${port}`,
    stop: async () => {
      await new Promise<void>(resolve => aedes.close(() => resolve()))
      // aedes.close() has ended every client connection, so this does not wait for them
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}

interface Received {
  topic: string
  payload: Buffer
}

/** Subscribes to everything; `until(n)` resolves once n messages have arrived. */
async function listen (url: string): Promise<{ messages: Received[], until: (n: number, ms: number) => Promise<void>, stop: () => Promise<void> }> {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000 })
  const messages: Received[] = []
  let wake = (): void => {}
  client.on('message', (topic, payload) => {
    messages.push({ topic, payload })
    wake()
  })
  await client.subscribeAsync('#', { qos: 1 })
  const until = async (n: number, ms: number): Promise<void> => {
    const deadline = Date.now() + ms
    while (messages.length < n && Date.now() < deadline) {
      await new Promise<void>(resolve => {
        wake = resolve
        setTimeout(resolve, 50)
      })
    }
  }
  return { messages, until, stop: () => client.endAsync() }
}

const pipeline: PipelineSpec = {
  name: 'room-avg',
  from: 'sensors/+room/temperature',
  format: 'json',
  timestamp: 'ts',
  key: ['room'],
  window: { kind: 'tumbling', size: 5000 },
  lateness: 1000,
  idle: 5000,
  maxFuture: 300_000,
  late: 'drop',
  lateHorizon: 300_000,
  select: [{ name: 'n', fn: 'count', params: [] }, { name: 'avg', fn: 'avg', arg: 'value', params: [] }],
  emit: [{ kind: 'upstream' }],
  version: 1
}

t.test('publishes exactly the generated messages, in order, one connection per broker', { timeout: 10_000 }, async t => {
  const brokers = [await startBroker(), await startBroker()]
  t.teardown(async () => { for (const b of brokers) await b.stop() })
  const listeners = await Promise.all(brokers.map(b => listen(b.url)))
  t.teardown(async () => { for (const l of listeners) await l.stop() })

  const dir = await mkdtemp(join(tmpdir(), 'fogmesh-sim-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const lines: string[] = []
  const summary = await runSimulator({
    devices: 7,
    rate: 5,
    duration: 10_000,
    start: START,
    seed: 3,
    jitter: 500,
    lateShare: 0.05,
    duplicateShare: 0.05,
    malformedShare: 0.05,
    mqtt: brokers.map(b => b.url),
    pipelines: [pipeline],
    truth: join(dir, 'truth.json'),
    log: line => lines.push(line)
  })
  t.equal(summary.streams.length, 2)
  t.equal(summary.stats.messages, summary.streams[0].length + summary.streams[1].length)
  t.ok(summary.stats.duplicates > 0 && Object.keys(summary.stats.malformed).length > 0)
  await Promise.all(listeners.map((l, i) => l.until(summary.streams[i].length, 5000)))
  listeners.forEach((l, i) => {
    const want = summary.streams[i].map(m => [m.topic, Buffer.from(m.payload).toString('base64')])
    const got = l.messages.map(m => [m.topic, m.payload.toString('base64')])
    t.equal(got.length, want.length, `broker ${i}: as many messages as generated`)
    t.same(got, want, `broker ${i}: the same messages in the same order`)
  })
  t.same(summary.published, { [brokers[0].url]: summary.streams[0].length, [brokers[1].url]: summary.streams[1].length })
  t.equal(lines.length, 1)
  t.match(lines[0], /^fogmesh sim: published \d+ messages in [\d.]+s/)

  const truth = await loadTruth(join(dir, 'truth.json'))
  t.equal(truth.seed, 3)
  t.equal(truth.origin, START)
  t.same(truth.published, summary.published)
  t.same(Object.keys(truth.pipelines['room-avg'].edges), brokers.map(b => b.url))
  t.same(truth, JSON.parse(JSON.stringify(summary.truth)), 'the file holds the returned truth')
})

t.test('real-time pacing follows --speed', { timeout: 10_000 }, async t => {
  const broker = await startBroker()
  t.teardown(() => broker.stop())
  const began = Date.now()
  const summary = await runSimulator({ devices: 2, rate: 10, duration: 2000, start: START, speed: 8, mqtt: [broker.url], qos: 0 })
  const took = Date.now() - began
  t.equal(summary.stats.messages, 40)
  // the last reading is due up to 2 s of event time after the start: about 250 ms at 8x
  t.ok(took >= 150 && took < 3000, `took ${took} ms`)
})

t.test('an unreachable broker fails the run with a readable error', { timeout: 15_000 }, async t => {
  const probe = createServer()
  probe.listen(0, '127.0.0.1')
  await once(probe, 'listening')
  const { port } = probe.address() as AddressInfo
  probe.close()
  await t.rejects(runSimulator({ start: START, duration: 1000, mqtt: [`mqtt://127.0.0.1:${port}`] }), { code: 'sim_failed', message: /cannot connect to mqtt:\/\/127\.0\.0\.1/ })
})

t.test('cli: flags, help, dry run with a pipelines file', { timeout: 10_000 }, async t => {
  const parsed = parseSimArgs(['--devices', '3', '--duration', '1m', '--start', '2024-06-01T12:00:00Z', '--late-share', '0.2', '--late-by', '30s',
    '--mqtt', 'mqtt://a', '--mqtt', 'mqtt://b', '--format', 'senml', '--qos', '0', '--dry-run'])
  t.same(parsed.input, {
    devices: 3,
    rooms: undefined,
    rate: undefined,
    duration: 60_000,
    topic: undefined,
    format: 'senml',
    start: START,
    speed: undefined,
    seed: undefined,
    jitter: undefined,
    lateShare: 0.2,
    lateBy: 30_000,
    duplicateShare: undefined,
    malformedShare: undefined,
    mqtt: ['mqtt://a', 'mqtt://b'],
    qos: 0,
    truth: undefined,
    dryRun: true
  })
  t.equal(parseSimArgs(['--start', String(START)]).input.start, START)
  t.throws(() => parseSimArgs(['--start', 'tomorrow']), /--start/)
  t.throws(() => parseSimArgs(['--format', 'xml']), /--format/)
  t.throws(() => parseSimArgs(['--duration', '10 parsecs']), /--duration/)
  t.throws(() => parseSimArgs(['--truth', 'x.json']), /--pipelines/)

  const out: string[] = []
  const err: string[] = []
  const write = process.stdout.write
  const writeErr = process.stderr.write
  process.stdout.write = ((s: string) => { out.push(s); return true }) as typeof process.stdout.write
  process.stderr.write = ((s: string) => { err.push(s); return true }) as typeof process.stderr.write
  const dir = await mkdtemp(join(tmpdir(), 'fogmesh-sim-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  let codes: number[]
  try {
    const pipelines = join(dir, 'pipelines.yaml')
    await writeFile(pipelines, [
      'pipelines:',
      '  - name: avg',
      '    from: sensors/+room/temperature',
      '    timestamp: ts',
      '    key: room',
      '    window: { tumbling: 10s }',
      '    select:',
      '      n: count()',
      '      avg: avg(value)',
      ''
    ].join('\n'))
    codes = [
      await simCommand(['--help']),
      await simCommand(['--rooms', 'many']),
      await simCommand(['--dry-run', '--start', String(START), '--pipelines', pipelines, '--truth', join(dir, 'out', 'truth.json')])
    ]
  } finally {
    process.stdout.write = write
    process.stderr.write = writeErr
  }
  t.same(codes, [0, 2, 0])
  t.match(out[0], /usage: fogmesh sim/)
  t.match(err.join(''), /--rooms must be a number/)
  t.match(out[1], /^fogmesh sim: dry run, 300 messages/)
  const truth = JSON.parse(await readFile(join(dir, 'out', 'truth.json'), 'utf8'))
  t.equal(truth.pipelines.avg.edges['mqtt://127.0.0.1:1883'].accepted, 300)
})

/**
 * The peers part of the bench (`node bench/run.ts --only peers`): the edge agent against what a user
 * would pick instead, in one run, on the edge part's workload (bench/publisher.ts: readings over 1,000
 * keys, pre-encoded QoS 0 PUBLISHes written as fast as the broker reads them), all three behind the same
 * real Mosquitto (started here, on loopback, with no limit on queued messages, so that a slow
 * subscriber makes the broker queue rather than drop):
 *
 * - the agent: `fogmesh edge --mqtt-url <mosquitto>`, the edge part's pipeline (bench/peers/workload.ts);
 * - a hand-written mqtt.js subscriber keeping the same windows and aggregates in a Map (bench/peers/subscriber.ts);
 * - Node-RED with a windowing flow: mqtt in (JSON) → change (topic = device, payload = value) →
 *   node-red-contrib-aggregator nodes, 10 s tumbling, one message per topic: mean, min, max, sum and
 *   median (what that node offers; it has no count, percentile or distinct, and its windows run on the
 *   wall clock, not on event time, so it does less than the other two). Node-RED and the node are
 *   installed on first use into a cache folder (npm install --prefix), never into the project; if that
 *   fails, the part says "skipped" and why, and measures the other two.
 *
 * Each round runs every peer once, in turn, on a fresh process: a fixed burst of readings, and the
 * peer's counter of messages received polled until every reading is counted. Reported per peer (medians
 * over the rounds): the rate at which the burst was fully counted (readings per second from the first
 * reading counted to the last; a run that does not count them all within the time limit is reported as
 * such), peak RSS (VmHWM) and CPU time per reading (utime + stime of every thread, from /proc/PID/stat).
 * Before each burst, probe readings (device "probe", inside the first window) are published until the
 * peer counts one, so that the burst only starts once the peer is subscribed; they are left out of
 * every figure.
 */
import { execFile } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import { homedir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { connectAsync } from 'mqtt'
import { cpuTimes, getText, median, metricValue, peakRssMiB, rateOf, REPO_DIR, scriptPath, spawnNode, stopChild } from './lib.ts'
import type { Child, Sample } from './lib.ts'
import { edgePipelinesYaml } from './peers/workload.ts'

const PIPELINE = 'peers'
const KEYS = 1_000
/** The agent should reach this share of the hand-written subscriber's rate. */
const GOAL = 0.9
const NODE_RED = 'node-red@4'
const AGGREGATOR = 'node-red-contrib-aggregator@2'
/** The aggregations the Node-RED flow runs, one aggregator node each. */
const NODE_RED_AGGREGATIONS = ['mean', 'min', 'max', 'sum', 'median']
/** bench/publisher.ts's event-time origin: probes fall in its first window. */
const EPOCH = 1_767_225_600_000

export type PeerKind = 'agent' | 'subscriber' | 'node-red'
const KINDS: PeerKind[] = ['agent', 'subscriber', 'node-red']

export interface PeersOptions {
  workDir: string
  quick: boolean
  log: (line: string) => void
  rounds?: number
  readings?: number
}

export interface PeerRun {
  kind: PeerKind
  round: number
  fullyCounted: boolean
  /** Readings counted of the burst (probes left out). */
  counted: number
  readingsPerSecond: number | null
  cpuUsPerReading: number | null
  peakRssMiB: number | null
  checks: Record<string, number | undefined>
  error?: string
}

export interface PeerSummary {
  kind: PeerKind
  what: string
  skipped?: string
  runs: number
  allFullyCounted: boolean
  readingsPerSecond: number | null
  cpuUsPerReading: number | null
  peakRssMiB: number | null
}

export interface PeersResults {
  date: string
  durationSeconds: number
  rounds: number
  readings: number
  keys: number
  broker: string
  nodeRed: { version: string | null, aggregator: string | null, skipped?: string }
  peers: PeerSummary[]
  /** The agent's rate over each peer's (medians). */
  agentOver: { subscriber: number | null, nodeRed: number | null }
  /** Each peer's CPU time per reading over the agent's (medians): above 1, the agent costs less. */
  cpuOverAgent: { subscriber: number | null, nodeRed: number | null }
  /** The agent's rate over the subscriber's in each round (null where either was not fully counted). */
  agentOverSubscriberPerRound: Array<number | null>
  goal: number
  meetsGoal: boolean | null
  runs: PeerRun[]
  warnings: string[]
}

// ---------------------------------------------------------------------------------------------
// Mosquitto and Node-RED, outside the project

async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>(resolve => server.close(() => resolve()))
  return port
}

function findMosquitto (): string {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin', '/usr/bin']) {
    const file = join(dir, 'mosquitto')
    if (dir !== '' && existsSync(file)) return file
  }
  throw new Error('mosquitto is not installed (looked on PATH and in /usr/sbin, /usr/local/sbin, /usr/bin)')
}

interface Broker {
  url: string
  pid: number
  stop: () => Promise<void>
}

async function startMosquitto (dir: string): Promise<Broker> {
  const bin = findMosquitto()
  const port = await freePort()
  mkdirSync(dir, { recursive: true })
  const conf = join(dir, 'mosquitto.conf')
  // No limit on queued messages: QoS 0 messages to a subscriber that lags are queued, not dropped.
  writeFileSync(conf, [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', 'max_queued_messages 0',
    'max_queued_bytes 0', `log_dest file ${join(dir, 'mosquitto.log')}`, ''].join('\n'))
  const proc: ChildProcess = spawn(bin, ['-c', conf], { stdio: 'ignore' })
  const kill = (): void => { try { proc.kill('SIGKILL') } catch {} }
  process.on('exit', kill)
  const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
  const stop = async (): Promise<void> => {
    process.off('exit', kill)
    if (proc.exitCode !== null || proc.signalCode !== null) return
    proc.kill('SIGTERM')
    const timer = setTimeout(kill, 5_000)
    await exited
    clearTimeout(timer)
  }
  const deadline = performance.now() + 10_000
  for (;;) {
    try {
      const c = await connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, connectTimeout: 1_000 })
      await c.endAsync(true)
      break
    } catch (err) {
      if (performance.now() > deadline || proc.exitCode !== null) {
        await stop()
        throw new Error(`mosquitto did not accept connections on port ${port}: ${(err as Error).message}`, { cause: err })
      }
      await sleep(100)
    }
  }
  return { url: `mqtt://127.0.0.1:${port}`, pid: proc.pid!, stop }
}

/** Where Node-RED is installed on first use: a cache folder of the user's, never the project. */
function nodeRedDir (): string {
  return join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'fogmesh-bench', 'node-red')
}

function installedVersion (dir: string, pkg: string): string | null {
  try {
    return (JSON.parse(readFileSync(join(dir, 'node_modules', pkg, 'package.json'), 'utf8')) as { version: string }).version
  } catch {
    return null
  }
}

/** Installs Node-RED and the aggregator node unless they are there; resolves with why not, or undefined. */
async function ensureNodeRed (log: (line: string) => void): Promise<string | undefined> {
  const dir = nodeRedDir()
  if (installedVersion(dir, 'node-red') !== null && installedVersion(dir, 'node-red-contrib-aggregator') !== null) return undefined
  log(`peers: installing ${NODE_RED} and ${AGGREGATOR} into ${dir} (first use)`)
  mkdirSync(dir, { recursive: true })
  // npm runs on this node, not on whatever older one may come first on PATH.
  const env = { ...process.env, PATH: `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ''}` }
  return await new Promise(resolve => {
    execFile('npm', ['install', '--prefix', dir, '--no-audit', '--no-fund', '--loglevel=error', NODE_RED, AGGREGATOR],
      { env, timeout: 600_000, maxBuffer: 16 * 1048576 }, (err, _stdout, stderr) => {
        if (err === null) return resolve(undefined)
        // npm's first error lines say what failed (code, request); its last ones only where its log is.
        const lines = stderr.split('\n').map(l => l.trim()).filter(l => l !== '' && !/complete log|proxy|npm help/i.test(l))
        const why = (lines.slice(0, 2).join(' ') || err.message).slice(0, 300)
        resolve(`npm install failed: ${why}`)
      })
  })
}

/**
 * The flow: see the top of this file. Counting happens after the change node, as the aggregators see
 * it. Node ids are hex, as the editor makes them (an id equal to a property value of another node, such
 * as a name, can be taken for a reference to a config node).
 */
function nodeRedFlow (brokerPort: number): unknown[] {
  const id = (n: number): string => `bencb${String(n).padStart(11, '0')}`
  const z = id(0)
  const aggregators = NODE_RED_AGGREGATIONS.map((type, i) => ({
    id: id(10 + i), type: 'aggregator', z, name: type, topic: '', intervalCount: 10, intervalUnits: 's',
    submitIncompleteInterval: true, submitPerTopic: true, aggregationType: type, wires: [[]]
  }))
  return [
    { id: z, type: 'tab', label: 'bench' },
    { id: id(1), type: 'mqtt-broker', name: 'mosquitto', broker: '127.0.0.1', port: String(brokerPort), clientid: '', autoConnect: true,
      usetls: false, protocolVersion: '4', keepalive: '60', cleansession: true },
    { id: id(2), type: 'mqtt in', z, name: '', topic: 'sensors/+/temperature', qos: '0', datatype: 'json', broker: id(1), nl: false, rap: true, rh: 0,
      inputs: 0, wires: [[id(3)]] },
    { id: id(3), type: 'change', z, name: 'key and value',
      rules: [{ t: 'set', p: 'topic', pt: 'msg', to: 'payload.device', tot: 'msg' }, { t: 'set', p: 'payload', pt: 'msg', to: 'payload.value', tot: 'msg' }],
      wires: [[...aggregators.map(a => a.id), id(4)]] },
    ...aggregators,
    { id: id(4), type: 'function', z, name: 'counter', func: "global.set('n', (global.get('n') || 0) + 1)\nreturn null", outputs: 1, wires: [[]] },
    { id: id(5), type: 'http in', z, name: '', url: '/metrics', method: 'get', wires: [[id(6)]] },
    { id: id(6), type: 'function', z, name: 'metrics text', func: "msg.payload = 'peer_messages_total ' + (global.get('n') || 0) + '\\n'\nreturn msg", outputs: 1, wires: [[id(7)]] },
    { id: id(7), type: 'http response', z, name: '', statusCode: '', headers: {}, wires: [] }
  ]
}

// ---------------------------------------------------------------------------------------------
// One run

interface Target {
  child: Child
  metricsUrl: string
  /** Messages received. */
  counter: (metrics: string) => number | undefined
  checks: (metrics: string) => Record<string, number | undefined>
}

let seq = 0

async function startTarget (kind: PeerKind, dir: string, pipelines: string, broker: Broker): Promise<Target> {
  const id = `peers-${kind}-${++seq}`
  if (kind === 'agent') {
    const child = spawnNode('agent', join(REPO_DIR, 'bin', 'fogmesh.js'), ['edge', '--pipelines', pipelines, '--mqtt-url', broker.url,
      '--mqtt-client-id', `${id}-${process.pid}`, '--http-port', '0', '--data-dir', join(dir, id), '--id', id, '--log-level', 'warn'])
    const m = await child.line(/^ready edge \S+ http=(\S+)/, 30_000)
    const p = `pipeline="${PIPELINE}"`
    return {
      child,
      metricsUrl: `${m[1]}/metrics`,
      counter: t => metricValue(t, 'fogmesh_mqtt_messages_total'),
      checks: t => ({
        accepted: metricValue(t, 'fogmesh_readings_total', p),
        late: metricValue(t, 'fogmesh_readings_late_total', p),
        rejected: metricValue(t, 'fogmesh_readings_rejected_total'),
        windowsEmitted: metricValue(t, 'fogmesh_windows_emitted_total', p)
      })
    }
  }
  if (kind === 'subscriber') {
    const child = spawnNode('subscriber', scriptPath(join('peers', 'subscriber.ts')), ['--url', broker.url])
    const m = await child.line(/^ready peer http=(\S+)/, 30_000)
    return {
      child,
      metricsUrl: `${m[1]}/metrics`,
      counter: t => metricValue(t, 'peer_messages_total'),
      checks: t => ({
        accepted: metricValue(t, 'peer_readings_total'),
        late: metricValue(t, 'peer_readings_late_total'),
        rejected: metricValue(t, 'peer_invalid_total'),
        windowsEmitted: metricValue(t, 'peer_windows_emitted_total')
      })
    }
  }
  const userDir = join(dir, id)
  mkdirSync(userDir, { recursive: true })
  const port = await freePort()
  writeFileSync(join(userDir, 'flows.json'), JSON.stringify(nodeRedFlow(Number(new URL(broker.url).port)), null, 2))
  // No editor and no admin API (the agent has no UI either); node endpoints (the counter) on the port.
  writeFileSync(join(userDir, 'settings.js'), `module.exports = ${JSON.stringify({
    uiPort: port, uiHost: '127.0.0.1', flowFile: 'flows.json', credentialSecret: false, httpAdminRoot: false,
    logging: { console: { level: 'info', metrics: false, audit: false } }, telemetry: { enabled: false }, diagnostics: { enabled: false }
  }, null, 2)}\n`)
  const child = spawnNode('node-red', join(nodeRedDir(), 'node_modules', 'node-red', 'red.js'), ['--settings', join(userDir, 'settings.js'), '--userDir', userDir])
  await child.line(/Started flows/, 60_000)
  return {
    child,
    metricsUrl: `http://127.0.0.1:${port}/metrics`,
    counter: t => metricValue(t, 'peer_messages_total'),
    checks: () => ({})
  }
}

/** Publishes probe readings until the peer counts one; resolves with its count once they have stopped arriving. */
async function probe (broker: Broker, target: Target): Promise<number> {
  const client = await connectAsync(broker.url, { clientId: `bench-probe-${process.pid}-${seq}`, clean: true, reconnectPeriod: 0, connectTimeout: 10_000 })
  try {
    const deadline = performance.now() + 30_000
    for (;;) {
      await client.publishAsync('sensors/probe/temperature', JSON.stringify({ device: 'probe', value: 20, ts: EPOCH }), { qos: 0 })
      await sleep(200)
      if ((target.counter(await getText(target.metricsUrl)) ?? 0) > 0) break
      if (performance.now() > deadline) throw new Error('the peer counted none of the probe readings within 30 s')
    }
  } finally {
    await client.endAsync(true)
  }
  await sleep(500)
  return target.counter(await getText(target.metricsUrl)) ?? 0
}

/** A peer that has counted nothing more for this long has lost readings (or stopped). */
const STALL_MS = 60_000

/**
 * Polls a counter every 50 ms until it reaches `target`. Unlike lib's pollCounter, a scrape that fails
 * or takes long is not the end of the run: Node-RED answers its HTTP endpoint on the same event loop as
 * its flow, and with a backlog queued inside it, an answer can take seconds. `samples` is undefined when
 * the counter stalled; `last` is its last value.
 */
async function countUntil (url: string, read: (text: string) => number, target: number): Promise<{ samples?: Sample[], last: number }> {
  const samples: Sample[] = []
  let last = 0
  let movedAt = performance.now()
  for (;;) {
    const t0 = performance.now()
    let text: string | undefined
    try {
      text = await getText(url, STALL_MS)
    } catch {}
    const t1 = performance.now()
    if (text !== undefined) {
      const count = read(text)
      samples.push({ t: (t0 + t1) / 2, count })
      if (count >= target) return { samples, last: count }
      if (count !== last) movedAt = t1
      last = count
    }
    if (t1 - movedAt > STALL_MS) return { last }
    const wait = t0 + 50 - performance.now()
    if (wait > 0) await sleep(wait)
  }
}

async function runOnce (kind: PeerKind, round: number, dir: string, pipelines: string, broker: Broker, readings: number): Promise<PeerRun> {
  const run: PeerRun = { kind, round, fullyCounted: false, counted: 0, readingsPerSecond: null, cpuUsPerReading: null, peakRssMiB: null, checks: {} }
  let target: Target | undefined
  let publisher: Child | undefined
  try {
    target = await startTarget(kind, dir, pipelines, broker)
    publisher = spawnNode('publisher', scriptPath('publisher.ts'), ['--url', broker.url, '--readings', String(readings), '--keys', String(KEYS)])
    await publisher.line(/^ready /, 60_000)
    const probes = await probe(broker, target)
    const t = target
    const cpuBefore = cpuTimes(t.child.pid).process
    publisher.send('go\n')
    const { samples, last } = await countUntil(t.metricsUrl, text => (t.counter(text) ?? probes) - probes, readings)
    if (samples === undefined) {
      run.error = `counted ${last} of ${readings}: no progress for ${STALL_MS / 1000} s`
      run.counted = last
      run.peakRssMiB = round1(peakRssMiB(t.child.pid))
      return run
    }
    const cpu = cpuTimes(t.child.pid).process - cpuBefore
    run.peakRssMiB = round1(peakRssMiB(t.child.pid))
    run.readingsPerSecond = Math.round(rateOf(samples, readings).perSecond)
    run.cpuUsPerReading = round2(cpu * 1000 / readings)
    const final = await getText(t.metricsUrl)
    run.counted = (t.counter(final) ?? 0) - probes
    run.fullyCounted = run.counted === readings
    run.checks = { probes, ...t.checks(final) }
    return run
  } catch (err) {
    // The first line says what failed; the rest (the child's last stderr lines) is kept for the results.
    run.error = (err as Error).message
    return run
  } finally {
    if (publisher !== undefined) {
      publisher.send('stop\n')
      await stopChild(publisher)
    }
    if (target !== undefined) await stopChild(target.child)
  }
}

function round1 (x: number): number {
  return Math.round(x * 10) / 10
}

function round2 (x: number): number {
  return Math.round(x * 100) / 100
}

function roundOrNull (x: number | null, digits: number): number | null {
  return x === null ? null : Math.round(x * 10 ** digits) / 10 ** digits
}

function medianOf (xs: Array<number | null>): number | null {
  const known = xs.filter(x => x !== null)
  return known.length === 0 ? null : median(known)
}

const WHAT: Record<PeerKind, string> = {
  agent: 'fogmesh edge --mqtt-url: 10 s tumbling event-time windows, six aggregates, results in SQLite',
  subscriber: 'hand-written mqtt.js subscriber: the same windows and six aggregates in a Map',
  'node-red': `Node-RED, mqtt in -> change -> node-red-contrib-aggregator x${NODE_RED_AGGREGATIONS.length} (${NODE_RED_AGGREGATIONS.join(', ')}), 10 s wall-clock windows`
}

export async function runPeersBench (o: PeersOptions): Promise<PeersResults> {
  const began = performance.now()
  const rounds = o.rounds ?? (o.quick ? 2 : 5)
  const readings = o.readings ?? (o.quick ? 100_000 : 200_000)
  const dir = join(o.workDir, 'peers')
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'pipelines.yaml'), edgePipelinesYaml(PIPELINE))
  const warnings: string[] = []
  const skipped = await ensureNodeRed(o.log)
  if (skipped !== undefined) o.log(`peers: Node-RED skipped: ${skipped}`)
  const kinds = KINDS.filter(k => k !== 'node-red' || skipped === undefined)
  const broker = await startMosquitto(join(dir, 'mosquitto'))
  o.log(`peers: ${rounds} rounds of ${kinds.join(', ')}, a burst of ${readings.toLocaleString('en-US')} readings over ${KEYS.toLocaleString('en-US')} keys each, through mosquitto at ${broker.url}`)
  const runs: PeerRun[] = []
  try {
    for (let round = 1; round <= rounds; round++) {
      // Each round starts with the next peer, so that none always runs right after the same one.
      for (const kind of kinds.map((_, i) => kinds[(i + round - 1) % kinds.length])) {
        const r = await runOnce(kind, round, join(dir, `round-${round}`), join(dir, 'pipelines.yaml'), broker, readings)
        runs.push(r)
        const c = r.checks
        o.log(`  round ${round} ${kind.padEnd(10)} ` + (r.error === undefined
          ? `${(r.readingsPerSecond ?? 0).toLocaleString('en-US').padStart(7)} readings/s, ${r.cpuUsPerReading} cpu µs/reading, peak RSS ${r.peakRssMiB} MiB, ` +
            `counted ${r.counted}${c.accepted === undefined ? '' : ` (accepted ${c.accepted}, late ${c.late}, rejected ${c.rejected}, windows emitted ${c.windowsEmitted})`}`
          : `FAILED: ${r.error} (counted ${r.counted} of ${readings})`))
        if (!r.fullyCounted) warnings.push(`peers: round ${round} ${kind}: counted ${r.counted} of ${readings}${r.error === undefined ? '' : ` (${r.error.split('\n')[0]})`}`)
        else if (c.accepted !== undefined && c.accepted !== readings + (c.probes ?? 0)) warnings.push(`peers: round ${round} ${kind}: accepted ${c.accepted} of ${readings} readings (+ ${c.probes} probes)`)
      }
    }
  } finally {
    await broker.stop()
  }
  const peers: PeerSummary[] = KINDS.map(kind => {
    const mine = runs.filter(r => r.kind === kind)
    const ok = mine.filter(r => r.fullyCounted)
    return {
      kind,
      what: WHAT[kind],
      ...(kind === 'node-red' && skipped !== undefined ? { skipped } : {}),
      runs: mine.length,
      allFullyCounted: mine.length > 0 && ok.length === mine.length,
      readingsPerSecond: roundOrNull(medianOf(ok.map(r => r.readingsPerSecond)), 0),
      cpuUsPerReading: roundOrNull(medianOf(ok.map(r => r.cpuUsPerReading)), 2),
      peakRssMiB: roundOrNull(medianOf(mine.map(r => r.peakRssMiB)), 1)
    }
  })
  const rate = (k: PeerKind) => peers.find(p => p.kind === k)!.readingsPerSecond
  const over = (k: PeerKind) => { const a = rate('agent'); const b = rate(k); return a === null || b === null ? null : Math.round(a / b * 1000) / 1000 }
  const agentOver = { subscriber: over('subscriber'), nodeRed: over('node-red') }
  const cpu = (k: PeerKind) => peers.find(p => p.kind === k)!.cpuUsPerReading
  const cpuOver = (k: PeerKind) => { const a = cpu('agent'); const b = cpu(k); return a === null || b === null ? null : Math.round(b / a * 1000) / 1000 }
  const cpuOverAgent = { subscriber: cpuOver('subscriber'), nodeRed: cpuOver('node-red') }
  const agentOverSubscriberPerRound = Array.from({ length: rounds }, (_, i) => {
    const of = (k: PeerKind) => runs.find(r => r.kind === k && r.round === i + 1 && r.fullyCounted)?.readingsPerSecond ?? null
    const a = of('agent')
    const b = of('subscriber')
    return a === null || b === null ? null : Math.round(a / b * 1000) / 1000
  })
  const meetsGoal = agentOver.subscriber === null ? null : agentOver.subscriber >= GOAL
  if (meetsGoal === false) warnings.push(`peers: the agent reached ${pct(agentOver.subscriber!)} of the hand-written subscriber's rate (goal ${pct(GOAL)})`)
  return {
    date: new Date().toISOString(),
    durationSeconds: Math.round((performance.now() - began) / 100) / 10,
    rounds,
    readings,
    keys: KEYS,
    broker: 'mosquitto (max_queued_messages 0: nothing dropped)',
    nodeRed: { version: installedVersion(nodeRedDir(), 'node-red'), aggregator: installedVersion(nodeRedDir(), 'node-red-contrib-aggregator'), ...(skipped === undefined ? {} : { skipped }) },
    peers,
    agentOver,
    cpuOverAgent,
    agentOverSubscriberPerRound,
    goal: GOAL,
    meetsGoal,
    runs,
    warnings
  }
}

function pct (x: number): string {
  return `${(x * 100).toFixed(1)}%`
}

/** Rows for the bench's results table. */
export function peersRows (r: PeersResults): Array<[string, string]> {
  const fmt = (n: number | null, unit: string) => n === null ? 'n/a' : `${n.toLocaleString('en-US')}${unit}`
  return [
    ['peers', `${r.rounds} rounds, a burst of ${r.readings.toLocaleString('en-US')} readings over ${r.keys.toLocaleString('en-US')} keys through mosquitto; medians`],
    ...r.peers.map((p): [string, string] => [`peers ${p.kind}`, p.skipped !== undefined
      ? `skipped: ${p.skipped}`
      : `${fmt(p.readingsPerSecond, ' readings/s')} fully counted${p.allFullyCounted ? '' : ' (NOT in every round)'}, peak RSS ${fmt(p.peakRssMiB, ' MiB')}, ` +
        `${fmt(p.cpuUsPerReading, ' cpu µs/reading')}`]),
    ['peers agent/subscriber', r.agentOver.subscriber === null ? 'n/a' : `${pct(r.agentOver.subscriber)} (goal >= ${pct(r.goal)}: ${r.meetsGoal === true ? 'met' : 'NOT met'}; ` +
      `per round ${r.agentOverSubscriberPerRound.map(x => x === null ? 'n/a' : pct(x)).join(' ')})` +
      (r.agentOver.nodeRed === null ? '' : `; agent/Node-RED ${pct(r.agentOver.nodeRed)}`)],
    ['peers cpu per reading', `subscriber/agent ${r.cpuOverAgent.subscriber ?? 'n/a'}, Node-RED/agent ${r.cpuOverAgent.nodeRed ?? 'n/a'} (above 1: the agent costs less)`]
  ]
}

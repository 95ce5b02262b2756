/**
 * `npm run bench`: throughput and memory of the edge agent, each measured against a baseline in the
 * same run on the same machine. Shared CI machines are too noisy for absolute figures to mean anything,
 * so the bench reports ratios, takes the median of alternating rounds, and asserts nothing.
 *
 *   node bench/run.ts [--quick] [--only edge|upstream|cluster|cluster-long|mesh|formats|soak|sinks|peers|cloud-pg] [--long DURATION] [--rounds N] [--readings N] [--poll-ms MS]
 *                     [--profile | --no-profile] [--agent-node-args="--max-semi-space-size=2 ..."] [--out FILE]
 *
 * Throughput: bench/publisher.ts (its own process) writes M pre-encoded QoS 0 readings over one
 * connection, alternately to bench/raw-broker.js (bare aedes + JSON.parse) and to the real edge agent;
 * both counters are polled the same way. Memory: peak RSS (VmHWM) of each process after its run, with
 * 1,000 keys (the throughput rounds) and with 10,000 keys (rounds of a longer run, whose throughput is
 * the second ratio), and the RSS of fresh idle processes. The agent runs the JavaScript of `npm run
 * build` (built first), as a gateway does; the baseline is plain JavaScript too. CPU time per reading of
 * both processes is reported too: it is the same comparison, less disturbed by other load. With the
 * agent below the throughput goal (or with --profile) one more run of each under --cpu-prof shows
 * where the time goes. Upstream (bench/upstream.ts): bytes sent upstream per reading and close-to-final
 * latency at the fog and the cloud, on a mesh of real processes, and (bench/upstream-tls.ts) the same
 * mesh on mutual TLS against plain HTTP in interleaved rounds: the ratios TLS/plain of close-to-final
 * latency and of the nodes' CPU time per batch (--rounds N: N pairs of rounds). Cluster (bench/cluster.ts, needs
 * etcd): committed partial batches per second and commit latency through a fog cluster of three
 * coordinators on a 3-member etcd, against raw etcd writes in alternating rounds, and failover times;
 * `--only cluster-long [--long 5m]` samples etcd's size under a steady load instead. Mesh
 * (bench/mesh.ts): 20 mesh nodes on loopback, their convergence and gossip bytes per node against the
 * floor of every heartbeat received once, and the RSS of a process running one node against a bare
 * one and one with the mesh code loaded, in alternating rounds. Soak (bench/soak.ts, `--only soak
 * [--long 1h]`): edges -> fog -> cloud fed by the simulator at 10,000 readings/s for the whole run, each
 * node's RSS and data dir sampled, every window checked against the ground truth at the end. Peers
 * (bench/peers.ts, `--only peers`): the agent against a hand-written mqtt.js subscriber and Node-RED
 * on the same burst through one Mosquitto: rate fully counted, peak RSS, CPU per reading. Results go to
 * stdout and bench/results.json; with --only, the parts not run keep their figures from the previous file.
 * Sinks (bench/sinks.ts, `--only sinks`): each sink type against its real target on loopback, at the
 * demo's rate of final windows and at 10x it (delivered/offered, lag from offer to acknowledgement),
 * and its max sustained rate.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import { join, relative } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import {
  BENCH_DIR, cpuTimes, getText, guardChildren, median, metricValue, peakRssMiB, pollCounter, rateOf, REPO_DIR,
  rssMiB, scriptPath, spawnNode, stopAll, stopChild
} from './lib.ts'
import type { Child, Rate } from './lib.ts'
import { runUpstreamBench, upstreamRows } from './upstream.ts'
import { runUpstreamTlsBench, upstreamTlsRows } from './upstream-tls.ts'
import { clusterLongRows, clusterRows, runClusterBench, runClusterLongBench } from './cluster.ts'
import { meshRows, runMeshBench } from './mesh.ts'
import { formatsRows, runFormatsBench } from './formats.ts'
import { runSoakBench, soakRows } from './soak.ts'
import { runSinksBench, sinksRows } from './sinks.ts'
import { peersRows, runPeersBench } from './peers.ts'
import { cloudPgRows, runCloudPgBench } from './cloud-pg.ts'
import { edgePipelinesYaml } from './peers/workload.ts'
import { parseDuration } from '../core/duration.ts'
import { findEtcd } from '../simulators/etcd-cluster.ts'

// The edge's aims (issue "Pi-class footprint"): ingest at least 0.8 of the bare broker (median over
// rounds, with 1,000 and with 10,000 keys), a 10,000-key peak RSS of at most 130 MiB, and an idle agent
// within 15 MiB of an idle bare aedes process.
const THROUGHPUT_GOAL = 0.8
const RSS_GOAL_MIB = 130
const IDLE_GOAL_MIB = 15
/** How long a process sits after its ready line before its idle RSS is read. */
const IDLE_SETTLE_MS = 2_000
const PIPELINE = 'bench'

const PIPELINES_YAML = edgePipelinesYaml(PIPELINE)

function readArgs () {
  try {
    return parseArgs({ options: ARG_OPTIONS }).values
  } catch (err) {
    return usage((err as Error).message)
  }
}

function usage (message: string): never {
  process.stderr.write(`bench: ${message}\nusage: node bench/run.ts [--quick] [--only edge|upstream|cluster|cluster-long|mesh|formats|soak|sinks|peers|cloud-pg] [--long DURATION] [--rounds N] [--readings N] [--poll-ms MS] ` +
    '[--profile | --no-profile] [--agent-node-args="--max-semi-space-size=2 ..."] [--out FILE]\n')
  process.exit(2)
}

const ARG_OPTIONS = {
  quick: { type: 'boolean', default: false },
  // One part alone: the edge agent's throughput and memory, the upstream bytes and latency, the fog
  // cluster's commits and failover, the mesh's gossip and memory, or (only this way) etcd's size over a long run.
  only: { type: 'string' },
  // How long cluster-long runs (default 2m, 40s with --quick: one retention and a maintenance), or soak (default 10m).
  long: { type: 'string' },
  rounds: { type: 'string' },
  readings: { type: 'string' },
  'poll-ms': { type: 'string', default: '50' },
  // Extra flags for the agent's node only (e.g. "--max-semi-space-size=2"), to try GC settings.
  'agent-node-args': { type: 'string', default: '' },
  profile: { type: 'boolean' },
  'no-profile': { type: 'boolean', default: false },
  out: { type: 'string', default: join(BENCH_DIR, 'results.json') }
} as const

const args = readArgs()

function positiveInt (name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback
  const n = Number(raw)
  if (!Number.isInteger(n) || n <= 0) usage(`--${name}: expected a positive whole number, got ${raw}`)
  return n
}

const quick = args.quick === true
const PARTS = ['edge', 'upstream', 'cluster', 'cluster-long', 'mesh', 'formats', 'soak', 'peers', 'cloud-pg', 'sinks']
if (args.only !== undefined && !PARTS.includes(args.only)) usage(`--only: expected ${PARTS.join(', ')}, got ${args.only}`)
const parts = {
  edge: args.only === undefined || args.only === 'edge',
  upstream: args.only === undefined || args.only === 'upstream',
  cluster: args.only === undefined || args.only === 'cluster',
  clusterLong: args.only === 'cluster-long',
  mesh: args.only === undefined || args.only === 'mesh',
  // Sparkplug B ingest against JSON, in-process (bench/formats.ts)
  formats: args.only === undefined || args.only === 'formats',
  // Only this way: its paced runs at the demo's rate take minutes (bench/sinks.ts)
  sinks: args.only === 'sinks',
  // Only this way: an hour-long run is no part of a full bench (bench/soak.ts)
  // Only this way: it installs Node-RED on first use (bench/peers.ts)
  peers: args.only === 'peers',
  soak: args.only === 'soak',
  // Contributions committed through the cloud tier on PostgreSQL against raw inserts (bench/cloud-pg.ts)
  cloudPg: args.only === undefined || args.only === 'cloud-pg'
}
if (args.long !== undefined && args.only !== 'cluster-long' && args.only !== 'soak') usage('--long goes with --only cluster-long or --only soak')
let longMs = parts.soak ? 600_000 : quick ? 40_000 : 120_000
try {
  if (args.long !== undefined) longMs = parseDuration(args.long)
} catch (err) {
  usage(`--long: ${(err as Error).message}`)
}
const opts = {
  quick,
  rounds: positiveInt('rounds', args.rounds, quick ? 5 : 7),
  readings: positiveInt('readings', args.readings, quick ? 100_000 : 200_000),
  keys: 1_000,
  bigKeys: 10_000,
  // At 1,000 readings per 100 ms of event time, 10,000 keys get one reading per second each: 30 s of
  // event time closes three windows per key (the first after 3 s) and leaves one open.
  bigReadings: quick ? 100_000 : 300_000,
  bigRounds: Math.max(3, Math.ceil(positiveInt('rounds', args.rounds, quick ? 5 : 7) / 2)),
  idleRounds: quick ? 3 : 5,
  pollMs: positiveInt('poll-ms', args['poll-ms'], 50),
  agentNodeArgs: (args['agent-node-args'] ?? '').split(/\s+/).filter(a => a !== '')
}

// ---------------------------------------------------------------------------------------------

type Kind = 'raw' | 'agent'

interface Target {
  kind: Kind
  child: Child
  http: string
  mqtt: string
  /** The counter the poller watches: messages received, counted the same place for both. */
  counter: (metrics: string) => number | undefined
}

interface RunResult {
  kind: Kind
  keys: number
  readings: number
  rate: Rate
  peakRssMiB: number
  /** RSS once started and idle, before any reading: what the process costs before it holds state. */
  idleRssMiB: number
  /** CPU time the process used per reading, from `go` to the last reading, µs (scrapes included). */
  cpuUsPerReading: number
  /** Main-thread CPU time over wall time from `go` to the last reading: below 1, it waited for input (or for a core). */
  mainThreadBusy: number
  /** Median round trip of a /metrics scrape while idle, ms: a bound on what each poll costs the process. */
  scrapeMs: number
  /** How long the publisher took to hand every byte to the kernel, ms. */
  publisherMs: number
  checks: Record<string, number | undefined>
}

let workDir = ''
let agentSeq = 0

async function startTarget (kind: Kind, nodeArgs: string[] = []): Promise<Target> {
  if (kind === 'raw') {
    const child = spawnNode('raw-broker', scriptPath('raw-broker.js'), [], nodeArgs)
    const m = await child.line(/^ready raw http=(\S+) mqtt=(\S+)/, 30_000)
    return { kind, child, http: m[1], mqtt: m[2], counter: t => metricValue(t, 'bench_raw_messages_total') }
  }
  rebuild()
  const id = `bench-${++agentSeq}`
  const child = spawnNode('agent', join(REPO_DIR, 'bin', 'fogmesh.js'), [
    'edge', '--pipelines', join(workDir, 'pipelines.yaml'), '--mqtt-port', '0', '--http-port', '0',
    '--data-dir', join(workDir, id), '--id', id
  ], [...opts.agentNodeArgs, ...nodeArgs])
  const m = await child.line(/^ready edge \S+ http=(\S+) mqtt=(\S+)/, 30_000)
  // Both counters move in the same synchronous call; messages always reach M, accepted readings only
  // if none is late or rejected (checked after the run).
  return { kind, child, http: m[1], mqtt: m[2], counter: t => metricValue(t, 'fogmesh_mqtt_messages_total') }
}

async function scrapeLatency (url: string, n: number): Promise<number> {
  const times: number[] = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    await getText(url)
    times.push(performance.now() - t0)
  }
  return median(times)
}

function agentChecks (metrics: string): Record<string, number | undefined> {
  const p = `pipeline="${PIPELINE}"`
  return {
    messages: metricValue(metrics, 'fogmesh_mqtt_messages_total'),
    accepted: metricValue(metrics, 'fogmesh_readings_total', p),
    late: metricValue(metrics, 'fogmesh_readings_late_total', p),
    rejected: metricValue(metrics, 'fogmesh_readings_rejected_total'),
    windowsEmitted: metricValue(metrics, 'fogmesh_windows_emitted_total', p),
    openWindows: metricValue(metrics, 'fogmesh_open_windows', p),
    heapUsedMiB: mib(metricValue(metrics, 'fogmesh_nodejs_heap_size_used_bytes')),
    heapTotalMiB: mib(metricValue(metrics, 'fogmesh_nodejs_heap_size_total_bytes')),
    externalMiB: mib(metricValue(metrics, 'fogmesh_nodejs_external_memory_bytes'))
  }
}

function mib (bytes: number | undefined): number | undefined {
  return bytes === undefined ? undefined : Math.round(bytes / 1048576 * 10) / 10
}

/** One measured run on a fresh process. With `keep`, a successful run leaves the target running for the caller to stop. */
async function runOnce (kind: Kind, keys: number, readings: number, nodeArgs: string[] = [], keep = false): Promise<RunResult & { target: Target }> {
  const target = await startTarget(kind, nodeArgs)
  let publisher: Child | undefined
  let ok = false
  try {
    publisher = spawnNode('publisher', scriptPath('publisher.ts'), [
      '--url', target.mqtt, '--readings', String(readings), '--keys', String(keys)
    ])
    await publisher.line(/^ready /, 60_000)
    const metricsUrl = `${target.http}/metrics`
    const scrapeMs = await scrapeLatency(metricsUrl, 10)
    const idleRss = rssMiB(target.child.pid)
    const poll = pollCounter({
      url: metricsUrl,
      read: target.counter,
      intervalMs: opts.pollMs,
      startMs: 30_000,
      stallMs: 20_000,
      timeoutMs: 150_000
    })
    const cpuBefore = cpuTimes(target.child.pid)
    const wallBefore = performance.now()
    const polling = poll.until(readings)
    publisher.send('go\n')
    let samples
    try {
      samples = await polling
    } finally {
      poll.stop()
    }
    // Read right away: the peak of the run, before stopping can add anything.
    const cpuAfter = cpuTimes(target.child.pid)
    const wall = performance.now() - wallBefore
    const cpu = cpuAfter.process - cpuBefore.process
    const peak = peakRssMiB(target.child.pid)
    const final = await getText(metricsUrl)
    const written = await publisher.line(/^written ms=(\S+)/, 30_000)
    publisher.send('stop\n')
    await stopChild(publisher)
    const checks = kind === 'agent'
      ? agentChecks(final)
      : { messages: metricValue(final, 'bench_raw_messages_total'), invalid: metricValue(final, 'bench_raw_invalid_total') }
    const result = { kind, keys, readings, rate: rateOf(samples, readings), peakRssMiB: peak, idleRssMiB: idleRss, cpuUsPerReading: cpu * 1000 / readings, mainThreadBusy: (cpuAfter.main - cpuBefore.main) / wall, scrapeMs, publisherMs: Number(written[1]), checks, target }
    ok = true
    return result
  } finally {
    if (publisher !== undefined) await stopChild(publisher)
    if (!ok || !keep) await stopChild(target.child)
  }
}

function describe (r: RunResult): string {
  const c = r.kind === 'agent'
    ? ` accepted=${r.checks.accepted} late=${r.checks.late} rejected=${r.checks.rejected} emitted=${r.checks.windowsEmitted} open=${r.checks.openWindows}`
    : ''
  return `${r.kind.padEnd(5)} ${fmtRate(r.rate.perSecond).padStart(9)} readings/s over ${(r.rate.spanMs / 1000).toFixed(2)} s ` +
    `(${r.rate.samples} polls), ${r.cpuUsPerReading.toFixed(1)} cpu µs/reading, main thread ${pct(r.mainThreadBusy)} busy, RSS ${r.idleRssMiB.toFixed(0)} -> peak ${r.peakRssMiB.toFixed(1)} MiB, ` +
    `publisher done in ${(r.publisherMs / 1000).toFixed(2)} s${c}`
}

function fmtRate (n: number): string {
  return Math.round(n).toLocaleString('en-US')
}

function warnChecks (r: RunResult): string[] {
  const warnings: string[] = []
  if (r.kind === 'agent') {
    if (r.checks.accepted !== r.readings) warnings.push(`agent accepted ${r.checks.accepted} of ${r.readings} readings (late ${r.checks.late}, rejected ${r.checks.rejected})`)
    if ((r.checks.windowsEmitted ?? 0) === 0) warnings.push('agent closed no window during the run')
  } else if (r.checks.invalid !== 0) {
    warnings.push(`raw broker saw ${r.checks.invalid} invalid payloads`)
  }
  return warnings
}

/**
 * How fast the publisher alone can go, into a sink that acknowledges the CONNECT and discards the rest:
 * with this far above the raw broker's rate, the baseline is the broker's speed, not the load's.
 */
async function publisherCeiling (readings: number): Promise<number> {
  let received = 0
  let first = 0
  let last = 0
  const sink = createServer(socket => {
    let connected = false
    socket.on('error', () => {})
    socket.on('data', d => {
      if (!connected) {
        connected = true
        socket.write(Buffer.from([0x20, 0x02, 0x00, 0x00]))
        return
      }
      if (first === 0) first = performance.now()
      received += d.length
      last = performance.now()
    })
  })
  await new Promise<void>(resolve => sink.listen(0, '127.0.0.1', resolve))
  const publisher = spawnNode('publisher', scriptPath('publisher.ts'), [
    '--url', `mqtt://127.0.0.1:${(sink.address() as AddressInfo).port}`, '--readings', String(readings), '--keys', String(opts.keys)
  ])
  try {
    const ready = await publisher.line(/^ready readings=\d+ bytes=(\d+)/, 60_000)
    const bytes = Number(ready[1])
    publisher.send('go\n')
    await publisher.line(/^written /, 60_000)
    const deadline = performance.now() + 10_000
    while (received < bytes && performance.now() < deadline) await sleep(5)
    if (received < bytes) throw new Error(`publisher ceiling: the sink got ${received} of ${bytes} bytes`)
    return readings / Math.max(last - first, 1) * 1000
  } finally {
    publisher.send('stop\n')
    await stopChild(publisher)
    sink.close()
  }
}

// ---------------------------------------------------------------------------------------------
// CPU profiles

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  children?: number[]
}

interface ProfileSummary {
  file: string
  /** Samples in the measured window (first to last reading handled), idle ones left out. */
  busySamples: number
  /** Share of the measured window the agent sat idle, %. */
  idleShare: number
  /** Where each busy sample was, by what is on its stack. */
  breakdown: Array<{ part: string, pct: number }>
  selfTop: Array<{ fn: string, where: string, pct: number }>
  byArea: Array<{ area: string, pct: number }>
  /** Inclusive (self + callees) time of the project's own functions. */
  inclusiveTop: Array<{ fn: string, where: string, pct: number }>
}

function shortUrl (url: string): string {
  if (url === '') return ''
  const path = url.startsWith('file://') ? decodeURIComponent(new URL(url).pathname) : url
  return path.startsWith(REPO_DIR + '/') ? relative(REPO_DIR, path) : path
}

/** node_modules/<package> (scoped ones included), a project file, node internals, or a V8 bucket. */
function areaOf (fn: string, where: string): string {
  if (where === '') return fn.startsWith('(') ? fn : '(native)'
  const nm = /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(where)
  if (nm !== null) return `node_modules/${nm[1]}`
  if (where.startsWith('node:')) return 'node internals'
  return where.replace(/:\d+$/, '')
}

const PIPELINE_ENTRY = /^edge-agent\/pipelines\.ts:/
const RAW_ENTRY = /^bench\/raw-broker\.js:/
const MQTT_STACK = /node_modules\/(aedes|aedes-[^/]+|mqtt-packet|bl|qlobber|mqemitter|fastfall|fastparallel|fastseries|reusify)\/|^node:internal\/stream_base_commons|^node:internal\/streams\//
const HTTP_STACK = /node_modules\/prom-client\/|^server\/|^node:_http_/

interface Frame {
  fn: string
  where: string
}

/** Whether a stack is handling one reading past the broker: the agent's pipelines or the raw broker's JSON.parse. */
function isReadingWork (frames: Frame[]): boolean {
  return frames.some(f => (f.fn === 'onMessage' && PIPELINE_ENTRY.test(f.where)) || RAW_ENTRY.test(f.where))
}

/** The part of the process a sample belongs to, from the frames on its stack (innermost first). */
function partOf (frames: Frame[]): string {
  const leaf = frames[0]
  if (leaf.fn === '(garbage collector)') return 'garbage collector'
  if (frames.some(f => f.fn === 'onMessage' && PIPELINE_ENTRY.test(f.where))) return 'pipeline work (PipelineRunner.onMessage and below)'
  if (frames.some(f => RAW_ENTRY.test(f.where))) return 'raw handler (JSON.parse and count)'
  if (frames.some(f => HTTP_STACK.test(f.where))) return 'HTTP and /metrics scrapes'
  if (frames.some(f => MQTT_STACK.test(f.where))) return 'MQTT input (socket reads, mqtt-packet, aedes)'
  return `other (${leaf.fn === '(program)' ? 'V8/native, no JS frame' : areaOf(leaf.fn, leaf.where)})`
}

function summarizeProfile (file: string): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as { nodes: ProfileNode[], samples: number[] }
  const byId = new Map<number, ProfileNode>()
  const parent = new Map<number, number>()
  for (const n of profile.nodes) {
    byId.set(n.id, n)
    for (const c of n.children ?? []) parent.set(c, n.id)
  }
  const labels = new Map<number, Frame>()
  const label = (id: number): Frame => {
    let l = labels.get(id)
    if (l === undefined) {
      const cf = byId.get(id)!.callFrame
      const url = shortUrl(cf.url)
      l = { fn: cf.functionName === '' ? '(anonymous)' : cf.functionName, where: url === '' ? '' : `${url}:${cf.lineNumber + 1}` }
      labels.set(id, l)
    }
    return l
  }
  const stacks = new Map<number, Frame[]>()
  const stackOf = (id: number): Frame[] => {
    let st = stacks.get(id)
    if (st === undefined) {
      st = []
      for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) st.push(label(cur))
      stacks.set(id, st)
    }
    return st
  }
  // Startup (module loading, compiling) and the idle tail are not what the run measures: keep the
  // samples from the first reading the pipelines handled to the last.
  const working = (id: number): boolean => byId.has(id) && isReadingWork(stackOf(id))
  let from = profile.samples.findIndex(working)
  let to = profile.samples.findLastIndex(working)
  if (from < 0) {
    from = 0
    to = profile.samples.length - 1
  }
  const self = new Map<string, number>()
  const area = new Map<string, number>()
  const inclusive = new Map<string, number>()
  const parts = new Map<string, number>()
  let idle = 0
  let busy = 0
  for (let i = from; i <= to; i++) {
    const id = profile.samples[i]
    if (!byId.has(id)) continue
    const frames = stackOf(id)
    const { fn, where } = frames[0]
    if (fn === '(idle)') {
      idle++
      continue
    }
    busy++
    const key = `${fn}\t${where}`
    self.set(key, (self.get(key) ?? 0) + 1)
    const a = areaOf(fn, where)
    area.set(a, (area.get(a) ?? 0) + 1)
    const part = partOf(frames)
    parts.set(part, (parts.get(part) ?? 0) + 1)
    // Each project function on the stack once, however deep it recurses.
    const seen = new Set<string>()
    for (const f of frames) {
      if (f.where === '' || f.where.startsWith('node:') || f.where.includes('node_modules/')) continue
      const k = `${f.fn}\t${f.where}`
      if (seen.has(k)) continue
      seen.add(k)
      inclusive.set(k, (inclusive.get(k) ?? 0) + 1)
    }
  }
  const pct = (n: number): number => busy === 0 ? 0 : Math.round(n / busy * 1000) / 10
  const top = (m: Map<string, number>, n: number): Array<{ fn: string, where: string, pct: number }> =>
    [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, v]) => {
      const [fn, where] = k.split('\t')
      return { fn, where, pct: pct(v) }
    })
  return {
    file,
    busySamples: busy,
    idleShare: busy + idle === 0 ? 0 : Math.round(idle / (busy + idle) * 1000) / 10,
    breakdown: [...parts].sort((a, b) => b[1] - a[1]).map(([part, v]) => ({ part, pct: pct(v) })),
    selfTop: top(self, 20),
    byArea: [...area].sort((a, b) => b[1] - a[1]).slice(0, 15).map(([a, v]) => ({ area: a, pct: pct(v) })),
    inclusiveTop: top(inclusive, 15)
  }
}

interface Profiled {
  run: RunResult
  summary: ProfileSummary
}

async function profileTarget (kind: Kind, readings: number): Promise<Profiled> {
  const dir = join(workDir, `prof-${kind}`)
  const r = await runOnce(kind, opts.keys, readings, ['--cpu-prof', `--cpu-prof-dir=${dir}`], true)
  // The profile is written on a clean exit, which SIGTERM gives.
  const code = await stopChild(r.target.child, 20_000)
  if (code !== 0) throw new Error(`profiled ${kind} exited with ${code}\n${r.target.child.stderrTail()}`)
  const files = readdirSync(dir).filter(f => f.endsWith('.cpuprofile'))
  if (files.length === 0) throw new Error(`no .cpuprofile in ${dir}`)
  const file = join(tmpdir(), `fogmesh-bench-${kind}-${Date.now()}.cpuprofile`)
  writeFileSync(file, readFileSync(join(dir, files[0])))
  return { run: r, summary: summarizeProfile(file) }
}

// ---------------------------------------------------------------------------------------------

function table (rows: Array<[string, string]>): string {
  const w = Math.max(...rows.map(r => r[0].length))
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join('\n')
}

interface Machine {
  cpus: number
  cpuModel: string
  memoryMiB: number
  node: string
  platform: string
  loadavgAtStart: number[]
}

interface EdgePart {
  /** The top-level keys of results.json this part fills. */
  results: Record<string, unknown> & { warnings: string[] }
  rows: Array<[string, string]>
  /** Prints the CPU profiles, if any. */
  printProfiles: () => void
}

async function main (): Promise<void> {
  guardChildren()
  workDir = mkdtempSync(join(tmpdir(), 'fogmesh-bench-'))
  // Also on a signal, which exits without unwinding to the finally below.
  process.on('exit', () => rmSync(workDir, { recursive: true, force: true }))
  writeFileSync(join(workDir, 'pipelines.yaml'), PIPELINES_YAML)
  const started = performance.now()
  const cpuList = cpus()
  const machine: Machine = {
    cpus: cpuList.length,
    cpuModel: cpuList[0]?.model ?? 'unknown',
    memoryMiB: Math.round(totalmem() / 1048576),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    loadavgAtStart: loadavg().map(x => Math.round(x * 100) / 100)
  }
  const log = (s: string): void => { process.stdout.write(s + '\n') }
  log(`fogmesh bench${quick ? ' (quick)' : ''}${args.only !== undefined ? ` (only ${args.only})` : ''}: ${machine.cpus} cpus (${machine.cpuModel}), node ${machine.node}, load ${machine.loadavgAtStart.join(' ')}`)
  const edge = parts.edge ? await edgeBench(log) : undefined
  const edgeSeconds = Math.round((performance.now() - started) / 100) / 10
  const upstreamPlain = parts.upstream ? await runUpstreamBench({ workDir, quick, log }) : undefined
  const upstreamTls = parts.upstream
    ? await runUpstreamTlsBench({ workDir, log, pairs: args.rounds === undefined ? (quick ? 2 : 4) : opts.rounds, keys: 100, pollMs: 20 })
    : undefined
  const upstream = upstreamPlain === undefined ? undefined : { ...upstreamPlain, tls: upstreamTls, warnings: [...upstreamPlain.warnings, ...upstreamTls?.warnings ?? []] }
  const cluster = parts.cluster && etcdAvailable(log) ? await runClusterBench({ workDir, quick, log, rounds: args.rounds === undefined ? undefined : opts.rounds }) : undefined
  const clusterLong = parts.clusterLong ? await runClusterLongBench({ workDir, durationMs: longMs, log }) : undefined
  const mesh = parts.mesh ? await runMeshBench({ quick, log, rounds: args.rounds === undefined ? undefined : opts.rounds }) : undefined
  const formats = parts.formats ? runFormatsBench({ quick, log }) : undefined
  const soak = parts.soak ? await runSoakBench({ workDir, durationMs: longMs, log }) : undefined
  const sinks = parts.sinks ? await runSinksBench({ workDir, quick, log }) : undefined
  const peers = parts.peers
    ? await runPeersBench({ workDir, quick, log, rounds: args.rounds === undefined ? undefined : opts.rounds, readings: args.readings === undefined ? undefined : opts.readings })
    : undefined
  const cloudPg = parts.cloudPg ? await runCloudPgBench({ workDir, quick, log, rounds: args.rounds === undefined ? undefined : opts.rounds }) : undefined
  const loadAtEnd = loadavg().map(x => Math.round(x * 100) / 100)

  const out = args.out ?? join(BENCH_DIR, 'results.json')
  // A part not run keeps the figures of the previous file (the top-level date and machine are the edge part's).
  const previous = existsSync(out) ? JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown> : {}
  const { upstream: previousUpstream, cluster: previousCluster, clusterLong: previousClusterLong, mesh: previousMesh, formats: previousFormats, soak: previousSoak, peers: previousPeers, cloudPg: previousCloudPg, sinks: previousSinks, ...previousEdge } = previous
  const results = {
    ...(edge === undefined
      ? previousEdge
      : { date: new Date().toISOString(), quick, machine, loadavgAtEnd: loadAtEnd, durationSeconds: edgeSeconds, ...edge.results }),
    upstream: upstream === undefined ? previousUpstream : { ...upstream, quick, machine: { ...machine, loadavgAtEnd: loadAtEnd } },
    cluster: cluster === undefined ? previousCluster : { ...cluster, quick, machine: { ...machine, loadavgAtEnd: loadAtEnd } },
    clusterLong: clusterLong === undefined ? previousClusterLong : { ...clusterLong, machine: { ...machine, loadavgAtEnd: loadAtEnd } },
    mesh: mesh === undefined ? previousMesh : { ...mesh, quick, machine: { ...machine, loadavgAtEnd: loadAtEnd } },
    formats: formats === undefined ? previousFormats : { ...formats, quick },
    sinks: sinks === undefined ? previousSinks : { ...sinks, quick, machine: { ...machine, loadavgAtEnd: loadAtEnd } },
    peers: peers === undefined ? previousPeers : { ...peers, quick, machine: { ...machine, loadavgAtEnd: loadAtEnd } },
    soak: soak === undefined ? previousSoak : { ...soak, machine: { ...machine, loadavgAtEnd: loadAtEnd } },
    cloudPg: cloudPg === undefined ? previousCloudPg : { ...cloudPg, quick, machine: { ...machine, loadavgAtEnd: loadAtEnd } }
  }
  writeFileSync(out, JSON.stringify(results, null, 2) + '\n')

  edge?.printProfiles()
  log('\nresults')
  log(table([
    ['machine', `${machine.cpus} cpus, ${machine.cpuModel}, node ${machine.node}`],
    ...(edge?.rows ?? []),
    ...(upstream !== undefined ? upstreamRows(upstream) : []),
    ...(upstreamTls !== undefined ? upstreamTlsRows(upstreamTls) : []),
    ...(cluster !== undefined ? clusterRows(cluster) : []),
    ...(clusterLong !== undefined ? clusterLongRows(clusterLong) : []),
    ...(mesh !== undefined ? meshRows(mesh) : []),
    ...(formats !== undefined ? formatsRows(formats) : []),
    ...(sinks !== undefined ? sinksRows(sinks) : []),
    ...(soak !== undefined ? soakRows(soak) : []),
    ...(peers !== undefined ? peersRows(peers) : []),
    ...(cloudPg !== undefined ? cloudPgRows(cloudPg) : []),
    ['duration', `${Math.round((performance.now() - started) / 100) / 10} s; load ${machine.loadavgAtStart.join(' ')} -> ${loadAtEnd.join(' ')}`]
  ]))
  for (const w of [...(edge?.results.warnings ?? []), ...(upstream?.warnings ?? []), ...(cluster?.warnings ?? []), ...(clusterLong?.warnings ?? []), ...(mesh?.warnings ?? []), ...(sinks?.warnings ?? []), ...(soak?.warnings ?? []), ...(peers?.warnings ?? []), ...(cloudPg?.warnings ?? [])]) log(`warning: ${w}`)
  log(`wrote ${out.startsWith(REPO_DIR + '/') ? relative(process.cwd(), out) : out}`)
}

/**
 * Whether etcd is installed for the cluster part. Asked for alone (--only cluster) it must be; in a
 * run of every part, a machine without etcd skips it, saying so, rather than failing the other parts.
 */
function etcdAvailable (log: (line: string) => void): boolean {
  try {
    findEtcd()
    return true
  } catch (err) {
    if (args.only === 'cluster') throw err
    log(`cluster: skipped, ${(err as Error).message}`)
    return false
  }
}

interface IdleResult {
  rssMiB: number
  peakRssMiB: number
}

/** A fresh process left alone after its ready line: its resident and peak memory before any client. */
async function idleOnce (kind: Kind): Promise<IdleResult> {
  const target = await startTarget(kind)
  try {
    await sleep(IDLE_SETTLE_MS)
    return { rssMiB: rssMiB(target.child.pid), peakRssMiB: peakRssMiB(target.child.pid) }
  } finally {
    await stopChild(target.child)
  }
}

/**
 * Whether the agent runs the JavaScript of npm run build, as a deployment does, without the type
 * stripper (the raw broker is plain JavaScript too): the build at the start of the edge part worked.
 */
let compiled = false

/** npm run build; its summary line. */
function build (): string {
  return execFileSync(process.execPath, [join(REPO_DIR, 'bin', 'build.js')], { cwd: REPO_DIR, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim()
}

/**
 * Before each agent start, once the first build worked: a source edited since (a checkout others work
 * in) would otherwise run through the type stripper and weigh some 15 MiB more. A build that fails
 * now (a file mid-edit that does not parse) leaves that file to its source.
 */
function rebuild (): void {
  if (!compiled) return
  try {
    build()
  } catch {}
}

/** Rounds of raw then agent on fresh processes, each run's checks turned into warnings. */
async function alternate (rounds: number, keys: number, readings: number, log: (line: string) => void, warnings: string[]): Promise<{ raw: RunResult[], agent: RunResult[] }> {
  const raw: RunResult[] = []
  const agent: RunResult[] = []
  for (let round = 1; round <= rounds; round++) {
    for (const kind of ['raw', 'agent'] as const) {
      const r = await runOnce(kind, keys, readings)
      ;(kind === 'raw' ? raw : agent).push(r)
      warnings.push(...warnChecks(r))
      log(`  round ${round} ${describe(r)}`)
    }
  }
  return { raw, agent }
}

/** The edge agent's throughput and memory, each against its baseline (see the top of this file). */
async function edgeBench (log: (line: string) => void): Promise<EdgePart> {
  const warnings: string[] = []
  try {
    log(build())
    compiled = true
  } catch (err) {
    warnings.push(`npm run build failed, the agent runs from its .ts sources: ${(err as Error).message}`)
  }
  log(`throughput: ${opts.rounds} rounds of raw then agent, ${opts.readings.toLocaleString('en-US')} readings over ${opts.keys.toLocaleString('en-US')} keys each, polled every ${opts.pollMs} ms`)
  const ceiling = await publisherCeiling(opts.readings)
  log(`publisher alone (into a discarding sink): ${fmtRate(ceiling)} readings/s`)

  const { raw, agent } = await alternate(opts.rounds, opts.keys, opts.readings, log, warnings)
  const rawRate = median(raw.map(r => r.rate.perSecond))
  const agentRate = median(agent.map(r => r.rate.perSecond))
  const ratio = agentRate / rawRate
  const pairRatios = agent.map((a, i) => a.rate.perSecond / raw[i].rate.perSecond)

  log(`10,000 keys: ${opts.bigRounds} rounds of raw then agent, ${opts.bigReadings.toLocaleString('en-US')} readings each (throughput and peak RSS)`)
  const { raw: rawBigRuns, agent: agentBigRuns } = await alternate(opts.bigRounds, opts.bigKeys, opts.bigReadings, log, warnings)
  for (const r of agentBigRuns) {
    if ((r.checks.openWindows ?? 0) < opts.bigKeys) warnings.push(`10k-key run: only ${r.checks.openWindows} windows open at the end (expected every key to have one)`)
  }
  const rawBigRate = median(rawBigRuns.map(r => r.rate.perSecond))
  const agentBigRate = median(agentBigRuns.map(r => r.rate.perSecond))
  const ratioBig = agentBigRate / rawBigRate
  const pairRatiosBig = agentBigRuns.map((a, i) => a.rate.perSecond / rawBigRuns[i].rate.perSecond)
  // The round with the median peak stands for the 10k figures below (the peaks of all rounds are kept too).
  const byPeak = [...agentBigRuns].sort((a, b) => a.peakRssMiB - b.peakRssMiB)
  const agentBig = byPeak[Math.floor((byPeak.length - 1) / 2)]
  const rawBigPeak = median(rawBigRuns.map(r => r.peakRssMiB))

  log(`idle: ${opts.idleRounds} rounds of raw then agent, RSS ${IDLE_SETTLE_MS / 1000} s after the ready line, no client`)
  const rawIdle: IdleResult[] = []
  const agentIdle: IdleResult[] = []
  for (let round = 1; round <= opts.idleRounds; round++) {
    for (const kind of ['raw', 'agent'] as const) {
      const r = await idleOnce(kind)
      ;(kind === 'raw' ? rawIdle : agentIdle).push(r)
      log(`  round ${round} ${kind.padEnd(5)} RSS ${r.rssMiB.toFixed(1)} MiB, peak ${r.peakRssMiB.toFixed(1)} MiB`)
    }
  }
  const idle = {
    agentRssMiB: round1(median(agentIdle.map(r => r.rssMiB))),
    agentPeakRssMiB: round1(median(agentIdle.map(r => r.peakRssMiB))),
    rawRssMiB: round1(median(rawIdle.map(r => r.rssMiB))),
    rawPeakRssMiB: round1(median(rawIdle.map(r => r.peakRssMiB)))
  }
  const idleOver = Math.max(idle.agentRssMiB - idle.rawRssMiB, idle.agentPeakRssMiB - idle.rawPeakRssMiB)

  const profiles: Profiled[] = []
  const wantProfile = args.profile === true || (!quick && args['no-profile'] !== true && ratio < THROUGHPUT_GOAL)
  if (wantProfile) {
    // The raw broker too: the MQTT input is the same code in both, so its cost per reading there is
    // what the agent cannot avoid, and the rest is the agent's own.
    log(`profile: one run each under --cpu-prof${ratio < THROUGHPUT_GOAL ? ` (agent/raw ${pct(ratio)} is below the ${pct(THROUGHPUT_GOAL)} goal)` : ''}`)
    for (const kind of ['raw', 'agent'] as const) {
      const p = await profileTarget(kind, opts.readings)
      profiles.push(p)
      log(`  ${describe(p.run)} (slowed by profiling)`)
    }
  }

  const rss1k = median(agent.map(r => r.peakRssMiB))
  const rawRss1k = median(raw.map(r => r.peakRssMiB))
  const rawCpu = median(raw.map(r => r.cpuUsPerReading))
  const agentCpu = median(agent.map(r => r.cpuUsPerReading))
  const agentScrape = median(agent.map(r => r.scrapeMs))
  const rawScrape = median(raw.map(r => r.scrapeMs))
  const aims = {
    ingest1k: { ratio: round3(ratio), goal: THROUGHPUT_GOAL, met: ratio >= THROUGHPUT_GOAL },
    ingest10k: { ratio: round3(ratioBig), goal: THROUGHPUT_GOAL, met: ratioBig >= THROUGHPUT_GOAL },
    peakRss10k: { mib: round1(agentBig.peakRssMiB), goalMiB: RSS_GOAL_MIB, met: agentBig.peakRssMiB <= RSS_GOAL_MIB },
    idleOverBare: { mib: round1(idleOver), goalMiB: IDLE_GOAL_MIB, met: idleOver <= IDLE_GOAL_MIB }
  }
  const results = {
    rounds: opts.rounds,
    readings: opts.readings,
    keys: opts.keys,
    pollMs: opts.pollMs,
    agentNodeArgs: opts.agentNodeArgs,
    /** Whether the agent ran the JavaScript of npm run build (else its .ts sources, through the type stripper). */
    compiled,
    aims,
    throughput: {
      rawReadingsPerSecond: Math.round(rawRate),
      agentReadingsPerSecond: Math.round(agentRate),
      ratio: Math.round(ratio * 1000) / 1000,
      goal: THROUGHPUT_GOAL,
      meetsGoal: ratio >= THROUGHPUT_GOAL,
      perRound: raw.map((r, i) => ({
        raw: Math.round(r.rate.perSecond),
        agent: Math.round(agent[i].rate.perSecond),
        ratio: Math.round(pairRatios[i] * 1000) / 1000
      })),
      // CPU time per reading is the second view of the same question, less disturbed by other load.
      cpuUsPerReading: { raw: round2(rawCpu), agent: round2(agentCpu), rawOverAgent: Math.round(rawCpu / agentCpu * 1000) / 1000 },
      mainThreadBusy: { raw: round2(median(raw.map(r => r.mainThreadBusy))), agent: round2(median(agent.map(r => r.mainThreadBusy))) },
      scrapeMs: { raw: round2(rawScrape), agent: round2(agentScrape) },
      publisherCeilingReadingsPerSecond: Math.round(ceiling),
      publisherSecondsMedian: { raw: round2(median(raw.map(r => r.publisherMs)) / 1000), agent: round2(median(agent.map(r => r.publisherMs)) / 1000) }
    },
    memory: {
      agentPeakRssMiB1kKeys: round1(rss1k),
      agentPeakRssMiB10kKeys: round1(agentBig.peakRssMiB),
      rawPeakRssMiB1kKeys: round1(rawRss1k),
      agentIdleRssMiB: round1(median(agent.map(r => r.idleRssMiB))),
      rawIdleRssMiB: round1(median(raw.map(r => r.idleRssMiB))),
      rawPeakRssMiB10kKeys: round1(rawBigPeak),
      goalMiB10kKeys: RSS_GOAL_MIB,
      meetsGoal: agentBig.peakRssMiB <= RSS_GOAL_MIB,
      // Fresh processes left alone for IDLE_SETTLE_MS after their ready line, medians over rounds.
      idle: { ...idle, rounds: opts.idleRounds, goalOverRawMiB: IDLE_GOAL_MIB },
      run10k: {
        rounds: opts.bigRounds,
        readings: opts.bigReadings,
        keys: opts.bigKeys,
        agentReadingsPerSecond: Math.round(agentBigRate),
        rawReadingsPerSecond: Math.round(rawBigRate),
        ratio: round3(ratioBig),
        perRound: rawBigRuns.map((r, i) => ({
          raw: Math.round(r.rate.perSecond),
          agent: Math.round(agentBigRuns[i].rate.perSecond),
          ratio: round3(pairRatiosBig[i]),
          agentPeakRssMiB: round1(agentBigRuns[i].peakRssMiB),
          rawPeakRssMiB: round1(r.peakRssMiB)
        })),
        agentCpuUsPerReading: round2(median(agentBigRuns.map(r => r.cpuUsPerReading))),
        rawCpuUsPerReading: round2(median(rawBigRuns.map(r => r.cpuUsPerReading))),
        windowsEmitted: agentBig.checks.windowsEmitted,
        openWindows: agentBig.checks.openWindows
      }
    },
    checks: { agent1k: agent.map(r => r.checks), agent10k: agentBig.checks },
    warnings,
    profiles: Object.fromEntries(profiles.map(p => [p.run.kind, { cpuUsPerReading: round2(p.run.cpuUsPerReading), ...p.summary }]))
  }
  const printProfiles = (): void => {
    for (const { run, summary: s } of profiles) {
      // Shares of busy samples times the run's CPU per reading: approximate (GC threads count in the
      // CPU time, not in the samples), but it puts both processes on one scale.
      const us = (p: number): string => `${(p / 100 * run.cpuUsPerReading).toFixed(2)} µs`
      log(`\n${run.kind} CPU profile, from its first reading to its last (${s.busySamples} busy samples, % of those; idle ${s.idleShare}% of the window; ${run.cpuUsPerReading.toFixed(1)} cpu µs/reading in this run; ${s.file})`)
      log('  by part (what is on the stack), share and cpu per reading:')
      for (const b of s.breakdown) log(`    ${b.pct.toFixed(1).padStart(5)}%  ${us(b.pct).padStart(8)}  ${b.part}`)
      log('  self time, top functions:')
      for (const f of s.selfTop.slice(0, run.kind === 'raw' ? 10 : 20)) log(`    ${f.pct.toFixed(1).padStart(5)}%  ${f.fn}  ${f.where}`)
      if (run.kind === 'raw') continue
      log('  self time by package / file:')
      for (const a of s.byArea) log(`    ${a.pct.toFixed(1).padStart(5)}%  ${a.area}`)
      log('  inclusive time, project functions:')
      for (const f of s.inclusiveTop) log(`    ${f.pct.toFixed(1).padStart(5)}%  ${f.fn}  ${f.where}`)
    }
  }

  const rows: Array<[string, string]> = [
    ...(opts.agentNodeArgs.length > 0 ? [['agent node args', opts.agentNodeArgs.join(' ')] as [string, string]] : []),
    ['rounds', `${opts.rounds} x (raw, agent), ${opts.readings.toLocaleString('en-US')} readings, ${opts.keys.toLocaleString('en-US')} keys, medians`],
    ['readings/s raw', `${fmtRate(rawRate)}  (the publisher alone: ${fmtRate(ceiling)})`],
    ['readings/s agent', fmtRate(agentRate)],
    ['agent/raw', `${pct(ratio)}  (per round ${pairRatios.map(pct).join(' ')})`],
    ['cpu µs/reading', `${agentCpu.toFixed(1)} agent, ${rawCpu.toFixed(1)} raw: raw/agent ${pct(rawCpu / agentCpu)}  ` +
      `(main thread busy ${pct(results.throughput.mainThreadBusy.agent)} agent, ${pct(results.throughput.mainThreadBusy.raw)} raw)`],
    ['RSS agent, 1k keys', `${rss1k.toFixed(1)} MiB  (raw broker ${rawRss1k.toFixed(1)} MiB; before the run, publisher connected: agent ${results.memory.agentIdleRssMiB}, raw ${results.memory.rawIdleRssMiB} MiB)`],
    ['agent/raw, 10k keys', `${pct(ratioBig)}  (${fmtRate(agentBigRate)} agent, ${fmtRate(rawBigRate)} raw readings/s; per round ${pairRatiosBig.map(pct).join(' ')})`],
    ['RSS agent, 10k keys', `${agentBig.peakRssMiB.toFixed(1)} MiB median peak  (rounds ${agentBigRuns.map(r => r.peakRssMiB.toFixed(1)).join(' ')}; raw broker ${rawBigPeak.toFixed(1)} MiB; ` +
      `agent V8 heap at the end ${agentBig.checks.heapUsedMiB} MiB used of ${agentBig.checks.heapTotalMiB})`],
    ['RSS idle', `agent ${idle.agentRssMiB} MiB (peak ${idle.agentPeakRssMiB}), bare aedes ${idle.rawRssMiB} MiB (peak ${idle.rawPeakRssMiB}): ${idleOver >= 0 ? '+' : ''}${idleOver.toFixed(1)} MiB` +
      `${compiled ? '' : '  (agent from its .ts sources: npm run build failed)'}`],
    ['scrape cost', `/metrics ${agentScrape.toFixed(2)} ms agent, ${rawScrape.toFixed(2)} ms raw, every ${opts.pollMs} ms`],
    ['aim: ingest >= 80%', `${aims.ingest1k.met && aims.ingest10k.met ? 'met' : 'NOT met'}: ${pct(ratio)} with 1k keys, ${pct(ratioBig)} with 10k keys (medians over rounds)`],
    ['aim: footprint', `${aims.peakRss10k.met && aims.idleOverBare.met ? 'met' : 'NOT met'}: 10k-key peak ${agentBig.peakRssMiB.toFixed(1)} MiB (<= ${RSS_GOAL_MIB}: ${aims.peakRss10k.met ? 'met' : 'NOT met'}); ` +
      `idle agent ${idleOver >= 0 ? '+' : ''}${idleOver.toFixed(1)} MiB over bare aedes (<= ${IDLE_GOAL_MIB}: ${aims.idleOverBare.met ? 'met' : 'NOT met'})`]
  ]
  return { results, rows, printProfiles }
}

function pct (x: number): string {
  return `${(x * 100).toFixed(1)}%`
}

function round1 (x: number): number {
  return Math.round(x * 10) / 10
}

function round3 (x: number): number {
  return Math.round(x * 1000) / 1000
}

function round2 (x: number): number {
  return Math.round(x * 100) / 100
}

try {
  await main()
} catch (err) {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
} finally {
  await stopAll()
  if (workDir !== '') rmSync(workDir, { recursive: true, force: true })
}

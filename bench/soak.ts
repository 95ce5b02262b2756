/**
 * The soak part of the bench (`node bench/run.ts --only soak [--long 1h]`, default 10m): a mesh of real
 * processes, two `fogmesh edge`s (embedded brokers) → one `fogmesh fog` (its embedded store) → `fogmesh
 * cloud`, fed by the streaming simulator (`fogmesh sim`, its own process) at 10,000 readings/s in all,
 * in real time, for the whole run, with its ground truth, on the edge part's pipeline
 * (bench/peers/workload.ts). Every node runs with a short --retention (a twelfth of the run, from 1 to
 * 5 minutes), so that retention applies well within the run.
 *
 * Each sample (every minute, or every sixtieth of a shorter run, at least every 5 s) records every
 * node's RSS and peak RSS (VmHWM), its CPU time, the size of its data dir, and the readings the edges
 * accepted. Meanwhile the cloud's final results are read every 10 s (the windows of the last 60 s: at
 * 1,000 keys, with the open ones, within one read's limit of 10,000 results; and inside the retention),
 * so that at the end every window of the run can be compared with the truth:
 * none missing, none extra, every count and value as the truth says (simulators/verify.ts).
 *
 * Printed: RSS in the last third of the run against the sixth to the half (for 1h: the last 20 minutes
 * against minutes 10–30; goal within 5%), the data dirs' size over the second half (after retention:
 * goal flat), the readings sustained per second, and loss (goal zero, nothing doubled). The bench asserts
 * nothing: a goal not met is a warning.
 */
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { formatDuration } from '../core/duration.ts'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { ServedResult } from '../simulators/verify.ts'
import { compareResults } from '../simulators/verify.ts'
import type { TruthFile } from '../simulators/truth.ts'
import { cpuTimes, getText, metricValue, peakRssMiB, REPO_DIR, rssMiB, spawnNode, stopChild } from './lib.ts'
import type { Child } from './lib.ts'
import { edgePipelinesYaml } from './peers/workload.ts'

const PIPELINE = 'soak'
const DEVICES = 1_000
/** Readings per second per device: 10,000 in all. */
const DEVICE_RATE = 10
const EDGES = 2
/** How often the cloud's final results are read, and how far back each read goes (ms). */
const COLLECT_EVERY = 10_000
const COLLECT_SPAN = 60_000
/** RSS may differ this much between the two spans compared. */
const RSS_GOAL = 0.05
/** Longest wait, once the simulator is done, for the last windows to be final at the cloud. */
const DRAIN_MS = 90_000

export interface SoakOptions {
  workDir: string
  durationMs: number
  log: (line: string) => void
}

interface Node {
  name: string
  child: Child
  http: string
  mqtt?: string
  dataDir: string
}

export interface SoakSample {
  seconds: number
  /** Per node, MiB. */
  rssMiB: Record<string, number>
  hwmMiB: Record<string, number>
  /** Per node: CPU time so far (all threads), s. */
  cpuSeconds: Record<string, number>
  /** Per node: bytes in its data dir. */
  diskBytes: Record<string, number>
  /** Readings the edges accepted so far. */
  readings: number
  /** Since the previous sample. */
  readingsPerSecond: number
}

interface Span {
  fromSeconds: number
  toSeconds: number
}

export interface SoakResults {
  date: string
  durationSeconds: number
  runSeconds: number
  load: string
  retentionSeconds: number
  sampleEverySeconds: number
  samples: SoakSample[]
  rss: {
    early: Span
    late: Span
    /** Per node: mean RSS over each span, MiB, and late / early - 1. */
    nodes: Record<string, { earlyMiB: number, lateMiB: number, change: number, peakMiB: number }>
    goal: number
    meetsGoal: boolean
  }
  disk: {
    /** The second half: after retention has applied. */
    from: Span
    /** Sum over the data dirs, bytes. */
    atFrom: number
    atEnd: number
    max: number
    change: number
  }
  rate: {
    offered: number
    /** What the simulator published over its wall-clock time. */
    published: number
    publishedReadings: number
    publishSeconds: number
    /** Per sample interval (edges' accepted readings). */
    minPerSecond: number
    medianPerSecond: number
  }
  exactness: {
    truthWindows: number
    servedWindows: number
    missing: number
    extra: number
    /** Windows whose count is below the truth's, and the readings they lack. */
    short: number
    readingsLost: number
    /** Windows whose count is above the truth's, and the readings too many. */
    doubled: number
    readingsDoubled: number
    truthReadings: number
    acceptedAtEdges: number
    lateOrRejectedAtEdges: number
    /** Every other difference (values, revisions, sources), the first few. */
    problems: number
    firstProblems: string[]
    exact: boolean
  }
  warnings: string[]
}

/** Bytes of every file under a directory (0 if it does not exist yet). */
function dirBytes (dir: string): number {
  let total = 0
  let entries
  try {
    entries = readdirSync(dir, { withFileTypes: true })
  } catch {
    return 0
  }
  for (const e of entries) {
    const path = join(dir, e.name)
    try {
      total += e.isDirectory() ? dirBytes(path) : statSync(path).size
    } catch {}
  }
  return total
}

function round1 (x: number): number {
  return Math.round(x * 10) / 10
}

async function startNodes (dir: string, retention: string): Promise<Node[]> {
  const bin = join(REPO_DIR, 'bin', 'fogmesh.js')
  const pipelines = join(dir, 'pipelines.yaml')
  const common = (id: string) => ['--id', id, '--http-port', '0', '--data-dir', join(dir, id), '--retention', retention, '--log-level', 'warn']
  const ready = /^ready \w+ \S+ http=(\S+)(?: mqtt=(\S+))?/
  const start = async (name: string, args: string[]): Promise<Node> => {
    const child = spawnNode(name, bin, args)
    const m = await child.line(ready, 30_000)
    return { name, child, http: m[1], mqtt: m[2], dataDir: join(dir, `soak-${name}`) }
  }
  const cloud = await start('cloud', ['cloud', ...common('soak-cloud')])
  const fog = await start('fog', ['fog', ...common('soak-fog'), '--pipelines', pipelines, '--cloud', cloud.http])
  const edges = await Promise.all(Array.from({ length: EDGES }, async (_, i) => await start(`edge-${i + 1}`,
    ['edge', ...common(`soak-edge-${i + 1}`), '--pipelines', pipelines, '--mqtt-port', '0', '--fog', fog.http])))
  return [...edges, fog, cloud]
}

function mean (xs: number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length
}

export async function runSoakBench (o: SoakOptions): Promise<SoakResults> {
  const began = performance.now()
  const D = o.durationMs
  const retentionMs = Math.min(300_000, Math.max(60_000, Math.round(D / 12 / 1000) * 1000))
  const sampleEvery = Math.min(60_000, Math.max(5_000, Math.round(D / 60)))
  const dir = join(o.workDir, 'soak')
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'pipelines.yaml'), edgePipelinesYaml(PIPELINE))
  const specs = await loadPipelinesFile(join(dir, 'pipelines.yaml'))
  const truthFile = join(dir, 'truth.json')
  const offered = DEVICES * DEVICE_RATE
  const load = `${EDGES} edges -> fog -> cloud, the simulator at ${offered.toLocaleString('en-US')} readings/s in real time (${DEVICES} devices at ${DEVICE_RATE}/s, QoS 1), ` +
    '10 s tumbling windows, six aggregates'
  o.log(`soak: ${formatDuration(D)} of ${load}; --retention ${formatDuration(retentionMs)} on every node; sampled every ${sampleEvery / 1000} s`)
  const warnings: string[] = []
  const nodes = await startNodes(dir, `${retentionMs / 1000}s`)
  let sim: Child | undefined
  let stopping = false
  try {
    const edges = nodes.filter(n => n.mqtt !== undefined)
    const cloud = nodes.find(n => n.name === 'cloud')!
    const accepted = async (): Promise<{ accepted: number, lateOrRejected: number }> => {
      const texts = await Promise.all(edges.map(async e => await getText(`${e.http}/metrics`)))
      const sum = (name: string, labels = '') => texts.reduce((a, t) => a + (metricValue(t, name, labels) ?? 0), 0)
      const p = `pipeline="${PIPELINE}"`
      return { accepted: sum('fogmesh_readings_total', p), lateOrRejected: sum('fogmesh_readings_late_total', p) + sum('fogmesh_readings_rejected_total') }
    }

    // The cloud's final results, kept as they are read (the latest revision of each window).
    const served = new Map<string, ServedResult>()
    const collect = async (): Promise<void> => {
      const now = Date.now()
      const text = await getText(`${cloud.http}/v1/aggregates/${PIPELINE}?from=${now - COLLECT_SPAN}&to=${now + 60_000}&limit=10000`, 20_000)
      const results = (JSON.parse(text) as { results: ServedResult[] }).results
      if (results.length >= 10_000) warnings.push(`soak: a read of the cloud's results hit the limit of 10000 at ${new Date(now).toISOString()}`)
      for (const r of results) {
        if (!r.final) continue
        const id = `${r.key}@${r.start}`
        const had = served.get(id)
        if (had === undefined || had.revision < r.revision) served.set(id, r)
      }
    }

    const t0 = performance.now()
    const seconds = () => Math.round((performance.now() - t0) / 1000)
    const samples: SoakSample[] = []
    let lastAccepted = 0
    let lastAt = t0
    const sample = async (): Promise<SoakSample> => {
      const at = performance.now()
      const { accepted: readings } = await accepted()
      const s: SoakSample = {
        seconds: seconds(),
        rssMiB: {},
        hwmMiB: {},
        cpuSeconds: {},
        diskBytes: {},
        readings,
        readingsPerSecond: at > lastAt ? Math.round((readings - lastAccepted) / (at - lastAt) * 1000) : 0
      }
      lastAccepted = readings
      lastAt = at
      for (const n of nodes) {
        s.rssMiB[n.name] = round1(rssMiB(n.child.pid))
        s.hwmMiB[n.name] = round1(peakRssMiB(n.child.pid))
        s.cpuSeconds[n.name] = round1(cpuTimes(n.child.pid).process / 1000)
        s.diskBytes[n.name] = dirBytes(n.dataDir)
      }
      samples.push(s)
      const disk = Object.values(s.diskBytes).reduce((a, b) => a + b, 0)
      o.log(`  ${String(s.seconds).padStart(5)} s: ${s.readingsPerSecond.toLocaleString('en-US').padStart(6)} readings/s; RSS ` +
        nodes.map(n => `${n.name} ${s.rssMiB[n.name].toFixed(0)}`).join(', ') + ` MiB; data dirs ${(disk / 1048576).toFixed(1)} MiB`)
      return s
    }
    await sample()

    sim = spawnNode('sim', join(REPO_DIR, 'bin', 'fogmesh.js'), [
      'sim', '--devices', String(DEVICES), '--rate', String(DEVICE_RATE), '--duration', `${Math.round(D / 1000)}s`, '--seed', '7',
      ...edges.flatMap(e => ['--mqtt', e.mqtt!]), '--pipelines', join(dir, 'pipelines.yaml'), '--truth', truthFile
    ])
    const simChild = sim
    const published = simChild.line(/^fogmesh sim: published (\d+) messages in ([\d.]+)s/, D + 600_000)
    published.catch(() => {})
    const collecting = (async () => {
      while (!stopping) {
        await sleep(COLLECT_EVERY)
        if (stopping) break
        try {
          await collect()
        } catch (err) {
          warnings.push(`soak: reading the cloud's results: ${(err as Error).message}`)
        }
      }
    })()
    try {
      let next = t0 + sampleEvery
      while (simChild.isAlive()) {
        const wait = next - performance.now()
        if (wait > 0) await Promise.race([sleep(wait), simChild.exited])
        if (!simChild.isAlive()) break
        await sample()
        next += sampleEvery
      }
      const code = await simChild.exited
      if (code !== 0) throw new Error(`the simulator exited with ${code}\n${simChild.stderrTail()}`)
      const [, count, secs] = await published
      const runSeconds = seconds()
      // The last windows close by idle at the edges; read until the cloud has every window of the truth.
      const truth = JSON.parse(readFileSync(truthFile, 'utf8')) as TruthFile
      const want = truth.pipelines[PIPELINE].merged!.results
      const drainFrom = performance.now()
      while (performance.now() - drainFrom < DRAIN_MS) {
        await collect()
        if (want.every(w => served.has(`${w.key}@${w.start}`))) break
        await sleep(2_000)
      }
      stopping = true
      await collecting
      // After the drain: the data dirs once everything is final (outside the spans compared).
      await sample()
      const edgeCounts = await accepted()

      // Exactness: every window of the truth, at the cloud, with the truth's values.
      const truthN = new Map(want.map(w => [`${w.key}@${w.start}`, Number(w.values.n)]))
      let missing = 0
      let short = 0
      let lost = 0
      let doubled = 0
      let extraReadings = 0
      for (const [id, n] of truthN) {
        const got = served.get(id)
        if (got === undefined) {
          missing++
          lost += n
          continue
        }
        const m = Number(got.values.n)
        if (m < n) { short++; lost += n - m }
        if (m > n) { doubled++; extraReadings += m - n }
      }
      const extra = [...served.keys()].filter(id => !truthN.has(id)).length
      const problems = compareResults(specs[0], [...served.values()], want)
      const truthReadings = [...truthN.values()].reduce((a, b) => a + b, 0)
      const exact = problems.length === 0 && edgeCounts.accepted === Number(count)

      // RSS, disk and rate over proportional spans of the run.
      const within = (sp: Span) => samples.filter(s => s.seconds >= sp.fromSeconds && s.seconds <= sp.toSeconds)
      const runS = D / 1000
      const early: Span = { fromSeconds: Math.round(runS / 6), toSeconds: Math.round(runS / 2) }
      const late: Span = { fromSeconds: Math.round(runS * 2 / 3), toSeconds: Math.round(runS) }
      const rssNodes: SoakResults['rss']['nodes'] = {}
      for (const n of nodes) {
        const e = mean(within(early).map(s => s.rssMiB[n.name]))
        const l = mean(within(late).map(s => s.rssMiB[n.name]))
        rssNodes[n.name] = { earlyMiB: round1(e), lateMiB: round1(l), change: Math.round((l / e - 1) * 1000) / 1000, peakMiB: Math.max(...samples.map(s => s.hwmMiB[n.name])) }
      }
      const meetsRss = Object.values(rssNodes).every(r => Math.abs(r.change) <= RSS_GOAL)
      const diskOf = (s: SoakSample) => Object.values(s.diskBytes).reduce((a, b) => a + b, 0)
      const second = { fromSeconds: Math.round(runS / 2), toSeconds: Math.round(runS) }
      const secondHalf = within(second)
      const diskFrom = secondHalf.length > 0 ? diskOf(secondHalf[0]) : NaN
      const diskEnd = secondHalf.length > 0 ? diskOf(secondHalf[secondHalf.length - 1]) : NaN
      const rates = samples.slice(1).filter(s => s.seconds <= runS).map(s => s.readingsPerSecond).sort((a, b) => a - b)
      const publishRate = Number(count) / Number(secs)

      if (!meetsRss) warnings.push(`soak: RSS moved more than ${RSS_GOAL * 100}% between the two spans: ${nodes.map(n => `${n.name} ${pctSigned(rssNodes[n.name].change)}`).join(', ')}`)
      if (!exact) warnings.push(`soak: not exact: ${missing} windows missing, ${short} short (${lost} readings), ${doubled} doubled (${extraReadings} readings), ${extra} extra, ${problems.length} differences in all`)
      if (publishRate < offered * 0.99) warnings.push(`soak: the simulator sustained ${Math.round(publishRate)} readings/s, not ${offered}`)
      for (const w of truth.warnings.slice(0, 5)) warnings.push(`soak: truth: ${w}`)

      return {
        date: new Date().toISOString(),
        durationSeconds: Math.round((performance.now() - began) / 100) / 10,
        runSeconds,
        load,
        retentionSeconds: retentionMs / 1000,
        sampleEverySeconds: sampleEvery / 1000,
        samples,
        rss: { early, late, nodes: rssNodes, goal: RSS_GOAL, meetsGoal: meetsRss },
        disk: {
          from: second,
          atFrom: diskFrom,
          atEnd: diskEnd,
          max: Math.max(...secondHalf.map(diskOf)),
          change: Math.round((diskEnd / diskFrom - 1) * 1000) / 1000
        },
        rate: {
          offered,
          published: Math.round(publishRate),
          publishedReadings: Number(count),
          publishSeconds: Number(secs),
          minPerSecond: rates[0] ?? 0,
          medianPerSecond: rates[rates.length >> 1] ?? 0
        },
        exactness: {
          truthWindows: want.length,
          servedWindows: served.size,
          missing,
          extra,
          short,
          readingsLost: lost,
          doubled,
          readingsDoubled: extraReadings,
          truthReadings,
          acceptedAtEdges: edgeCounts.accepted,
          lateOrRejectedAtEdges: edgeCounts.lateOrRejected,
          problems: problems.length,
          firstProblems: problems.slice(0, 10),
          exact
        },
        warnings
      }
    } finally {
      stopping = true
      await collecting
    }
  } finally {
    stopping = true
    if (sim !== undefined) await stopChild(sim)
    // Edges first, as in a real stop; then the tiers above them.
    await Promise.all(nodes.filter(n => n.mqtt !== undefined).map(async n => await stopChild(n.child)))
    for (const n of nodes.filter(n => n.mqtt === undefined)) await stopChild(n.child)
  }
}

function pctSigned (x: number): string {
  return `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)}%`
}

function mibText (bytes: number): string {
  return (bytes / 1048576).toFixed(1)
}

function minutes (s: number): string {
  return s % 60 === 0 ? `${s / 60} min` : `${s} s`
}

/** Rows for the bench's results table. */
export function soakRows (r: SoakResults): Array<[string, string]> {
  const x = r.exactness
  return [
    ['soak', `${formatDuration(r.runSeconds * 1000)} of ${r.load}; --retention ${r.retentionSeconds} s`],
    ['soak readings/s', `${r.rate.published.toLocaleString('en-US')} published on average (offered ${r.rate.offered.toLocaleString('en-US')}); ` +
      `accepted per sample: median ${r.rate.medianPerSecond.toLocaleString('en-US')}, lowest ${r.rate.minPerSecond.toLocaleString('en-US')}`],
    [`soak RSS ${minutes(r.rss.late.fromSeconds)}-${minutes(r.rss.late.toSeconds)} vs ${minutes(r.rss.early.fromSeconds)}-${minutes(r.rss.early.toSeconds)}`,
      Object.entries(r.rss.nodes).map(([name, n]) => `${name} ${n.lateMiB} vs ${n.earlyMiB} MiB (${pctSigned(n.change)}, peak ${n.peakMiB.toFixed(0)})`).join('; ') +
      `  (goal within ${r.rss.goal * 100}%: ${r.rss.meetsGoal ? 'met' : 'NOT met'})`],
    ['soak data dirs', `${mibText(r.disk.atFrom)} MiB at ${minutes(r.disk.from.fromSeconds)}, ${mibText(r.disk.atEnd)} MiB at the end (${pctSigned(r.disk.change)}), ` +
      `max ${mibText(r.disk.max)} MiB in the second half`],
    ['soak exactness', `${x.exact ? 'exact' : 'NOT exact'}: ${x.servedWindows} of ${x.truthWindows} windows final at the cloud, ${x.missing} missing, ${x.extra} extra; ` +
      `${x.readingsLost} readings lost, ${x.readingsDoubled} doubled, of ${x.truthReadings}; edges accepted ${x.acceptedAtEdges} ` +
      `(${x.lateOrRejectedAtEdges} late or rejected); ${x.problems} differences from the truth`]
  ]
}

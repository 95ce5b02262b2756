/**
 * The `sinks` part of the bench: each sink type (postgres, influxdb v1, mqtt through Mosquitto, webhook
 * to a recording server), its target started here on loopback, driven through the node's own delivery
 * (server/sinks/delivery.ts: the durable queue in a data dir, the delivery loop, batches, retries).
 *
 * - Paced runs at the demo's rate of final windows and at 10x it. The demo (cli/demo.ts: 5 rooms,
 *   examples/pipelines.yaml) closes its windows in bursts: every 10 s, room-temp's 5 rooms and
 *   building-humidity's one key (device-sessions close only after a 5 s gap in their readings, rarely,
 *   and are left out). 10x is ten times the keys: the same bursts, ten times as large. Every sink gets
 *   every result, as a node with the four sinks would; delivered/offered counts what each sink had
 *   acknowledged by the end of the run (1.00: it keeps up).
 * - Lag: from a result's offer (appended to the queues, as a commit does) to its target's
 *   acknowledgement (the sink's send resolved: the upsert committed, the write or POST answered 2xx,
 *   the PUBACK in), read by polling the delivered counts every millisecond; median and nearest-rank p99.
 * - Baseline for the lag, in the same run: the same bursts sent by the sink straight to its target
 *   (its send, in its batch size, without the queue and the loop); queue/direct is what the durable
 *   queue (an fsync'd append, and one per batch delivered) and the loop add.
 * - Max sustained rate: a backlog offered at once and drained, one sink at a time: results per second
 *   with full batches, which is the most a sink takes for long; against the 10x rate, the headroom.
 * The recording server runs in this process, so the webhook's figures include its share of the CPU.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { silentLogger } from '../server/shell/log.ts'
import { Metrics } from '../server/shell/metrics.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { PeerClient } from '../server/shell/peer-client.ts'
import { Sinks } from '../server/sinks/delivery.ts'
import { parseSinks, SINKS } from '../server/sinks/index.ts'
import { startInflux } from '../test/helpers/influxdb.ts'
import { startMosquitto } from '../test/helpers/mosquitto.ts'
import { startPostgres } from '../test/helpers/postgres.ts'
import { startRecorder } from '../test/helpers/recorder.ts'
import { distribution } from './cluster-workload.ts'
import type { Distribution } from './cluster-workload.ts'
import { REPO_DIR } from './lib.ts'

/** `fogmesh demo --rooms` default (cli/demo.ts). */
const DEMO_ROOMS = 5
const DEMO_PIPELINES = join(REPO_DIR, 'examples', 'pipelines.yaml')
/** How long the paced runs wait at most for a queue to drain after their last burst. */
const DRAIN_MS = 60_000

export interface DemoRate {
  /** Final windows per second. */
  perSecond: number
  /** Windows closing together at each period's end. */
  burst: number
  periodMs: number
  /** How it was counted, per pipeline. */
  pipelines: Array<{ name: string, keys: number, everyMs: number }>
}

/** The demo's final windows: per pipeline of time windows, its keys every window period (its hop). */
export function demoRate (specs: PipelineSpec[], rooms = DEMO_ROOMS): DemoRate {
  const pipelines: DemoRate['pipelines'] = []
  for (const s of specs) {
    const w = s.window
    const everyMs = w.kind === 'tumbling' ? w.size : w.kind === 'hopping' ? w.every : undefined
    if (everyMs === undefined) continue
    // The demo's readings carry room and device; a pipeline keyed by room has one key per room.
    const keys = s.key.length === 0 ? 1 : s.key.every(k => k === 'room') ? rooms : NaN
    if (!Number.isFinite(keys)) throw new Error(`bench sinks: cannot count the keys of ${s.name} (key ${s.key.join('/')})`)
    pipelines.push({ name: s.name, keys, everyMs })
  }
  const periodMs = Math.min(...pipelines.map(p => p.everyMs))
  const perSecond = pipelines.reduce((n, p) => n + p.keys * 1000 / p.everyMs, 0)
  return { perSecond, burst: Math.round(perSecond * periodMs / 1000), periodMs, pipelines }
}

export interface PacedFigures {
  offeredPerSecond: number
  deliveredPerSecond: number
  /** delivered / offered during the run. */
  ratio: number
  lagMs: Distribution
  /** The same bursts sent straight to the target (no queue). */
  directLagMs: Distribution
  /** lag median / direct lag median. */
  queueFactor: number
}

export interface SinkFigures {
  type: string
  at1x: PacedFigures
  at10x: PacedFigures
  /** Results per second draining a backlog of `backlog`. */
  maxPerSecond: number
  backlog: number
  /** maxPerSecond / the 10x rate. */
  headroomAt10x: number
}

export interface SinksBenchResult {
  demo: DemoRate
  bursts: number
  sinks: SinkFigures[]
  warnings: string[]
}

interface Target {
  type: string
  config: Record<string, unknown>
  /** Results offered at once for the max-rate run (webhook: one POST per result). */
  backlog: number
  stop: () => Promise<void>
}

let sequence = 0

/** Distinct windows like room-temp's, `n` at a time, each burst one window later. */
function results (n: number, burst: number): WindowResult[] {
  const start = Date.UTC(2026, 0, 1) + burst * 10_000
  return Array.from({ length: n }, (_, i) => {
    const v = 20 + (sequence++ % 100) / 10
    return { pipeline: 'room-temp', key: `r${i}`, start, end: start + 10_000, final: true, revision: 0, sources: 2, values: { n: 40, mean: v, low: v - 2, high: v + 2, p95: v + 1.5, devices: 8 } }
  })
}

/** Acknowledgements of each sink of `sinks`, by polling its delivered count every millisecond. */
class AckWatch {
  readonly #sinks: Sinks
  readonly #offered: number[] = []
  readonly #acked: number[]
  readonly lags: number[][]
  readonly #timer: NodeJS.Timeout

  constructor (sinks: Sinks) {
    this.#sinks = sinks
    const n = sinks.size
    this.#acked = new Array<number>(n).fill(0)
    this.lags = Array.from({ length: n }, () => [])
    this.#timer = setInterval(() => { this.poll() }, 1)
  }

  offer (rs: WindowResult[]): void {
    const now = performance.now()
    this.#sinks.append(rs)
    for (let i = 0; i < rs.length; i++) this.#offered.push(now)
  }

  poll (): void {
    const now = performance.now()
    this.#sinks.status().forEach((s, i) => {
      while (this.#acked[i] < s.delivered && this.#acked[i] < this.#offered.length) this.lags[i].push(now - this.#offered[this.#acked[i]++])
    })
  }

  acked (i: number): number {
    return this.#acked[i]
  }

  get offered (): number {
    return this.#offered.length
  }

  close (): void {
    clearInterval(this.#timer)
  }
}

/** Lags of `bursts` bursts of `burst` results sent by the sink itself, batch after batch, with no queue. */
async function directLags (target: Target, burst: number, bursts: number): Promise<number[]> {
  const [config] = parseSinks([{ name: target.type, ...target.config }])
  const def = SINKS.get(config.type)!
  const client = new PeerClient()
  const sink = def.create(config.settings, { name: config.name, log: silentLogger, timeout: config.timeout, client, tls: {} })
  const signal = new AbortController().signal
  const lags: number[] = []
  try {
    // Connections (and postgres's CREATE TABLE IF NOT EXISTS) before the clock runs, as the queue's sink has them.
    await sink.send(results(1, 3_000_000), signal)
    for (let b = 0; b < bursts; b++) {
      const rs = results(burst, 2_000_000 + b)
      const t0 = performance.now()
      for (let i = 0; i < rs.length; i += def.batch) {
        const batch = rs.slice(i, i + def.batch)
        await sink.send(batch, signal)
        const lag = performance.now() - t0
        for (let j = 0; j < batch.length; j++) lags.push(lag)
      }
      await sleep(100)
    }
    return lags
  } finally {
    await sink.close()
    client.close()
  }
}

async function sinksOver (targets: Target[], dataDir: string): Promise<Sinks> {
  const sinks = new Sinks(parseSinks(targets.map(t => ({ name: t.type, ...t.config, 'retry-max': '1s' }))), { dataDir, log: silentLogger, metrics: new Metrics() })
  sinks.start()
  return sinks
}

/** Every sink at once, `bursts` bursts of `burst` results every `periodMs`. */
async function paced (targets: Target[], dataDir: string, burst: number, periodMs: number, bursts: number): Promise<PacedFigures[]> {
  const sinks = await sinksOver(targets, dataDir)
  const watch = new AckWatch(sinks)
  try {
    const t0 = performance.now()
    for (let b = 0; b < bursts; b++) {
      await sleep(Math.max(0, t0 + b * periodMs - performance.now()))
      watch.offer(results(burst, b))
    }
    await sleep(Math.max(0, t0 + bursts * periodMs - performance.now()))
    watch.poll()
    const seconds = bursts * periodMs / 1000
    const delivered = targets.map((_, i) => watch.acked(i))
    const deadline = performance.now() + DRAIN_MS
    while (targets.some((_, i) => watch.acked(i) < watch.offered) && performance.now() < deadline) await sleep(20)
    const figures: PacedFigures[] = []
    for (const [i, t] of targets.entries()) {
      const lagMs = distribution(watch.lags[i])
      const directLagMs = distribution(await directLags(t, burst, bursts))
      figures.push({
        offeredPerSecond: round2(watch.offered / seconds),
        deliveredPerSecond: round2(delivered[i] / seconds),
        ratio: round2(delivered[i] / watch.offered),
        lagMs,
        directLagMs,
        queueFactor: round2(lagMs.median / directLagMs.median)
      })
    }
    return figures
  } finally {
    watch.close()
    await sinks.stop()
  }
}

/** One sink alone: a backlog offered at once, results per second until its target has them all. */
async function drainRate (target: Target, dataDir: string): Promise<number> {
  const sinks = await sinksOver([target], dataDir)
  const watch = new AckWatch(sinks)
  try {
    const t0 = performance.now()
    for (let done = 0; done < target.backlog; done += 1000) watch.offer(results(Math.min(1000, target.backlog - done), 1_000_000 + done))
    while (watch.acked(0) < target.backlog) {
      if (performance.now() - t0 > 10 * DRAIN_MS) throw new Error(`${target.type}: ${watch.acked(0)} of ${target.backlog} delivered after ${10 * DRAIN_MS / 1000} s`)
      await sleep(5)
    }
    return Math.round(target.backlog / ((performance.now() - t0) / 1000))
  } finally {
    watch.close()
    await sinks.stop()
  }
}

async function startTargets (quick: boolean, warnings: string[], log: (line: string) => void): Promise<Target[]> {
  const targets: Target[] = []
  const big = quick ? 5_000 : 20_000
  const tryStart = async (type: string, start: () => Promise<Target>): Promise<void> => {
    try {
      targets.push(await start())
    } catch (err) {
      warnings.push(`sinks: ${type} skipped (${(err as Error).message})`)
      log(`sinks: ${type} skipped (${(err as Error).message})`)
    }
  }
  await tryStart('postgres', async () => {
    const pg = await startPostgres()
    return { type: 'postgres', config: { type: 'postgres', url: pg.url }, backlog: big, stop: pg.stop }
  })
  await tryStart('influxdb', async () => {
    const influx = await startInflux()
    await influx.query('CREATE DATABASE bench')
    return { type: 'influxdb', config: { type: 'influxdb', url: influx.url, database: 'bench' }, backlog: big, stop: influx.stop }
  })
  await tryStart('mqtt', async () => {
    const broker = await startMosquitto()
    return { type: 'mqtt', config: { type: 'mqtt', url: broker.url }, backlog: big, stop: broker.stop }
  })
  await tryStart('webhook', async () => {
    const hook = await startRecorder()
    return { type: 'webhook', config: { type: 'webhook', url: hook.url }, backlog: quick ? 2_000 : 5_000, stop: hook.close }
  })
  return targets
}

export async function runSinksBench (o: { workDir: string, quick: boolean, log: (line: string) => void }): Promise<SinksBenchResult> {
  const warnings: string[] = []
  const demo = demoRate(await loadPipelinesFile(DEMO_PIPELINES))
  const bursts = o.quick ? 3 : 12
  o.log(`sinks: the demo's final windows, ${round2(demo.perSecond)}/s (${demo.pipelines.map(p => `${p.name} ${p.keys} every ${p.everyMs / 1000} s`).join(', ')}); ` +
    `${bursts} bursts of ${demo.burst} (1x) and ${demo.burst * 10} (10x) every ${demo.periodMs / 1000} s`)
  const targets = await startTargets(o.quick, warnings, o.log)
  const dir = mkdtempSync(join(o.workDir, 'sinks-'))
  try {
    const at1x = await paced(targets, join(dir, '1x'), demo.burst, demo.periodMs, bursts)
    const at10x = await paced(targets, join(dir, '10x'), demo.burst * 10, demo.periodMs, bursts)
    const sinks: SinkFigures[] = []
    for (const [i, t] of targets.entries()) {
      const maxPerSecond = await drainRate(t, join(dir, `max-${t.type}`))
      const figures: SinkFigures = { type: t.type, at1x: at1x[i], at10x: at10x[i], maxPerSecond, backlog: t.backlog, headroomAt10x: Math.round(maxPerSecond / (demo.perSecond * 10)) }
      sinks.push(figures)
      o.log(`sinks: ${sinkLine(figures)}`)
    }
    return { demo: { ...demo, perSecond: round2(demo.perSecond) }, bursts, sinks, warnings }
  } finally {
    for (const t of targets) await t.stop().catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  }
}

function pacedCell (p: PacedFigures): string {
  return `${p.deliveredPerSecond}/${p.offeredPerSecond}/s (x${p.ratio.toFixed(2)}), lag ${p.lagMs.median}/${p.lagMs.p99} ms (direct ${p.directLagMs.median}/${p.directLagMs.p99} ms, x${p.queueFactor})`
}

function sinkLine (s: SinkFigures): string {
  return `${s.type}: 1x ${pacedCell(s.at1x)}; 10x ${pacedCell(s.at10x)}; max ${s.maxPerSecond}/s (x${s.headroomAt10x} the 10x rate)`
}

export function sinksRows (r: SinksBenchResult): Array<[string, string]> {
  return [
    ['sinks: demo rate', `${r.demo.perSecond} final windows/s (bursts of ${r.demo.burst} every ${r.demo.periodMs / 1000} s), 10x ${round2(r.demo.perSecond * 10)}/s; ` +
      `${r.bursts} bursts each; delivered/offered results/s, lag median/p99 offer -> acknowledged (sent straight to the target; queued/direct)`],
    ...r.sinks.map((s): [string, string] => [`sink ${s.type}`, `1x ${pacedCell(s.at1x)}; 10x ${pacedCell(s.at10x)}; max ${s.maxPerSecond}/s (x${s.headroomAt10x} the 10x rate)`])
  ]
}

function round2 (x: number): number {
  return Math.round(x * 100) / 100
}

/**
 * `runSimulator`: generate a seeded run, write its ground truth, publish it. Tests of the edge agent
 * call it directly; `fogmesh sim` (cli.ts) is a thin layer over it.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { formatDuration } from '../core/duration.ts'
import { compileTopicFilter } from '../core/topic.ts'
import { generate } from './generator.ts'
import type { GenerationStats, Generated, Message } from './generator.ts'
import { resolveSimOptions } from './options.ts'
import type { SimInput, SimOptions } from './options.ts'
import { connectBroker, disconnect, publishStream } from './publisher.ts'
import type { Connection } from './publisher.ts'
import { computeTruth } from './truth.ts'
import type { TruthFile } from './truth.ts'

export interface SimSummary {
  options: SimOptions
  /** Event-time origin, epoch ms. */
  origin: number
  /** Per broker (same order as options.mqtt), in publish order. */
  streams: Message[][]
  /** Messages per broker URL: published, or that would have been in a dry run. */
  published: Record<string, number>
  stats: GenerationStats
  /** Present when pipelines were given. */
  truth?: TruthFile
  /** Wall-clock time spent publishing, ms (0 in a dry run). */
  elapsedMs: number
  /** The one-line summary that was logged. */
  line: string
}

function serializableOptions (o: SimOptions): Record<string, unknown> {
  return {
    devices: o.devices,
    rooms: o.rooms,
    rate: o.rate,
    duration: o.duration,
    topic: o.topic,
    format: o.format,
    start: o.start ?? null,
    speed: o.speed,
    seed: o.seed,
    jitter: o.jitter,
    lateShare: o.lateShare,
    lateBy: o.lateBy,
    duplicateShare: o.duplicateShare,
    malformedShare: o.malformedShare,
    mqtt: o.mqtt,
    qos: o.qos,
    dryRun: o.dryRun
  }
}

function counts (o: SimOptions, gen: Generated): Record<string, number> {
  return Object.fromEntries(o.mqtt.map((url, i) => [url, gen.streams[i].length]))
}

/**
 * The truth assumes the agent closes windows only by watermark until the stream ends. In real time an
 * agent also closes them after `idle` without a reading, so flag pipelines whose readings come further
 * apart than that on the wall clock.
 */
function idleWarnings (o: SimOptions, gen: Generated): string[] {
  if (o.speed === 0 || o.pipelines === undefined) return []
  const out: string[] = []
  for (const p of o.pipelines) {
    const filter = compileTopicFilter(p.from)
    gen.streams.forEach((stream, i) => {
      let prev: number | undefined
      let worst = 0
      for (const m of stream) {
        if (filter.match(m.topic) === undefined) continue
        if (prev !== undefined) worst = Math.max(worst, (m.due - prev) / o.speed)
        prev = m.due
      }
      if (worst >= p.idle) {
        out.push(`pipeline ${p.name} on ${o.mqtt[i]}: readings up to ${Math.round(worst)} ms apart at speed ${o.speed}, ` +
          `not less than idle (${p.idle} ms): the agent may close windows early and the truth may not hold`)
      }
    })
  }
  return out
}

/** The truth of a generated run, ready to be written as JSON. */
export function buildTruthFile (o: SimOptions, gen: Generated): TruthFile {
  if (o.pipelines === undefined) throw new Error('buildTruthFile needs pipelines')
  const malformed: Record<string, number> = {}
  for (const [kind, n] of Object.entries(gen.stats.malformed)) malformed[kind] = n ?? 0
  return {
    version: 1,
    seed: o.seed,
    options: serializableOptions(o),
    origin: gen.origin,
    published: counts(o, gen),
    generated: { readings: gen.stats.readings, late: gen.stats.late, duplicates: gen.stats.duplicates, malformed },
    warnings: idleWarnings(o, gen),
    pipelines: computeTruth(o.pipelines, gen.streams, o.mqtt)
  }
}

function summaryLine (o: SimOptions, gen: Generated, elapsedMs: number): string {
  const s = gen.stats
  const malformed = Object.values(s.malformed).reduce((a, b) => a + (b ?? 0), 0)
  const perBroker = o.mqtt.map((url, i) => `${url} ${gen.streams[i].length}`).join(', ')
  const what = `${s.readings} readings (${s.late} late), ${s.duplicates} duplicates, ${malformed} malformed; ` +
    `${o.devices} devices, ${formatDuration(o.duration)} of event time from ${new Date(gen.origin).toISOString()}`
  if (o.dryRun) return `fogmesh sim: dry run, ${s.messages} messages (${perBroker}): ${what}`
  const secs = elapsedMs / 1000
  const rate = secs > 0 ? Math.round(s.messages / secs) : s.messages
  return `fogmesh sim: published ${s.messages} messages in ${secs.toFixed(2)}s (${rate} msg/s; ${perBroker}): ${what}`
}

async function connectAll (o: SimOptions): Promise<Connection[]> {
  const settled = await Promise.allSettled(o.mqtt.map((url, i) => connectBroker(url, i, o.signal)))
  const ok = settled.flatMap(r => r.status === 'fulfilled' ? [r.value] : [])
  const failed = settled.find(r => r.status === 'rejected')
  if (failed !== undefined) {
    await Promise.all(ok.map(c => disconnect(c, true)))
    throw failed.reason
  }
  return ok
}

export async function runSimulator (input: SimInput = {}): Promise<SimSummary> {
  const o = resolveSimOptions(input)
  // Connect before fixing the origin, so that in real time event time matches the wall clock.
  const connections = o.dryRun ? [] : await connectAll(o)
  try {
    const origin = o.start ?? Date.now()
    const gen = generate({ ...o, brokers: o.mqtt.length }, origin)
    let truth: TruthFile | undefined
    if (o.pipelines !== undefined) {
      truth = buildTruthFile(o, gen)
      for (const w of truth.warnings) o.log(`fogmesh sim: warning: ${w}`)
      if (o.truth !== undefined) {
        await mkdir(dirname(o.truth), { recursive: true })
        await writeFile(o.truth, JSON.stringify(truth, null, 2) + '\n')
      }
    }
    const began = Date.now()
    if (!o.dryRun) {
      // Without --start the origin is now, so event time follows the wall clock.
      const wallStart = o.start === undefined ? origin : began
      await Promise.all(connections.map((c, i) => publishStream(c, gen.streams[i], { qos: o.qos, speed: o.speed, origin, wallStart, signal: o.signal })))
      await Promise.all(connections.map(c => disconnect(c)))
    }
    const elapsedMs = o.dryRun ? 0 : Date.now() - began
    const line = summaryLine(o, gen, elapsedMs)
    o.log(line)
    return { options: o, origin, streams: gen.streams, published: counts(o, gen), stats: gen.stats, truth, elapsedMs, line }
  } catch (err) {
    await Promise.all(connections.map(c => disconnect(c, true)))
    throw err
  }
}

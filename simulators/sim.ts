/**
 * `runSimulator`: generate a seeded run, publish it, and compute its ground truth as it goes. Tests of
 * the edge agent call it directly; `fogmesh sim` (cli.ts) is a thin layer over it.
 *
 * Everything streams: messages come from the per-device generators in due order, each goes to the
 * oracle and to its broker (waiting for the broker when too many publishes are unacked). With
 * `collect: false` (the CLI's) nothing keeps them, and each window's results go to a file beside the
 * truth file as soon as they are final; once the last message is out, the truth file is assembled
 * from those files one result at a time (the same bytes as the truth in memory would give). So memory
 * depends on the open windows, not on the length of the run. With `collect: true` (the default, for
 * tests and small runs) messages and the truth are kept and returned.
 *
 * Each message's nominal arrival, which the oracle's idle and max-future decisions use, is when it is
 * scheduled on the wall clock: wallStart + (due − origin) / speed, where wallStart is when publishing
 * starts (in a dry run, when it would have). At speed 0 everything is due at once: at wallStart in a
 * dry run, when handed to the broker otherwise; idle never passes within such a run.
 */
import { mkdir, mkdtemp, rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import { formatDuration } from '../core/duration.ts'
import { emptyStats, messages } from './generator.ts'
import type { GenerationStats, Message } from './generator.ts'
import { resolveSimOptions } from './options.ts'
import type { SimInput, SimOptions } from './options.ts'
import { connectBroker, disconnect, scheduledAt, Sender } from './publisher.ts'
import type { Connection } from './publisher.ts'
import { Oracle, writeTruthFile } from './truth.ts'
import type { TruthFile } from './truth.ts'

export interface SimSummary {
  options: SimOptions
  /** Event-time origin, epoch ms. */
  origin: number
  /** Per broker (same order as options.mqtt), in publish order; empty lists with `collect: false`. */
  streams: Message[][]
  /** Messages per broker URL: published, or that would have been in a dry run. */
  published: Record<string, number>
  stats: GenerationStats
  /** Present when pipelines were given and `collect` is true (otherwise the results are only in the truth file). */
  truth?: TruthFile
  /** Wall-clock time spent publishing, ms (0 in a dry run). */
  elapsedMs: number
  /** The one-line summary that was logged. */
  line: string
}

/** Messages between two looks at the event loop in a dry run (signals, timers). */
const YIELD_EVERY = 4096

function serializableOptions (o: SimOptions): Record<string, unknown> {
  return {
    devices: o.devices,
    rooms: o.rooms,
    rate: o.rate.length === 1 ? o.rate[0] : o.rate,
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
    pauseShare: o.pauseShare,
    pauseAfter: o.pauseAfter,
    pauseFor: o.pauseFor,
    futureShare: o.futureShare,
    futureBy: o.futureBy,
    scenario: o.scenario ?? null,
    tolerance: o.tolerance,
    mqtt: o.mqtt,
    qos: o.qos,
    dryRun: o.dryRun
  }
}

function summaryLine (o: SimOptions, stats: GenerationStats, counts: number[], elapsedMs: number, ambiguities: number): string {
  const s = stats
  const malformed = Object.values(s.malformed).reduce((a, b) => a + (b ?? 0), 0)
  const perBroker = o.mqtt.map((url, i) => `${url} ${counts[i]}`).join(', ')
  const future = s.future > 0 ? `, ${s.future} dated ahead` : ''
  const doubts = ambiguities > 0 ? `; ${ambiguities} ambiguous readings (see the truth's warnings)` : ''
  const what = `${s.readings} readings (${s.late} late${future}), ${s.duplicates} duplicates, ${malformed} malformed; ` +
    `${o.devices} devices, ${formatDuration(o.duration)} of event time from ${new Date(o.start ?? 0).toISOString()}${doubts}`
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

/** Sleeps until `at` (epoch ms); rejects with the signal's reason when it aborts. */
async function sleepUntil (at: number, signal: AbortSignal | undefined): Promise<void> {
  const ms = at - Date.now()
  if (ms <= 0) return
  signal?.throwIfAborted()
  await new Promise<void>((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer)
      reject(signal?.reason)
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

export async function runSimulator (input: SimInput = {}): Promise<SimSummary> {
  const o = resolveSimOptions(input)
  // Connect before fixing the origin, so that in real time event time matches the wall clock.
  const connections = o.dryRun ? [] : await connectAll(o)
  const senders = connections.map(c => new Sender(c, o.qos, o.signal))
  let spill: string | undefined
  let oracle: Oracle | undefined
  try {
    const origin = o.start ?? Date.now()
    // Without --start the origin is now, so event time follows the wall clock.
    const wallStart = o.start === undefined ? origin : Date.now()
    const schedule = { speed: o.speed, origin, wallStart }
    const brokers = o.mqtt.length
    if (o.truth !== undefined) await mkdir(dirname(o.truth), { recursive: true })
    // Not collected, results go to files beside the truth file as they are final, and from there into it.
    if (o.pipelines !== undefined && !o.collect && o.truth !== undefined) spill = await mkdtemp(join(dirname(o.truth), `.${basename(o.truth)}-`))
    if (o.pipelines !== undefined) {
      const results = o.collect ? 'keep' : spill === undefined ? 'drop' : { spillTo: spill }
      oracle = new Oracle(o.pipelines, brokers, { edgeNames: o.mqtt, tolerance: o.tolerance, paced: o.speed > 0, results })
    }
    const streams: Message[][] = o.mqtt.map(() => [])
    const counts: number[] = o.mqtt.map(() => 0)
    const stats = emptyStats()
    let behind = 0
    let n = 0
    const began = Date.now()
    for (const m of messages({ ...o, brokers }, origin, stats)) {
      // As fast as possible, a message arrives about when it is handed to the broker, which only the
      // clock can tell; at a set speed, when it is scheduled (the wait below keeps to it).
      const arrival = o.speed === 0 && !o.dryRun ? Date.now() : scheduledAt(m.due, schedule)
      oracle?.push(m.broker, { topic: m.topic, payload: m.payload, arrival })
      if (o.collect) streams[m.broker].push(m)
      counts[m.broker]++
      if (o.dryRun) {
        if (++n % YIELD_EVERY === 0) {
          await yieldToLoop()
          o.signal?.throwIfAborted()
        }
        continue
      }
      if (o.speed > 0) {
        await sleepUntil(arrival, o.signal)
        behind = Math.max(behind, Date.now() - arrival)
      }
      const wait = senders[m.broker].send(m)
      if (wait !== undefined) await wait
    }
    await Promise.all(senders.map(s => s.flush()))
    for (const s of senders) s.close()
    await Promise.all(connections.map(c => disconnect(c)))
    const elapsedMs = o.dryRun ? 0 : Date.now() - began
    const published = Object.fromEntries(o.mqtt.map((url, i) => [url, counts[i]]))
    let truth: TruthFile | undefined
    if (oracle !== undefined) {
      const pipelines = oracle.finish()
      const warnings = oracle.warnings
      if (behind > o.tolerance) {
        warnings.push(`publishing fell up to ${Math.round(behind)} ms behind the schedule, more than the tolerance (${o.tolerance} ms): ` +
          'the truth\'s idle and max-future decisions may not hold')
      }
      const malformed: Record<string, number> = {}
      for (const [kind, count] of Object.entries(stats.malformed)) malformed[kind] = count ?? 0
      truth = {
        version: 1,
        seed: o.seed,
        options: serializableOptions(o),
        origin,
        wallStart,
        published,
        generated: { readings: stats.readings, late: stats.late, future: stats.future, duplicates: stats.duplicates, malformed },
        warnings,
        ambiguities: oracle.ambiguities,
        refused: oracle.refused,
        pipelines
      }
      for (const w of warnings.slice(0, 10)) o.log(`fogmesh sim: warning: ${w}`)
      if (warnings.length > 10) o.log(`fogmesh sim: warning: ${warnings.length - 10} more in the truth file`)
      if (spill !== undefined && o.truth !== undefined) {
        // Written whole beside the results, then renamed: a truth file is never half written.
        const written = join(spill, 'truth.json')
        await writeTruthFile(written, truth, oracle.spilledResults.bind(oracle))
        await rename(written, o.truth)
      } else if (o.truth !== undefined) {
        await writeTruthFile(o.truth, truth)
      }
      if (!o.collect) truth = undefined
    }
    const line = summaryLine({ ...o, start: origin }, stats, counts, elapsedMs, oracle?.ambiguities ?? 0)
    o.log(line)
    return { options: o, origin, streams, published, stats, truth, elapsedMs, line }
  } catch (err) {
    for (const s of senders) s.close()
    await Promise.all(connections.map(c => disconnect(c, true)))
    throw err
  } finally {
    oracle?.close()
    if (spill !== undefined) await rm(spill, { recursive: true, force: true })
  }
}

/**
 * The oracle: what an edge agent running `pipelines` must compute from a stream of messages, and what
 * the fog must compute from all edges together.
 *
 * This is deliberately a second, naive implementation of the window semantics. It shares nothing with
 * core/windows, core/aggregates or the operators (they are the code under test): it keeps every value
 * of every window in arrays and computes a window's results exactly once nothing can change it any
 * more. It does share the input language (topic filters, CEL, payload decoding, timestamp
 * normalization), which is not what the truth is meant to check.
 *
 * Time, as SPEC.md puts it:
 * - watermark = latest event time seen − lateness; a reading is assigned with the watermark as it was
 *   before it, then the watermark advances and due windows close;
 * - idle: while a pipeline receives nothing, event time goes on with the wall clock. Before each
 *   message that arrives `idle` or more after the last reading, the watermark becomes
 *   max(watermark, latest event time + (arrival − last arrival) − lateness), closing what is due. The
 *   agent also does this periodically, but the watermark only grows, so what it is at the next
 *   reading is exactly this;
 * - max-future: a reading dated more than `maxFuture` after its arrival is rejected
 *   (`future_timestamp`) and, like a bad timestamp or an undecodable payload, moves neither the
 *   watermark nor the last arrival. Any other reading does, filtered or rejected later or not;
 * - the end of the stream closes every window (the wall clock closes them eventually);
 * - a message is decoded once per payload format; one that does not decode for a pipeline it is for is
 *   refused as a whole, counted once for its edge (`refused`), not in any pipeline's rejections.
 *
 * Arrivals are the nominal wall-clock times the simulator publishes at. Real ones stray from them a
 * little, so the oracle follows the watermark's lowest and highest values over arrivals within
 * `tolerance` of the schedule (each reading's delay after the one before it off by up to ± tolerance),
 * and reports in `warnings` every reading whose fate (late or not for a window, merged into a session
 * or not, a `late: update` revision, the max-future rejection) is not the same at both: an unreported
 * reading is predicted exactly. Crossing the idle threshold or not is reported through what it
 * changes. Messages without an arrival model no idle and no max-future; unpaced ones (published as
 * fast as possible) no idle.
 *
 * Memory is bounded by open windows: a window's results are computed, and its values dropped, once it
 * is final at its edge (closed, and past the horizon with `late: update`); the merged view holds a
 * window until no edge can add to it any more. Results do not depend on how edges interleave.
 *
 * Where the semantics left a choice, the oracle takes this one:
 * - expression variables are `{...record, ...topic wildcard bindings, topic, payload}`: a binding wins
 *   over a record field of the same name (the simulator never makes them differ);
 * - a hopping reading late for some of its windows and added to others counts in `accepted` and in
 *   `late` (and in `partiallyLate`, so a test can subtract it);
 * - with `late: update`, a late reading (within the horizon) for a window that never had a reading
 *   opens it, and it is emitted at once as revision 0;
 * - the merged view merges every overlapping session of a key, from the same edge or not.
 */
import { open, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ReadingRejected } from '../core/errors.ts'
import type { RejectReason } from '../core/errors.ts'
import { compileExpression } from '../core/expr.ts'
import type { Expression, Vars } from '../core/expr.ts'
import { createDecoder } from '../core/formats/index.ts'
import type { Fields, PayloadDecoder, PayloadFormat } from '../core/formats/index.ts'
import { SINGLE_KEY } from '../core/pipeline/spec.ts'
import type { PipelineSpec, WindowSpec } from '../core/pipeline/spec.ts'
import { toEventTime } from '../core/timestamp.ts'
import { compileTopicFilter } from '../core/topic.ts'
import type { TopicFilter } from '../core/topic.ts'
import { DROPPED, KeptResults, SpilledResults } from './truth-results.ts'
import type { ResultStore } from './truth-results.ts'

export type ResultValue = number | string | null

export interface WindowResult {
  key: string
  /** ISO-8601, UTC. */
  start: string
  /** ISO-8601, UTC; exclusive. */
  end: string
  /** 0 for the first emission, + 1 per late reading added with `late: update` (always 0 in `merged`). */
  revision: number
  values: Record<string, ResultValue>
  /** Merged view only: how many edges contributed readings to the window. */
  sources?: number
}

export interface EdgeTruth {
  /** Readings added to at least one window (late updates included). */
  accepted: number
  /** Readings for which `where` was false. */
  filtered: number
  /** Readings dropped as late from at least one window, counted once each. */
  late: number
  /**
   * Hopping windows only: readings late for some of their windows but added to others. They are
   * counted in both `accepted` and `late`.
   */
  partiallyLate: number
  /**
   * Readings this pipeline refused, per reason. A payload that does not decode is refused as a whole,
   * once per message for the edge (TruthFile.refused), not here.
   */
  rejected: Partial<Record<RejectReason, number>>
  /** Readings whose fate depends on arrivals straying from the schedule (each one is in the warnings). */
  ambiguous: number
  /** The final revision of every emitted window, sorted by start, then key. */
  results: WindowResult[]
}

/**
 * How far a result field may be from the truth: aggregates that are estimated by design. Up to
 * `exactUpTo` (when given) the value is exact, beyond it within `relativeError`.
 */
export interface Approximation {
  relativeError: number
  exactUpTo?: number
}

/** What SPEC.md promises: percentile within 1%; distinct exact up to 1000 values, within 2% beyond. */
export const APPROXIMATIONS: Readonly<Record<string, Approximation>> = {
  percentile: { relativeError: 0.01 },
  distinct: { exactUpTo: 1000, relativeError: 0.02 }
}

/** The approximate result fields of a pipeline, by field name. */
export function approximationsOf (spec: Pick<PipelineSpec, 'select'>): Record<string, Approximation> {
  const out: Record<string, Approximation> = {}
  for (const s of spec.select) {
    const a = APPROXIMATIONS[s.fn]
    if (a !== undefined) out[s.name] = { ...a }
  }
  return out
}

export interface PipelineTruth {
  /**
   * False when the pipeline runs on arrival time (no `timestamp`): then only the counters are
   * predictable and `results` are empty. True does not make every value exact: see `approximate`.
   */
  exact: boolean
  /** Result fields the tiers estimate, and how closely (the truth holds their exact value). */
  approximate: Record<string, Approximation>
  window: WindowSpec['kind']
  /** Per edge, named by its broker URL. */
  edges: Record<string, EdgeTruth>
  /** The union over all edges; null for count windows (not merged upstream) and inexact pipelines. */
  merged: { results: WindowResult[] } | null
}

export interface OracleMessage {
  topic: string
  payload: Uint8Array
  /** When it arrives at the edge, wall clock, epoch ms; undefined: no idle and no max-future. */
  arrival?: number
}

type Scalar = number | string
type InputKind = 'none' | 'number' | 'scalar'

const INPUTS: Record<string, InputKind> = {
  count: 'none',
  sum: 'number',
  min: 'number',
  max: 'number',
  avg: 'number',
  stddev: 'number',
  percentile: 'number',
  distinct: 'scalar',
  first: 'scalar',
  last: 'scalar'
}

interface Select {
  name: string
  fn: string
  input: InputKind
  expr?: Expression
  params: number[]
}

interface Compiled {
  spec: PipelineSpec
  filter: TopicFilter
  timestamp?: Expression
  where?: Expression
  key: Expression[]
  select: Select[]
}

interface Entry {
  ts: number
  /** One per select, undefined for count(). */
  inputs: Array<Scalar | undefined>
}

function compile (spec: PipelineSpec): Compiled {
  if (spec.window.kind === 'session' && spec.late === 'update') {
    throw new Error(`pipeline ${spec.name}: late: update is not allowed with session windows`)
  }
  return {
    spec,
    filter: compileTopicFilter(spec.from),
    timestamp: spec.timestamp === undefined ? undefined : compileExpression(spec.timestamp),
    where: spec.where === undefined ? undefined : compileExpression(spec.where),
    key: spec.key.map(compileExpression),
    select: spec.select.map(s => {
      const input = INPUTS[s.fn]
      if (input === undefined) throw new Error(`pipeline ${spec.name}: the oracle does not know aggregate ${s.fn}()`)
      return { name: s.name, fn: s.fn, input, expr: s.arg === undefined ? undefined : compileExpression(s.arg), params: s.params }
    })
  }
}

function reasonOf (err: unknown, otherwise: RejectReason): RejectReason {
  return err instanceof ReadingRejected ? err.reason : otherwise
}

function rejected (reason: RejectReason, message: string): ReadingRejected {
  return new ReadingRejected(reason, message)
}

/** Checks an aggregate input the way the spec says; throws ReadingRejected. */
function checkInput (kind: InputKind, raw: unknown): Scalar | undefined {
  const v = typeof raw === 'bigint' ? Number(raw) : raw
  if (kind === 'none') return undefined
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw rejected('non_finite', `input is ${v}`)
    return v
  }
  if (kind === 'scalar' && typeof v === 'string') return v
  throw rejected('type', `input must be ${kind === 'number' ? 'a number' : 'a number or a string'}`)
}

type Outcome =
  | { kind: 'filtered' }
  | { kind: 'rejected', reason: RejectReason }
  | { kind: 'ok', key: string, inputs: Array<Scalar | undefined> }

/** Steps 3 to 5: where, key, select inputs. */
function classify (c: Compiled, vars: Vars): Outcome {
  try {
    if (c.where !== undefined) {
      const w = c.where.evaluate(vars)
      if (typeof w !== 'boolean') throw rejected('type', 'where must be a boolean')
      if (!w) return { kind: 'filtered' }
    }
    let key = SINGLE_KEY
    if (c.key.length > 0) {
      key = c.key.map(k => {
        const raw = k.evaluate(vars)
        const v = typeof raw === 'bigint' ? Number(raw) : raw
        if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') throw rejected('type', 'a key must be a string, number or boolean')
        return String(v)
      }).join('/')
    }
    const inputs = c.select.map(s => checkInput(s.input, s.expr === undefined ? undefined : s.expr.evaluate(vars)))
    return { kind: 'ok', key, inputs }
  } catch (err) {
    return { kind: 'rejected', reason: reasonOf(err, 'expression') }
  }
}

/** [start, end) of every tumbling or hopping window containing ts. */
function windowsOf (w: WindowSpec, ts: number): Array<[number, number]> {
  if (w.kind === 'tumbling') {
    const start = Math.floor(ts / w.size) * w.size
    return [[start, start + w.size]]
  }
  if (w.kind !== 'hopping') throw new Error(`not a time window: ${w.kind}`)
  const out: Array<[number, number]> = []
  for (let k = Math.floor(ts / w.every); k * w.every + w.size > ts; k--) {
    out.push([k * w.every, k * w.every + w.size])
  }
  return out.reverse()
}

/** Numbers before strings; numbers numerically, strings by code unit. */
function compareScalars (a: Scalar, b: Scalar): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b
  if (typeof a === 'number') return -1
  if (typeof b === 'number') return 1
  return a < b ? -1 : a > b ? 1 : 0
}

function aggregate (s: Select, index: number, entries: Entry[]): ResultValue {
  const n = entries.length
  if (s.fn === 'count') return n
  if (s.fn === 'first' || s.fn === 'last') {
    const sign = s.fn === 'first' ? 1 : -1
    let best = entries[0]
    for (const e of entries) {
      const order = (e.ts - best.ts) || compareScalars(e.inputs[index] as Scalar, best.inputs[index] as Scalar)
      if (sign * order < 0) best = e
    }
    return best.inputs[index] as Scalar
  }
  if (s.fn === 'distinct') return new Set(entries.map(e => String(e.inputs[index]))).size
  const xs = entries.map(e => e.inputs[index] as number)
  let sum = 0
  for (const x of xs) sum += x
  switch (s.fn) {
    case 'sum': return sum
    case 'avg': return sum / n
    case 'min': return xs.reduce((a, b) => Math.min(a, b))
    case 'max': return xs.reduce((a, b) => Math.max(a, b))
    case 'stddev': {
      const mean = sum / n
      let sq = 0
      for (const x of xs) sq += (x - mean) ** 2
      return Math.sqrt(sq / n)
    }
    case 'percentile': {
      const sorted = [...xs].sort((a, b) => a - b)
      return sorted[Math.floor(s.params[0] * (n - 1))]
    }
  }
  throw new Error(`unknown aggregate ${s.fn}`)
}

interface Win {
  key: string
  start: number
  end: number
  entries: Entry[]
  revision: number
  edge: number
  /** Order of closing at its edge: a tie-break that does not depend on how edges interleave. */
  seq: number
}

function toResult (c: Compiled, w: { key: string, start: number, end: number, revision: number, entries: Entry[] }, sources?: number): WindowResult {
  const values: Record<string, ResultValue> = {}
  c.select.forEach((s, i) => { values[s.name] = aggregate(s, i, w.entries) })
  const r: WindowResult = { key: w.key, start: new Date(w.start).toISOString(), end: new Date(w.end).toISOString(), revision: w.revision, values }
  if (sources !== undefined) r.sources = sources
  return r
}

const iso = (ms: number): string => Number.isFinite(ms) ? new Date(ms).toISOString() : String(ms)

export interface OracleOptions {
  /** Names of the edges in the truth (default "0", "1", ...). */
  edgeNames?: readonly string[]
  /** How far (ms) a real arrival may be from the message's `arrival` (default 1000). */
  tolerance?: number
  /**
   * Whether arrivals follow the schedule. False when messages are published as fast as possible: they
   * arrive about together, so idle never passes within the stream (`arrival` still dates them for
   * max-future).
   */
  paced?: boolean
  /** At most this many warnings are kept (the count goes on); default 100. */
  maxWarnings?: number
  /**
   * What becomes of final results: kept in memory ('keep', the default: finish() returns them),
   * dropped, or written to files in the directory `spillTo` as they are final, so that memory holds
   * only what may still change. Then finish() returns no results: `spilledResults` reads them back,
   * and writeTruthFile writes the truth file from them.
   */
  results?: 'keep' | 'drop' | { spillTo: string }
}

/** Reports ambiguous readings. */
interface Reporter {
  tolerance: number
  paced: boolean
  report: (pipeline: string, edge: string, ts: number, arrival: number | undefined, what: string[]) => void
}

/** One pipeline at one edge. */
class EdgeRun {
  readonly counters: Omit<EdgeTruth, 'results'> = { accepted: 0, filtered: 0, late: 0, partiallyLate: 0, rejected: {}, ambiguous: 0 }
  readonly results: ResultStore
  readonly #c: Compiled
  readonly #edge: number
  readonly #name: string
  readonly #exact: boolean
  readonly #reporter: Reporter
  readonly #onFinal: (w: Win) => void
  #seq = 0
  #maxTs = -Infinity
  /** count: how far before the latest event time a reading has been, at most. */
  #maxLag = 0
  #lastArrival: number | undefined
  /** The watermark at the scheduled arrivals, and its lowest and highest values within the tolerance. */
  watermark = -Infinity
  #low = -Infinity
  #high = -Infinity
  /** tumbling/hopping: open windows by key + start. */
  readonly #open = new Map<string, Win>()
  /** The earliest end among open windows and sessions; may be low (sessions grow), never high. */
  #nextClose = Infinity
  /** tumbling/hopping with `late: update`: closed windows still within the horizon. */
  readonly #closed = new Map<string, Win>()
  #nextExpiry = Infinity
  /** session: the open sessions of each key. */
  readonly sessions = new Map<string, Win[]>()
  /** session: closed sessions a lower watermark would have kept open, per key. */
  readonly #recent = new Map<string, Win[]>()
  /** count: the readings of each key's incomplete window. */
  readonly #pending = new Map<string, Entry[]>()
  /** Why the current reading is ambiguous. */
  #doubts: string[] = []

  constructor (c: Compiled, edge: number, name: string, reporter: Reporter, results: ResultStore, onFinal: (w: Win) => void) {
    this.#c = c
    this.results = results
    this.#edge = edge
    this.#name = name
    this.#exact = c.timestamp !== undefined
    this.#reporter = reporter
    this.#onFinal = onFinal
  }

  #reject (reason: RejectReason): void {
    this.counters.rejected[reason] = (this.counters.rejected[reason] ?? 0) + 1
  }

  /** The readings of one message for this pipeline, decoded, with the topic's wildcard bindings. */
  message (msg: OracleMessage, records: readonly Fields[], bound: Record<string, string>): void {
    if (this.#exact && msg.arrival !== undefined && this.#reporter.paced) this.#idle(msg.arrival)
    for (const record of records) this.#reading({ ...record, ...bound, topic: msg.topic, payload: record }, msg.arrival)
  }

  /** The wall clock moves event time on after `idle` without a reading. */
  #idle (arrival: number): void {
    if (this.#lastArrival === undefined) return
    const spec = this.#c.spec
    const gap = arrival - this.#lastArrival
    const tol = this.#reporter.tolerance
    const base = this.#maxTs - spec.lateness
    if (gap - tol >= spec.idle) this.#low = Math.max(this.#low, base + gap - tol)
    if (gap + tol >= spec.idle) this.#high = Math.max(this.#high, base + gap + tol)
    if (gap >= spec.idle) this.#advance(base + gap)
  }

  #reading (vars: Vars, arrival: number | undefined): void {
    const c = this.#c
    const spec = c.spec
    let ts = NaN
    if (c.timestamp !== undefined) {
      try {
        ts = toEventTime(c.timestamp.evaluate(vars))
      } catch (err) {
        this.#reject(reasonOf(err, 'bad_timestamp'))
        return
      }
      if (arrival !== undefined) {
        const limit = arrival + spec.maxFuture
        const tol = this.#reporter.tolerance
        if ((ts > limit - tol) !== (ts > limit + tol)) {
          this.#doubts.push(`max-future: ${ts - arrival} ms ahead of its arrival, against max-future ${spec.maxFuture} ms`)
        }
        if (ts > limit) {
          this.#reject('future_timestamp')
          this.#flush(ts, arrival)
          return
        }
      }
    }
    const outcome = classify(c, vars)
    if (outcome.kind === 'filtered') this.counters.filtered++
    else if (outcome.kind === 'rejected') this.#reject(outcome.reason)
    else if (!this.#exact) this.counters.accepted++
    else this.#assign(outcome.key, { ts, inputs: outcome.inputs })
    if (!this.#exact) return
    this.#flush(ts, arrival)
    // Past the timestamp, every reading moves the watermark, whatever became of it afterwards.
    if (ts > this.#maxTs) this.#maxTs = ts
    if (arrival !== undefined) this.#lastArrival = arrival
    const to = this.#maxTs - spec.lateness
    this.#low = Math.max(this.#low, to)
    this.#high = Math.max(this.#high, to)
    this.#advance(to)
  }

  /** Reports the current reading if anything about it was in doubt. */
  #flush (ts: number, arrival: number | undefined): void {
    if (this.#doubts.length === 0) return
    this.counters.ambiguous++
    this.#reporter.report(this.#c.spec.name, this.#name, ts, arrival, this.#doubts)
    this.#doubts = []
  }

  /** What happens to a reading for the time window ending at `end`, with the watermark at `wm`. */
  #fate (end: number, wm: number): 'added' | 'updates' | 'late' {
    const spec = this.#c.spec
    if (end > wm) return 'added'
    return spec.late === 'update' && end > wm - spec.lateHorizon ? 'updates' : 'late'
  }

  #window (start: number, end: number, key: string): string {
    return `window [${iso(start)}, ${iso(end)}) of key ${key}`
  }

  #assign (key: string, entry: Entry): void {
    const spec = this.#c.spec
    const w = spec.window
    const ts = entry.ts
    if (w.kind === 'count') {
      if (this.#maxTs - ts > this.#maxLag) this.#maxLag = this.#maxTs - ts
      const buf = this.#pending.get(key) ?? []
      buf.push(entry)
      if (buf.length === w.count) {
        const start = buf.reduce((m, e) => Math.min(m, e.ts), Infinity)
        const end = buf.reduce((m, e) => Math.max(m, e.ts), -Infinity) + 1
        this.#pending.delete(key)
        this.#final({ key, start, end, entries: buf, revision: 0, edge: this.#edge, seq: this.#seq++ })
      } else {
        this.#pending.set(key, buf)
      }
      this.counters.accepted++
      return
    }
    if (w.kind === 'session') {
      this.#assignSession(key, entry, w.gap)
      return
    }
    let added = 0
    let late = 0
    for (const [start, end] of windowsOf(w, ts)) {
      const id = `${key}\u0000${start}`
      const fate = this.#fate(end, this.watermark)
      const low = this.#fate(end, this.#low)
      const high = this.#fate(end, this.#high)
      if (low !== high) this.#doubts.push(`${this.#window(start, end, key)}: ${low} or ${high} (the watermark between ${iso(this.#low)} and ${iso(this.#high)})`)
      if (fate === 'added') {
        let win = this.#open.get(id)
        if (win === undefined) {
          win = { key, start, end, entries: [], revision: 0, edge: this.#edge, seq: 0 }
          this.#open.set(id, win)
          if (end < this.#nextClose) this.#nextClose = end
        }
        win.entries.push(entry)
        added++
      } else if (fate === 'updates') {
        const win = this.#closed.get(id)
        if (win === undefined) {
          // Nothing was ever emitted for this window: the late reading opens it, emitted at once
          // (revision 0) since its end is already behind the watermark.
          this.#closed.set(id, { key, start, end, entries: [entry], revision: 0, edge: this.#edge, seq: this.#seq++ })
          if (end < this.#nextExpiry) this.#nextExpiry = end
        } else {
          win.entries.push(entry)
          win.revision++
        }
        added++
      } else {
        late++
      }
    }
    if (added > 0) this.counters.accepted++
    if (late > 0) this.counters.late++
    if (added > 0 && late > 0) this.counters.partiallyLate++
  }

  #assignSession (key: string, entry: Entry, gap: number): void {
    const ts = entry.ts
    const list = this.sessions.get(key) ?? []
    const overlapping = list.filter(s => s.start < ts + gap && ts < s.end)
    const start = Math.min(ts, ...overlapping.map(s => s.start))
    const end = Math.max(ts + gap, ...overlapping.map(s => s.end))
    for (const s of overlapping) {
      if (s.end <= this.#high) this.#doubts.push(`session [${iso(s.start)}, ${iso(s.end)}) of key ${key}: open or closed before it (the watermark up to ${iso(this.#high)})`)
    }
    const recent = this.#recent.get(key)?.filter(s => s.end > this.#low)
    for (const s of recent ?? []) {
      if (s.start < ts + gap && ts < s.end) this.#doubts.push(`session [${iso(s.start)}, ${iso(s.end)}) of key ${key}: closed before it or still open (the watermark down to ${iso(this.#low)})`)
    }
    if ((end <= this.#low) !== (end <= this.#high)) this.#doubts.push(`session [${iso(start)}, ${iso(end)}) of key ${key}: on time or late (the watermark between ${iso(this.#low)} and ${iso(this.#high)})`)
    if (end <= this.watermark) {
      this.counters.late++
      return
    }
    if (overlapping.length === 0) {
      list.push({ key, start, end, entries: [entry], revision: 0, edge: this.#edge, seq: 0 })
      this.sessions.set(key, list)
      if (end < this.#nextClose) this.#nextClose = end
    } else {
      // Grow the first overlapping session in place: copying its entries per reading would make
      // a long-lived session quadratic.
      const [into, ...rest] = overlapping
      for (const s of rest) into.entries.push(...s.entries)
      into.entries.push(entry)
      into.start = start
      into.end = end
      if (rest.length > 0) this.sessions.set(key, list.filter(s => !rest.includes(s)))
    }
    this.counters.accepted++
  }

  /** Moves the watermark forward (never back), closing what is due and finalizing what nothing can change. */
  #advance (to: number): void {
    if (this.#high < to) this.#high = to
    if (to <= this.watermark) return
    this.watermark = to
    if (to >= this.#nextClose) this.#closeUpTo(to)
    const spec = this.#c.spec
    if (spec.late === 'update' && to - spec.lateHorizon >= this.#nextExpiry) this.#expire(to - spec.lateHorizon)
    if (this.#recent.size > 0) {
      for (const [key, list] of this.#recent) {
        const still = list.filter(s => s.end > this.#low)
        if (still.length > 0) this.#recent.set(key, still)
        else this.#recent.delete(key)
      }
    }
  }

  #closeUpTo (wm: number): void {
    const update = this.#c.spec.late === 'update'
    let next = Infinity
    for (const [id, w] of this.#open) {
      if (w.end > wm) {
        if (w.end < next) next = w.end
        continue
      }
      this.#open.delete(id)
      w.seq = this.#seq++
      if (update) {
        this.#closed.set(id, w)
        if (w.end < this.#nextExpiry) this.#nextExpiry = w.end
      } else {
        this.#final(w)
      }
    }
    for (const [key, list] of this.sessions) {
      const still: Win[] = []
      for (const s of list) {
        if (s.end > wm) {
          still.push(s)
          if (s.end < next) next = s.end
          continue
        }
        s.seq = this.#seq++
        this.#final(s)
        if (s.end > this.#low) {
          const recent = this.#recent.get(key)
          if (recent === undefined) this.#recent.set(key, [s])
          else recent.push(s)
        }
      }
      if (still.length > 0) this.sessions.set(key, still)
      else this.sessions.delete(key)
    }
    this.#nextClose = next
  }

  /** With `late: update`: closed windows past the horizon can change no more. */
  #expire (horizon: number): void {
    let next = Infinity
    for (const [id, w] of this.#closed) {
      if (w.end > horizon) {
        if (w.end < next) next = w.end
        continue
      }
      this.#closed.delete(id)
      this.#final(w)
    }
    this.#nextExpiry = next
  }

  #final (w: Win): void {
    this.results.add({ key: w.key, start: w.start, end: w.end, result: toResult(this.#c, w) })
    this.#onFinal(w)
  }

  /**
   * The earliest start a result this edge finalizes from now on can have. Exact for time windows; for
   * count windows, which take readings of any age, a guess from the oldest reading so far.
   */
  resultBound (): number {
    if (!this.#exact) return Infinity
    const spec = this.#c.spec
    const w = spec.window
    let min: number
    if (w.kind === 'count') {
      min = this.#maxTs - this.#maxLag
      for (const buf of this.#pending.values()) for (const e of buf) if (e.ts < min) min = e.ts
      return min
    }
    if (w.kind === 'session') {
      // A reading joins a session it comes within the gap of, or opens one if it is not late.
      min = this.watermark
      for (const list of this.sessions.values()) for (const s of list) if (s.start < min) min = s.start
      return min - w.gap
    }
    // A reading opens a window that ends after the watermark (less the horizon with `late: update`).
    min = this.watermark - w.size - (spec.late === 'update' ? spec.lateHorizon : 0)
    for (const win of this.#open.values()) if (win.start < min) min = win.start
    for (const win of this.#closed.values()) if (win.start < min) min = win.start
    return min
  }

  /** End of stream: every open window closes; incomplete count windows are never emitted. */
  finish (): void {
    if (!this.#exact) return
    this.#closeUpTo(Infinity)
    this.#expire(Infinity)
    this.#recent.clear()
  }

  /** The earliest start among the open sessions of `key`, or Infinity. */
  openSessionStart (key: string): number {
    let min = Infinity
    for (const s of this.sessions.get(key) ?? []) if (s.start < min) min = s.start
    return min
  }
}

interface MergedWin {
  key: string
  start: number
  end: number
  revision: 0
  /** Per edge, in edge order: the sum of floating-point values must not depend on who finished first. */
  parts: Entry[][]
  entries: Entry[]
}

/**
 * The fog's view: every edge's readings of a window together; overlapping sessions of a key merged,
 * from the same edge or not. A window is final once every edge's watermark is past its end (and the
 * late horizon with `late: update`); a chain of sessions once no session an edge could still close
 * can reach back to it.
 */
class MergedRun {
  readonly results: ResultStore
  readonly #c: Compiled
  readonly #edges: EdgeRun[]
  readonly #windows = new Map<string, MergedWin>()
  #nextEnd = Infinity
  /** session: closed sessions of each key not yet final in the merged view. */
  readonly #sessions = new Map<string, Win[]>()
  #sessionsAdded = false

  constructor (c: Compiled, edges: EdgeRun[], results: ResultStore) {
    this.#c = c
    this.#edges = edges
    this.results = results
  }

  /** The earliest start a result finalized from now on can have, given the edges' (`edges`). */
  resultBound (edges: number): number {
    let min = edges
    for (const m of this.#windows.values()) if (m.start < min) min = m.start
    for (const list of this.#sessions.values()) for (const s of list) if (s.start < min) min = s.start
    return min
  }

  add (w: Win): void {
    if (this.#c.spec.window.kind === 'session') {
      const list = this.#sessions.get(w.key)
      if (list === undefined) this.#sessions.set(w.key, [w])
      else list.push(w)
      this.#sessionsAdded = true
      return
    }
    const id = `${w.key}\u0000${w.start}`
    let m = this.#windows.get(id)
    if (m === undefined) {
      m = { key: w.key, start: w.start, end: w.end, revision: 0, parts: [], entries: [] }
      this.#windows.set(id, m)
      if (w.end < this.#nextEnd) this.#nextEnd = w.end
    }
    const part = m.parts[w.edge]
    if (part === undefined) m.parts[w.edge] = w.entries
    else part.push(...w.entries)
  }

  /** The lowest watermark among edges, less the horizon within which closed windows still change. */
  #mark (): number {
    const spec = this.#c.spec
    let min = Infinity
    for (const e of this.#edges) min = Math.min(min, e.watermark)
    return spec.late === 'update' ? min - spec.lateHorizon : min
  }

  /** Finalizes what can no longer change; everything with `end` set. */
  sweep (end = false): void {
    if (this.#c.spec.window.kind === 'session') {
      this.#sweepSessions(end)
      return
    }
    const mark = end ? Infinity : this.#mark()
    if (mark < this.#nextEnd) return
    let next = Infinity
    for (const [id, m] of this.#windows) {
      if (m.end > mark) {
        if (m.end < next) next = m.end
        continue
      }
      this.#windows.delete(id)
      let sources = 0
      for (const part of m.parts) {
        if (part === undefined) continue
        sources++
        for (const e of part) m.entries.push(e)
      }
      this.results.add({ key: m.key, start: m.start, end: m.end, result: toResult(this.#c, m, sources) })
    }
    this.#nextEnd = next
  }

  /** Whether sweeping may finalize sessions now (cheap to ask after every message). */
  get sessionsPending (): boolean {
    return this.#sessionsAdded
  }

  #sweepSessions (end: boolean): void {
    const w = this.#c.spec.window
    if (w.kind !== 'session') return
    this.#sessionsAdded = false
    for (const [key, list] of this.#sessions) {
      // A session an edge closes later starts after its watermark − gap, and after its open
      // sessions' starts − gap: a chain ending before all of that is complete.
      let reach = Infinity
      if (!end) {
        for (const e of this.#edges) reach = Math.min(reach, e.watermark - w.gap, e.openSessionStart(key) - w.gap)
      }
      list.sort((a, b) => a.start - b.start || a.end - b.end || a.edge - b.edge || a.seq - b.seq)
      const keep: Win[] = []
      let chain: Win[] = []
      let chainEnd = -Infinity
      const settle = (): void => {
        if (chain.length === 0) return
        if (chainEnd <= reach) this.#finalChain(key, chain, chainEnd)
        else keep.push(...chain)
      }
      for (const s of list) {
        if (chain.length > 0 && s.start < chainEnd) {
          chain.push(s)
          chainEnd = Math.max(chainEnd, s.end)
        } else {
          settle()
          chain = [s]
          chainEnd = s.end
        }
      }
      settle()
      if (keep.length > 0) this.#sessions.set(key, keep)
      else this.#sessions.delete(key)
    }
  }

  #finalChain (key: string, chain: Win[], end: number): void {
    const entries: Entry[] = []
    const edges = new Set<number>()
    for (const s of chain) {
      for (const e of s.entries) entries.push(e)
      edges.add(s.edge)
    }
    const start = chain[0].start
    this.results.add({ key, start, end, result: toResult(this.#c, { key, start, end, revision: 0, entries }, edges.size) })
  }
}

/** How often (messages) pending merged sessions are looked at when nothing new closed. */
const SESSION_SWEEP_EVERY = 1024
/** How often (messages) results written out as they go are settled. */
const SETTLE_EVERY = 4096

class PipelineRun {
  readonly c: Compiled
  readonly edges: EdgeRun[]
  readonly merged: MergedRun | undefined
  readonly #names: readonly string[]
  #sinceSweep = 0
  #sinceSettle = 0

  /** `store(view)`: where the results of edge `view`, or of the merged view (`names.length`), go. */
  constructor (spec: PipelineSpec, names: readonly string[], reporter: Reporter, store: (view: number) => ResultStore) {
    this.c = compile(spec)
    this.#names = names
    const mergeable = spec.timestamp !== undefined && spec.window.kind !== 'count'
    this.edges = names.map((name, i) => new EdgeRun(this.c, i, name, reporter, store(i), w => { this.merged?.add(w) }))
    this.merged = mergeable ? new MergedRun(this.c, this.edges, store(names.length)) : undefined
  }

  /** Lets stores that write results out as they go write what nothing can overtake any more. */
  #settle (): void {
    let edges = Infinity
    for (const e of this.edges) {
      const bound = e.resultBound()
      if (bound < edges) edges = bound
      e.results.settle?.(bound)
    }
    this.merged?.results.settle?.(this.merged.resultBound(edges))
  }

  /** `records` undefined: the message is not for this pipeline, or did not decode in its format. */
  message (edge: number, msg: OracleMessage, records: readonly Fields[] | undefined, bound: Record<string, string> | undefined): void {
    if (records !== undefined && bound !== undefined) this.edges[edge].message(msg, records, bound)
    if (this.edges[0].results.settle !== undefined && ++this.#sinceSettle >= SETTLE_EVERY) {
      this.#sinceSettle = 0
      this.#settle()
    }
    const m = this.merged
    if (m === undefined) return
    if (this.c.spec.window.kind !== 'session') {
      m.sweep()
    } else if (m.sessionsPending || ++this.#sinceSweep >= SESSION_SWEEP_EVERY) {
      this.#sinceSweep = 0
      m.sweep()
    }
  }

  finish (): PipelineTruth {
    const spec = this.c.spec
    for (const e of this.edges) e.finish()
    this.merged?.sweep(true)
    return {
      exact: spec.timestamp !== undefined,
      approximate: approximationsOf(spec),
      window: spec.window.kind,
      edges: Object.fromEntries(this.edges.map((e, i) => [this.#names[i], { ...e.counters, results: e.results.end() }])),
      merged: this.merged === undefined ? null : { results: this.merged.results.end() }
    }
  }
}

/**
 * Computes the truth incrementally: push each edge's messages in the order its broker delivers them
 * (edges may interleave in any way: the truth is the same), then finish.
 */
export class Oracle {
  /** In the order an agent decodes in: by payload format. */
  readonly #runs: PipelineRun[]
  readonly #names: string[]
  /** The pipelines in the order given, which the truth keeps. */
  readonly #order: string[]
  readonly #refused: Array<Partial<Record<RejectReason, number>>>
  /** Per edge, its decoder of each format: stateful formats keep per-edge state, as each agent does. */
  readonly #decoders: Array<Map<PayloadFormat, PayloadDecoder>>
  readonly #warnings: string[] = []
  readonly #maxWarnings: number
  #ambiguities = 0
  /** results: { spillTo }: per pipeline, the results of each edge, then of the merged view. */
  readonly #spilled = new Map<string, SpilledResults[]>()

  constructor (pipelines: readonly PipelineSpec[], edges: number, options: OracleOptions = {}) {
    const names = Array.from({ length: edges }, (_, i) => options.edgeNames?.[i] ?? String(i))
    this.#names = names
    this.#order = pipelines.map(p => p.name)
    this.#refused = names.map(() => ({}))
    this.#decoders = names.map(() => new Map())
    this.#maxWarnings = options.maxWarnings ?? 100
    const tolerance = options.tolerance ?? 1000
    const reporter: Reporter = {
      tolerance,
      paced: options.paced ?? true,
      report: (pipeline, edge, ts, arrival, what) => {
        this.#ambiguities++
        if (this.#warnings.length >= this.#maxWarnings) return
        const when = arrival === undefined ? '' : `, due to arrive at ${iso(arrival)},`
        this.#warnings.push(`pipeline ${pipeline} on ${edge}: the reading at ${iso(ts)}${when} is ambiguous within ` +
          `±${tolerance} ms of its arrival: ${what.join('; ')}`)
      }
    }
    const results = options.results ?? 'keep'
    this.#runs = pipelines.map((spec, p) => new PipelineRun(spec, names, reporter, view => {
      if (results === 'keep') return new KeptResults()
      if (results === 'drop') return DROPPED
      const store = new SpilledResults(join(results.spillTo, `${p}.${view}`))
      const views = this.#spilled.get(spec.name) ?? []
      views[view] = store
      this.#spilled.set(spec.name, views)
      return store
    })).sort((a, b) => a.c.spec.format.localeCompare(b.c.spec.format))
  }

  push (edge: number, msg: OracleMessage): void {
    // As an agent does: each message decoded once per payload format (formats in order), and one that
    // does not decode for a pipeline that wants it refused as a whole, counted once for the edge with
    // the first reason, not per pipeline.
    let decoded: Map<PayloadFormat, Fields[] | undefined> | undefined
    let refused: RejectReason | undefined
    for (const run of this.#runs) {
      const bound = run.c.filter.match(msg.topic)
      let records: Fields[] | undefined
      if (bound !== undefined) {
        decoded ??= new Map()
        const format = run.c.spec.format
        if (decoded.has(format)) {
          records = decoded.get(format)
        } else {
          try {
            records = this.#decoder(edge, format)(msg.payload, msg.topic)
          } catch (err) {
            refused ??= reasonOf(err, 'parse')
          }
          decoded.set(format, records)
        }
      }
      run.message(edge, msg, records, bound)
    }
    if (refused !== undefined) {
      const counts = this.#refused[edge]
      counts[refused] = (counts[refused] ?? 0) + 1
    }
  }

  #decoder (edge: number, format: PayloadFormat): PayloadDecoder {
    const decoders = this.#decoders[edge]
    let d = decoders.get(format)
    if (d === undefined) {
      // Single readings a decoder refuses count with the messages refused as a whole, as the agent's runner counts them.
      const counts = this.#refused[edge]
      d = createDecoder(format, { reject: reason => { counts[reason] = (counts[reason] ?? 0) + 1 }, now: Date.now })
      decoders.set(format, d)
    }
    return d
  }

  /** Messages refused as a whole (a payload that does not decode), per edge and reason; each counted once. */
  get refused (): Record<string, Partial<Record<RejectReason, number>>> {
    return Object.fromEntries(this.#names.map((name, i) => [name, { ...this.#refused[i] }]))
  }

  /** Readings whose fate depends on arrivals straying from the schedule by up to the tolerance. */
  get ambiguities (): number {
    return this.#ambiguities
  }

  /** What is ambiguous, for the first `maxWarnings` readings. */
  get warnings (): string[] {
    const more = this.#ambiguities - this.#warnings.length
    return more > 0 ? [...this.#warnings, `… and ${more} more ambiguous readings`] : [...this.#warnings]
  }

  /** Ends every stream and returns the truth of each pipeline (without results unless they are kept). */
  finish (): Record<string, PipelineTruth> {
    const out: Record<string, PipelineTruth> = {}
    for (const name of this.#order) out[name] = this.#runs.find(r => r.c.spec.name === name)!.finish()
    return out
  }

  /** With `results: { spillTo }`, after finish: the results of `pipeline` at `edge` (named) or merged (null), sorted. */
  spilledResults (pipeline: string, edge: string | null): AsyncIterable<WindowResult> {
    const store = this.#spilled.get(pipeline)?.[edge === null ? this.#names.length : this.#names.indexOf(edge)]
    if (store === undefined) throw new Error(`no results of pipeline ${pipeline} ${edge === null ? 'merged' : `at ${edge}`} were written`)
    return store.read()
  }

  /** Closes the files of spilled results (finish closes them too). */
  close (): void {
    for (const views of this.#spilled.values()) for (const store of views) store.close()
  }
}

/**
 * The truth for each pipeline. `streams` holds each edge's messages in the order its broker delivers
 * them (publish order); `edgeNames` names the edges in the result (default "0", "1", ...).
 */
export function computeTruth (pipelines: readonly PipelineSpec[], streams: ReadonlyArray<readonly OracleMessage[]>, edgeNames?: readonly string[], options: OracleOptions = {}): Record<string, PipelineTruth> {
  const oracle = new Oracle(pipelines, streams.length, { ...options, edgeNames: edgeNames ?? options.edgeNames })
  streams.forEach((messages, i) => { for (const m of messages) oracle.push(i, m) })
  return oracle.finish()
}

/** The truth file `fogmesh sim --truth` writes. */
export interface TruthFile {
  version: 1
  seed: number
  /** The options of the run (durations in ms, start as epoch ms). */
  options: Record<string, unknown>
  /** The event-time origin of the run, epoch ms. */
  origin: number
  /** The wall clock (epoch ms) the schedule of arrivals starts from. */
  wallStart: number
  /** Messages published per broker URL, duplicates included. */
  published: Record<string, number>
  generated: {
    readings: number
    late: number
    future: number
    duplicates: number
    malformed: Record<string, number>
  }
  /**
   * Reasons the truth may not hold for this run: readings whose fate depends on arrivals straying from
   * the schedule by up to the tolerance (the first 100), publishing that fell behind the schedule.
   */
  warnings: string[]
  /** How many readings are ambiguous (per pipeline and edge). */
  ambiguities: number
  /**
   * Per edge, messages refused as a whole, by reason: a payload that does not decode in the format of
   * a pipeline it is for. Counted once per message, before any pipeline sees a reading in it.
   */
  refused: Record<string, Partial<Record<RejectReason, number>>>
  pipelines: Record<string, PipelineTruth>
}

/** Where writeTruthFile takes a pipeline's results at an edge (named) or merged (null) from. */
export type TruthResults = (pipeline: string, edge: string | null) => Iterable<WindowResult> | AsyncIterable<WindowResult>

/** Bytes of the truth file written at a time. */
const TRUTH_CHUNK = 1 << 20

/**
 * Writes `truth` to `path` exactly as `JSON.stringify(truth, null, 2) + '\n'` would, but with each
 * list of results taken from `results` (default: the ones in `truth`) one at a time, so that they
 * need not all be in memory.
 */
export async function writeTruthFile (path: string, truth: TruthFile, results?: TruthResults): Promise<void> {
  const lists: Array<[string, string | null]> = []
  const marker = (pipeline: string, edge: string | null): string => {
    lists.push([pipeline, edge])
    return `\u0001results ${lists.length - 1}`
  }
  const marked = {
    ...truth,
    pipelines: Object.fromEntries(Object.entries(truth.pipelines).map(([name, p]) => [name, {
      ...p,
      edges: Object.fromEntries(Object.entries(p.edges).map(([edge, e]) => [edge, { ...e, results: marker(name, edge) }])),
      merged: p.merged === null ? null : { results: marker(name, null) }
    }]))
  }
  const from = results ?? ((pipeline, edge) => edge === null ? truth.pipelines[pipeline].merged!.results : truth.pipelines[pipeline].edges[edge].results)
  // A marker cannot be mistaken for text of the truth: in JSON, a quote inside a string is escaped.
  const parts = JSON.stringify(marked, null, 2).split(/"results": "\\u0001results (\d+)"/)
  const file = await open(path, 'w')
  try {
    let chunk = ''
    const write = async (text: string): Promise<void> => {
      chunk += text
      if (chunk.length < TRUTH_CHUNK) return
      await file.write(chunk)
      chunk = ''
    }
    for (let i = 0; i < parts.length; i += 2) {
      await write(parts[i])
      if (i + 1 === parts.length) break
      // The text before a marker ends with its line's indentation.
      const indent = parts[i].slice(parts[i].lastIndexOf('\n') + 1)
      const inner = `\n${indent}  `
      let n = 0
      await write('"results": [')
      for await (const r of from(...lists[Number(parts[i + 1])])) await write((n++ === 0 ? '' : ',') + inner + JSON.stringify(r, null, 2).replaceAll('\n', inner))
      await write(n === 0 ? ']' : `\n${indent}]`)
    }
    await file.write(chunk + '\n')
  } finally {
    await file.close()
  }
}

export async function loadTruth (path: string): Promise<TruthFile> {
  const data = JSON.parse(await readFile(path, 'utf8')) as TruthFile
  if (data === null || typeof data !== 'object' || data.version !== 1 || typeof data.pipelines !== 'object') {
    throw new Error(`${path} is not a fogmesh sim truth file (version 1)`)
  }
  return data
}

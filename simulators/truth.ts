/**
 * The oracle: what an edge agent running `pipelines` must compute from a stream of messages, and what
 * the fog must compute from all edges together.
 *
 * This is deliberately a second, naive implementation of the window semantics. It shares nothing with
 * core/windows, core/aggregates or the operators (they are the code under test): it keeps every value
 * of every window in arrays and computes the results exactly at the end. It does share the input
 * language (topic filters, CEL, payload decoding, timestamp normalization), which is not what the
 * truth is meant to check.
 *
 * Where the semantics left a choice, the oracle takes this one:
 * - expression variables are `{...record, ...topic wildcard bindings, topic, payload}`: a binding wins
 *   over a record field of the same name (the simulator never makes them differ);
 * - a hopping reading late for some of its windows and added to others counts in `accepted` and in
 *   `late` (and in `partiallyLate`, so a test can subtract it);
 * - with `late: update`, a late reading (within the horizon) for a window that never had a reading
 *   opens it, and it is emitted at once as revision 0;
 * - the merged view merges every overlapping session of a key, from the same edge or not;
 * - the truth assumes no window closes by `idle` before the stream ends (see the warnings in sim.ts).
 */
import { readFile } from 'node:fs/promises'
import { ReadingRejected } from '../core/errors.ts'
import type { RejectReason } from '../core/errors.ts'
import { compileExpression } from '../core/expr.ts'
import type { Expression, Vars } from '../core/expr.ts'
import { PAYLOAD_DECODERS } from '../core/payload.ts'
import type { PayloadDecoder } from '../core/payload.ts'
import { SINGLE_KEY } from '../core/pipeline/spec.ts'
import type { PipelineSpec, WindowSpec } from '../core/pipeline/spec.ts'
import { toEventTime } from '../core/timestamp.ts'
import { compileTopicFilter } from '../core/topic.ts'
import type { TopicFilter } from '../core/topic.ts'

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
  /** Per reason; a payload that cannot be decoded counts once, whatever it would have carried. */
  rejected: Partial<Record<RejectReason, number>>
  /** The final revision of every emitted window, sorted by start, then key. */
  results: WindowResult[]
}

export interface PipelineTruth {
  /**
   * False when the pipeline runs on arrival time (no `timestamp`): then only the counters are
   * predictable and `results` are empty.
   */
  exact: boolean
  window: WindowSpec['kind']
  /** Per edge, named by its broker URL. */
  edges: Record<string, EdgeTruth>
  /** The union over all edges; null for count windows (not merged upstream) and inexact pipelines. */
  merged: { results: WindowResult[] } | null
}

export interface OracleMessage {
  topic: string
  payload: Uint8Array
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
  decode: PayloadDecoder
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

interface Win {
  key: string
  start: number
  end: number
  entries: Entry[]
  revision: number
  edge: number
}

function compile (spec: PipelineSpec): Compiled {
  if (spec.window.kind === 'session' && spec.late === 'update') {
    throw new Error(`pipeline ${spec.name}: late: update is not allowed with session windows`)
  }
  return {
    spec,
    filter: compileTopicFilter(spec.from),
    decode: PAYLOAD_DECODERS[spec.format],
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

interface EdgeRun {
  counters: Omit<EdgeTruth, 'results'>
  windows: Win[]
}

function runEdge (c: Compiled, messages: readonly OracleMessage[], edge: number): EdgeRun {
  const spec = c.spec
  const exact = c.timestamp !== undefined
  const counters: EdgeRun['counters'] = { accepted: 0, filtered: 0, late: 0, partiallyLate: 0, rejected: {} }
  const reject = (reason: RejectReason): void => { counters.rejected[reason] = (counters.rejected[reason] ?? 0) + 1 }

  let maxTs = -Infinity
  let watermark = -Infinity
  // tumbling/hopping: windows by key + start, open or closed
  const open = new Map<string, Win>()
  const closed = new Map<string, Win>()
  // session: the open sessions of each key
  const sessions = new Map<string, Win[]>()
  // count: the readings of each key's incomplete window
  const pending = new Map<string, Entry[]>()
  const done: Win[] = []

  const closeUpTo = (wm: number): void => {
    for (const [id, w] of open) {
      if (w.end <= wm) {
        open.delete(id)
        closed.set(id, w)
        done.push(w)
      }
    }
    for (const [key, list] of sessions) {
      const still = list.filter(s => s.end > wm)
      for (const s of list) if (s.end <= wm) done.push(s)
      if (still.length > 0) sessions.set(key, still)
      else sessions.delete(key)
    }
  }

  const assign = (key: string, entry: Entry): void => {
    const w = spec.window
    const ts = entry.ts
    if (w.kind === 'count') {
      const buf = pending.get(key) ?? []
      buf.push(entry)
      if (buf.length === w.count) {
        const start = buf.reduce((m, e) => Math.min(m, e.ts), Infinity)
        const end = buf.reduce((m, e) => Math.max(m, e.ts), -Infinity) + 1
        done.push({ key, start, end, entries: buf, revision: 0, edge })
        pending.delete(key)
      } else {
        pending.set(key, buf)
      }
      counters.accepted++
      return
    }
    if (w.kind === 'session') {
      const list = sessions.get(key) ?? []
      const overlapping = list.filter(s => s.start < ts + w.gap && ts < s.end)
      const start = Math.min(ts, ...overlapping.map(s => s.start))
      const end = Math.max(ts + w.gap, ...overlapping.map(s => s.end))
      if (end <= watermark) {
        counters.late++
        return
      }
      if (overlapping.length === 0) {
        sessions.set(key, [...list, { key, start, end, entries: [entry], revision: 0, edge }])
      } else {
        // Grow the first overlapping session in place: copying its entries per reading would make
        // a long-lived session quadratic.
        const [into, ...rest] = overlapping
        for (const s of rest) into.entries.push(...s.entries)
        into.entries.push(entry)
        into.start = start
        into.end = end
        if (rest.length > 0) sessions.set(key, list.filter(s => !rest.includes(s)))
      }
      counters.accepted++
      return
    }
    let added = 0
    let late = 0
    for (const [start, end] of windowsOf(w, ts)) {
      const id = `${key}\u0000${start}`
      if (end > watermark) {
        let win = open.get(id)
        if (win === undefined) {
          win = { key, start, end, entries: [], revision: 0, edge }
          open.set(id, win)
        }
        win.entries.push(entry)
        added++
      } else if (spec.late === 'update' && end > watermark - spec.lateHorizon) {
        const win = closed.get(id)
        if (win === undefined) {
          // Nothing was ever emitted for this window: the late reading opens it, emitted at once
          // (revision 0) since its end is already behind the watermark.
          const fresh: Win = { key, start, end, entries: [entry], revision: 0, edge }
          closed.set(id, fresh)
          done.push(fresh)
        } else {
          win.entries.push(entry)
          win.revision++
        }
        added++
      } else {
        late++
      }
    }
    if (added > 0) counters.accepted++
    if (late > 0) counters.late++
    if (added > 0 && late > 0) counters.partiallyLate++
  }

  const reading = (vars: Vars): void => {
    let ts = NaN
    if (c.timestamp !== undefined) {
      try {
        ts = toEventTime(c.timestamp.evaluate(vars))
      } catch (err) {
        reject(reasonOf(err, 'bad_timestamp'))
        return
      }
    }
    const outcome = classify(c, vars)
    if (outcome.kind === 'filtered') counters.filtered++
    else if (outcome.kind === 'rejected') reject(outcome.reason)
    else if (!exact) counters.accepted++
    else assign(outcome.key, { ts, inputs: outcome.inputs })
    if (!exact) return
    // Past the timestamp, every reading moves the watermark, whatever became of it afterwards.
    if (ts > maxTs) maxTs = ts
    if (maxTs - spec.lateness > watermark) {
      watermark = maxTs - spec.lateness
      closeUpTo(watermark)
    }
  }

  for (const msg of messages) {
    const bound = c.filter.match(msg.topic)
    if (bound === undefined) continue
    let records
    try {
      records = c.decode(msg.payload)
    } catch (err) {
      reject(reasonOf(err, 'parse'))
      continue
    }
    for (const record of records) reading({ ...record, ...bound, topic: msg.topic, payload: record })
  }
  // End of stream: the agent closes every open window once `idle` has passed; incomplete count
  // windows are never emitted.
  if (exact) closeUpTo(Infinity)
  return { counters, windows: exact ? done : [] }
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

function toResult (c: Compiled, w: Win, sources?: number): WindowResult {
  const values: Record<string, ResultValue> = {}
  c.select.forEach((s, i) => { values[s.name] = aggregate(s, i, w.entries) })
  const r: WindowResult = { key: w.key, start: new Date(w.start).toISOString(), end: new Date(w.end).toISOString(), revision: w.revision, values }
  if (sources !== undefined) r.sources = sources
  return r
}

function sortWindows<T extends { key: string, start: number, end: number }> (ws: T[]): T[] {
  return ws.sort((a, b) => a.start - b.start || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0) || a.end - b.end)
}

/** What the fog computes: every edge's readings of a window together; overlapping sessions merged. */
function mergeEdges (c: Compiled, windows: Win[]): WindowResult[] {
  const merged: Array<Win & { edges: Set<number> }> = []
  if (c.spec.window.kind === 'session') {
    const byKey = new Map<string, Win[]>()
    for (const w of windows) {
      const list = byKey.get(w.key)
      if (list === undefined) byKey.set(w.key, [w])
      else list.push(w)
    }
    for (const list of byKey.values()) {
      let current: (Win & { edges: Set<number> }) | undefined
      for (const w of sortWindows(list)) {
        if (current !== undefined && w.start < current.end) {
          current.end = Math.max(current.end, w.end)
          current.entries.push(...w.entries)
          current.edges.add(w.edge)
        } else {
          current = { ...w, entries: [...w.entries], revision: 0, edges: new Set([w.edge]) }
          merged.push(current)
        }
      }
    }
  } else {
    const byId = new Map<string, Win & { edges: Set<number> }>()
    for (const w of windows) {
      const id = `${w.key}\u0000${w.start}`
      const m = byId.get(id)
      if (m === undefined) {
        const fresh = { ...w, entries: [...w.entries], revision: 0, edges: new Set([w.edge]) }
        byId.set(id, fresh)
        merged.push(fresh)
      } else {
        m.entries.push(...w.entries)
        m.edges.add(w.edge)
      }
    }
  }
  return sortWindows(merged).map(w => toResult(c, w, w.edges.size))
}

/**
 * The truth for each pipeline. `streams` holds each edge's messages in the order its broker delivers
 * them (publish order); `edgeNames` names the edges in the result (default "0", "1", ...).
 */
export function computeTruth (pipelines: readonly PipelineSpec[], streams: ReadonlyArray<readonly OracleMessage[]>, edgeNames?: readonly string[]): Record<string, PipelineTruth> {
  const out: Record<string, PipelineTruth> = {}
  for (const spec of pipelines) {
    const c = compile(spec)
    const exact = spec.timestamp !== undefined
    const edges: Record<string, EdgeTruth> = {}
    const all: Win[] = []
    streams.forEach((messages, i) => {
      const run = runEdge(c, messages, i)
      edges[edgeNames?.[i] ?? String(i)] = { ...run.counters, results: sortWindows(run.windows).map(w => toResult(c, w)) }
      all.push(...run.windows)
    })
    const merged = exact && spec.window.kind !== 'count' ? { results: mergeEdges(c, all) } : null
    out[spec.name] = { exact, window: spec.window.kind, edges, merged }
  }
  return out
}

/** The truth file `fogmesh sim --truth` writes. */
export interface TruthFile {
  version: 1
  seed: number
  /** The options of the run (durations in ms, start as epoch ms). */
  options: Record<string, unknown>
  /** The event-time origin of the run, epoch ms. */
  origin: number
  /** Messages published per broker URL, duplicates included. */
  published: Record<string, number>
  generated: {
    readings: number
    late: number
    duplicates: number
    malformed: Record<string, number>
  }
  /** Reasons the truth may not hold for this run (readings further apart than a pipeline's idle). */
  warnings: string[]
  pipelines: Record<string, PipelineTruth>
}

export async function loadTruth (path: string): Promise<TruthFile> {
  const data = JSON.parse(await readFile(path, 'utf8')) as TruthFile
  if (data === null || typeof data !== 'object' || data.version !== 1 || typeof data.pipelines !== 'object') {
    throw new Error(`${path} is not a fogmesh sim truth file (version 1)`)
  }
  return data
}

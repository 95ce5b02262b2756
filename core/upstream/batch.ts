/**
 * The wire format of partial aggregates going upstream: edge → fog, edge → cloud (failover) and
 * fog → cloud. One format for all three, because each carries the same thing: per window and key, the
 * state contributed by each edge. A contribution is identified by (pipeline, key, start, end, edge) and
 * versioned by its revision; receivers keep the highest revision of each, so a batch that arrives twice,
 * or a contribution that arrives by two routes, counts once.
 *
 * CBOR, version 1 (arrays where items repeat, to keep batches small):
 *   { v: 1, sender, role, seq,
 *     pipelines:  [[name, version, windowKind, [[field, fn, params], …]], …],
 *     watermarks: [[pipeline, edge, watermark, idle?], …],
 *     windows:    [[pipeline, key, start, end, final, [[edge, revision, [state, …]], …]], …] }
 * `final` is the sender's revision of the finalized merged result (fog → cloud), or null. `idle`, only
 * ever `true` (left out otherwise, so older receivers see the 3-element form), says the edge's pipeline
 * is idle: it has sent every window and has none open, so receivers need not wait for its watermark
 * until an entry without the flag says it is active again.
 */
import { Decoder, Encoder } from 'cbor-x'
import { deflateRawSync, inflateRawSync } from 'node:zlib'
import { getAggregate } from '../aggregates/index.ts'
import type { AnyAggregate } from '../aggregates/index.ts'
import { WireError } from '../errors.ts'
import type { WindowSpec } from '../pipeline/spec.ts'

export const WIRE_VERSION = 1

/** What a receiver needs to know of a pipeline to merge its partials. */
export interface PipelineDef {
  name: string
  version: number
  window: WindowSpec['kind']
  selects: Array<{ name: string, fn: string, params: number[] }>
}

export interface Contribution {
  edge: string
  revision: number
  /** Encoded aggregate states, one per select (as AggregateFunction.encode gives them). */
  states: unknown[]
}

export interface WindowEntry {
  pipeline: string
  key: string
  start: number
  end: number
  /** The sender's revision of the finalized result (fog → cloud); undefined when not final. */
  final?: number
  contributions: Contribution[]
}

export interface Watermark {
  pipeline: string
  edge: string
  watermark: number
  /** The edge's pipeline has nothing open or unsent: receivers leave it out of finalization. */
  idle?: boolean
}

export interface Batch {
  sender: string
  role: 'edge' | 'fog'
  /** Increases with every batch of a sender; receivers acknowledge it. */
  seq: number
  pipelines: PipelineDef[]
  watermarks: Watermark[]
  windows: WindowEntry[]
}

export const BATCH_LIMITS = {
  /** Identifiers (pipeline names, edge ids) and keys. */
  maxName: 256,
  maxKey: 4096,
  maxWindows: 200_000,
  maxContributions: 10_000,
  /** Inflated size of a compressed body. */
  maxInflated: 64 * 1024 * 1024
}

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true })
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true })

/** Bodies above this size are deflated when that saves at least a tenth. */
const COMPRESS_ABOVE = 1024

export interface EncodedBatch {
  body: Buffer
  /** 'deflate-raw' when compressed, for the Content-Encoding header. */
  encoding?: 'deflate-raw'
}

export function encodeBatch (batch: Batch): EncodedBatch {
  const body = encoder.encode({
    v: WIRE_VERSION,
    sender: batch.sender,
    role: batch.role,
    seq: batch.seq,
    pipelines: batch.pipelines.map(p => [p.name, p.version, p.window, p.selects.map(s => [s.name, s.fn, s.params])]),
    watermarks: batch.watermarks.map(w => w.idle === true ? [w.pipeline, w.edge, w.watermark, true] : [w.pipeline, w.edge, w.watermark]),
    windows: batch.windows.map(w => [w.pipeline, w.key, w.start, w.end, w.final ?? null, w.contributions.map(c => [c.edge, c.revision, c.states])])
  })
  if (body.length > COMPRESS_ABOVE) {
    const deflated = deflateRawSync(body)
    if (deflated.length < body.length * 0.9) return { body: deflated, encoding: 'deflate-raw' }
  }
  return { body }
}

function fail (message: string): never {
  throw new WireError(`invalid batch: ${message}`)
}

function list (v: unknown, what: string, max: number): unknown[] {
  if (!Array.isArray(v)) fail(`${what} must be an array`)
  if (v.length > max) fail(`${what} has ${v.length} entries, more than ${max}`)
  return v
}

function name (v: unknown, what: string, max = BATCH_LIMITS.maxName): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > max) fail(`${what} must be a non-empty string of at most ${max} characters`)
  return v
}

function uint (v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(`${what} must be a non-negative integer`)
  return v
}

function time (v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(`${what} must be a finite number`)
  return v
}

const WINDOW_KINDS = new Set(['tumbling', 'hopping', 'session', 'count'])

function pipelineDef (v: unknown, i: number): PipelineDef & { fns: AnyAggregate[] } {
  const [n, version, window, selects] = list(v, `pipelines[${i}]`, 4)
  const selectList = list(selects, `pipelines[${i}] selects`, 1000)
  if (typeof window !== 'string' || !WINDOW_KINDS.has(window)) fail(`pipelines[${i}]: unknown window kind`)
  const fns: AnyAggregate[] = []
  const defs = selectList.map((s, j) => {
    const [field, fn, params] = list(s, `pipelines[${i}] select ${j}`, 3)
    const agg = getAggregate(name(fn, 'an aggregate name'))
    if (agg === undefined) fail(`pipelines[${i}]: unknown aggregate ${String(fn)}`)
    const ps = list(params, 'parameters', 16).map(p => time(p, 'a parameter'))
    if (ps.length !== agg.params || agg.checkParams?.(ps) !== undefined) fail(`pipelines[${i}]: bad parameters for ${agg.name}`)
    fns.push(agg)
    return { name: name(field, 'a result field'), fn: agg.name, params: ps }
  })
  return { name: name(n, 'a pipeline name'), version: uint(version, 'a pipeline version'), window: window as WindowSpec['kind'], selects: defs, fns }
}

/**
 * Decodes and checks a batch body completely (every aggregate state included) before anything is
 * stored: a malformed batch is refused whole with a WireError.
 */
export function decodeBatch (body: Uint8Array, encoding?: string): Batch {
  let bytes = body
  if (encoding === 'deflate-raw') {
    try {
      bytes = inflateRawSync(body, { maxOutputLength: BATCH_LIMITS.maxInflated })
    } catch (err) {
      fail(`cannot inflate: ${(err as Error).message}`)
    }
  } else if (encoding !== undefined && encoding !== 'identity') {
    fail(`unsupported content encoding ${encoding}`)
  }
  let raw: unknown
  try {
    raw = decoder.decode(bytes)
  } catch (err) {
    fail(`not CBOR: ${(err as Error).message}`)
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('expected a map')
  const o = raw as Record<string, unknown>
  if (o.v !== WIRE_VERSION) fail(`unsupported version ${String(o.v)} (this node speaks ${WIRE_VERSION})`)
  if (o.role !== 'edge' && o.role !== 'fog') fail('role must be edge or fog')
  const pipelines = list(o.pipelines, 'pipelines', 10_000).map(pipelineDef)
  const byName = new Map(pipelines.map(p => [p.name, p]))
  if (byName.size !== pipelines.length) fail('a pipeline is defined twice')
  const watermarks = list(o.watermarks, 'watermarks', 1_000_000).map((w, i) => {
    const [p, edge, wm, idle] = list(w, `watermarks[${i}]`, 4)
    const entry: Watermark = { pipeline: name(p, 'a pipeline name'), edge: name(edge, 'an edge id'), watermark: time(wm, 'a watermark') }
    if (idle !== undefined && typeof idle !== 'boolean') fail(`watermarks[${i}]: idle must be a boolean`)
    if (idle === true) entry.idle = true
    return entry
  })
  const windows = list(o.windows, 'windows', BATCH_LIMITS.maxWindows).map((w, i) => {
    const [p, key, start, end, final, contributions] = list(w, `windows[${i}]`, 6)
    const def = byName.get(name(p, 'a pipeline name'))
    if (def === undefined) fail(`windows[${i}]: pipeline ${String(p)} is not defined in the batch`)
    const s = time(start, 'a window start')
    const e = time(end, 'a window end')
    if (!(e > s)) fail(`windows[${i}]: end must be after start`)
    const entry: WindowEntry = {
      pipeline: def.name,
      key: name(key, 'a key', BATCH_LIMITS.maxKey),
      start: s,
      end: e,
      contributions: list(contributions, `windows[${i}] contributions`, BATCH_LIMITS.maxContributions).map((c, j) => {
        const [edge, revision, states] = list(c, `windows[${i}] contribution ${j}`, 3)
        const stateList = list(states, 'states', def.fns.length)
        if (stateList.length !== def.fns.length) fail(`windows[${i}]: ${stateList.length} states for ${def.fns.length} result fields`)
        // Decoding proves the states are well-formed; the decoded states are discarded here.
        stateList.forEach((state, k) => def.fns[k].decode(state, def.selects[k].params))
        return { edge: name(edge, 'an edge id'), revision: uint(revision, 'a revision'), states: stateList }
      })
    }
    if (final !== null && final !== undefined) entry.final = uint(final, 'a final revision')
    return entry
  })
  return {
    sender: name(o.sender, 'the sender'),
    role: o.role,
    seq: uint(o.seq, 'seq'),
    pipelines: pipelines.map(({ fns: _fns, ...def }) => def),
    watermarks,
    windows
  }
}

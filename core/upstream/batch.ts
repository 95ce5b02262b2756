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
 *
 * Decoding memory stays bounded: a body is walked once (scanCbor) before cbor-x sees it. A CBOR item
 * of one byte can become a JS array of 50+ bytes, and a few KB of deflated zeros inflate to megabytes
 * of such items, so without the walk a 15 KB body cost 650 MB. The walk allocates nothing per item;
 * it bounds the nesting, the item and container counts and string lengths, and admits only the CBOR
 * that encodeBatch writes (definite lengths, no tags but 64 for byte arrays), so cbor-x's own
 * extensions (records, shared references, packed values) can never expand a body.
 */
import { Decoder, Encoder } from 'cbor-x'
import { deflateRawSync, inflateRawSync } from 'node:zlib'
import { getAggregate } from '../aggregates/index.ts'
import type { AnyAggregate } from '../aggregates/index.ts'
import { WireError, WireLimitError } from '../errors.ts'
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

/** The decoding bounds of one batch body; see batchLimits. */
export interface BatchLimits {
  /** Identifiers (pipeline names, edge ids) and keys. */
  maxName: number
  maxKey: number
  maxWindows: number
  maxContributions: number
  /** Inflated size of a compressed body. */
  maxInflated: number
  /** Nesting of arrays and maps; a batch uses 8. */
  maxDepth: number
  /** CBOR data items, and of those arrays and maps, in one body. */
  maxItems: number
  maxContainers: number
  /** Bytes of one text or byte string (keys are at most 4096 characters, registers 16 KiB). */
  maxString: number
}

/** The --max-batch default, on which the counts below are set. */
const DEFAULT_MAX_BATCH = 16 * 1024 * 1024

/**
 * The bounds for bodies of at most `maxBatch` bytes (a receiver's --max-batch), so a lower --max-batch
 * also lowers what one body can cost to decode.
 * - A compressed body inflates to at most `maxBatch`: compression never lets a body carry more than an
 *   uncompressed one could. Over it is "too large" (413), so that senders halve the batch.
 * - Batches hold one CBOR item per 4 to 7 bytes and one array per 15 to 35, so a body of `maxBatch`
 *   has at most about maxBatch/4 items and maxBatch/15 arrays. The counts leave room above that and
 *   bound what decoding can build from any body: about 150 MB at 16 MiB (an empty array costs some
 *   60 bytes, an item's slot 8), about 37 MB at 4 MiB.
 */
export function batchLimits (maxBatch: number = DEFAULT_MAX_BATCH): BatchLimits {
  const scale = maxBatch / DEFAULT_MAX_BATCH
  return {
    maxName: 256,
    maxKey: 4096,
    maxWindows: 200_000,
    maxContributions: 10_000,
    maxInflated: maxBatch,
    maxDepth: 16,
    maxItems: Math.ceil(6_000_000 * scale),
    maxContainers: Math.ceil(1_500_000 * scale),
    maxString: 1024 * 1024
  }
}

/** The bounds at the default --max-batch (16 MiB). */
export const BATCH_LIMITS: BatchLimits = batchLimits()

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

function tooMuch (limit: WireLimitError['limit'], message: string): never {
  throw new WireLimitError(limit, `invalid batch: ${message}`)
}

/** The tag cbor-x writes before a Uint8Array (distinct's registers); the only tag a batch holds. */
const TAG_UINT8_ARRAY = 64

/**
 * Walks one CBOR item spanning all of `b` without building it, and throws a WireError (a
 * WireLimitError for a bound) unless it is CBOR as encodeBatch writes it, within `limits`. Every
 * announced length is checked against the bytes left, so the decoder never sizes anything from a
 * length the body cannot back.
 */
export function scanCbor (b: Uint8Array, limits: BatchLimits = BATCH_LIMITS): void {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength)
  // Items still to read in each open array or map (a map's entries count twice); the top level is one.
  const open: number[] = [1]
  let pos = 0
  let items = 0
  let containers = 0
  const need = (n: number): void => {
    if (n > b.length - pos) fail(`not CBOR: truncated at byte ${pos}`)
  }
  while (open.length > 0) {
    const top = open.length - 1
    if (open[top] === 0) {
      open.pop()
      continue
    }
    open[top]--
    need(1)
    const initial = b[pos++]
    const major = initial >> 5
    const info = initial & 31
    let arg: number
    if (info < 24) {
      arg = info
    } else if (info === 24) {
      need(1)
      arg = b[pos]
      pos += 1
    } else if (info === 25) {
      need(2)
      arg = view.getUint16(pos)
      pos += 2
    } else if (info === 26) {
      need(4)
      arg = view.getUint32(pos)
      pos += 4
    } else if (info === 27) {
      need(8)
      // Beyond 2^53 only loses precision, and only lengths, never that large, are compared.
      arg = view.getUint32(pos) * 2 ** 32 + view.getUint32(pos + 4)
      pos += 8
    } else {
      return fail(`not CBOR as batches are written: ${info === 31 ? 'an indefinite length' : 'a reserved header'} at byte ${pos - 1}`)
    }
    if (++items > limits.maxItems) tooMuch('items', `more than ${limits.maxItems} CBOR items`)
    switch (major) {
      case 2:
      case 3:
        if (arg > limits.maxString) tooMuch('string', `a string of ${arg} bytes, more than ${limits.maxString}`)
        if (arg > b.length - pos) tooMuch('length', `a string of ${arg} bytes with ${b.length - pos} left`)
        pos += arg
        break
      case 4:
      case 5: {
        // Every item takes at least a byte: a count the rest of the body cannot hold is a lie.
        // Only the batch itself is a map; maps are the dearest items to decode (100+ bytes when empty).
        if (major === 5 && open.length > 1) fail(`not CBOR as batches are written: a map inside the batch at byte ${pos - 1}`)
        const count = major === 5 ? arg * 2 : arg
        if (count > b.length - pos) tooMuch('length', `${major === 5 ? 'a map' : 'an array'} of ${arg} entries with ${b.length - pos} bytes left`)
        if (++containers > limits.maxContainers) tooMuch('containers', `more than ${limits.maxContainers} arrays and maps`)
        if (open.length > limits.maxDepth) tooMuch('depth', `arrays and maps nested more than ${limits.maxDepth} deep`)
        open.push(count)
        break
      }
      case 6:
        if (arg !== TAG_UINT8_ARRAY || pos >= b.length || b[pos] >> 5 !== 2) fail(`unexpected CBOR tag ${arg}`)
        open[top]++ // the tagged byte string
        break
      case 7:
        // false, true, null, undefined and floats; no other simple values.
        if (info < 20 || info === 24) fail(`unexpected CBOR simple value at byte ${pos - 1}`)
        break
    }
  }
  if (pos !== b.length) fail(`${b.length - pos} bytes after the batch`)
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
export function decodeBatch (body: Uint8Array, encoding?: string, limits: BatchLimits = BATCH_LIMITS): Batch {
  let bytes = body
  if (encoding === 'deflate-raw') {
    try {
      bytes = inflateRawSync(body, { maxOutputLength: limits.maxInflated })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') tooMuch('inflated', `inflates to more than ${limits.maxInflated} bytes`)
      fail(`cannot inflate: ${(err as Error).message}`)
    }
  } else if (encoding !== undefined && encoding !== 'identity') {
    fail(`unsupported content encoding ${encoding}`)
  }
  scanCbor(bytes, limits)
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
  const windows = list(o.windows, 'windows', limits.maxWindows).map((w, i) => {
    const [p, key, start, end, final, contributions] = list(w, `windows[${i}]`, 6)
    const def = byName.get(name(p, 'a pipeline name'))
    if (def === undefined) fail(`windows[${i}]: pipeline ${String(p)} is not defined in the batch`)
    const s = time(start, 'a window start')
    const e = time(end, 'a window end')
    if (!(e > s)) fail(`windows[${i}]: end must be after start`)
    const entry: WindowEntry = {
      pipeline: def.name,
      key: name(key, 'a key', limits.maxKey),
      start: s,
      end: e,
      contributions: list(contributions, `windows[${i}] contributions`, limits.maxContributions).map((c, j) => {
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

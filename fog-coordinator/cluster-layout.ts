/**
 * What a fog cluster keeps in etcd, under one prefix (default `/fogmesh/`), and how each value is
 * encoded. This layout is the cluster's on-disk format: coordinators of different versions share it.
 *
 *   m/<id>                    member: {"id","http","since"} (JSON), attached to the member's lease
 *   leader                    id of the leader (text), attached to the leader's lease
 *   shardmap                  the ShardMap (JSON) without status; only the leader writes it
 *   p/<pipeline>              PipelineDef (JSON) learned from batches
 *   deployed                  the deployed pipeline set (JSON, see core/pipeline/deployment.ts)
 *   w/<pipeline>/<start>/<end>/<key>   a merged window: every edge's contribution, when first seen,
 *                             its final revision (CBOR, see WindowRecord); written only by the owner
 *                             of its shard
 *   f/<pipeline>/<start>/<end>/<key>   the window's final revision, until the cloud acknowledged it
 *                             (a replicated "to forward" mark: whoever owns the shard forwards it)
 *   s/<shard>/<pass>          the results of one finalization pass in one shard (JSON list of results, as
 *                             the sinks get them), committed with those final windows by a coordinator with
 *                             sinks and removed once they are in its sinks' queues: whoever owns the shard
 *                             after a crash offers them to its sinks again. `<pass>` is unique (who, when);
 *                             windows without one were handed to the sinks already
 *
 * Names and keys are URI-encoded (no `/` inside a segment); times are fixed-width decimals offset to be
 * non-negative, so that a pipeline's windows sort by time.
 */
import { Decoder, Encoder } from 'cbor-x'
import { WireError } from '../core/errors.ts'
import type { Contribution } from '../core/upstream/batch.ts'
import type { MergeWindow } from '../server/merge/contribution-store.ts'
import type { WindowResult } from '../server/shell/results.ts'

/** Makes every time a Date can hold non-negative, so that fixed-width decimals sort. */
const TIME_OFFSET = 8.64e15
const TIME_WIDTH = 17

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true })
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true })

export interface WindowRef {
  pipeline: string
  key: string
  start: number
  end: number
}

export interface MemberRecord {
  id: string
  http: string
  /** When the member registered (epoch ms). */
  since: number
}

function time (t: number): string {
  return String(t + TIME_OFFSET).padStart(TIME_WIDTH, '0')
}

function untime (s: string): number {
  return Number(s) - TIME_OFFSET
}

export class ClusterLayout {
  readonly prefix: string

  constructor (prefix: string) {
    this.prefix = prefix.endsWith('/') ? prefix : prefix + '/'
  }

  get leader (): string { return this.prefix + 'leader' }
  get shardMap (): string { return this.prefix + 'shardmap' }
  get deployed (): string { return this.prefix + 'deployed' }
  get members (): string { return this.prefix + 'm/' }
  get windows (): string { return this.prefix + 'w/' }
  get marks (): string { return this.prefix + 'f/' }
  get handoffs (): string { return this.prefix + 's/' }

  member (id: string): string {
    return this.members + encodeURIComponent(id)
  }

  pipeline (name: string): string {
    return this.prefix + 'p/' + encodeURIComponent(name)
  }

  window (w: WindowRef): string {
    return this.windows + windowPath(w)
  }

  mark (w: WindowRef): string {
    return this.marks + windowPath(w)
  }

  /** The results of one pass (`pass`: unique, no `/`) in `shard`, until they are in the sinks' queues. */
  handoff (shard: number, pass: string): string {
    return this.handoffs + String(shard) + '/' + encodeURIComponent(pass)
  }

  /** What a key under the prefix is, with its parts. */
  parse (key: string): ParsedKey {
    if (!key.startsWith(this.prefix)) return { kind: 'other' }
    const rest = key.slice(this.prefix.length)
    if (rest === 'leader') return { kind: 'leader' }
    if (rest === 'shardmap') return { kind: 'shardmap' }
    if (rest === 'deployed') return { kind: 'deployed' }
    const slash = rest.indexOf('/')
    const head = rest.slice(0, slash)
    const parts = rest.slice(slash + 1).split('/')
    try {
      if (head === 'm' && parts.length === 1) return { kind: 'member', id: decodeURIComponent(parts[0]) }
      if (head === 'p' && parts.length === 1) return { kind: 'pipeline', name: decodeURIComponent(parts[0]) }
      if ((head === 'w' || head === 'f') && parts.length === 4) {
        const ref = { pipeline: decodeURIComponent(parts[0]), start: untime(parts[1]), end: untime(parts[2]), key: decodeURIComponent(parts[3]) }
        return head === 'w' ? { kind: 'window', ref } : { kind: 'mark', ref }
      }
      if (head === 's' && parts.length === 2 && /^\d+$/.test(parts[0])) return { kind: 'handoff', shard: Number(parts[0]) }
    } catch {}
    return { kind: 'other' }
  }
}

export type ParsedKey =
  | { kind: 'leader' | 'shardmap' | 'deployed' | 'other' }
  | { kind: 'member', id: string }
  | { kind: 'pipeline', name: string }
  | { kind: 'window' | 'mark', ref: WindowRef }
  | { kind: 'handoff', shard: number }

function windowPath (w: WindowRef): string {
  return `${encodeURIComponent(w.pipeline)}/${time(w.start)}/${time(w.end)}/${encodeURIComponent(w.key)}`
}

/**
 * A window record, CBOR:
 *   [pipeline, key, start, end, firstSeen, finalRevision | null, finalAt | null, dirty, upstreamFinal,
 *    [[edge, revision, [state, …]], …]]
 * A final window keeps its contributions: a partial that arrives later (a delayed delivery, or an
 * edge's late update) must be merged with the others to give revision + 1 exactly. The record is the
 * window's result and goes when the result expires.
 */
type Record = [string, string, number, number, number, number | null, number | null, boolean, boolean, Array<[string, number, unknown[]]>]

export function encodeWindow (w: MergeWindow): Buffer {
  const r: Record = [w.pipeline, w.key, w.start, w.end, w.firstSeen, w.finalRevision, w.finalAt, w.dirty, w.upstreamFinal,
    [...w.contributions.values()].map(c => [c.edge, c.revision, c.states])]
  return Buffer.from(encoder.encode(r))
}

export function decodeWindow (bytes: Uint8Array): MergeWindow {
  let r: Record
  try {
    r = decoder.decode(bytes) as Record
  } catch (err) {
    throw new WireError(`unreadable window record: ${(err as Error).message}`)
  }
  const num = (v: unknown) => typeof v === 'number' && Number.isFinite(v)
  if (!Array.isArray(r) || r.length !== 10 || typeof r[0] !== 'string' || typeof r[1] !== 'string' || !num(r[2]) || !num(r[3]) || !num(r[4]) ||
    !(r[5] === null || num(r[5])) || !(r[6] === null || num(r[6])) || typeof r[7] !== 'boolean' || typeof r[8] !== 'boolean' || !Array.isArray(r[9])) {
    throw new WireError('malformed window record')
  }
  const contributions = new Map<string, Contribution>()
  for (const c of r[9]) {
    if (!Array.isArray(c) || typeof c[0] !== 'string' || !num(c[1]) || !Array.isArray(c[2])) throw new WireError('malformed contribution in a window record')
    contributions.set(c[0], { edge: c[0], revision: c[1], states: c[2] })
  }
  return { pipeline: r[0], key: r[1], start: r[2], end: r[3], firstSeen: r[4], finalRevision: r[5], finalAt: r[6], dirty: r[7], upstreamFinal: r[8], contributions }
}

/** A hand-off's value: the results as JSON, as the sinks' queues keep them. */
export function encodeHandoff (results: readonly WindowResult[]): string {
  return JSON.stringify(results)
}

export function decodeHandoff (value: string): WindowResult[] {
  let r: unknown
  try {
    r = JSON.parse(value)
  } catch (err) {
    throw new WireError(`unreadable hand-off to the sinks: ${(err as Error).message}`)
  }
  const num = (v: unknown) => typeof v === 'number' && Number.isFinite(v)
  const ok = (x: unknown): x is WindowResult => {
    const o = x as Partial<WindowResult> | null
    return typeof o === 'object' && o !== null && typeof o.pipeline === 'string' && typeof o.key === 'string' && num(o.start) && num(o.end) &&
      o.final === true && num(o.revision) && num(o.sources) && typeof o.values === 'object' && o.values !== null && !Array.isArray(o.values)
  }
  if (!Array.isArray(r) || !r.every(ok)) throw new WireError('malformed hand-off to the sinks')
  return r
}

/**
 * The cluster bench's load: batches of partials as edges send them after routing (every window of a
 * batch in a shard the target coordinator owns, each holding one edge's count/sum/avg/max), the window
 * records a coordinator writes to etcd for them, and a closed loop that keeps a fixed number of
 * requests in flight for a fixed time.
 */
import { getAggregate } from '../core/aggregates/index.ts'
import { encodeBatch } from '../core/upstream/batch.ts'
import type { Batch, Contribution, PipelineDef, Watermark, WindowEntry } from '../core/upstream/batch.ts'
import { shardOf } from '../core/upstream/shards.ts'
import type { ShardMap } from '../core/upstream/shards.ts'
import { ClusterLayout, encodeWindow } from '../fog-coordinator/cluster-layout.ts'
import type { MergeWindow } from '../server/merge/contribution-store.ts'
import { median } from './lib.ts'

export const PIPELINE: PipelineDef = {
  name: 'bench',
  version: 1,
  window: 'tumbling',
  selects: [
    { name: 'n', fn: 'count', params: [] },
    { name: 'total', fn: 'sum', params: [] },
    { name: 'mean', fn: 'avg', params: [] },
    { name: 'high', fn: 'max', params: [] }
  ]
}

const AGGREGATES = PIPELINE.selects.map(s => getAggregate(s.fn)!)
/** Readings per contribution: enough for every state to hold real numbers. */
const READINGS = 10

/** One edge's partial of a window: READINGS readings around 20 degrees. */
export function contribution (edge: string, revision: number, seed: number): Contribution {
  const states = AGGREGATES.map(a => {
    let s = a.create([])
    for (let i = 0; i < READINGS; i++) s = a.add(s, 20 + ((seed * 7 + i * 13) % 100) / 10, 0)
    return a.encode(s)
  })
  return { edge, revision, states }
}

/** `n` keys whose shard `owner` owns in `map`, named after `prefix`. */
export function keysOwnedBy (map: ShardMap, owner: string, prefix: string, n: number): string[] {
  const keys: string[] = []
  for (let i = 0; keys.length < n; i++) {
    if (i > 1_000_000) throw new Error(`no ${n} keys of ${owner} in the shard map`)
    const key = `${prefix}-${i}`
    if (map.owners[shardOf(PIPELINE.name, key, map.shards)] === owner) keys.push(key)
  }
  return keys
}

export interface Request {
  body: Buffer
  headers: Record<string, string>
}

/** A batch from `edge`, as an edge posts it: every window with the edge's contribution at `revision`. */
export function batchRequest (edge: string, seq: number, windows: WindowEntry[], watermarks: Watermark[] = []): Request {
  const batch: Batch = { seq, sender: edge, role: 'edge', pipelines: [PIPELINE], watermarks, windows }
  const { body, encoding } = encodeBatch(batch)
  const headers: Record<string, string> = { 'content-type': 'application/cbor' }
  if (encoding !== undefined) headers['content-encoding'] = encoding
  return { body, headers }
}

export function windowEntries (edge: string, revision: number, keys: string[], start: number, end: number): WindowEntry[] {
  return keys.map((key, i) => ({ pipeline: PIPELINE.name, key, start, end, contributions: [contribution(edge, revision, revision + i)] }))
}

/** What a coordinator puts to etcd for these windows (as new windows, not final): keys and records. */
export function windowRecords (windows: WindowEntry[], prefix: string): Array<[string, Buffer]> {
  const layout = new ClusterLayout(prefix)
  return windows.map(e => {
    const w: MergeWindow = {
      pipeline: e.pipeline, key: e.key, start: e.start, end: e.end, firstSeen: Date.now(), finalRevision: null, finalAt: null,
      dirty: false, upstreamFinal: false, contributions: new Map(e.contributions.map(c => [c.edge, c]))
    }
    return [layout.window(w), encodeWindow(w)]
  })
}

// ---------------------------------------------------------------------------------------------
// Closed loop

export interface LoopResult {
  /** Operations that succeeded and ended within the duration. */
  ok: number
  /** Operations that succeeded after it (not in the rate). */
  okAfterEnd: number
  durationMs: number
  /** Of the operations counted in `ok`, ms. */
  latencies: number[]
  /** Failed operations by what they returned or threw. */
  failed: Record<string, number>
}

/**
 * Runs `workers` loops of `op` for `durationMs`; `op` resolves with 'ok' or a short failure reason.
 * Operations that end after the duration are awaited but not counted, so the rate is what completed
 * within it.
 */
export async function closedLoop (workers: Array<() => Promise<string>>, durationMs: number): Promise<LoopResult> {
  const result: LoopResult = { ok: 0, okAfterEnd: 0, durationMs, latencies: [], failed: {} }
  const t0 = performance.now()
  const end = t0 + durationMs
  await Promise.all(workers.map(async op => {
    while (performance.now() < end) {
      const a = performance.now()
      let outcome: string
      try {
        outcome = await op()
      } catch (err) {
        outcome = (err as Error).message.slice(0, 80)
      }
      const b = performance.now()
      if (b > end) {
        if (outcome === 'ok') result.okAfterEnd++
        break
      }
      if (outcome === 'ok') {
        result.ok++
        result.latencies.push(b - a)
      } else {
        result.failed[outcome] = (result.failed[outcome] ?? 0) + 1
        // A refusing target must not turn the loop into a busy spin.
        await new Promise(resolve => setTimeout(resolve, 20))
      }
    }
  }))
  return result
}

export interface Distribution {
  n: number
  median: number
  p99: number
}

/** Median and nearest-rank p99, ms (two decimals). */
export function distribution (xs: number[]): Distribution {
  const s = [...xs].sort((a, b) => a - b)
  const r = (x: number) => Math.round(x * 100) / 100
  return { n: s.length, median: r(median(s)), p99: r(s[Math.max(0, Math.ceil(0.99 * s.length) - 1)] ?? NaN) }
}

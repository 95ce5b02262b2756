/**
 * The result record every tier serves, and the query over results that `GET /v1/aggregates` takes.
 */
import type { Values } from '../../core/windows/window.ts'

export interface WindowResult {
  pipeline: string
  key: string
  /** Epoch ms; rendered as ISO-8601 by the HTTP API. */
  start: number
  end: number
  /** false while the window is still open (live view at the edge) or not yet finalized upstream. */
  final: boolean
  revision: number
  /** Number of edges whose readings are in the result. */
  sources: number
  values: Values
}

export interface ResultQuery {
  key?: string
  /** Windows with from <= start < to. */
  from: number
  to: number
  limit: number
}

export const QUERY_LIMITS = {
  defaultLimit: 1000,
  maxLimit: 10_000
}

/** Results in API order: by start, then key (then end, for count windows sharing a start). */
export function compareResults (a: WindowResult, b: WindowResult): number {
  return a.start - b.start || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0) || a.end - b.end
}

export function matchesQuery (r: WindowResult, q: ResultQuery): boolean {
  return r.start >= q.from && r.start < q.to && (q.key === undefined || r.key === q.key)
}

/**
 * Stored results with the live ones (windows not final yet) that match `q` mixed in, in API order and
 * within the limit. A live window that is also stored (after a crash between two writes) is left out:
 * the stored one wins.
 */
export function withLive (stored: WindowResult[], live: Iterable<WindowResult>, q: ResultQuery): WindowResult[] {
  const id = (r: WindowResult) => `${r.key}\0${r.start}\0${r.end}`
  let known: Set<string> | undefined
  let added = false
  for (const r of live) {
    if (!matchesQuery(r, q)) continue
    known ??= new Set(stored.map(id))
    if (known.has(id(r))) continue
    stored.push(r)
    added = true
  }
  if (added) {
    stored.sort(compareResults)
    stored.length = Math.min(stored.length, q.limit)
  }
  return stored
}

/** The JSON shape of a result in the HTTP API. */
export interface ResultJson {
  key: string
  /** ISO-8601, UTC. */
  start: string
  end: string
  final: boolean
  revision: number
  sources: number
  values: Values
}

export function resultJson (r: WindowResult): ResultJson {
  return {
    key: r.key,
    start: new Date(r.start).toISOString(),
    end: new Date(r.end).toISOString(),
    final: r.final,
    revision: r.revision,
    sources: r.sources,
    values: r.values
  }
}

/**
 * Compares results a tier serves over HTTP with the simulator's ground truth, with the tolerance each
 * aggregate documents: exact for count/min/max/first/last, 1e-9 relative for sums and moments
 * (floating-point summation order), and for the estimated ones what the truth's `approximate` says
 * (percentile 1%; distinct exact up to 1000 values, 2% beyond). Used by the tests and by the chaos
 * runner (`fogmesh chaos`).
 */
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import type { ResultJson } from '../server/shell/results.ts'
import { APPROXIMATIONS, approximationsOf } from './truth.ts'
import type { Approximation, WindowResult as TruthResult } from './truth.ts'

export type ServedResult = ResultJson

/** Longest one request of fetchResults/fetchMetric may take, ms. */
const REQUEST_TIMEOUT = 10_000

function close (a: number, b: number, rel: number): boolean {
  return Math.abs(a - b) <= rel * Math.max(Math.abs(a), Math.abs(b)) + 1e-12
}

/** Relative error allowed for floating-point results computed in another order. */
const ROUNDING = 1e-9

/**
 * Why a served value differs from the truth, or undefined when it is within tolerance. `approx` is the
 * field's entry in the truth's `approximate` (default: what SPEC.md promises for `fn`).
 */
export function valueMismatch (fn: string, got: unknown, want: unknown, approx: Approximation | undefined = APPROXIMATIONS[fn]): string | undefined {
  if (want === null || typeof want === 'string' || fn === 'count' || fn === 'min' || fn === 'max' || fn === 'first' || fn === 'last') {
    return got === want ? undefined : `expected ${String(want)}, got ${String(got)}`
  }
  if (typeof got !== 'number' || typeof want !== 'number') return `expected ${String(want)}, got ${String(got)}`
  const rel = approx === undefined
    ? ROUNDING
    : approx.exactUpTo !== undefined && want <= approx.exactUpTo ? 0 : approx.relativeError
  return close(got, want, rel) ? undefined : `expected ${want}, got ${got} (tolerance ${rel})`
}

export interface CompareOptions {
  /** Expected `sources` of every result that does not say (edge views: 1). */
  sources?: number
  /** The pipeline's `approximate` from the truth; default: derived from the spec the same way. */
  approximate?: Record<string, Approximation>
}

/** Every difference between served final results and the truth; empty when they agree. */
export function compareResults (spec: PipelineSpec, served: ServedResult[], truth: TruthResult[], opts: CompareOptions = {}): string[] {
  const fns = new Map(spec.select.map(s => [s.name, s.fn]))
  const approximate = opts.approximate ?? approximationsOf(spec)
  const id = (r: { key: string, start: string, end: string }) => `${r.key}@${r.start}..${r.end}`
  const byId = new Map(served.filter(r => r.final).map(r => [id(r), r]))
  const problems: string[] = []
  for (const want of truth) {
    const got = byId.get(id(want))
    if (got === undefined) {
      problems.push(`${spec.name} ${id(want)}: missing`)
      continue
    }
    byId.delete(id(want))
    if (got.revision !== want.revision) problems.push(`${spec.name} ${id(want)}: revision ${got.revision}, expected ${want.revision}`)
    const sources = want.sources ?? opts.sources
    if (sources !== undefined && got.sources !== sources) problems.push(`${spec.name} ${id(want)}: sources ${got.sources}, expected ${sources}`)
    for (const [name, value] of Object.entries(want.values)) {
      const bad = valueMismatch(fns.get(name) ?? '', got.values[name], value, approximate[name])
      if (bad !== undefined) problems.push(`${spec.name} ${id(want)} ${name}: ${bad}`)
    }
  }
  for (const extra of byId.keys()) problems.push(`${spec.name} ${extra}: not in the ground truth`)
  return problems
}

/** All results of a pipeline from a tier (up to 10,000). */
export async function fetchResults (base: string, pipeline: string): Promise<ServedResult[]> {
  const res = await fetch(`${base}/v1/aggregates/${pipeline}?limit=10000`, { signal: AbortSignal.timeout(REQUEST_TIMEOUT) })
  const text = await res.text()
  let body: unknown = text
  try { body = JSON.parse(text) } catch {}
  if (res.status !== 200) throw new Error(`GET aggregates/${pipeline}: ${res.status} ${JSON.stringify(body)}`)
  return (body as { results: ServedResult[] }).results
}

/** Prometheus samples of one metric: label string (`{a="b"}`, or '' without labels) -> value. */
export async function fetchMetric (base: string, name: string): Promise<Map<string, number>> {
  const res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(REQUEST_TIMEOUT) })
  const text = await res.text()
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue
    const m = /^(\w+)(\{[^}]*\})? (\S+)$/.exec(line)
    if (m === null || m[1] !== name) continue
    out.set(m[2] ?? '', Number(m[3]))
  }
  return out
}

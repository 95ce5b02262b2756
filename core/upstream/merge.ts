/**
 * How fog and cloud turn contributions into results. Each (pipeline, key, window) keeps one
 * contribution per edge, the highest revision it has seen; the result is the merge of all of them. This
 * set semantics is what makes delivery idempotent: replays, duplicates and the same contribution
 * arriving via the fog and straight from the edge all count once.
 */
import type { AnyAggregate } from '../aggregates/index.ts'
import { getAggregate } from '../aggregates/index.ts'
import type { Values } from '../windows/window.ts'
import type { Contribution, PipelineDef } from './batch.ts'

/**
 * Whether `incoming` changes the set: a new edge, or a higher revision of a known one. Equal revisions
 * are the same contribution (a replay) and are ignored.
 */
export function supersedes (current: Pick<Contribution, 'revision'> | undefined, incoming: Pick<Contribution, 'revision'>): boolean {
  return current === undefined || incoming.revision > current.revision
}

function aggregatesOf (def: PipelineDef): AnyAggregate[] {
  return def.selects.map(s => {
    const agg = getAggregate(s.fn)
    if (agg === undefined) throw new Error(`unknown aggregate ${s.fn}`)
    return agg
  })
}

/** The result values of the merge of `contributions` (encoded states, as in batches). */
export function mergeContributions (def: PipelineDef, contributions: Iterable<Pick<Contribution, 'states'>>): Values {
  const aggs = aggregatesOf(def)
  const merged: unknown[] = aggs.map((a, i) => a.create(def.selects[i].params))
  for (const c of contributions) {
    for (let i = 0; i < aggs.length; i++) merged[i] = aggs[i].merge(merged[i], aggs[i].decode(c.states[i], def.selects[i].params))
  }
  const values: Values = {}
  for (let i = 0; i < aggs.length; i++) values[def.selects[i].name] = aggs[i].result(merged[i])
  return values
}

/** Two definitions merge the same way: same result fields, aggregates and parameters. */
export function sameSelects (a: PipelineDef, b: PipelineDef): boolean {
  return a.window === b.window && a.selects.length === b.selects.length &&
    a.selects.every((s, i) => s.name === b.selects[i].name && s.fn === b.selects[i].fn &&
      s.params.length === b.selects[i].params.length && s.params.every((p, j) => p === b.selects[i].params[j]))
}

interface EdgeProgress {
  watermark: number
  lastSeen: number
  /** As last reported: the edge's pipeline has nothing open or unsent. */
  idle: boolean
}

/**
 * Decides when a merged window is final: when every edge that feeds its pipeline has a watermark at or
 * past the window's end, or `finalizeAfter` after the window was first seen. An edge not heard from for
 * `finalizeAfter` is not waited for (it went silent; its partials are merged when they come, as a new
 * revision). An idle edge (it said so with its latest watermark) is not waited for either, until it
 * reports a watermark without the flag: as with idle sources in Flink, one quiet edge must not hold
 * back the windows of the others.
 */
export class Finalizer {
  readonly #finalizeAfter: number
  readonly #edges = new Map<string, Map<string, EdgeProgress>>()

  constructor (finalizeAfter: number) {
    this.#finalizeAfter = finalizeAfter
  }

  /** Records an edge's watermark for a pipeline (never moves it back) and whether it is idle. */
  observe (pipeline: string, edge: string, watermark: number, now: number, idle = false): void {
    let edges = this.#edges.get(pipeline)
    if (edges === undefined) {
      edges = new Map()
      this.#edges.set(pipeline, edges)
    }
    const p = edges.get(edge)
    if (p === undefined) edges.set(edge, { watermark, lastSeen: now, idle })
    else {
      p.watermark = Math.max(p.watermark, watermark)
      p.lastSeen = now
      p.idle = idle
    }
  }

  /**
   * Makes an edge known to feed a pipeline before it has reported a watermark here (its partials came
   * through another node, e.g. a fog cluster's replicated state): it is waited for from now, like an
   * edge whose watermark is behind, until it reports one or is silent for `finalizeAfter`.
   */
  know (pipeline: string, edge: string, now: number): void {
    if (this.#edges.get(pipeline)?.has(edge) !== true) this.observe(pipeline, edge, -Infinity, now)
  }

  /**
   * An edge's watermark as gossiped in the mesh (the one its fogs acknowledged, so never ahead of
   * delivered windows): raises the watermark and marks the edge heard from, but leaves its idle flag
   * as its last batch said. An edge not known yet becomes known: it is waited for before it sends.
   */
  gossiped (pipeline: string, edge: string, watermark: number, now: number): void {
    const p = this.#edges.get(pipeline)?.get(edge)
    if (p === undefined) this.observe(pipeline, edge, watermark, now)
    else {
      p.watermark = Math.max(p.watermark, watermark)
      p.lastSeen = now
    }
  }

  /**
   * The edge's heartbeats stopped (it expired in the mesh): it is not waited for until it is heard
   * from again. Its last-seen time becomes -Infinity: "never", as far as waiting goes.
   */
  silence (edge: string): void {
    for (const edges of this.#edges.values()) {
      const p = edges.get(edge)
      if (p !== undefined) p.lastSeen = -Infinity
    }
  }

  /** Marks an edge as heard from (any batch), without a watermark. */
  seen (edge: string, now: number): void {
    for (const edges of this.#edges.values()) {
      const p = edges.get(edge)
      if (p !== undefined) p.lastSeen = now
    }
  }

  isDue (pipeline: string, end: number, firstSeen: number, now: number): boolean {
    if (now - firstSeen >= this.#finalizeAfter) return true
    const edges = this.#edges.get(pipeline)
    if (edges === undefined) return false
    for (const p of edges.values()) {
      if (p.idle || now - p.lastSeen >= this.#finalizeAfter) continue
      if (p.watermark < end) return false
    }
    return true
  }

  /** Watermarks as known here, for forwarding upstream and for /v1/mesh (-Infinity: none reported yet). */
  * watermarks (): Generator<{ pipeline: string, edge: string, watermark: number, lastSeen: number, idle: boolean }> {
    for (const [pipeline, edges] of this.#edges) {
      for (const [edge, p] of edges) yield { pipeline, edge, ...p }
    }
  }
}

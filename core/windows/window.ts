/**
 * The mergeable state of one window for one key: one aggregate state per result field. This is what an
 * edge ships upstream as a partial and what fog and cloud merge.
 */
import type { CompiledSelect } from '../pipeline/compile.ts'

export type Values = Record<string, number | string | null>

export interface WindowState {
  readonly key: string
  start: number
  end: number
  /** 0 when first emitted; +1 for every re-emission caused by a late reading (`late: update`). */
  revision: number
  /** Readings added, whatever the selects are: what a checkpoint restores or a crash loses. */
  readings: number
  /** One aggregate state per select, in select order. */
  readonly states: unknown[]
}

export function createWindow (selects: readonly CompiledSelect[], key: string, start: number, end: number): WindowState {
  const states = new Array<unknown>(selects.length)
  for (let i = 0; i < selects.length; i++) states[i] = selects[i].fn.create(selects[i].params)
  return { key, start, end, revision: 0, readings: 0, states }
}

export function addToWindow (selects: readonly CompiledSelect[], w: WindowState, inputs: readonly unknown[], eventTime: number): void {
  const states = w.states
  for (let i = 0; i < selects.length; i++) states[i] = selects[i].fn.add(states[i], inputs[i], eventTime)
  w.readings++
}

/** Merges `other`'s aggregate states into `into` (bounds are the caller's business). */
export function mergeWindow (selects: readonly CompiledSelect[], into: WindowState, other: WindowState): void {
  for (let i = 0; i < selects.length; i++) into.states[i] = selects[i].fn.merge(into.states[i], other.states[i])
  into.readings += other.readings
}

export function windowValues (selects: readonly CompiledSelect[], w: WindowState): Values {
  const values: Values = {}
  for (let i = 0; i < selects.length; i++) values[selects[i].name] = selects[i].fn.result(w.states[i])
  return values
}

/** A window's aggregate states in wire form (AggregateFunction.encode), for partials and checkpoints. */
export function encodeStates (selects: readonly CompiledSelect[], w: WindowState): unknown[] {
  return selects.map((s, i) => s.fn.encode(w.states[i]))
}

export function decodeStates (selects: readonly CompiledSelect[], encoded: readonly unknown[]): unknown[] {
  if (encoded.length !== selects.length) throw new Error(`${encoded.length} states for ${selects.length} result fields`)
  return selects.map((s, i) => s.fn.decode(encoded[i], s.params))
}

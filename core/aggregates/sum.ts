/**
 * sum(x): the sum of the readings; 0 for an empty window.
 *
 * Kept as a Neumaier-compensated sum (a running sum plus the rounding error it has dropped), so that
 * adding many readings, and merging partial sums in any order, matches the exact sum to within a few
 * ulps instead of drifting with the number and order of additions. The bound is n·ε²·Σ|x| (ε = 2^-53):
 * only partial sums more than ~1e15 times larger than the readings that must survive them (1e150
 * next to 1e15, the big ones cancelling) lose those readings. A sum beyond ±1.8e308 overflows to
 * ±Infinity (such a state cannot be encoded for the wire: decode rejects non-finite numbers).
 *
 * Encoded as the sum alone when the compensation is zero (the common case for integer readings), else
 * as `[sum, compensation]`.
 */
import type { AggregateFunction } from './aggregate.ts'
import { array, describe, finiteNumber, wireError } from './wire.ts'

export interface SumState {
  /** The running sum. */
  s: number
  /** The accumulated rounding error of `s`; the sum is `s + c`. */
  c: number
}

/** Neumaier's step: adds x to s and keeps the low-order bits the addition loses in c. */
export function addCompensated (state: SumState, x: number): void {
  const s = state.s
  const t = s + x
  if (Math.abs(s) >= Math.abs(x)) state.c += (s - t) + x
  else state.c += (x - t) + s
  state.s = t
}

export function compensatedValue (state: SumState): number {
  // Once s overflowed, c holds Infinity - Infinity = NaN; the overflowed sum is the honest answer.
  return Number.isFinite(state.s) ? state.s + state.c : state.s
}

export function mergeCompensated (state: SumState, other: SumState): void {
  addCompensated(state, other.s)
  state.c += other.c
}

export function encodeCompensated (state: SumState): number | number[] {
  return state.c === 0 ? state.s : [state.s, state.c]
}

export function decodeCompensated (aggregate: string, data: unknown): SumState {
  if (typeof data === 'number') return { s: finiteNumber(aggregate, 'the sum', data), c: 0 }
  if (!Array.isArray(data)) throw wireError(aggregate, `expected a number or [sum, compensation], got ${describe(data)}`)
  const [s, c] = array(aggregate, data, 2, 2, '[sum, compensation]')
  return { s: finiteNumber(aggregate, 'the sum', s), c: finiteNumber(aggregate, 'the compensation', c) }
}

export const sum: AggregateFunction<SumState> = {
  name: 'sum',
  input: 'number',
  params: 0,

  create () {
    return { s: 0, c: 0 }
  },

  add (state, value) {
    addCompensated(state, value as number)
    return state
  },

  merge (state, other) {
    mergeCompensated(state, other)
    return state
  },

  result (state) {
    return compensatedValue(state)
  },

  encode (state) {
    return encodeCompensated(state)
  },

  decode (data) {
    return decodeCompensated('sum', data)
  }
}

/**
 * avg(x): the arithmetic mean, sum / count; null for an empty window.
 *
 * The sum is Neumaier-compensated like sum(x), so the mean of merged parts matches the mean of all
 * readings to within a few ulps whatever the split and merge order.
 *
 * Encoded as `[count, sum]`, or `[count, sum, compensation]` when the compensation is not zero.
 */
import type { AggregateFunction } from './aggregate.ts'
import { addCompensated, compensatedValue, mergeCompensated } from './sum.ts'
import { array, countNumber, finiteNumber, wireError } from './wire.ts'

export interface AvgState {
  n: number
  /** Compensated sum: the sum is `s + c`. */
  s: number
  c: number
}

export const avg: AggregateFunction<AvgState> = {
  name: 'avg',
  input: 'number',
  params: 0,

  create () {
    return { n: 0, s: 0, c: 0 }
  },

  add (state, value) {
    state.n++
    addCompensated(state, value as number)
    return state
  },

  merge (state, other) {
    state.n += other.n
    mergeCompensated(state, other)
    return state
  },

  result (state) {
    return state.n === 0 ? null : compensatedValue(state) / state.n
  },

  encode (state) {
    return state.c === 0 ? [state.n, state.s] : [state.n, state.s, state.c]
  },

  decode (data) {
    const a = array('avg', data, 2, 3, '[count, sum] or [count, sum, compensation]')
    const n = countNumber('avg', 'the count', a[0])
    const s = finiteNumber('avg', 'the sum', a[1])
    const c = a.length === 3 ? finiteNumber('avg', 'the compensation', a[2]) : 0
    if (n === 0 && (s !== 0 || c !== 0)) throw wireError('avg', 'an empty state must have a zero sum')
    return { n, s, c }
  }
}

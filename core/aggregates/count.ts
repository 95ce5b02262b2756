/**
 * count(): the number of readings in the window. Exact; an empty window counts 0.
 * Encoded as the count itself.
 */
import type { AggregateFunction } from './aggregate.ts'
import { countNumber } from './wire.ts'

export interface CountState {
  n: number
}

export const count: AggregateFunction<CountState> = {
  name: 'count',
  input: 'none',
  params: 0,

  create () {
    return { n: 0 }
  },

  add (state) {
    state.n++
    return state
  },

  merge (state, other) {
    state.n += other.n
    return state
  },

  result (state) {
    return state.n
  },

  encode (state) {
    return state.n
  },

  decode (data) {
    return { n: countNumber('count', 'the count', data) }
  }
}

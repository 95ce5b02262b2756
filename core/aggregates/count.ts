/**
 * count(): the number of readings in the window. Exact; an empty window counts 0.
 * Encoded as the count itself.
 *
 * The state is the count itself, a number: an edge holds one per key and window, and a number in the
 * window's array of states costs nothing more (an object would cost some 30 bytes).
 */
import type { AggregateFunction } from './aggregate.ts'
import { countNumber } from './wire.ts'

export const count: AggregateFunction<number> = {
  name: 'count',
  input: 'none',
  params: 0,

  create () {
    return 0
  },

  add (state) {
    return state + 1
  },

  merge (state, other) {
    return state + other
  },

  result (state) {
    return state
  },

  encode (state) {
    return state
  },

  decode (data) {
    return countNumber('count', 'the count', data)
  }
}

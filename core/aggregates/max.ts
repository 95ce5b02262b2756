/**
 * max(x): the largest reading; null for an empty window. Exact.
 * Encoded as the maximum, or null when empty.
 *
 * The state is the maximum itself, a number (-Infinity while empty: readings are finite, so any reading
 * replaces it): an edge holds one per key and window, and a bare number costs less than an object.
 */
import type { AggregateFunction } from './aggregate.ts'
import { finiteNumber } from './wire.ts'

export const max: AggregateFunction<number> = {
  name: 'max',
  input: 'number',
  params: 0,

  create () {
    return -Infinity
  },

  add (state, value) {
    return (value as number) > state ? value as number : state
  },

  merge (state, other) {
    return other > state ? other : state
  },

  result (state) {
    // + 0 turns -0 into 0: CBOR does not keep the sign of zero, so local and merged results agree.
    return state === -Infinity ? null : state + 0
  },

  encode (state) {
    return state === -Infinity ? null : state
  },

  decode (data) {
    return data === null ? -Infinity : finiteNumber('max', 'the maximum', data)
  }
}

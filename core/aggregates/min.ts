/**
 * min(x): the smallest reading; null for an empty window. Exact.
 * Encoded as the minimum, or null when empty.
 */
import type { AggregateFunction } from './aggregate.ts'
import { finiteNumber } from './wire.ts'

export interface MinState {
  /** Infinity while empty: readings are finite, so any reading replaces it. */
  v: number
}

export const min: AggregateFunction<MinState> = {
  name: 'min',
  input: 'number',
  params: 0,

  create () {
    return { v: Infinity }
  },

  add (state, value) {
    if ((value as number) < state.v) state.v = value as number
    return state
  },

  merge (state, other) {
    if (other.v < state.v) state.v = other.v
    return state
  },

  result (state) {
    // + 0 turns -0 into 0: CBOR does not keep the sign of zero, so local and merged results agree.
    return state.v === Infinity ? null : state.v + 0
  },

  encode (state) {
    return state.v === Infinity ? null : state.v
  },

  decode (data) {
    return { v: data === null ? Infinity : finiteNumber('min', 'the minimum', data) }
  }
}

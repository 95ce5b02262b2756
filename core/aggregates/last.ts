/**
 * last(x): the reading with the largest event time; null for an empty window. x is a number or a
 * string. Readings with the same event time are ordered by value (numbers numerically, strings by code
 * units, every number before every string) and the largest wins, so the result does not depend on
 * arrival or merge order.
 *
 * Encoded as `[eventTime, value]`, or null when empty.
 */
import type { AggregateFunction } from './aggregate.ts'
import { compareScalar, decodeTimed, encodeTimed, type TimedState } from './scalar.ts'

export const last: AggregateFunction<TimedState> = {
  name: 'last',
  input: 'scalar',
  params: 0,

  create () {
    return { t: 0, v: null }
  },

  add (state, value, eventTime) {
    const v = value as number | string
    if (state.v === null || eventTime > state.t || (eventTime === state.t && compareScalar(v, state.v) > 0)) {
      state.t = eventTime
      state.v = v === 0 ? 0 : v
    }
    return state
  },

  merge (state, other) {
    const v = other.v
    if (v !== null && (state.v === null || other.t > state.t || (other.t === state.t && compareScalar(v, state.v) > 0))) {
      state.t = other.t
      state.v = v
    }
    return state
  },

  result (state) {
    return state.v
  },

  encode (state) {
    return encodeTimed(state)
  },

  decode (data) {
    return decodeTimed('last', data)
  }
}

/**
 * The total order on scalar readings (finite numbers and strings) that first/last use to break ties on
 * event time, and their shared state encoding. A total order makes the choice independent of arrival
 * and merge order.
 */
import type { AggregateFunction } from './aggregate.ts'
import { array, finiteNumber, scalar } from './wire.ts'

/** Numbers before strings; numbers numerically, strings by UTF-16 code units (JS `<`). */
export function compareScalar (a: number | string, b: number | string): number {
  if (typeof a === 'number') {
    if (typeof b !== 'number') return -1
  } else if (typeof b === 'number') {
    return 1
  }
  return a < b ? -1 : a > b ? 1 : 0
}

export interface TimedState {
  /** Event time (epoch ms) of `v`; meaningless while `v` is null. */
  t: number
  /** The chosen reading; null while empty. -0 is stored as 0, since CBOR would not keep it. */
  v: number | string | null
}

export function encodeTimed (state: TimedState): [number, number | string] | null {
  return state.v === null ? null : [state.t, state.v]
}

export function decodeTimed (aggregate: string, data: unknown): TimedState {
  if (data === null) return { t: 0, v: null }
  const a = array(aggregate, data, 2, 2, 'null or [eventTime, value]')
  const t = finiteNumber(aggregate, 'the event time', a[0])
  const v = scalar(aggregate, 'the value', a[1])
  return { t, v: v === 0 ? 0 : v }
}

/**
 * first and last are one aggregate with opposite preferences: `prefer` is -1 to keep the smallest
 * (event time, value) pair, +1 to keep the largest.
 */
export function timedAggregate (name: string, prefer: -1 | 1): AggregateFunction<TimedState> {
  const wins = (t: number, v: number | string, state: TimedState): boolean =>
    state.v === null || Math.sign(t - state.t) === prefer || (t === state.t && compareScalar(v, state.v) === prefer)
  return {
    name,
    input: 'scalar',
    params: 0,
    create: () => ({ t: 0, v: null }),
    add (state, value, eventTime) {
      const v = value as number | string
      if (wins(eventTime, v, state)) {
        state.t = eventTime
        state.v = v === 0 ? 0 : v
      }
      return state
    },
    merge (state, other) {
      if (other.v !== null && wins(other.t, other.v, state)) {
        state.t = other.t
        state.v = other.v
      }
      return state
    },
    result: (state) => state.v,
    encode: encodeTimed,
    decode: (data) => decodeTimed(name, data)
  }
}

/**
 * stddev(x): the POPULATION standard deviation, sqrt(Σ(x − mean)² / n); null for an empty window, 0 for
 * a single reading.
 *
 * Kept as (count, mean, M2 = Σ(x − mean)²): Welford's update per reading and Chan et al.'s pairwise
 * formula to merge, both free of the catastrophic cancellation of the Σx² − (Σx)²/n textbook formula.
 * The mean also carries its rounding error in a second number (mean + meanLow), because with readings
 * far from zero relative to their spread (1e9 + U(0, 1), epoch-ms timestamps) the mean's own rounding
 * would otherwise dominate: plain Welford is then only good to ~1e-8, this to ~1e-15. Merged results
 * agree with a single pass up to floating-point rounding.
 *
 * Encoded as `[count, mean, M2]`, or `[count, mean, M2, meanLow]` when meanLow is not zero.
 */
import type { AggregateFunction } from './aggregate.ts'
import { array, countNumber, finiteNumber, wireError } from './wire.ts'

export interface StddevState {
  n: number
  /** The mean is `mean + lo`: lo holds the rounding error of the high part. */
  mean: number
  lo: number
  /** Sum of squared deviations from the mean. */
  m2: number
}

/** Adds inc to the two-part mean, keeping the rounding error of the addition in lo (Neumaier). */
function addToMean (state: StddevState, inc: number): void {
  const m = state.mean
  const s = m + inc
  state.lo += Math.abs(m) >= Math.abs(inc) ? (m - s) + inc : (inc - s) + m
  state.mean = s
}

export const stddev: AggregateFunction<StddevState> = {
  name: 'stddev',
  input: 'number',
  params: 0,

  create () {
    return { n: 0, mean: 0, lo: 0, m2: 0 }
  },

  add (state, value) {
    const x = value as number
    const n = ++state.n
    const d = (x - state.mean) - state.lo
    addToMean(state, d / n)
    // Mathematically d and x's deviation from the new mean have the same sign; drop rounding noise.
    const p = d * ((x - state.mean) - state.lo)
    if (p > 0) state.m2 += p
    return state
  },

  merge (state, other) {
    const nb = other.n
    if (nb === 0) return state
    const na = state.n
    if (na === 0) {
      state.n = nb
      state.mean = other.mean
      state.lo = other.lo
      state.m2 = other.m2
      return state
    }
    const n = na + nb
    const d = (other.mean - state.mean) + (other.lo - state.lo)
    addToMean(state, d * (nb / n))
    state.m2 += other.m2 + d * d * (na / n) * nb
    state.n = n
    return state
  },

  result (state) {
    return state.n === 0 ? null : Math.sqrt(state.m2 / state.n)
  },

  encode (state) {
    return state.lo === 0 ? [state.n, state.mean, state.m2] : [state.n, state.mean, state.m2, state.lo]
  },

  decode (data) {
    const a = array('stddev', data, 3, 4, '[count, mean, M2] or [count, mean, M2, meanLow]')
    const n = countNumber('stddev', 'the count', a[0])
    const mean = finiteNumber('stddev', 'the mean', a[1])
    const m2 = finiteNumber('stddev', 'M2', a[2])
    const lo = a.length === 4 ? finiteNumber('stddev', 'the mean\'s low part', a[3]) : 0
    if (m2 < 0) throw wireError('stddev', `M2 must not be negative, got ${m2}`)
    if (n === 0 && (mean !== 0 || lo !== 0 || m2 !== 0)) throw wireError('stddev', 'an empty state must have a zero mean and M2')
    if (n === 1 && m2 !== 0) throw wireError('stddev', 'a state of one reading must have a zero M2')
    return { n, mean, lo, m2 }
  }
}

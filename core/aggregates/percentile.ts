/**
 * percentile(x, q), q in [0, 1]: the reading at 0-based rank ⌊q·(n − 1)⌋ of the n readings sorted
 * ascending (q = 0 is the minimum, q = 1 the maximum, q = 0.5 the lower median), within 1% relative
 * error; null for an empty window.
 *
 * A DDSketch (relative accuracy 0.01, logarithmic mapping, unbounded dense stores: no bin is ever
 * collapsed) from @datadog/sketches-js. Negative readings go to a mirrored store, readings within
 * ±1.1e-308 of zero to a zero count (they read back as 0: a relative bound cannot cover them). Bin
 * counts add exactly, so merged sketches are identical to the sketch of all readings whatever the split
 * and order. The exact minimum and maximum are kept too: they are the results at ranks 0 and n − 1
 * (q = 0 and q = 1 are exact) and bound the estimate.
 *
 * The library is used for the mapping, `accept()` and its stores only: its `merge()` drops the other
 * sketch's negative values and writes NaN bins when the other's highest key is 0, its `getValueAtQuantile()` does float
 * arithmetic on the rank, and `toProto()` needs protobufjs (not a dependency) and loses min and max.
 *
 * Encoded as null when empty, else `[min, max, zeroCount, negKey, negCounts, posKey, posCounts]`:
 * `posCounts` lists the positive store's bins from key `posKey` up, a positive entry being the count of
 * one bin and a negative entry −k standing for k empty bins; it starts and ends with a count. Likewise
 * for the negative store (keys of magnitudes); an empty store is `0, []`.
 */
import { DDSketch } from '@datadog/sketches-js'
import type { AggregateFunction } from './aggregate.ts'
import { array, countNumber, describe, finiteNumber, wireError } from './wire.ts'

const RELATIVE_ACCURACY = 0.01

type Store = DDSketch['store']

export interface PercentileState {
  q: number
  /** Its `count`, `min` and `max` are kept exact; its `sum` is not (merge and decode ignore it). */
  sketch: DDSketch
}

const MAPPING = new DDSketch({ relativeAccuracy: RELATIVE_ACCURACY }).mapping
/** Magnitudes at or below this land in the zero count. */
const ZERO_LIMIT = MAPPING.minPossible
/** The bin keys finite magnitudes above ZERO_LIMIT can map to. */
const KEY_MIN = MAPPING.key(ZERO_LIMIT)
const KEY_MAX = MAPPING.key(Number.MAX_VALUE)

/**
 * Adds src's bins to dst. The highest and lowest bins go first so that dst grows at most twice: in
 * ascending order the library's store would regrow and re-center itself at every new highest key.
 */
function addStore (dst: Store, src: Store): void {
  if (src.count === 0) return
  const lo = src.minKey
  const hi = src.maxKey
  const off = src.offset
  const bins = src.bins
  dst.add(hi, bins[hi - off])
  if (hi === lo) return
  dst.add(lo, bins[lo - off])
  for (let k = lo + 1; k < hi; k++) {
    const c = bins[k - off]
    if (c !== 0) dst.add(k, c)
  }
}

/** The key of the bin holding the reading at 0-based rank r in store order (ascending magnitude). */
function keyAtRank (store: Store, r: number, descending: boolean): number {
  const bins = store.bins
  const off = store.offset
  let seen = 0
  if (descending) {
    for (let k = store.maxKey; k > store.minKey; k--) {
      seen += bins[k - off]
      if (seen > r) return k
    }
    return store.minKey
  }
  for (let k = store.minKey; k < store.maxKey; k++) {
    seen += bins[k - off]
    if (seen > r) return k
  }
  return store.maxKey
}

function encodeStore (store: Store): [number, number[]] {
  if (store.count === 0) return [0, []]
  const out: number[] = []
  const bins = store.bins
  const off = store.offset
  let zeros = 0
  for (let k = store.minKey; k <= store.maxKey; k++) {
    const c = bins[k - off]
    if (c === 0) {
      zeros++
    } else {
      if (zeros > 0) out.push(-zeros)
      zeros = 0
      out.push(c)
    }
  }
  return [store.minKey, out]
}

function decodeStore (store: Store, keyData: unknown, binsData: unknown, which: string): void {
  if (typeof keyData !== 'number' || !Number.isSafeInteger(keyData) || keyData < KEY_MIN || keyData > KEY_MAX) {
    throw wireError('percentile', `the ${which} store's first key must be an integer in [${KEY_MIN}, ${KEY_MAX}], got ${describe(keyData)}`)
  }
  if (!Array.isArray(binsData)) throw wireError('percentile', `the ${which} store's counts must be an array, got ${describe(binsData)}`)
  const n = binsData.length
  if (n === 0) {
    if (keyData !== 0) throw wireError('percentile', `an empty ${which} store must have key 0, got ${keyData}`)
    return
  }
  if (!(binsData[0] > 0 && binsData[n - 1] > 0)) {
    throw wireError('percentile', `the ${which} store's counts must start and end with a count, not a run of empty bins`)
  }
  // Validate everything before touching the store; the key range bounds the store's size.
  let key = keyData
  let total = 0
  for (let i = 0; i < n; i++) {
    const c = binsData[i]
    if (typeof c !== 'number' || !Number.isSafeInteger(c) || c === 0) {
      throw wireError('percentile', `a ${which} store entry must be a count (> 0) or a run of empty bins (< 0), got ${describe(c)}`)
    }
    if (c > 0) {
      total += c
      key++
    } else {
      key -= c
    }
    if (key - 1 > KEY_MAX) throw wireError('percentile', `the ${which} store's keys go past ${KEY_MAX}`)
  }
  if (!Number.isSafeInteger(total)) throw wireError('percentile', `the ${which} store's total count is too large`)
  // The highest bin first, then the lowest, so that the store grows at most twice.
  store.add(key - 1, binsData[n - 1])
  key = keyData
  for (let i = 0; i < n - 1; i++) {
    const c = binsData[i]
    if (c > 0) store.add(key++, c)
    else key -= c
  }
}

/** Whether magnitude m is (up to one bin of float slack) in bin `key`. */
function inBin (m: number, key: number): boolean {
  return m > ZERO_LIMIT && Math.abs(MAPPING.key(m) - key) <= 1
}

export const percentile: AggregateFunction<PercentileState> = {
  name: 'percentile',
  input: 'number',
  params: 1,

  checkParams (params) {
    if (params.length !== 1) return `percentile takes one parameter, the quantile q, got ${params.length}`
    const q = params[0]
    if (typeof q !== 'number' || !(q >= 0 && q <= 1)) return `percentile's q must be between 0 and 1 (0.95 for the 95th percentile), got ${q}`
    return undefined
  },

  create (params) {
    return { q: params[0], sketch: new DDSketch({ relativeAccuracy: RELATIVE_ACCURACY }) }
  },

  add (state, value) {
    state.sketch.accept(value as number)
    return state
  },

  merge (state, other) {
    const a = state.sketch
    const b = other.sketch
    if (b.count === 0) return state
    addStore(a.store, b.store)
    addStore(a.negativeStore, b.negativeStore)
    a.zeroCount += b.zeroCount
    a.count += b.count
    if (b.min < a.min) a.min = b.min
    if (b.max > a.max) a.max = b.max
    return state
  },

  result (state) {
    const s = state.sketch
    const n = s.count
    if (n === 0) return null
    const rank = Math.floor(state.q * (n - 1))
    // The extremes are known exactly; no need for the bins' 1% there.
    if (rank === 0) return s.min + 0
    if (rank === n - 1) return s.max + 0
    const neg = s.negativeStore
    let v: number
    if (rank < neg.count) {
      // Ascending values run through the negative store from the largest magnitude down.
      v = -MAPPING.value(keyAtRank(neg, rank, true))
    } else if (rank < neg.count + s.zeroCount) {
      v = 0
    } else {
      v = MAPPING.value(keyAtRank(s.store, rank - neg.count - s.zeroCount, false))
    }
    // Clamping can only move the estimate towards the true value, which lies in [min, max].
    if (v < s.min) v = s.min
    if (v > s.max) v = s.max
    return v + 0
  },

  encode (state) {
    const s = state.sketch
    if (s.count === 0) return null
    const [negKey, negBins] = encodeStore(s.negativeStore)
    const [posKey, posBins] = encodeStore(s.store)
    return [s.min, s.max, s.zeroCount, negKey, negBins, posKey, posBins]
  },

  decode (data, params) {
    const state = percentile.create(params)
    if (data === null) return state
    const a = array('percentile', data, 7, 7, 'null or [min, max, zeroCount, negKey, negCounts, posKey, posCounts]')
    const min = finiteNumber('percentile', 'the minimum', a[0])
    const max = finiteNumber('percentile', 'the maximum', a[1])
    const zeroCount = countNumber('percentile', 'the zero count', a[2])
    if (min > max) throw wireError('percentile', `the minimum ${min} is above the maximum ${max}`)
    const s = state.sketch
    decodeStore(s.negativeStore, a[3], a[4], 'negative')
    decodeStore(s.store, a[5], a[6], 'positive')
    const neg = s.negativeStore
    const pos = s.store
    const n = neg.count + zeroCount + pos.count
    if (n === 0) throw wireError('percentile', 'a non-empty state must hold at least one reading (an empty one is null)')
    if (!Number.isSafeInteger(n)) throw wireError('percentile', 'the total count is too large')
    // The extremes must lie in the extreme bins; otherwise clamping would distort every result.
    const minOk = neg.count > 0
      ? inBin(-min, neg.maxKey)
      : zeroCount > 0 ? Math.abs(min) <= ZERO_LIMIT : inBin(min, pos.minKey)
    const maxOk = pos.count > 0
      ? inBin(max, pos.maxKey)
      : zeroCount > 0 ? Math.abs(max) <= ZERO_LIMIT : inBin(-max, neg.minKey)
    if (!minOk) throw wireError('percentile', `the minimum ${min} does not fall in the lowest bin`)
    if (!maxOk) throw wireError('percentile', `the maximum ${max} does not fall in the highest bin`)
    s.zeroCount = zeroCount
    s.count = n
    s.min = min
    s.max = max
    return state
  }
}

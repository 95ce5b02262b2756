/**
 * percentile(x, q), q in [0, 1]: the reading at 0-based rank ⌊q·(n − 1)⌋ of the n readings sorted
 * ascending (q = 0 is the minimum, q = 1 the maximum, q = 0.5 the lower median): exact for up to
 * EXACT_LIMIT readings, within 1% relative error beyond; null for an empty window.
 *
 * An agent keeps one state per open window and key, and most windows hold few readings (a sensor a
 * second, 10 s windows), so a state starts as the readings themselves, in an array grown by doubling
 * from 4 slots to EXACT_LIMIT. One more reading turns it into a DDSketch of all its readings (relative
 * accuracy 0.01, logarithmic mapping, dense bins never collapsed). Negative readings go to a mirrored
 * store, readings within ±1.1e-308 of zero to a zero count (they read back as 0: a relative bound
 * cannot cover them). The exact minimum and maximum are kept too: they are the results at ranks 0 and
 * n − 1 (q = 0 and q = 1 stay exact) and bound the estimate.
 *
 * Merging exact states stays exact while the total fits, and makes a sketch otherwise or when either
 * side is one. Bin counts add exactly, so a sketch is the same whatever the splits, merges and
 * conversions that led to it, and a state of at most EXACT_LIMIT readings is always exact (decode
 * rejects smaller sketches, which encode never makes): the result never depends on the split. -0 is
 * stored as 0 and the exact form is sent sorted, so that equal states encode alike.
 *
 * @datadog/sketches-js provides the mapping, one instance for all sketches. Its stores allocate bins
 * 128 at a time (1 KB a store even for a handful of readings), its `merge()` drops the other sketch's
 * negative values and writes NaN bins when the other's highest key is 0, its `getValueAtQuantile()`
 * does float arithmetic on the rank, and `toProto()` needs protobufjs (not a dependency) and loses min
 * and max.
 *
 * Encoded as null when empty, `[readings]` while exact (1 to EXACT_LIMIT finite numbers, ascending),
 * else `[min, max, zeroCount, negKey, negCounts, posKey, posCounts]`: `posCounts` lists the positive
 * store's bins from key `posKey` up, a positive entry being the count of one bin and a negative entry
 * −k standing for k empty bins; it starts and ends with a count. Likewise for the negative store (keys
 * of magnitudes); an empty store is `0, []`.
 */
import { DDSketch } from '@datadog/sketches-js'
import type { AggregateFunction } from './aggregate.ts'
import { countNumber, describe, finiteNumber, wireError } from './wire.ts'

/**
 * Up to this many readings a state keeps them. Full, the array weighs about as much as the sketch of
 * readings within a factor of two of each other (~630 against ~690 bytes), the usual case of one
 * sensor. Readings spread over decades or both signs make larger sketches (bounded by the bins between
 * their extremes, not by the number of readings), but a higher limit would cost on the wire: 9 bytes a
 * reading in the exact form against about a byte a bin.
 */
export const EXACT_LIMIT = 64
const FIRST_CAPACITY = 4
/** Spare bins either side of a new store's range, so that the next readings rarely need a copy. */
const PAD = 4

/** Readings per bin key: bins[k − offset] for keys k in [minKey, maxKey]; the other entries are 0. */
interface Bins {
  offset: number
  bins: number[]
  /** Only meaningful while count > 0. */
  minKey: number
  maxKey: number
  count: number
}

interface Sketch {
  min: number
  max: number
  zeroCount: number
  /** Positive readings by the key of their value; negative ones by the key of their magnitude. */
  pos: Bins
  neg: Bins
}

export interface PercentileState {
  q: number
  /** The number of readings. */
  n: number
  /** While exact: the readings in the first n entries, the rest being room to grow; null once a sketch. */
  values: number[] | null
  /** Once more than EXACT_LIMIT readings: their sketch; null while exact. */
  sketch: Sketch | null
}

const RELATIVE_ACCURACY = 0.01
const MAPPING = new DDSketch({ relativeAccuracy: RELATIVE_ACCURACY }).mapping
/**
 * MAPPING.key()'s multiplier, computed with the library's own arithmetic so that keys are identical: the
 * call through the library object costs a quarter of add()'s time on a sketch.
 */
const MULTIPLIER = 1 / Math.log1p(2 * RELATIVE_ACCURACY / (1 - RELATIVE_ACCURACY)) * Math.log(2)
/** Magnitudes at or below this land in the zero count. */
const ZERO_LIMIT = MAPPING.minPossible

/** The bin key of magnitude m > ZERO_LIMIT: the bin holding (γ^(key − 1), γ^key]. */
function keyOf (m: number): number {
  return Math.ceil(Math.log2(m) * MULTIPLIER)
}

/** The bin keys finite magnitudes above ZERO_LIMIT can map to. */
const KEY_MIN = keyOf(ZERO_LIMIT)
const KEY_MAX = keyOf(Number.MAX_VALUE)

/** Shared by every empty state and store, so that creating one allocates no array; never written to. */
const NO_VALUES: number[] = []
const NO_BINS: number[] = []

function newBins (): Bins {
  return { offset: 0, bins: NO_BINS, minKey: 0, maxKey: 0, count: 0 }
}

/**
 * Makes b.bins cover keys lo..hi. Growing by an eighth at least keeps readings that drift to a bounded
 * number of copies per new key while wasting little room: the bins are most of a big sketch's bytes.
 */
function reserve (b: Bins, lo: number, hi: number): void {
  const old = b.bins
  let start: number
  let end: number
  if (old.length === 0) {
    start = lo - PAD
    end = hi + 1 + PAD
  } else {
    start = b.offset
    end = start + old.length
    if (lo >= start && hi < end) return
    const step = Math.max(PAD, old.length >> 3)
    if (lo < start) start = Math.min(lo, start - step)
    if (hi >= end) end = Math.max(hi + 1, end + step)
  }
  const bins = new Array<number>(end - start).fill(0)
  if (b.count > 0) {
    for (let k = b.minKey; k <= b.maxKey; k++) bins[k - start] = old[k - b.offset]
  }
  b.bins = bins
  b.offset = start
}

function addKey (b: Bins, key: number): void {
  if (key < b.offset || key >= b.offset + b.bins.length) reserve(b, key, key)
  b.bins[key - b.offset]++
  if (b.count === 0) {
    b.minKey = key
    b.maxKey = key
  } else if (key < b.minKey) {
    b.minKey = key
  } else if (key > b.maxKey) {
    b.maxKey = key
  }
  b.count++
}

/** Adds src's bins to dst (which may be src). */
function addBins (dst: Bins, src: Bins): void {
  if (src.count === 0) return
  const lo = src.minKey
  const hi = src.maxKey
  reserve(dst, lo, hi)
  const from = src.bins
  const fromOffset = src.offset
  const to = dst.bins
  const toOffset = dst.offset
  for (let k = lo; k <= hi; k++) to[k - toOffset] += from[k - fromOffset]
  if (dst.count === 0) {
    dst.minKey = lo
    dst.maxKey = hi
  } else {
    if (lo < dst.minKey) dst.minKey = lo
    if (hi > dst.maxKey) dst.maxKey = hi
  }
  dst.count += src.count
}

function addToSketch (s: Sketch, x: number): void {
  if (x > ZERO_LIMIT) addKey(s.pos, keyOf(x))
  else if (x < -ZERO_LIMIT) addKey(s.neg, keyOf(-x))
  else s.zeroCount++
  if (x < s.min) s.min = x
  if (x > s.max) s.max = x
}

/** Turns an exact state into the sketch of its readings. */
function toSketch (state: PercentileState): Sketch {
  const values = state.values!
  const n = state.n
  const s: Sketch = { min: Infinity, max: -Infinity, zeroCount: 0, pos: newBins(), neg: newBins() }
  // Size each store once from the extremes rather than growing it reading by reading.
  let posLo = Infinity
  let posHi = 0
  let negLo = Infinity
  let negHi = 0
  for (let i = 0; i < n; i++) {
    const x = values[i]
    if (x > ZERO_LIMIT) {
      if (x < posLo) posLo = x
      if (x > posHi) posHi = x
    } else if (x < -ZERO_LIMIT) {
      if (-x < negLo) negLo = -x
      if (-x > negHi) negHi = -x
    }
  }
  if (posHi > 0) reserve(s.pos, keyOf(posLo), keyOf(posHi))
  if (negHi > 0) reserve(s.neg, keyOf(negLo), keyOf(negHi))
  for (let i = 0; i < n; i++) addToSketch(s, values[i])
  state.values = null
  state.sketch = s
  return s
}

/** Makes room for `need` readings in an exact state (need <= EXACT_LIMIT). */
function growValues (state: PercentileState, need: number): number[] {
  const old = state.values!
  let cap = old.length === 0 ? FIRST_CAPACITY : old.length * 2
  while (cap < need) cap *= 2
  if (cap > EXACT_LIMIT) cap = EXACT_LIMIT
  const values = new Array<number>(cap)
  for (let i = 0; i < state.n; i++) values[i] = old[i]
  state.values = values
  return values
}

/**
 * The reading at 0-based rank k of an exact state (Hoare's FIND: linear on average, and at most
 * EXACT_LIMIT² steps). Reorders the readings in place, which is harmless: their order means nothing.
 */
function selectRank (state: PercentileState, k: number): number {
  const a = state.values!
  let lo = 0
  let hi = state.n - 1
  while (hi > lo) {
    const pivot = a[(lo + hi) >> 1]
    let i = lo
    let j = hi
    while (i <= j) {
      while (a[i] < pivot) i++
      while (a[j] > pivot) j--
      if (i <= j) {
        const tmp = a[i]
        a[i] = a[j]
        a[j] = tmp
        i++
        j--
      }
    }
    // Now a[lo..j] <= pivot <= a[i..hi], and anything between equals the pivot.
    if (k <= j) hi = j
    else if (k >= i) lo = i
    else break
  }
  return a[k]
}

/** An exact state's readings, sorted (a copy), so that equal states encode alike whatever their order. */
function sortedValues (state: PercentileState): number[] {
  const values = state.values!.slice(0, state.n)
  for (let i = 1; i < values.length; i++) {
    const x = values[i]
    let j = i - 1
    while (j >= 0 && values[j] > x) {
      values[j + 1] = values[j]
      j--
    }
    values[j + 1] = x
  }
  return values
}

/** The key of the bin holding the reading at 0-based rank r in store order (ascending magnitude). */
function keyAtRank (store: Bins, r: number, descending: boolean): number {
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

function sketchResult (s: Sketch, n: number, rank: number): number {
  // The extremes are known exactly; no need for the bins' 1% there.
  if (rank === 0) return s.min
  if (rank === n - 1) return s.max
  const neg = s.neg
  let v: number
  if (rank < neg.count) {
    // Ascending values run through the negative store from the largest magnitude down.
    v = -MAPPING.value(keyAtRank(neg, rank, true))
  } else if (rank < neg.count + s.zeroCount) {
    v = 0
  } else {
    v = MAPPING.value(keyAtRank(s.pos, rank - neg.count - s.zeroCount, false))
  }
  // Clamping can only move the estimate towards the true value, which lies in [min, max].
  if (v < s.min) v = s.min
  if (v > s.max) v = s.max
  return v + 0
}

function encodeBins (store: Bins): [number, number[]] {
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

function decodeBins (store: Bins, keyData: unknown, binsData: unknown, which: string): void {
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
  // Validate everything before allocating; the key range bounds the store's size.
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
  reserve(store, keyData, key - 1)
  const bins = store.bins
  const off = store.offset
  key = keyData
  for (let i = 0; i < n; i++) {
    const c = binsData[i] as number
    if (c > 0) bins[key++ - off] = c
    else key -= c
  }
  store.minKey = keyData
  store.maxKey = key - 1
  store.count = total
}

/** Whether magnitude m is (up to one bin of float slack) in bin `key`. */
function inBin (m: number, key: number): boolean {
  return m > ZERO_LIMIT && Math.abs(keyOf(m) - key) <= 1
}

function decodeExact (state: PercentileState, data: unknown): PercentileState {
  if (!Array.isArray(data) || data.length === 0 || data.length > EXACT_LIMIT) {
    throw wireError('percentile', `the exact form must list 1 to ${EXACT_LIMIT} readings (an empty state is null), got ${describe(data)}`)
  }
  const n = data.length
  const values = growValues(state, n)
  for (let i = 0; i < n; i++) values[i] = finiteNumber('percentile', 'a reading', data[i]) + 0
  state.n = n
  return state
}

function decodeSketch (state: PercentileState, a: unknown[]): PercentileState {
  const min = finiteNumber('percentile', 'the minimum', a[0]) + 0
  const max = finiteNumber('percentile', 'the maximum', a[1]) + 0
  const zeroCount = countNumber('percentile', 'the zero count', a[2])
  if (min > max) throw wireError('percentile', `the minimum ${min} is above the maximum ${max}`)
  const neg = newBins()
  const pos = newBins()
  decodeBins(neg, a[3], a[4], 'negative')
  decodeBins(pos, a[5], a[6], 'positive')
  const n = neg.count + zeroCount + pos.count
  if (!Number.isSafeInteger(n)) throw wireError('percentile', 'the total count is too large')
  if (n <= EXACT_LIMIT) {
    throw wireError('percentile', `a sketch must hold more than ${EXACT_LIMIT} readings (fewer are sent exactly), got ${n}`)
  }
  // The extremes must lie in the extreme bins; otherwise clamping would distort every result.
  const minOk = neg.count > 0
    ? inBin(-min, neg.maxKey)
    : zeroCount > 0 ? Math.abs(min) <= ZERO_LIMIT : inBin(min, pos.minKey)
  const maxOk = pos.count > 0
    ? inBin(max, pos.maxKey)
    : zeroCount > 0 ? Math.abs(max) <= ZERO_LIMIT : inBin(-max, neg.minKey)
  if (!minOk) throw wireError('percentile', `the minimum ${min} does not fall in the lowest bin`)
  if (!maxOk) throw wireError('percentile', `the maximum ${max} does not fall in the highest bin`)
  state.values = null
  state.sketch = { min, max, zeroCount, pos, neg }
  state.n = n
  return state
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
    return { q: params[0], n: 0, values: NO_VALUES, sketch: null }
  },

  add (state, value) {
    const x = (value as number) + 0
    const values = state.values
    const n = state.n
    if (values !== null) {
      if (n < values.length) {
        values[n] = x
        state.n = n + 1
        return state
      }
      if (n < EXACT_LIMIT) {
        growValues(state, n + 1)[n] = x
        state.n = n + 1
        return state
      }
      toSketch(state)
    }
    addToSketch(state.sketch!, x)
    state.n = n + 1
    return state
  },

  merge (state, other) {
    const m = other.n
    if (m === 0) return state
    const n = state.n
    // Read before state changes: state may be other.
    const otherValues = other.values
    const otherSketch = other.sketch
    if (otherValues !== null) {
      if (state.values !== null && n + m <= EXACT_LIMIT) {
        const values = n + m <= state.values.length ? state.values : growValues(state, n + m)
        for (let i = 0; i < m; i++) values[n + i] = otherValues[i]
      } else {
        const s = state.sketch ?? toSketch(state)
        for (let i = 0; i < m; i++) addToSketch(s, otherValues[i])
      }
    } else {
      const o = otherSketch!
      const s = state.sketch ?? toSketch(state)
      addBins(s.pos, o.pos)
      addBins(s.neg, o.neg)
      s.zeroCount += o.zeroCount
      if (o.min < s.min) s.min = o.min
      if (o.max > s.max) s.max = o.max
    }
    state.n = n + m
    return state
  },

  result (state) {
    const n = state.n
    if (n === 0) return null
    const rank = Math.floor(state.q * (n - 1))
    if (state.values !== null) return selectRank(state, rank)
    return sketchResult(state.sketch!, n, rank)
  },

  encode (state) {
    const n = state.n
    if (n === 0) return null
    if (state.values !== null) return [sortedValues(state)]
    const s = state.sketch!
    const [negKey, negBins] = encodeBins(s.neg)
    const [posKey, posBins] = encodeBins(s.pos)
    return [s.min, s.max, s.zeroCount, negKey, negBins, posKey, posBins]
  },

  decode (data, params) {
    const state = percentile.create(params)
    if (data === null) return state
    if (Array.isArray(data) && data.length === 1) return decodeExact(state, data[0])
    if (Array.isArray(data) && data.length === 7) return decodeSketch(state, data)
    throw wireError('percentile', `expected null, [readings] or [min, max, zeroCount, negKey, negCounts, posKey, posCounts], got ${describe(data)}`)
  }
}

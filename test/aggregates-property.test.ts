// Property tests: for random datasets, split the readings into random parts in random order, aggregate
// each part, send each state through encode -> CBOR -> decode, merge the states in random order, and
// compare with aggregating everything at once and with a naive exact computation.
import { DDSketch } from '@datadog/sketches-js'
import { decode as cborDecode, encode as cborEncode } from 'cbor-x'
import t from 'tap'
import { fsum, mulberry32 } from './helpers/numeric.ts'
import { AGGREGATES, type AnyAggregate } from '../core/aggregates/index.ts'
import { EXACT_LIMIT } from '../core/aggregates/distinct.ts'
import { EXACT_LIMIT as PERCENTILE_EXACT_LIMIT } from '../core/aggregates/percentile.ts'

type Scalar = number | string
interface Reading { v: Scalar, t: number }


const rnd = mulberry32(20240601)
const int = (n: number): number => Math.floor(rnd() * n)
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]


/** The order first/last use, written independently of the implementation. */
function before (a: Reading, b: Reading): boolean {
  if (a.t !== b.t) return a.t < b.t
  if (typeof a.v !== typeof b.v) return typeof a.v === 'number'
  return a.v < b.v
}

function normalize (v: Scalar): Scalar {
  return v === 0 ? 0 : v
}

/** What each aggregate should give, computed naively; percentile and distinct are checked separately. */
const NAIVE: Record<string, (rs: readonly Reading[]) => Scalar | null> = {
  count: rs => rs.length,
  sum: rs => fsum(rs.map(r => r.v as number)),
  min: rs => rs.length === 0 ? null : normalize(Math.min(...rs.map(r => r.v as number))),
  max: rs => rs.length === 0 ? null : normalize(Math.max(...rs.map(r => r.v as number))),
  avg: rs => rs.length === 0 ? null : fsum(rs.map(r => r.v as number)) / rs.length,
  stddev: rs => {
    if (rs.length === 0) return null
    // The corrected two-pass algorithm: the second term cancels the rounding error of the mean.
    const xs = rs.map(r => r.v as number)
    const mean = fsum(xs) / xs.length
    const ds = xs.map(x => x - mean)
    return Math.sqrt(Math.max(0, fsum(ds.map(d => d * d)) - fsum(ds) ** 2 / xs.length) / xs.length)
  },
  first: rs => rs.length === 0 ? null : normalize(rs.reduce((a, b) => before(b, a) ? b : a).v),
  last: rs => rs.length === 0 ? null : normalize(rs.reduce((a, b) => before(a, b) ? b : a).v)
}

const NUMBER_KINDS: Record<string, () => number> = {
  ints: () => int(21) - 10,
  temperatures: () => Math.round((rnd() * 60 - 30) * 10) / 10,
  zeros: () => rnd() < 0.7 ? 0 : pick([-0, 1, -1, 0.5]),
  wide: () => (rnd() < 0.5 ? -1 : 1) * 10 ** (rnd() * 30 - 15),
  large: () => rnd() < 0.5 ? (rnd() - 0.5) * 1e15 : pick([2 ** 53, -(2 ** 53), 1e12, -1e12, 1e18, -1e18]),
  // Never mixed with small values: partial sums 1e135 times larger than readings that must survive them
  // are beyond a compensated sum (see sum.ts). Not beyond 1e150: stddev squares deviations, and past
  // ~1e154 its state overflows (and cannot be sent).
  huge: () => pick([1e150, -1e150, 3e149, -2e149]),
  offset: () => 1e9 + rnd(),
  timestamps: () => 1.7e12 + int(3_600_000)
}

const STRINGS = ['', 'a', 'b', 'ab', 'B', '10', '9', '1', 'é', 'zz', '0']

function numbers (n: number): number[] {
  const kinds = Object.keys(NUMBER_KINDS)
  const kind = pick([...kinds, 'mixed', 'constant'])
  if (kind === 'constant') return new Array<number>(n).fill(NUMBER_KINDS[pick(kinds)]())
  if (kind === 'mixed') {
    const mixable = kinds.filter(k => k !== 'huge')
    return Array.from({ length: n }, () => NUMBER_KINDS[pick(mixable)]())
  }
  return Array.from({ length: n }, NUMBER_KINDS[kind])
}

function scalars (n: number): Scalar[] {
  const stringShare = rnd()
  return Array.from({ length: n }, () => rnd() < stringShare ? pick(STRINGS) : pick([int(12) - 1, -0, 0.5, 1e21, -2.5]))
}

function times (n: number): number[] {
  // Few distinct times, so ties are common; sometimes all readings share one time.
  const spread = pick([1, 3, 20, 1e6])
  return Array.from({ length: n }, () => 1.7e12 + int(spread))
}

function size (): number {
  const r = rnd()
  return r < 0.1 ? 1 : r < 0.2 ? 2 + int(3) : r < 0.85 ? 5 + int(200) : 200 + int(2000)
}

function shuffle<T> (xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = int(i + 1)
    const tmp = xs[i]
    xs[i] = xs[j]
    xs[j] = tmp
  }
  return xs
}

function aggregate (agg: AnyAggregate, params: number[], rs: readonly Reading[]): unknown {
  let state = agg.create(params)
  for (const r of rs) state = agg.add(state, r.v, r.t)
  return state
}

function wire (agg: AnyAggregate, params: number[], state: unknown): unknown {
  return agg.decode(cborDecode(cborEncode(agg.encode(state))), params)
}

/** Random parts (some maybe empty), each through the wire, merged pairwise in random order. */
function splitAndMerge (agg: AnyAggregate, params: number[], rs: readonly Reading[], maxParts: number, checkUntouched: boolean): unknown {
  const parts: Reading[][] = Array.from({ length: 1 + int(maxParts) }, () => [])
  for (const r of shuffle([...rs])) parts[int(parts.length)].push(r)
  const states = parts.map(p => wire(agg, params, aggregate(agg, params, p)))
  while (states.length > 1) {
    const i = int(states.length)
    let j = int(states.length - 1)
    if (j >= i) j++
    const other = states[j]
    const before = checkUntouched ? cborEncode(agg.encode(other)) : undefined
    states[i] = agg.merge(states[i], other)
    if (before !== undefined && !before.equals(cborEncode(agg.encode(other)))) {
      throw new Error(`${agg.name}.merge modified its second argument`)
    }
    states.splice(j, 1)
  }
  return states[0]
}

/** Within 1e-9 relative error, or within an absolute error `floor`. */
function close (actual: unknown, expected: number, floor: number): boolean {
  if (typeof actual !== 'number') return false
  return Math.abs(actual - expected) <= Math.max(1e-9 * Math.abs(expected), floor)
}

function relErr (actual: unknown, expected: number): number {
  if (typeof actual !== 'number') return Infinity
  if (actual === expected) return 0
  return Math.abs(actual - expected) / Math.abs(expected)
}

const QUANTILES = [0, 0.5, 0.9, 0.95, 0.99, 1]

t.test('merging random splits equals aggregating everything at once', async t => {
  const failures: string[] = []
  let checks = 0
  const fail = (message: string): void => { if (failures.length < 30) failures.push(message) }

  for (let round = 0; round < 300; round++) {
    const n = size()
    const ts = times(n)
    const numeric: Reading[] = numbers(n).map((v, i) => ({ v, t: ts[i] }))
    const scalar: Reading[] = scalars(n).map((v, i) => ({ v, t: ts[i] }))
    const checkUntouched = round % 10 === 0

    for (const [name, agg] of AGGREGATES) {
      if (name === 'percentile' || name === 'distinct') continue
      const rs = agg.input === 'scalar' ? scalar : numeric
      const whole = agg.result(aggregate(agg, [], rs))
      const merged = agg.result(splitAndMerge(agg, [], rs, 8, checkUntouched))
      const expected = NAIVE[name](rs)
      const where = `round ${round}, ${name} of ${n} readings`
      checks++
      if (name === 'sum' || name === 'avg' || name === 'stddev') {
        // A standard deviation below the inputs' own float resolution is noise, whatever its relative error.
        const floor = name === 'stddev' ? 1e-15 * Math.max(...rs.map(r => Math.abs(r.v as number))) : 0
        if (!close(whole, expected as number, floor)) fail(`${where}: all at once ${whole}, exact ${expected}`)
        if (!close(merged, expected as number, floor)) fail(`${where}: merged ${merged}, exact ${expected}`)
        if (!close(merged, whole as number, floor)) fail(`${where}: merged ${merged}, all at once ${whole}`)
      } else {
        if (!Object.is(whole, expected)) fail(`${where}: all at once ${String(whole)}, expected ${String(expected)}`)
        if (!Object.is(merged, whole)) fail(`${where}: merged ${String(merged)}, all at once ${String(whole)}`)
      }
    }

    const percentile = AGGREGATES.get('percentile')!
    const sorted = numeric.map(r => r.v as number).sort((a, b) => a - b)
    // One split per round; decode gives the merged state each quantile (q is a parameter, not state).
    const mergedState = percentile.encode(splitAndMerge(percentile, [0.5], numeric, 8, checkUntouched))
    for (const q of QUANTILES) {
      const whole = percentile.result(aggregate(percentile, [q], numeric))
      const merged = percentile.result(percentile.decode(mergedState, [q]))
      const expected = sorted[Math.floor(q * (n - 1))] + 0
      checks++
      if (n <= PERCENTILE_EXACT_LIMIT && !Object.is(whole, expected)) fail(`round ${round}, percentile q=${q} of ${n}: ${whole}, not exactly ${expected}`)
      if (relErr(whole, expected) > 0.01 * (1 + 1e-12)) fail(`round ${round}, percentile q=${q} of ${n}: ${whole}, exact ${expected}`)
      if (!Object.is(merged, whole)) fail(`round ${round}, percentile q=${q} of ${n}: merged ${merged}, all at once ${whole}`)
    }

    const distinct = AGGREGATES.get('distinct')!
    const whole = distinct.result(aggregate(distinct, [], scalar))
    const merged = distinct.result(splitAndMerge(distinct, [], scalar, 8, checkUntouched))
    const expected = new Set(scalar.map(r => String(r.v))).size
    checks++
    if (whole !== expected || merged !== expected) fail(`round ${round}, distinct of ${n}: ${whole} / merged ${merged}, exact ${expected}`)
  }
  t.same(failures, [], `${checks} comparisons`)
})

t.test('distinct: exact up to 1000, within 2% beyond, merge-order independent', async t => {
  for (const n of [10, 999, 1000, 1001, 1500, 5000, 20000, 100000, 1000000]) {
    // Each value once as a number or a string, plus repeats; the two forms of a value are one value.
    // A random offset gives each seed its own set of values (and so its own sketch).
    const offset = int(1e9)
    const value = (i: number, asNumber: boolean): Scalar => asNumber ? offset + i : String(offset + i)
    const rs: Reading[] = []
    for (let i = 0; i < n; i++) rs.push({ v: value(i, i % 3 === 0), t: 0 })
    for (let i = 0; i < n / 4; i++) rs.push({ v: value(int(n), rnd() < 0.5), t: 0 })
    const distinct = AGGREGATES.get('distinct')!
    const whole = distinct.result(aggregate(distinct, [], rs)) as number
    const maxParts = n <= 1000 ? 8 : Math.min(40, Math.ceil(n / 500))
    const merged = distinct.result(splitAndMerge(distinct, [], rs, maxParts, false))
    if (n <= EXACT_LIMIT) t.equal(whole, n, `${n}: exact`)
    else t.ok(Math.abs(whole - n) <= 0.02 * n, `${n}: estimate ${whole} within 2% (${((whole - n) / n * 100).toFixed(2)}%)`)
    t.equal(merged, whole, `${n}: merged in parts equals all at once`)
  }
})

/**
 * The state DDSketch itself makes of the readings, in percentile's wire form: an independent check that
 * the sketch's bins are the library's, however the state got there. The library's min and max may be -0.
 */
function librarySketch (xs: readonly number[]): unknown {
  const sketch = new DDSketch({ relativeAccuracy: 0.01 })
  for (const x of xs) sketch.accept(x)
  const store = (s: DDSketch['store']): [number, number[]] => {
    if (s.count === 0) return [0, []]
    const out: number[] = []
    for (let k = s.minKey; k <= s.maxKey; k++) {
      const c = s.bins[k - s.offset]
      if (c > 0) out.push(c)
      else if (out[out.length - 1] < 0) out[out.length - 1]--
      else out.push(-1)
    }
    return [s.minKey, out]
  }
  return [sketch.min + 0, sketch.max + 0, sketch.zeroCount, ...store(sketch.negativeStore), ...store(sketch.store)]
}

t.test('percentile: exact and sketch states, merged across the limit in any split and order', async t => {
  const percentile = AGGREGATES.get('percentile')!
  const limit = PERCENTILE_EXACT_LIMIT
  const kinds: Record<string, () => number> = {
    ...NUMBER_KINDS,
    // Magnitudes a sketch counts as zero, which the exact form keeps.
    tiny: () => pick([0, -0, 5e-324, -1e-310, 1e-308, 2.3e-308, -3]),
    signs: () => pick([-1, 1]) * (2 + int(5)),
    // Parts with and without negative readings, so that stores start empty on one side of a merge.
    skewed: () => (rnd() < 0.03 ? -1 : 1) * (2 + int(100))
  }
  const failures: string[] = []
  const fail = (message: string): void => { if (failures.length < 30) failures.push(message) }
  // What kinds of merge happened, to show that every one was exercised.
  const seen: Record<string, number> = {}
  const isExact = (state: unknown): boolean => {
    const encoded = percentile.encode(state)
    return encoded === null || (encoded as unknown[]).length === 1
  }
  const tracked: AnyAggregate = {
    ...percentile,
    merge: (a, b) => {
      if (percentile.result(b) !== null) {
        const kind = `${isExact(a) ? 'exact' : 'sketch'} + ${isExact(b) ? 'exact' : 'sketch'}`
        const merged = percentile.merge(a, b)
        const key = kind === 'exact + exact' ? `exact + exact -> ${isExact(merged) ? 'exact' : 'sketch'}` : kind
        seen[key] = (seen[key] ?? 0) + 1
        return merged
      }
      return percentile.merge(a, b)
    }
  }
  for (let round = 0; round < 400; round++) {
    // Mostly around the limit, so that parts fall on both sides of it.
    const n = pick([1 + int(limit), limit - 3 + int(7), limit + int(3 * limit), 1 + int(20 * limit)])
    const kind = pick([...Object.keys(kinds), 'mixed'])
    const xs = Array.from({ length: n }, kind === 'mixed' ? () => kinds[pick(Object.keys(kinds).filter(k => k !== 'huge'))]() : kinds[kind])
    const rs: Reading[] = xs.map(v => ({ v, t: 0 }))
    const whole = aggregate(percentile, [0.5], rs)
    const merged = splitAndMerge(tracked, [0.5], rs, 2 + int(10), round % 4 === 0)
    const where = `round ${round}, ${n} readings (${kind})`
    const wholeEncoded = percentile.encode(whole)
    t.strictSame(percentile.encode(merged), wholeEncoded, `${where}: merged in parts is the state of everything at once`)
    if (isExact(whole) !== (n <= limit)) fail(`${where}: ${isExact(whole) ? 'exact' : 'a sketch'}`)
    if (n > limit) t.strictSame(wholeEncoded, librarySketch(xs), `${where}: the library's own sketch`)
    const sorted = [...xs].sort((a, b) => a - b)
    for (const q of [0, 0.1, 0.5, 0.9, 0.99, 1]) {
      const got = percentile.result(percentile.decode(wholeEncoded, [q]))
      const expected = sorted[Math.floor(q * (n - 1))] + 0
      if (n <= limit || q === 0 || q === 1) {
        if (!Object.is(got, expected)) fail(`${where}, q = ${q}: ${got}, not exactly ${expected}`)
      } else if (Math.abs(expected) <= 2.3e-308 ? got !== 0 && relErr(got, expected) > 0.01 : relErr(got, expected) > 0.01 * (1 + 1e-12)) {
        fail(`${where}, q = ${q}: ${got}, not within 1% of ${expected}`)
      }
    }
  }
  t.same(failures, [])
  for (const kind of ['exact + exact -> exact', 'exact + exact -> sketch', 'exact + sketch', 'sketch + exact', 'sketch + sketch']) {
    t.ok((seen[kind] ?? 0) >= 20, `${kind}: ${seen[kind] ?? 0} merges`)
  }
})

import { decode as cborDecode, encode as cborEncode } from 'cbor-x'
import t from 'tap'
import { fsum, mulberry32 } from './helpers/numeric.ts'
import { WireError } from '../core/errors.ts'
import { AGGREGATES, getAggregate, type AggregateFunction, type AnyAggregate } from '../core/aggregates/index.ts'
import { avg } from '../core/aggregates/avg.ts'
import { count } from '../core/aggregates/count.ts'
import { distinct, EXACT_LIMIT } from '../core/aggregates/distinct.ts'
import { first } from '../core/aggregates/first.ts'
import { last } from '../core/aggregates/last.ts'
import { max } from '../core/aggregates/max.ts'
import { min } from '../core/aggregates/min.ts'
import { EXACT_LIMIT as PERCENTILE_EXACT_LIMIT, percentile, type PercentileState } from '../core/aggregates/percentile.ts'
import { stddev } from '../core/aggregates/stddev.ts'
import { sum } from '../core/aggregates/sum.ts'



function populationStddev (xs: readonly number[]): number {
  const mean = fsum(xs) / xs.length
  return Math.sqrt(fsum(xs.map(x => (x - mean) ** 2)) / xs.length)
}

function run<S> (agg: AggregateFunction<S>, values: readonly unknown[], params: number[] = [], times?: readonly number[]): S {
  let state = agg.create(params)
  values.forEach((v, i) => { state = agg.add(state, v, times === undefined ? i : times[i]) })
  return state
}

function resultOf (agg: AnyAggregate, values: readonly unknown[], params: number[] = [], times?: readonly number[]): number | string | null {
  return agg.result(run(agg, values, params, times))
}

function roundTrip<S> (agg: AggregateFunction<S>, state: S, params: number[] = []): S {
  return agg.decode(cborDecode(cborEncode(agg.encode(state))), params)
}

/** The documented percentile: the reading at rank floor(q (n - 1)) of the sorted readings. */
function exactPercentile (xs: readonly number[], q: number): number {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.floor(q * (sorted.length - 1))]
}

/** The assertions relClose needs, so that it works with any subtest. */
interface Asserts {
  ok: (condition: boolean, message: string) => unknown
  fail: (message: string) => unknown
}

function relClose (t: Asserts, actual: unknown, expected: number, rel: number, message: string): void {
  if (typeof actual !== 'number') {
    t.fail(`${message}: got ${String(actual)}, expected a number near ${expected}`)
    return
  }
  const err = Math.abs(actual - expected)
  t.ok(err <= rel * Math.abs(expected), `${message}: ${actual} vs ${expected}`)
}

t.test('registry', async t => {
  const names = ['count', 'sum', 'min', 'max', 'avg', 'stddev', 'percentile', 'distinct', 'first', 'last']
  t.same([...AGGREGATES.keys()].sort(), [...names].sort())
  for (const name of names) {
    t.equal(getAggregate(name)?.name, name)
    const agg = AGGREGATES.get(name)!
    t.equal(agg.params, name === 'percentile' ? 1 : 0, `${name} params`)
  }
  t.equal(getAggregate('median'), undefined)
  t.equal(getAggregate('constructor'), undefined)
  t.equal(getAggregate('__proto__'), undefined)
  t.equal(count.input, 'none')
  for (const a of [sum, min, max, avg, stddev, percentile]) t.equal(a.input, 'number', a.name)
  for (const a of [distinct, first, last]) t.equal(a.input, 'scalar', a.name)
})

t.test('empty states', async t => {
  const expected: Record<string, number | null> = {
    count: 0, sum: 0, distinct: 0, min: null, max: null, avg: null, stddev: null, percentile: null, first: null, last: null
  }
  for (const [name, agg] of AGGREGATES) {
    const params = name === 'percentile' ? [0.5] : []
    const empty = agg.create(params)
    t.equal(agg.result(empty), expected[name], `${name} of nothing`)
    const back = roundTrip(agg, empty, params)
    t.equal(agg.result(back), expected[name], `${name} of nothing after a round trip`)
    // Empty states are neutral elements of merge, on either side.
    const one = run(agg, [5], params)
    t.equal(agg.result(agg.merge(agg.create(params), one)), agg.result(run(agg, [5], params)), `${name}: empty + x`)
    t.equal(agg.result(agg.merge(run(agg, [5], params), agg.create(params))), agg.result(run(agg, [5], params)), `${name}: x + empty`)
  }
})

t.test('count', async t => {
  t.equal(resultOf(count, [undefined, undefined, undefined]), 3)
  const merged = count.merge(run(count, [undefined, undefined]), roundTrip(count, run(count, [undefined])))
  t.equal(count.result(merged), 3)
})

t.test('sum: compensated', async t => {
  t.equal(resultOf(sum, [1, 2, 3.5]), 6.5)
  t.equal(resultOf(sum, [1e16, 1, -1e16]), 1, 'no catastrophic cancellation')
  t.equal(resultOf(sum, [1e100, 1, -1e100, 1]), 2)
  const tenths = new Array<number>(1000).fill(0.1)
  t.equal(resultOf(sum, tenths), fsum(tenths))
  const rnd = mulberry32(1)
  const xs = Array.from({ length: 5000 }, () => (rnd() - 0.5) * 10 ** Math.floor(rnd() * 12))
  relClose(t, resultOf(sum, xs), fsum(xs), 1e-12, 'random magnitudes')
  // Merging keeps the compensation on the wire.
  const a = run(sum, [1e16, 1])
  const b = roundTrip(sum, run(sum, [1, -1e16]))
  t.equal(sum.result(sum.merge(roundTrip(sum, a), b)), 2)
  t.equal(cborEncode(sum.encode(run(sum, [1, 2, 3]))).length, 1, 'an integer sum encodes as one small integer')
})

t.test('min and max', async t => {
  const xs = [3, -7.5, 12, 0, -7.5, 1e300, -1e-300]
  t.equal(resultOf(min, xs), -7.5)
  t.equal(resultOf(max, xs), 1e300)
  t.equal(resultOf(min, [4]), 4)
  t.equal(resultOf(max, [-4]), -4)
  t.ok(Object.is(resultOf(min, [0, -0]), 0), '-0 is reported as 0, as it would be after a round trip')
  t.equal(min.result(min.merge(run(min, [5, 9]), roundTrip(min, run(min, [2, 11])))), 2)
  t.equal(max.result(max.merge(run(max, [5, 9]), roundTrip(max, run(max, [2, 11])))), 11)
})

t.test('avg', async t => {
  t.equal(resultOf(avg, [1, 2, 3, 4]), 2.5)
  t.equal(resultOf(avg, [-5]), -5)
  const rnd = mulberry32(2)
  const xs = Array.from({ length: 3000 }, () => 1e9 + rnd())
  relClose(t, resultOf(avg, xs), fsum(xs) / xs.length, 1e-15, 'large offset')
  const merged = avg.merge(run(avg, xs.slice(0, 1000)), roundTrip(avg, run(avg, xs.slice(1000))))
  relClose(t, avg.result(merged), fsum(xs) / xs.length, 1e-15, 'merged')
})

t.test('stddev: population, numerically stable', async t => {
  t.equal(resultOf(stddev, [2, 4, 4, 4, 5, 5, 7, 9]), 2, 'the population (not sample) standard deviation')
  t.equal(resultOf(stddev, [42]), 0)
  t.equal(resultOf(stddev, [7, 7, 7, 7]), 0)
  const rnd = mulberry32(3)
  const shifted = Array.from({ length: 5000 }, () => 1e9 + rnd())
  relClose(t, resultOf(stddev, shifted), populationStddev(shifted), 1e-9, 'values 1e9 + U(0, 1)')
  const wide = Array.from({ length: 5000 }, () => (rnd() - 0.5) * 1e12)
  relClose(t, resultOf(stddev, wide), populationStddev(wide), 1e-12, 'values U(-5e11, 5e11)')
  const parts = [shifted.slice(0, 10), shifted.slice(10, 4000), shifted.slice(4000)]
  const merged = parts.map(p => roundTrip(stddev, run(stddev, p))).reduce((a, b) => stddev.merge(a, b))
  relClose(t, stddev.result(merged), populationStddev(shifted), 1e-9, 'merged')
})

t.test('percentile: checkParams', async t => {
  for (const q of [0, 0.5, 0.95, 1]) t.equal(percentile.checkParams!([q]), undefined, `q = ${q}`)
  for (const q of [-0.01, 1.01, NaN, Infinity, 95]) t.type(percentile.checkParams!([q]), 'string', `q = ${q}`)
  t.type(percentile.checkParams!([]), 'string', 'missing q')
  t.type(percentile.checkParams!([0.5, 0.9]), 'string', 'two parameters')
})

t.test('percentile: rank floor(q (n - 1)), exact up to the limit, within 1% beyond', async t => {
  const rnd = mulberry32(4)
  const zeros = [0, 0, 0, -1, 1, 0, 2, -0, 0, 1e-320, -1e-320]
  const huge = [Number.MAX_VALUE, -Number.MAX_VALUE, 1e308, 5e-324, 0]
  const repeat = (xs: number[], times: number): number[] => Array.from({ length: times }, () => xs).flat()
  const datasets: Record<string, number[]> = {
    temperatures: Array.from({ length: 1000 }, () => Math.round((rnd() * 50 - 20) * 10) / 10),
    negative: Array.from({ length: 500 }, () => -rnd() * 1000),
    zeros,
    'zeros, sketch': repeat(zeros, 7),
    wide: Array.from({ length: 2000 }, () => (rnd() < 0.5 ? -1 : 1) * 10 ** (rnd() * 40 - 20)),
    'wide, exact': Array.from({ length: PERCENTILE_EXACT_LIMIT }, () => (rnd() < 0.5 ? -1 : 1) * 10 ** (rnd() * 40 - 20)),
    huge,
    'huge, sketch': repeat(huge, 14),
    single: [-273.15],
    duplicates: [5, 5, 5, 5, 1, 1, 9]
  }
  const qs = [0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1]
  for (const [name, xs] of Object.entries(datasets)) {
    for (const q of qs) {
      const state = run(percentile, xs, [q])
      const expected = exactPercentile(xs, q)
      const got = percentile.result(state)
      if (xs.length <= PERCENTILE_EXACT_LIMIT) t.equal(got, expected + 0, `${name}, q = ${q}: exact`)
      // Magnitudes up to 1.1e-308 count as zero in a sketch: a relative bound cannot hold for them.
      else if (Math.abs(expected) <= 1.2e-308) t.equal(got, 0, `${name}, q = ${q}: ${got} vs ${expected}`)
      else relClose(t, got, expected, 0.01 * (1 + 1e-12), `${name}, q = ${q}`)
      t.equal(percentile.result(roundTrip(percentile, state, [q])), got, `${name}, q = ${q}, round trip`)
    }
    t.equal(resultOf(percentile, xs, [0]), Math.min(...xs) + 0, `${name}: q = 0 is the exact minimum`)
    t.equal(resultOf(percentile, xs, [1]), Math.max(...xs) + 0, `${name}: q = 1 is the exact maximum`)
  }
  relClose(t, resultOf(percentile, [1, 2, 3, 4], [0.5]), 2, 0.01, 'the lower median, not an interpolation')
  relClose(t, resultOf(percentile, [10, 20, 30, 40, 50], [0.74]), 30, 0.01, 'rank floor(0.74 * 4) = 2')
})

t.test('percentile: merging sketches with negative values (the library merge drops them)', async t => {
  const many = (xs: number[]): number[] => Array.from({ length: PERCENTILE_EXACT_LIMIT }, (_, i) => xs[i % xs.length])
  const a = run(percentile, many([-5, -3, 2]), [0.35])
  const b = run(percentile, many([-10, -1]), [0.35])
  const merged = percentile.merge(a, b)
  relClose(t, percentile.result(merged), -5, 0.01, 'rank 44 of 128 is among the -5s')
  t.same(percentile.encode(merged), percentile.encode(run(percentile, [...many([-5, -3, 2]), ...many([-10, -1])], [0.35])))
  // Bin key 0 holds (0.98, 1]; the library's store merge writes NaN bins when the other store ends there.
  const c = run(percentile, many([0.1, 0.2]), [0.7])
  const d = run(percentile, many([0.5, 1]), [0.7])
  const merged2 = percentile.merge(c, d)
  relClose(t, percentile.result(merged2), 0.5, 0.01, 'merge ending at key 0')
  t.same(percentile.encode(merged2), percentile.encode(run(percentile, [...many([0.1, 0.2]), ...many([0.5, 1])], [0.7])))
})

t.test('percentile: exact up to the limit, then a sketch', async t => {
  const limit = PERCENTILE_EXACT_LIMIT
  const rnd = mulberry32(7)
  const xs = Array.from({ length: 3 * limit }, () => Math.round((rnd() * 40 - 10) * 10) / 10)
  const isExact = (state: PercentileState): boolean => (percentile.encode(state) as unknown[]).length === 1
  const encoded = (values: readonly number[]): unknown => percentile.encode(run(percentile, values, [0.5]))

  // Exact at every size up to the limit, encoded as the sorted readings.
  for (let n = 1; n <= limit; n++) {
    const part = xs.slice(0, n)
    const state = run(percentile, part, [0.9])
    t.same(percentile.encode(state), [[...part].sort((a, b) => a - b)], `${n} readings: exact`)
    t.equal(percentile.result(state), exactPercentile(part, 0.9), `${n} readings: the exact p90`)
  }
  // One more reading turns it into the sketch of all of them: 65 readings of 1 are 65 in bin 0.
  const ones = run(percentile, new Array<number>(limit).fill(1), [0.5])
  t.ok(isExact(ones))
  t.same(percentile.encode(percentile.add(ones, 1, 0)), [1, 1, 0, 0, [], 0, [limit + 1]], 'the 65th reading: a sketch')
  for (const n of [limit + 1, limit + 2, 2 * limit, 3 * limit]) {
    const state = run(percentile, xs.slice(0, n), [0.9])
    t.notOk(isExact(state), `${n} readings: a sketch`)
    relClose(t, percentile.result(state), exactPercentile(xs.slice(0, n), 0.9), 0.01, `${n} readings: p90 within 1%`)
  }
  t.ok(cborEncode(encoded(xs.slice(0, limit))).length < limit * 9 + 4, 'the exact form is 9 bytes a reading at most')

  // Every kind of merge, in both orders: the result is the state of all the readings at once.
  const positive = xs.filter(x => x > 0)
  const negative = xs.filter(x => x < 0)
  const cases: Array<[string, number[], number[], boolean]> = [
    ['exact + exact, fits', xs.slice(0, 20), xs.slice(20, limit), true],
    ['exact + exact, fits in the first one\'s room', xs.slice(0, 3), xs.slice(3, 4), true],
    ['exact + exact, over the limit', xs.slice(0, 40), xs.slice(40, 80), false],
    ['exact + exact, one over the limit', xs.slice(0, 1), xs.slice(1, limit + 1), false],
    ['exact + sketch', xs.slice(0, 10), xs.slice(10, 3 * limit), false],
    ['sketch + sketch', xs.slice(0, limit + 1), xs.slice(limit + 1), false],
    ['positive exact + negative exact, over the limit', positive.slice(0, 40), negative.slice(0, 40), false],
    ['positive exact + negative sketch', positive.slice(0, 5), [...negative, ...negative].slice(0, limit + 1), false],
    ['positive sketch + negative sketch', positive.slice(0, limit + 1), [...negative, ...negative].slice(0, limit + 1), false],
    ['zeros + positive sketch', [0, 0, -0], positive.slice(0, limit + 1), false]
  ]
  for (const [name, a, b, exact] of cases) {
    const all = encoded([...a, ...b])
    for (const [x, y, order] of [[a, b, 'a + b'], [b, a, 'b + a']] as const) {
      const other = run(percentile, y, [0.5])
      const otherBefore = percentile.encode(other)
      const merged = percentile.merge(run(percentile, x, [0.5]), other)
      t.same(percentile.encode(merged), all, `${name}, ${order}: the state of everything at once`)
      t.equal(isExact(merged), exact, `${name}, ${order}: ${exact ? 'exact' : 'a sketch'}`)
      t.same(percentile.encode(other), otherBefore, `${name}, ${order}: other untouched`)
      // The merged state keeps working: more readings and merges land where they should.
      const more = percentile.merge(percentile.add(merged, -7.5, 0), roundTrip(percentile, other, [0.5]))
      t.same(percentile.encode(more), encoded([...a, ...b, -7.5, ...y]), `${name}, ${order}: then more`)
      relClose(t, percentile.result(more), exactPercentile([...a, ...b, -7.5, ...y], 0.5), 0.01, `${name}, ${order}: the median`)
    }
  }
  // Merging a state into itself doubles it, in either representation.
  for (const n of [5, 40, 100]) {
    const state = run(percentile, xs.slice(0, n), [0.5])
    t.same(percentile.encode(percentile.merge(state, state)), encoded([...xs.slice(0, n), ...xs.slice(0, n)]), `${n} readings, merged with itself`)
  }
  // -0 is stored as 0, so that equal states encode alike.
  t.same(encoded([-0, 0, -0]), [[0, 0, 0]])
  t.ok(Object.is(resultOf(percentile, [-0], [0.5]), 0))
})

t.test('distinct: exact up to the limit, then a sketch', async t => {
  t.equal(resultOf(distinct, ['a', 'b', 'a', 1, '1', 1.5, '1.5', 0, -0, '0']), 5, 'values compare by their string form')
  const values = Array.from({ length: EXACT_LIMIT }, (_, i) => `v${i}`)
  const exact = run(distinct, [...values, ...values])
  t.equal(distinct.result(exact), EXACT_LIMIT)
  t.ok(Array.isArray(distinct.encode(exact)), 'still exact at the limit')
  const over = distinct.add(run(distinct, values), 'one more', 0)
  t.ok(distinct.encode(over) instanceof Uint8Array, 'a sketch past the limit')
  relClose(t, distinct.result(over), EXACT_LIMIT + 1, 0.02, 'estimate just past the limit')

  // Two exact halves that together pass the limit become a sketch equal to the sketch of everything.
  const all = Array.from({ length: 1500 }, (_, i) => i)
  const merged = distinct.merge(run(distinct, all.slice(0, 800)), roundTrip(distinct, run(distinct, all.slice(700))))
  t.equal(distinct.result(merged), resultOf(distinct, all))
  t.same(distinct.encode(merged), distinct.encode(run(distinct, all)))
  // Exact into sketch and sketch into exact.
  const sketch = run(distinct, all)
  const small = run(distinct, [1, 2, 3, 'x', 'y'])
  const expected = resultOf(distinct, [...all, 'x', 'y'])
  t.equal(distinct.result(distinct.merge(run(distinct, all), run(distinct, [1, 2, 3, 'x', 'y']))), expected)
  t.equal(distinct.result(distinct.merge(small, sketch)), expected)
  t.equal(distinct.result(sketch), resultOf(distinct, all), 'merge leaves other untouched')
})

t.test('distinct: accuracy of the sketch', async t => {
  for (const n of [1001, 2000, 5000, 20000, 100000]) {
    relClose(t, resultOf(distinct, Array.from({ length: n }, (_, i) => `sensor-${i}`)), n, 0.02, `${n} strings`)
    relClose(t, resultOf(distinct, Array.from({ length: n }, (_, i) => i * 0.25 - 100)), n, 0.02, `${n} numbers`)
  }
})

t.test('first and last', async t => {
  const values = [5, 'b', 3, 'a', 7]
  const times = [20, 10, 10, 30, 30]
  t.equal(resultOf(first, values, [], times), 3, 'tie at the smallest time: a number before a string')
  t.equal(resultOf(last, values, [], times), 'a', 'tie at the largest time: a string after a number')
  t.equal(resultOf(first, ['b', 'a', 'c'], [], [1, 1, 1]), 'a')
  t.equal(resultOf(last, ['b', 'a', 'c'], [], [1, 1, 1]), 'c')
  t.equal(resultOf(first, [2, -3, 10], [], [1, 1, 1]), -3, 'numbers compare numerically')
  t.equal(resultOf(last, [2, -3, 10], [], [1, 1, 1]), 10)
  t.equal(resultOf(last, ['10', '9'], [], [1, 1]), '9', 'strings compare by code units')
  t.equal(resultOf(first, [1], [], [1.7e12]), 1)
  // Every arrival order gives the same result.
  const perms = [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 4, 0, 3, 2]]
  for (const p of perms) {
    t.equal(resultOf(first, p.map(i => values[i]), [], p.map(i => times[i])), 3)
    t.equal(resultOf(last, p.map(i => values[i]), [], p.map(i => times[i])), 'a')
  }
  const a = roundTrip(first, run(first, ['late'], [], [100]))
  t.equal(first.result(first.merge(a, run(first, ['early'], [], [50]))), 'early')
  t.equal(last.result(last.merge(run(last, ['early'], [], [50]), roundTrip(last, run(last, ['late'], [], [100])))), 'late')
})

/** Payloads every aggregate must reject, and per aggregate more. Valid shapes of other aggregates included. */
const GARBAGE: unknown[] = [
  undefined, true, 'x', NaN, Infinity, -Infinity, {}, { n: 1 }, [NaN], [1, 2, 3, 4, 5, 6, 7, 8],
  [NaN, NaN, NaN], new Uint8Array([1, 2, 3]), 10n ** 30n, [[]], [{}]
]

const BAD: Record<string, unknown[]> = {
  count: [null, [], [1], 2 ** 53, -1, -0.5, 1.5],
  sum: [null, [], [1], [1, NaN], [Infinity, 0], [1, 2, 3], ['1', 0]],
  min: [[], [1], '1', [null]],
  max: [[], [1], '1', [null]],
  avg: [null, 5, [0, 1], [0, 0, 1], [-1, 0], [1.5, 2], [1, NaN], [1, 2, Infinity], [1, 2, 3, 4]],
  stddev: [null, [1, 2], [1, 2, -1], [0, 1, 0], [1, 5, 2], [2, 0, NaN], [1e300 * 1e10, 0, 0], [2.5, 1, 1]],
  percentile: [
    5, [], [0, 0, 0, 0, [], 0, []],
    // Sketches, each of more than 64 readings (as encode makes them) and valid but for one thing.
    [5, 5, 0, 0, [], 0, [65]], // min and max not in the only bin (key 0 holds (0.98, 1])
    [1, 5, 0, 0, [], 0, [65]], // max not in the only bin
    [-5, 1, 0, 0, [], 0, [65]], // a negative min without negative readings
    [2, 1, 0, 0, [], 0, [65]], // min > max
    [1, 1, 0, 0, [], 0, [65, 0]], // trailing zero bin
    [1, 1, 0, 0, [], 0, [0, 65]], // leading zero bin
    [1, 1, 0, 0, [], 0, [-1]],
    [1, 1, 0, 0, [], 0, [65.5]],
    [1, 1, 0, 0, [], 0.5, [65]],
    [1, 1, 0, 0, [], 1e9, [65]],
    [1, 1, 0, 0, [], -1e9, [65]],
    [1, 1, 0, 0, [], 0, 'bins'],
    [1, 1, 0, 0, [], 0, new Uint8Array([65])],
    [1, 1, -1, 0, [], 0, [65]],
    [1, 1, 0, 3, [], 0, [65]], // empty store with a key
    [NaN, 1, 0, 0, [], 0, [65]],
    [1, Infinity, 0, 0, [], 0, [65]],
    [1, 1, 0, 0, [], 0, [2 ** 53 - 1, -1, 5]], // total overflows
    [1, 1, 0, 0, [], 0, [1, 0, 64]], // empty bins are runs (< 0), never 0
    [1, 1, 0, 0, [], 0, [1, -1e9, 64]], // keys past the largest finite value
    [1, 1, 0, 0, [], 35000, [1, -1000, 64]],
    [1, 1, 0, 0, [], 0, [1, -0.5, 64]],
    [1, 1, 0, 0, [], 0, [1, NaN, 64]],
    [1, 1, 0, 0, [], 0, [1, '1', 64]],
    [1, 1, 0, 0, [], 0, [-3, 65]],
    [-1, -1, 65, 0, [], 0, []], // min must be 0 with only zeros
    // Sketches of 64 readings or fewer: those are sent exactly, and must stay exact.
    [0, 0, 3, 0, [], 0, []],
    [1, 1, 0, 0, [], 0, [64]],
    [-1, 1, 0, 0, [32], 0, [32]],
    [-1, 1, 0, 0, [1], 0, [1]],
    // The exact form: [readings], 1 to 64 finite numbers.
    [[]], [1], ['x'], [null], [{}], [new Uint8Array([1])], [[[1]]],
    [[NaN]], [[1, Infinity]], [[-Infinity, 1]], [[1, NaN, 2]], [['1']], [[1, null]], [[true]], [[1, [2]]],
    [new Array<number>(65).fill(1)],
    [Array.from({ length: 1000 }, (_, i) => i)],
    [[1], [2]], [[1], 2, 3], [[1], 1, 0, 0, [], 0, [1]]
  ],
  distinct: [
    null, 5, ['a', 'a'], ['a', 1], [null], Array.from({ length: 1001 }, (_, i) => String(i)),
    new Uint8Array([]), new Uint8Array([14]), new Uint8Array([12, 64]), new Uint8Array([14, 255]),
    new Uint8Array([14, ...new Array(86).fill(255)]), // 16512 registers
    new Uint8Array([14, ...new Array(85).fill(255), 0]),
    new Uint8Array([14, ...new Array(85).fill(255), 52]), // register value above 51
    new Uint8Array([14, ...new Array(85).fill(255), 64 + 63, 1]), // 16385 registers
    new Uint8Array([14, ...new Array(85).fill(255), 64 + 62]) // 16383 registers
  ],
  first: [[], [1], [1, 2, 3], [NaN, 1], [1, NaN], [1, null], [1, [1]], ['1', 1], [Infinity, 'x'], [1, true]],
  last: [[], [1], [1, 2, 3], [NaN, 1], [1, Infinity], [1, null], [1, {}], ['1', 1]]
}

t.test('decode rejects malformed states with WireError', async t => {
  for (const [name, agg] of AGGREGATES) {
    const params = name === 'percentile' ? [0.5] : []
    for (const bad of [...GARBAGE, ...BAD[name]]) {
      t.throws(() => agg.decode(bad, params), WireError, `${name} rejects ${describeShort(bad)}`)
    }
  }
  t.match(getError(() => percentile.decode([1, 1, 0, 0, [], 0, [1, 0]], [0.5])), { name: 'WireError', message: /percentile/ })
})

t.test('decode accepts the valid edge shapes', async t => {
  // 16384 zero registers as 85 runs of 192 and one of 64.
  const zeros = distinct.decode(new Uint8Array([14, ...new Array(85).fill(255), 64 + 63]), [])
  t.equal(distinct.result(zeros), 0)
  t.equal(count.result(count.decode(0, [])), 0)
  t.equal(sum.result(sum.decode([1e16, 1], [])), 1e16 + 1)
  t.equal(percentile.result(percentile.decode([0, 0, 65, 0, [], 0, []], [0.5])), 0)
  t.equal(percentile.result(percentile.decode([1, 1, 0, 0, [], 0, [65]], [0.5])), 1, 'the smallest sketch')
  t.equal(percentile.result(percentile.decode([-1, 1, 0, 0, [33], 0, [32]], [1])), 1, 'key 0 holds both 1 and -1')
  // Bins 0 (30 readings), 6 (30) and 8 (5); the maximum must lie in bin 8, i.e. in (1.0202^7, 1.0202^8].
  const top = 1.0202 ** 7.5
  const runs = percentile.decode([1, top, 0, 0, [], 0, [30, -2, -3, 30, -1, 5]], [0.5])
  t.same(percentile.encode(runs), [1, top, 0, 0, [], 0, [30, -5, 30, -1, 5]], 'consecutive runs are accepted and re-encoded as one')
  relClose(t, percentile.result(runs), 1.0202 ** 6, 0.01, 'the median is in bin 6')
  // The exact form, in any order, with -0 and magnitudes a sketch would count as zero.
  t.equal(percentile.result(percentile.decode([[5]], [0.5])), 5)
  const unsorted = percentile.decode([[3, -0, 1e-320, -2, 5e-324]], [0.5])
  t.equal(percentile.result(unsorted), 5e-324)
  t.same(percentile.encode(unsorted), [[-2, 0, 5e-324, 1e-320, 3]], 're-encoded sorted, -0 as 0')
  const full = Array.from({ length: PERCENTILE_EXACT_LIMIT }, (_, i) => i / 10)
  t.equal(percentile.result(percentile.decode([full], [1])), 6.3, 'as many readings as the limit')
  t.equal(stddev.result(stddev.decode([2, 1e9, 0.5, 1e-8], [])), 0.5)
  t.equal(first.result(first.decode([5, 'x'], [])), 'x')
})

t.test('decode of random garbage: a WireError or a usable state, nothing else', async t => {
  const rnd = mulberry32(5)
  const atoms = [0, 1, -1, 2, 0.5, 1e300, -1e300, NaN, Infinity, 'a', '', null, true, 2 ** 53, 14, 64, 255, 35488, -35452]
  function garbage (depth: number): unknown {
    const r = rnd()
    if (depth > 2 || r < 0.4) return atoms[Math.floor(rnd() * atoms.length)]
    if (r < 0.5) return Math.floor(rnd() * 300) - 100
    if (r < 0.6) return Uint8Array.from({ length: Math.floor(rnd() * 40) }, () => Math.floor(rnd() * 256))
    return Array.from({ length: Math.floor(rnd() * 9) }, () => garbage(depth + 1))
  }
  let accepted = 0
  for (let i = 0; i < 3000; i++) {
    const data = garbage(0)
    for (const [name, agg] of AGGREGATES) {
      const params = name === 'percentile' ? [0.9] : []
      let state: unknown
      try {
        state = agg.decode(data, params)
      } catch (err) {
        if (!(err instanceof WireError)) t.fail(`${name}.decode(${describeShort(data)}) threw ${String(err)}`)
        continue
      }
      accepted++
      const r = agg.result(agg.merge(agg.merge(agg.create(params), state), state))
      if (typeof r === 'number' && !Number.isFinite(r)) t.fail(`${name}.decode(${describeShort(data)}) gave ${r}`)
      agg.decode(cborDecode(cborEncode(agg.encode(state))), params)
    }
  }
  t.ok(accepted > 0, `${accepted} random payloads happened to be valid`)
})

t.test('encoded sizes', async t => {
  const rnd = mulberry32(6)
  const temps = Array.from({ length: 1000 }, () => Math.round((rnd() * 40 - 10) * 10) / 10)
  const size = (agg: AnyAggregate, state: unknown): number => cborEncode(agg.encode(state)).length
  t.ok(size(percentile, run(percentile, temps, [0.95])) < 1000, 'percentile of 1000 temperatures under 1 KB')
  t.ok(size(percentile, run(percentile, temps.slice(0, 10), [0.95])) <= 10 * 9 + 2, 'exact: 9 bytes a reading at most')
  const spread = [1e-300, 1e-200, 1, 1e200, 1e300, -1e300, -1e-300]
  const spreadSize = size(percentile, run(percentile, Array.from({ length: 10 }, () => spread).flat(), [0.5]))
  t.ok(spreadSize < 100, `empty bins cost little: ${spreadSize} bytes for 70 readings from 1e-300 to 1e300`)
  t.ok(size(distinct, run(distinct, Array.from({ length: 5000 }, (_, i) => `s${i}`))) < 10000, 'distinct of 5000 under 10 KB')
  t.ok(size(distinct, run(distinct, Array.from({ length: 1e5 }, (_, i) => `s${i}`))) <= 16384 + 1 + 5, 'a full sketch is at most 16 KB')
})

function describeShort (v: unknown): string {
  if (v instanceof Uint8Array) return `bytes(${v.length})`
  if (typeof v === 'bigint') return `${v}n`
  if (v === undefined) return 'undefined'
  const s = JSON.stringify(v, (_k, x) => typeof x === 'number' && !Number.isFinite(x) ? String(x) : x) ?? String(v)
  return s.length > 60 ? s.slice(0, 57) + '...' : s
}

function getError (fn: () => unknown): unknown {
  try {
    fn()
  } catch (err) {
    return err
  }
  return undefined
}

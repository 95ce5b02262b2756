// The oracle on small cases computed by hand, one per window kind and rule.
import { Encoder } from 'cbor-x'
import t from 'tap'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { countSelect as count, pipelineSpec as pipeline, select as sel } from './helpers/specs.ts'
import { computeTruth, Oracle } from '../simulators/truth.ts'
import type { EdgeTruth, OracleMessage, PipelineTruth } from '../simulators/truth.ts'

const T0 = Date.UTC(2024, 0, 1)
/** Event time `s` seconds after T0. */
const at = (s: number): number => T0 + s * 1000
const iso = (s: number): string => new Date(at(s)).toISOString()
const TOPIC = 'sensors/r1/temperature'

function json (fields: unknown, topic = TOPIC): OracleMessage {
  return { topic, payload: new TextEncoder().encode(JSON.stringify(fields)) }
}

/** A reading `s` seconds after T0. */
function r (s: number, value: unknown = 1, extra: Record<string, unknown> = {}, topic = TOPIC): OracleMessage {
  return json({ ts: at(s), value, device: 'd1', ...extra }, topic)
}

/** Messages an edge refused as a whole (payloads that did not decode), by reason. */
function refused (ps: PipelineSpec[], messages: OracleMessage[]): Record<string, number | undefined> {
  const oracle = new Oracle(ps, 1)
  for (const m of messages) oracle.push(0, m)
  return oracle.refused['0']
}

function truthOf (p: PipelineSpec, ...streams: OracleMessage[][]): PipelineTruth {
  return computeTruth([p], streams)[p.name]
}

function edge (p: PipelineSpec, messages: OracleMessage[]): EdgeTruth {
  return truthOf(p, messages).edges['0']
}

/** Results as compact tuples: [key, start s, end s, revision, ...values]. */
function compact (e: { results: EdgeTruth['results'] }): unknown[] {
  return e.results.map(w => [w.key, (Date.parse(w.start) - T0) / 1000, (Date.parse(w.end) - T0) / 1000, w.revision, ...Object.values(w.values)])
}

t.test('the truth says which result fields are estimates, and how closely', async t => {
  const p = pipeline({ select: [count(), sel('sum', 'value'), sel('percentile', 'value', [0.95], 'p95'), sel('distinct', 'device', [], 'devices')] })
  t.same(truthOf(p, [r(1)]).approximate, { p95: { relativeError: 0.01 }, devices: { exactUpTo: 1000, relativeError: 0.02 } },
    'percentile within 1%, distinct exact up to 1000 values and within 2% beyond; count and sum exact')
})

t.test('tumbling: late readings are dropped once the watermark passed the window end', async t => {
  const stream = [r(1, 10), r(5, 20), r(12, 30), r(3, 40), r(25, 50)]
  const e = edge(pipeline(), stream)
  t.same(compact(e), [['*', 0, 10, 0, 2, 30], ['*', 10, 20, 0, 1, 30], ['*', 20, 30, 0, 1, 50]])
  t.equal(e.accepted, 4)
  t.equal(e.late, 1)
  t.same(e.rejected, {})
  t.equal(e.results[0].start, iso(0))
  t.equal(e.results[0].end, iso(10))

  const lenient = edge(pipeline({ lateness: 5000 }), stream)
  t.same(compact(lenient), [['*', 0, 10, 0, 3, 70], ['*', 10, 20, 0, 1, 30], ['*', 20, 30, 0, 1, 50]], 'within lateness the reading counts')
  t.equal(lenient.late, 0)
})

t.test('tumbling: per-key windows, results sorted by start then key', async t => {
  const p = pipeline({ key: ['room', 'device'] })
  const e = edge(p, [
    r(1, 1, { device: 'd2' }, 'sensors/r2/temperature'),
    r(2, 2, { device: 'd1' }, 'sensors/r2/temperature'),
    r(3, 3, { device: 'd1' }),
    r(11, 4, { device: 'd1' })
  ])
  t.same(compact(e), [['r1/d1', 0, 10, 0, 1, 3], ['r2/d1', 0, 10, 0, 1, 2], ['r2/d2', 0, 10, 0, 1, 1], ['r1/d1', 10, 20, 0, 1, 4]])
})

t.test('hopping: a reading can be late for some of its windows and on time for others', async t => {
  const p = pipeline({ window: { kind: 'hopping', size: 10_000, every: 5000 } })
  // after 13 the watermark is 13: [0,10) has closed, [5,15) has not
  const e = edge(p, [r(2, 1), r(8, 2), r(13, 4), r(7, 8), r(1, 16)])
  t.same(compact(e), [
    ['*', -5, 5, 0, 1, 1],
    ['*', 0, 10, 0, 2, 3],
    ['*', 5, 15, 0, 3, 14],
    ['*', 10, 20, 0, 1, 4]
  ])
  t.equal(e.accepted, 4, 'the reading at 7 counts as accepted (it went into [5,15))')
  t.equal(e.late, 2, 'the readings at 7 and 1 are late, each counted once')
  t.equal(e.partiallyLate, 1)
})

t.test('late: update re-emits closed windows with a new revision per late reading', async t => {
  const p = pipeline({ late: 'update', lateHorizon: 20_000 })
  const e = edge(p, [
    r(1, 1), r(12, 2),
    r(4, 4), // [0,10) closed at watermark 12; 10 > 12 - 20: revision 1
    r(5, 8), // revision 2
    r(40, 16),
    r(6, 32), // watermark 40: 10 <= 40 - 20, beyond the horizon: dropped
    r(25, 64) // [20,30) never had a reading; 30 > 20: opened late, emitted as revision 0
  ])
  t.same(compact(e), [
    ['*', 0, 10, 2, 3, 13],
    ['*', 10, 20, 0, 1, 2],
    ['*', 20, 30, 0, 1, 64],
    ['*', 40, 50, 0, 1, 16]
  ])
  t.equal(e.accepted, 6)
  t.equal(e.late, 1)
})

t.test('late: update with hopping windows updates every closed window in the horizon', async t => {
  const p = pipeline({ window: { kind: 'hopping', size: 10_000, every: 5000 }, late: 'update' })
  const e = edge(p, [r(2, 1), r(8, 2), r(16, 4), r(7, 8)])
  // watermark 16: [0,10) and [5,15) are closed, 7 updates both
  t.same(compact(e), [
    ['*', -5, 5, 0, 1, 1],
    ['*', 0, 10, 1, 3, 11],
    ['*', 5, 15, 1, 2, 10],
    ['*', 10, 20, 0, 1, 4],
    ['*', 15, 25, 0, 1, 4]
  ])
  t.equal(e.late, 0)
  t.equal(e.accepted, 4)
})

t.test('sessions: out-of-order merge, late sessions, only open sessions merge', async t => {
  const p = pipeline({ key: ['device'], window: { kind: 'session', gap: 5000 }, lateness: 10_000 })
  const d = (s: number, device: string, value = 1): OracleMessage => r(s, value, { device })
  const e = edge(p, [
    d(0, 'd1', 1), d(7, 'd1', 2), // two sessions [0,5) and [7,12)
    d(4, 'd1', 4), // [4,9) bridges them: [0,12)
    d(1, 'd2', 8),
    d(30, 'd1', 16), // watermark 20: d1 [0,12) and d2 [1,6) close
    d(11, 'd1', 32), // [11,16): 16 <= 20, late
    d(14, 'd1', 64), // [14,19): late
    d(16, 'd1', 128) // [16,21): on time; the closed [0,12) is not reopened
  ])
  t.same(compact(e), [
    ['d1', 0, 12, 0, 3, 7],
    ['d2', 1, 6, 0, 1, 8],
    ['d1', 16, 21, 0, 1, 128],
    ['d1', 30, 35, 0, 1, 16]
  ])
  t.equal(e.late, 2)
  t.equal(e.accepted, 6)
})

t.test('sessions: a session ends gap after its last reading', async t => {
  const p = pipeline({ window: { kind: 'session', gap: 5000 }, lateness: 60_000 })
  const e = edge(p, [r(0), r(3), r(6), r(20)])
  t.same(compact(e), [['*', 0, 11, 0, 3, 3], ['*', 20, 25, 0, 1, 1]])
})

t.test('session windows refuse late: update', async t => {
  t.throws(() => truthOf(pipeline({ window: { kind: 'session', gap: 1000 }, late: 'update' }), []), /late: update/)
})

t.test('count windows: every N readings of a key in arrival order; incomplete ones never emitted', async t => {
  const p = pipeline({ key: ['room'], window: { kind: 'count', count: 3 }, select: [count(), sel('first', 'value'), sel('last', 'value')] })
  const r2 = 'sensors/r2/temperature'
  const tr = truthOf(p, [r(5, 'a'), r(2, 'b'), r(1, 0, {}, r2), r(9, 'c'), r(2, 1, {}, r2), r(100, 1), r(1, 2), r(50, 3)])
  const e = tr.edges['0']
  t.same(e.results.map(w => [w.key, w.start, w.end, w.values]), [
    ['r1', iso(1), new Date(at(100) + 1).toISOString(), { n: 3, first: 2, last: 1 }],
    ['r1', iso(2), new Date(at(9) + 1).toISOString(), { n: 3, first: 'b', last: 'c' }]
  ])
  t.equal(e.accepted, 8)
  t.equal(e.late, 0)
  t.equal(tr.merged, null, 'count windows have no merged view')
})

t.test('aggregates: exact values, population stddev, percentile by index, first/last ties', async t => {
  const p = pipeline({
    select: [
      count(), sel('sum', 'value'), sel('min', 'value'), sel('max', 'value'), sel('avg', 'value'), sel('stddev', 'value'),
      sel('percentile', 'value', [0.5], 'p50'), sel('percentile', 'value', [0.9], 'p90'), sel('distinct', 'device'),
      sel('first', 'label'), sel('last', 'label')
    ]
  })
  const e = edge(p, [
    r(1, 2, { label: 5 }), r(1, 4, { label: 3 }), r(1, 4, { label: 'a', device: 'd2' }), r(1, 4, { label: 7 }),
    r(3, 5, { label: 2, device: 'd3' }), r(3, 5, { label: 'b' }), r(3, 7, { label: 'a' }), r(2, 9, { label: 1 })
  ])
  t.same(e.results[0].values, {
    n: 8,
    sum: 40,
    min: 2,
    max: 9,
    avg: 5,
    stddev: 2, // values 2 4 4 4 5 5 7 9: the textbook population stddev
    p50: 4, // sorted[floor(0.5 * 7)] = sorted[3]
    p90: 7, // sorted[floor(0.9 * 7)] = sorted[6]
    distinct: 3,
    first: 3, // ts 1: 5, 3, "a", 7 -> the smallest, numbers before strings
    last: 'b' // ts 3: 2, "b", "a" -> the largest, strings after numbers
  })
})

t.test('rejections by reason, in the order decode, timestamp, where, key, select', async t => {
  const p = pipeline({
    where: 'humidity < 90.0',
    key: ['device'],
    select: [count(), sel('sum', 'value'), sel('distinct', 'label')]
  })
  const ok = { ts: at(1), value: 1, humidity: 50, device: 'd1', label: 'x' }
  const messages = [
    { topic: TOPIC, payload: new Uint8Array([0xff, 0xfe, 0x00]) }, // parse
    json([1, 2]), // parse
    json({ ...ok, ts: 'yesterday' }), // bad_timestamp
    json({ ...ok, ts: Date.UTC(3000, 0, 1) }), // bad_timestamp
    json({ ...ok, ts: undefined }), // missing_field (timestamp)
    json({ ...ok, ts: 'later', humidity: 'x' }), // bad_timestamp wins over where
    json({ ...ok, humidity: 95 }), // filtered
    json({ ...ok, humidity: undefined }), // missing_field (where)
    json({ ...ok, device: undefined }), // missing_field (key)
    json({ ...ok, device: { id: 1 } }), // type (key)
    json({ ...ok, value: undefined }), // missing_field (select)
    json({ ...ok, value: '21.5' }), // type (sum of a string)
    json({ ...ok, value: null }), // type
    json({ ...ok, label: true }), // type (distinct of a boolean)
    json({ ...ok, value: 'x', label: undefined }), // type: sum comes first
    json(ok), // accepted
    json({ ...ok, label: 7 }), // accepted: distinct takes numbers too
    json({ ...ok, device: 3 }), // accepted, key "3"
    json(ok, 'sensors/r1/humidity') // not this pipeline's topic: not counted at all
  ]
  const e = edge(p, messages)
  t.same(e.rejected, { bad_timestamp: 3, missing_field: 4, type: 5 })
  t.same(refused([p], messages), { parse: 2 }, 'payloads that do not decode are refused as a whole, once per message')
  t.same(refused([p, { ...p, name: 'q' }], messages), { parse: 2 }, 'however many pipelines they are for')
  const cbor = pipeline({ name: 'c', format: 'cbor' })
  t.same(refused([p, cbor], [json([1, 2]), json(ok)]), { parse: 2 }, 'a payload one format cannot decode is refused once, read by the others')
  t.equal(truthOf(cbor, [json(ok)]).edges['0'].accepted, 0)
  t.equal(e.filtered, 1)
  t.equal(e.accepted, 3)
  t.same(compact(e), [['3', 0, 10, 0, 1, 1, 1], ['d1', 0, 10, 0, 2, 2, 2]])
})

t.test('rejections: where must be a boolean, non-finite inputs, expression errors', async t => {
  const flag = edge(pipeline({ where: 'flag' }), [r(1, 1, { flag: true }), r(1, 1, { flag: false }), r(1, 1, { flag: 'yes' })])
  t.same([flag.accepted, flag.filtered, flag.rejected], [1, 1, { type: 1 }])

  const expr = edge(pipeline({ where: 'value > 0.0' }), [r(1, 1), r(1, 'warm')])
  t.same([expr.accepted, expr.rejected], [1, { expression: 1 }], 'comparing a string with a number is an expression error')

  const cbor = new Encoder({ useRecords: false, mapsAsObjects: true })
  const c = (fields: unknown): OracleMessage => ({ topic: TOPIC, payload: new Uint8Array(cbor.encode(fields)) })
  const p = pipeline({ format: 'cbor', select: [sel('sum', 'value'), sel('last', 'label')] })
  const messages = [
    c({ ts: at(1), value: NaN, label: 'a' }),
    c({ ts: at(1), value: Infinity, label: 'a' }),
    c({ ts: at(1), value: 1, label: -Infinity }),
    c({ ts: NaN, value: 1, label: 'a' }),
    c({ ts: at(1), value: 1, label: 'a' })
  ]
  const e = edge(p, messages)
  // CBOR carries non-finite numbers, and its decoder refuses them: the message as a whole
  t.same([e.accepted, e.rejected, refused([p], messages)], [1, {}, { non_finite: 4 }])
})

t.test('rejected and filtered readings still move the watermark', async t => {
  const e = edge(pipeline(), [r(1, 1), r(15, 'x'), r(5, 2)])
  t.same([e.accepted, e.late, e.rejected], [1, 1, { type: 1 }])
  const f = edge(pipeline({ where: 'value > 0.0' }), [r(1, 1), r(15, -1), r(5, 2)])
  t.same([f.accepted, f.filtered, f.late], [1, 1, 1])
  const bad = edge(pipeline(), [r(1, 1), json({ ts: 'x', value: 1 }), r(5, 2)])
  t.same([bad.accepted, bad.late], [2, 0], 'a bad timestamp does not')
})

t.test('senml: the device is in the record name, the room in the topic', async t => {
  const p = pipeline({ format: 'senml', timestamp: 'time', key: ['room', 'name'] })
  const senml = (device: string, s: number, v: unknown): OracleMessage =>
    json([{ bn: `${device}:`, bt: at(s) / 1000, n: 'temp', u: 'Cel', v }])
  const messages = [senml('d1', 1, 20.5), senml('d2', 2, -1.25), senml('d1', 3.5, 21), json([{ bn: 'd1:', bt: 'x', v: 1 }])]
  const e = edge(p, messages)
  t.same(compact(e), [['r1/d1:temp', 0, 10, 0, 2, 41.5], ['r1/d2:temp', 0, 10, 0, 1, -1.25]])
  t.same([e.rejected, refused([p], messages)], [{}, { non_finite: 1 }], 'a base time that is not a number: the decoder refuses the pack')
})

t.test('merged view: readings of every edge per window, overlapping sessions merged', async t => {
  const tumbling = truthOf(pipeline({ key: ['room'] }),
    [r(1, 10), r(12, 1)],
    [r(2, 20), r(3, 5, {}, 'sensors/r2/temperature')])
  t.same(compact(tumbling.edges['0']), [['r1', 0, 10, 0, 1, 10], ['r1', 10, 20, 0, 1, 1]])
  t.same(compact(tumbling.edges['1']), [['r1', 0, 10, 0, 1, 20], ['r2', 0, 10, 0, 1, 5]])
  t.same(compact(tumbling.merged!), [['r1', 0, 10, 0, 2, 30], ['r2', 0, 10, 0, 1, 5], ['r1', 10, 20, 0, 1, 1]])
  t.same(tumbling.merged!.results.map(w => w.sources), [2, 1, 1])

  const sessions = truthOf(pipeline({ window: { kind: 'session', gap: 5000 }, lateness: 60_000 }),
    [r(0, 1), r(12, 2)],
    [r(3, 4), r(20, 8)],
    [r(6, 16)])
  // [0,5) + [3,8) + [6,11) chain into one; [12,17) and [20,25) stay apart
  t.same(compact(sessions.merged!), [['*', 0, 11, 0, 3, 21], ['*', 12, 17, 0, 1, 2], ['*', 20, 25, 0, 1, 8]])
  t.same(sessions.merged!.results.map(w => w.sources), [3, 1, 1])
})

t.test('arrival-time pipelines: only the counters are predictable', async t => {
  const p = pipeline({ timestamp: undefined, where: 'value > 0.0' })
  const tr = truthOf(p, [r(1, 1), r(2, -1), r(3, 'x'), r(400, 2)])
  t.equal(tr.exact, false)
  t.equal(tr.merged, null)
  t.same(tr.edges['0'], { accepted: 2, filtered: 1, late: 0, partiallyLate: 0, rejected: { expression: 1 }, ambiguous: 0, results: [] })
})

t.test('edge names', async t => {
  const tr = computeTruth([pipeline()], [[r(1)], []], ['mqtt://a', 'mqtt://b'])
  t.same(Object.keys(tr.p.edges), ['mqtt://a', 'mqtt://b'])
  t.equal(tr.p.edges['mqtt://b'].results.length, 0)
})

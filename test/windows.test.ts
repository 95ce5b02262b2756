import t from 'tap'
import { compilePipeline } from '../core/pipeline/compile.ts'
import { parsePipelines } from '../core/pipeline/parse.ts'
import { WindowOperator } from '../core/windows/operator.ts'
import { windowValues } from '../core/windows/window.ts'
import type { WindowState } from '../core/windows/window.ts'
import type { OperatorSnapshot } from '../core/windows/operator.ts'
import { hoppingStarts, tumblingStart } from '../core/windows/assigners.ts'

/** Event times in these tests are offsets from here, a multiple of every window size used. */
const T0 = Date.UTC(2026, 0, 1)

interface Emitted { key: string, start: number, end: number, revision: number, values: Record<string, unknown> }

/** An operator over one pipeline given as YAML fields, collecting what it emits. */
function operator (fields: string): { op: WindowOperator, out: Emitted[], send: (r: Record<string, unknown>, arrival?: number) => void } {
  const yaml = `pipelines:\n  - name: p\n    from: s/+room\n    timestamp: ts\n    key: room\n${fields.split('\n').map(l => '    ' + l).join('\n')}\n    select:\n      n: count()\n      total: sum(value)\n`
  const [spec] = parsePipelines(yaml)
  const pipeline = compilePipeline(spec)
  const out: Emitted[] = []
  const op = new WindowOperator(pipeline, w => out.push({ key: w.key, start: w.start - T0, end: w.end - T0, revision: w.revision, values: windowValues(pipeline.selects, w) }))
  const send = (r: Record<string, unknown>, arrival = T0) => {
    const reading = typeof r.ts === 'number' ? { ...r, ts: T0 + r.ts } : r
    op.ingest(Buffer.from(JSON.stringify(reading)), `s/${String(r.room ?? 'a')}`, { room: String(r.room ?? 'a') }, arrival)
  }
  return { op, out, send }
}

t.test('assigners align windows to the epoch', async t => {
  t.equal(tumblingStart(12_345, 10_000), 10_000)
  t.equal(tumblingStart(0, 10_000), 0)
  t.same(hoppingStarts(12_345, 10_000, 5_000), [10_000, 5_000])
  t.same(hoppingStarts(10_000, 10_000, 5_000), [10_000, 5_000])
  t.same(hoppingStarts(10_000, 10_000, 3_000), [9_000, 6_000, 3_000], 'every that does not divide size')
})

t.test('tumbling: windows close when the watermark passes their end', async t => {
  const { op, out, send } = operator('window: { tumbling: 10s }\nlateness: 2s')
  send({ ts: 1_000, value: 1 })
  send({ ts: 9_999, value: 2 })
  send({ ts: 11_000, value: 3 })
  t.equal(out.length, 0, 'watermark 9s has not reached 10s')
  send({ ts: 12_000, value: 4 })
  t.same(out, [{ key: 'a', start: 0, end: 10_000, revision: 0, values: { n: 2, total: 3 } }])
  send({ ts: 5_000, value: 100 })
  t.equal(op.stats.late, 1, 'a reading for a closed window is late')
  t.equal(op.stats.accepted, 4)
  t.equal(op.stats.emitted, 1)
})

t.test('out of order within lateness is on time', async t => {
  const { op, out, send } = operator('window: { tumbling: 10s }\nlateness: 5s')
  send({ ts: 14_000, value: 1 })
  send({ ts: 9_500, value: 2 }) // watermark is 9s: the first window is still open
  send({ ts: 15_000, value: 3 })
  t.equal(op.stats.late, 0)
  t.same(out.map(w => w.values), [{ n: 1, total: 2 }])
})

t.test('hopping: a reading can be late for one window and on time for another', async t => {
  const { op, out, send } = operator('window: { hopping: 10s, every: 5s }')
  send({ ts: 7_000, value: 1 }) // windows [0,10) and [5,15)
  send({ ts: 12_000, value: 2 }) // closes nothing yet: watermark 12s passes 10s -> [0,10) closes
  t.same(out.map(w => [w.start, w.values.n]), [[0, 1]])
  send({ ts: 8_000, value: 4 }) // [0,10) closed, [5,15) open
  t.equal(op.stats.late, 1)
  t.equal(op.stats.accepted, 3)
  send({ ts: 30_000, value: 0 })
  t.same(out.map(w => [w.start, w.values.total]), [[0, 1], [5_000, 7], [10_000, 2]])
})

t.test('late: update re-emits with a higher revision within the horizon', async t => {
  const { op, out, send } = operator('window: { tumbling: 10s }\nlate: update\nlate-horizon: 20s')
  send({ ts: 1_000, value: 1 })
  send({ ts: 10_000, value: 2 })
  send({ ts: 2_000, value: 5 })
  t.same(out.map(w => [w.start, w.revision, w.values.total]), [[0, 0, 1], [0, 1, 6]])
  send({ ts: 3_000, value: 5, room: 'b' }) // first reading of key b in a closed window
  t.same(out.at(-1), { key: 'b', start: 0, end: 10_000, revision: 0, values: { n: 1, total: 5 } })
  send({ ts: 31_000, value: 0 }) // watermark 31s: [0,10) is past the 20s horizon
  send({ ts: 4_000, value: 9 })
  t.equal(op.stats.late, 1, 'beyond the horizon a late reading is dropped')
})

t.test('session windows merge, also out of order', async t => {
  const { out, send } = operator('window: { session: 5s }\nlateness: 10s')
  send({ ts: 0, value: 1 })
  send({ ts: 8_000, value: 2 }) // separate session [8s,13s)
  send({ ts: 4_000, value: 3 }) // [4s,9s) bridges both
  send({ ts: 40_000, value: 0 })
  t.same(out, [{ key: 'a', start: 0, end: 13_000, revision: 0, values: { n: 3, total: 6 } }])
})

t.test('session: a reading that extends an open session is not late', async t => {
  const { op, out, send } = operator('window: { session: 10s }')
  send({ ts: 0, value: 1 })
  send({ ts: 9_000, value: 1 }) // session [0, 19s), watermark 9s
  send({ ts: 5_000, value: 1 }) // own window [5s,15s) ends after the watermark anyway
  t.equal(op.stats.late, 0)
  send({ ts: 30_000, value: 1 })
  t.same(out.map(w => [w.start, w.end, w.values.n]), [[0, 19_000, 3]])
  send({ ts: 1_000, value: 1 }) // [1s, 11s) ends before the watermark 30s and overlaps nothing open
  t.equal(op.stats.late, 1)
})

t.test('count windows fire every N readings per key, never late', async t => {
  const { op, out, send } = operator('window: { count: 3 }')
  for (const [ts, room] of [[5, 'a'], [1, 'a'], [100, 'b'], [3, 'a'], [2, 'a']] as const) send({ ts, value: ts, room })
  t.same(out, [{ key: 'a', start: 1, end: 6, revision: 0, values: { n: 3, total: 9 } }])
  t.equal(op.stats.late, 0)
  op.tick(1e12)
  t.equal(out.length, 1, 'an incomplete count window is not emitted at idle')
  t.equal([...op.openWindows()].length, 2)
})

t.test('idle: event time follows the wall clock from the last reading, never beyond it', async t => {
  // A sensor reporting every 3 s on time, idle 1 s: every reading of a 20 s window counts.
  const { op, out, send } = operator('window: { tumbling: 20s }\nidle: 1s')
  for (let ts = 0; ts <= 36_000; ts += 3_000) {
    op.tick(T0 + ts - 1) // just before the reading arrives
    send({ ts, value: 1 }, T0 + ts)
    op.tick(T0 + ts + 1_500) // idle has passed
  }
  t.equal(op.stats.late, 0, 'no on-time reading is late')
  t.same(out.map(w => [w.start, w.values.n]), [[0, 7]], 'the first window closed with all 7 readings')
  t.equal(op.watermark, T0 + 36_000 + 1_500, 'the watermark is the last event time plus the time since it arrived')
  send({ ts: 39_000, value: 1 }, T0 + 39_000)
  op.tick(T0 + 38_000)
  t.equal(op.watermark, T0 + 39_000, 'never back')
  op.tick(T0 + 39_999)
  t.same(out.length, 1, 'the last window is open while the clock is before its end')
  op.tick(T0 + 40_000)
  t.same(out.map(w => [w.start, w.values.n]), [[0, 7], [20_000, 7]], 'the wall clock closes the last window with all 7 readings')
})

t.test('idle: the watermark advances at arrival too, so a reading after a pause is judged against the clock', async t => {
  const { op, out, send } = operator('window: { tumbling: 10s }\nidle: 1s\nlateness: 2s')
  send({ ts: 1_000, value: 1 }, T0 + 1_000)
  // No tick in between: the next reading arrives 30 s later, on time; windows [0,10) and [10,20) are
  // due by the clock (watermark 1 s + 30 s − 2 s), and so is... nothing it belongs to.
  send({ ts: 31_000, value: 1 }, T0 + 31_000)
  t.same(out.map(w => w.start), [0])
  t.equal(op.stats.late, 0)
  // A straggler that arrives after the clock passed its window's end (plus lateness) is late.
  send({ ts: 5_000, value: 1 }, T0 + 31_100)
  t.equal(op.stats.late, 1)
  // Out of order within lateness, after a pause: on time.
  op.tick(T0 + 45_000)
  t.same(out.map(w => w.start), [0, 30_000], 'closed at 40 s + 2 s by the clock')
  send({ ts: 48_500, value: 1 }, T0 + 50_000)
  t.equal(op.stats.late, 1, 'within lateness of the clock it is on time')
})

t.test('idle: sessions and hopping windows follow the same rule', async t => {
  const hop = operator('window: { hopping: 60s, every: 10s }\nidle: 1s')
  for (let ts = 0; ts < 120_000; ts += 10_000) {
    hop.op.tick(T0 + ts - 1)
    hop.send({ ts, value: 1 }, T0 + ts)
    hop.op.tick(T0 + ts + 2_000)
  }
  t.equal(hop.op.stats.late, 0)
  t.same(hop.out.filter(w => w.start >= 0).map(w => [w.start, w.values.n]), [[0, 6], [10_000, 6], [20_000, 6], [30_000, 6], [40_000, 6], [50_000, 6]], 'each full window holds all 6 readings')
  const ses = operator('window: { session: 5s }\nidle: 1s')
  ses.send({ ts: 0, value: 1 }, T0)
  ses.op.tick(T0 + 4_000)
  ses.send({ ts: 4_500, value: 1 }, T0 + 4_500)
  ses.op.tick(T0 + 9_499)
  t.same(ses.out, [], 'the session is open while the clock is within its gap')
  ses.op.tick(T0 + 9_500)
  t.same(ses.out.map(w => [w.start, w.end, w.values.n]), [[0, 9_500, 2]])
  t.equal(ses.op.stats.late, 0)
})

t.test('max-future: a reading from a bad clock is rejected and never moves the watermark', async t => {
  const { op, out, send } = operator('window: { tumbling: 10s }\nmax-future: 1m')
  send({ ts: 1_000, value: 1 }, T0 + 1_000)
  send({ ts: Date.UTC(2199, 11, 31) - T0, value: 1 }, T0 + 2_000)
  send({ ts: 62_001, value: 1 }, T0 + 2_000) // 60.001 s ahead
  t.same(op.stats.rejected, { future_timestamp: 2 })
  t.equal(op.watermark, T0 + 1_000)
  send({ ts: 62_000, value: 1 }, T0 + 2_000) // exactly max-future ahead: accepted
  send({ ts: 3_000, value: 1 }, T0 + 3_000)
  t.equal(op.stats.late, 1, 'the accepted future reading moved the watermark')
  t.same(out.map(w => w.start), [0])
  const defaults = operator('window: { tumbling: 10s }')
  defaults.send({ ts: 300_001, value: 1 }, T0)
  t.same(defaults.op.stats.rejected, { future_timestamp: 1 }, 'the default guard is 5 minutes')
})

t.test('restore lowers a watermark a bad clock left in a snapshot to what the guard allows', async t => {
  const { op } = operator('window: { tumbling: 10s }\nlateness: 2s\nmax-future: 1m')
  op.restore({ watermark: Date.UTC(2199, 11, 31), windows: [] }, T0)
  t.equal(op.watermark, T0 + 60_000 - 2_000)
})

t.test('arrival-time pipelines close windows with the clock', async t => {
  const [spec] = parsePipelines('pipelines:\n  - name: p\n    from: s\n    format: text\n    window: { tumbling: 1s }\n    select: { n: count() }\n')
  const pipeline = compilePipeline(spec)
  const out: number[] = []
  const op = new WindowOperator(pipeline, w => out.push(w.start))
  op.ingest(Buffer.from('1'), 's', {}, 10_100)
  op.ingest(Buffer.from('2'), 's', {}, 10_900)
  op.tick(10_999)
  t.same(out, [])
  op.tick(11_000)
  t.same(out, [10_000])
})

t.test('bad readings are counted by reason and never throw', async t => {
  const { op, send } = operator('window: { tumbling: 10s }\nwhere: value < 100.0')
  op.ingest(Buffer.from('{nope'), 's/a', { room: 'a' }, T0)
  send({ value: 1 }) // no ts
  send({ ts: 'yesterday', value: 1 })
  send({ ts: 1, value: 'hot' })
  send({ ts: 1, value: 500 }) // filtered by where
  send({ ts: '3000-01-01T00:00:00Z', value: 1 })
  op.ingest(Buffer.from('{"ts":1,"value":1e999}'), 's/a', { room: 'a' }, T0)
  t.same(op.stats.rejected, { parse: 1, missing_field: 1, bad_timestamp: 2, expression: 1, non_finite: 1 })
  t.equal(op.stats.filtered, 1)
  t.equal(op.stats.accepted, 0)
})

t.test('a snapshot restored into a new operator continues exactly where the old one stopped', async t => {
  for (const window of ['window: { tumbling: 10s }\nlate: update', 'window: { hopping: 10s, every: 5s }', 'window: { session: 2s }', 'window: { count: 4 }']) {
    const readings = Array.from({ length: 60 }, (_, i) => ({ ts: T0 + i * 700 - (i % 3) * 900, value: i, room: `r${i % 3}` }))
    const run = (split: number | undefined) => {
      const [spec] = parsePipelines(`pipelines:\n  - name: p\n    from: s/+room\n    timestamp: ts\n    key: room\n    lateness: 2s\n    ${window.replace('\n', '\n    ')}\n    select:\n      n: count()\n      total: sum(value)\n`)
      const pipeline = compilePipeline(spec)
      const out: string[] = []
      const sink = (w: WindowState) => out.push(`${w.key} ${w.start - T0} ${w.end - T0} r${w.revision} ${JSON.stringify(windowValues(pipeline.selects, w))}`)
      let op = new WindowOperator(pipeline, sink)
      readings.forEach((r, i) => {
        if (i === split) {
          const snapshot = JSON.parse(JSON.stringify(op.snapshot())) as OperatorSnapshot
          op = new WindowOperator(pipeline, sink)
          const open = snapshot.windows.filter(w => w.kind !== 'closed').reduce((n, w) => n + w.readings, 0)
          t.equal(op.restore(snapshot, T0), open, 'restore reports the readings of the open windows')
        }
        op.ingest(Buffer.from(JSON.stringify(r)), `s/${r.room}`, { room: r.room }, T0)
      })
      op.tick(1e15)
      return out
    }
    const whole = run(undefined)
    t.ok(whole.length > 3, `${window}: windows were emitted`)
    for (const split of [1, 17, 30, 59]) t.same(run(split), whole, `${window}: restored after ${split} readings`)
  }
})

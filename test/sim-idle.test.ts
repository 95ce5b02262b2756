// The oracle's model of time beyond event time: idle (the wall clock moves event time on while a
// pipeline hears nothing), max-future, and the readings it reports as ambiguous instead of guessing.
import t from 'tap'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { pipelineSpec as pipeline } from './helpers/specs.ts'
import { computeTruth, Oracle } from '../simulators/truth.ts'
import type { EdgeTruth, OracleMessage } from '../simulators/truth.ts'

const T0 = Date.UTC(2024, 0, 1)
/** `s` seconds after T0. */
const at = (s: number): number => T0 + s * 1000
const TOPIC = 'sensors/r1/temperature'

/** A reading dated `s` s after T0, arriving `arrival` s after T0 on the wall clock (default: on time). */
function r (s: number, arrival = s, value = 1): OracleMessage {
  return { topic: TOPIC, payload: new TextEncoder().encode(JSON.stringify({ ts: at(s), value, device: 'd1' })), arrival: at(arrival) }
}

function run (p: PipelineSpec, messages: OracleMessage[], options: { paced?: boolean, tolerance?: number } = {}): { edge: EdgeTruth, warnings: string[], ambiguities: number } {
  const oracle = new Oracle([p], 1, options)
  for (const m of messages) oracle.push(0, m)
  const edge = oracle.finish()[p.name].edges['0']
  return { edge, warnings: oracle.warnings, ambiguities: oracle.ambiguities }
}

/** Results as [start s, end s, revision, n, sum]. */
function compact (e: EdgeTruth): unknown[] {
  return e.results.map(w => [(Date.parse(w.start) - T0) / 1000, (Date.parse(w.end) - T0) / 1000, w.revision, ...Object.values(w.values)])
}

t.test('a sensor every 3 s with idle 1 s keeps all 7 readings of a 20 s window', async t => {
  const p = pipeline({ window: { kind: 'tumbling', size: 20_000 }, idle: 1000 })
  // Half a second into each 3 s, so that no reading is within the tolerance (1 s) of a window's end:
  // one arriving 1 s after schedule would be late with lateness 0 (as the next test shows).
  const readings = [0.5, 3.5, 6.5, 9.5, 12.5, 15.5, 18.5, 21.5, 24.5].map(s => r(s))
  const { edge, warnings } = run(p, readings)
  t.same(compact(edge), [[0, 20, 0, 7, 7], [20, 40, 0, 2, 2]])
  t.equal(run(p, [1, 4, 7, 10, 13, 16, 19].map(s => r(s))).ambiguities, 1, 'the reading at 19 is late if it comes 1 s after schedule')
  t.same([edge.accepted, edge.late], [9, 0])
  t.same(warnings, [], 'every gap is 3 s ± 1 s: nothing in doubt')
})

t.test('a pause longer than idle closes windows by the wall clock; readings resumed on time are on time', async t => {
  const p = pipeline({ idle: 5000 })
  const before = [10, 11, 12, 13, 14].map(s => r(s))
  // silent from 14 to 45 on the wall clock, then on time again
  const after = [45, 46, 47].map(s => r(s))
  const { edge, warnings } = run(p, [...before, ...after])
  t.same(compact(edge), [[10, 20, 0, 5, 5], [40, 50, 0, 3, 3]])
  t.same([edge.accepted, edge.late], [8, 0])
  t.same(warnings, [])
  // What the idle watermark did: a straggler of [10, 20) arriving after the pause is late, and
  // without arrivals (no wall clock) it would not be.
  const straggler = r(19, 45)
  t.same(run(p, [...before, straggler]).edge.late, 1, 'late: the wall clock closed its window during the pause')
  const timeless = computeTruth([p], [[...before, straggler].map(({ topic, payload }) => ({ topic, payload }))])[p.name].edges['0']
  t.same(timeless.late, 0, 'without arrivals, no idle')
})

t.test('a reading arriving after the idle-advanced watermark passed its window end is late', async t => {
  const p = pipeline({ idle: 5000 })
  // ts 9 arrives 16 s late: at its arrival the watermark is 8 + (25 − 8) = 25 > 10
  const { edge, warnings } = run(p, [...[1, 2, 3, 4, 5, 6, 7, 8].map(s => r(s)), r(9, 25), r(26)])
  t.same([edge.accepted, edge.late], [9, 1])
  t.same(compact(edge), [[0, 10, 0, 8, 8], [20, 30, 0, 1, 1]])
  t.same(warnings, [])
  // With lateness the idle watermark is held back as much
  const lenient = run(pipeline({ idle: 5000, lateness: 20_000 }), [...[1, 2, 3, 4, 5, 6, 7, 8].map(s => r(s)), r(9, 25), r(26)])
  t.same([lenient.edge.accepted, lenient.edge.late], [10, 0])
})

t.test('readings whose fate depends on arrivals within the tolerance are reported, not guessed', async t => {
  const p = pipeline({ idle: 5000 })
  // 4.5 s to 6.5 s after the last reading: idle may or may not have passed; if it has, the watermark
  // (5 + 5.5 = 10.5) is past the end of [0, 10), which the reading at 9.8 is for.
  const near = run(p, [r(5), r(9.8, 10.5)])
  t.equal(near.ambiguities, 1)
  t.equal(near.edge.ambiguous, 1)
  t.match(near.warnings[0], /^pipeline p on 0: the reading at 2024-01-01T00:00:09\.800Z, due to arrive at 2024-01-01T00:00:10\.500Z, is ambiguous within ±1000 ms of its arrival: window \[2024-01-01T00:00:00\.000Z, 2024-01-01T00:00:10\.000Z\) of key \*: added or late/)
  t.equal(near.edge.late, 1, 'the truth still takes the scheduled arrival')
  // Idle certainly passed (7 s ± 1 s), but whether the watermark (5 + 6..8) reached 10 is certain too
  t.same(run(p, [r(5), r(9.8, 12)]).warnings, [])
  // Past idle for sure (6 s ± 1 s), but the watermark, 4 + 5..7, around the end of the window
  const past = run(p, [r(4), r(9.7, 10)])
  t.equal(past.ambiguities, 1)
  // A smaller tolerance settles it
  t.same(run(p, [r(5), r(9.8, 10.5)], { tolerance: 100 }).warnings, [])
  // Sessions: whether an open session was closed by the wall clock before the reading joined it
  const s = pipeline({ window: { kind: 'session', gap: 3000 }, idle: 2000 })
  const session = run(s, [r(1), r(3.5, 4.2)])
  t.equal(session.ambiguities, 1)
  t.match(session.warnings[0], /session \[.*\) of key \*/)
  // Published as fast as possible, idle never passes within the stream
  t.same(run(p, [r(5, 0), r(9.8, 0)], { paced: false }).warnings, [])
})

t.test('max-future: rejected, never moves the watermark nor the last arrival', async t => {
  const p = pipeline({ idle: 5000, maxFuture: 300_000 })
  const ahead = r(1 + 3600, 1) // an hour ahead of its arrival
  const { edge, warnings } = run(p, [r(1), ahead, r(2), r(3)])
  t.same(edge.rejected, { future_timestamp: 1 })
  t.same([edge.accepted, edge.late], [3, 0], 'the watermark stayed where the readings on time put it')
  t.same(compact(edge), [[0, 10, 0, 3, 3]])
  t.same(warnings, [])
  // Not the last arrival either: the gap from 1 to 14 is idle, so [0, 10) is closed for the reading at 3
  const gap = run(p, [r(1), r(1 + 3600, 10), r(3, 14)])
  t.same([gap.edge.accepted, gap.edge.late, gap.edge.rejected], [1, 1, { future_timestamp: 1 }])
  // Just beyond max-future, within the tolerance: reported
  const edgy = run(p, [r(1), r(2 + 300.5, 2)])
  t.same(edgy.edge.rejected, { future_timestamp: 1 })
  t.equal(edgy.ambiguities, 1)
  t.match(edgy.warnings[0], /max-future: 300500 ms ahead of its arrival, against max-future 300000 ms/)
  // Unpaced streams still date readings by their arrival
  t.same(run(p, [r(1, 0), ahead], { paced: false }).edge.rejected, { future_timestamp: 1 })
})

t.test('late: update: whether a reading revises a window closed by the wall clock is in doubt near the end', async t => {
  const p = pipeline({ idle: 5000, late: 'update', lateHorizon: 60_000 })
  const sure = run(p, [r(1), r(8, 20), r(21)])
  t.same(compact(sure.edge), [[0, 10, 1, 2, 2], [20, 30, 0, 1, 1]])
  t.same(sure.warnings, [])
  const unsure = run(p, [r(4), r(9.7, 10)])
  t.equal(unsure.ambiguities, 1)
  t.match(unsure.warnings[0], /added or updates/)
})

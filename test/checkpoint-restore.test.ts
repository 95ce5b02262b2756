/**
 * Restoring a checkpoint, in-process: reconciling it with the windows emitted after it (every window
 * kind, a crash at any point after the checkpoint), and the restart's roll-forward of windows that
 * reached the outbox but not the result store.
 */
import { Decoder, Encoder } from 'cbor-x'
import t from 'tap'
import { compilePipeline } from '../core/pipeline/compile.ts'
import { parsePipelines } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { WindowOperator } from '../core/windows/operator.ts'
import type { OperatorSnapshot } from '../core/windows/operator.ts'
import { windowValues } from '../core/windows/window.ts'
import type { WindowState } from '../core/windows/window.ts'
import { Checkpointer, encodeSnapshot, pipelineIdentity } from '../edge-agent/checkpoint.ts'
import { CheckpointDb } from '../edge-agent/checkpoint-db.ts'
import { PipelineRunner } from '../edge-agent/pipelines.ts'
import { reconcile } from '../edge-agent/reconcile.ts'
import { Uplink } from '../edge-agent/uplink.ts'
import { silentLogger } from '../server/shell/log.ts'
import { ResultStore } from '../server/shell/result-store.ts'
import { tmpDir } from './helpers/process.ts'
import { pipelineSpec } from './helpers/specs.ts'

const T0 = Date.UTC(2026, 0, 1)
const cbor = { encoder: new Encoder({ useRecords: false, mapsAsObjects: true }), decoder: new Decoder({ useRecords: false, mapsAsObjects: true }) }

interface Emission { id: string, revision: number, n: number, values: string, at: number }

function spec (window: string): PipelineSpec {
  const [s] = parsePipelines(`pipelines:\n  - name: p\n    from: s/+room\n    timestamp: ts\n    key: room\n    lateness: 2s\n    ${window.replaceAll('\n', '\n    ')}\n    select:\n      n: count()\n      total: sum(value)\n`)
  return s
}

/** Readings out of order, some of them 25 s late, over three keys, in bursts 6 s apart (sessions end). */
const READINGS = Array.from({ length: 90 }, (_, i) => ({ ts: T0 + i * 700 + Math.floor(i / 15) * 6_000 - (i % 3) * 900 - (i % 11 === 5 ? 25_000 : 0), value: i, room: `r${i % 3}` }))

/**
 * Runs the readings through an operator, checkpoints it before reading `checkpoint`, crashes it
 * before reading `crash` (every window emitted by then committed), restores the checkpoint into a new
 * operator reconciled with the emissions after it, and runs the rest of the readings.
 */
function crashAndRestore (s: PipelineSpec, checkpoint: number, crash: number) {
  const pipeline = compilePipeline(s)
  const emissions: Emission[] = []
  let at = 0
  const sink = (w: WindowState) => emissions.push({ id: `${w.key} ${w.start} ${w.end}`, revision: w.revision, n: w.readings, values: JSON.stringify(windowValues(pipeline.selects, w)), at })
  const feed = (op: WindowOperator, from: number, to: number) => {
    for (at = from; at < to; at++) {
      const r = READINGS[at]
      op.ingest(Buffer.from(JSON.stringify(r)), `s/${r.room}`, { room: r.room }, T0)
    }
  }
  const before = new WindowOperator(pipeline, sink)
  feed(before, 0, checkpoint)
  const snapshot = cbor.decoder.decode(cbor.encoder.encode(before.snapshot())) as OperatorSnapshot
  feed(before, checkpoint, crash)
  const crashed = emissions.length
  const since = emissions.filter(e => e.at >= checkpoint).map(e => {
    const [key, start, end] = e.id.split(' ')
    return { key, start: Number(start), end: Number(end), revision: e.revision }
  })
  const after = new WindowOperator(pipeline, sink)
  const r = reconcile(pipeline, snapshot, since)
  after.restore(r.snapshot, T0, r.skip)
  feed(after, crash, READINGS.length)
  after.tick(1e15)
  const open = [...after.openWindows()].reduce((n, w) => n + w.readings, 0)
  return { emissions, crashed, accepted: before.stats.accepted + after.stats.accepted, open, emittedSince: r.emitted }
}

t.test('a crash anywhere after a checkpoint: no window emitted twice with other contents, no reading counted twice', async t => {
  const kinds = ['window: { tumbling: 10s }', 'window: { tumbling: 10s }\nlate: update', 'window: { hopping: 10s, every: 5s }\nlate: update', 'window: { session: 3s }', 'window: { count: 4 }']
  for (const kind of kinds) {
    let exercised = 0
    for (const checkpoint of [1, 13, 30, 47]) {
      for (const gap of [0, 1, 4, 9, 20, 35]) {
        const crash = Math.min(READINGS.length, checkpoint + gap)
        const { emissions, crashed, accepted, open, emittedSince } = crashAndRestore(spec(kind), checkpoint, crash)
        exercised += emittedSince
        const first = new Map<string, string>()
        const conflicts: string[] = []
        for (const e of emissions) {
          const id = `${e.id} r${e.revision}`
          if (first.has(id) && first.get(id) !== e.values) conflicts.push(id)
          first.set(id, e.values)
        }
        if (conflicts.length > 0) t.fail(`${kind}, checkpoint ${checkpoint}, crash ${crash}: ${conflicts.join(', ')} emitted twice with other contents`)
        // The last revision of each window, plus what is still open, holds each reading at most once.
        const last = new Map<string, Emission>()
        for (const e of emissions) if ((last.get(e.id)?.revision ?? -1) <= e.revision) last.set(e.id, e)
        const held = [...last.values()].reduce((n, e) => n + e.n, 0) + open
        if (!kind.includes('hopping') && held > accepted) t.fail(`${kind}, checkpoint ${checkpoint}, crash ${crash}: ${held} readings held, ${accepted} accepted`)
        if (gap === 0) t.equal(emissions.length - crashed, crashAndRestore(spec(kind), 0, 0).emissions.length - emissions.filter(e => e.at < checkpoint).length, `${kind}: a crash right after the checkpoint changes nothing`)
      }
    }
    t.ok(exercised > 0, `${kind}: windows emitted after the checkpoint were reconciled (${exercised})`)
  }
})

t.test('reconcile: late updates take the next revision, and the watermark passes the emitted windows', async t => {
  const s = spec('window: { tumbling: 10s }\nlate: update')
  const snapshot: OperatorSnapshot = {
    watermark: T0 + 8_000,
    windows: [
      { kind: 'open', key: 'a', start: T0, end: T0 + 10_000, revision: 0, readings: 5, states: [5, 10] },
      { kind: 'open', key: 'b', start: T0 + 10_000, end: T0 + 20_000, revision: 0, readings: 1, states: [1, 1] },
      { kind: 'closed', key: 'c', start: T0 - 10_000, end: T0, revision: 1, readings: 2, states: [2, 3] }
    ]
  }
  const r = reconcile(compilePipeline(s), snapshot, [
    { key: 'a', start: T0, end: T0 + 10_000, revision: 0 },
    { key: 'a', start: T0, end: T0 + 10_000, revision: 2 },
    { key: 'c', start: T0 - 10_000, end: T0, revision: 3 }
  ])
  t.equal(r.snapshot.watermark, T0 + 10_000)
  t.same(r.snapshot.windows.map(w => [w.key, w.kind, w.revision]), [['a', 'closed', 2], ['b', 'open', 0], ['c', 'closed', 3]])
  t.equal(r.emitted, 1)
  const drop = reconcile(compilePipeline(spec('window: { tumbling: 10s }')), { ...snapshot, windows: snapshot.windows.slice(0, 2) }, [{ key: 'a', start: T0, end: T0 + 10_000, revision: 0 }])
  t.same(drop.snapshot.windows.map(w => w.kind), ['open', 'open'], 'late: drop keeps nothing closed')
  t.same(drop.snapshot.windows.map(w => drop.skip(w)), [true, false], 'and skips the emitted window')
})

t.test('a crash between the outbox append and the store commit: the window is rolled forward, not restored', async t => {
  const dir = await tmpDir('fogmesh-rollforward-')
  t.teardown(() => dir.cleanup())
  const specs = [pipelineSpec({ key: ['room'] })]
  const agent = () => {
    const store = new ResultStore({ dataDir: dir.path, retention: 60_000, maxResultsPerPipeline: 100, changeLog: true })
    const parts: { uplink?: Uplink } = {}
    const runner = new PipelineRunner(specs, (op, w) => {
      store.put({ pipeline: 'p', key: w.key, start: w.start, end: w.end, final: true, revision: w.revision, sources: 1, values: windowValues(op.pipeline.selects, w) })
      parts.uplink!.onWindow(op, w)
    }, 65_536)
    const uplink = parts.uplink = new Uplink({ edge: 'e1', dataDir: dir.path, fog: ['http://127.0.0.1:9'], failoverAfter: 30_000, outboxMax: 1 << 20, requestTimeout: 1_000, retryMax: 1_000, log: silentLogger }, runner.operators.values())
    const checkpoints = new Checkpointer({ dataDir: dir.path, log: silentLogger }, { operators: runner.operators, store, uplink })
    const read = (room: string, ts: number, value = 1) => runner.onMessage(`sensors/${room}/temperature`, Buffer.from(JSON.stringify({ value, ts })), T0)
    return { store, uplink, runner, checkpoints, read }
  }

  const first = agent()
  first.checkpoints.restore(0)
  first.read('r1', T0 + 1_000, 2)
  first.read('r2', T0 + 2_000, 3)
  first.uplink.flush()
  first.store.flush()
  t.ok(first.checkpoints.take(), 'a checkpoint with two windows open')
  first.read('r1', T0 + 3_000, 4)
  first.read('r1', T0 + 25_000) // closes both windows
  first.checkpoints.saveAccepted()
  first.uplink.flush() // the outbox has them ...
  // ... and the process dies before the store commits them (its pending results are never written).
  t.equal(first.uplink.outbox.items, 2)
  await first.uplink.stop()
  first.checkpoints.close()

  const second = agent()
  const report = second.checkpoints.restore(Date.now())
  t.equal(report.rolledForward, 2, 'both windows rolled forward from the outbox')
  t.equal(report.emittedSince, 2, 'so they are not restored')
  t.same(report.restored, new Map([['p', 0]]), 'nothing open to restore')
  t.same(report.lost, new Map([['p', 2]]), 'the readings after the checkpoint, as of the last saved count (an upper bound: one is in a window rolled forward)')
  const stored = second.store.query('p', { from: -Infinity, to: Infinity, limit: 10 })
  t.same(stored.map(r => [r.key, r.values]), [['r1', { n: 2, sum: 6 }], ['r2', { n: 1, sum: 3 }]], 'the store has them as the fog does')
  t.equal(second.runner.operators.get('p')!.watermark, T0 + 10_000, 'the watermark is past them')
  second.read('r2', T0 + 4_000, 100) // late now: must not open the emitted window again
  second.read('r2', T0 + 40_000)
  second.uplink.flush()
  second.store.flush()
  t.same(second.store.query('p', { from: -Infinity, to: T0 + 10_000, limit: 10 }).map(r => [r.key, r.revision, r.values]), [['r1', 0, { n: 2, sum: 6 }], ['r2', 0, { n: 1, sum: 3 }]], 'not emitted again')
  await second.uplink.stop()
  second.checkpoints.close()
  second.store.close()
})

t.test('a pipeline that changed is not restored into; its checkpointed readings count as lost', async t => {
  const dir = await tmpDir('fogmesh-changed-')
  t.teardown(() => dir.cleanup())
  const start = (s: PipelineSpec) => {
    const store = new ResultStore({ dataDir: dir.path, retention: 60_000, maxResultsPerPipeline: 100, changeLog: true })
    const runner = new PipelineRunner([s], () => {}, 65_536)
    const checkpoints = new Checkpointer({ dataDir: dir.path, log: silentLogger }, { operators: runner.operators, store })
    return { store, runner, checkpoints, report: checkpoints.restore(T0) }
  }
  const first = start(pipelineSpec())
  for (let i = 0; i < 3; i++) first.runner.onMessage('sensors/r1/temperature', Buffer.from(JSON.stringify({ value: 1, ts: T0 + i })), T0)
  t.ok(first.checkpoints.take())
  first.checkpoints.close()
  first.store.close()

  const same = start(pipelineSpec())
  t.same(same.report.restored, new Map([['p', 3]]), 'the same pipeline is restored')
  t.same(same.report.lost, new Map(), 'nothing lost after a checkpoint')
  same.checkpoints.close()
  same.store.close()

  const changed = start(pipelineSpec({ window: { kind: 'tumbling', size: 5_000 } }))
  t.same(changed.report.restored, new Map(), 'a changed pipeline is not')
  t.same(changed.report.lost, new Map([['p', 3]]))
  t.equal(changed.runner.operators.get('p')!.openCount, 0)
  changed.checkpoints.close()
  changed.store.close()

  // A snapshot that does not decode (one state of two is bad): the pipeline starts empty, not half restored.
  const db = new CheckpointDb(dir.path)
  const blob = encodeSnapshot({ watermark: T0, windows: [
    { kind: 'open', key: 'a', start: T0, end: T0 + 10_000, revision: 0, readings: 1, states: [1, [1, 0]] },
    { kind: 'open', key: 'b', start: T0, end: T0 + 10_000, revision: 0, readings: 1, states: [1, 'not a sum'] }
  ] })
  db.write({ takenAt: T0, resultMark: 0, outboxMark: null }, [{ name: 'p', identity: pipelineIdentity(pipelineSpec()), snapshot: blob, windows: 2, readings: 2, checkpointed: 0, accepted: 0 }])
  db.close()
  const corrupt = start(pipelineSpec())
  t.equal(corrupt.runner.operators.get('p')!.openCount, 0, 'an unreadable snapshot is not restored')
  t.same(corrupt.report.lost, new Map([['p', 2]]), 'and its readings count as lost')
  corrupt.checkpoints.close()
  corrupt.store.close()
})

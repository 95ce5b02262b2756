/**
 * The edge's uplink: first how it makes batches (in-process), then as users run it: a real edge process
 * fed by the simulator, pushing partials to fake fog and cloud receivers (test/helpers/receiver.ts)
 * that decode every batch. What arrives is checked against the simulator's ground truth for that edge.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import { mergeContributions } from '../core/upstream/merge.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { runSimulator } from '../simulators/sim.ts'
import type { SimInput } from '../simulators/options.ts'
import { PipelineRunner } from '../edge-agent/pipelines.ts'
import { Uplink } from '../edge-agent/uplink.ts'
import type { UplinkOptions } from '../edge-agent/uplink.ts'
import { countSelect, pipelineSpec } from './helpers/specs.ts'
import type { TruthFile } from '../simulators/truth.ts'
import { compareResults, fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import { fetchJson, freePort, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'
import { startReceiver } from './helpers/receiver.ts'
import type { FakeReceiver, ReceiverOptions } from './helpers/receiver.ts'
import { beforeTail, publishTail, tailOf } from './helpers/tail.ts'
import { silentLogger } from '../server/shell/log.ts'

const ALL_WINDOWS = new URL('fixtures/all-windows.yaml', import.meta.url).pathname
const START = Date.UTC(2026, 0, 1)
/** Closes every window of a run at once (see helpers/tail.ts). */
const TAIL = tailOf(START)
/** Pipelines of all-windows.yaml that go upstream (count windows stay local), and those with late: drop. */
const UPSTREAM = ['room-temp', 'device-hopping', 'sessions']
const LATE_DROP = ['room-temp', 'sessions']

const RUN: SimInput = {
  start: START,
  devices: 12,
  rooms: 3,
  rate: 5,
  duration: 20_000,
  seed: 11,
  jitter: 1_500,
  lateShare: 0.02,
  lateBy: 30_000,
  duplicateShare: 0.01,
  malformedShare: 0.01
}

/** A data dir for the test; edges started in it are stopped (or killed) at teardown. */
async function edgeRig (t: Test) {
  const dir = await tmpDir('fogmesh-uplink-')
  const running: RunningProcess[] = []
  t.teardown(async () => {
    for (const p of running) if (p.proc.exitCode === null && p.proc.signalCode === null) await p.stop().catch(() => p.kill('SIGKILL'))
    await dir.cleanup()
  })
  return {
    dir: dir.path,
    start: async (pipelines: string, extra: string[]) => {
      const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', pipelines, '--mqtt-port', '0', '--http-port', '0',
        '--data-dir', join(dir.path, 'data'), ...extra])
      running.push(edge)
      return edge
    }
  }
}

async function receiver (t: Test, opts?: ReceiverOptions): Promise<FakeReceiver> {
  const r = await startReceiver(opts)
  t.teardown(() => r.close())
  return r
}

/** Differences between what a receiver has from the edge and the truth, over `names`. */
function problems (r: FakeReceiver, specs: PipelineSpec[], truth: TruthFile, names: string[]): string[] {
  return specs.filter(s => names.includes(s.name)).flatMap(spec => {
    const want = Object.values(truth.pipelines[spec.name].edges)[0].results
    return compareResults(spec, beforeTail(r.results(spec.name), TAIL), want, { sources: 1 })
  })
}

async function waitForTruth (r: FakeReceiver, specs: PipelineSpec[], truth: TruthFile, names: string[], what: string): Promise<void> {
  let last: string[] = []
  await waitFor(() => (last = problems(r, specs, truth, names)).length === 0, { timeoutMs: 15_000, message: what }).catch(err => {
    throw new Error(`${(err as Error).message}: ${last.slice(0, 3).join('; ')}`)
  })
}

/** Waits until the edge has closed every window the truth expects (its local results say so). */
async function waitForWindows (edge: RunningProcess, truth: TruthFile, names: string[]): Promise<void> {
  for (const name of names) {
    const want = Object.values(truth.pipelines[name].edges)[0].results.length
    await waitFor(async () => beforeTail(await fetchResults(edge.http, name), TAIL).filter(r => r.final).length >= want, { timeoutMs: 15_000, message: `${name}: ${want} windows` })
  }
}

async function metric (edge: RunningProcess, name: string, labels = ''): Promise<number> {
  return (await fetchMetric(edge.http, name)).get(labels) ?? 0
}

async function emittedUpstream (edge: RunningProcess): Promise<number> {
  const emitted = await fetchMetric(edge.http, 'fogmesh_windows_emitted_total')
  return UPSTREAM.reduce((n, p) => n + (emitted.get(`{pipeline="${p}"}`) ?? 0), 0)
}

/** An uplink whose shipper is never started: batches are built by hand. */
function offlineUplink (specs: PipelineSpec[], over: Partial<UplinkOptions> = {}) {
  const windows: { to?: Uplink } = {}
  const runner = new PipelineRunner(specs, (op, w) => windows.to!.onWindow(op, w), 65_536)
  const uplink = windows.to = new Uplink({ edge: 'e1', fog: ['http://127.0.0.1:9'], failoverAfter: 30_000, outboxMax: 1 << 20, requestTimeout: 1_000, retryMax: 1_000, log: silentLogger, ...over }, runner.operators.values())
  const read = (room: string, ts: number, arrival = Date.now()) => runner.onMessage(`sensors/${room}/temperature`, Buffer.from(JSON.stringify({ value: 1, ts })), arrival)
  return { uplink, runner, read }
}

t.test('a batch never carries a watermark past windows still waiting in the outbox', async t => {
  const { uplink, read } = offlineUplink([pipelineSpec({ key: ['room'] })])
  t.teardown(() => uplink.stop())
  for (const room of ['r1', 'r2', 'r3']) read(room, START + 1_000)
  uplink.flush()
  // One reading moves the watermark to 25 s: the three windows [0, 10 s) close in one go.
  read('r1', START + 25_000)
  uplink.flush()
  const items = uplink.outbox.pending('fog', 10)
  t.equal(items.length, 3)
  const part = uplink.build(items.slice(0, 2), { target: 'fog', drained: false })
  t.equal(part.used, 2)
  t.same(part.batch.windows.map(w => w.key), ['r1', 'r2'])
  t.ok(part.batch.watermarks.every(w => w.watermark < START + 10_000), 'a batch cut inside the burst stays before the windows it closed')
  const all = uplink.build(items, { target: 'fog', drained: true })
  t.same(all.batch.watermarks, [{ pipeline: 'p', edge: 'e1', watermark: START + 25_000 }], 'with nothing left, the current watermark')
  t.same(all.batch.pipelines, [{ name: 'p', version: 1, window: 'tumbling', selects: [{ name: 'n', fn: 'count', params: [] }, { name: 'sum', fn: 'sum', params: [] }] }])
  t.match(all.batch.windows[0].contributions, [{ edge: 'e1', revision: 0 }])
  t.same(mergeContributions(all.batch.pipelines[0], all.batch.windows[0].contributions), { n: 1, sum: 1 }, 'the states are the window\'s')
  const idle = uplink.build([], { target: 'fog', drained: true })
  t.same(idle.batch.windows, [])
  t.same(idle.batch.watermarks.map(w => w.watermark), [START + 25_000], 'a watermark-only batch')
})

t.test('a pipeline is called idle only with nothing open and nothing waiting for the target', async t => {
  const { uplink, runner, read } = offlineUplink([pipelineSpec({ key: ['room'], idle: 1 })])
  t.teardown(() => uplink.stop())
  const idle = (b: ReturnType<Uplink['build']>) => b.batch.watermarks.some(w => w.idle === true)
  // The readings arrived 10 s ago: the flushes below judge idleness by the real clock, and a run
  // fast enough to stay inside one millisecond must not find the pipeline still busy.
  const arrival = Date.now() - 10_000
  read('r1', START + 1_000, arrival)
  read('r1', START + 15_000, arrival)
  uplink.flush()
  t.notOk(idle(uplink.build([], { target: 'fog', drained: true })), 'a window is open')
  // 5 s of wall clock without a reading: event time has moved on to 20 s, the end of the last window.
  runner.tick(arrival + 5_000)
  uplink.flush()
  const items = uplink.outbox.pending('fog', 10)
  t.equal(items.length, 2, 'the wall clock closed the last window')
  t.notOk(idle(uplink.build(items.slice(0, 1), { target: 'fog', drained: false })), 'a window waits in the outbox')
  const all = uplink.build(items, { target: 'fog', drained: true })
  t.same(all.batch.watermarks, [{ pipeline: 'p', edge: 'e1', watermark: START + 20_000, idle: true }], 'the batch holds the last windows: idle')
  read('r2', START + 21_000)
  uplink.flush()
  t.notOk(idle(uplink.build([], { target: 'fog', drained: true })), 'a reading makes it active again')
})

t.test('windows of count pipelines and of pipelines without emit: upstream stay local', async t => {
  const { uplink, read } = offlineUplink([
    pipelineSpec({ name: 'counted', window: { kind: 'count', count: 1 } }),
    pipelineSpec({ name: 'local', emit: [] })
  ])
  t.teardown(() => uplink.stop())
  read('r1', START)
  read('r1', START + 20_000)
  uplink.flush()
  t.equal(uplink.outbox.items, 0)
})

t.test('items made before the pipeline changed go out with the definition they were made with', async t => {
  const dir = await tmpDir('fogmesh-uplink-defs-')
  t.teardown(() => dir.cleanup())
  const before = offlineUplink([pipelineSpec({ select: [countSelect()] })], { dataDir: dir.path })
  before.read('r1', START)
  before.read('r1', START + 20_000)
  await before.uplink.stop()
  const after = offlineUplink([pipelineSpec()], { dataDir: dir.path })
  t.teardown(() => after.uplink.stop())
  after.read('r1', START + 30_000)
  after.read('r1', START + 50_000)
  after.uplink.flush()
  const items = after.uplink.outbox.pending('fog', 10)
  t.equal(items.length, 2)
  const first = after.uplink.build(items, { target: 'fog', drained: true })
  t.equal(first.used, 1, 'a batch defines a pipeline once: the new definition waits for the next batch')
  t.same(first.batch.pipelines[0].selects.map(s => s.fn), ['count'])
  t.same(first.batch.windows[0].contributions[0].states, [1])
  after.uplink.outbox.markDelivered('fog', [items[0].id])
  const second = after.uplink.build(after.uplink.outbox.pending('fog', 10), { target: 'fog', drained: true })
  t.same(second.batch.pipelines[0].selects.map(s => s.fn), ['count', 'sum'])
})

t.test('closed windows reach the fog as the edge computed them; resends and 413 are harmless', async t => {
  const specs = await loadPipelinesFile(ALL_WINDOWS)
  let lost = 2
  const fog = await receiver(t, {
    answer: batch => {
      // Small batches, so that batches end in the middle of the windows one watermark step closed.
      if (batch.windows.length > 7) return 413
      // The first batches are committed but their acknowledgement is lost: the edge sends them again.
      if (batch.windows.length > 0 && lost > 0) {
        lost--
        return 'lose_ack'
      }
      return 'ok'
    }
  })
  const rig = await edgeRig(t)
  const edge = await rig.start(ALL_WINDOWS, ['--fog', fog.url])
  t.notMatch(edge.stderr.join('\n'), /no uplink/, 'no more "no uplink yet" notice')
  const sim = await runSimulator({ ...RUN, mqtt: [edge.mqtt!], pipelines: specs })
  await publishTail(edge.mqtt!, TAIL)
  const truth = sim.truth!

  await waitForTruth(fog, specs, truth, UPSTREAM, 'the fog has every window')
  t.same(problems(fog, specs, truth, UPSTREAM), [], 'the fog has every window of the edge, equal to the ground truth')
  t.notOk(fog.defs.has('batches'), 'count windows stay local')
  t.ok(fog.arrived > fog.kept.size, `contributions resent (${fog.arrived} arrived, ${fog.kept.size} kept) change nothing`)
  t.same(fog.early.filter(id => LATE_DROP.some(p => id.startsWith(p + ' '))), [], 'no window arrived after the watermark had passed it')
  const lastEnd = (name: string) => Math.max(...Object.values(truth.pipelines[name].edges)[0].results.map(r => Date.parse(r.end)))
  await waitFor(() => LATE_DROP.every(p => (fog.watermarks.get(`${p} e1`) ?? -Infinity) >= lastEnd(p)), { timeoutMs: 5_000, message: 'watermarks past the last windows' })
  t.pass('the watermarks reach the last windows, so a fog can finalize everything')

  t.ok(await metric(edge, 'fogmesh_batches_failed_total', '{target="fog",reason="too_large"}') > 0, '413s counted')
  t.ok(await metric(edge, 'fogmesh_batches_failed_total', '{target="fog",reason="server_error"}') >= 2, 'lost acknowledgements counted')
  t.ok(await metric(edge, 'fogmesh_batches_sent_total', '{target="fog"}') > 0)
  await waitFor(async () => (await metric(edge, 'fogmesh_outbox_items')) === 0, { timeoutMs: 5_000, message: 'an empty outbox' })
  t.equal(await metric(edge, 'fogmesh_outbox_bytes'), 0)
  t.equal(await metric(edge, 'fogmesh_uplink_target', '{target="fog"}'), 1)
  const mesh = await fetchJson(`${edge.http}/v1/mesh`)
  t.match(mesh.body.uplink, { target: 'fog', url: fog.url, failedOver: false, fog: [fog.url], cloud: null })
  t.equal(await edge.stop(), 0, 'stops cleanly')
})

t.test('fog down: the outbox keeps the windows across a SIGKILL and delivers them when the fog is back', async t => {
  const specs = await loadPipelinesFile(ALL_WINDOWS)
  const down = await startReceiver({ answer: () => 503 })
  const port = down.port
  const rig = await edgeRig(t)
  const args = ['--fog', down.url, '--uplink-retry-max', '500ms']
  const first = await rig.start(ALL_WINDOWS, args)
  const sim = await runSimulator({ ...RUN, mqtt: [first.mqtt!], pipelines: specs })
  await publishTail(first.mqtt!, TAIL)
  const truth = sim.truth!
  await waitForWindows(first, truth, UPSTREAM)
  const emitted = await emittedUpstream(first)
  await waitFor(async () => (await metric(first, 'fogmesh_outbox_items')) === emitted, { timeoutMs: 5_000, message: `${emitted} items in the outbox` })
  t.ok(await metric(first, 'fogmesh_batches_failed_total', '{target="fog",reason="unavailable"}') > 0, '503s counted')
  t.equal(down.kept.size, 0, 'nothing committed while the fog refuses')
  const seqBefore = Math.max(...down.requests.map(q => q.batch.seq))
  first.kill('SIGKILL')
  await first.exited
  await down.close()

  // Restarted while the fog is unreachable: the outbox is all there.
  const second = await rig.start(ALL_WINDOWS, args)
  t.equal(await metric(second, 'fogmesh_outbox_items'), emitted, 'every window survived SIGKILL')
  await waitFor(async () => (await metric(second, 'fogmesh_batches_failed_total', '{target="fog",reason="unreachable"}')) > 0, { timeoutMs: 5_000, message: 'a refused connection' })
  const fog = await receiver(t, { port })
  await waitForTruth(fog, specs, truth, UPSTREAM, 'the fog has every window after the restart')
  t.same(problems(fog, specs, truth, UPSTREAM), [], 'delivered after the restart, equal to the ground truth')
  await waitFor(async () => (await metric(second, 'fogmesh_outbox_items')) === 0, { timeoutMs: 5_000, message: 'an empty outbox' })
  t.ok(fog.requests.every(q => q.batch.seq > seqBefore), 'seq keeps increasing across the restart')
})

t.test('failover: a fog that hangs for longer than failover-after hands over to the cloud; back, it gets everything', async t => {
  const specs = await loadPipelinesFile(ALL_WINDOWS)
  const fog = await receiver(t, { answer: () => 'hang' })
  const cloud = await receiver(t)
  const rig = await edgeRig(t)
  const edge = await rig.start(ALL_WINDOWS, ['--fog', fog.url, '--cloud', cloud.url, '--failover-after', '1s', '--uplink-timeout', '300ms', '--uplink-retry-max', '500ms'])
  const sim = await runSimulator({ ...RUN, mqtt: [edge.mqtt!], pipelines: specs })
  await publishTail(edge.mqtt!, TAIL)
  const truth = sim.truth!

  await waitForTruth(cloud, specs, truth, UPSTREAM, 'the cloud has every window')
  t.same(problems(cloud, specs, truth, UPSTREAM), [], 'on failover the cloud gets every window')
  t.equal(fog.kept.size, 0)
  t.equal(await metric(edge, 'fogmesh_failovers_total'), 1)
  t.ok(await metric(edge, 'fogmesh_batches_failed_total', '{target="fog",reason="timeout"}') > 0, 'timeouts counted')
  t.ok(await metric(edge, 'fogmesh_batches_sent_total', '{target="cloud"}') > 0)
  t.equal(await metric(edge, 'fogmesh_outbox_items'), await emittedUpstream(edge), 'everything still owed to the fog')
  t.match((await fetchJson(`${edge.http}/v1/mesh`)).body.uplink, { target: 'cloud', url: cloud.url, failedOver: true })
  t.equal(await metric(edge, 'fogmesh_uplink_target', '{target="cloud"}'), 1)

  fog.answer = () => 'ok'
  await waitForTruth(fog, specs, truth, UPSTREAM, 'the fog has every window')
  t.same(problems(fog, specs, truth, UPSTREAM), [], 'the fog, back, gets everything, including what went to the cloud')
  await waitFor(async () => (await metric(edge, 'fogmesh_outbox_items')) === 0, { timeoutMs: 5_000, message: 'an empty outbox' })
  t.match((await fetchJson(`${edge.http}/v1/mesh`)).body.uplink, { target: 'fog', failedOver: false })
})

t.test('outbox full: the oldest windows are dropped and counted, the rest delivered', async t => {
  const rig = await edgeRig(t)
  const file = join(rig.dir, 'small.yaml')
  await writeFile(file, `pipelines:
  - name: per-device
    from: sensors/+room/temperature
    timestamp: ts
    key: device
    window: { tumbling: 1s }
    lateness: 1s
    idle: 1s
    select: { n: count(), total: sum(value) }
`)
  const specs = await loadPipelinesFile(file)
  const port = await freePort()
  const edge = await rig.start(file, ['--fog', `http://127.0.0.1:${port}`, '--outbox-max', '4kib', '--uplink-retry-max', '300ms'])
  const sim = await runSimulator({ ...RUN, lateShare: 0, duplicateShare: 0, malformedShare: 0, mqtt: [edge.mqtt!], pipelines: specs })
  const want = Object.values(sim.truth!.pipelines['per-device'].edges)[0].results
  await waitForWindows(edge, sim.truth!, ['per-device'])

  const emitted = await metric(edge, 'fogmesh_windows_emitted_total', '{pipeline="per-device"}')
  const items = await metric(edge, 'fogmesh_outbox_items')
  const dropped = await metric(edge, 'fogmesh_outbox_dropped_total')
  t.equal(emitted, want.length)
  t.ok(dropped > 0, `${dropped} dropped`)
  t.equal(items + dropped, emitted, 'every window is in the outbox or counted as dropped')
  t.ok(await metric(edge, 'fogmesh_outbox_bytes') <= 4096, 'within the bound')

  const fog = await receiver(t, { port })
  await waitFor(async () => (await metric(edge, 'fogmesh_outbox_items')) === 0, { timeoutMs: 10_000, message: 'an empty outbox' })
  const got = fog.results('per-device')
  t.equal(got.length, items, 'what was in the outbox is delivered')
  const kept = new Set(got.map(r => `${r.key}@${r.start}`))
  const missing = want.filter(r => !kept.has(`${r.key}@${r.start}`))
  t.equal(missing.length, dropped)
  t.ok(Math.max(...missing.map(r => Date.parse(r.start))) <= Math.min(...got.map(r => Date.parse(r.start))), 'the dropped windows are the oldest')
  t.same(compareResults(specs[0], got, want.filter(r => kept.has(`${r.key}@${r.start}`)), { sources: 1 }), [], 'the delivered ones equal the ground truth')
})

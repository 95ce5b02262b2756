/**
 * Checkpoints of the open windows, as users run them: a real edge process fed by the simulator's
 * readings in phases, stopped (SIGTERM) or killed (SIGKILL) between them and restarted on the same
 * data dir. What it serves afterwards is checked against the ground truth of the readings it kept.
 */
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { PipelineRunner } from '../edge-agent/pipelines.ts'
import type { Message } from '../simulators/generator.ts'
import type { SimInput } from '../simulators/options.ts'
import { connectBroker, disconnect, publishStream } from '../simulators/publisher.ts'
import { runSimulator } from '../simulators/sim.ts'
import { computeTruth } from '../simulators/truth.ts'
import type { EdgeTruth } from '../simulators/truth.ts'
import { compareResults, fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import { sleep, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'
import { startReceiver } from './helpers/receiver.ts'
import { beforeTail, publishTail, TAIL_TOPIC, tailOf, tailPayload } from './helpers/tail.ts'

const PIPELINES = new URL('fixtures/checkpoint-windows.yaml', import.meta.url).pathname
const UPSTREAM = ['room-temp', 'device-hopping', 'sessions']

const RUN: SimInput = {
  start: Date.UTC(2026, 0, 1),
  devices: 12,
  rooms: 3,
  rate: 5,
  duration: 30_000,
  seed: 7,
  jitter: 1_500,
  lateShare: 0.02,
  lateBy: 30_000,
  duplicateShare: 0.01,
  malformedShare: 0.02
}

type Truth = Record<string, EdgeTruth>

const TAIL = tailOf(RUN.start!)

/** The windows the tail reading alone leaves open, per pipeline. */
function openByTail (specs: PipelineSpec[]): Map<string, number> {
  const runner = new PipelineRunner(specs, () => {}, 65_536)
  runner.onMessage(TAIL_TOPIC, tailPayload(TAIL), TAIL)
  return new Map([...runner.operators].map(([name, o]) => [name, o.openCount]))
}

/** The run's messages (not published) and the pipelines. */
async function generated (): Promise<{ specs: PipelineSpec[], messages: Message[] }> {
  const specs = await loadPipelinesFile(PIPELINES)
  const sim = await runSimulator({ ...RUN, dryRun: true })
  return { specs, messages: sim.streams[0] }
}

function truthOf (specs: PipelineSpec[], messages: Message[]): Truth {
  const all = computeTruth(specs, [messages], ['e1'])
  return Object.fromEntries(Object.entries(all).map(([name, p]) => [name, p.edges.e1]))
}

async function publish (url: string, messages: Message[]): Promise<void> {
  const c = await connectBroker(url, 0)
  try {
    await publishStream(c, messages, { qos: 1, speed: 0, origin: 0, wallStart: 0 })
  } finally {
    await disconnect(c)
  }
}

/** Edges on one data dir: each start is a restart of the same agent. Stopped or killed at teardown. */
async function edgeRig (t: Test, extra: string[]) {
  const dir = await tmpDir('fogmesh-checkpoint-')
  const running: RunningProcess[] = []
  t.teardown(async () => {
    for (const p of running) if (p.proc.exitCode === null && p.proc.signalCode === null) await p.stop().catch(() => p.kill('SIGKILL'))
    await dir.cleanup()
  })
  return async () => {
    const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', PIPELINES, '--mqtt-port', '0', '--http-port', '0',
      '--tick', '100ms', '--data-dir', join(dir.path, 'data'), ...extra])
    running.push(edge)
    return edge
  }
}

async function metric (edge: RunningProcess, name: string): Promise<Map<string, number>> {
  const m = await fetchMetric(edge.http, name)
  return new Map([...m].map(([labels, n]) => [/pipeline="([^"]+)"/.exec(labels)?.[1] ?? labels, n]))
}

/** Waits until the edge has processed `n` messages since it started. */
async function processed (edge: RunningProcess, n: number): Promise<void> {
  await waitFor(async () => (await fetchMetric(edge.http, 'fogmesh_mqtt_messages_total')).get('') === n, { timeoutMs: 10_000, message: `${n} messages processed` })
}

async function kill (edge: RunningProcess): Promise<void> {
  edge.kill('SIGKILL')
  await edge.exited
}

function sum (m: Map<string, number>): number {
  return [...m.values()].reduce((a, b) => a + b, 0)
}

/** Windows emitted for a truth, revisions included (each late update is one more emission). */
function emissions (truth: Truth): Map<string, number> {
  return new Map(Object.entries(truth).map(([name, e]) => [name, e.results.reduce((n, r) => n + r.revision + 1, 0)]))
}

/** Closes the run's windows (see helpers/tail.ts), waits for every window of the truth, lists the differences. */
async function differences (edge: RunningProcess, specs: PipelineSpec[], truth: Truth): Promise<string[]> {
  await publishTail(edge.mqtt!, TAIL)
  const results = async (name: string) => beforeTail(await fetchResults(edge.http, name), TAIL)
  for (const spec of specs) {
    const want = truth[spec.name].results.length
    await waitFor(async () => (await results(spec.name)).filter(r => r.final).length >= want, { timeoutMs: 10_000, message: `${spec.name}: ${want} final windows` })
  }
  const problems: string[] = []
  for (const spec of specs) problems.push(...compareResults(spec, await results(spec.name), truth[spec.name].results, { sources: 1 }))
  return problems
}

/**
 * Where `count` messages from index `from` on (or later) make no pipeline emit a window: readings
 * there only go into open windows, so losing them loses exactly them.
 */
function quietStretch (specs: PipelineSpec[], messages: Message[], from: number, count: number): number {
  let emitted = 0
  const runner = new PipelineRunner(specs, () => { emitted++ }, 65_536)
  const after: number[] = []
  for (const m of messages) {
    runner.onMessage(m.topic, m.payload, m.due)
    after.push(emitted)
  }
  for (let i = from; i + count < messages.length; i++) if (after[i - 1] === after[i + count - 1]) return i
  throw new Error(`no ${count} quiet messages after ${from}`)
}

t.test('SIGTERM with windows open, then a restart: nothing lost, nothing counted twice', { timeout: 40_000 }, async t => {
  const { specs, messages } = await generated()
  const truth = truthOf(specs, messages)
  const start = await edgeRig(t, [])
  const cut = Math.floor(messages.length * 0.45)

  const first = await start()
  await publish(first.mqtt!, messages.slice(0, cut))
  await processed(first, cut)
  const openBefore = await metric(first, 'fogmesh_open_windows')
  t.ok(sum(openBefore) > 0, 'windows are open at the stop')
  const emittedBefore = await metric(first, 'fogmesh_windows_emitted_total')
  t.equal(await first.stop(), 0, 'a clean stop')

  const second = await start()
  t.same(await metric(second, 'fogmesh_open_windows'), openBefore, 'the same windows are open after the restart')
  t.ok(sum(await metric(second, 'fogmesh_checkpoint_readings_restored_total')) > 0, 'readings restored')
  t.equal(sum(await metric(second, 'fogmesh_readings_lost_total')), 0, 'none lost')
  await publish(second.mqtt!, messages.slice(cut))
  t.same(await differences(second, specs, truth), [], 'served results equal the ground truth')
  const emittedAfter = await metric(second, 'fogmesh_windows_emitted_total')
  for (const [name, n] of emissions(truth)) t.equal((emittedBefore.get(name) ?? 0) + (emittedAfter.get(name) ?? 0), n, `${name}: each window emitted once (per revision)`)
})

t.test('SIGKILL right after a checkpoint: the open windows come back, nothing lost', { timeout: 40_000 }, async t => {
  const { specs, messages } = await generated()
  const truth = truthOf(specs, messages)
  const start = await edgeRig(t, ['--checkpoint-every', '200ms'])
  const cut = Math.floor(messages.length * 0.55)

  const first = await start()
  await publish(first.mqtt!, messages.slice(0, cut))
  await processed(first, cut)
  const taken = (await fetchMetric(first.http, 'fogmesh_checkpoints_total')).get('')!
  await waitFor(async () => (await fetchMetric(first.http, 'fogmesh_checkpoints_total')).get('')! > taken, { timeoutMs: 5_000, message: 'a checkpoint after the last reading' })
  const emittedBefore = await metric(first, 'fogmesh_windows_emitted_total')
  t.ok((await fetchMetric(first.http, 'fogmesh_checkpoint_bytes')).get('')! > 0, 'the checkpoint has a size')
  t.ok((await fetchMetric(first.http, 'fogmesh_checkpoint_seconds')).get('')! > 0, 'and a duration')
  await kill(first)

  const second = await start()
  t.ok(sum(await metric(second, 'fogmesh_checkpoint_readings_restored_total')) > 0, 'readings restored')
  t.equal(sum(await metric(second, 'fogmesh_readings_lost_total')), 0, 'none lost')
  await publish(second.mqtt!, messages.slice(cut))
  t.same(await differences(second, specs, truth), [], 'served results equal the ground truth')
  const emittedAfter = await metric(second, 'fogmesh_windows_emitted_total')
  for (const [name, n] of emissions(truth)) t.equal((emittedBefore.get(name) ?? 0) + (emittedAfter.get(name) ?? 0), n, `${name}: each window emitted once (per revision)`)
})

t.test('SIGKILL with readings after the last checkpoint: exactly those are lost, and counted', { timeout: 40_000 }, async t => {
  const { specs, messages } = await generated()
  const start = await edgeRig(t, ['--checkpoint-every', '1h'])
  const cut = Math.floor(messages.length * 0.4)
  const quiet = quietStretch(specs, messages, cut, 40)
  const before = messages.slice(0, quiet)
  const lost = messages.slice(quiet, quiet + 40)
  const rest = messages.slice(quiet + 40)

  const first = await start()
  await publish(first.mqtt!, before)
  await processed(first, before.length)
  const emittedBefore = await metric(first, 'fogmesh_windows_emitted_total')
  t.equal(await first.stop(), 0, 'a clean stop: the last checkpoint')

  // Readings after the checkpoint (the one taken at start), then a crash.
  const second = await start()
  await publish(second.mqtt!, lost)
  await processed(second, lost.length)
  await sleep(500) // a few ticks: the accepted counts are saved
  t.equal(sum(await metric(second, 'fogmesh_windows_emitted_total')), 0, 'no window closed meanwhile')
  await kill(second)

  const third = await start()
  const accepted = (ms: Message[]) => new Map(Object.entries(truthOf(specs, ms)).map(([name, e]) => [name, e.accepted]))
  const lostAccepted = accepted(before.concat(lost))
  for (const [name, n] of accepted(before)) lostAccepted.set(name, lostAccepted.get(name)! - n)
  t.ok(sum(lostAccepted) > 0, 'readings were accepted after the checkpoint')
  t.same(await metric(third, 'fogmesh_readings_lost_total'), lostAccepted, 'lost: the readings accepted after the checkpoint, per pipeline')
  t.ok(sum(await metric(third, 'fogmesh_checkpoint_readings_restored_total')) > 0, 'the checkpoint restored')
  await publish(third.mqtt!, rest)
  const truth = truthOf(specs, before.concat(rest))
  t.same(await differences(third, specs, truth), [], 'served results equal the ground truth without the lost readings')
  const emittedAfter = await metric(third, 'fogmesh_windows_emitted_total')
  for (const [name, n] of emissions(truth)) t.equal((emittedBefore.get(name) ?? 0) + (emittedAfter.get(name) ?? 0), n, `${name}: each window emitted once (per revision)`)
})

t.test('upstream across a SIGKILL: no window arrives twice with other contents under one revision', { timeout: 40_000 }, async t => {
  const { specs, messages } = await generated()
  const fog = await startReceiver()
  t.teardown(() => fog.close())
  const start = await edgeRig(t, ['--checkpoint-every', '1h', '--fog', fog.url, '--uplink-retry-max', '300ms'])
  const cuts = [Math.floor(messages.length * 0.35), Math.floor(messages.length * 0.8)]

  const first = await start()
  await publish(first.mqtt!, messages.slice(0, cuts[0]))
  await processed(first, cuts[0])
  t.equal(await first.stop(), 0, 'a clean stop: the last checkpoint')

  // Windows open in the checkpoint close and reach the fog; then the edge is killed.
  const second = await start()
  await publish(second.mqtt!, messages.slice(cuts[0], cuts[1]))
  await processed(second, cuts[1] - cuts[0])
  const emitted = await metric(second, 'fogmesh_windows_emitted_total')
  const upstream = UPSTREAM.reduce((n, p) => n + (emitted.get(p) ?? 0), 0)
  t.ok(upstream > 0, `${upstream} windows emitted after the checkpoint`)
  // The fog has every window closed so far once it has the edge's watermarks (they never run ahead).
  const watermarks = await metric(second, 'fogmesh_watermark_seconds')
  await waitFor(() => UPSTREAM.every(p => (fog.watermarks.get(`${p} e1`) ?? -Infinity) >= watermarks.get(p)! * 1000), { timeoutMs: 10_000, message: 'the fog has the windows' })
  await kill(second)

  const third = await start()
  t.ok(sum(await metric(third, 'fogmesh_checkpoint_readings_restored_total')) > 0, 'the checkpoint restored')
  t.ok(sum(await metric(third, 'fogmesh_readings_lost_total')) > 0, 'readings after it counted as lost')
  t.match(third.stderr.join('\n'), /windows emitted since it are not restored/, 'windows emitted after the checkpoint are recognized')
  await publish(third.mqtt!, messages.slice(cuts[1]))
  await publishTail(third.mqtt!, TAIL)
  // Count windows (batches) stay open until full; the others close by the tail's watermark.
  const open = async () => { const m = await metric(third, 'fogmesh_open_windows'); return UPSTREAM.reduce((n, p) => n + (m.get(p) ?? 0), 0) }
  const tailOnly = UPSTREAM.reduce((n, p) => n + openByTail(specs).get(p)!, 0)
  await waitFor(async () => (await open()) === tailOnly && (await fetchMetric(third.http, 'fogmesh_outbox_items')).get('') === 0,
    { timeoutMs: 15_000, message: 'every window but the tail\'s closed and delivered' })

  const seen = new Map<string, string>()
  const conflicts: string[] = []
  for (const { batch, answer } of fog.requests) {
    if (answer !== 'ok') continue
    for (const w of batch.windows) {
      for (const c of w.contributions) {
        const id = `${w.pipeline} ${w.key} ${w.start} ${w.end} r${c.revision}`
        const states = JSON.stringify(c.states)
        if (seen.has(id) && seen.get(id) !== states) conflicts.push(id)
        seen.set(id, states)
      }
    }
  }
  t.ok(seen.size > 0, `${seen.size} contributions`)
  t.same(conflicts, [], 'each (pipeline, key, start, end, revision) arrived with one content')
  const truth = truthOf(specs, messages)
  for (const name of UPSTREAM) {
    const want = new Map(truth[name].results.map(r => [`${r.key} ${r.start}`, r.values.n as number]))
    const over = fog.results(name).filter(r => (r.values.n as number) > (want.get(`${r.key} ${r.start}`) ?? Infinity))
    t.same(over, [], `${name}: no window counts more readings than were sent`)
  }
})

t.test('--checkpoint-every 0 turns checkpoints off', async t => {
  const start = await edgeRig(t, ['--checkpoint-every', '0'])
  const edge = await start()
  t.match(edge.stdout[0], /^ready edge e1 /)
  const names = [...(await fetchMetric(edge.http, 'fogmesh_checkpoints_total')).keys()]
  t.same(names, [], 'no checkpoint metrics: the checkpointer does not run')
  await edge.stop()
  t.equal(edge.proc.exitCode, 0)
})

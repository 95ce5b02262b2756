/**
 * The whole mesh as users run it, in real processes: a cloud sink, a fog coordinator forwarding to it,
 * and two edge agents (embedded brokers) fed by the simulator, which partitions the devices over the
 * two edges. Every tier is checked against the simulator's ground truth: each edge against its own
 * readings, the fog and the cloud against the merge of both (final results, exact, `sources` equal).
 * Then the same with a tier failing in the middle: the fog killed and restarted, the fog away long
 * enough for the edges to fail over to the cloud, the cloud away, an edge restarted.
 */
import t from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { runSimulator } from '../simulators/sim.ts'
import type { SimInput } from '../simulators/options.ts'
import type { SimSummary } from '../simulators/sim.ts'
import type { TruthFile } from '../simulators/truth.ts'
import { fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import {
  expectEdgesExact, expectMergedExact, expectMergedExactOf, MAIN_FROM, MAIN_TO, MESH, metric, RUN, simulate, START, startMesh
} from './helpers/mesh-scenario.ts'
import type { Mesh } from './helpers/mesh-scenario.ts'
import { fetchJson, waitFor } from './helpers/process.ts'

/** Event time per wall-clock time where a tier fails while readings flow: publishing takes about 4.5 s. */
const SLOW = 8
/**
 * Readings on e2 alone after the main run, while e1 gets none (and goes idle). No late readings: the
 * truth of a run starts from nothing, and e2 does not.
 */
const E2_ALONE: SimInput = { start: START + 60_000, devices: 8, rooms: 3, rate: 4, duration: 24_000, seed: 5, jitter: 1_500 }
/**
 * Each scenario takes 4-9 s, twice that on a loaded machine. Six of these stay under the file's
 * timeout (120 s) in practice: a subtest that times out still stops its processes, the file being killed does not.
 */
const SUBTEST_TIMEOUT = 22_000

interface Background {
  /** The run's ground truth, known before it publishes (the simulator is seeded). */
  truth: TruthFile
  /** Resolves after the main run and the tail. */
  done: Promise<SimSummary>
  published: () => boolean
}

/** Starts publishing at SLOW speed, so that a tier can fail while readings flow. */
async function simulateSlowly (mesh: Mesh, specs: PipelineSpec[]): Promise<Background> {
  const planned = await runSimulator({ ...RUN, speed: SLOW, mqtt: mesh.brokers, pipelines: specs, dryRun: true })
  let published = false
  const done = simulate(mesh, specs, { speed: SLOW }).finally(() => { published = true })
  // Reported where the test awaits it; this keeps an early failure from being an unhandled rejection.
  done.catch(() => {})
  return { truth: planned.truth!, done, published: () => published }
}

/**
 * Waits for a window that one edge has delivered to the fog and the other not yet (two sources in the
 * truth, one at the fog, not final): failing the fog then splits the window's contributions between the
 * fog and wherever the other edge's goes next. Returns the window.
 */
async function splitWindow (fog: string, truth: TruthFile): Promise<string> {
  const pipelines = ['room-temp', 'room-hopping']
  const both = new Set(pipelines.flatMap(p => truth.pipelines[p].merged!.results.filter(r => r.sources === 2).map(r => `${p} ${r.key} ${r.start}`)))
  return await waitFor(async () => {
    for (const p of pipelines) {
      const split = (await fetchResults(fog, p)).find(r => !r.final && r.sources === 1 && both.has(`${p} ${r.key} ${r.start}`))
      if (split !== undefined) return `${p} ${split.key} ${split.start}`
    }
    return undefined
  }, { timeoutMs: 10_000, intervalMs: 5, message: 'a window one edge has delivered to the fog and the other not yet' })
}

/** Waits for a tier's first final result of the main run. */
async function firstFinal (base: string, what: string): Promise<void> {
  const ofRun = (r: { start: string }) => Date.parse(r.start) >= MAIN_FROM && Date.parse(r.start) < MAIN_TO
  await waitFor(async () => (await fetchResults(base, 'room-temp')).some(r => r.final && ofRun(r)), { timeoutMs: 10_000, intervalMs: 50, message: what })
}

async function outboxEmpty (base: string, what: string): Promise<void> {
  await waitFor(async () => (await metric(base, 'fogmesh_outbox_items')) === 0, { timeoutMs: 10_000, message: `${what}: an empty outbox` })
}

t.test('happy path: every edge, the fog and the cloud equal the ground truth', { timeout: SUBTEST_TIMEOUT }, async t => {
  const specs = await loadPipelinesFile(MESH)
  const mesh = await startMesh(t)
  const sim = await simulate(mesh, specs)
  t.ok(sim.stats.late > 0 && sim.stats.duplicates > 0 && Object.keys(sim.stats.malformed).length > 0, 'the run has late, duplicate and malformed readings')
  t.ok(specs.every(s => sim.truth!.pipelines[s.name].merged!.results.length > 0), 'every pipeline has merged windows')
  t.ok(sim.truth!.pipelines['room-temp'].merged!.results.some(r => r.sources === 2), 'windows with readings from both edges')

  await expectEdgesExact(t, mesh, specs, sim)
  await expectMergedExact(t, 'fog', mesh.fog.http, specs, sim)
  await expectMergedExact(t, 'cloud', mesh.cloud.http, specs, sim)

  const fog = mesh.fog.http
  await outboxEmpty(fog, 'the fog')
  t.ok(await metric(fog, 'fogmesh_batches_sent_total', '{target="cloud"}') > 0, 'the fog counts its batches to the cloud')
  t.equal(await metric(fog, 'fogmesh_outbox_dropped_total'), 0)
  t.equal(await metric(fog, 'fogmesh_outbox_bytes'), 0)
  t.ok(await metric(mesh.cloud.http, 'fogmesh_batches_received_total', '{role="fog"}') > 0)
  t.equal(await metric(mesh.cloud.http, 'fogmesh_batches_received_total', '{role="edge"}'), 0, 'no edge needed the cloud')
  const pipelines = (await fetchJson(`${mesh.cloud.http}/v1/pipelines`)).body.pipelines as Array<{ name: string }>
  t.same(pipelines.map(p => p.name), ['room-hopping', 'room-temp', 'sessions'], 'the cloud learned the pipelines from the fog\'s batches')
  for (const edge of mesh.edges) t.equal(await metric(edge.http, 'fogmesh_failovers_total'), 0)
  t.equal(await mesh.fog.stop(), 0, 'the fog stops cleanly')
})

t.test('fog SIGKILLed while readings flow, restarted on its data dir: the fog and the cloud stay exact', { timeout: SUBTEST_TIMEOUT }, async t => {
  const specs = await loadPipelinesFile(MESH)
  const mesh = await startMesh(t)
  const run = await simulateSlowly(mesh, specs)
  const split = await splitWindow(mesh.fog.http, run.truth)
  t.notOk(run.published(), `the simulator is still publishing; ${split} is half at the fog`)
  mesh.fog.kill('SIGKILL')
  t.equal((await mesh.fog.exited).signal, 'SIGKILL')
  await mesh.startFog()
  const sim = await run.done

  await expectEdgesExact(t, mesh, specs, sim)
  await expectMergedExact(t, 'fog', mesh.fog.http, specs, sim)
  await expectMergedExact(t, 'cloud', mesh.cloud.http, specs, sim)
  await outboxEmpty(mesh.fog.http, 'the fog')
  for (const edge of mesh.edges) await outboxEmpty(edge.http, 'an edge')
})

t.test('fog away longer than --failover-after: edges fail over to the cloud; the fog back, nothing lost or counted twice', { timeout: SUBTEST_TIMEOUT }, async t => {
  const specs = await loadPipelinesFile(MESH)
  const mesh = await startMesh(t)
  const run = await simulateSlowly(mesh, specs)
  const split = await splitWindow(mesh.fog.http, run.truth)
  t.notOk(run.published(), `the simulator is still publishing; ${split} is half at the fog`)
  mesh.fog.kill('SIGKILL')
  await mesh.fog.exited

  const failedOver = async () => (await Promise.all(mesh.edges.map(e => metric(e.http, 'fogmesh_failovers_total')))).every(n => n > 0)
  await waitFor(failedOver, { timeoutMs: 10_000, message: 'both edges failing over to the cloud' })
  t.pass('both edges failed over (fogmesh_failovers_total > 0)')
  const sim = await run.done
  await expectEdgesExact(t, mesh, specs, sim)
  for (const edge of mesh.edges) {
    await waitFor(async () => (await fetchJson(`${edge.http}/v1/mesh`)).body.uplink.failedOver === true, { timeoutMs: 5_000, message: 'an edge sending to the cloud' })
  }
  const cloud = mesh.cloud.http
  await waitFor(async () => (await metric(cloud, 'fogmesh_batches_received_total', '{role="edge"}')) > 0, { timeoutMs: 5_000, message: 'edge batches at the cloud' })
  // The cloud waits for the fog's progress before it finalizes what edges sent it straight: the fog
  // may hold other contributions to the same windows.
  const pending = await fetchMetric(cloud, 'fogmesh_pending_windows')
  t.ok([...pending.values()].some(n => n > 0), 'windows the edges sent the cloud wait for the fog')

  await mesh.startFog()
  await expectMergedExact(t, 'fog', mesh.fog.http, specs, sim)
  await expectMergedExact(t, 'cloud', cloud, specs, sim)
  t.ok(await metric(cloud, 'fogmesh_partials_ignored_total', '{pipeline="room-temp"}') > 0, 'contributions that reached the cloud both ways were counted once')
  for (const edge of mesh.edges) {
    await waitFor(async () => (await fetchJson(`${edge.http}/v1/mesh`)).body.uplink.target === 'fog', { timeoutMs: 5_000, message: 'an edge back on the fog' })
    await outboxEmpty(edge.http, 'an edge')
  }
  await outboxEmpty(mesh.fog.http, 'the fog')
})

t.test('cloud away: the fog keeps final windows in its outbox and delivers them when the cloud is back', { timeout: SUBTEST_TIMEOUT }, async t => {
  const specs = await loadPipelinesFile(MESH)
  const mesh = await startMesh(t)
  const run = await simulateSlowly(mesh, specs)
  await firstFinal(mesh.cloud.http, 'the cloud\'s first window of the run')
  t.notOk(run.published(), 'the simulator is still publishing')
  mesh.cloud.kill('SIGKILL')
  await mesh.cloud.exited
  const sim = await run.done

  const fog = mesh.fog.http
  await expectMergedExact(t, 'fog', fog, specs, sim)
  const held = await metric(fog, 'fogmesh_outbox_items')
  t.ok(held > 0, `the fog holds ${held} final windows for the cloud`)
  t.ok(await metric(fog, 'fogmesh_batches_failed_total', '{target="cloud",reason="unreachable"}') > 0, 'failed deliveries counted')
  for (const edge of mesh.edges) t.equal(await metric(edge.http, 'fogmesh_failovers_total'), 0, 'the edges never noticed')

  await mesh.startCloud()
  await expectMergedExact(t, 'cloud', mesh.cloud.http, specs, sim)
  await outboxEmpty(fog, 'the fog')
  t.equal(await metric(fog, 'fogmesh_outbox_dropped_total'), 0)
})

t.test('an edge restarted after its windows closed delivers its outbox: every tier exact', { timeout: SUBTEST_TIMEOUT }, async t => {
  const specs = await loadPipelinesFile(MESH)
  // The fog is away while the readings flow and until the edge has restarted, so that the restarted
  // edge has an outbox to deliver; the edges wait for the fog rather than fail over.
  const mesh = await startMesh(t, { fogAway: true, edge: ['--failover-after', '60s'] })
  const sim = await simulate(mesh, specs)
  await expectEdgesExact(t, mesh, specs, sim)

  const e1 = mesh.edges[0]
  // Every window closed (the tail's too, by idle): each one is in the outbox, once (late: drop).
  await waitFor(async () => [...(await fetchMetric(e1.http, 'fogmesh_open_windows')).values()].every(n => n === 0), { timeoutMs: 5_000, message: 'e1\'s windows closed' })
  const held = await metric(e1.http, 'fogmesh_outbox_items')
  const main = specs.reduce((n, s) => n + sim.truth!.pipelines[s.name].edges[mesh.brokers[0]].results.length, 0)
  t.ok(held > main, `e1's outbox holds ${held} windows: the run's ${main} and the tail's`)
  t.equal(await e1.stop(), 0, 'SIGTERM stops the edge cleanly')
  const again = await mesh.startEdge(0)
  t.equal(await metric(again.http, 'fogmesh_outbox_items'), held, 'they are all still in the outbox after the restart')

  await mesh.startFog()
  await expectMergedExact(t, 'fog', mesh.fog.http, specs, sim)
  await expectMergedExact(t, 'cloud', mesh.cloud.http, specs, sim)
  await expectEdgesExact(t, mesh, specs, sim)
  for (const edge of mesh.edges) await outboxEmpty(edge.http, 'an edge')
  await outboxEmpty(mesh.fog.http, 'the fog')
})

t.test('an edge whose readings stop goes idle: the other edge\'s windows are final within seconds, not --finalize-after', { timeout: SUBTEST_TIMEOUT }, async t => {
  const specs = await loadPipelinesFile(MESH)
  // No tier gives up on an edge within the test: a window final here is final by watermarks.
  const mesh = await startMesh(t, { fog: ['--finalize-after', '60s'], cloud: ['--finalize-after', '60s'] })
  await mesh.release()
  const both = await runSimulator({ ...RUN, mqtt: mesh.brokers, pipelines: specs })
  const alone: SimInput = { ...E2_ALONE, speed: SLOW, mqtt: [mesh.brokers[1]], pipelines: specs }
  const planned = await runSimulator({ ...alone, dryRun: true })
  let published = false
  const done = runSimulator(alone).finally(() => { published = true })
  done.catch(() => {})

  // Windows e2 closes while it still publishes: final at once, though e1's watermark stopped in the main run.
  const ofAlone = (r: { start: string }) => Date.parse(r.start) >= E2_ALONE.start!
  await waitFor(async () => (await fetchResults(mesh.fog.http, 'room-temp')).some(r => r.final && ofAlone(r)),
    { timeoutMs: 10_000, intervalMs: 50, message: 'a window of e2 alone final at the fog' })
  t.notOk(published, 'a window of e2 alone was final at the fog while e2 still published')
  const sim = await done
  t.same(planned.truth!.pipelines['room-temp'].merged!.results, sim.truth!.pipelines['room-temp'].merged!.results, 'the run was as planned')
  const end = Date.now()
  const want = (p: string) => [...both.truth!.pipelines[p].merged!.results, ...sim.truth!.pipelines[p].merged!.results]
  await expectMergedExactOf(t, 'fog', mesh.fog.http, specs, want)
  await expectMergedExactOf(t, 'cloud', mesh.cloud.http, specs, want)
  const took = Date.now() - end
  t.ok(took < 15_000, `the fog and the cloud were exact ${took} ms after the last reading, not after --finalize-after (60 s)`)
  const edges = (await fetchJson(`${mesh.fog.http}/v1/mesh`)).body.edges as Array<{ id: string }>
  t.same(edges.map(e => e.id), ['e1', 'e2'], 'the fog still knows e1')
})

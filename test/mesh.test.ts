/**
 * The whole mesh as users run it, in real processes: a cloud sink, a fog coordinator forwarding to it,
 * and two edge agents (embedded brokers) fed by the simulator, which partitions the devices over the
 * two edges. Every tier is checked against the simulator's ground truth: each edge against its own
 * readings, the fog and the cloud against the merge of both (final results, exact, `sources` equal).
 * Then the same with a tier failing in the middle: the fog killed and restarted, the fog away long
 * enough for the edges to fail over to the cloud, the cloud away. (Edges going quiet: mesh-quiet.test.ts.)
 */
import t from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { runSimulator } from '../simulators/sim.ts'
import type { SimSummary } from '../simulators/sim.ts'
import type { TruthFile } from '../simulators/truth.ts'
import { fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import {
  expectEdgesExact, expectMergedExact, MAIN_FROM, MAIN_TO, MESH, metric, RUN, simulate, startMesh
} from './helpers/mesh-scenario.ts'
import type { Mesh } from './helpers/mesh-scenario.ts'
import { fetchJson, waitFor } from './helpers/process.ts'

/** Event time per wall-clock time where a tier fails while readings flow: publishing takes about 4.5 s. */
const SLOW = 8
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

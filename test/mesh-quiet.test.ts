/**
 * The mesh of mesh.test.ts with edges going quiet: an edge restarted after its windows closed, and an
 * edge whose readings stop while the other's go on. Both wait on the wall clock (an edge's last windows
 * close up to a window plus lateness after its last reading), so they have a file of their own.
 */
import t from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import { runSimulator } from '../simulators/sim.ts'
import type { SimInput } from '../simulators/options.ts'
import { fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import { expectEdgesExact, expectMergedExact, expectMergedExactOf, MESH, metric, RUN, simulate, START, startMesh, TAIL } from './helpers/mesh-scenario.ts'
import { fetchJson, waitFor } from './helpers/process.ts'

/**
 * Readings on e2 alone after the main run, while e1 gets none (and goes idle), in real time: e1 goes
 * idle once the wall clock has closed its last windows (up to a window, 10 s, plus lateness after its
 * last reading), and e2 must still be publishing then. No late readings: the truth of a run starts from
 * nothing, and e2 does not.
 */
const E2_ALONE: SimInput = { start: START + 60_000, devices: 8, rooms: 3, rate: 4, duration: 24_000, seed: 5, jitter: 1_500, speed: 1 }

/** A mesh, a run, and the wall clock closing windows: about 35 s, twice that on a loaded machine. */
const SUBTEST_TIMEOUT = 60_000

async function outboxEmpty (base: string, what: string): Promise<void> {
  await waitFor(async () => (await metric(base, 'fogmesh_outbox_items')) === 0, { timeoutMs: 10_000, message: `${what}: an empty outbox` })
}

t.test('an edge restarted after its windows closed delivers its outbox: every tier exact', { timeout: SUBTEST_TIMEOUT }, async t => {
  const specs = await loadPipelinesFile(MESH)
  // The fog is away while the readings flow and until the edge has restarted, so that the restarted
  // edge has an outbox to deliver; the edges wait for the fog rather than fail over.
  const mesh = await startMesh(t, { fogAway: true, edge: ['--failover-after', '60s'] })
  const sim = await simulate(mesh, specs)
  await expectEdgesExact(t, mesh, specs, sim)

  const e1 = mesh.edges[0]
  // Every window closed (the tail's too, by the wall clock: up to a window, 10 s, plus lateness after
  // its last reading): each one is in the outbox, once (late: drop).
  await waitFor(async () => [...(await fetchMetric(e1.http, 'fogmesh_open_windows')).values()].every(n => n === 0), { timeoutMs: 20_000, message: 'e1\'s windows closed' })
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
  const alone: SimInput = { ...E2_ALONE, mqtt: [mesh.brokers[1]], pipelines: specs }
  const planned = await runSimulator({ ...alone, dryRun: true })
  let published = false
  const done = runSimulator(alone).finally(() => { published = true })
  done.catch(() => {})

  // Windows e2 closes while it still publishes: final at once, though e1's watermark stopped in the main run.
  const ofAlone = (r: { start: string }) => Date.parse(r.start) >= E2_ALONE.start!
  await waitFor(async () => (await fetchResults(mesh.fog.http, 'room-temp')).some(r => r.final && ofAlone(r)),
    { timeoutMs: 20_000, intervalMs: 50, message: 'a window of e2 alone final at the fog' })
  t.notOk(published, 'a window of e2 alone was final at the fog while e2 still published')
  const sim = await done
  t.same(planned.truth!.pipelines['room-temp'].merged!.results, sim.truth!.pipelines['room-temp'].merged!.results, 'the run was as planned')
  // The tail, on e2 alone: its watermark passes its last windows at once (e1 is idle by now).
  await runSimulator({ ...TAIL, mqtt: [mesh.brokers[1]] })
  const end = Date.now()
  const want = (p: string) => [...both.truth!.pipelines[p].merged!.results, ...sim.truth!.pipelines[p].merged!.results]
  await expectMergedExactOf(t, 'fog', mesh.fog.http, specs, want)
  await expectMergedExactOf(t, 'cloud', mesh.cloud.http, specs, want)
  const took = Date.now() - end
  t.ok(took < 15_000, `the fog and the cloud were exact ${took} ms after the last reading, not after --finalize-after (60 s)`)
  const edges = (await fetchJson(`${mesh.fog.http}/v1/mesh`)).body.edges as Array<{ id: string }>
  t.same(edges.map(e => e.id), ['e1', 'e2'], 'the fog still knows e1')
})

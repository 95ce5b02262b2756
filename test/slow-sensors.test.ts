/**
 * Sensors at the rates real ones have, in real time, through every tier: two edges, a fog and the
 * cloud. Keys reporting twice a second, every 10 s and once a minute share each pipeline; a quarter of
 * the sensors pause for longer than a window and resume; a few readings are late, duplicated,
 * malformed, or dated an hour ahead by a bad clock. The pipelines' idle (1 s) is far shorter than a
 * slow sensor's period, so windows close by the wall clock between its readings: no on-time reading
 * may be lost for that, and every tier must equal the simulator's ground truth, which models the idle
 * rule on its own. (Before the idle rule followed the wall clock, a sensor every 10 s kept one reading
 * in two of a 20 s window, and fewer of a 60 s one.)
 */
import t from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { SimInput } from '../simulators/options.ts'
import { runSimulator } from '../simulators/sim.ts'
import { fetchMetric } from './helpers/ground-truth.ts'
import { expectEdgesExact, expectMergedExact, startMesh } from './helpers/mesh-scenario.ts'

// A minute and a half of real time, and the mesh around it.
t.setTimeout(180_000)

const PIPELINES = new URL('fixtures/slow-sensors.yaml', import.meta.url).pathname

/**
 * Real time (no start: the wall clock), 80 s. Device i publishes to edge e(i mod 2 + 1) at rate[i mod 6]:
 * e1 has only slow sensors (every 10 s, every minute), so its pipelines are often without readings for
 * longer than idle; e2 mixes them with sensors twice a second. Idle is per pipeline at an edge, so a
 * fast sensor keeps a pipeline active for the slow ones beside it.
 */
const RUN: SimInput = {
  devices: 12,
  rooms: 3,
  rate: [0.1, 2, 1 / 60, 0.1, 0.1, 1 / 60],
  duration: 80_000,
  seed: 11,
  jitter: 500, // within the pipelines' 2 s lateness: out of order, never late
  lateShare: 0.02,
  lateBy: 70_000, // later than a window and its lateness: late for every window, whatever the clock did
  duplicateShare: 0.01,
  malformedShare: 0.01,
  pauseShare: 0.25,
  pauseAfter: 20_000,
  pauseFor: 25_000,
  futureShare: 0.01,
  futureBy: 3_600_000
}

t.test('slow, pausing and fast sensors in real time: every tier equals the ground truth', async t => {
  const specs = await loadPipelinesFile(PIPELINES)
  const mesh = await startMesh(t, { pipelines: PIPELINES })
  await mesh.release()
  // The counters of the warm-up and of the hold, to take off.
  const before = await Promise.all(mesh.edges.map(e => counters(e.http)))
  const sim = await runSimulator({ ...RUN, mqtt: mesh.brokers, pipelines: specs })
  const after = await Promise.all(mesh.edges.map(e => counters(e.http)))
  const truth = sim.truth!
  t.same(truth.warnings, [], 'no reading of the run is near a decision the clock could tip')

  // The scenario is what it claims: slow keys, pauses, late and future readings.
  for (const spec of specs) {
    const edges = Object.values(truth.pipelines[spec.name].edges)
    t.ok(edges.every(e => e.accepted > 0), `${spec.name}: both edges accept readings`)
  }
  const slow = truth.pipelines['device-hopping'].merged!.results.filter(r => /^d(0|3|4|6|9|10)$/.test(r.key) && r.values.n === 6)
  t.ok(slow.length > 0, 'full 60 s windows of sensors every 10 s (6 readings each) are in the truth')
  const future = Object.values(truth.pipelines['room-tumbling'].edges).reduce((n, e) => n + (e.rejected.future_timestamp ?? 0), 0)
  t.ok(future > 0, `${future} readings from a bad clock`)

  // The wall clock closes the last windows up to a window (60 s) after the last reading; readings a
  // while ahead (within max-future) close them at once. Their windows are left out.
  const tail = Date.now() + 120_000
  await runSimulator({ start: tail, devices: 12, rooms: 3, rate: 4, duration: 2_000, seed: 98, mqtt: mesh.brokers })
  // Windows that start before the run ends hold its readings; those after, the tail's.
  const range = { from: sim.origin - 600_000, to: sim.origin + RUN.duration! }

  await expectEdgesExact(t, mesh, specs, sim, range)
  await expectMergedExact(t, 'fog', mesh.fog.http, specs, sim, range)
  await expectMergedExact(t, 'cloud', mesh.cloud.http, specs, sim, range)

  // Counters: nothing on time was counted late, and the bad clock's readings were refused.
  for (const i of mesh.edges.keys()) {
    const delta = (name: keyof Counters, labels: string) => (after[i][name].get(labels) ?? 0) - (before[i][name].get(labels) ?? 0)
    for (const spec of specs) {
      const want = truth.pipelines[spec.name].edges[mesh.brokers[i]]
      t.equal(delta('accepted', `{pipeline="${spec.name}"}`), want.accepted, `e${i + 1} ${spec.name}: accepted`)
      t.equal(delta('late', `{pipeline="${spec.name}"}`), want.late, `e${i + 1} ${spec.name}: late`)
      t.equal(delta('rejected', `{pipeline="${spec.name}",reason="future_timestamp"}`), want.rejected.future_timestamp ?? 0, `e${i + 1} ${spec.name}: future_timestamp`)
    }
  }
})

type Counters = Record<'accepted' | 'late' | 'rejected', Map<string, number>>

async function counters (base: string): Promise<Counters> {
  const [accepted, late, rejected] = await Promise.all(['fogmesh_readings_total', 'fogmesh_readings_late_total', 'fogmesh_pipeline_readings_rejected_total'].map(m => fetchMetric(base, m)))
  return { accepted, late, rejected }
}

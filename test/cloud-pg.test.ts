/**
 * The cloud tier on PostgreSQL end to end: two `fogmesh cloud --store` processes on one real
 * PostgreSQL, two edges (embedded brokers) each given both clouds (`--cloud A --cloud B`, in opposite
 * orders, so both take batches), the simulator publishing in real time with a slow sensor, a pause
 * longer than a window, late, duplicated and malformed readings. Mid-run each cloud process is
 * SIGKILLed and started again, and PostgreSQL is restarted. Both processes must then serve exactly the
 * simulator's ground truth (values, revisions, sources), and the tier must have recovered by itself.
 */
import { join } from 'node:path'
import t from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { SimInput } from '../simulators/options.ts'
import { runSimulator } from '../simulators/sim.ts'
import { fetchMetric } from './helpers/ground-truth.ts'
import { differences, MESH } from './helpers/mesh-scenario.ts'
import { startPostgres } from './helpers/postgres.ts'
import { fetchJson, freePort, sleep, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'

t.setTimeout(150_000)

/**
 * Real time (the wall clock), 30 s: devices alternate between twice a second and every 10 s (slower
 * than the pipelines' 1 s idle), and a quarter pause for 12 s (longer than a window) after 6 s.
 */
const RUN: SimInput = {
  devices: 8,
  rooms: 3,
  rate: [2, 0.1],
  duration: 30_000,
  seed: 21,
  jitter: 500, // within the pipelines' 2 s lateness: out of order, never late
  lateShare: 0.02,
  lateBy: 20_000,
  duplicateShare: 0.01,
  malformedShare: 0.01,
  pauseShare: 0.25,
  pauseAfter: 6_000,
  pauseFor: 12_000
}

function alive (p: RunningProcess): boolean {
  return p.proc.exitCode === null && p.proc.signalCode === null
}

t.test('two cloud processes on one PostgreSQL equal the ground truth through kills and a database restart', async t => {
  const specs = await loadPipelinesFile(MESH)
  const pg = await startPostgres()
  t.teardown(() => pg.stop())
  const dir = await tmpDir('fogmesh-cloud-pg-')
  const running = new Set<RunningProcess>()
  t.teardown(async () => {
    await Promise.all([...running].filter(alive).map(p => p.stop(5_000).catch(() => p.kill('SIGKILL'))))
    await dir.cleanup()
  })
  const launch = async (args: string[]): Promise<RunningProcess> => {
    const p = await startFogmesh(args, { timeoutMs: 30_000 })
    running.add(p)
    return p
  }
  const ports = await Promise.all([freePort(), freePort()])
  const urls = ports.map(p => `http://127.0.0.1:${p}`)
  const cloud = async (i: number): Promise<RunningProcess> => await launch(['cloud', '--id', `c${i + 1}`, '--http-port', String(ports[i]),
    '--data-dir', join(dir.path, `c${i + 1}`), '--store', pg.url, '--tick', '100ms', '--finalize-after', '30s'])
  const clouds = await Promise.all([cloud(0), cloud(1)])
  const edges = await Promise.all([0, 1].map(async i => await launch(['edge', '--id', `e${i + 1}`, '--pipelines', MESH, '--mqtt-port', '0', '--http-port', '0',
    '--data-dir', join(dir.path, `e${i + 1}`), '--uplink-retry-max', '500ms',
    ...(i === 0 ? urls : [...urls].reverse()).flatMap(u => ['--cloud', u])])))
  const brokers = edges.map(e => e.mqtt!)

  // A warm-up an hour back in event time: the tier knows both edges in every pipeline before the run.
  await runSimulator({ start: Date.now() - 3_600_000, devices: 8, rooms: 3, rate: 4, duration: 4_000, seed: 99, mqtt: brokers })
  const knows = async (base: string): Promise<boolean> => {
    const seen = (await fetchJson(`${base}/v1/mesh`)).body.edges as Array<{ id: string, watermarks: Record<string, string> }>
    return ['e1', 'e2'].every(id => Object.keys(seen.find(e => e.id === id)?.watermarks ?? {}).length === specs.length)
  }
  await waitFor(() => knows(clouds[1].http), { timeoutMs: 15_000, message: 'the tier hearing from both edges in every pipeline' })

  // The run, with the faults on a schedule beside it.
  const simulation = runSimulator({ ...RUN, mqtt: brokers, pipelines: specs })
  const faults = (async () => {
    await sleep(5_000)
    clouds[0].kill('SIGKILL')
    await clouds[0].exited
    await sleep(2_000)
    clouds[0] = await cloud(0)
    await sleep(4_000)
    clouds[1].kill('SIGKILL')
    await clouds[1].exited
    await sleep(1_000)
    clouds[1] = await cloud(1)
    await sleep(3_000)
    await pg.pause()
    await sleep(2_000)
    await pg.resume()
  })()
  const [sim] = await Promise.all([simulation, faults])
  const truth = sim.truth!
  t.ok(Object.values(truth.pipelines['room-temp'].edges).every(e => e.accepted > 0), 'both edges accepted readings')

  // A tail a little ahead closes the last windows at once; its windows are left out.
  await runSimulator({ start: Date.now() + 60_000, devices: 8, rooms: 3, rate: 4, duration: 2_000, seed: 98, mqtt: brokers })
  const range = { from: sim.origin - 600_000, to: sim.origin + RUN.duration! }

  for (const [i, c] of clouds.entries()) {
    let last: string[] = ['never checked']
    await waitFor(async () => {
      try {
        last = await differences(c.http, specs, p => truth.pipelines[p].merged!.results, undefined, range)
      } catch (err) {
        last = [`cannot read the results: ${(err as Error).message}`]
      }
      return last.length === 0
    }, { timeoutMs: 30_000, intervalMs: 500, message: `cloud c${i + 1} equal to the truth` }).catch(() => {})
    t.same(last.slice(0, 10), [], `cloud c${i + 1}'s results equal the ground truth`)
  }
  // Both processes answer from the same store: the very same results.
  for (const spec of specs) {
    const q = `/v1/aggregates/${spec.name}?limit=10000&from=${range.from}&to=${range.to}`
    t.same((await fetchJson(clouds[0].http + q)).body, (await fetchJson(clouds[1].http + q)).body, `${spec.name}: c1 and c2 serve the same results`)
  }
  for (const c of clouds) {
    t.equal((await fetchMetric(c.http, 'fogmesh_store_up')).get(''), 1, `${c.id}: the store is up again`)
    t.ok(c.stderr.some(l => l.includes('store.unavailable')) && c.stderr.some(l => l.includes('store.recovered')), `${c.id}: logged the store going away and coming back`)
  }
  t.ok(urls.every(u => clouds.some(c => c.http === u)), 'the clouds came back on their ports')
  // c2 was killed after c1 came back: the edges moved to c1, whichever of the two they began with.
  t.ok(((await fetchMetric(clouds[0].http, 'fogmesh_batches_received_total')).get('{role="edge"}') ?? 0) > 0, 'c1 took edge batches after its restart')
})

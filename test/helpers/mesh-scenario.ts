/**
 * The mesh scenario the end-to-end tests share: a cloud sink, a fog coordinator forwarding to it and two
 * edge agents (embedded brokers) fed by the simulator, which partitions the devices over the edges; a
 * warm-up so that every tier knows every edge, the edges held active until the main run (see
 * simulators/hold.ts), and comparisons of every tier with the simulator's ground truth.
 */
import { join } from 'node:path'
import type { Test } from 'tap'
import type { PipelineSpec } from '../../core/pipeline/spec.ts'
import { holdActive } from '../../simulators/hold.ts'
import type { Hold } from '../../simulators/hold.ts'
import { runSimulator } from '../../simulators/sim.ts'
import type { SimInput } from '../../simulators/options.ts'
import type { SimSummary } from '../../simulators/sim.ts'
import type { WindowResult as TruthResult } from '../../simulators/truth.ts'
import { compareResults, fetchMetric, fetchResults } from './ground-truth.ts'
import { fetchJson, freePort, startFogmesh, tmpDir, waitFor } from './process.ts'
import type { RunningProcess } from './process.ts'

export const MESH = new URL('../fixtures/mesh.yaml', import.meta.url).pathname
export const START = Date.UTC(2026, 0, 1)

/** About 1,150 readings over 36 s of event time; as fast as the brokers take them unless `speed` is set. */
export const RUN: SimInput = {
  start: START,
  devices: 8,
  rooms: 3,
  rate: 4,
  duration: 36_000,
  seed: 3,
  jitter: 1_500, // within the pipelines' 2 s lateness: out of order, never late
  lateShare: 0.02,
  lateBy: 20_000,
  duplicateShare: 0.01,
  malformedShare: 0.01
}
/**
 * Short runs an hour of event time before and after the main one. A merge tier waits only for edges
 * it has heard from, so in a mesh that starts from nothing the first edge to report could get windows
 * finalized without the other (then revised): the warm-up makes every tier know every edge first. And
 * an edge's watermark stops at its own last reading, so without time moving on the other edge's last
 * windows would be final only after --finalize-after: the tail moves both edges' watermarks past the
 * main run. Their windows are left out of the comparisons.
 */
const WARM_UP: SimInput = { start: START - 3_600_000, devices: 8, rooms: 3, rate: 4, duration: 6_000, seed: 99 }
/**
 * Readings at real-time pace after the warm-up, until the main run starts: the pipelines' idle is 1 s,
 * and edges idle when the main run is published all at once would race (see simulators/hold.ts).
 */
const HOLD: SimInput = { start: WARM_UP.start! + WARM_UP.duration!, devices: 8, rooms: 3, rate: 4, seed: 97 }
export const TAIL: SimInput = { start: START + 3_600_000, devices: 8, rooms: 3, rate: 4, duration: 2_000, seed: 98 }
/** Longest wait for a tier to equal the truth. */
const EXACT_WITHIN = 10_000
/** Results of the main run start in [MAIN_FROM, MAIN_TO) (its late readings go back 20 s at most). */
export const MAIN_FROM = START - 600_000
export const MAIN_TO = START + 600_000

export interface MeshOptions {
  /** The pipelines file of the fog and the edges; default the mesh fixture. */
  pipelines?: string
  /**
   * Flags that make every role join the mesh (e.g. --mesh-port 0 and short heartbeats): the fog starts
   * first, and the cloud and the edges are given its mesh address to bootstrap from.
   */
  mesh?: string[]
  /** Runs after every node is up and before the warm-up (e.g. deploys pipelines). */
  beforeWarmUp?: (mesh: Mesh) => Promise<void>
  /** Extra flags, after (and overriding) the defaults below; the edges' may differ per edge (0, 1). */
  cloud?: string[]
  fog?: string[]
  edge?: string[] | ((i: number) => string[])
  /** After the warm-up, stop the fog (SIGTERM): the test brings it back with `startFog`. */
  fogAway?: boolean
  /**
   * Scheme of the fog and cloud URLs the nodes are given: https when the role flags give them
   * certificates (the test process must then trust the site CA for its own reads). Default http.
   */
  scheme?: 'http' | 'https'
}

export interface Mesh {
  /** Where the nodes keep their data dirs. */
  dir: string
  cloud: RunningProcess
  fog: RunningProcess
  edges: RunningProcess[]
  /** The edges' broker URLs when the simulator ran: the truth names the edges by them. */
  brokers: string[]
  startCloud: () => Promise<RunningProcess>
  startFog: () => Promise<RunningProcess>
  startEdge: (i: number) => Promise<RunningProcess>
  /** Ends the readings that keep the edges active after the warm-up: right before the main run. */
  release: () => Promise<void>
}

function alive (p: RunningProcess | undefined): p is RunningProcess {
  return p !== undefined && p.proc.exitCode === null && p.proc.signalCode === null
}

/**
 * Starts the mesh in a temp dir. The cloud and the fog get fixed ports, so that after a restart on the
 * same data dir the tiers below find them again. Everything is stopped (or killed) at teardown.
 */
export async function startMesh (t: Test, opts: MeshOptions = {}): Promise<Mesh> {
  const dir = await tmpDir('fogmesh-mesh-')
  const running = new Set<RunningProcess>()
  t.teardown(async () => {
    await Promise.all([...running].filter(alive).map(p => p.stop(5_000).catch(() => p.kill('SIGKILL'))))
    await dir.cleanup()
  })
  const launch = async (args: string[]): Promise<RunningProcess> => {
    const p = await startFogmesh(args)
    running.add(p)
    return p
  }
  const [cloudPort, fogPort] = await Promise.all([freePort(), freePort()])
  const scheme = opts.scheme ?? 'http'
  const cloudUrl = `${scheme}://127.0.0.1:${cloudPort}`
  const fogUrl = `${scheme}://127.0.0.1:${fogPort}`
  // The cloud learns the pipelines from the fog's batches; the fog and the edges read the file. The
  // merge tiers' --finalize-after is longer than any tier stays away here: windows are final by
  // watermarks (the cloud, on failover, by the fog's), never by giving up on a tier.
  const pipelines = opts.pipelines ?? MESH
  // In the mesh, everyone else joins through the fog's address (known once it runs).
  const meshArgs = (): string[] => opts.mesh === undefined ? [] : [...opts.mesh, ...(mesh.fog?.mesh === undefined ? [] : ['--bootstrap', mesh.fog.mesh])]
  const cloudArgs = () => ['cloud', '--id', 'c1', '--http-port', String(cloudPort), '--data-dir', join(dir.path, 'cloud'),
    '--tick', '100ms', '--finalize-after', '30s', ...meshArgs(), ...opts.cloud ?? []]
  const fogArgs = () => ['fog', '--id', 'f1', '--http-port', String(fogPort), '--data-dir', join(dir.path, 'fog'), '--pipelines', pipelines,
    '--cloud', cloudUrl, '--tick', '100ms', '--finalize-after', '30s', '--uplink-retry-max', '500ms', ...opts.mesh ?? [], ...opts.fog ?? []]
  const edgeArgs = (i: number) => ['edge', '--id', `e${i + 1}`, '--pipelines', pipelines, '--mqtt-port', '0', '--http-port', '0',
    '--data-dir', join(dir.path, `e${i + 1}`), '--fog', fogUrl, '--cloud', cloudUrl, '--failover-after', '2s', '--uplink-retry-max', '500ms',
    ...meshArgs(), ...typeof opts.edge === 'function' ? opts.edge(i) : opts.edge ?? []]
  const mesh = {
    dir: dir.path,
    edges: [] as RunningProcess[],
    brokers: [] as string[],
    startCloud: async () => (mesh.cloud = await launch(cloudArgs())),
    startFog: async () => (mesh.fog = await launch(fogArgs())),
    startEdge: async (i: number) => (mesh.edges[i] = await launch(edgeArgs(i)))
  } as Mesh
  if (opts.mesh !== undefined) await mesh.startFog()
  await Promise.all([mesh.startCloud(), ...opts.mesh === undefined ? [mesh.startFog()] : [], mesh.startEdge(0), mesh.startEdge(1)])
  mesh.brokers = mesh.edges.map(e => e.mqtt!)
  await opts.beforeWarmUp?.(mesh)
  const hold = await warmUp(mesh)
  mesh.release = hold.release
  t.teardown(async () => await hold.release().catch(() => {}))
  if (opts.fogAway === true) await mesh.fog.stop()
  return mesh
}

/**
 * Runs the warm-up, holds the edges active from its last reading on (see HOLD), and waits until the
 * fog knows both edges, and the cloud the fog, in every pipeline the fog has.
 */
async function warmUp (mesh: Mesh): Promise<Hold> {
  await runSimulator({ ...WARM_UP, mqtt: mesh.brokers })
  const hold = holdActive({ ...HOLD, mqtt: mesh.brokers })
  const pipelines = ((await fetchJson(`${mesh.fog.http}/v1/pipelines`)).body.pipelines as unknown[]).length
  const knows = async (base: string, ids: string[]) => {
    const edges = (await fetchJson(`${base}/v1/mesh`)).body.edges as Array<{ id: string, watermarks: Record<string, string> }>
    return ids.every(id => Object.keys(edges.find(e => e.id === id)?.watermarks ?? {}).length === pipelines)
  }
  await waitFor(() => knows(mesh.fog.http, ['e1', 'e2']), { timeoutMs: 10_000, message: 'the fog hearing from both edges in every pipeline' })
  await waitFor(() => knows(mesh.cloud.http, ['e1', 'e2', 'f1']), { timeoutMs: 10_000, message: 'the cloud hearing from the fog in every pipeline' })
  return hold
}

/** The main run (its summary has the truth), then the tail. */
export async function simulate (mesh: Mesh, specs: PipelineSpec[], over: SimInput = {}): Promise<SimSummary> {
  await mesh.release()
  const sim = await runSimulator({ ...RUN, mqtt: mesh.brokers, pipelines: specs, ...over })
  await runSimulator({ ...TAIL, mqtt: mesh.brokers })
  return sim
}

export async function metric (base: string, name: string, labels = ''): Promise<number> {
  return (await fetchMetric(base, name)).get(labels) ?? 0
}

/** Windows starting in [from, to) are the main run's; the others (warm-up, hold, tail) are left out. */
export interface Range { from: number, to: number }
const MAIN: Range = { from: MAIN_FROM, to: MAIN_TO }

/** Every difference between a tier's final results and `want`, pipeline by pipeline. */
export async function differences (base: string, specs: PipelineSpec[], want: (pipeline: string) => TruthResult[], sources?: number, range = MAIN): Promise<string[]> {
  const out: string[] = []
  for (const spec of specs) {
    const served = (await fetchResults(base, spec.name)).filter(r => Date.parse(r.start) >= range.from && Date.parse(r.start) < range.to)
    out.push(...compareResults(spec, served, want(spec.name), sources === undefined ? {} : { sources }))
  }
  return out
}

/**
 * Polls until a tier's results equal the truth (every expected window final, nothing else final), then
 * asserts it; on a timeout the assertion shows what still differs.
 */
async function expectExact (t: Test, what: string, check: () => Promise<string[]>, timeoutMs = EXACT_WITHIN): Promise<void> {
  let last: string[] = ['never checked']
  try {
    await waitFor(async () => {
      try {
        last = await check()
      } catch (err) {
        last = [`cannot read the results: ${(err as Error).message}`]
      }
      return last.length === 0
    }, { timeoutMs, intervalMs: 250, message: what })
  } catch {}
  const shown = last.length > 8 ? [...last.slice(0, 8), `… and ${last.length - 8} more`] : last
  t.same(shown, [], `${what} equal the ground truth`)
}

export async function expectEdgesExact (t: Test, mesh: Mesh, specs: PipelineSpec[], sim: SimSummary, range = MAIN): Promise<void> {
  for (const [i, edge] of mesh.edges.entries()) {
    await expectExact(t, `edge e${i + 1}'s results`, () => differences(edge.http, specs, p => sim.truth!.pipelines[p].edges[mesh.brokers[i]].results, 1, range))
  }
}

export async function expectMergedExact (t: Test, tier: 'fog' | 'cloud', base: string, specs: PipelineSpec[], sim: SimSummary, range = MAIN): Promise<void> {
  await expectExact(t, `the ${tier}'s results`, () => differences(base, specs, p => sim.truth!.pipelines[p].merged!.results, undefined, range))
}

export async function expectMergedExactOf (t: Test, tier: 'fog' | 'cloud', base: string, specs: PipelineSpec[], want: (pipeline: string) => TruthResult[]): Promise<void> {
  await expectExact(t, `the ${tier}'s results`, () => differences(base, specs, want))
}

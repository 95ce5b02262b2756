// An edge run for the sink tests: a real edge process with `sinks:` in its config file, fed by the
// simulator; its served results are checked against the ground truth, and the sink targets are then
// compared with the same truth.
import { join } from 'node:path'
import type { Test } from 'tap'
import { stringify } from 'yaml'
import { writeFile } from 'node:fs/promises'
import { loadPipelinesFile } from '../../core/pipeline/parse.ts'
import type { PipelineSpec } from '../../core/pipeline/spec.ts'
import { runSimulator } from '../../simulators/sim.ts'
import type { SimInput } from '../../simulators/options.ts'
import type { TruthFile, WindowResult as TruthResult } from '../../simulators/truth.ts'
import { compareResults, fetchMetric, fetchResults } from './ground-truth.ts'
import type { ServedResult } from './ground-truth.ts'
import { startFogmesh, tmpDir, waitFor } from './process.ts'
import type { RunningProcess } from './process.ts'

export const SINK_PIPELINES = new URL('../fixtures/sinks-pipelines.yaml', import.meta.url).pathname

export const SINK_RUN: SimInput = {
  start: Date.UTC(2026, 0, 1),
  devices: 6,
  rooms: 3,
  rate: 4,
  duration: 40_000,
  seed: 11,
  jitter: 1_500,
  lateShare: 0.03,
  lateBy: 8_000,
  duplicateShare: 0.01,
  malformedShare: 0.01
}

export interface EdgeWithSinks {
  edge: RunningProcess
  specs: PipelineSpec[]
  dataDir: string
  configFile: string
  /** Starts the edge (again) with the same config and data dir. */
  restart: () => Promise<RunningProcess>
}

/** Starts a fog (or the cloud) with `sinks:` in its config file (it learns the pipelines from the edges' batches). */
export async function startFogWithSinks (t: Test, sinks: unknown[], role: 'fog' | 'cloud' = 'fog'): Promise<RunningProcess> {
  const dir = await tmpDir(`fogmesh-sinks-${role}-`)
  const configFile = join(dir.path, `${role}.yaml`)
  await writeFile(configFile, stringify({ sinks }))
  const fog = await startFogmesh([role, '--id', `${role}1`, '--config', configFile, '--http-port', '0', '--data-dir', join(dir.path, 'data'), '--finalize-after', '5s'])
  t.teardown(async () => {
    if (fog.proc.exitCode === null) await fog.stop().catch(() => fog.kill('SIGKILL'))
    await dir.cleanup()
  })
  return fog
}

/**
 * A fog's or the cloud's results against the truth (the edge's windows): the same windows and values;
 * the revision is the tier's own (an edge's late revisions that arrive before the fog finalizes are
 * in its revision 0), so it is left out.
 */
export function compareTier (spec: PipelineSpec, served: ServedResult[], truth: TruthResult[]): string[] {
  return compareResults(spec, served.map(r => ({ ...r, revision: 0 })), truth.map(r => ({ ...r, revision: 0 })), { sources: 1 })
}

/** Waits until a tier serves every final window of the truth, and checks them against it. */
export async function servesTruth (t: Test, base: string, specs: PipelineSpec[], truth: TruthFile): Promise<void> {
  for (const spec of specs) {
    const want = truthOf(truth, spec.name)
    await waitFor(async () => (await fetchResults(base, spec.name)).filter(r => r.final).length >= want.length, { timeoutMs: 40_000, message: `${spec.name}: ${want.length} final windows at ${base}` })
    t.same(compareTier(spec, await fetchResults(base, spec.name), want), [], `${spec.name}: ${base} serves the ground truth`)
  }
}

export async function startEdgeWithSinks (t: Test, sinks: unknown[], env: Record<string, string> = {}, extra: string[] = []): Promise<EdgeWithSinks> {
  const dir = await tmpDir('fogmesh-sinks-')
  const configFile = join(dir.path, 'edge.yaml')
  await writeFile(configFile, stringify({ sinks }))
  const dataDir = join(dir.path, 'data')
  const args = ['edge', '--id', 'e1', '--config', configFile, '--pipelines', SINK_PIPELINES, '--http-port', '0', '--mqtt-port', '0', '--data-dir', dataDir, ...extra]
  const run: EdgeWithSinks = {
    edge: await startFogmesh(args, { env }),
    specs: await loadPipelinesFile(SINK_PIPELINES),
    dataDir,
    configFile,
    restart: async () => {
      run.edge = await startFogmesh(args, { env })
      return run.edge
    }
  }
  t.teardown(async () => {
    if (run.edge.proc.exitCode === null) await run.edge.stop().catch(() => run.edge.kill('SIGKILL'))
    await dir.cleanup()
  })
  return run
}

/** Runs the simulator into the edge, waits for every final window, and checks the served ones against the truth. */
export async function feed (t: Test, run: EdgeWithSinks, input: Partial<SimInput> = {}): Promise<TruthFile> {
  const sim = await runSimulator({ ...SINK_RUN, ...input, mqtt: [run.edge.mqtt!], pipelines: run.specs })
  const truth = sim.truth!
  for (const spec of run.specs) {
    const want = truthOf(truth, spec.name)
    await waitFor(async () => (await fetchResults(run.edge.http, spec.name)).filter(r => r.final).length >= want.length, { timeoutMs: 35_000, message: `${spec.name}: ${want.length} final windows` })
    t.same(compareResults(spec, await fetchResults(run.edge.http, spec.name), want, { sources: 1 }), [], `${spec.name}: the edge serves the ground truth`)
  }
  return truth
}

export function truthOf (truth: TruthFile, pipeline: string): TruthResult[] {
  return Object.values(truth.pipelines[pipeline].edges)[0].results
}

/** A sink metric of the edge: fogmesh_sink_<name>{sink="…"}. */
export async function sinkMetric (base: string, name: string, sink: string): Promise<number> {
  return (await fetchMetric(base, `fogmesh_sink_${name}`)).get(`{sink="${sink}"}`) ?? 0
}

/** Waits until the sink's queue is empty and it has delivered at least `atLeast`. */
export async function drained (base: string, sink: string, atLeast = 1, timeoutMs = 40_000): Promise<void> {
  await waitFor(async () => await sinkMetric(base, 'pending', sink) === 0 && await sinkMetric(base, 'delivered_total', sink) >= atLeast,
    { timeoutMs, intervalMs: 250, message: `sink ${sink} to deliver everything` })
}

/** Of several results per window (revisions), the highest. */
export function latest (results: ServedResult[]): ServedResult[] {
  const by = new Map<string, ServedResult>()
  for (const r of results) {
    const id = `${r.key}@${r.start}..${r.end}`
    const held = by.get(id)
    if (held === undefined || r.revision >= held.revision) by.set(id, r)
  }
  return [...by.values()]
}

export { compareResults }

/**
 * The edge agent on arm64, the Raspberry Pi's architecture: Node for arm64 under qemu-user (see
 * helpers/arm64.ts) runs `bin/fogmesh.js edge`, the simulator here (native) feeds its embedded broker
 * over loopback, and its results must equal the ground truth. A dependency with a native addon and
 * no JavaScript fallback cannot load there, so this fails if one slips in. qemu costs 10–30× in
 * speed, so the run is small: 4 devices, 20 s of event time.
 */
import { execFile } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import { runSimulator } from '../simulators/sim.ts'
import type { SimInput } from '../simulators/options.ts'
import { arm64Command } from './helpers/arm64.ts'
import { compareResults, fetchResults } from './helpers/ground-truth.ts'
import { fogmeshBin, repoRoot, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import { beforeTail, publishTail, tailOf } from './helpers/tail.ts'

const run = promisify(execFile)
const ALL_WINDOWS = new URL('fixtures/all-windows.yaml', import.meta.url).pathname
const START = Date.UTC(2026, 0, 1)
const TAIL = tailOf(START)

// The launcher would re-exec Node to add its V8 flags; under qemu-user without binfmt an arm64 Node
// cannot exec itself (ENOEXEC), so it runs in-process and is given the flags here instead.
const ENV = { FOGMESH_NO_REEXEC: '1' }
const V8_FLAGS = ['--max-semi-space-size=4']

const RUN: SimInput = {
  start: START,
  devices: 4,
  rooms: 2,
  rate: 5,
  duration: 20_000,
  seed: 7,
  jitter: 1_500, // within every pipeline's 2s lateness: out of order, never late
  lateShare: 0.02,
  lateBy: 30_000,
  duplicateShare: 0.01,
  malformedShare: 0.02
}

t.test('edge agent on arm64 (qemu-user): every window kind matches the ground truth', async t => {
  const began = Date.now()
  const { command, version } = await arm64Command()
  const node = [...command, ...V8_FLAGS]

  const probeStart = Date.now()
  const probe = await run(command[0], [...command.slice(1), '-p', 'process.arch + " " + process.version'], { timeout: 60_000 })
  t.equal(probe.stdout.trim(), `arm64 v${version}`, 'Node for arm64 runs under qemu-user')
  const cli = await run(command[0], [...command.slice(1), ...V8_FLAGS, fogmeshBin, '--version'], { timeout: 60_000, cwd: repoRoot, env: { ...process.env, ...ENV } })
  t.match(cli.stdout, new RegExp(`^fogmesh \\S+ \\(node v${version.replaceAll('.', '\\.')}\\)`), 'the launcher runs under it')

  const probed = Date.now()

  const dir = await tmpDir('fogmesh-arm64-')
  t.teardown(() => dir.cleanup())
  // all-windows.yaml with a longer idle: qemu's pauses (start-up, compilation, GC) must not pass for
  // a sensor pause. The tail reading closes the run's windows instead of the wall clock.
  const pipelines = join(dir.path, 'pipelines.yaml')
  await writeFile(pipelines, (await readFile(ALL_WINDOWS, 'utf8')).replaceAll('idle: 1s', 'idle: 5m'))
  const specs = await loadPipelinesFile(pipelines)
  t.same(specs.map(s => s.window.kind), ['tumbling', 'hopping', 'session', 'count'], 'every window kind')

  const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', pipelines, '--http-port', '0', '--mqtt-port', '0', '--data-dir', join(dir.path, 'data')],
    { command: node, env: ENV, timeoutMs: 60_000 })
  t.teardown(async () => {
    if (edge.proc.exitCode === null) await edge.stop(30_000).catch(() => edge.kill('SIGKILL'))
  })
  const ready = Date.now()
  t.comment(`arm64 edge: node and launcher probes ${((probed - probeStart) / 1000).toFixed(1)} s, edge start-up ${((ready - probed) / 1000).toFixed(1)} s`)

  const sim = await runSimulator({ ...RUN, mqtt: [edge.mqtt!], pipelines: specs })
  const truth = sim.truth!
  t.ok(sim.stats.late > 0 && sim.stats.duplicates > 0 && Object.keys(sim.stats.malformed).length > 0, 'the run has late, duplicate and malformed readings')
  await publishTail(edge.mqtt!, TAIL)

  // The truth names the simulator's one broker as the edge.
  const wanted = (name: string) => Object.values(truth.pipelines[name].edges)[0].results
  const results = async (name: string) => beforeTail(await fetchResults(edge.http, name), TAIL)
  for (const spec of specs) {
    const want = wanted(spec.name).length
    await waitFor(async () => (await results(spec.name)).filter(r => r.final).length >= want,
      { timeoutMs: 60_000, intervalMs: 250, message: `${spec.name}: ${want} final windows` })
  }
  const problems: string[] = []
  for (const spec of specs) {
    problems.push(...compareResults(spec, await results(spec.name), wanted(spec.name), { sources: 1 }))
  }
  t.same(problems, [], 'served results equal the ground truth')
  const done = Date.now()

  // Guest libraries are mapped into the qemu process: no native addon may be among them.
  const maps = await readFile(`/proc/${edge.proc.pid}/maps`, 'utf8')
  t.ok(maps.includes(command[3]), 'the maps read are the arm64 Node\'s')
  const addons = [...new Set(maps.split('\n').map(l => l.split(/\s+/)[5] ?? '').filter(f => f.endsWith('.node')))]
  t.same(addons, [], 'no native addon loaded')

  t.equal(await edge.stop(30_000), 0, 'SIGTERM stops the agent cleanly')
  t.comment(`arm64 edge: ${sim.stats.messages} messages to results ${((done - ready) / 1000).toFixed(1)} s, total ${((Date.now() - began) / 1000).toFixed(1)} s`)
})

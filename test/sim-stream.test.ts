// The simulator streams: the truth computed as messages go equals the truth of the whole streams, for
// the seeds earlier tests and scenarios use; and a long run needs memory for its open windows only,
// its results going to disk as they are final.
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { platform } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { generate } from '../simulators/generator.ts'
import { resolveSimOptions } from '../simulators/options.ts'
import { runSimulator } from '../simulators/sim.ts'
import { computeTruth } from '../simulators/truth.ts'

const START = Date.UTC(2024, 0, 1)
const FIXTURES = ['../examples/pipelines.yaml', './fixtures/all-windows.yaml', './fixtures/mesh.yaml'].map(f => new URL(f, import.meta.url).pathname)

t.test('a seed gives the messages it gave before generation streamed', async t => {
  const o = resolveSimOptions({ start: START, seed: 7, devices: 6, rate: 3, duration: 20_000, jitter: 2000, lateShare: 0.1, duplicateShare: 0.1, malformedShare: 0.1, format: 'cbor' })
  const g = generate({ ...o, brokers: 2 }, START)
  const h = createHash('sha256')
  for (const s of g.streams) for (const m of s) h.update(`${m.broker} ${m.topic} ${m.due} ${Buffer.from(m.payload).toString('base64')}\n`)
  // computed with the generator that built each device's run whole and sorted them
  t.equal(h.digest('hex'), 'e0531318070ce2ce8900bf1d7e51a616a1f3776a9ffd7d57ae847e496023ab75')
  t.equal(g.stats.messages, 396)
})

t.test('the streamed truth equals the truth of the whole streams, edge after edge', async t => {
  for (const file of FIXTURES) {
    const pipelines = await loadPipelinesFile(file)
    for (const seed of [1, 3, 99]) {
      const sim = await runSimulator({
        dryRun: true, start: START, seed, devices: 9, rooms: 4, rate: 4, duration: 60_000, jitter: 1500, lateShare: 0.05, lateBy: 20_000,
        duplicateShare: 0.02, malformedShare: 0.02, mqtt: ['mqtt://a', 'mqtt://b', 'mqtt://c'], pipelines
      })
      const whole = computeTruth(pipelines, sim.streams, ['mqtt://a', 'mqtt://b', 'mqtt://c'])
      t.same(JSON.parse(JSON.stringify(sim.truth!.pipelines)), JSON.parse(JSON.stringify(whole)), `${file.split('/').pop()}, seed ${seed}`)
      t.equal(sim.truth!.ambiguities, 0)
    }
  }
})

/** Runs a dry run in a child process with a small heap; resolves with its exit code and peak RSS. */
async function dryRunInChild (input: Record<string, unknown>, heapMb: number): Promise<{ code: number | null, vmHwmKb?: number, stderr: string }> {
  const sim = new URL('../simulators/sim.ts', import.meta.url).href
  const code = `
    import { readFileSync } from 'node:fs'
    const { runSimulator } = await import(${JSON.stringify(sim)})
    await runSimulator(${JSON.stringify(input)})
    const m = /VmHWM:\\s+(\\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))
    process.stdout.write(m[1])
  `
  const child = spawn(process.execPath, [`--max-old-space-size=${heapMb}`, '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (b: Buffer) => { out += b.toString() })
  child.stderr.on('data', (b: Buffer) => { err += b.toString() })
  const exit = await new Promise<number | null>(resolve => child.on('close', resolve))
  return { code: exit, vmHwmKb: out === '' ? undefined : Number(out), stderr: err.slice(-2000) }
}

t.test('a long dry run stays within a small memory bound', { timeout: 90_000, skip: platform() !== 'linux' && 'reads /proc/self/status' }, async t => {
  // 600,000 messages. Generated whole, as before, they and their windows took about 900 MB (they
  // could not run in this heap at all); streamed, only the open windows of the truth stay.
  const pipeline = {
    name: 'p', from: 'sensors/+room/temperature', format: 'json', timestamp: 'ts', key: ['room'], window: { kind: 'tumbling', size: 10_000 },
    lateness: 2000, idle: 5000, maxFuture: 300_000, late: 'drop', lateHorizon: 300_000, emit: [{ kind: 'upstream' }], version: 1,
    select: [{ name: 'n', fn: 'count', params: [] }, { name: 'mean', fn: 'avg', arg: 'value', params: [] }]
  }
  const run = await dryRunInChild({ dryRun: true, collect: false, start: START, devices: 200, rate: 10, duration: 300_000, pipelines: [pipeline] }, 96)
  t.equal(run.code, 0, run.stderr)
  t.ok(run.vmHwmKb !== undefined && run.vmHwmKb < 300_000, `peak RSS ${run.vmHwmKb} kB`)
})

t.test('a truth file too big for the heap is written from disk, as the truth in memory would be', { timeout: 90_000, skip: platform() !== 'linux' && 'reads /proc/self/status' }, async t => {
  // 75,000 readings, about a window a second per device: 140,000 results (each edge's and the merged
  // view's). Kept in memory until the end, as they were, they do not fit in the child's 48 MB heap (it
  // runs out of memory); written out as they are final, they do. Late readings put some count windows
  // behind results already written.
  const perSecond = {
    name: 'per-second', from: 'sensors/+room/temperature', format: 'json', timestamp: 'ts', key: ['device'], window: { kind: 'tumbling', size: 1000 },
    lateness: 1000, idle: 5000, maxFuture: 300_000, late: 'drop', lateHorizon: 300_000, emit: [{ kind: 'upstream' }], version: 1,
    select: [{ name: 'n', fn: 'count', params: [] }, { name: 'mean', fn: 'avg', arg: 'value', params: [] }]
  }
  const batches = { ...perSecond, name: 'batches', window: { kind: 'count', count: 7 }, select: [{ name: 'first', fn: 'first', arg: 'ts', params: [] }] }
  const dir = t.testdir()
  const input = { dryRun: true, start: START, devices: 500, rate: 1, duration: 150_000, jitter: 500, lateShare: 0.01, lateBy: 20_000, pipelines: [perSecond, batches] }
  const run = await dryRunInChild({ ...input, collect: false, truth: join(dir, 'truth.json') }, 48)
  t.equal(run.code, 0, run.stderr)
  t.same(await readdir(dir), ['truth.json'], 'the results written as the run went are gone')
  const sim = await runSimulator({ ...input, pipelines: [perSecond, batches] as PipelineSpec[] })
  const results = sim.truth!.pipelines['per-second'].merged!.results.length
  t.ok(results > 65_000, `${results} merged results`)
  const text = (json: string): string => json.replace(/"wallStart": \d+/, '')
  t.ok(text(await readFile(join(dir, 'truth.json'), 'utf8')) === text(JSON.stringify(sim.truth, null, 2) + '\n'), 'the same bytes')
})

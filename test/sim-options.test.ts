// The simulator's options for realistic rates: rate lists and slow devices, pauses, bad clocks,
// scenario presets, on the command line too.
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { countSelect, pipelineSpec } from './helpers/specs.ts'
import { parseSimArgs, simCommand } from '../simulators/cli.ts'
import { generate } from '../simulators/generator.ts'
import { resolveSimOptions, SIM_SCENARIOS } from '../simulators/options.ts'
import type { SimInput } from '../simulators/options.ts'
import { runSimulator } from '../simulators/sim.ts'

const START = Date.UTC(2024, 0, 1)

function gen (input: SimInput = {}, brokers = 1) {
  const o = resolveSimOptions({ start: START, ...input })
  return generate({ ...o, brokers }, START)
}

const dues = (g: ReturnType<typeof gen>, device: string) => g.streams.flat().filter(m => m.device === device).map(m => m.due - START)

t.test('a list of rates is handed out round robin; slow devices keep their own phase', async t => {
  const g = gen({ devices: 6, rate: [2, 0.1, 1 / 60], duration: 120_000 })
  t.equal(dues(g, 'd0').length, 240)
  t.equal(dues(g, 'd3').length, 240)
  for (const d of ['d1', 'd4']) {
    const ds = dues(g, d)
    t.equal(ds.length, 12, `${d}: one every 10 s`)
    t.ok(ds.slice(1).every((due, i) => Math.abs(due - ds[i] - 10_000) <= 1))
  }
  for (const d of ['d2', 'd5']) t.equal(dues(g, d).length, 2, `${d}: one a minute`)
  // The first device's readings are the same as with its rate alone: one random stream per device
  const alone = gen({ devices: 1, rate: 2, duration: 120_000 })
  t.same(dues(g, 'd0'), dues(alone, 'd0'))
  // A device slower than the run covers gets the readings its phase puts in the run, not floor(rate × duration)
  const slow = gen({ devices: 40, rate: 1 / 60, duration: 90_000 })
  const counts = new Set(Array.from({ length: 40 }, (_, i) => dues(slow, `d${i}`).length))
  t.same([...counts].sort(), [1, 2], 'one or two readings in 90 s, by phase')
  t.ok(slow.streams[0].every(m => m.due - START < 90_000))
  t.ok(Array.from({ length: 40 }, (_, i) => dues(slow, `d${i}`)).every(ds => ds.length === 1 ? ds[0] >= 30_000 : ds[1] - ds[0] >= 59_999),
    'a device with one reading had its phase past 30 s')
  t.throws(() => resolveSimOptions({ rate: [1, 0] }), /rate must be > 0/)
  t.throws(() => resolveSimOptions({ rate: [] }), /at least one/)
})

t.test('pausing devices publish for pause-after, are silent for pause-for, and so on; event times stay real', async t => {
  const g = gen({ devices: 4, rate: 2, duration: 200_000, pauseShare: 0.5, pauseAfter: 60_000, pauseFor: 30_000, jitter: 0 })
  const byDevice = [0, 1, 2, 3].map(i => dues(g, `d${i}`))
  const pausing = byDevice.filter(ds => ds.length < 400)
  t.equal(pausing.length, 2, 'half of the devices pause (with this seed)')
  for (const ds of pausing) {
    t.ok(ds.every(d => d % 90_000 < 60_000), 'nothing during a pause')
    t.ok(ds.some(d => d >= 90_000 && d < 91_000), 'back right after the pause')
    t.ok(Math.abs(ds.length - 400 * (60 + 60 + 20) / 200) <= 2)
  }
  t.ok(g.streams[0].every(m => m.reading.ts === m.due), 'event time is real time')
  // The others are untouched by the option
  const plain = gen({ devices: 4, rate: 2, duration: 200_000 })
  const untouched = [0, 1, 2, 3].filter(i => byDevice[i].length === 400)
  t.ok(untouched.every(i => JSON.stringify(dues(plain, `d${i}`)) === JSON.stringify(byDevice[i])))
})

t.test('bad clocks: a share of readings dated future-by ahead, rejected by the oracle and harmless to its watermark', async t => {
  const g = gen({ devices: 20, rate: 5, duration: 60_000, futureShare: 0.05, futureBy: 3_600_000, lateShare: 0.05, lateBy: 20_000 })
  const ahead = g.streams[0].filter(m => m.future === true)
  t.ok(Math.abs(ahead.length / 6000 - 0.05) < 0.015, `future share ${ahead.length / 6000}`)
  t.equal(g.stats.future, ahead.length)
  t.ok(ahead.every(m => m.reading.ts === m.due + 3_600_000 && !m.late))
  // Without the option the same readings (other than the dates) come out
  const plain = gen({ devices: 20, rate: 5, duration: 60_000, lateShare: 0.05, lateBy: 20_000 })
  t.same(g.streams[0].map(m => m.reading.value), plain.streams[0].map(m => m.reading.value))

  const p = pipelineSpec({ select: [countSelect()], lateness: 2000 })
  const sim = await runSimulator({ dryRun: true, devices: 20, rate: 5, duration: 60_000, futureShare: 0.05, pipelines: [p] })
  const e = sim.truth!.pipelines.p.edges['mqtt://127.0.0.1:1883']
  t.equal(e.rejected.future_timestamp, sim.stats.future)
  t.equal(e.late, 0, 'readings dated an hour ahead did not move the watermark')
  t.equal(e.accepted, sim.stats.readings - sim.stats.future)
  t.same(sim.truth!.warnings, [])
})

t.test('scenarios are presets: explicit options win', async t => {
  t.same(resolveSimOptions({ scenario: 'slow' }).rate, [0.1, 1 / 60])
  t.equal(resolveSimOptions({ scenario: 'slow', rate: 3 }).rate[0], 3)
  const pause = resolveSimOptions({ scenario: 'pause', duration: 1000 })
  t.same([pause.pauseShare, pause.pauseAfter, pause.pauseFor, pause.duration], [1, 60_000, 30_000, 1000])
  t.same(resolveSimOptions({ scenario: 'mixed' }).rate, [2, 0.1, 1 / 60])
  t.same([resolveSimOptions({ scenario: 'clock' }).futureShare, resolveSimOptions({ scenario: 'clock' }).futureBy], [0.01, 3_600_000])
  t.throws(() => resolveSimOptions({ scenario: 'busy' as 'slow' }), /scenario must be one of slow, pause, mixed, clock/)
  t.same(Object.keys(SIM_SCENARIOS), ['slow', 'pause', 'mixed', 'clock'])
})

t.test('every scenario in real time: the truth needs no warnings with realistic pipelines', async t => {
  const p = pipelineSpec({ key: ['device'], lateness: 2000, idle: 5000, select: [countSelect()] })
  for (const scenario of ['slow', 'pause', 'mixed', 'clock'] as const) {
    const sim = await runSimulator({ dryRun: true, scenario, devices: 6, speed: 1, pipelines: [p] })
    const e = sim.truth!.pipelines.p.edges['mqtt://127.0.0.1:1883']
    t.same(sim.truth!.warnings, [], `${scenario}: no warnings`)
    t.equal(e.late, 0, `${scenario}: no reading late`)
    t.equal(e.accepted, sim.stats.readings - sim.stats.future, `${scenario}: every reading on time counts`)
  }
})

t.test('cli: the new flags', async t => {
  const { input } = parseSimArgs(['--rate', '2,0.1,0.0166667', '--pause-share', '0.5', '--pause-after', '1m', '--pause-for', '30s',
    '--future-share', '0.01', '--future-by', '2h', '--scenario', 'mixed', '--tolerance', '500ms'])
  t.same([input.rate, input.pauseShare, input.pauseAfter, input.pauseFor, input.futureShare, input.futureBy, input.scenario, input.tolerance],
    [[2, 0.1, 0.0166667], 0.5, 60_000, 30_000, 0.01, 7_200_000, 'mixed', 500])
  t.same(parseSimArgs(['--rate', '5']).input.rate, [5])
  t.throws(() => parseSimArgs(['--rate', '1,x']), /--rate must be a number/)
  t.throws(() => parseSimArgs(['--scenario', 'busy']), /--scenario must be one of/)
})

t.test('cli: an unexpected failure exits 1 with its message', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'fogmesh-sim-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const pipelines = join(dir, 'pipelines.yaml')
  await writeFile(pipelines, 'pipelines:\n  - name: n\n    from: sensors/+room/temperature\n    timestamp: ts\n    window: { tumbling: 10s }\n    select: { n: count() }\n')
  const err: string[] = []
  const out: string[] = []
  const write = process.stdout.write
  const writeErr = process.stderr.write
  process.stdout.write = ((s: string) => { out.push(s); return true }) as typeof process.stdout.write
  process.stderr.write = ((s: string) => { err.push(s); return true }) as typeof process.stderr.write
  let code: number
  try {
    // the truth's path is a directory: writing it fails with EISDIR, which is no error of ours
    code = await simCommand(['--dry-run', '--start', String(START), '--duration', '5s', '--pipelines', pipelines, '--truth', dir])
  } finally {
    process.stdout.write = write
    process.stderr.write = writeErr
  }
  t.equal(code, 1)
  t.match(err.join(''), /^fogmesh sim: .*EISDIR/)
})

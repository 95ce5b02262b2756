// The simulator's generation: determinism, the shape of what it sends, the trouble knobs.
import t from 'tap'
import { countSelect, pipelineSpec } from './helpers/specs.ts'
import { PAYLOAD_DECODERS } from '../core/payload.ts'
import type { PayloadFormat } from '../core/pipeline/spec.ts'
import { generate } from '../simulators/generator.ts'
import type { Message } from '../simulators/generator.ts'
import { resolveSimOptions } from '../simulators/options.ts'
import type { SimInput } from '../simulators/options.ts'
import { MALFORMED_KINDS } from '../simulators/payloads.ts'
import { runSimulator } from '../simulators/sim.ts'
import { Oracle } from '../simulators/truth.ts'

const START = Date.UTC(2024, 0, 1)

function gen (input: SimInput = {}, brokers = 1) {
  const o = resolveSimOptions({ start: START, ...input })
  return generate({ ...o, brokers }, START)
}

const wire = (streams: Message[][]) => streams.map(s => s.map(m => [m.topic, Buffer.from(m.payload).toString('base64')]))

t.test('the same seed gives the same messages; another seed others', async t => {
  const knobs = { jitter: 2000, lateShare: 0.1, duplicateShare: 0.1, malformedShare: 0.1 }
  const a = gen({ seed: 7, ...knobs }, 2)
  const b = gen({ seed: 7, ...knobs }, 2)
  const c = gen({ seed: 8, ...knobs }, 2)
  t.same(wire(a.streams), wire(b.streams))
  t.same(a.stats, b.stats)
  t.not(JSON.stringify(wire(a.streams)), JSON.stringify(wire(c.streams)))
  // devices draw from their own streams: adding devices leaves the others' readings alone
  const more = gen({ seed: 7, devices: 12, ...knobs }, 1)
  const fewer = gen({ seed: 7, devices: 10, ...knobs }, 1)
  const of = (g: typeof more, device: string) => g.streams[0].filter(m => m.device === device).map(m => Buffer.from(m.payload).toString('base64'))
  t.same(of(more, 'd3'), of(fewer, 'd3'))
})

t.test('devices, rooms, topics, brokers and publish order', async t => {
  const g = gen({ devices: 5, rooms: 2, rate: 2, duration: 10_000, topic: 'site/{room}/{device}/t' }, 2)
  t.equal(g.stats.messages, 5 * 2 * 10)
  t.equal(g.stats.readings, 100)
  const wrong = g.streams.flat().filter(m => {
    const i = Number(m.device.slice(1))
    return m.broker !== i % 2 || m.reading.room !== `r${i % 2}` || m.topic !== `site/r${i % 2}/d${i}/t` || m.due < START || m.due >= START + 10_000
  })
  t.same(wrong, [], 'device i is in room r<i % rooms>, on broker i % brokers')
  t.same(new Set(g.streams[0].map(m => m.device)), new Set(['d0', 'd2', 'd4']))
  t.same(new Set(g.streams[1].map(m => m.device)), new Set(['d1', 'd3']))
  t.ok(g.streams.every(s => s.every((m, i) => i === 0 || s[i - 1].due <= m.due)), 'ordered by due time')
  // every device keeps its rate: readings 500 ms apart
  const d0 = g.streams[0].filter(m => m.device === 'd0').map(m => m.due)
  t.equal(d0.length, 20)
  t.ok(d0.slice(1).every((due, i) => Math.abs(due - d0[i] - 500) <= 1))
})

t.test('readings: temperature random walk with negatives, humidity 0..100, 2 decimals', async t => {
  const g = gen({ devices: 10, duration: 60_000 })
  const readings = g.streams[0].map(m => m.reading)
  t.ok(readings.some(r => r.value < 0), 'some temperatures are below zero with the default seed')
  t.ok(readings.some(r => r.value > 15))
  t.ok(readings.every(r => Math.round(r.value * 100) / 100 === r.value))
  t.ok(readings.every(r => r.humidity >= 0 && r.humidity <= 100))
  const d1 = readings.filter(r => r.device === 'd1').map(r => r.value)
  t.ok(d1.slice(1).every((v, i) => Math.abs(v - d1[i]) <= 0.31), 'a walk, not noise')
})

t.test('well-formed payloads decode to the reading in every format', async t => {
  for (const format of ['json', 'cbor', 'text', 'senml'] as PayloadFormat[]) {
    const g = gen({ format, devices: 3, duration: 5000 })
    const decoded = g.streams[0].map(m => PAYLOAD_DECODERS[format](m.payload))
    const expected = g.streams[0].map(({ reading: r }) => [
      format === 'text'
        ? { value: r.value }
        : format === 'senml'
          ? { name: `${r.device}:temp`, value: r.value, unit: 'Cel', time: r.ts / 1000 }
          : { device: r.device, room: r.room, value: r.value, humidity: r.humidity, ts: r.ts }
    ])
    t.same(decoded, expected, format)
  }
})

t.test('jitter and late readings', async t => {
  const g = gen({ devices: 20, rate: 10, duration: 60_000, jitter: 3000, lateShare: 0.1, lateBy: 45_000 })
  const ms = g.streams[0]
  const late = ms.filter(m => m.late)
  t.ok(Math.abs(late.length / ms.length - 0.1) < 0.02, `late share ${late.length / ms.length}`)
  t.equal(g.stats.late, late.length)
  for (const m of ms) {
    const shift = m.due - m.reading.ts - (m.late ? 45_000 : 0)
    if (!(shift >= 0 && shift < 3000)) t.fail(`event time shifted by ${shift}`)
  }
  t.ok(ms.some((m, i) => i > 0 && m.reading.ts < ms[i - 1].reading.ts), 'out of order')
})

t.test('duplicates and malformed shares', async t => {
  const g = gen({ devices: 20, rate: 10, duration: 60_000, duplicateShare: 0.05, malformedShare: 0.1, format: 'cbor' })
  const ms = g.streams[0]
  const originals = ms.filter(m => !m.duplicate)
  t.equal(originals.length, 12_000)
  const dups = ms.filter(m => m.duplicate)
  t.ok(Math.abs(dups.length / 12_000 - 0.05) < 0.01, `duplicate share ${dups.length / 12_000}`)
  ms.forEach((m, i) => {
    if (m.duplicate && !(ms[i - 1].topic === m.topic && Buffer.from(ms[i - 1].payload).equals(m.payload))) t.fail('a duplicate follows its original')
  })
  const bad = originals.filter(m => m.malformed !== undefined)
  t.ok(Math.abs(bad.length / 12_000 - 0.1) < 0.015, `malformed share ${bad.length / 12_000}`)
  t.same(new Set(bad.map(m => m.malformed)), new Set(MALFORMED_KINDS.cbor), 'every kind shows up')
  t.equal(g.stats.readings + bad.length, 12_000)
})

t.test('every malformed message is rejected by a typical pipeline, in every format', async t => {
  for (const format of ['json', 'cbor', 'text', 'senml'] as PayloadFormat[]) {
    const g = gen({ format, devices: 10, rate: 5, duration: 20_000, malformedShare: 0.3, duplicateShare: 0.1 })
    const p = pipelineSpec({
      format,
      timestamp: format === 'text' ? undefined : format === 'senml' ? 'time' : 'ts',
      key: ['room'],
      window: { kind: 'tumbling', size: 5000 },
      select: [{ name: 's', fn: 'sum', arg: 'value', params: [] }]
    })
    const oracle = new Oracle([p], 1)
    for (const m of g.streams[0]) oracle.push(0, m)
    const e = oracle.finish().p.edges['0']
    const refused = Object.values(oracle.refused['0']).reduce((a, b) => a + (b ?? 0), 0)
    const rejected = refused + Object.values(e.rejected).reduce((a, b) => a + (b ?? 0), 0)
    const malformed = g.streams[0].filter(m => m.malformed !== undefined).length
    t.equal(rejected, malformed, `${format}: ${JSON.stringify(e.rejected)}`)
    t.equal(e.accepted + e.late, g.streams[0].length - malformed, format)
  }
})

t.test('option checks', async t => {
  t.throws(() => resolveSimOptions({ lateShare: 1.5 }), /between 0 and 1/)
  t.throws(() => resolveSimOptions({ devices: 0 }), /devices/)
  t.throws(() => resolveSimOptions({ start: 1000 }), /start/)
  t.throws(() => resolveSimOptions({ topic: 'sensors/+/t' }), /wildcards/)
  t.throws(() => resolveSimOptions({ truth: '/tmp/x.json' }), /pipelines/)
  t.throws(() => resolveSimOptions({ mqtt: ['mqtt://a', 'mqtt://a'] }), /once/)
  t.equal(resolveSimOptions({ start: START }).speed, 0, 'as fast as possible with a fixed start')
  t.equal(resolveSimOptions({}).speed, 1, 'real time without')
})

t.test('runSimulator dry run: the truth in memory; a sensor slower than idle keeps its readings', async t => {
  const p = pipelineSpec({ select: [countSelect()] })
  const fast = await runSimulator({ dryRun: true, start: START, devices: 2, duration: 20_000, pipelines: [p] })
  t.equal(fast.elapsedMs, 0)
  t.same(fast.truth?.warnings, [])
  t.same(fast.truth?.pipelines.p.edges['mqtt://127.0.0.1:1883'].results.map(r => r.values.n), [20, 20])
  // One reading every 10 s against idle 5 s: each window closes by the wall clock after its reading,
  // and the next reading (on time) is never late for its own window.
  const lines: string[] = []
  const slow = await runSimulator({ dryRun: true, start: START, speed: 1, devices: 1, rate: 0.1, duration: 60_000, pipelines: [p], log: l => lines.push(l) })
  t.same(slow.truth?.warnings, [])
  t.equal(slow.truth?.ambiguities, 0)
  const e = slow.truth!.pipelines.p.edges['mqtt://127.0.0.1:1883']
  t.same([e.accepted, e.late], [6, 0])
  t.same(e.results.map(r => r.values.n), [1, 1, 1, 1, 1, 1])
  t.equal(lines.length, 1, 'only the summary line')
})

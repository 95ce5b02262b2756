/**
 * The Sparkplug B decoder on its own: births then alias-only data, datatypes, what is refused and
 * counted, death and rebirth requests.
 */
import t from 'tap'
import type { Test } from 'tap'
import { ReadingRejected } from '../core/errors.ts'
import type { PipelineError, RejectReason } from '../core/errors.ts'
import { createDecoder } from '../core/formats/index.ts'
import { REBIRTH_EVERY, sparkplugState } from '../core/formats/sparkplug.ts'
import { pipelineToPlain } from '../core/pipeline/format.ts'
import { parsePipelines } from '../core/pipeline/parse.ts'
import { DataType, decodeSparkplug, encodeSparkplug, REBIRTH_METRIC } from '../core/formats/sparkplug-wire.ts'

function setup () {
  const rejected: RejectReason[] = []
  const published: Array<{ topic: string, payload: Uint8Array }> = []
  let now = 1_000_000
  const decode = createDecoder('sparkplug', {
    reject: r => { rejected.push(r) },
    publish: (topic, payload) => { published.push({ topic, payload }) },
    now: () => now
  })
  return { decode, rejected, published, advance: (ms: number) => { now += ms }, state: sparkplugState(decode)! }
}

const T = Date.UTC(2026, 0, 1)
const nbirth = encodeSparkplug({
  timestamp: T,
  seq: 0,
  metrics: [
    { name: 'bdSeq', datatype: DataType.Int64, longValue: 3 },
    { name: REBIRTH_METRIC, datatype: DataType.Boolean, booleanValue: false },
    { name: 'uptime', alias: 9, datatype: DataType.UInt64, longValue: 2 ** 53 - 1 }
  ]
})
const dbirth = (seq: number) => encodeSparkplug({
  timestamp: T,
  seq,
  metrics: [
    { name: 'temp', alias: 1, datatype: DataType.Float, floatValue: 21.37 },
    { name: 'count', alias: 2, datatype: DataType.Int32, intValue: -5 >>> 0 },
    { name: 'on', alias: 3, datatype: DataType.Boolean, isNull: true },
    { name: 'label', alias: 4, datatype: DataType.String, stringValue: 'a' },
    { name: 'big', alias: 5, datatype: DataType.Int64, longValue: -(2 ** 40) }
  ]
})
function rejectedAs (t: Test, fn: () => unknown, reason: RejectReason, what: string): void {
  try {
    fn()
    t.fail(`${what}: not refused`)
  } catch (err) {
    t.ok(err instanceof ReadingRejected && err.reason === reason, `${what}: ${reason}`)
  }
}

t.test('births then alias-only data resolve to names, datatypes as users expect', async t => {
  const { decode, rejected, state } = setup()
  const birth = decode(nbirth, 'spBv1.0/plant/NBIRTH/gw1')
  t.same(birth.map(r => [r.name, r.value, r.device]), [['bdSeq', 3, ''], [REBIRTH_METRIC, false, ''], ['uptime', 2 ** 53 - 1, '']], 'NBIRTH metrics are readings; 64-bit exact below 2^53')
  const d = decode(dbirth(1), 'spBv1.0/plant/DBIRTH/gw1/press')
  t.same(d.map(r => [r.name, r.value]), [['temp', 21.37], ['count', -5], ['label', 'a'], ['big', -(2 ** 40)]], 'null metrics skipped; Float as written, Int32 and Int64 signed')
  const data = decode(encodeSparkplug({
    timestamp: T + 5_000,
    seq: 2,
    metrics: [{ alias: 1, floatValue: 22.5, timestamp: T + 4_000 }, { alias: 3, booleanValue: true }, { alias: 2, intValue: 7 }]
  }), 'spBv1.0/plant/DDATA/gw1/press')
  t.same(data, [
    { group: 'plant', node: 'gw1', device: 'press', name: 'temp', value: 22.5, timestamp: T + 4_000 },
    { group: 'plant', node: 'gw1', device: 'press', name: 'on', value: true, timestamp: T + 5_000 },
    { group: 'plant', node: 'gw1', device: 'press', name: 'count', value: 7, timestamp: T + 5_000 }
  ], 'the metric\'s timestamp, else the payload\'s; datatypes from the birth')
  t.same(decode(encodeSparkplug({ timestamp: T, seq: 3, metrics: [{ alias: 9, longValue: 5 }] }), 'spBv1.0/plant/NDATA/gw1'), [{ group: 'plant', node: 'gw1', device: '', name: 'uptime', value: 5, timestamp: T }])
  t.same(rejected, [])
  t.equal(state.stats.seqGaps, 0)
  decode(encodeSparkplug({ timestamp: T, seq: 9, metrics: [] }), 'spBv1.0/plant/NDATA/gw1')
  t.equal(state.stats.seqGaps, 1, 'a seq gap is counted')
  t.same(decode(encodeSparkplug({ timestamp: T, seq: 10, metrics: [{ name: 'x', alias: 1, datatype: DataType.Double, doubleValue: 1, isHistorical: true, timestamp: T - 60_000 }] }), 'spBv1.0/plant/NDATA/gw1'),
    [{ group: 'plant', node: 'gw1', device: '', name: 'x', value: 1, timestamp: T - 60_000 }], 'historical metrics by their own time')
})

t.test('unknown alias, data before birth, garbage and wrong topics are refused; rebirth requested at most every 5 s', async t => {
  const { decode, rejected, published, advance, state } = setup()
  rejectedAs(t, () => decode(encodeSparkplug({ timestamp: T, seq: 1, metrics: [{ alias: 1, doubleValue: 1 }] }), 'spBv1.0/plant/NDATA/gw1'), 'sparkplug_no_birth', 'NDATA before NBIRTH')
  t.equal(published.length, 1, 'a rebirth request')
  t.equal(published[0].topic, 'spBv1.0/plant/NCMD/gw1')
  const cmd = decodeSparkplug(published[0].payload)
  t.same(cmd.metrics.map(m => [m.name, m.booleanValue]), [[REBIRTH_METRIC, true]])
  rejectedAs(t, () => decode(encodeSparkplug({ seq: 2, metrics: [{ alias: 1, doubleValue: 1 }] }), 'spBv1.0/plant/DDATA/gw1/d1'), 'sparkplug_no_birth', 'DDATA before any birth')
  t.equal(published.length, 1, 'not asked again within 5 s')
  decode(nbirth, 'spBv1.0/plant/NBIRTH/gw1')
  rejectedAs(t, () => decode(encodeSparkplug({ seq: 1, metrics: [{ alias: 1, doubleValue: 1 }] }), 'spBv1.0/plant/DDATA/gw1/d1'), 'sparkplug_no_birth', 'DDATA before its DBIRTH')
  decode(dbirth(2), 'spBv1.0/plant/DBIRTH/gw1/d1')
  advance(REBIRTH_EVERY)
  const out = decode(encodeSparkplug({ timestamp: T, seq: 3, metrics: [{ alias: 77, doubleValue: 1 }, { alias: 1, floatValue: 2 }] }), 'spBv1.0/plant/DDATA/gw1/d1')
  t.same(out.map(r => r.value), [2], 'the known alias is kept')
  t.same(rejected, ['sparkplug_alias'], 'the unknown one refused on its own')
  t.equal(published.length, 2, 'and a rebirth asked for after 5 s')
  rejectedAs(t, () => decode(encodeSparkplug({ timestamp: T, metrics: [] }).slice(0, 3), 'spBv1.0/plant/DDATA/gw1/d1'), 'parse', 'truncated protobuf')
  rejectedAs(t, () => decode(new Uint8Array([0xff, 0xfe, 1, 2, 3, 4, 5]), 'spBv1.0/plant/DDATA/gw1/d1'), 'parse', 'garbage')
  for (const topic of ['sensors/a/b', 'spBv1.0/plant/DDATA/gw1', 'spBv1.0/plant/NDATA/gw1/x', 'spBv1.0/plant/XDATA/gw1', 'spBv1.0//NDATA/gw1']) {
    rejectedAs(t, () => decode(nbirth, topic), 'sparkplug_topic', topic)
  }
  t.same(decode(nbirth, 'spBv1.0/plant/NCMD/gw1'), [], 'commands carry no readings')
  t.same(decode(new Uint8Array(0), 'spBv1.0/STATE/host1'), [], 'nor does host state')
  t.same(state.status(), [{ group: 'plant', node: 'gw1', device: '', online: true }, { group: 'plant', node: 'gw1', device: 'd1', online: true }])
  decode(encodeSparkplug({ metrics: [{ name: 'bdSeq', datatype: DataType.Int64, longValue: 2 }] }), 'spBv1.0/plant/NDEATH/gw1')
  t.ok(state.status().every(s => s.online), 'the will of an older session (bdSeq 2, born with 3) is ignored')
  decode(encodeSparkplug({ seq: 4 }), 'spBv1.0/plant/DDEATH/gw1/d1')
  t.same(state.status().map(s => s.online), [true, false], 'DDEATH: the device is offline')
  decode(encodeSparkplug({ metrics: [{ name: 'bdSeq', datatype: DataType.Int64, longValue: 3 }] }), 'spBv1.0/plant/NDEATH/gw1')
  t.same(state.status().map(s => s.online), [false, false], 'NDEATH: the node and its devices are offline')
  decode(nbirth, 'spBv1.0/plant/NBIRTH/gw1')
  t.same(state.status(), [{ group: 'plant', node: 'gw1', device: '', online: true }], 'a new NBIRTH: online, its devices to be born again')
})

t.test('emit: sparkplug parses, renders back, and is checked with line:column errors', async t => {
  const yaml = (emit: string) => `pipelines:
  - name: p
    from: spBv1.0/#
    format: sparkplug
    window: { tumbling: 10s }
    select: { n: count() }
    emit:
${emit}
`
  const [spec] = parsePipelines(yaml('      - sparkplug: { group: plant, node: edge-1 }\n      - upstream'))
  t.same(spec.emit, [{ kind: 'sparkplug', group: 'plant', node: 'edge-1' }, { kind: 'upstream' }])
  t.same(pipelineToPlain(spec).emit, [{ sparkplug: { group: 'plant', node: 'edge-1' } }, 'upstream'], 'rendered back as written')
  t.same(parsePipelines(JSON.stringify({ pipelines: [pipelineToPlain(spec)] }))[0], spec, 'the rendering parses to the same spec')
  const problems = (emit: string) => {
    try {
      parsePipelines(yaml(emit))
      return []
    } catch (err) {
      return (err as PipelineError).problems.map(p => `${p.line}:${p.col} ${p.message}`)
    }
  }
  t.same(problems('      - sparkplug: { group: pl/ant, node: n }'), ['8:29 emit.sparkplug.group must be one topic level, without /, + or #'])
  t.same(problems('      - sparkplug: { group: plant }'), ['8:20 emit.sparkplug needs `node`'])
  t.same(problems('      - sparkplug: plant'), ['8:20 emit.sparkplug must be { group: GROUP, node: NODE }'])
  t.same(problems('      - sparkplug: { group: g, node: n, qos: 1 }'), ['8:41 unknown emit.sparkplug field "qos" (known: group, node)'])
  t.same(problems('      - { sparkplug: { group: g, node: n }, when: "n > 1" }'), ['8:45 unknown field "when" beside emit.sparkplug (it takes only { group, node })'])
})

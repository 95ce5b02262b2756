import { encode as cborEncode } from 'cbor-x'
import t from 'tap'
import { count } from '../core/aggregates/count.ts'
import { sum } from '../core/aggregates/sum.ts'
import { WireError } from '../core/errors.ts'
import { decodeBatch, encodeBatch } from '../core/upstream/batch.ts'
import type { Batch, PipelineDef } from '../core/upstream/batch.ts'
import { Finalizer, mergeContributions, supersedes } from '../core/upstream/merge.ts'

const def: PipelineDef = { name: 'p', version: 1, window: 'tumbling', selects: [{ name: 'n', fn: 'count', params: [] }, { name: 's', fn: 'sum', params: [] }] }

function state (values: number[]): unknown[] {
  // add may return a new state (count's is a bare number): keep what it returns.
  let c = count.create([])
  let s = sum.create([])
  for (const v of values) {
    c = count.add(c, undefined, 0)
    s = sum.add(s, v, 0)
  }
  return [count.encode(c), sum.encode(s)]
}

function batch (windows = 1): Batch {
  return {
    sender: 'e1',
    role: 'edge',
    seq: 7,
    pipelines: [def],
    watermarks: [{ pipeline: 'p', edge: 'e1', watermark: 10_000 }],
    windows: Array.from({ length: windows }, (_, i) => ({ pipeline: 'p', key: `k${i}`, start: 0, end: 10_000, contributions: [{ edge: 'e1', revision: 0, states: state([1, 2, i]) }] }))
  }
}

t.test('a batch survives encoding, compressed or not', async t => {
  for (const n of [1, 500]) {
    const b = batch(n)
    const { body, encoding } = encodeBatch(b)
    t.equal(encoding, n > 1 ? 'deflate-raw' : undefined, `${n} windows: ${body.length} bytes`)
    t.same(decodeBatch(body, encoding), b)
  }
  const final = { ...batch(), role: 'fog' as const }
  final.windows[0].final = 2
  t.same(decodeBatch(encodeBatch(final).body), final)
  const idle = batch()
  idle.watermarks.push({ pipeline: 'p', edge: 'e2', watermark: 5_000, idle: true })
  t.same(decodeBatch(encodeBatch(idle).body), idle, 'an idle flag survives; entries without one stay 3 long')
  t.same(decodeBatch(cborEncode({ v: 1, sender: 'e1', role: 'edge', seq: 1, pipelines: [], watermarks: [['p', 'e1', 5, false]], windows: [] })).watermarks,
    [{ pipeline: 'p', edge: 'e1', watermark: 5 }], 'an explicit false is the same as no flag')
})

t.test('malformed batches are refused whole with a WireError', async t => {
  const good = batch()
  const cases: Array<[string, Uint8Array, string?]> = [
    ['not CBOR', Buffer.from([0xff, 0x00, 0x13])],
    ['not a map', cborEncode([1, 2, 3])],
    ['wrong version', cborEncode({ v: 99 })],
    ['bad deflate', Buffer.from('nonsense'), 'deflate-raw'],
    ['unknown encoding', encodeBatch(good).body, 'br']
  ]
  const mutate = (f: (o: Record<string, unknown>) => void): Uint8Array => {
    const o = { v: 1, sender: 'e1', role: 'edge', seq: 1, pipelines: [['p', 1, 'tumbling', [['n', 'count', []], ['s', 'sum', []]]]], watermarks: [['p', 'e1', 0]], windows: [['p', 'k', 0, 10, null, [['e1', 0, state([1])]]]] }
    f(o)
    return cborEncode(o)
  }
  t.doesNotThrow(() => decodeBatch(mutate(() => {})), 'the template is valid')
  cases.push(
    ['unknown role', mutate(o => { o.role = 'cloud' })],
    ['negative seq', mutate(o => { o.seq = -1 })],
    ['unknown aggregate', mutate(o => { o.pipelines = [['p', 1, 'tumbling', [['n', 'zork', []]]]] })],
    ['undefined pipeline', mutate(o => { o.windows = [['q', 'k', 0, 10, null, []]] })],
    ['end before start', mutate(o => { (o.windows as unknown[][])[0][3] = -5 })],
    ['NaN start', mutate(o => { (o.windows as unknown[][])[0][2] = NaN })],
    ['too few states', mutate(o => { (o.windows as unknown[][])[0][5] = [['e1', 0, [1]]] })],
    ['corrupt state', mutate(o => { (o.windows as unknown[][])[0][5] = [['e1', 0, ['x', 1]]] })],
    ['empty edge id', mutate(o => { (o.windows as unknown[][])[0][5] = [['', 0, state([1])]] })],
    ['idle flag not a boolean', mutate(o => { o.watermarks = [['p', 'e1', 0, 1]] })],
    ['watermark entry too long', mutate(o => { o.watermarks = [['p', 'e1', 0, true, 'x']] })]
  )
  for (const [what, body, encoding] of cases) t.throws(() => decodeBatch(body, encoding), WireError, what)
})

t.test('contributions: one per edge, the highest revision wins, replays change nothing', async t => {
  t.ok(supersedes(undefined, { revision: 0 }))
  t.ok(supersedes({ revision: 0 }, { revision: 1 }))
  t.notOk(supersedes({ revision: 1 }, { revision: 1 }), 'a replay')
  t.notOk(supersedes({ revision: 2 }, { revision: 1 }), 'an older revision')
  t.same(mergeContributions(def, [{ states: state([1, 2]) }, { states: state([10]) }]), { n: 3, s: 13 })
  t.same(mergeContributions(def, []), { n: 0, s: 0 })
})

t.test('a window is final when every live edge passed its end, or after the timeout', async t => {
  const f = new Finalizer(5_000)
  f.observe('p', 'e1', 9_000, 0)
  f.observe('p', 'e2', 12_000, 0)
  t.notOk(f.isDue('p', 10_000, 0, 1_000), 'e1 has not reached the end')
  f.observe('p', 'e1', 10_000, 2_000)
  t.ok(f.isDue('p', 10_000, 0, 2_000), 'both edges passed')
  t.notOk(f.isDue('p', 20_000, 2_000, 3_000))
  t.ok(f.isDue('p', 20_000, 2_000, 7_000), 'after finalizeAfter since first seen')
  f.observe('p', 'e1', 30_000, 6_000)
  t.ok(f.isDue('p', 25_000, 6_500, 6_500), 'e2, silent for 6 s, is not waited for')
  t.notOk(f.isDue('q', 1, 0, 10), 'an unknown pipeline waits for the timeout')
})

t.test('an idle edge is not waited for until it reports a watermark without the flag', async t => {
  const f = new Finalizer(60_000)
  f.observe('p', 'e1', 10_000, 0, true)
  f.observe('p', 'e2', 30_000, 0)
  t.ok(f.isDue('p', 20_000, 0, 100), 'e1 is idle at 10 s: the window to 20 s is due by e2 alone')
  f.observe('p', 'e1', 10_000, 200)
  t.notOk(f.isDue('p', 20_000, 0, 300), 'e1 active again: the window waits for it')
  f.observe('p', 'e1', 20_000, 400, true)
  f.observe('p', 'e2', 25_000, 400, true)
  t.ok(f.isDue('p', 40_000, 0, 500), 'every edge idle: nothing is left to wait for')
  t.same([...f.watermarks()].map(w => [w.edge, w.watermark, w.idle]), [['e1', 20_000, true], ['e2', 30_000, true]], 'the flag is listed; watermarks never move back')
})

t.test('edges known from elsewhere: replicated windows (know), gossip (gossiped) and expiry (silence)', async t => {
  const f = new Finalizer(60_000)
  f.observe('p', 'e1', 30_000, 0)
  f.know('p', 'e2', 0)
  t.notOk(f.isDue('p', 20_000, 0, 100), 'e2 named by a replicated window, no watermark yet: waited for')
  f.know('p', 'e2', 50)
  t.same([...f.watermarks()].find(w => w.edge === 'e2')?.watermark, -Infinity, 'know never overrides a known edge')
  f.gossiped('p', 'e2', 25_000, 200)
  t.ok(f.isDue('p', 20_000, 0, 300), 'its gossiped watermark passed the end')
  f.observe('p', 'e2', 25_000, 400, true)
  f.gossiped('p', 'e2', 26_000, 500)
  t.same([...f.watermarks()].find(w => w.edge === 'e2'), { pipeline: 'p', edge: 'e2', watermark: 26_000, lastSeen: 500, idle: true }, 'gossip raises the watermark and keeps the idle flag of the last batch')
  f.gossiped('p', 'e3', 5_000, 600)
  t.notOk(f.isDue('p', 20_000, 0, 700), 'an edge first heard of by gossip is waited for')
  f.silence('e3')
  t.ok(f.isDue('p', 20_000, 0, 800), 'not once its heartbeats stopped')
  f.observe('p', 'e3', 6_000, 900)
  t.notOk(f.isDue('p', 20_000, 0, 1_000), 'a batch from it makes it waited for again')
})

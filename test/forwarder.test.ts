/**
 * The fog's forwarder in-process: a MergeNode fed by hand-made edge batches, forwarding to a fake cloud
 * (test/helpers/receiver.ts) that decodes every batch. What goes into the outbox per finalization pass,
 * and which watermarks a batch may carry.
 */
import t from 'tap'
import { getAggregate } from '../core/aggregates/index.ts'
import type { Batch, PipelineDef } from '../core/upstream/batch.ts'
import { Forwarder } from '../fog-coordinator/forwarder.ts'
import { MergeNode } from '../server/merge/merge-node.ts'
import { fetchMetric } from './helpers/ground-truth.ts'
import { tmpDir, waitFor } from './helpers/process.ts'
import { startReceiver } from './helpers/receiver.ts'
import { silentLogger } from '../server/shell/log.ts'
import { postAccepted } from './helpers/partials.ts'

const START = Date.UTC(2026, 0, 1)
const SIZE = 10_000
const END0 = START + SIZE
const END1 = START + 2 * SIZE

const DEF: PipelineDef = {
  name: 'temp',
  version: 1,
  window: 'tumbling',
  selects: [{ name: 'n', fn: 'count', params: [] }, { name: 'total', fn: 'sum', params: [] }]
}

/** Encoded states of a partial holding `values`. */
function states (values: number[]): unknown[] {
  return DEF.selects.map(s => {
    const agg = getAggregate(s.fn)!
    let state = agg.create(s.params)
    values.forEach((v, i) => { state = agg.add(state, v, START + i) })
    return agg.encode(state)
  })
}

let seq = 0
/** An edge's batch: its partial of window `w` (0 or 1) per entry of `parts`, and its watermark. */
function edgeBatch (edge: string, parts: Array<[w: number, values: number[]]>, watermark: number): Batch {
  return {
    sender: edge,
    role: 'edge',
    seq: ++seq,
    pipelines: [DEF],
    watermarks: [{ pipeline: DEF.name, edge, watermark }],
    windows: parts.map(([w, values]) => ({
      pipeline: DEF.name, key: 'r1', start: START + w * SIZE, end: START + (w + 1) * SIZE, contributions: [{ edge, revision: 0, states: states(values) }]
    }))
  }
}

async function post (base: string, batch: Batch): Promise<void> {
  await postAccepted(base, batch)
}

t.test('each pass\'s final windows go to the cloud with their contributions, and watermarks never run ahead of them', { timeout: 20_000 }, async t => {
  const cloud = await startReceiver({ answer: () => 503 })
  const dir = await tmpDir('fogmesh-forwarder-')
  const node = new MergeNode('fog', {
    id: 'f1', host: '127.0.0.1', httpPort: 0, dataDir: dir.path, retention: 3_600_000, maxResults: 1000, finalizeAfter: 30_000, maxBatch: 1 << 20, batchMemory: 4 << 20, tick: 50
  }, [])
  const forwarder = new Forwarder(node, { fog: 'f1', dataDir: dir.path, cloud: cloud.url, outboxMax: 1 << 20, requestTimeout: 1_000, retryMax: 200, log: silentLogger })
  await node.start()
  forwarder.start()
  t.teardown(async () => {
    await node.stop()
    await forwarder.stop()
    await cloud.close()
    await dir.cleanup()
  })
  const fog = node.httpUrl
  const items = (n: number) => waitFor(() => forwarder.outbox.items === n, { timeoutMs: 3_000, message: `${n} windows in the outbox` })

  // Both edges known before any window, so that neither is finalized without the other.
  await post(fog, edgeBatch('e1', [], START - 1))
  await post(fog, edgeBatch('e2', [], START - 1))
  await post(fog, edgeBatch('e1', [[0, [1, 2]], [1, [3]]], END1))
  await post(fog, edgeBatch('e2', [[0, [4]], [1, [5, 6]]], END0))
  await items(1)
  await post(fog, edgeBatch('e2', [], END1))
  await items(2)
  t.ok(await waitFor(async () => ((await fetchMetric(fog, 'fogmesh_batches_failed_total')).get('{target="cloud",reason="unavailable"}') ?? 0) > 0),
    'the cloud\'s 503s are counted; the windows stay in the outbox')

  const pending = forwarder.outbox.pending('cloud', 10)
  const cut = forwarder.build(pending.slice(0, 1), { target: 'cloud', drained: false })
  t.same(cut.batch.windows.map(w => [w.end, w.final, w.contributions.map(c => c.edge)]), [[END0, 0, ['e1', 'e2']]], 'the first pass: window 0, final, with both contributions')
  t.ok(cut.batch.watermarks.filter(w => w.edge === 'f1').every(w => w.watermark < END0), 'the progress recorded before the first window\'s pass is below its end')
  t.same(cut.batch.watermarks.filter(w => w.edge !== 'f1').map(w => [w.edge, w.watermark]), [['e1', END1], ['e2', END1]], 'the edges\' watermarks as the fog knows them')
  t.match(cut.batch, { sender: 'f1', role: 'fog', pipelines: [DEF] })
  const both = forwarder.build(pending, { target: 'cloud', drained: false })
  t.same(both.batch.watermarks.filter(w => w.edge === 'f1'), [{ pipeline: 'temp', edge: 'f1', watermark: END0 }], 'a batch cut after the second pass: the progress before it')
  const all = forwarder.build(pending, { target: 'cloud', drained: true })
  t.same(all.batch.watermarks.filter(w => w.edge === 'f1'), [{ pipeline: 'temp', edge: 'f1', watermark: END1 }], 'nothing left: the latest progress')

  cloud.answer = () => 'ok'
  await items(0)
  t.same(cloud.results('temp').map(r => [r.end, r.values.n]).sort(), [
    [new Date(END0).toISOString(), 2], [new Date(END0).toISOString(), 1], [new Date(END1).toISOString(), 1], [new Date(END1).toISOString(), 2]
  ].sort(), 'the cloud has every contribution')
  await waitFor(() => cloud.watermarks.get('temp f1') === END1, { timeoutMs: 3_000, message: 'the fog\'s progress at the cloud' })

  // A contribution after final: the window again, revision 1, with all three contributions.
  await post(fog, edgeBatch('e3', [[0, [7]]], START - 1))
  await waitFor(() => cloud.requests.some(q => q.answer === 'ok' && q.batch.windows.some(w => w.final === 1)), { timeoutMs: 3_000, message: 'the revision at the cloud' })
  const revised = cloud.requests.flatMap(q => q.batch.windows).find(w => w.final === 1)!
  t.same([revised.end, revised.contributions.map(c => c.edge)], [END0, ['e1', 'e2', 'e3']])
  const metrics = await fetchMetric(fog, 'fogmesh_batches_sent_total')
  t.ok((metrics.get('{target="cloud"}') ?? 0) >= 2, 'batches to the cloud counted')
  await items(0)
  t.equal((await fetchMetric(fog, 'fogmesh_outbox_bytes')).get(''), 0)
})

t.test('an idle edge: the fog finalizes without it, forwards its flag, and leaves it out of its progress', { timeout: 20_000 }, async t => {
  const cloud = await startReceiver()
  const dir = await tmpDir('fogmesh-forwarder-')
  const node = new MergeNode('fog', {
    id: 'f1', host: '127.0.0.1', httpPort: 0, dataDir: dir.path, retention: 3_600_000, maxResults: 1000, finalizeAfter: 30_000, maxBatch: 1 << 20, batchMemory: 4 << 20, tick: 50
  }, [])
  const forwarder = new Forwarder(node, { fog: 'f1', dataDir: dir.path, cloud: cloud.url, outboxMax: 1 << 20, requestTimeout: 1_000, retryMax: 200, log: silentLogger })
  await node.start()
  forwarder.start()
  t.teardown(async () => {
    await node.stop()
    await forwarder.stop()
    await cloud.close()
    await dir.cleanup()
  })
  const idle = edgeBatch('e1', [], START - 1)
  idle.watermarks[0].idle = true
  await post(node.httpUrl, idle)
  await post(node.httpUrl, edgeBatch('e2', [[0, [4]]], END0))
  await waitFor(() => cloud.results('temp').length === 1, { timeoutMs: 3_000, message: 'window 0 at the cloud, final without e1' })
  await waitFor(() => cloud.watermarks.get('temp f1') === END0, { timeoutMs: 3_000, message: 'the fog\'s progress past window 0' })
  const last = cloud.requests.filter(q => q.answer === 'ok').at(-1)!.batch.watermarks
  t.same(last.filter(w => w.edge !== 'f1'), [{ pipeline: 'temp', edge: 'e1', watermark: START - 1, idle: true }, { pipeline: 'temp', edge: 'e2', watermark: END0 }],
    'the edges\' watermarks with e1\'s idle flag')
})

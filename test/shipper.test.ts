/**
 * The shipper in-process against fake receivers, with short timings: URL rotation, refusals, 413,
 * failover and return, watermark-only batches. test/uplink.test.ts runs the same through a real edge.
 */
import { Decoder, Encoder } from 'cbor-x'
import t from 'tap'
import type { Test } from 'tap'
import type { Batch, PipelineDef } from '../core/upstream/batch.ts'
import { Outbox } from '../server/delivery/outbox.ts'
import type { OutboxItem } from '../server/delivery/outbox.ts'
import { SHIPPER_DEFAULTS, Shipper } from '../server/delivery/shipper.ts'
import type { BatchContext, ShipperOptions } from '../server/delivery/shipper.ts'
import { freePort, waitFor } from './helpers/process.ts'
import { startReceiver } from './helpers/receiver.ts'
import type { FakeReceiver, ReceiverOptions } from './helpers/receiver.ts'
import { createLogger } from '../server/shell/log.ts'

const def: PipelineDef = { name: 'p', version: 1, window: 'tumbling', selects: [{ name: 'n', fn: 'count', params: [] }] }
const cbor = new Encoder({ useRecords: false })
const decoder = new Decoder({ useRecords: false })

/** Items are [key, n]: window [0, 10 s) of key with count n. */
class Source {
  watermark: number | undefined
  idle = false
  flush (): void {}
  build (items: OutboxItem[], ctx: BatchContext): { batch: Omit<Batch, 'seq'>, used: number } {
    const windows = items.map(i => {
      const [key, n] = decoder.decode(i.data) as [string, number]
      return { pipeline: 'p', key, start: 0, end: 10_000, contributions: [{ edge: 'e1', revision: 0, states: [n] }] }
    })
    const watermarks = ctx.drained && this.watermark !== undefined ? [{ pipeline: 'p', edge: 'e1', watermark: this.watermark, ...this.idle ? { idle: true } : {} }] : []
    return { batch: { sender: 'e1', role: 'edge', pipelines: [def], watermarks, windows }, used: items.length }
  }
}

interface Rig {
  outbox: Outbox
  source: Source
  shipper: Shipper
  logs: string[]
  add: (...keys: string[]) => void
}

function rig (t: Test, options: Partial<ShipperOptions> & Pick<ShipperOptions, 'tiers'>): Rig {
  const outbox = new Outbox({ maxBytes: 1 << 20, targets: options.tiers.map(x => x.name) })
  const source = new Source()
  const logs: string[] = []
  const shipper = new Shipper(outbox, source, {
    ...SHIPPER_DEFAULTS,
    requestTimeout: 500,
    retryMin: 20,
    retryMax: 100,
    idleEvery: 50,
    heartbeatEvery: 60_000,
    log: createLogger({ write: line => logs.push(line) }),
    ...options
  })
  shipper.start()
  t.teardown(async () => {
    await shipper.stop()
    outbox.close()
  })
  const add = (...keys: string[]) => {
    outbox.append(keys.map(k => cbor.encode([k, 1])))
    shipper.notify()
  }
  return { outbox, source, shipper, logs, add }
}

async function receiver (t: Test, answer?: ReceiverOptions['answer']): Promise<FakeReceiver> {
  const r = await startReceiver({ answer })
  t.teardown(() => r.close())
  return r
}

const keys = (r: FakeReceiver) => [...r.kept.values()].map(k => k.key).sort()

t.test('fog URLs are tried in turn; the one that took the last batch is tried first', async t => {
  const fog = await receiver(t)
  const dead = `http://127.0.0.1:${await freePort()}`
  const { add, outbox, shipper } = rig(t, { tiers: [{ name: 'fog', urls: [dead, fog.url] }] })
  add('a', 'b')
  await waitFor(() => outbox.items === 0, { timeoutMs: 3_000 })
  t.same(keys(fog), ['a', 'b'])
  const unreachable = shipper.stats.failed.fog.unreachable
  t.ok(unreachable !== undefined && unreachable >= 1, 'the dead URL was tried')
  add('c')
  await waitFor(() => outbox.items === 0, { timeoutMs: 3_000 })
  t.equal(shipper.stats.failed.fog.unreachable, unreachable, 'then skipped while the other works')
  const seqs = fog.requests.map(q => q.batch.seq)
  t.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), 'seq increases')
})

t.test('a refused batch is kept, counted, logged and retried; 413 halves the batch', async t => {
  let refusals = 2
  const fog = await receiver(t, batch => {
    if (batch.windows.length > 3) return 413
    return refusals-- > 0 ? 409 : 'ok'
  })
  const { add, outbox, shipper, logs } = rig(t, { tiers: [{ name: 'fog', urls: [fog.url] }] })
  add(...'abcdefghij')
  await waitFor(() => outbox.items === 0, { timeoutMs: 5_000 })
  t.same(keys(fog), [...'abcdefghij'])
  t.equal(shipper.stats.failed.fog.rejected, 2)
  t.ok((shipper.stats.failed.fog.too_large ?? 0) >= 1)
  t.ok(fog.requests.filter(q => q.answer === 'ok').every(q => q.batch.windows.length <= 3))
  t.match(logs.join('\n'), /did not take a batch of \d+ windows \(rejected: 409 pipeline_conflict/)
  t.match(logs.join('\n'), /too_large: 413 batch_too_large.*halving it/)
})

t.test('failover: the cloud takes over while the fog fails, and the fog gets everything when back', async t => {
  const fog = await receiver(t, () => 503)
  const cloud = await receiver(t)
  const { add, outbox, shipper, source } = rig(t, { tiers: [{ name: 'fog', urls: [fog.url] }, { name: 'cloud', urls: [cloud.url] }], failoverAfter: 300 })
  source.watermark = 10_000
  add('a', 'b')
  await waitFor(() => cloud.kept.size === 2, { timeoutMs: 3_000 })
  t.equal(shipper.stats.failovers, 1)
  t.match(shipper.status(), { target: 'cloud', failedOver: true })
  t.equal(outbox.items, 2, 'still owed to the fog')
  t.same(outbox.pending('cloud', 10), [])
  add('c')
  await waitFor(() => cloud.kept.size === 3, { timeoutMs: 3_000 })
  t.equal(cloud.watermarks.get('p e1'), 10_000, 'the cloud gets the watermark once it has everything')
  t.equal(fog.kept.size, 0)

  fog.answer = () => 'ok'
  await waitFor(() => outbox.items === 0, { timeoutMs: 3_000 })
  t.same(keys(fog), ['a', 'b', 'c'], 'the fog gets what went to the cloud too')
  t.match(shipper.status(), { target: 'fog', failedOver: false })
  const cloudBatches = cloud.requests.length
  add('d')
  await waitFor(() => fog.kept.size === 4, { timeoutMs: 3_000 })
  t.equal(cloud.requests.length, cloudBatches, 'the cloud is no longer used')
})

t.test('with nothing pending, a watermark-only batch goes when the watermark moves', async t => {
  const fog = await receiver(t)
  const { source } = rig(t, { tiers: [{ name: 'fog', urls: [fog.url] }] })
  await waitFor(() => fog.requests.length === 1, { timeoutMs: 2_000 })
  t.same(fog.requests[0].batch.watermarks, [], 'the first heartbeat')
  source.watermark = 5_000
  await waitFor(() => fog.watermarks.get('p e1') === 5_000, { timeoutMs: 2_000 })
  await new Promise(resolve => setTimeout(resolve, 300))
  t.equal(fog.requests.length, 2, 'nothing more while the watermark stands still')
  t.same(fog.requests[1].batch.windows, [])
})

t.test('with the watermark standing still, a change of the idle flag goes at once', async t => {
  const fog = await receiver(t)
  const { source } = rig(t, { tiers: [{ name: 'fog', urls: [fog.url] }] })
  source.watermark = 5_000
  await waitFor(() => fog.watermarks.get('p e1') === 5_000, { timeoutMs: 2_000 })
  const sent = () => fog.requests.filter(r => r.batch.watermarks.length > 0).map(r => r.batch.watermarks[0].idle === true)
  source.idle = true
  await waitFor(() => sent().at(-1) === true, { timeoutMs: 2_000, message: 'the idle flag sent' })
  source.idle = false
  await waitFor(() => sent().at(-1) === false, { timeoutMs: 2_000, message: 'active again, sent' })
  await new Promise(resolve => setTimeout(resolve, 300))
  t.same(sent(), [false, true, false], 'one batch per change, nothing while the flag stands still')
  t.ok(fog.requests.every(r => r.batch.watermarks.every(w => w.watermark === 5_000)))
})

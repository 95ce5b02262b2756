/**
 * The shipper routing by shard to a fog cluster, against fake coordinators that serve a shard map,
 * refuse (421 wrong_shard, with their map) the windows of shards they do not own, and record what
 * they get: windows reach exactly their owners, every member gets watermarks only after the owners
 * acknowledged, maps change, an owner dies, a single fog is no cluster, bad maps are ignored.
 */
import { Decoder, Encoder } from 'cbor-x'
import t from 'tap'
import type { Test } from 'tap'
import type { Batch, PipelineDef } from '../core/upstream/batch.ts'
import { assignShards, ownerOf, shardOf } from '../core/upstream/shards.ts'
import type { ShardMapView } from '../core/upstream/shards.ts'
import { Outbox } from '../server/delivery/outbox.ts'
import type { OutboxItem } from '../server/delivery/outbox.ts'
import { ShardRouter } from '../server/delivery/shard-router.ts'
import { SHIPPER_DEFAULTS, Shipper } from '../server/delivery/shipper.ts'
import type { BatchContext } from '../server/delivery/shipper.ts'
import { waitFor } from './helpers/process.ts'
import { startReceiver } from './helpers/receiver.ts'
import type { FakeReceiver } from './helpers/receiver.ts'
import { createLogger } from '../server/shell/log.ts'

const def: PipelineDef = { name: 'p', version: 1, window: 'tumbling', selects: [{ name: 'n', fn: 'count', params: [] }] }
const cbor = new Encoder({ useRecords: false })
const decoder = new Decoder({ useRecords: false })
const SHARDS = 64
const WATERMARK = 10_000

/** Items are keys: window [0, 10 s) of the key, counted once; the watermark goes with drained batches. */
class Source {
  watermark: number | undefined
  flush (): void {}
  build (items: OutboxItem[], ctx: BatchContext): { batch: Omit<Batch, 'seq'>, used: number } {
    const windows = items.map(i => ({ pipeline: 'p', key: decoder.decode(i.data) as string, start: 0, end: 10_000, contributions: [{ edge: 'e1', revision: 0, states: [1] }] }))
    const watermarks = ctx.drained && this.watermark !== undefined ? [{ pipeline: 'p', edge: 'e1', watermark: this.watermark }] : []
    return { batch: { sender: 'e1', role: 'edge', pipelines: [def], watermarks, windows }, used: items.length }
  }
}

interface Coordinator extends FakeReceiver {
  id: string
  /** The map it enforces (and serves, unless the test serves something else). */
  map: ShardMapView
}

/** A fake coordinator: takes the windows of its shards only, refuses the whole batch otherwise. */
async function coordinator (t: Test, id: string): Promise<Coordinator> {
  const r = await startReceiver() as Coordinator
  r.id = id
  r.answer = batch => batch.windows.every(w => ownerOf(r.map, w.pipeline, w.key)?.id === id) ? 'ok' : 421
  t.teardown(() => r.close())
  return r
}

/** Coordinators of one cluster, all enforcing and serving the map of `owners` at `version`. */
async function cluster (t: Test, ids: string[]): Promise<{ fogs: Coordinator[], publish: (version: number, members: Coordinator[], owners: Array<string | null>) => ShardMapView }> {
  const fogs = await Promise.all(ids.map(id => coordinator(t, id)))
  const publish = (version: number, members: Coordinator[], owners: Array<string | null>): ShardMapView => {
    const map: ShardMapView = { version, shards: SHARDS, owners, members: members.map(f => ({ id: f.id, http: f.url })), leader: members[0].id, status: 'ok' }
    for (const f of fogs) {
      f.map = map
      f.shardMap = map
    }
    return map
  }
  publish(1, fogs, assignShards([], ids, SHARDS))
  return { fogs, publish }
}

function rig (t: Test, urls: string[], refreshEvery = 60_000, cloud?: string) {
  const outbox = new Outbox({ maxBytes: 1 << 20, targets: cloud === undefined ? ['fog'] : ['fog', 'cloud'] })
  const source = new Source()
  const logs: string[] = []
  const log = createLogger({ write: line => { logs.push(line) } })
  const router = new ShardRouter(urls, { timeout: 500, refreshEvery, log })
  const shipper = new Shipper(outbox, source, {
    ...SHIPPER_DEFAULTS,
    tiers: [{ name: 'fog', urls, route: router }, ...cloud === undefined ? [] : [{ name: 'cloud', urls: [cloud] }]],
    failoverAfter: 300,
    requestTimeout: 500,
    retryMin: 20,
    retryMax: 100,
    idleEvery: 50,
    heartbeatEvery: 60_000,
    log
  })
  shipper.start()
  t.teardown(async () => {
    await shipper.stop()
    outbox.close()
  })
  const add = (...keys: string[]) => {
    outbox.append(keys.map(k => cbor.encode(k)))
    shipper.notify()
  }
  return { outbox, source, router, shipper, logs, add }
}

const keys = (r: FakeReceiver) => [...r.kept.values()].map(k => k.key).sort()
const ALL = Array.from({ length: 60 }, (_, i) => `sensor-${i}`)
/** The keys of ALL whose shard `id` owns in `map`. */
const ownedBy = (map: ShardMapView, id: string) => ALL.filter(k => ownerOf(map, 'p', k)?.id === id).sort()

t.test('every window reaches exactly its owner; every member gets the watermarks after the owners acked', { timeout: 15_000 }, async t => {
  const { fogs: [a, b, c] } = await cluster(t, ['a', 'b', 'c'])
  // Only the first is configured: the others are learnt from its map.
  const { add, outbox, source, router, shipper } = rig(t, [a.url])
  await waitFor(() => router.version === 1, { timeoutMs: 3_000, message: 'the map' })
  t.equal(shipper.status().url, [a.url, b.url, c.url].join(', '), 'the status shows the owners')

  // Windows of a's shards only, acknowledged slowly.
  a.delay = 150
  source.watermark = WATERMARK
  const mine = ownedBy(a.map, 'a').slice(0, 3)
  add(...mine)
  await waitFor(() => outbox.items === 0, { timeoutMs: 3_000, message: 'delivered' })
  await waitFor(() => [a, b, c].every(f => f.watermarks.get('p e1') === WATERMARK), { timeoutMs: 3_000, message: 'watermarks everywhere' })
  const owned = a.requests.find(q => q.batch.windows.length > 0)!
  t.same(owned.batch.watermarks, [], 'the owner gets its windows without the watermark')
  for (const f of [a, b, c]) {
    const after = f.requests.filter(q => q.batch.watermarks.length > 0)
    t.ok(after.length >= 1, `${f.id} got the watermark`)
    t.ok(after.every(q => q.batch.windows.length === 0 && q.batch.pipelines.length === 0), `${f.id} got watermarks only`)
    t.ok(after.every(q => q.arrived > owned.answered!), `${f.id} got them after the owner acknowledged`)
  }
  t.same(keys(a), mine)

  // Windows of every owner's shards.
  a.delay = 0
  add(...ALL)
  await waitFor(() => outbox.items === 0, { timeoutMs: 3_000, message: 'delivered' })
  for (const f of [a, b, c]) t.same(keys(f), ownedBy(a.map, f.id), `${f.id} has exactly its windows`)
  t.equal(shipper.stats.failed.fog.misrouted, undefined, 'nothing was misrouted')
  t.notOk([a, b, c].some(f => f.requests.some(q => q.answer !== 'ok')))
})

t.test('a shard moves: the old owner refuses with the new map, the window goes to the new owner', { timeout: 15_000 }, async t => {
  const { fogs: [a, b, c], publish } = await cluster(t, ['a', 'b', 'c'])
  const { add, outbox, router, shipper, logs } = rig(t, [a.url, b.url, c.url])
  await waitFor(() => router.version === 1, { timeoutMs: 3_000, message: 'the map' })
  const v1 = a.map
  // A key of a's and one of b's; the shard of a's key moves to c (the router does not refresh by itself).
  const [moving] = ownedBy(v1, 'a')
  const [staying] = ownedBy(v1, 'b')
  const owners = [...v1.owners]
  owners[shardOf('p', moving, SHARDS)] = 'c'
  publish(2, [a, b, c], owners)
  b.delay = 300
  add(moving, staying)
  await waitFor(() => c.requests.length > 0, { timeoutMs: 3_000, message: 'the window at its new owner' })
  t.equal(outbox.items, 2, 'nothing is delivered while an owner has not acknowledged')
  await waitFor(() => outbox.items === 0, { timeoutMs: 3_000, message: 'delivered' })
  t.equal(router.version, 2, 'the map of the refusal was adopted')
  t.same(keys(c), [moving])
  t.same(keys(b), [staying])
  t.same(keys(a), [], 'the old owner kept nothing')
  t.ok(a.requests.some(q => q.answer === 421))
  t.equal(shipper.stats.failed.fog.misrouted, 1)
  t.match(logs.join('\n'), /misrouted: 421 wrong_shard.*re-planning it by shard/)
})

t.test('an owner down: nothing is delivered until the map leaves it out', { timeout: 15_000 }, async t => {
  const { fogs: [a, b, c], publish } = await cluster(t, ['a', 'b', 'c'])
  const { add, outbox, router, shipper } = rig(t, [a.url, b.url, c.url])
  await waitFor(() => router.version === 1, { timeoutMs: 3_000, message: 'the map' })
  await c.close()
  const refreshes = router.stats.refreshes
  add(...ALL)
  await waitFor(() => (shipper.stats.failed.fog.unreachable ?? 0) >= 3, { timeoutMs: 3_000, message: 'failed attempts' })
  t.equal(outbox.items, ALL.length, 'the items stay in the outbox')
  t.ok(a.kept.size > 0 && b.kept.size > 0, 'although the live owners took their parts')
  t.ok(router.stats.refreshes > refreshes, 'the router looked for a new map')
  t.match(shipper.status(), { failingSince: String })

  const v2 = publish(2, [a, b], assignShards(a.map.owners, ['a', 'b'], SHARDS))
  await waitFor(() => outbox.items === 0, { timeoutMs: 3_000, message: 'delivered' })
  t.equal(router.version, 2)
  t.same(keys(a), ownedBy(v2, 'a'))
  t.same(keys(b), ownedBy(v2, 'b'))
  t.equal(ownedBy(v2, 'a').length + ownedBy(v2, 'b').length, ALL.length)
  t.equal(shipper.status().failingSince, null)
})

t.test('a single fog is no cluster: it gets whole batches, as before clusters', { timeout: 15_000 }, async t => {
  for (const [what, shardMap] of [
    ['embedded', { version: 0, shards: 0, owners: [], members: [], leader: null, status: 'embedded' }],
    ['from before clusters (404)', undefined]
  ] as const) {
    await t.test(what, async t => {
      const fog = await startReceiver({ shardMap })
      t.teardown(() => fog.close())
      const { add, outbox, router, shipper } = rig(t, [fog.url])
      add(...ALL)
      await waitFor(() => outbox.items === 0, { timeoutMs: 3_000, message: 'delivered' })
      t.match(router.map, { shards: 0, status: 'embedded' })
      t.same(keys(fog), [...ALL].sort())
      t.ok(fog.requests.some(q => q.batch.windows.length === ALL.length), 'in one batch')
      t.equal(shipper.status().url, fog.url)
    })
  }
})

t.test('a bad or starting /v1/shards answer is ignored', { timeout: 15_000 }, async t => {
  const { fogs: [a, b, c] } = await cluster(t, ['a', 'b', 'c'])
  a.shardMap = { ...a.map, version: 9, owners: ['nobody'] }
  b.shardMap = { ...b.map, version: 8, status: 'starting', owners: b.map.owners.map(() => 'b') }
  const { add, outbox, router, logs } = rig(t, [a.url, b.url, c.url], 100)
  await waitFor(() => router.stats.refreshes >= 3, { timeoutMs: 3_000, message: 'refreshes' })
  t.equal(router.version, 1, 'the valid map is the one held')
  t.ok(router.stats.bad >= 3, 'bad answers are counted')
  t.equal(logs.filter(l => /answered no valid shard map/.test(l)).length, 1, 'and logged once')
  add(...ALL)
  await waitFor(() => outbox.items === 0, { timeoutMs: 3_000, message: 'delivered' })
  for (const f of [a, b, c]) t.same(keys(f), ownedBy(c.map, f.id))
})

t.test('a window of an unowned shard waits; the map giving it an owner lets it go', { timeout: 15_000 }, async t => {
  const { fogs: [a, b], publish } = await cluster(t, ['a', 'b'])
  const [key] = ownedBy(a.map, 'a')
  const owners = [...a.map.owners]
  for (let s = 0; s < SHARDS; s++) if (owners[s] === 'a') owners[s] = null
  publish(2, [a, b], owners)
  const { add, outbox, router, shipper, logs } = rig(t, [a.url])
  await waitFor(() => router.version === 2, { timeoutMs: 3_000, message: 'the map' })
  add(key)
  await waitFor(() => (shipper.stats.failed.fog.unavailable ?? 0) >= 2, { timeoutMs: 3_000, message: 'failed attempts' })
  t.equal(outbox.items, 1)
  t.match(logs.join('\n'), /shard map v2 did not take a batch of 1 windows \(unavailable: shard \d+ \(pipeline p, key sensor-\d+\) has no owner/)
  publish(3, [a, b], assignShards(owners, ['a', 'b'], SHARDS))
  await waitFor(() => outbox.items === 0, { timeoutMs: 3_000, message: 'delivered' })
  t.same([...keys(a), ...keys(b)], [key])
})

t.test('a cluster without quorum: the cloud takes over, and the owners get everything when it is back', { timeout: 15_000 }, async t => {
  const { fogs: [a, b] } = await cluster(t, ['a', 'b'])
  for (const f of [a, b]) f.answer = () => 503
  const cloud = await startReceiver()
  t.teardown(() => cloud.close())
  const { add, outbox, source, router, shipper } = rig(t, [a.url], 60_000, cloud.url)
  await waitFor(() => router.version === 1, { timeoutMs: 3_000, message: 'the map' })
  await waitFor(() => shipper.status().failingSince !== null, { timeoutMs: 3_000, message: 'heartbeats failing' })
  source.watermark = WATERMARK
  add(...ALL)
  await waitFor(() => cloud.kept.size === ALL.length, { timeoutMs: 3_000, message: 'failover to the cloud' })
  t.match(shipper.status(), { target: 'cloud', failedOver: true })
  t.equal(outbox.items, ALL.length, 'still owed to the fog')

  for (const f of [a, b]) f.answer = batch => batch.windows.every(w => ownerOf(f.map, w.pipeline, w.key)?.id === f.id) ? 'ok' : 421
  await waitFor(() => outbox.items === 0, { timeoutMs: 3_000, message: 'delivered to the fog' })
  for (const f of [a, b]) t.same(keys(f), ownedBy(f.map, f.id))
  t.match(shipper.status(), { target: 'fog', failedOver: false, url: `${a.url}, ${b.url}` })
  t.equal(shipper.stats.failed.fog.misrouted, undefined)
})

t.test('a newer shard map announced (by the mesh) is fetched at once, an older or equal one is not', { timeout: 15_000 }, async t => {
  const { fogs: [a, b, c], publish } = await cluster(t, ['a', 'b', 'c'])
  // No periodic refresh within the test: only the announcement can bring version 2.
  const { router, shipper } = rig(t, [a.url, b.url, c.url])
  await waitFor(() => router.version === 1, { timeoutMs: 3_000, message: 'the map' })
  publish(2, [a, b], assignShards(a.map.owners, ['a', 'b'], SHARDS))
  const asked = router.stats.refreshes
  shipper.shardMapSeen('fog', 1)
  t.equal(router.stats.refreshes, asked, 'the version held: nothing asked')
  shipper.shardMapSeen('fog', 2)
  await waitFor(() => router.version === 2, { timeoutMs: 3_000, message: 'version 2 adopted' })
  t.same(router.map?.members.map(m => m.id), ['a', 'b'])
})

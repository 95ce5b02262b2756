/**
 * The fog coordinator and the cloud sink as users run them: real processes, batches of partials built
 * from real aggregate states and POSTed as CBOR, results checked over HTTP against the aggregates of all
 * readings in one state (an oracle that does not merge).
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { encode as cborEncode } from 'cbor-x'
import t from 'tap'
import type { Test } from 'tap'
import { getAggregate } from '../core/aggregates/index.ts'
import { encodeBatch } from '../core/upstream/batch.ts'
import type { Batch, PipelineDef, WindowEntry } from '../core/upstream/batch.ts'
import type { Values } from '../core/windows/window.ts'
import { MergeNode } from '../server/merge/merge-node.ts'
import { fetchMetric } from './helpers/ground-truth.ts'
import type { ServedResult } from './helpers/ground-truth.ts'
import { fetchJson, fogmeshBin, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { JsonResponse, RunningProcess } from './helpers/process.ts'
import { postBatch } from './helpers/partials.ts'

const run = promisify(execFile)
const START = Date.UTC(2026, 0, 1)
const SIZE = 10_000

const DEF: PipelineDef = {
  name: 'temp',
  version: 1,
  window: 'tumbling',
  selects: [
    { name: 'n', fn: 'count', params: [] },
    { name: 'total', fn: 'sum', params: [] },
    { name: 'low', fn: 'min', params: [] },
    { name: 'high', fn: 'max', params: [] },
    { name: 'mean', fn: 'avg', params: [] },
    { name: 'p50', fn: 'percentile', params: [0.5] },
    { name: 'devices', fn: 'distinct', params: [] },
    { name: 'latest', fn: 'last', params: [] }
  ]
}

interface Reading {
  value: number
  device: string
  ts: number
}

let clock = 0
/** Readings in window `w` (0 = [START, START + SIZE)), each at its own event time. */
function readings (w: number, values: number[], device = 'd1'): Reading[] {
  return values.map(value => ({ value, device, ts: START + w * SIZE + (++clock % SIZE) }))
}

function input (fn: string, r: Reading): unknown {
  return fn === 'count' ? undefined : fn === 'distinct' ? r.device : r.value
}

/** Encoded states of one edge's partial, as an edge builds them. */
function states (rs: Reading[]): unknown[] {
  return DEF.selects.map(s => {
    const agg = getAggregate(s.fn)!
    let state = agg.create(s.params)
    for (const r of rs) state = agg.add(state, input(s.fn, r), r.ts)
    return agg.encode(state)
  })
}

/** The oracle: every reading added to one state, no merging involved. */
function expected (rs: Reading[]): Values {
  return Object.fromEntries(DEF.selects.map(s => {
    const agg = getAggregate(s.fn)!
    let state = agg.create(s.params)
    for (const r of rs) state = agg.add(state, input(s.fn, r), r.ts)
    return [s.name, agg.result(state)]
  }))
}

interface Part {
  key: string
  window: number
  edge: string
  revision?: number
  readings: Reading[]
}

function entry (key: string, w: number, parts: Part[], final?: number): WindowEntry {
  const e: WindowEntry = {
    pipeline: DEF.name,
    key,
    start: START + w * SIZE,
    end: START + (w + 1) * SIZE,
    contributions: parts.map(p => ({ edge: p.edge, revision: p.revision ?? 0, states: states(p.readings) }))
  }
  if (final !== undefined) e.final = final
  return e
}

/** An edge's batch: one window entry per part, and the edge's watermark if given. */
function edgeBatch (sender: string, seq: number, parts: Part[], watermark?: number): Batch {
  return {
    sender,
    role: 'edge',
    seq,
    pipelines: [DEF],
    watermarks: watermark === undefined ? [] : [{ pipeline: DEF.name, edge: sender, watermark }],
    windows: parts.map(p => entry(p.key, p.window, [p]))
  }
}

const post = postBatch

async function results (base: string): Promise<ServedResult[]> {
  const res = await fetchJson(`${base}/v1/aggregates/${DEF.name}?limit=100`)
  if (res.status !== 200) throw new Error(`GET aggregates: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body.results as ServedResult[]
}

async function result (base: string, key: string, w: number): Promise<ServedResult | undefined> {
  const start = new Date(START + w * SIZE).toISOString()
  return (await results(base)).find(r => r.key === key && r.start === start)
}

/** The parts of a result that matter here, for t.same. */
function brief (r: ServedResult | undefined): unknown {
  return r === undefined ? undefined : { final: r.final, revision: r.revision, sources: r.sources, values: r.values }
}

async function metric (base: string, name: string, labels = `{pipeline="${DEF.name}"}`): Promise<number | undefined> {
  return (await fetchMetric(base, name)).get(labels)
}

async function startNode (t: Test, role: 'fog' | 'cloud', args: string[], dataDir?: string): Promise<{ node: RunningProcess, dataDir: string }> {
  let dir = dataDir
  if (dir === undefined) {
    const tmp = await tmpDir(`fogmesh-${role}-`)
    t.teardown(() => tmp.cleanup())
    dir = join(tmp.path, 'data')
  }
  const node = await startFogmesh([role, '--http-port', '0', '--data-dir', dir, '--tick', '100ms', ...args])
  t.teardown(async () => {
    if (node.proc.exitCode === null && node.proc.signalCode === null) await node.stop().catch(() => node.kill('SIGKILL'))
  })
  return { node, dataDir: dir }
}

t.test('fog: merges two edges, finalizes on watermarks or after --finalize-after, revises after final', { timeout: 30_000 }, async t => {
  const { node: fog } = await startNode(t, 'fog', ['--id', 'f1', '--finalize-after', '4s', '--max-batch', '64kib'])
  const base = fog.http
  t.match(fog.stdout[0], /^ready fog f1 http=http:\/\/127\.0\.0\.1:\d+$/)
  t.same((await fetchJson(`${base}/healthz`)).body, { status: 'ok', role: 'fog', id: 'f1' })
  t.equal((await fetchJson(`${base}/v1/aggregates/${DEF.name}`)).status, 404, 'a pipeline is unknown until a batch defines it')

  const e1r1 = readings(0, [1, 2, 3, 4, 5], 'd1')
  const e1r2 = readings(0, [10, 20], 'd3')
  const e2r1 = readings(0, [7, 8], 'd2')
  const e2r1more = [...e2r1, ...readings(0, [9, 30], 'd4')]

  // e2 first, behind the window's end: it is a live edge the fog now waits for.
  const begun = Date.now()
  t.same((await post(base, edgeBatch('e2', 1, [{ key: 'r1', window: 0, edge: 'e2', readings: e2r1 }], START + 5_000))).body, { acked: 1, applied: 1, ignored: 0 })
  t.same(brief(await result(base, 'r1', 0)), { final: false, revision: 0, sources: 1, values: expected(e2r1) }, 'not final: values so far')

  const e1Batch = edgeBatch('e1', 1, [{ key: 'r1', window: 0, edge: 'e1', readings: e1r1 }, { key: 'r2', window: 0, edge: 'e1', readings: e1r2 }], START + SIZE)
  t.same((await post(base, e1Batch)).body, { acked: 1, applied: 2, ignored: 0 })
  t.same(brief(await result(base, 'r1', 0)), { final: false, revision: 0, sources: 2, values: expected([...e1r1, ...e2r1]) }, 'e1 passed the end, e2 has not')
  const before = await results(base)
  t.same((await post(base, e1Batch)).body, { acked: 1, applied: 0, ignored: 2 }, 'a replayed batch is acknowledged and ignored')
  t.same(await results(base), before, 'the replay changed nothing')

  t.same((await post(base, edgeBatch('e2', 2, [{ key: 'r1', window: 0, edge: 'e2', revision: 1, readings: e2r1more }]))).body, { acked: 2, applied: 1, ignored: 0 })
  t.same((await post(base, edgeBatch('e2', 3, [{ key: 'r1', window: 0, edge: 'e2', revision: 0, readings: e2r1 }]))).body, { acked: 3, applied: 0, ignored: 1 }, 'an older revision is ignored')
  t.same(brief(await result(base, 'r1', 0)), { final: false, revision: 0, sources: 2, values: expected([...e1r1, ...e2r1more]) }, 'the higher revision replaced e2\'s partial')

  // e2's watermark passes the end: final, well before --finalize-after.
  t.same((await post(base, edgeBatch('e2', 4, [], START + SIZE))).body, { acked: 4, applied: 0, ignored: 0 })
  await waitFor(async () => (await result(base, 'r1', 0))?.final, { timeoutMs: 3_000, message: 'r1 final' })
  t.ok(Date.now() - begun < 4_000, 'finalized by the watermarks, not by the timeout')
  t.same(brief(await result(base, 'r1', 0)), { final: true, revision: 0, sources: 2, values: expected([...e1r1, ...e2r1more]) })
  t.same(brief(await result(base, 'r2', 0)), { final: true, revision: 0, sources: 1, values: expected(e1r2) })

  // A contribution after final (a delayed delivery from a third edge) is merged: revision 1.
  const e3r1 = readings(0, [100], 'd9')
  t.same((await post(base, edgeBatch('e3', 1, [{ key: 'r1', window: 0, edge: 'e3', readings: e3r1 }]))).body, { acked: 1, applied: 1, ignored: 0 })
  await waitFor(async () => (await result(base, 'r1', 0))?.revision === 1, { timeoutMs: 3_000, message: 'revision 1' })
  t.same(brief(await result(base, 'r1', 0)), { final: true, revision: 1, sources: 3, values: expected([...e1r1, ...e2r1more, ...e3r1]) })
  t.equal(await metric(base, 'fogmesh_partials_after_final_total'), 1)
  t.equal(await metric(base, 'fogmesh_windows_revised_total'), 1)
  t.equal(await metric(base, 'fogmesh_windows_finalized_total'), 2)

  // e2 stays live but never passes window 1: it is finalized --finalize-after after it was first seen.
  const w1 = readings(1, [40, 41], 'd1')
  const sent = Date.now()
  t.same((await post(base, edgeBatch('e1', 2, [{ key: 'r1', window: 1, edge: 'e1', readings: w1 }], START + 2 * SIZE))).body, { acked: 2, applied: 1, ignored: 0 })
  await new Promise(resolve => setTimeout(resolve, 1_000))
  t.equal((await result(base, 'r1', 1))?.final, false, 'waits for e2')
  await waitFor(async () => (await result(base, 'r1', 1))?.final, { timeoutMs: 6_000, message: 'window 1 final after the timeout' })
  t.ok(Date.now() - sent >= 3_900, 'not before --finalize-after')
  t.same(brief(await result(base, 'r1', 1)), { final: true, revision: 0, sources: 1, values: expected(w1) })

  t.equal(await metric(base, 'fogmesh_partials_received_total'), 9)
  t.equal(await metric(base, 'fogmesh_partials_ignored_total'), 3)
  const pipelines = await fetchJson(`${base}/v1/pipelines`)
  t.same(pipelines.body, { pipelines: [{ name: 'temp', version: 1, spec: DEF }] }, 'a learned pipeline shows its merge definition')
  const mesh = (await fetchJson(`${base}/v1/mesh`)).body
  t.same({ ...mesh, edges: undefined }, { self: { id: 'f1', role: 'fog', peerId: null }, peers: [], fog: { leader: 'f1', shardMapVersion: 0, shards: 0, status: 'embedded' }, edges: undefined })
  t.same(mesh.edges.map((e: { id: string, watermarks: unknown }) => [e.id, e.watermarks]), [
    ['e1', { temp: new Date(START + 2 * SIZE).toISOString() }],
    ['e2', { temp: new Date(START + SIZE).toISOString() }]
  ], 'the edges it hears from, with their watermarks')
  t.equal(await fog.stop(), 0, 'SIGTERM stops the fog cleanly')
})

t.test('fog: bad batches get a clear 4xx, store nothing, and the fog keeps running', { timeout: 20_000 }, async t => {
  const { node: fog } = await startNode(t, 'fog', ['--id', 'f2', '--finalize-after', '30s', '--max-batch', '64kib'])
  const base = fog.http
  t.equal((await post(base, edgeBatch('e1', 1, [{ key: 'r1', window: 0, edge: 'e1', readings: readings(0, [1, 2]) }]))).status, 200)
  const before = await results(base)

  const conflicting: Batch = { ...edgeBatch('e9', 1, [{ key: 'new-key', window: 0, edge: 'e9', readings: readings(0, [5]) }]) }
  conflicting.pipelines = [{ ...DEF, version: 2, selects: DEF.selects.slice(1) }]
  conflicting.windows = conflicting.windows.map(w => ({ ...w, contributions: w.contributions.map(c => ({ ...c, states: c.states.slice(1) })) }))
  const huge = edgeBatch('e9', 2, Array.from({ length: 1000 }, () => ({ key: randomBytes(100).toString('hex'), window: 0, edge: 'e9', readings: readings(0, [1]) })))
  const hugeBody = encodeBatch(huge)
  t.ok(hugeBody.body.length > 64 * 1024, `the oversized batch is ${hugeBody.body.length} bytes`)

  const cases: Array<[string, () => Promise<JsonResponse>, number, string]> = [
    ['corrupt CBOR', () => post(base, Buffer.from([0xff, 0x00, 0x13])), 400, 'bad_batch'],
    ['a wrong wire version', () => post(base, cborEncode({ v: 2, sender: 'e9', role: 'edge', seq: 1, pipelines: [], watermarks: [], windows: [] })), 400, 'bad_batch'],
    ['corrupt deflate', () => post(base, Buffer.from('not deflated'), { 'content-encoding': 'deflate-raw' }), 400, 'bad_batch'],
    ['a conflicting pipeline definition', () => post(base, conflicting), 409, 'pipeline_conflict'],
    ['a body over --max-batch', () => post(base, huge), 413, 'batch_too_large'],
    ['a streamed body over --max-batch', () => fetchJson(`${base}/v1/partials`, {
      method: 'POST',
      headers: { 'content-type': 'application/cbor' },
      body: new ReadableStream({ start (c) { for (let i = 0; i < 4; i++) c.enqueue(new Uint8Array(32 * 1024)); c.close() } }),
      duplex: 'half'
    } as RequestInit), 413, 'batch_too_large'],
    ['JSON instead of CBOR', () => fetchJson(`${base}/v1/partials`, { method: 'POST', json: { v: 1 } }), 415, 'unsupported_media_type']
  ]
  for (const [what, send, status, code] of cases) {
    const res = await send()
    t.equal(res.status, status, `${what}: ${status}`)
    t.equal(res.body?.error?.code, code, `${what}: ${code}`)
    t.type(res.body?.error?.message, 'string')
    t.same(await results(base), before, `${what}: nothing stored`)
    t.equal((await fetchJson(`${base}/healthz`)).status, 200, `${what}: still healthy`)
  }
  const rejected = await fetchMetric(base, 'fogmesh_batches_rejected_total')
  t.same(Object.fromEntries(rejected), {
    '{reason="bad_batch"}': 3,
    '{reason="batch_too_large"}': 2,
    '{reason="busy"}': 0,
    '{reason="pipeline_conflict"}': 1,
    '{reason="unsupported_media_type"}': 1
  })
  t.same((await post(base, edgeBatch('e1', 2, [{ key: 'r1', window: 0, edge: 'e1', revision: 1, readings: readings(0, [3]) }]))).body, { acked: 2, applied: 1, ignored: 0 }, 'good batches still go through')
})

t.test('fog: SIGKILL right after a 200 loses nothing, and finalization continues after a restart', { timeout: 30_000 }, async t => {
  const args = ['--id', 'f3', '--finalize-after', '20s']
  const first = await startNode(t, 'fog', args)
  let base = first.node.http
  const e1w0 = readings(0, [1, 2, 3])
  const e2prev = readings(-1, [5])
  const e2w0 = readings(0, [6])
  const e2w0more = [...e2w0, ...readings(0, [7])]
  t.equal((await post(base, edgeBatch('e1', 1, [{ key: 'r1', window: 0, edge: 'e1', readings: e1w0 }], START + 5_000))).status, 200)
  t.equal((await post(base, edgeBatch('e2', 1, [{ key: 'r1', window: -1, edge: 'e2', readings: e2prev }, { key: 'r1', window: 0, edge: 'e2', readings: e2w0 }], START + SIZE))).status, 200)
  await waitFor(async () => (await result(base, 'r1', -1))?.final, { timeoutMs: 3_000, message: 'the earlier window final' })
  t.same((await post(base, edgeBatch('e2', 2, [{ key: 'r1', window: 0, edge: 'e2', revision: 1, readings: e2w0more }]))).body, { acked: 2, applied: 1, ignored: 0 })
  first.node.kill('SIGKILL')
  t.equal((await first.node.exited).signal, 'SIGKILL')

  const second = await startNode(t, 'fog', args, first.dataDir)
  base = second.node.http
  t.same(brief(await result(base, 'r1', -1)), { final: true, revision: 0, sources: 1, values: expected(e2prev) }, 'the final window is still final')
  t.same(brief(await result(base, 'r1', 0)), { final: false, revision: 0, sources: 2, values: expected([...e1w0, ...e2w0more]) }, 'the acknowledged revision is there')
  t.same((await post(base, edgeBatch('e2', 2, [{ key: 'r1', window: 0, edge: 'e2', revision: 1, readings: e2w0more }]))).body, { acked: 2, applied: 0, ignored: 1 }, 'its redelivery is a replay')
  await new Promise(resolve => setTimeout(resolve, 500))
  t.equal((await result(base, 'r1', 0))?.final, false, 'still waits for e1, whose watermark was restored')

  t.equal((await post(base, edgeBatch('e1', 2, [], START + SIZE))).status, 200)
  await waitFor(async () => (await result(base, 'r1', 0))?.final, { timeoutMs: 3_000, message: 'window 0 final after e1 passed it' })
  t.same(brief(await result(base, 'r1', 0)), { final: true, revision: 0, sources: 2, values: expected([...e1w0, ...e2w0more]) })
  const late = readings(-1, [9])
  t.equal((await post(base, edgeBatch('e3', 1, [{ key: 'r1', window: -1, edge: 'e3', readings: late }]))).status, 200)
  await waitFor(async () => (await result(base, 'r1', -1))?.revision === 1, { timeoutMs: 3_000, message: 'revision 1 of the earlier window' })
  t.same(brief(await result(base, 'r1', -1)), { final: true, revision: 1, sources: 2, values: expected([...e2prev, ...late]) }, 'a window finalized before the crash takes a late contribution')
  t.equal(await second.node.stop(), 0)
})

t.test('cloud: a fog\'s final finalizes at once, and a contribution by two routes counts once', { timeout: 20_000 }, async t => {
  const { node: cloud } = await startNode(t, 'cloud', ['--id', 'c1', '--finalize-after', '30s'])
  const base = cloud.http
  t.match(cloud.stdout[0], /^ready cloud c1 http=http:\/\/127\.0\.0\.1:\d+$/)
  t.same((await fetchJson(`${base}/healthz`)).body, { status: 'ok', role: 'cloud', id: 'c1' })

  const e1w0 = readings(0, [1, 2])
  const e2w0 = readings(0, [3])
  const e1 = { key: 'r1', window: 0, edge: 'e1', readings: e1w0 }
  const e2 = { key: 'r1', window: 0, edge: 'e2', readings: e2w0 }
  const fogBatch = (seq: number, windows: WindowEntry[]): Batch => ({ sender: 'f1', role: 'fog', seq, pipelines: [DEF], watermarks: [], windows })
  t.same((await post(base, fogBatch(1, [entry('r1', 0, [e1, e2], 0)]))).body, { acked: 1, applied: 2, ignored: 0 })
  await waitFor(async () => (await result(base, 'r1', 0))?.final, { timeoutMs: 3_000, message: 'final at once' })
  t.same(brief(await result(base, 'r1', 0)), { final: true, revision: 0, sources: 2, values: expected([...e1w0, ...e2w0]) })

  t.same((await post(base, edgeBatch('e1', 5, [e1]))).body, { acked: 5, applied: 0, ignored: 1 }, 'the same contribution straight from the edge (failover) counts once')

  const e1w1 = readings(1, [4])
  const e2w1 = readings(1, [5])
  const w1e1 = { key: 'r1', window: 1, edge: 'e1', readings: e1w1 }
  t.same((await post(base, edgeBatch('e1', 6, [w1e1]))).body, { acked: 6, applied: 1, ignored: 0 })
  t.same(brief(await result(base, 'r1', 1)), { final: false, revision: 0, sources: 1, values: expected(e1w1) })
  t.same((await post(base, fogBatch(2, [entry('r1', 1, [w1e1, { key: 'r1', window: 1, edge: 'e2', readings: e2w1 }], 0)]))).body, { acked: 2, applied: 1, ignored: 1 })
  await waitFor(async () => (await result(base, 'r1', 1))?.final, { timeoutMs: 3_000, message: 'window 1 final' })
  t.same(brief(await result(base, 'r1', 1)), { final: true, revision: 0, sources: 2, values: expected([...e1w1, ...e2w1]) }, 'e1 counted once')

  // The fog revised window 0 (its revision 5); the cloud counts its own revisions.
  const e3w0 = readings(0, [10])
  t.same((await post(base, fogBatch(3, [entry('r1', 0, [e1, e2, { key: 'r1', window: 0, edge: 'e3', readings: e3w0 }], 5)]))).body, { acked: 3, applied: 1, ignored: 2 })
  await waitFor(async () => (await result(base, 'r1', 0))?.revision === 1, { timeoutMs: 3_000, message: 'revision 1' })
  t.same(brief(await result(base, 'r1', 0)), { final: true, revision: 1, sources: 3, values: expected([...e1w0, ...e2w0, ...e3w0]) })

  const before = await results(base)
  const bad = await post(base, Buffer.from('definitely not cbor'))
  t.equal(bad.status, 400)
  t.equal(bad.body.error.code, 'bad_batch')
  t.same(await results(base), before, 'nothing stored')
  t.same(Object.fromEntries(await fetchMetric(base, 'fogmesh_batches_received_total')), { '{role="edge"}': 2, '{role="fog"}': 3 })
  t.equal(await metric(base, 'fogmesh_windows_finalized_total'), 2)
  t.equal((await fetchJson(`${base}/v1/mesh`)).body.self.role, 'cloud')
  t.equal(await cloud.stop(), 0, 'SIGTERM stops the cloud cleanly')
})

t.test('fog: --etcd without an endpoint is refused clearly', { timeout: 15_000 }, async t => {
  const err = await run(process.execPath, [fogmeshBin, 'fog', '--etcd', ' , '], { timeout: 10_000 }).then(() => undefined, (e: { code: number, stderr: string }) => e)
  t.equal(err?.code, 2)
  t.match(err?.stderr, /--etcd: give at least one HOST:PORT/)
})

t.test('onFinal: each pass\'s windows with all contributions and their revision, again if the listener throws', { timeout: 15_000 }, async t => {
  const dir = await tmpDir('fogmesh-onfinal-')
  t.teardown(() => dir.cleanup())
  const node = new MergeNode('fog', {
    id: 'f4', host: '127.0.0.1', httpPort: 0, dataDir: dir.path, retention: 3_600_000, maxResults: 1000, finalizeAfter: 30_000, maxBatch: 1 << 20, batchMemory: 4 << 20, tick: 50
  }, [])
  await node.start()
  t.teardown(() => node.stop())
  const seen: WindowEntry[][] = []
  let fail = 1
  const remove = node.onFinal(entries => {
    // Passes that finalized nothing are offered too (a fog's progress moves with them).
    if (entries.length === 0) return
    if (fail-- > 0) throw new Error('outbox full')
    seen.push([...entries])
  })
  const e1 = { key: 'r1', window: 0, edge: 'e1', readings: readings(0, [1]) }
  const e2 = { key: 'r1', window: 0, edge: 'e2', readings: readings(0, [2]) }
  t.equal((await post(node.httpUrl, edgeBatch('e1', 1, [e1], START + SIZE))).status, 200)
  t.equal((await post(node.httpUrl, edgeBatch('e2', 1, [e2], START + SIZE))).status, 200)
  await waitFor(() => seen.length >= 1, { timeoutMs: 3_000, message: 'a final window' })
  t.same(seen[0], [entry('r1', 0, [e1, e2], 0)], 'offered again after the listener threw, with every contribution and revision 0')
  t.equal((await result(node.httpUrl, 'r1', 0))?.final, true)
  const e3 = { key: 'r1', window: 0, edge: 'e3', readings: readings(0, [3]) }
  t.equal((await post(node.httpUrl, edgeBatch('e3', 1, [e3]))).status, 200)
  await waitFor(() => seen.length >= 2, { timeoutMs: 3_000, message: 'the revised window' })
  t.same(seen[1], [entry('r1', 0, [e1, e2, e3], 1)], 'a revision is offered with revision + 1')
  t.same(node.watermarks(), [{ pipeline: 'temp', edge: 'e1', watermark: START + SIZE }, { pipeline: 'temp', edge: 'e2', watermark: START + SIZE }])
  t.equal(await metric(node.httpUrl, 'fogmesh_final_listener_errors_total', ''), 1)
  remove()
})

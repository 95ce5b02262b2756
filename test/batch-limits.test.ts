/**
 * Malformed and malicious CBOR batches against a real fog: every one is refused (or, when a mutation
 * happens to stay valid, taken) without a 5xx or a crash, and the fog's peak memory stays bounded.
 * Before the pre-decode walk, one 15 KB deflated body of empty arrays cost the fog 650 MB.
 */
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { deflateRawSync } from 'node:zlib'
import { encode as cborEncode } from 'cbor-x'
import t from 'tap'
import type { Test } from 'tap'
import { count } from '../core/aggregates/count.ts'
import { distinct } from '../core/aggregates/distinct.ts'
import { percentile } from '../core/aggregates/percentile.ts'
import { sum } from '../core/aggregates/sum.ts'
import { WireError, WireLimitError } from '../core/errors.ts'
import { BATCH_LIMITS, batchLimits, decodeBatch, encodeBatch, scanCbor } from '../core/upstream/batch.ts'
import type { Batch, BatchLimits, PipelineDef } from '../core/upstream/batch.ts'
import { fetchMetric } from './helpers/ground-truth.ts'
import { postBatch } from './helpers/partials.ts'
import { fetchJson, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'

const DEF: PipelineDef = {
  name: 'p',
  version: 1,
  window: 'tumbling',
  selects: [{ name: 'n', fn: 'count', params: [] }, { name: 's', fn: 'sum', params: [] }, { name: 'q', fn: 'percentile', params: [0.5] }, { name: 'd', fn: 'distinct', params: [] }]
}

function states (i: number): unknown[] {
  let c = count.create([])
  let s = sum.create([])
  let q = percentile.create([0.5])
  let d = distinct.create([])
  for (let k = 0; k < 5; k++) {
    c = count.add(c, undefined, 0)
    s = sum.add(s, i + k, 0)
    q = percentile.add(q, i * k, 0)
    d = distinct.add(d, `dev-${k}`, 0)
  }
  return [count.encode(c), sum.encode(s), percentile.encode(q), distinct.encode(d)]
}

function batch (seq: number, windows: number, base = 0): Batch {
  return {
    sender: 'e1',
    role: 'edge',
    seq,
    pipelines: [DEF],
    watermarks: [{ pipeline: 'p', edge: 'e1', watermark: 1_000 }],
    windows: Array.from({ length: windows }, (_, i) => ({ pipeline: 'p', key: `k${i}`, start: base + i * 10_000, end: base + (i + 1) * 10_000, contributions: [{ edge: 'e1', revision: 0, states: states(i) }] }))
  }
}

/** A CBOR head: major type and argument. */
function head (major: number, n: number): Buffer {
  if (n < 24) return Buffer.from([major << 5 | n])
  if (n < 0x100) return Buffer.from([major << 5 | 24, n])
  if (n < 0x10000) return Buffer.from([major << 5 | 25, n >> 8, n & 0xff])
  const b = Buffer.alloc(5)
  b[0] = major << 5 | 26
  b.writeUInt32BE(n, 1)
  return b
}

/** `{v: 1, windows: <rest>}` as bytes, so that the rest can be anything. */
const PREFIX = Buffer.concat([head(5, 2), head(3, 1), Buffer.from('v'), head(0, 1), head(3, 7), Buffer.from('windows')])

/** Deterministic pseudo-random numbers (mulberry32). */
function rng (seed: number): () => number {
  let a = seed
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

interface Body { what: string, body: Buffer, encoding?: string }

/** Bodies built to make a decoder allocate far more than they weigh, each valid CBOR up to its lie. */
function malicious (): Body[] {
  const empties = (n: number, byte = 0x80): Buffer => Buffer.concat([PREFIX, head(4, n), Buffer.alloc(n, byte)])
  const deflated = (what: string, raw: Buffer): Body => ({ what, body: deflateRawSync(raw), encoding: 'deflate-raw' })
  return [
    deflated('16 M empty arrays, deflated', empties(16_000_000)),
    deflated('17 M empty arrays, deflated (over the inflated limit)', empties(17_000_000)),
    deflated('16 M empty maps, deflated', empties(16_000_000, 0xa0)),
    deflated('16 M zeros, deflated', empties(16_000_000, 0x00)),
    { what: '4 M empty arrays', body: empties(4_000_000) },
    { what: '1.4 M empty arrays (under the count limit)', body: empties(1_400_000) },
    { what: 'an array announcing 2^31 items', body: Buffer.concat([PREFIX, Buffer.from([0x9a, 0x80, 0, 0, 0]), Buffer.alloc(64)]) },
    { what: 'an array announcing 2^64-1 items', body: Buffer.concat([PREFIX, Buffer.from([0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), Buffer.alloc(64)]) },
    { what: 'a map announcing 2^32-1 entries', body: Buffer.from([0xba, 0xff, 0xff, 0xff, 0xff, 0x61, 0x76, 0x01]) },
    { what: 'a text string announcing 4 GB', body: Buffer.concat([PREFIX, Buffer.from([0x7a, 0xff, 0xff, 0xff, 0xff]), Buffer.alloc(1024, 0x61)]) },
    { what: 'a byte string announcing 2^63', body: Buffer.concat([PREFIX, Buffer.from([0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(1024)]) },
    { what: 'a 4 MB string', body: Buffer.concat([PREFIX, head(3, 4_000_000), Buffer.alloc(4_000_000, 0x61)]) },
    { what: '1 M nested arrays', body: Buffer.concat([PREFIX, Buffer.alloc(1_000_000, 0x81), Buffer.from([0])]) },
    deflated('16 M nested arrays, deflated', Buffer.concat([PREFIX, Buffer.alloc(16_000_000, 0x81), Buffer.from([0])])),
    { what: 'an indefinite array of empty arrays', body: Buffer.concat([PREFIX, Buffer.from([0x9f]), Buffer.alloc(2_000_000, 0x80), Buffer.from([0xff])]) },
    { what: 'a big integer of 1 MB', body: Buffer.concat([PREFIX, Buffer.from([0xc2]), head(2, 1_000_000), Buffer.alloc(1_000_000, 0xff)]) },
    { what: 'shared references', body: Buffer.concat([PREFIX, Buffer.from([0xd8, 0x1c]), head(4, 3), Buffer.from([0xd8, 0x1d, 0x00, 0xd8, 0x1d, 0x00, 0xd8, 0x1d, 0x00])]) },
    { what: 'a record definition', body: Buffer.concat([PREFIX, Buffer.from([0xd9, 0xdf, 0xff, 0x83, 0x18, 0x40, 0x81, 0x61, 0x61, 0x01])]) },
    { what: 'bundled strings', body: Buffer.concat([PREFIX, Buffer.from([0xd9, 0xdf, 0xf9, 0x82, 0x7a, 0x7f, 0xff, 0xff, 0xff, 0x00])]) }
  ]
}

/** Random damage to a valid batch: flipped, inserted and removed bytes, or a cut. */
function mutated (seed: number, template: Buffer): Body {
  const r = rng(seed)
  const bytes = [...template]
  const edits = 1 + Math.floor(r() * 8)
  for (let e = 0; e < edits; e++) {
    const at = Math.floor(r() * bytes.length)
    const op = r()
    // Length-announcing heads (arrays, maps, strings with 4- and 8-byte lengths) are the dangerous bytes.
    const interesting = [0x9a, 0x9b, 0xba, 0xbb, 0x5a, 0x7a, 0x7b, 0x9f, 0xbf, 0xff, 0xd8, 0xd9, 0x80, 0x81]
    if (op < 0.4) bytes[at] = Math.floor(r() * 256)
    else if (op < 0.6) bytes.splice(at, 0, interesting[Math.floor(r() * interesting.length)], 0xff, 0xff, 0xff, 0xff)
    else if (op < 0.8) bytes.splice(at, 1 + Math.floor(r() * 4))
    else bytes.length = at
  }
  return { what: `mutation ${seed}`, body: Buffer.from(bytes) }
}

t.test('the walk admits what encodeBatch writes and refuses bodies over a bound before decoding', async t => {
  const { body } = encodeBatch(batch(1, 3))
  t.doesNotThrow(() => scanCbor(body), 'a batch passes')
  const big = encodeBatch(batch(1, 20_000))
  t.same(decodeBatch(big.body, big.encoding).windows.length, 20_000, 'a large compressed batch passes')
  const limitOf = (b: Body): string | undefined => {
    try {
      decodeBatch(b.body, b.encoding)
    } catch (err) {
      if (err instanceof WireLimitError) return err.limit
      if (err instanceof WireError) return 'malformed'
      throw err
    }
    return undefined
  }
  const limits = Object.fromEntries(malicious().map(b => [b.what, limitOf(b)]))
  t.same(limits, {
    '16 M empty arrays, deflated': 'containers',
    '17 M empty arrays, deflated (over the inflated limit)': 'inflated',
    '16 M empty maps, deflated': 'malformed',
    '16 M zeros, deflated': 'items',
    '4 M empty arrays': 'containers',
    '1.4 M empty arrays (under the count limit)': 'malformed',
    'an array announcing 2^31 items': 'length',
    'an array announcing 2^64-1 items': 'length',
    'a map announcing 2^32-1 entries': 'length',
    'a text string announcing 4 GB': 'string',
    'a byte string announcing 2^63': 'string',
    'a 4 MB string': 'string',
    '1 M nested arrays': 'depth',
    '16 M nested arrays, deflated': 'depth',
    'an indefinite array of empty arrays': 'malformed',
    'a big integer of 1 MB': 'malformed',
    'shared references': 'malformed',
    'a record definition': 'malformed',
    'bundled strings': 'malformed'
  }, 'each body is refused, over the bound it breaks')
  t.equal(BATCH_LIMITS.maxInflated, 16 * 1024 * 1024)
})

t.test('the decoding bounds follow --max-batch', async t => {
  const small = batchLimits(4 * 1024 * 1024)
  t.same([small.maxInflated, small.maxItems, small.maxContainers], [4 * 1024 * 1024, 1_500_000, 375_000], 'a quarter of the default batch, a quarter of the counts')
  const limitAt = (limits: BatchLimits, b: Buffer, encoding?: string): string | undefined => {
    try {
      decodeBatch(b, encoding, limits)
    } catch (err) {
      return err instanceof WireLimitError ? err.limit : 'malformed'
    }
    return undefined
  }
  const empties = Buffer.concat([PREFIX, head(4, 1_000_000), Buffer.alloc(1_000_000, 0x80)])
  t.equal(limitAt(BATCH_LIMITS, empties), 'malformed', '1 M empty arrays are decoded (and refused as no batch) at 16 MiB')
  t.equal(limitAt(small, empties), 'containers', '... and refused before decoding at 4 MiB')
  const big = encodeBatch(batch(1, 20_000))
  t.ok(big.body.length < 4 * 1024 * 1024 && big.encoding === 'deflate-raw', 'a compressed batch under 4 MiB on the wire')
  t.equal(limitAt(batchLimits(1024 * 1024), big.body, big.encoding), 'inflated', '... that inflates over a 1 MiB --max-batch is refused')
  t.equal(limitAt(small, big.body, big.encoding), undefined, '... and taken at 4 MiB')
})

/** A fog in its own temp dir, stopped (or killed) at the end of `t`. */
async function startFog (t: Test, flags: string[]): Promise<RunningProcess> {
  const dir = await tmpDir('fogmesh-batch-limits-')
  t.teardown(() => dir.cleanup())
  const fog = await startFogmesh(['fog', '--id', 'f1', '--http-port', '0', '--data-dir', join(dir.path, 'data'), ...flags])
  t.teardown(async () => {
    if (fog.proc.exitCode === null && fog.proc.signalCode === null) await fog.stop().catch(() => fog.kill('SIGKILL'))
  })
  return fog
}

function peakRss (pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (m === null) throw new Error('no VmHWM in /proc/<pid>/status')
  return Number(m[1]) * 1024
}

t.test('a fog under thousands of malformed batches: no 5xx, no crash, bounded peak memory', { timeout: 120_000 }, async t => {
  const fog = await startFog(t, ['--tick', '100ms'])
  const post = async (b: Body): Promise<number> => {
    const headers: Record<string, string> = { 'content-type': 'application/cbor' }
    if (b.encoding !== undefined) headers['content-encoding'] = b.encoding
    const res = await fetch(`${fog.http}/v1/partials`, { method: 'POST', headers, body: b.body, signal: AbortSignal.timeout(30_000) })
    await res.arrayBuffer()
    return res.status
  }
  const good = (seq: number, base: number): Body => {
    const e = encodeBatch(batch(seq, 50, base))
    return { what: `valid batch ${seq}`, body: e.body, encoding: e.encoding }
  }
  // Warm-up: the code paths every request takes, so that the baseline includes their compilation.
  for (let i = 1; i <= 20; i++) t.equal(await post(good(i, i * 1_000_000)), 200, 'a valid batch is taken')
  for (let i = 0; i < 50; i++) await post(mutated(1_000_000 + i, encodeBatch(batch(1, 3)).body))
  const before = peakRss(fog.proc.pid!)

  const template = encodeBatch(batch(1, 20)).body
  const bodies: Body[] = []
  for (let round = 0; round < 3; round++) bodies.push(...malicious())
  for (let seed = 0; seed < 3000; seed++) bodies.push(mutated(seed, template))
  const statuses = new Map<number, number>()
  const fiveHundreds: string[] = []
  const failed: string[] = []
  let next = 0
  // A few at a time, as several misbehaving clients would.
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (next < bodies.length) {
      const b = bodies[next++]
      let status: number
      try {
        status = await post(b)
      } catch (err) {
        failed.push(`${b.what}: ${String((err as Error).cause ?? err)}`)
        continue
      }
      statuses.set(status, (statuses.get(status) ?? 0) + 1)
      if (status >= 500) fiveHundreds.push(`${b.what}: ${status}`)
    }
  }))
  const after = peakRss(fog.proc.pid!)
  t.comment(`statuses ${JSON.stringify(Object.fromEntries(statuses))}; peak RSS ${(before / 1e6).toFixed(0)} MB -> ${(after / 1e6).toFixed(0)} MB (+${((after - before) / 1e6).toFixed(0)} MB)`)
  t.equal(statuses.get(413), 3, 'the bodies that inflate over --max-batch are 413 batch_too_large, as when sent plain')
  t.same(fiveHundreds, [], 'no 5xx')
  t.same(failed, [], 'every request is answered')
  t.equal(fog.proc.exitCode, null, 'the fog is still running')
  // Unbounded, the first deflated body alone takes 650 MB (and the whole run over 1.65 GB); bounded, a
  // body decodes to at most about 150 MB at the default --max-batch (1.5 M empty arrays, what the
  // largest legitimate batch can hold), bodies decode one at a time, and the garbage of the ones before
  // is collected as the heap needs: +164 to +220 MB measured on a 2-core machine, whatever the number
  // of rounds (+57 to +73 MB with --max-batch 4mib).
  t.ok(after - before < 300e6, `peak RSS grew by ${((after - before) / 1e6).toFixed(0)} MB, less than 300 MB`)

  t.same((await fetchJson(`${fog.http}/healthz`)).body, { status: 'ok', role: 'fog', id: 'f1' })
  t.equal(await post(good(100_000, 1e9)), 200, 'a valid batch is still taken')
  const limited = await fetchMetric(fog.http, 'fogmesh_batches_limited_total')
  for (const limit of ['containers', 'inflated', 'items', 'length', 'string', 'depth']) {
    t.ok((limited.get(`{limit="${limit}"}`) ?? 0) >= 3, `fogmesh_batches_limited_total{limit="${limit}"} counts`)
  }
  t.equal(await fog.stop(), 0, 'stops cleanly')
})

t.test('many senders at once: bodies in hand add up to --batch-memory, the rest get 503 busy', { timeout: 120_000 }, async t => {
  const fog = await startFog(t, ['--batch-memory', '32mib'])
  const url = new URL(fog.http)
  const before = peakRss(fog.proc.pid!)
  // 40 connections, each announcing a 16 MiB batch and sending all of it but the last byte, as a
  // slow sender would: without the budget the fog would hold all 640 MiB until its request timeout.
  const CONNECTIONS = 40
  const SIZE = 16 * 1024 * 1024
  const body = Buffer.alloc(SIZE - 1, 0x80)
  const answers: string[] = []
  const sockets = await Promise.all(Array.from({ length: CONNECTIONS }, async () => {
    const socket = connect(Number(url.port), url.hostname)
    socket.on('error', () => {})
    socket.on('data', chunk => { answers.push(chunk.toString('latin1').split('\r\n')[0]) })
    await once(socket, 'connect')
    socket.write(`POST /v1/partials HTTP/1.1\r\nhost: ${url.host}\r\ncontent-type: application/cbor\r\ncontent-length: ${SIZE}\r\n\r\n`)
    await new Promise<void>(resolve => socket.write(body, () => resolve()))
    return socket
  }))
  t.teardown(() => { for (const s of sockets) s.destroy() })
  await waitFor(() => answers.length >= CONNECTIONS - 2, { timeoutMs: 30_000, message: 'an answer to every batch over the budget' })
  const after = peakRss(fog.proc.pid!)
  t.comment(`${CONNECTIONS} bodies of 16 MiB at once, --batch-memory 32mib: ${answers.length} answered at once; peak RSS ${(before / 1e6).toFixed(0)} MB -> ${(after / 1e6).toFixed(0)} MB (+${((after - before) / 1e6).toFixed(0)} MB)`)
  t.equal(answers.length, CONNECTIONS - 2, 'two batches are in hand, every other one is answered at once')
  t.ok(answers.every(a => a === 'HTTP/1.1 503 Service Unavailable'), '... with 503')
  t.equal((await fetchMetric(fog.http, 'fogmesh_batches_rejected_total')).get('{reason="busy"}'), CONNECTIONS - 2, 'counted as busy')
  // The two in hand hold 32 MiB, and the refused bodies pass through as garbage (+115 MB measured);
  // without the budget the fog held every body: +671 MB.
  t.ok(after - before < 200e6, `peak RSS grew by ${((after - before) / 1e6).toFixed(0)} MB, less than 200 MB`)
  for (const s of sockets) s.destroy()
  await waitFor(async () => (await postBatch(fog.http, batch(1, 5))).status === 200, { timeoutMs: 10_000, message: 'a batch taken once the senders left' })
  t.equal(await fog.stop(), 0, 'stops cleanly')
})

// A body the encoder writes for plain objects (tests build batches so) passes too.
t.test('cbor-x encodings of plain batches pass the walk', async t => {
  t.doesNotThrow(() => scanCbor(cborEncode({ v: 1, sender: 'e1', role: 'edge', seq: 1, pipelines: [], watermarks: [['p', 'e1', 5, false]], windows: [] })))
  t.doesNotThrow(() => scanCbor(cborEncode({ v: 1, registers: new Uint8Array(16), n: -1.5, big: 2 ** 60, none: null, undef: undefined })))
})

/**
 * A fake fog/cloud for uplink tests: `POST /v1/partials` on 127.0.0.1, each body decoded with
 * decodeBatch and kept the way receivers keep contributions (the highest revision per window and edge).
 * The test decides how it answers each batch, and can stop it and bring it back on the same port.
 * As a fog cluster member it also serves `GET /v1/shards` (`shardMap`), and its 421 refusals carry that
 * map as a coordinator's do.
 */
import { createServer } from 'node:http'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { decodeBatch } from '../../core/upstream/batch.ts'
import type { Batch, Contribution, PipelineDef } from '../../core/upstream/batch.ts'
import { mergeContributions, supersedes } from '../../core/upstream/merge.ts'
import type { ServedResult } from './ground-truth.ts'

/**
 * How to answer a batch: commit and 200; commit and answer 500 (a lost acknowledgement: the sender
 * resends); never answer; or an error status without committing (421: wrong_shard, with `shardMap`).
 */
export type Answer = 'ok' | 'lose_ack' | 'hang' | 400 | 409 | 413 | 421 | 500 | 503

/**
 * Orders events across every receiver of the test process: each request notes the tick it arrived at
 * and the tick it was answered at, so a test can tell that one request came after another's answer.
 */
let clock = 0
const tick = () => ++clock

export interface Kept {
  pipeline: string
  key: string
  start: number
  end: number
  contribution: Contribution
}

export interface FakeReceiver {
  url: string
  port: number
  answer: (batch: Batch) => Answer
  /** How long it takes to commit and answer a batch, ms (0, the default: at once). */
  delay: number
  /**
   * What `GET /v1/shards` answers (as JSON, whatever it is: tests serve bad maps too), also carried by
   * 421 refusals; undefined (the default) answers 404, as a fog from before clusters.
   */
  shardMap: unknown
  /** `GET /v1/shards` requests served. */
  shardGets: number
  /** Every decoded batch, how it was answered, and the ticks it arrived and was answered at. */
  requests: Array<{ batch: Batch, answer: Answer, arrived: number, answered?: number }>
  /** Contributions of committed batches, highest revision per (pipeline, key, start, end, edge). */
  kept: Map<string, Kept>
  /** Contributions committed, duplicates and replays included. */
  arrived: number
  defs: Map<string, PipelineDef>
  /** Highest watermark per `pipeline edge`. */
  watermarks: Map<string, number>
  /**
   * Contributions that arrived for a window the sender's watermark had already passed: a receiver
   * would have finalized the window without them. Only meaningful for `late: drop` pipelines.
   */
  early: string[]
  /** Final results as a tier would serve them, one edge's contributions per window. */
  results: (pipeline: string) => ServedResult[]
  close: () => Promise<void>
}

function readAll (req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => resolve(Buffer.concat(chunks)))
    req.on('error', reject)
  })
}

function reply (res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

export interface ReceiverOptions {
  /** Listen on this port (to bring a receiver back where its senders look); default: a free one. */
  port?: number
  /** How to answer each batch; default: ok. Can be changed later through `answer` on the receiver. */
  answer?: (batch: Batch) => Answer
  /** See FakeReceiver.shardMap; can be changed later there too. */
  shardMap?: unknown
}

const CODES: Record<number, string> = { 400: 'bad_batch', 409: 'pipeline_conflict', 413: 'batch_too_large', 421: 'wrong_shard', 500: 'internal', 503: 'unavailable' }

export async function startReceiver (opts: ReceiverOptions = {}): Promise<FakeReceiver> {
  const sockets = new Set<Socket>()
  const r: FakeReceiver = {
    url: '',
    port: 0,
    answer: opts.answer ?? (() => 'ok'),
    delay: 0,
    shardMap: opts.shardMap,
    shardGets: 0,
    requests: [],
    kept: new Map(),
    arrived: 0,
    defs: new Map(),
    watermarks: new Map(),
    early: [],
    results: (pipeline) => {
      const def = r.defs.get(pipeline)
      if (def === undefined) return []
      return [...r.kept.values()].filter(k => k.pipeline === pipeline).map(k => ({
        key: k.key,
        start: new Date(k.start).toISOString(),
        end: new Date(k.end).toISOString(),
        final: true,
        revision: k.contribution.revision,
        sources: 1,
        values: mergeContributions(def, [k.contribution])
      }))
    },
    close: async () => {
      server.closeAllConnections()
      for (const s of sockets) s.destroy()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }

  const commit = (batch: Batch) => {
    for (const def of batch.pipelines) r.defs.set(def.name, def)
    for (const w of batch.windows) {
      for (const c of w.contributions) {
        r.arrived++
        const id = `${w.pipeline} ${w.key} ${w.start} ${w.end} ${c.edge}`
        const current = r.kept.get(id)
        if (current === undefined && (r.watermarks.get(`${w.pipeline} ${c.edge}`) ?? -Infinity) >= w.end) r.early.push(id)
        if (supersedes(current?.contribution, c)) r.kept.set(id, { pipeline: w.pipeline, key: w.key, start: w.start, end: w.end, contribution: c })
      }
    }
    // Windows first, then watermarks: a batch's watermark covers the windows in it.
    for (const w of batch.watermarks) {
      const k = `${w.pipeline} ${w.edge}`
      r.watermarks.set(k, Math.max(r.watermarks.get(k) ?? -Infinity, w.watermark))
    }
  }

  const server = createServer((req, res) => {
    void (async () => {
      if (req.method === 'GET' && req.url === '/v1/shards' && r.shardMap !== undefined) {
        r.shardGets++
        return reply(res, 200, r.shardMap)
      }
      if (req.method !== 'POST' || req.url !== '/v1/partials') return reply(res, 404, { error: { code: 'not_found', message: req.url } })
      const arrived = tick()
      const body = await readAll(req)
      let batch: Batch
      try {
        batch = decodeBatch(body, req.headers['content-encoding'])
      } catch (err) {
        return reply(res, 400, { error: { code: 'bad_batch', message: (err as Error).message } })
      }
      const answer = r.answer(batch)
      const request: FakeReceiver['requests'][number] = { batch, answer, arrived }
      r.requests.push(request)
      if (answer === 'hang') return
      if (r.delay > 0) await new Promise(resolve => setTimeout(resolve, r.delay))
      request.answered = tick()
      if (answer === 'ok' || answer === 'lose_ack') {
        commit(batch)
        if (answer === 'ok') return reply(res, 200, { acked: batch.seq, windows: batch.windows.length })
        return reply(res, 500, { error: { code: 'internal', message: 'lost acknowledgement' } })
      }
      const details = answer === 421 ? { shardMap: r.shardMap } : {}
      reply(res, answer, { error: { code: CODES[answer], message: `answered ${answer} by the test`, ...details } })
    })()
  })
  server.on('connection', s => {
    sockets.add(s)
    s.once('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve())
  })
  r.port = (server.address() as AddressInfo).port
  r.url = `http://127.0.0.1:${r.port}`
  return r
}

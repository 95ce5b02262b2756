/**
 * `POST /v1/partials`, the door of every merge tier (a fog, a fog cluster member, a cloud process on
 * SQLite or PostgreSQL): it authenticates the sender, reads and decodes the CBOR batch within its
 * bounds, authorizes it as a whole, and only then hands it to the tier's `commit`, whose answer (the
 * ack, sent after a durable commit) goes back to the sender.
 *
 * Invariants:
 * - with client certificates (--tls-client-ca), who is not of the site is refused before the body is
 *   read, so an unknown client cannot make the node decode anything (server/merge/partials-auth.ts);
 * - a refused batch leaves no trace in the state, only its count by reason (and by decoding bound);
 * - the bodies in hand at once (read, decoded, committing) add up to at most --batch-memory by their
 *   declared size, or to one batch: many senders at once, or one with many connections, cannot make
 *   the node hold more than that, however slowly they send;
 * - window bounds and watermarks are times a Date can render, so queries over them cannot fail.
 */
import { HttpError, WireError, WireLimitError } from '../../core/errors.ts'
import type { WireLimit } from '../../core/errors.ts'
import { batchLimits, decodeBatch } from '../../core/upstream/batch.ts'
import type { Batch, BatchLimits } from '../../core/upstream/batch.ts'
import { AccessDenied } from '../shell/http.ts'
import type { Request, Reply, Route } from '../shell/http.ts'
import type { Metrics } from '../shell/metrics.ts'
import type { NodeSecurity } from '../shell/security.ts'
import { authenticate, authorizeBatch } from './partials-auth.ts'

/** The range of times a Date can render (results show start and end as ISO-8601). */
const MAX_TIME = 8.64e15

/** Why a batch was refused: the `reason` label of fogmesh_batches_rejected_total and the error `code`. */
export type BatchRejectReason = 'bad_batch' | 'batch_too_large' | 'busy' | 'pipeline_conflict' | 'unsupported_media_type'
const REJECT_REASONS: BatchRejectReason[] = ['bad_batch', 'batch_too_large', 'busy', 'pipeline_conflict', 'unsupported_media_type']

/** The answer to an accepted batch. */
export interface Ack {
  /** The batch's `seq`. */
  acked: number
  /** Contributions that changed the state (new, or a higher revision). */
  applied: number
  /** Contributions already known at this or a higher revision (replays). */
  ignored: number
}

export interface PartialsRouteInit {
  /** Named in errors: "this fog is starting". */
  role: 'fog' | 'cloud'
  /** --max-batch: the largest body read, in bytes. */
  maxBatch: number
  /** --batch-memory: bytes of bodies in hand at once (one batch is always taken). */
  batchMemory: number
  security: NodeSecurity
  /** False while the node starts or stops: batches are refused with 503, to be sent again. */
  ready: () => boolean
  /** Applies an authorized batch durably and answers for it; a HttpError refuses it (counted by code). */
  commit: (batch: Batch, now: number) => Promise<Ack>
}

export class PartialsRoute {
  readonly #init: PartialsRouteInit
  /** The decoding bounds, which follow --max-batch. */
  readonly #limits: BatchLimits
  readonly #rejected = Object.fromEntries(REJECT_REASONS.map(r => [r, 0])) as Record<BatchRejectReason, number>
  /** bad_batch refusals that were over a decoding bound, by bound. */
  readonly #limited = new Map<WireLimit, number>()
  readonly #accepted = { edge: 0, fog: 0 }
  /** Declared bytes of the batches in hand now. */
  #inHand = 0

  constructor (init: PartialsRouteInit) {
    this.#init = init
    this.#limits = batchLimits(init.maxBatch)
  }

  get route (): Route {
    return { method: 'POST', path: '/v1/partials', handle: async req => await this.#receive(req) }
  }

  async #receive (req: Request): Promise<Reply> {
    const init = this.#init
    try {
      // Before anything else: who is not of the site gets nothing decoded, and no hint about the state.
      const who = init.security.clientCertificates ? authenticate(req.peer ?? { kind: 'plain' }) : undefined
      if (who !== undefined && !who.ok) throw new AccessDenied(who.denial)
      if (!init.ready()) throw new HttpError(503, 'unavailable', `this ${init.role} is starting or stopping; send the batch again later`)
      const type = String(req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase()
      if (type !== 'application/cbor') {
        throw new HttpError(415, 'unsupported_media_type', `POST /v1/partials takes an application/cbor batch, not "${type.slice(0, 60)}"`)
      }
      // The declared length, as the body is then read no further than it; chunked ones may take it all.
      const declared = Number(req.headers['content-length'])
      const size = Number.isSafeInteger(declared) && declared >= 0 ? Math.min(declared, init.maxBatch) : init.maxBatch
      if (this.#inHand > 0 && this.#inHand + size > init.batchMemory) {
        throw new HttpError(503, 'busy', `this ${init.role} is handling --batch-memory (${init.batchMemory} bytes) of batches; send it again later`)
      }
      this.#inHand += size
      try {
        return await this.#take(req, who)
      } finally {
        this.#inHand -= size
      }
    } catch (err) {
      if (err instanceof HttpError && err.code in this.#rejected) this.#rejected[err.code as BatchRejectReason]++
      throw err
    }
  }

  /** Reads, decodes, authorizes and commits a batch whose bytes are counted in hand. */
  async #take (req: Request, who: ReturnType<typeof authenticate> | undefined): Promise<Reply> {
    const init = this.#init
    let body: Buffer
    try {
      body = await req.body()
    } catch (err) {
      if (err instanceof HttpError && err.status === 413) {
        throw new HttpError(413, 'batch_too_large', `batch body is over --max-batch (${init.maxBatch} bytes)`)
      }
      throw err
    }
    let batch: Batch
    try {
      const encoding = req.headers['content-encoding']
      batch = decodeBatch(body, typeof encoding === 'string' ? encoding.trim().toLowerCase() : undefined, this.#limits)
      checkTimes(batch)
    } catch (err) {
      if (err instanceof WireLimitError) this.#limited.set(err.limit, (this.#limited.get(err.limit) ?? 0) + 1)
      // Inflating over --max-batch is a batch too large, as the same bytes sent plain: its sender halves it.
      if (err instanceof WireLimitError && err.limit === 'inflated') throw new HttpError(413, 'batch_too_large', `batch body inflates to more than --max-batch (${init.maxBatch} bytes)`)
      if (err instanceof WireError) throw new HttpError(400, 'bad_batch', err.message)
      throw err
    }
    const denial = who?.ok === true ? authorizeBatch(who, batch) : undefined
    if (denial !== undefined) throw new AccessDenied(denial)
    const ack = await init.commit(batch, Date.now())
    this.#accepted[batch.role]++
    return { body: ack }
  }

  registerMetrics (m: Metrics): void {
    m.counter('fogmesh_batches_received_total', 'Partial batches accepted, by the sender\'s role', ['role'], () => [[{ role: 'edge' }, this.#accepted.edge], [{ role: 'fog' }, this.#accepted.fog]])
    m.counter('fogmesh_batches_rejected_total', 'Partial batches refused, by reason (the error code)', ['reason'], () => REJECT_REASONS.map(reason => [{ reason }, this.#rejected[reason]]))
    m.counter('fogmesh_batches_limited_total', 'Partial batches refused (as bad_batch) before decoding for exceeding a bound, by bound', ['limit'], () => [...this.#limited].map(([limit, n]) => [{ limit }, n]))
  }
}

function checkTimes (batch: Batch): void {
  const bad = (t: number) => t < -MAX_TIME || t > MAX_TIME
  for (const w of batch.windows) {
    if (bad(w.start) || bad(w.end)) throw new WireError(`invalid batch: window ${w.pipeline}/${w.key.slice(0, 60)} has a start or end outside ±${MAX_TIME} ms`)
  }
  for (const w of batch.watermarks) {
    if (bad(w.watermark)) throw new WireError(`invalid batch: watermark of ${w.edge} for ${w.pipeline} is outside ±${MAX_TIME} ms`)
  }
}

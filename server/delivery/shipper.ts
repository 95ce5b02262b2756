/**
 * Ships outbox items upstream: takes the oldest items pending for a tier, has the caller build a batch
 * of them, POSTs it to `<url>/v1/partials` and marks the items delivered once the tier acknowledges the
 * batch (200 `{"acked": seq}`, sent by receivers only after a durable commit). Delivery is at least
 * once; receivers keep one contribution per edge and window, so a resent batch changes nothing.
 *
 * Tiers, primary first (the edge: fog coordinators, then the cloud sink):
 * - the URLs of a tier are tried in turn; the one that last took a batch is tried first;
 * - when the primary has taken no batch for `failoverAfter` (counted from its first failure), the
 *   second tier gets the items still pending for it, which are marked delivered there but stay owed to
 *   the primary; the primary keeps being tried (with backoff, and small batches) and as soon as it
 *   takes a batch the second tier stops: the primary gets everything it is owed, including what went
 *   to the second tier meanwhile;
 * - failures back off exponentially with jitter from `retryMin` to `retryMax`; a 413 halves the batch
 *   and retries at once; any other refusal keeps the items, backs off, counts and logs: data never goes
 *   silently (the outbox bound is what finally drops items that can never be delivered, and counts them).
 *
 * A fog tier that routes (`route`) may be a cluster of coordinators that split the key space by shard
 * (server/delivery/shard-router.ts): then a batch goes as one sub-batch per owner of its windows, all sent at
 * once, and the attempt counts only when every owner acknowledged its part (resending a part one owner
 * already took changes nothing). A 421 wrong_shard carries the refusing coordinator's map: it is
 * adopted and the batch re-planned at once, a few times in a row before backing off as for any other
 * failure. Only then does every member get the watermarks (see Plan.watermarks for why not before).
 * While the fogs are no cluster, a routing tier works as any other.
 *
 * With nothing pending for a tier, the caller is asked for a watermark-only batch every `idleEvery`;
 * it goes out when a watermark moved past what the tier acknowledged or its idle flag changed (a
 * receiver must learn at once that an edge went idle, or active again), or as a heartbeat every
 * `heartbeatEvery`, so receivers can finalize the windows of idle edges and know the sender is alive.
 */
import { ConfigError } from '../../core/errors.ts'
import { encodeBatch } from '../../core/upstream/batch.ts'
import type { Batch, Watermark } from '../../core/upstream/batch.ts'
import { parseShardMap } from '../../core/upstream/shards.ts'
import type { ShardMapView } from '../../core/upstream/shards.ts'
import type { Outbox, OutboxItem } from './outbox.ts'
import type { Logger } from '../shell/log.ts'
import { PeerClient } from '../shell/peer-client.ts'
import { ShardRouter } from './shard-router.ts'
import type { Plan } from './shard-router.ts'

export interface Tier {
  /** The outbox target its deliveries are recorded under (`fog`, `cloud`). */
  name: string
  /** Base URLs, tried in turn; batches go to `<url>/v1/partials`. */
  urls: string[]
  /**
   * Route batches by shard when the URLs turn out to be a fog cluster: `true` for a router with its
   * defaults (seeded with `urls`), or a router of one's own. The shipper starts and stops it.
   * Default: no routing.
   */
  route?: boolean | ShardRouter
  /**
   * The URLs are found while running (fogs learnt from the mesh, see `addUrl`), so the tier may start
   * with none. Until it has one it counts as failing, which lets a second tier take over after
   * `failoverAfter`. Default false: a tier without URLs is a configuration error.
   */
  discovered?: boolean
}

export interface ShipperOptions {
  /** Primary first; a second tier is used only while the primary fails (failover). At most two. */
  tiers: Tier[]
  /** How long the primary may fail before the second tier takes over, ms. */
  failoverAfter: number
  /** Longest a request may take, ms. */
  requestTimeout: number
  /** First and longest wait between retries, ms (exponential backoff with jitter). */
  retryMin: number
  retryMax: number
  /** Most items, and bytes of items, in one batch. */
  maxBatchItems: number
  maxBatchBytes: number
  /** Most items in a batch to a tier that is failing: probing it should not resend megabytes. */
  probeItems: number
  /** How often an idle tier is offered a watermark-only batch, ms. */
  idleEvery: number
  /** A watermark-only batch goes at least this often, as a heartbeat, ms. */
  heartbeatEvery: number
  /** Where state changes and refusals are reported. */
  log: Logger
  /** How tiers are called (TLS trust, this node's certificate as its identity). Default: a plain client. */
  client?: PeerClient
}

/** Defaults of the options a deployment rarely changes (the edge exposes the others as flags). */
export const SHIPPER_DEFAULTS = {
  failoverAfter: 30_000,
  requestTimeout: 10_000,
  retryMin: 200,
  retryMax: 10_000,
  maxBatchItems: 5_000,
  // Well under a receiver's default body limit (16 MiB) once the per-window framing is added.
  maxBatchBytes: 4 * 1024 * 1024,
  probeItems: 64,
  idleEvery: 1_000,
  heartbeatEvery: 10_000
} satisfies Omit<ShipperOptions, 'tiers' | 'log' | 'client'>

export interface BatchContext {
  /** The tier the batch is for. */
  target: string
  /** No item is pending for the target after the ones given. */
  drained: boolean
}

/** What a shipper ships: the caller's items, made into batches. */
export interface BatchSource {
  /** Moves whatever the caller buffers into the outbox, so that batches (and watermarks) see it. */
  flush: () => void
  /**
   * A batch (without its seq) of the first `used` of `items` (oldest first; at least one when there
   * are any), or a watermark-only batch when there are none.
   */
  build: (items: OutboxItem[], ctx: BatchContext) => { batch: Omit<Batch, 'seq'>, used: number }
  /** Told of every batch a tier acknowledged, after its items were marked delivered. */
  delivered?: (batch: Omit<Batch, 'seq'>, target: string) => void
}

export type FailureReason =
  | 'unreachable' // connection refused, reset, no route
  | 'timeout' // no complete answer within requestTimeout
  | 'too_large' // 413: the batch is halved
  | 'unavailable' // 503: the tier cannot take partials now
  | 'server_error' // other 5xx
  | 'rejected' // other 4xx (bad_batch, pipeline_conflict, …): kept and retried
  | 'bad_ack' // 200 without the batch's seq in `acked`
  | 'misrouted' // 421 wrong_shard: a fog coordinator does not own a window's shard; re-planned

export const FAILURE_REASONS: readonly FailureReason[] = ['unreachable', 'timeout', 'too_large', 'unavailable', 'server_error', 'rejected', 'bad_ack', 'misrouted']

type Failure = { ok: false, reason: FailureReason, detail: string, shardMap?: ShardMapView }
type Outcome = { ok: true } | Failure

interface Attempt {
  batch: Omit<Batch, 'seq'>
  /** Outbox ids of the items in the batch. */
  ids: number[]
}

interface Lane {
  readonly tier: Tier
  readonly primary: boolean
  /** Set when the tier routes by shard. */
  readonly router: ShardRouter | undefined
  /** Index of the URL tried first: the last one that took a batch. */
  url: number
  /** Current backoff, ms. */
  delay: number
  /** Items per batch; halved on 413, doubled back after each success. */
  limit: number
  /** Since when the tier has taken nothing (undefined while it works). */
  failingSince: number | undefined
  lastAckAt: number
  /** Watermarks the tier acknowledged, by `pipeline\0edge`, with the idle flag last acknowledged. */
  readonly acked: Map<string, { watermark: number, idle: boolean }>
  /** The last problem logged, so a failure repeating at every retry is logged once. */
  lastProblem: string | undefined
  /** The last problem logged per cluster member that missed watermarks (Plan.watermarks), likewise. */
  readonly lagging: Map<string, string>
}

export interface ShipperStatus {
  /** The tier batches go to now. */
  target: string
  /** The URL that took the last batch; with a fog cluster, the URLs of the shards' owners. */
  url: string
  failedOver: boolean
  /** Since when the primary has failed (ISO-8601), or null. */
  failingSince: string | null
}

/** The seq is stored in blocks: a restart skips the rest of a block, never reuses a number. */
const SEQ_BLOCK = 1024
const SEQ_META = 'shipper-seq'

/**
 * 421s in a row a batch is re-planned after at once; then it backs off like any failure, so that
 * coordinators disagreeing about the map do not make an edge spin.
 */
const MAX_REROUTES = 3

function watermarkKey (w: Watermark): string {
  return `${w.pipeline}\0${w.edge}`
}

function partialsUrl (base: string): string {
  return base.replace(/\/+$/, '') + '/v1/partials'
}

/** The error code and message of a JSON error reply, or the start of the body. */
function errorSummary (text: string): string {
  try {
    const e = (JSON.parse(text) as { error?: { code?: unknown, message?: unknown } }).error
    if (e !== undefined) return `${String(e.code)}: ${String(e.message)}`
  } catch {}
  return text.slice(0, 200)
}

/** The shard map a 421 wrong_shard carries, or undefined when it carries no valid one. */
function carriedMap (text: string): ShardMapView | undefined {
  try {
    return parseShardMap((JSON.parse(text) as { error?: { shardMap?: unknown } }).error?.shardMap)
  } catch {
    return undefined
  }
}

function transportFailure (err: unknown): Failure {
  const e = err as Error & { cause?: { code?: string, message?: string } }
  if (e.name === 'TimeoutError') return { ok: false, reason: 'timeout', detail: 'no answer in time' }
  return { ok: false, reason: 'unreachable', detail: e.cause?.code ?? e.cause?.message ?? e.message }
}

export class Shipper {
  readonly stats = {
    failovers: 0,
    /** Batches acknowledged, by tier. */
    sent: {} as Record<string, number>,
    /** Failed requests, by tier and reason. */
    failed: {} as Record<string, Partial<Record<FailureReason, number>>>
  }

  readonly #outbox: Outbox
  readonly #source: BatchSource
  readonly #options: ShipperOptions
  readonly #client: PeerClient
  readonly #lanes: Lane[]
  readonly #abort = new AbortController()
  /** Sleeps a notify (new items, a failover) cuts short; backoffs are not among them. */
  readonly #wakeable = new Set<() => void>()
  /** Every sleep, for stop(). */
  readonly #sleeping = new Set<() => void>()
  #loops: Array<Promise<void>> = []
  #failedOver = false
  #failoverTimer: NodeJS.Timeout | undefined
  #stopped = false
  #seq: number
  #seqReserved: number

  constructor (outbox: Outbox, source: BatchSource, options: ShipperOptions) {
    if (options.tiers.length === 0 || options.tiers.length > 2) throw new ConfigError('a shipper takes one or two tiers')
    this.#outbox = outbox
    this.#source = source
    this.#options = options
    this.#client = options.client ?? new PeerClient()
    const retryMin = Math.min(options.retryMin, options.retryMax)
    this.#lanes = options.tiers.map((tier, i) => {
      if (tier.urls.length === 0 && tier.discovered !== true) throw new ConfigError(`tier ${tier.name} has no URL`)
      this.stats.sent[tier.name] = 0
      this.stats.failed[tier.name] = {}
      const router = tier.route instanceof ShardRouter
        ? tier.route
        : tier.route === true ? new ShardRouter(tier.urls, { name: tier.name, timeout: Math.min(2_000, options.requestTimeout), log: options.log, client: this.#client }) : undefined
      // A copy: addUrl grows it, and the caller's list is not the shipper's to change.
      tier = { ...tier, urls: [...tier.urls] }
      return { tier, primary: i === 0, router, url: 0, delay: retryMin, limit: options.maxBatchItems, failingSince: undefined, lastAckAt: 0, acked: new Map(), lastProblem: undefined, lagging: new Map() }
    })
    this.#seq = Number(outbox.meta(SEQ_META) ?? 0)
    this.#seqReserved = this.#seq
  }

  start (): void {
    for (const lane of this.#lanes) lane.router?.start()
    this.#loops = this.#lanes.map(lane => this.#run(lane))
  }

  /** New items are in the outbox: idle tiers look at once. */
  notify (): void {
    for (const wake of [...this.#wakeable]) wake()
  }

  /** Adds a URL to a tier (one found while running); known ones are ignored. */
  /**
   * A fog cluster's shard map of this version exists (the mesh said so): a routing tier holding an
   * older one asks for it now instead of waiting for a refusal or its next refresh.
   */
  shardMapSeen (tierName: string, version: number): void {
    const router = this.#lanes.find(l => l.tier.name === tierName)?.router
    if (router !== undefined && version > router.version) void router.refresh()
  }

  addUrl (tierName: string, url: string): void {
    const lane = this.#lanes.find(l => l.tier.name === tierName)
    if (lane === undefined || lane.tier.urls.includes(url)) return
    lane.tier.urls.push(url)
    lane.router?.addSeed(url)
    // A lane waiting for its first URL looks at once.
    this.notify()
  }

  /** Stops shipping (a request under way is abandoned: its items stay in the outbox). */
  async stop (): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#failoverTimer)
    this.#abort.abort()
    for (const wake of [...this.#sleeping]) wake()
    await Promise.all([...this.#loops, ...this.#lanes.map(lane => lane.router?.stop())])
  }

  status (): ShipperStatus {
    const lane = this.#failedOver ? this.#lanes[1] : this.#lanes[0]
    const since = this.#lanes[0].failingSince
    const owners = lane.router?.ownerUrls() ?? []
    return {
      target: lane.tier.name,
      url: owners.length > 0 ? owners.join(', ') : lane.tier.urls[lane.url] ?? '',
      failedOver: this.#failedOver,
      failingSince: since === undefined ? null : new Date(since).toISOString()
    }
  }

  async #run (lane: Lane): Promise<void> {
    while (!this.#stopped) {
      try {
        if (!lane.primary && !this.#failedOver) {
          await this.#sleep(Infinity, true)
          continue
        }
        if (lane.tier.urls.length === 0) {
          // Nobody to send to yet (see Tier.discovered): failing, so a second tier can take over.
          this.#failing(lane)
          await this.#sleep(this.#options.idleEvery, true)
          continue
        }
        const attempt = this.#prepare(lane)
        if (attempt === undefined) {
          await this.#sleep(this.#options.idleEvery, true)
          continue
        }
        const outcome = await this.#deliver(lane, attempt)
        if (this.#stopped) return
        if (outcome.ok) {
          this.#acknowledged(lane, attempt)
          // Watermarks alone are paced: a busy edge's watermark moves with every reading, and sending
          // each move would cost more than the partials. New windows wake the lane early.
          if (attempt.ids.length === 0) await this.#sleep(this.#options.idleEvery, true)
          continue
        }
        if (outcome.reason === 'too_large' && attempt.ids.length > 1) {
          lane.limit = Math.max(1, Math.floor(attempt.ids.length / 2))
          continue
        }
        this.#failing(lane)
      } catch (err) {
        // A bug or a storage error must not end shipping for good: report it and try again later.
        this.#options.log.error('uplink.shipping_failed', `shipping to ${lane.tier.name} failed; trying again later`, { tier: lane.tier.name, err })
      }
      await this.#sleep(this.#backoff(lane), false)
    }
  }

  /** The next batch for a tier, or undefined when there is nothing worth sending. */
  #prepare (lane: Lane): Attempt | undefined {
    this.#source.flush()
    const target = lane.tier.name
    const limit = lane.failingSince === undefined ? lane.limit : Math.min(lane.limit, this.#options.probeItems)
    const items = this.#outbox.pending(target, limit, this.#options.maxBatchBytes)
    if (items.length > 0) {
      const drained = !this.#outbox.hasPendingAfter(target, items[items.length - 1].id)
      const { batch, used } = this.#source.build(items, { target, drained })
      // Marking items the batch does not hold as delivered would lose them without a trace.
      if (!(used >= 1 && used <= items.length)) throw new Error(`a batch source used ${used} of ${items.length} items`)
      return { batch, ids: items.slice(0, used).map(i => i.id) }
    }
    const { batch } = this.#source.build([], { target, drained: true })
    const moved = batch.watermarks.some(w => {
      const acked = lane.acked.get(watermarkKey(w))
      return acked === undefined || acked.watermark < w.watermark || acked.idle !== (w.idle === true)
    })
    if (!moved && Date.now() - lane.lastAckAt < this.#options.heartbeatEvery) return undefined
    return { batch, ids: [] }
  }

  /** Delivers an attempt: by shard to a fog cluster, else whole to the tier's URLs in turn. */
  async #deliver (lane: Lane, attempt: Attempt): Promise<Outcome> {
    const router = lane.router
    if (router === undefined) return await this.#deliverWhole(lane, attempt)
    // Whole batches to a cluster would only be refused: learn first whether the fogs are one.
    if (router.map === undefined) await router.refresh()
    for (let reroutes = 0; ; reroutes++) {
      const version = router.version
      const plan = router.plan(attempt.batch)
      const outcome = plan === undefined ? await this.#deliverWhole(lane, attempt) : await this.#deliverRouted(lane, attempt, plan)
      if (outcome.ok || this.#stopped) return outcome
      if (outcome.reason !== 'misrouted' || reroutes >= MAX_REROUTES) {
        // Whatever failed, the map may have changed (a member gone, shards moved): look now.
        void router.refresh()
        return outcome
      }
      // The refusal's map was adopted when it was newer; else the cluster is asked.
      if (router.version === version) await router.refresh()
    }
  }

  /** POSTs the batch to the tier's URLs in turn until one takes it (or answers 413 or 421). */
  async #deliverWhole (lane: Lane, attempt: Attempt): Promise<Outcome> {
    const urls = lane.tier.urls
    let outcome: Outcome = { ok: false, reason: 'unreachable', detail: 'not tried' }
    for (let k = 0; k < urls.length && !this.#stopped; k++) {
      const i = (lane.url + k) % urls.length
      // Every request gets its own seq, also when it repeats a batch to another URL.
      outcome = await this.#post(urls[i], { ...attempt.batch, seq: this.#nextSeq() })
      if (this.#stopped) break
      if (outcome.ok) {
        this.#recovered(lane, urls[i])
        lane.url = i
        return outcome
      }
      this.#refused(lane, urls[i], outcome, attempt)
      if (outcome.reason === 'too_large') {
        lane.url = i
        break
      }
      // The fogs are a cluster: the batch is re-planned by shard.
      if (outcome.reason === 'misrouted') break
    }
    return outcome
  }

  /**
   * Phase 1: every owner's windows at once; the attempt fails unless all are acknowledged. Phase 2, only
   * then: the watermarks to every member, best effort.
   */
  async #deliverRouted (lane: Lane, attempt: Attempt, plan: Plan): Promise<Outcome> {
    if (!plan.ok) {
      const failure: Failure = { ok: false, reason: 'unavailable', detail: plan.detail }
      this.#refused(lane, `shard map v${plan.version}`, failure, attempt)
      return failure
    }
    const outcomes = await Promise.all(plan.owners.map(r => this.#post(r.url, { ...r.batch, seq: this.#nextSeq() })))
    if (this.#stopped) return { ok: false, reason: 'unreachable', detail: 'stopped' }
    const failures: Failure[] = []
    outcomes.forEach((o, i) => {
      if (o.ok) return
      this.#refused(lane, plan.owners[i].url, o, attempt)
      failures.push(o)
    })
    // A 421 first (re-planning may fix the rest), then a 413 (halving helps every part).
    if (failures.length > 0) return failures.find(f => f.reason === 'misrouted') ?? failures.find(f => f.reason === 'too_large') ?? failures[0]
    const sent = await Promise.all(plan.watermarks.map(r => this.#post(r.url, { ...r.batch, seq: this.#nextSeq() })))
    sent.forEach((o, i) => this.#lagging(lane, plan.watermarks[i].url, o))
    const missed = sent.filter((o): o is Failure => !o.ok)
    // A heartbeat (no windows, so no owner) must reach somebody: a cluster that is down is a failure
    // even with nothing to send, or failover would never notice it.
    if (plan.owners.length === 0 && missed.length > 0 && missed.length === sent.length) return missed[0]
    this.#recovered(lane, `shard map v${plan.version}`)
    return { ok: true }
  }

  async #post (url: string, batch: Batch): Promise<Outcome> {
    const { body, encoding } = encodeBatch(batch)
    const headers: Record<string, string> = { 'content-type': 'application/cbor' }
    if (encoding !== undefined) headers['content-encoding'] = encoding
    const signal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(this.#options.requestTimeout)])
    let status: number
    let text: string
    try {
      const res = await this.#client.request(partialsUrl(url), { method: 'POST', headers, body, signal })
      status = res.status
      text = res.text
    } catch (err) {
      return transportFailure(err)
    }
    if (status === 200) {
      let acked: unknown
      try {
        acked = (JSON.parse(text) as { acked?: unknown }).acked
      } catch {}
      return acked === batch.seq ? { ok: true } : { ok: false, reason: 'bad_ack', detail: `200 without {"acked": ${batch.seq}}: ${text.slice(0, 200)}` }
    }
    const detail = `${status} ${errorSummary(text)}`
    if (status === 413) return { ok: false, reason: 'too_large', detail }
    if (status === 503) return { ok: false, reason: 'unavailable', detail }
    if (status === 421) return { ok: false, reason: 'misrouted', detail, shardMap: carriedMap(text) }
    if (status >= 500) return { ok: false, reason: 'server_error', detail }
    return { ok: false, reason: 'rejected', detail }
  }

  /**
   * Counts a failed request, adopts the shard map a 421 carries, and logs the failure unless it
   * repeats the last problem of the tier.
   */
  #refused (lane: Lane, url: string, outcome: Failure, attempt: Attempt): void {
    this.#count(lane, outcome)
    const problem = `${url} ${outcome.reason} ${outcome.detail}`
    if (problem === lane.lastProblem) return
    lane.lastProblem = problem
    const what = attempt.ids.length === 0 ? 'a watermark batch' : `a batch of ${attempt.ids.length} windows`
    const then = outcome.reason === 'too_large' && attempt.ids.length > 1
      ? 'halving it'
      : outcome.reason === 'misrouted' && lane.router !== undefined ? 're-planning it by shard' : 'keeping it, retrying with backoff'
    this.#options.log.warn('uplink.batch_refused', `${lane.tier.name} ${url} did not take ${what} (${outcome.reason}: ${outcome.detail}); ${then}`, {
      tier: lane.tier.name, url, reason: outcome.reason, windows: attempt.ids.length
    })
  }

  #count (lane: Lane, outcome: Failure): void {
    const failed = this.stats.failed[lane.tier.name]
    failed[outcome.reason] = (failed[outcome.reason] ?? 0) + 1
    if (outcome.shardMap !== undefined) lane.router?.adopt(outcome.shardMap)
  }

  #recovered (lane: Lane, where: string): void {
    if (lane.lastProblem !== undefined) this.#options.log.info('uplink.recovered', `${lane.tier.name} ${where} takes batches again`, { tier: lane.tier.name, url: where })
    lane.lastProblem = undefined
  }

  /**
   * Notes how a member took the watermarks it only gets to finalize its own windows (Plan.watermarks):
   * a failure is counted and logged once per member and problem, and fails nothing.
   */
  #lagging (lane: Lane, url: string, outcome: Outcome): void {
    if (outcome.ok) {
      lane.lagging.delete(url)
      return
    }
    this.#count(lane, outcome)
    const problem = `${outcome.reason} ${outcome.detail}`
    if (lane.lagging.get(url) !== problem) {
      lane.lagging.set(url, problem)
      this.#options.log.warn('uplink.watermarks_refused', `${lane.tier.name} ${url} did not take watermarks (${outcome.reason}: ${outcome.detail}); it gets the next ones`, {
        tier: lane.tier.name, url, reason: outcome.reason
      })
    }
  }

  #acknowledged (lane: Lane, attempt: Attempt): void {
    this.#outbox.markDelivered(lane.tier.name, attempt.ids)
    this.#source.delivered?.(attempt.batch, lane.tier.name)
    this.stats.sent[lane.tier.name]++
    lane.lastAckAt = Date.now()
    for (const w of attempt.batch.watermarks) {
      const k = watermarkKey(w)
      // A receiver takes the flag of each entry as it comes: the last one sent is what it believes.
      lane.acked.set(k, { watermark: Math.max(lane.acked.get(k)?.watermark ?? -Infinity, w.watermark), idle: w.idle === true })
    }
    lane.delay = Math.min(this.#options.retryMin, this.#options.retryMax)
    lane.limit = Math.min(this.#options.maxBatchItems, lane.limit * 2)
    lane.failingSince = undefined
    if (!lane.primary) return
    clearTimeout(this.#failoverTimer)
    this.#failoverTimer = undefined
    if (this.#failedOver) {
      this.#failedOver = false
      this.#options.log.info('uplink.failback', `${lane.tier.name} is back; ${this.#lanes[1].tier.name} no longer used`, { tier: lane.tier.name, from: this.#lanes[1].tier.name })
    }
  }

  #failing (lane: Lane): void {
    if (lane.failingSince !== undefined) return
    lane.failingSince = Date.now()
    if (lane.primary && this.#lanes.length > 1) {
      this.#failoverTimer = setTimeout(() => this.#failover(), this.#options.failoverAfter)
    }
  }

  #failover (): void {
    this.#failoverTimer = undefined
    if (this.#stopped || this.#failedOver || this.#lanes[0].failingSince === undefined) return
    this.#failedOver = true
    this.stats.failovers++
    this.#options.log.warn('uplink.failover', `no ${this.#lanes[0].tier.name} has taken a batch for ${this.#options.failoverAfter} ms; ` +
      `failing over to ${this.#lanes[1].tier.name} ${this.#lanes[1].tier.urls.join(', ')}`, {
      from: this.#lanes[0].tier.name, tier: this.#lanes[1].tier.name, urls: this.#lanes[1].tier.urls, afterMs: this.#options.failoverAfter
    })
    this.notify()
  }

  /** The next wait after a failure: exponential, with jitter (half of it random) so edges spread out. */
  #backoff (lane: Lane): number {
    const d = lane.delay
    lane.delay = Math.min(this.#options.retryMax, d * 2)
    return d / 2 + Math.random() * d / 2
  }

  #nextSeq (): number {
    if (this.#seq >= this.#seqReserved) {
      this.#seqReserved = this.#seq + SEQ_BLOCK
      this.#outbox.setMeta(SEQ_META, String(this.#seqReserved))
    }
    return ++this.#seq
  }

  #sleep (ms: number, wakeable: boolean): Promise<void> {
    if (this.#stopped) return Promise.resolve()
    return new Promise(resolve => {
      const wake = () => {
        clearTimeout(timer)
        this.#wakeable.delete(wake)
        this.#sleeping.delete(wake)
        resolve()
      }
      const timer = ms === Infinity ? undefined : setTimeout(wake, ms)
      this.#sleeping.add(wake)
      if (wakeable) this.#wakeable.add(wake)
    })
  }
}

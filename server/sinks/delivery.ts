/**
 * Delivery of results to a node's sinks. Each sink has its own durable, bounded queue in the data dir
 * (an Outbox: `<data-dir>/sinks/<name>.db`) and its own delivery loop, so a sink that is down or slow
 * neither slows the pipeline (which only appends) nor the other sinks, and catches up when it is back.
 *
 * At least once: a result leaves the queue only once its sink has it; after a crash the results whose
 * delivery was under way are sent again (the postgres upsert and the InfluxDB point per window make that
 * harmless; MQTT subscribers and webhooks see a repeat, the latter with the same Idempotency-Key).
 * Failures are retried with exponential backoff with jitter (the uplink's policy: from 200 ms, doubling
 * up to the sink's `retry-max`, half of each wait random). A result the target refuses for good (a 4xx)
 * is set aside (`<name>.rejected.db`, bounded) and counted; a batch refused as a whole is sent again one
 * result at a time, so that one bad result does not hold up the others.
 */
import { join } from 'node:path'
import type { Logger } from '../shell/log.ts'
import type { Metrics, Sample } from '../shell/metrics.ts'
import { PeerClient } from '../shell/peer-client.ts'
import type { NodeSecurity } from '../shell/security.ts'
import { Outbox } from '../delivery/outbox.ts'
import type { OutboxItem } from '../delivery/outbox.ts'
import type { WindowResult } from '../shell/results.ts'
import { SINKS } from './index.ts'
import type { SinkConfig } from './index.ts'
import { SinkRejected } from './sink.ts'
import type { Sink } from './sink.ts'

const TARGET = 'sink'
const RETRY_MIN = 200
/** How often an idle loop looks at its queue anyway (appends wake it at once). */
const IDLE_EVERY = 1000
const REJECTED_MAX = 16 * 1024 * 1024

export interface SinkStats {
  delivered: number
  /** Results set aside: refused by the target, or unreadable. */
  errors: number
  /** Deliveries that failed and were retried. */
  retries: number
}

class Lane {
  readonly config: SinkConfig
  readonly outbox: Outbox
  readonly rejected: Outbox
  readonly sink: Sink
  readonly batch: number
  readonly stats: SinkStats = { delivered: 0, errors: 0, retries: 0 }
  readonly log: Logger
  buffer: Uint8Array[] = []
  delay = RETRY_MIN
  /** Results to send one at a time (after a batch was refused as a whole). */
  single = 0
  problem: string | undefined
  wake: (() => void) | undefined

  constructor (config: SinkConfig, dataDir: string | undefined, log: Logger, security: Pick<NodeSecurity, 'client' | 'clientTls'>) {
    const def = SINKS.get(config.type)
    if (def === undefined) throw new Error(`unknown sink type ${config.type}`)
    this.config = config
    this.log = log.child({ sink: config.name, sinkType: config.type })
    const dir = dataDir === undefined ? undefined : join(dataDir, 'sinks')
    this.outbox = new Outbox({ dataDir: dir, file: `${config.name}.db`, maxBytes: config.maxPending, targets: [TARGET] })
    this.rejected = new Outbox({ dataDir: dir, file: `${config.name}.rejected.db`, maxBytes: REJECTED_MAX, targets: [TARGET] })
    this.batch = def.batch
    this.sink = def.create(config.settings, { name: config.name, log: this.log, timeout: config.timeout, client: security.client, tls: security.clientTls })
  }

  wants (r: WindowResult): boolean {
    return this.config.pipelines === undefined || this.config.pipelines.includes(r.pipeline)
  }
}

export interface SinksParts {
  /** The node's data dir; undefined keeps the queues in memory (tests). */
  dataDir: string | undefined
  log: Logger
  metrics: Metrics
  /**
   * The node's TLS trust (--tls-ca) and certificate, for https and mqtts targets. Default: the
   * system's CAs and no client certificate.
   */
  security?: Pick<NodeSecurity, 'client' | 'clientTls'>
}

export class Sinks {
  readonly #lanes: Lane[]
  readonly #abort = new AbortController()
  /** Made here when no security was passed in, so closed here. */
  readonly #ownClient: PeerClient | undefined
  #loops: Array<Promise<void>> = []
  #stopped = false

  constructor (configs: readonly SinkConfig[], parts: SinksParts) {
    this.#lanes = []
    this.#ownClient = parts.security === undefined ? new PeerClient() : undefined
    const security = parts.security ?? { client: this.#ownClient!, clientTls: {} }
    try {
      for (const c of configs) this.#lanes.push(new Lane(c, parts.dataDir, parts.log, security))
    } catch (err) {
      for (const l of this.#lanes) {
        l.outbox.close()
        l.rejected.close()
      }
      this.#ownClient?.close()
      throw err
    }
    this.#registerMetrics(parts.metrics)
  }

  get size (): number {
    return this.#lanes.length
  }

  /** Queues a result for every sink that takes its pipeline; durable at the next flush(). */
  offer (result: WindowResult): void {
    let blob: Uint8Array | undefined
    for (const lane of this.#lanes) {
      if (!lane.wants(result)) continue
      blob ??= Buffer.from(JSON.stringify(result))
      lane.buffer.push(blob)
    }
  }

  /** Appends the offered results to the sinks' queues (one transaction each), and wakes the loops. */
  flush (): void {
    for (const lane of this.#lanes) {
      if (lane.buffer.length === 0) continue
      const blobs = lane.buffer
      lane.outbox.append(blobs)
      lane.buffer = []
      lane.wake?.()
    }
  }

  /** Queues results at once (a fog's or the cloud's finalization pass): durable when this returns. */
  append (results: readonly WindowResult[]): void {
    for (const r of results) this.offer(r)
    this.flush()
  }

  start (): void {
    if (this.#loops.length > 0) return
    this.#loops = this.#lanes.map(lane => this.#run(lane))
  }

  /** Stops delivering (a delivery under way is abandoned: its results stay queued) and closes. */
  async stop (): Promise<void> {
    if (this.#stopped) return
    this.flush()
    this.#stopped = true
    this.#abort.abort()
    for (const lane of this.#lanes) lane.wake?.()
    await Promise.all(this.#loops)
    for (const lane of this.#lanes) {
      await lane.sink.close().catch((err: unknown) => lane.log.warn('sink.close_failed', `sink ${lane.config.name} did not close cleanly`, { err }))
      lane.outbox.close()
      lane.rejected.close()
    }
    this.#ownClient?.close()
  }

  /** Per sink: delivered, pending, set aside, dropped. */
  status (): Array<{ name: string, type: string, delivered: number, pending: number, errors: number, dropped: number }> {
    return this.#lanes.map(l => ({
      name: l.config.name, type: l.config.type, delivered: l.stats.delivered, pending: l.outbox.items + l.buffer.length, errors: l.stats.errors, dropped: l.outbox.dropped
    }))
  }

  async #run (lane: Lane): Promise<void> {
    while (!this.#stopped) {
      let wait = 0
      try {
        const items = lane.outbox.pending(TARGET, lane.single > 0 ? 1 : lane.batch)
        if (items.length === 0) {
          await this.#sleep(lane, IDLE_EVERY)
          continue
        }
        const results: WindowResult[] = []
        const ids: number[] = []
        for (const item of items) {
          const r = decode(item)
          if (r === undefined) this.#setAside(lane, item, 'unreadable queue item')
          else {
            results.push(r)
            ids.push(item.id)
          }
        }
        if (results.length === 0) continue
        try {
          await lane.sink.send(results, this.#abort.signal)
        } catch (err) {
          if (this.#stopped) return
          if (err instanceof SinkRejected) {
            if (items.length > 1) {
              // One of them may be the bad one: each alone, so that the others go through.
              lane.single = items.length
              continue
            }
            this.#setAside(lane, items[0], err.message, results[0])
            if (lane.single > 0) lane.single--
            continue
          }
          lane.stats.retries++
          this.#failing(lane, err)
          wait = this.#backoff(lane)
        }
        if (wait === 0) {
          lane.outbox.markDelivered(TARGET, ids)
          lane.stats.delivered += ids.length
          if (lane.single > 0) lane.single = Math.max(0, lane.single - items.length)
          lane.delay = RETRY_MIN
          if (lane.problem !== undefined) lane.log.info('sink.recovered', `sink ${lane.config.name} takes results again`, { pending: lane.outbox.items })
          lane.problem = undefined
        }
      } catch (err) {
        // A bug or a storage error must not end delivery for good.
        lane.log.error('sink.delivery_failed', `delivering to sink ${lane.config.name} failed; trying again later`, { err })
        wait = this.#backoff(lane)
      }
      if (wait > 0) await this.#sleep(lane, wait, false)
    }
  }

  #setAside (lane: Lane, item: OutboxItem, reason: string, r?: WindowResult): void {
    lane.rejected.append([item.data])
    lane.outbox.markDelivered(TARGET, [item.id])
    lane.stats.errors++
    lane.log.warn('sink.result_rejected', `sink ${lane.config.name} refused a result; set aside (${reason})`, {
      pipeline: r?.pipeline, key: r?.key, start: r === undefined ? undefined : new Date(r.start).toISOString(), revision: r?.revision, reason
    })
  }

  #failing (lane: Lane, err: unknown): void {
    const problem = (err as Error).message
    if (problem === lane.problem) return
    lane.problem = problem
    lane.log.warn('sink.unavailable', `sink ${lane.config.name} did not take results (${problem}); keeping them, retrying with backoff`, { pending: lane.outbox.items, reason: problem })
  }

  /** The next wait after a failure: exponential, with jitter (half of it random). */
  #backoff (lane: Lane): number {
    const d = lane.delay
    lane.delay = Math.min(lane.config.retryMax, d * 2)
    return d / 2 + Math.random() * d / 2
  }

  #sleep (lane: Lane, ms: number, wakeable = true): Promise<void> {
    if (this.#stopped) return Promise.resolve()
    return new Promise(resolve => {
      const done = (): void => {
        clearTimeout(timer)
        if (lane.wake === done) lane.wake = undefined
        resolve()
      }
      const timer = setTimeout(done, ms)
      // While backing off, only stop() wakes the loop (new results must not hurry a retry).
      lane.wake = wakeable ? done : () => { if (this.#stopped) done() }
    })
  }

  #registerMetrics (m: Metrics): void {
    const per = (read: (l: Lane) => number) => (): Sample[] => this.#lanes.map(l => [{ sink: l.config.name }, read(l)])
    m.counter('fogmesh_sink_delivered_total', 'Results a sink has taken', ['sink'], per(l => l.stats.delivered))
    m.gauge('fogmesh_sink_pending', 'Results waiting in a sink\'s queue', ['sink'], per(l => l.outbox.items + l.buffer.length))
    m.counter('fogmesh_sink_errors_total', 'Results a sink refused for good (4xx), set aside and not retried', ['sink'], per(l => l.stats.errors))
    m.counter('fogmesh_sink_dropped_total', 'Results dropped from a full sink queue (oldest first) since the node started', ['sink'], per(l => l.outbox.dropped))
    m.counter('fogmesh_sink_retries_total', 'Deliveries to a sink that failed and are retried', ['sink'], per(l => l.stats.retries))
  }
}

function decode (item: OutboxItem): WindowResult | undefined {
  try {
    const r = JSON.parse(Buffer.from(item.data).toString('utf8')) as WindowResult
    return typeof r.pipeline === 'string' && typeof r.key === 'string' && typeof r.start === 'number' ? r : undefined
  } catch {
    return undefined
  }
}

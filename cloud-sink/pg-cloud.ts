/**
 * The cloud tier on PostgreSQL (`fogmesh cloud --store postgres://…`): one process of it. Any number
 * of processes on the same store are one tier: each takes batches and answers queries from the store,
 * and finalizes the windows that are due and that no other process is finalizing (cloud-sink/pg-store.ts).
 *
 * Invariants:
 * - a batch is acknowledged only after the transaction that applied it committed; a failure of the
 *   store refuses it with 503 store_unavailable (senders retry), never with a partial write;
 * - nothing decides from this process's memory what another process could decide differently: the
 *   due rule (core's Finalizer) is fed, at every pass, with the watermarks and last-seen times stored
 *   by every process, and the revisions come from the locked rows;
 * - the sinks get each finalization in their durable queues before it commits (at least once);
 * - the store unreachable (at start, or PostgreSQL restarting) is waited out: start retries with a
 *   log line naming the store (password masked), and passes and batches resume on their own. A store
 *   that refuses the login, or holds a newer schema, ends the start at once with the reason;
 * - a stop asked for while start waits for the store (`abort`) ends the wait: start returns without
 *   taking batches, and stop closes what it opened.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { pipelineToPlain } from '../core/pipeline/format.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { ConfigError, HttpError } from '../core/errors.ts'
import type { PipelineDef } from '../core/upstream/batch.ts'
import { Finalizer, sameSelects } from '../core/upstream/merge.ts'
import { pipelineDef } from '../core/upstream/pipeline-def.ts'
import { RoleMesh, SOFTWARE_VERSION } from '../server/mesh/role-mesh.ts'
import type { HeartbeatInput } from '../server/mesh/mesh-node.ts'
import { edgesView } from '../server/merge/edges-view.ts'
import { MergeStats } from '../server/merge/merge-stats.ts'
import { PartialsRoute } from '../server/merge/partials-route.ts'
import type { Ack } from '../server/merge/partials-route.ts'
import { advertisedUrl } from '../server/shell/advertise.ts'
import { HttpService, httpLimits } from '../server/shell/http.ts'
import type { PipelineInfo, ServiceApi } from '../server/shell/http.ts'
import type { Logger } from '../server/shell/log.ts'
import { Metrics } from '../server/shell/metrics.ts'
import type { ResultQuery, WindowResult } from '../server/shell/results.ts'
import { NodeSecurity } from '../server/shell/security.ts'
import { Sinks } from '../server/sinks/delivery.ts'
import type { CloudOptions, StoreConfig } from './config.ts'
import { PgStore } from './pg-store.ts'
import type { PendingWindow, QueuedBatch, StoredWatermark } from './pg-store.ts'

/** Most batches committed together in one transaction. */
const GROUP_MAX = 64
/** Connections of the pool kept for finalization passes and queries; the others commit groups. */
const RESERVED_CONNECTIONS = 2
/** Least time between the starts of two finalization passes, ms. */
const PASS_GAP = 50
/** How often windows and results past retention are pruned. */
const PRUNE_EVERY = 60_000
/** Waits between attempts to reach the store at start: from the first, doubling up to the last. */
const CONNECT_RETRY = { min: 200, max: 5_000 }

interface Queued extends QueuedBatch {
  resolve: (ack: Ack) => void
  reject: (err: unknown) => void
}

export class PgCloud implements ServiceApi {
  readonly role = 'cloud'
  readonly id: string
  readonly metrics = new Metrics()
  readonly #options: CloudOptions & { store: StoreConfig }
  readonly #log: Logger
  readonly #store: PgStore
  readonly #security: NodeSecurity
  readonly #http: HttpService
  readonly #partials: PartialsRoute
  readonly #sinks: Sinks | undefined
  readonly membership: RoleMesh
  /** Pipelines from --pipelines: listed with their specs; they merge as declared. */
  readonly #fileSpecs: Map<string, PipelineSpec>
  readonly #fileDefs: Map<string, PipelineDef>
  /** Definitions learned from batches (any process's), as last read from the store. */
  #learned = new Map<string, PipelineDef>()
  /** The watermarks and pending windows of the last pass, for /v1/mesh and the gauges. */
  #watermarks: StoredWatermark[] = []
  #pending: PendingWindow[] = []
  /** This process's counts: each process counts what it took and finalized (Prometheus sums them). */
  readonly #stats = new MergeStats()
  readonly #queue: Queued[] = []
  #inFlight = 0
  #ready = false
  #stopped = false
  #storeUp = false
  #passing = false
  #passQueued = false
  #lastPass = 0
  #passes: Promise<void> = Promise.resolve()
  #storeErrors = 0
  #sinkErrors = 0
  #sinkFailing = false
  #timers: NodeJS.Timeout[] = []

  constructor (options: CloudOptions & { store: StoreConfig }, specs: PipelineSpec[], log: Logger) {
    this.id = options.id
    this.#options = options
    this.#log = log
    this.#security = new NodeSecurity(options, [{ flag: '--host', host: options.host }])
    this.#fileSpecs = new Map(specs.map(s => [s.name, s]))
    this.#fileDefs = new Map(specs.map(s => [s.name, pipelineDef(s)]))
    this.#store = new PgStore(options.store, log, `fogmesh-cloud-${options.id}`)
    this.#partials = new PartialsRoute({
      role: 'cloud',
      maxBatch: options.maxBatch,
      batchMemory: options.batchMemory,
      security: this.#security,
      ready: () => this.#ready,
      commit: async (batch, now) => {
        const ack = await new Promise<Ack>((resolve, reject) => {
          this.#queue.push({ batch, now, resolve, reject })
          this.#drain()
        })
        // A window this batch completed (a watermark, a fog's final) should not wait for the next tick.
        if (batch.watermarks.length > 0 || batch.role === 'fog') this.#queuePass()
        return ack
      }
    })
    this.#http = new HttpService(this, [this.#partials.route],
      { host: options.host, port: options.httpPort, maxBody: options.maxBatch, ...httpLimits(options), tls: this.#security.server, apiToken: this.#security.apiToken, log })
    this.membership = new RoleMesh(options, 'cloud', () => this.#heartbeat())
    this.#registerMetrics()
    this.membership.registerMetrics(this.metrics)
    // Each process's queues are its own (in its data dir); whichever process finalizes a window queues it.
    this.#sinks = options.sinks !== undefined && options.sinks.length > 0
      ? new Sinks(options.sinks, { dataDir: options.dataDir, log, metrics: this.metrics, security: this.#security })
      : undefined
  }

  get httpUrl (): string {
    return this.#http.url
  }

  /**
   * Serves /healthz (503 until the store is reached), then waits for the store, then takes batches.
   * Returns early, taking nothing, once `abort` fires (a stop signal while it waits).
   */
  async start (abort?: AbortSignal): Promise<void> {
    await this.#http.listen()
    try {
      await this.#openStore(abort)
    } catch (err) {
      // A store this process must not write to (a newer schema, a conflicting pipelines file): nothing
      // may keep the process alive after the error is reported.
      await this.#http.close()
      await this.#store.close()
      this.#security.close()
      throw err
    }
    if (this.#stopped || abort?.aborted === true) return
    this.#timers.push(setInterval(() => this.#queuePass(), this.#options.tick))
    this.#timers.push(setInterval(() => { void this.#prune() }, PRUNE_EVERY))
    await this.membership.start()
    this.#sinks?.start()
    this.#ready = true
  }

  async #openStore (abort: AbortSignal | undefined): Promise<void> {
    let wait = CONNECT_RETRY.min
    for (let attempt = 1; !this.#stopped && abort?.aborted !== true; attempt++) {
      try {
        const applied = await this.#store.open()
        this.#storeUp = true
        if (applied.length > 0) this.#log.info('store.migrated', `store ${this.#store.shown}: schema brought to version ${applied[applied.length - 1]}`, { applied })
        if (attempt > 1) this.#log.info('store.reached', `store ${this.#store.shown} reached after ${attempt} attempts`, { attempts: attempt })
        await this.#refreshPipelines()
        this.#checkFileDefinitions()
        return
      } catch (err) {
        if (err instanceof ConfigError) throw err
        // The first failure, then about every half minute: a clear line, not a flood.
        if (attempt === 1 || attempt % 8 === 0) {
          const reason = ((err as Error).cause as Error | undefined)?.message ?? (err as Error).message
          this.#log.warn('store.unreachable', `waiting for the store ${this.#store.shown} (${reason}); trying again every ${CONNECT_RETRY.max / 1000}s at most`, { attempt })
        }
        // An abort ends the wait early (the rejection it causes is that, nothing else).
        await sleep(wait, undefined, { signal: abort }).catch(() => {})
        wait = Math.min(CONNECT_RETRY.max, wait * 2)
      }
    }
  }

  /** Stops taking batches (queued ones are answered), lets a pass under way finish, and closes. */
  async stop (): Promise<void> {
    this.#ready = false
    this.#stopped = true
    for (const t of this.#timers) clearInterval(t)
    await this.membership.stop()
    await this.#http.close()
    while (this.#inFlight > 0 || this.#queue.length > 0) await new Promise(resolve => setTimeout(resolve, 20))
    await this.#passes
    await this.#sinks?.stop()
    await this.#store.close()
    this.#security.close()
  }

  /** SIGHUP: the certificate files are read again; new connections use them. */
  reload (): void {
    const tls = this.#security.reload()
    if (tls !== undefined) this.#http.setTls(tls)
    this.#log.info('tls.reloaded', `certificates read again from ${this.#security.files.join(', ') || '(no TLS files)'}`, { files: this.#security.files })
  }

  readyLine (): string {
    return `ready cloud ${this.id} http=${this.httpUrl}${this.membership.readySuffix()}`
  }

  // Batches

  /** Starts groups of queued batches, each on a connection of its own, as many as the pool leaves for them. */
  #drain (): void {
    while (this.#queue.length > 0 && this.#inFlight < Math.max(1, this.#options.store.pool - RESERVED_CONNECTIONS)) {
      const group = this.#queue.splice(0, GROUP_MAX)
      this.#inFlight++
      void this.#commit(group).finally(() => {
        this.#inFlight--
        this.#drain()
      })
    }
  }

  async #commit (group: Queued[]): Promise<void> {
    let outcomes
    try {
      outcomes = await this.#store.commit(group, name => this.#fileDefs.get(name))
      this.#storeOk()
    } catch (err) {
      this.#storeFailed(err)
      for (const q of group) q.reject(err)
      return
    }
    for (const [i, q] of group.entries()) {
      const o = outcomes[i]
      if ('error' in o) {
        q.reject(o.error)
        continue
      }
      for (const [pipeline, c] of o.counts) {
        const s = this.#stats.of(pipeline)
        s.received += c.received
        s.ignored += c.ignored
        s.afterFinal += c.afterFinal
      }
      q.resolve(o.ack)
    }
  }

  // Finalization

  /**
   * Runs a pass soon: at once, or PASS_GAP after the last one began. Under load batches come faster
   * than passes are worth running (each reads the pending windows), so they share one.
   */
  #queuePass (): void {
    if (this.#stopped || this.#passQueued || !this.#ready) return
    this.#passQueued = true
    setTimeout(() => {
      this.#passQueued = false
      if (this.#passing || this.#stopped) return
      this.#passing = true
      this.#lastPass = Date.now()
      this.#passes = this.#pass(this.#lastPass).catch((err: unknown) => {
        this.#storeFailed(err)
      }).finally(() => { this.#passing = false })
    }, Math.max(0, this.#lastPass + PASS_GAP - Date.now()))
  }

  /**
   * One finalization pass: the due rule fed with every process's watermarks, the pending windows,
   * and the due ones finalized in one transaction (those another process holds are skipped: it is
   * finalizing them).
   */
  async #pass (now: number): Promise<void> {
    const [watermarks, pending] = await Promise.all([this.#store.watermarks(), this.#store.pending()])
    this.#storeOk()
    this.#watermarks = watermarks
    this.#pending = pending
    const finalizer = new Finalizer(this.#options.finalizeAfter)
    for (const w of watermarks) finalizer.observe(w.pipeline, w.edge, w.watermark, w.lastSeen, w.idle)
    const decide = (w: PendingWindow): number | undefined => {
      if (w.finalRevision !== null) return w.dirty ? w.finalRevision + 1 : undefined
      return w.upstreamFinal || finalizer.isDue(w.pipeline, w.end, w.firstSeen, now) ? 0 : undefined
    }
    const due = pending.filter(w => decide(w) !== undefined)
    if (due.length === 0) return
    if (due.some(w => this.#definition(w.pipeline) === undefined)) await this.#refreshPipelines()
    const done = await this.#store.finalize(due, decide, p => this.#definition(p), results => this.#toSinks(results), now)
    for (const f of done) {
      const s = this.#stats.of(f.window.pipeline)
      if (f.revision === 0) s.finalized++
      else s.revised++
    }
    // More may be due than one transaction takes.
    if (done.length > 0 && due.length > done.length) this.#queuePass()
  }

  #toSinks (results: WindowResult[]): void {
    if (this.#sinks === undefined) return
    try {
      this.#sinks.append(results)
      this.#sinkFailing = false
    } catch (err) {
      this.#sinkErrors++
      if (!this.#sinkFailing) this.#log.error('merge.listener_failed', 'the sinks\' queues did not take final windows; the windows stay pending and are offered again', { err })
      this.#sinkFailing = true
      throw err
    }
  }

  async #prune (): Promise<void> {
    if (this.#stopped || !this.#storeUp) return
    try {
      await this.#store.prune(Date.now() - this.#options.retention, this.#options.maxResults)
    } catch (err) {
      this.#log.error('merge.prune_failed', 'pruning failed', { err })
    }
  }

  #storeOk (): void {
    if (this.#storeUp) return
    this.#storeUp = true
    this.#log.info('store.recovered', `store ${this.#store.shown} answers again`)
  }

  #storeFailed (err: unknown): void {
    // Refusals of one batch (a conflict, bad data) say nothing about the store.
    if (this.#stopped || (err instanceof HttpError && err.code !== 'store_unavailable')) return
    this.#storeErrors++
    if (!this.#storeUp) return
    this.#storeUp = false
    this.#log.warn('store.unavailable', `the store failed (${(err as Error).message}); batches get 503 and finalization waits until it answers again`)
  }

  // Definitions

  /** The --pipelines file must merge as the store's definitions do: its stored partials could not be merged otherwise. */
  #checkFileDefinitions (): void {
    for (const [name, def] of this.#fileDefs) {
      const stored = this.#learned.get(name)
      if (stored !== undefined && !sameSelects(stored, def)) {
        throw new ConfigError(`pipeline "${name}" in ${this.#options.pipelines ?? 'the pipelines file'} merges differently from the one in the store ${this.#store.shown} ` +
          '(learned from batches): its stored partials cannot be merged with the new definition; use a new pipeline name or another store')
      }
    }
  }

  #definition (pipeline: string): PipelineDef | undefined {
    return this.#fileDefs.get(pipeline) ?? this.#learned.get(pipeline)
  }

  async #refreshPipelines (): Promise<void> {
    this.#learned = new Map((await this.#store.pipelines()).map(d => [d.name, d]))
  }

  // ServiceApi

  isReady (): boolean {
    return this.#ready && this.#storeUp
  }

  async pipelines (): Promise<PipelineInfo[]> {
    await this.#refreshPipelines()
    const names = [...new Set([...this.#fileDefs.keys(), ...this.#learned.keys()])].sort()
    return names.map(name => {
      const spec = this.#fileSpecs.get(name)
      if (spec !== undefined) return { name: spec.name, version: spec.version, spec: pipelineToPlain(spec) }
      const def = this.#learned.get(name)!
      return { name: def.name, version: def.version, spec: { ...def } }
    })
  }

  async results (pipeline: string, q: ResultQuery): Promise<WindowResult[] | undefined> {
    if (this.#definition(pipeline) === undefined) await this.#refreshPipelines()
    const def = this.#definition(pipeline)
    if (def === undefined) return undefined
    return await this.#store.results(def, q)
  }

  mesh (): unknown {
    return {
      ...this.membership.json(),
      fog: { leader: null, shardMapVersion: 0, shards: 0, status: 'embedded' },
      store: { kind: 'postgres', url: this.#store.shown, up: this.#storeUp },
      edges: edgesView(this.#watermarks)
    }
  }

  #heartbeat (): HeartbeatInput {
    return {
      http: advertisedUrl(this.#options, this.#http.url),
      sw: SOFTWARE_VERSION,
      uptime: this.membership.uptime,
      rate: 0,
      outbox: 0,
      pipelines: [...this.#fileSpecs.values()].slice(0, 64).map(s => ({ name: s.name, version: s.version, watermark: null }))
    }
  }

  #registerMetrics (): void {
    const m = this.metrics
    this.#partials.registerMetrics(m)
    this.#stats.registerMetrics(m)
    m.counter('fogmesh_final_listener_errors_total', 'Finalization passes whose windows the sinks\' queues did not take; they are offered again', [], () => [[{}, this.#sinkErrors]])
    m.gauge('fogmesh_pending_windows', 'Merged windows not final yet (in the whole store, as of the last pass)', ['pipeline'], () => {
      const n = new Map<string, number>()
      for (const w of this.#pending) if (w.finalRevision === null) n.set(w.pipeline, (n.get(w.pipeline) ?? 0) + 1)
      return [...n].map(([pipeline, v]) => [{ pipeline }, v])
    })
    m.gauge('fogmesh_edge_watermark_seconds', 'Each edge\'s event-time watermark per pipeline, as stored', ['pipeline', 'edge'], () =>
      this.#watermarks.filter(w => Number.isFinite(w.watermark)).map(w => [{ pipeline: w.pipeline, edge: w.edge }, w.watermark / 1000]))
    m.gauge('fogmesh_store_up', 'Whether the PostgreSQL store answered the last time it was used (1) or not (0)', [], () => [[{}, this.#storeUp ? 1 : 0]])
    m.counter('fogmesh_store_errors_total', 'Store operations that failed (batches refused with 503, passes retried)', [], () => [[{}, this.#storeErrors]])
  }
}

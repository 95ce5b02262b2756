/**
 * The merge tier that fog coordinators and the cloud sink share, as one node: it wires the parts that
 * each do one job and serves the shared API (pipelines, results, mesh, shards, metrics).
 *
 *   POST /v1/partials ─▶ PartialsRoute (authenticate, decode, authorize) ─▶ Intake (group commit, acks)
 *        ─▶ MergeWindows (ContributionStore + pending windows) ─▶ Finalization (results, sinks, listeners)
 *
 * beside them: PipelineRegistry (how each pipeline merges), ReplicaMirror (a cluster member's copy of
 * what the others committed), GossipWatermarks (a fog's edges as the mesh sees them), MergeStats.
 *
 * It keeps per window and edge the contribution with the highest revision, finalizes a merged window
 * once every live edge's watermark has passed its end (or `--finalize-after` after it was first seen,
 * or at once when a fog says it is final), and serves the results.
 *
 * "Counts exactly once" rests on three rules: a batch is acknowledged only after it is committed; a
 * contribution replaces the stored one only with a higher revision (replays and the same contribution
 * by two routes change nothing); and a contribution that arrives after its window was finalized is
 * merged in and the window finalized again with revision + 1, never dropped (intake.ts,
 * finalization.ts). Edges apply a pipeline's `late` policy to late readings, so a partial arriving
 * after finalization is a delayed delivery.
 *
 * With --tls-client-ca, only the site's nodes write, each only what its role may (server/merge/partials-auth.ts):
 * the sender is authenticated before the body is read, and the decoded batch authorized as a whole
 * before any of it is admitted, so a refused batch leaves no trace but the refusal's count.
 *
 * Commits and finalization passes share one SerialQueue: with replication both wait for etcd, and a
 * pass must never see a commit half applied. Stopping answers the batches in flight, lets the queue
 * drain, and only then closes the stores.
 */
import type { PipelineSpec } from '../../core/pipeline/spec.ts'
import type { PipelineDef, Watermark } from '../../core/upstream/batch.ts'
import { Finalizer } from '../../core/upstream/merge.ts'
import type { ShardMapView } from '../../core/upstream/shards.ts'
import { advertisedUrl } from '../shell/advertise.ts'
import { ContributionStore } from './contribution-store.ts'
import { HttpService, httpLimits } from '../shell/http.ts'
import { roleLogger } from '../shell/log.ts'
import type { Logger } from '../shell/log.ts'
import type { PipelineInfo, Route, ServiceApi } from '../shell/http.ts'
import { RoleMesh, SOFTWARE_VERSION } from '../mesh/role-mesh.ts'
import type { HeartbeatInput } from '../mesh/mesh-node.ts'
import { Metrics } from '../shell/metrics.ts'
import { PartialsRoute } from './partials-route.ts'
import { NodeSecurity } from '../shell/security.ts'
import type { MergeOptions } from './merge-options.ts'
import type { Replication } from './replication.ts'
import { ResultStore } from '../shell/result-store.ts'
import { SerialQueue } from '../shell/serial-queue.ts'
import { Sinks } from '../sinks/delivery.ts'
import { withLive } from '../shell/results.ts'
import type { ResultQuery, WindowResult } from '../shell/results.ts'
import { edgesView } from './edges-view.ts'
import { Finalization } from './finalization.ts'
import type { FinalListener } from './finalization.ts'
import { GossipWatermarks } from './gossip-watermarks.ts'
import { Intake } from './intake.ts'
import { MergeStats } from './merge-stats.ts'
import { MergeWindows, windowResult } from './merge-windows.ts'
import { PipelineRegistry } from './pipeline-registry.ts'
import { ReplicaMirror } from './replica-mirror.ts'

export type { FinalListener } from './finalization.ts'

/** How often state past retention is pruned. */
const PRUNE_EVERY = 60_000

/** What a merge node is built from besides its options and pipelines; every one may be left out. */
export interface MergeNodeParts {
  /**
   * The replicated state of a cluster (the fog cluster on etcd). With it, the replicated state is the
   * durable one: the local stores are kept in memory as a mirror of it (filled through `mirror`), and
   * the data dir holds only what is this node's own. Default: none, the node's own durable store.
   */
  replication?: Replication
  /** More routes of the HTTP API (a fog's deployment routes). Default: none. */
  routes?: Route[]
  /** Default: the node's own, from its options (--log-level, --log-format). */
  log?: Logger
  /** TLS and the API token. Default: made from the options here, and then closed here too. */
  security?: NodeSecurity
  /** Batches waiting to leave this node (a fog's outbox for the cloud), for heartbeats. Default: 0. */
  outboxDepth?: () => number
  /** Revision of the deployed pipeline set this fog serves, for heartbeats. Default: 0. */
  deployedRevision?: () => number
}

export class MergeNode implements ServiceApi {
  readonly role: 'fog' | 'cloud'
  readonly id: string
  readonly metrics = new Metrics()
  /** Off unless --mesh-port or --bootstrap is given. */
  readonly membership: RoleMesh
  /** A cluster member's copy of what the other members committed (used only with replication). */
  readonly mirror: ReplicaMirror
  readonly #options: MergeOptions
  readonly #log: Logger
  readonly #security: NodeSecurity
  /** The security was made here (from the options), so it is closed here. */
  readonly #ownsSecurity: boolean
  readonly #replication: Replication | undefined
  readonly #outboxDepth: () => number
  readonly #deployedRevision: () => number
  readonly #pipelines: PipelineRegistry
  readonly #windows: MergeWindows
  readonly #results: ResultStore
  readonly #finalizer: Finalizer
  readonly #stats = new MergeStats()
  readonly #finalization: Finalization
  readonly #partials: PartialsRoute
  readonly #http: HttpService
  readonly #sinks: Sinks | undefined
  /** Commits and finalization passes run one at a time: with replication they wait for etcd. */
  readonly #exclusive = new SerialQueue()
  #ready = false
  #stopped = false
  #timers: NodeJS.Timeout[] = []
  /** Contributions received so far and when last sampled, for the heartbeat's rate. */
  #rate = { at: Date.now(), received: 0, perSecond: 0 }

  constructor (role: 'fog' | 'cloud', options: MergeOptions, specs: PipelineSpec[], parts: MergeNodeParts = {}) {
    this.role = role
    this.id = options.id
    this.#options = options
    this.#log = parts.log ?? roleLogger(role, options)
    this.#ownsSecurity = parts.security === undefined
    this.#security = parts.security ?? new NodeSecurity(options, [{ flag: '--host', host: options.host }])
    this.#replication = parts.replication
    this.#outboxDepth = parts.outboxDepth ?? (() => 0)
    this.#deployedRevision = parts.deployedRevision ?? (() => 0)
    const dataDir = this.#replication === undefined ? options.dataDir : undefined
    const store = new ContributionStore({ dataDir })
    this.#results = new ResultStore({ dataDir, retention: options.retention, maxResultsPerPipeline: options.maxResults, synchronous: 'FULL' })
    this.#pipelines = new PipelineRegistry({ role, specs, stored: store.pipelines(), pipelinesFile: options.pipelines, dataDir: options.dataDir })
    this.#finalizer = new Finalizer(options.finalizeAfter)
    // Idle flags are not stored: after a restart every edge counts as active until its next batch
    // says otherwise, which at worst makes windows wait as they did before edges could be idle.
    for (const w of store.watermarks()) this.#finalizer.observe(w.pipeline, w.edge, w.watermark, w.lastSeen)
    this.#windows = new MergeWindows(store)
    const state = { pipelines: this.#pipelines, windows: this.#windows, finalizer: this.#finalizer }
    const intake = new Intake({ ...state, stats: this.#stats, exclusive: this.#exclusive, replication: this.#replication })
    this.mirror = new ReplicaMirror({ ...state, results: this.#results })
    this.#partials = new PartialsRoute({
      role,
      maxBatch: options.maxBatch,
      batchMemory: options.batchMemory,
      security: this.#security,
      ready: () => this.#ready,
      commit: async (batch, now) => {
        this.#replication?.admit(batch)
        const ack = await intake.commit(batch, now)
        this.#finalization.soon()
        return ack
      }
    })
    this.#http = new HttpService(this, [
      this.#partials.route,
      { method: 'GET', path: '/v1/shards', handle: () => ({ body: this.shards() }) },
      ...parts.routes ?? []
    ],
      { host: options.host, port: options.httpPort, maxBody: options.maxBatch, ...httpLimits(options), tls: this.#security.server, apiToken: this.#security.apiToken, log: this.#log })
    this.membership = new RoleMesh(options, role, () => this.#heartbeat())
    // Their queues live in the data dir in a cluster too: results wait there while a sink is down.
    this.#sinks = options.sinks !== undefined && options.sinks.length > 0
      ? new Sinks(options.sinks, { dataDir: options.dataDir, log: this.#log, metrics: this.metrics, security: this.#security })
      : undefined
    // Results a crash kept from the sinks' queues (this node's before a restart, or a shard's previous owner's).
    const sinks = this.#sinks
    if (sinks !== undefined) this.#replication?.handOver(results => { if (this.#stopped) return false; sinks.append(results); return true })
    this.#finalization = new Finalization({
      ...state,
      results: this.#results,
      stats: this.#stats,
      exclusive: this.#exclusive,
      log: this.#log,
      replication: this.#replication,
      sinks: this.#sinks,
      gossip: role === 'fog' ? new GossipWatermarks({ ...state, membership: this.membership }) : undefined
    })
    this.#registerMetrics()
    this.membership.registerMetrics(this.metrics)
  }

  get httpUrl (): string {
    return this.#http.url
  }

  /** The URL other nodes reach this one at (see advertise.ts). */
  get advertisedUrl (): string {
    return advertisedUrl(this.#options, this.#http.url)
  }

  async start (): Promise<void> {
    // The mesh code (loaded only with the mesh on) and a bad --bootstrap: before any port is opened.
    await this.membership.load()
    await this.#http.listen()
    this.#timers.push(setInterval(() => { this.#finalization.run() }, this.#options.tick))
    this.#timers.push(setInterval(() => { this.#prune() }, PRUNE_EVERY))
    // After the HTTP API, whose URL the heartbeats carry.
    await this.membership.start()
    this.#sinks?.start()
    this.#ready = true
  }

  /** Stops taking batches (in-flight ones are answered), commits everything and closes. */
  async stop (): Promise<void> {
    this.#ready = false
    for (const t of this.#timers) clearInterval(t)
    await this.membership.stop()
    await this.#http.close()
    this.#stopped = true
    this.#finalization.stop()
    this.mirror.stop()
    await this.#exclusive.drained()
    await this.#sinks?.stop()
    this.#results.close()
    this.#windows.store.close()
    if (this.#ownsSecurity) this.#security.close()
  }

  /** SIGHUP: the certificate files are read again; new connections use them. */
  reload (): void {
    const tls = this.#security.reload()
    if (tls !== undefined) this.#http.setTls(tls)
    this.#log.info('tls.reloaded', `certificates read again from ${this.#security.files.join(', ') || '(no TLS files)'}`, { files: this.#security.files })
  }

  readyLine (): string {
    return `ready ${this.role} ${this.id} http=${this.httpUrl}${this.membership.readySuffix()}`
  }

  /** See Finalization.onFinal: each pass's windows, for a fog's forwarder. Returns a remover. */
  onFinal (listener: FinalListener): () => void {
    return this.#finalization.onFinal(listener)
  }

  /**
   * The deployed pipelines, as of the latest change: merged here from now on and listed with their
   * specs (see PipelineRegistry.setDeployed), and announced to the mesh.
   */
  setDeployed (specs: readonly PipelineSpec[]): void {
    this.#pipelines.setDeployed(specs)
    this.membership.announce()
  }

  /** How a pipeline merged here merges (from --pipelines, or learned from batches), for forwarding. */
  definition (pipeline: string): PipelineDef | undefined {
    return this.#pipelines.definition(pipeline)
  }

  /**
   * Every edge's watermark per pipeline as known here (for forwarding upstream with the partials);
   * -Infinity for an edge known to feed the pipeline that has not reported one here yet.
   */
  watermarks (): Watermark[] {
    return [...this.#finalizer.watermarks()].map(w => w.idle
      ? { pipeline: w.pipeline, edge: w.edge, watermark: w.watermark, idle: true }
      : { pipeline: w.pipeline, edge: w.edge, watermark: w.watermark })
  }

  #heartbeat (): HeartbeatInput {
    const received = this.#stats.received()
    const now = Date.now()
    const r = this.#rate
    // Sampled at each heartbeat rather than kept per second: heartbeats are the only reader.
    if (now > r.at) this.#rate = { at: now, received, perSecond: (received - r.received) * 1000 / (now - r.at) }
    const hb: HeartbeatInput = {
      http: this.advertisedUrl,
      sw: SOFTWARE_VERSION,
      uptime: this.membership.uptime,
      rate: this.#rate.perSecond,
      outbox: this.#outboxDepth(),
      pipelines: this.#pipelines.specs().slice(0, 64).map(s => ({ name: s.name, version: s.version, watermark: null }))
    }
    if (this.role === 'fog') {
      const map = this.shards()
      hb.fog = { leader: this.#fogView().leader, shardMapVersion: map.version, endpoints: map.members.slice(0, 16).map(m => m.http), deployed: this.#deployedRevision() }
    }
    return hb
  }

  #prune (): void {
    if (this.#stopped) return
    try {
      const now = Date.now()
      this.#results.prune(now)
      // In a cluster, windows leave when the leader removes them from the replicated state (see ReplicaMirror.remove).
      if (this.#replication === undefined) this.#windows.store.prune(now - this.#options.retention, this.#options.maxResults)
    } catch (err) {
      this.#log.error('merge.prune_failed', 'pruning failed', { err })
    }
  }

  // ServiceApi

  /** Serving, and (in a cluster) joined: a member still waiting for etcd is not ready yet. */
  isReady (): boolean {
    return this.#ready && this.#replication?.view().status !== 'starting'
  }

  pipelines (): PipelineInfo[] {
    return this.#pipelines.infos()
  }

  /** Final results from the store, with the windows not final yet (`final: false`, merged so far) mixed in. */
  results (pipeline: string, q: ResultQuery): WindowResult[] | undefined {
    if (!this.#pipelines.has(pipeline)) return undefined
    const def = this.#pipelines.definition(pipeline)
    const live: WindowResult[] = []
    for (const [, w] of this.#windows.pending()) {
      if (w.pipeline === pipeline && w.finalRevision === null) live.push(windowResult(def, w, false, 0))
    }
    return withLive(this.#results.query(pipeline, q), live, q)
  }

  /** GET /v1/shards: the cluster's shard map, or (a single node) no shards: send it everything. */
  shards (): ShardMapView {
    return this.#replication?.view() ?? {
      version: 0, shards: 0, owners: [], members: [{ id: this.id, http: this.advertisedUrl }], leader: null, status: 'embedded'
    }
  }

  mesh (): unknown {
    return { ...this.membership.json(), fog: this.#fogView(), edges: edgesView(this.#finalizer.watermarks()) }
  }

  #fogView (): { leader: string | null, shardMapVersion: number, shards: number, status: string } {
    const v = this.shards()
    // A lone fog leads itself; a cluster between two leaders has none, as its shard map says.
    return { leader: v.leader ?? (this.role === 'fog' && v.status === 'embedded' ? this.id : null), shardMapVersion: v.version, shards: v.shards, status: v.status }
  }

  #registerMetrics (): void {
    const m = this.metrics
    this.#partials.registerMetrics(m)
    this.#stats.registerMetrics(m)
    this.#finalization.registerMetrics(m)
    m.gauge('fogmesh_pending_windows', 'Merged windows not final yet', ['pipeline'], () =>
      [...this.#windows.openCounts(this.#pipelines.names())].map(([pipeline, v]) => [{ pipeline }, v]))
    m.gauge('fogmesh_edge_watermark_seconds', 'Each edge\'s event-time watermark per pipeline, as last reported', ['pipeline', 'edge'], () =>
      [...this.#finalizer.watermarks()].filter(w => Number.isFinite(w.watermark)).map(w => [{ pipeline: w.pipeline, edge: w.edge }, w.watermark / 1000]))
  }
}

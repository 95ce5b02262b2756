/**
 * The merge tier that fog coordinators and the cloud sink share. It takes batches of partials
 * (`POST /v1/partials`), keeps per window and edge the contribution with the highest revision, finalizes
 * a merged window once every live edge's watermark has passed its end (or `--finalize-after` after it
 * was first seen, or at once when a fog says it is final), and serves the results over the shared API.
 *
 * "Counts exactly once" rests on three rules: a batch is acknowledged only after it is committed; a
 * contribution replaces the stored one only with a higher revision (replays and the same contribution
 * by two routes change nothing); and a contribution that arrives after its window was finalized is
 * merged in and the window finalized again with revision + 1, never dropped. Edges apply a pipeline's
 * `late` policy to late readings, so a partial arriving after finalization is a delayed delivery.
 *
 * With --tls-client-ca, only the site's nodes write, each only what its role may (server/merge/partials-auth.ts):
 * the sender is authenticated before the body is read, and the decoded batch authorized as a whole
 * before any of it is admitted, so a refused batch leaves no trace but the refusal's count.
 */
import type { PipelineSpec } from '../../core/pipeline/spec.ts'
import { pipelineToPlain } from '../../core/pipeline/format.ts'
import { ConfigError, HttpError } from '../../core/errors.ts'
import type { Batch, PipelineDef, Watermark, WindowEntry } from '../../core/upstream/batch.ts'
import { Finalizer, mergeContributions, sameSelects, supersedes } from '../../core/upstream/merge.ts'
import { pipelineDef } from '../../core/upstream/pipeline-def.ts'
import type { ShardMapView } from '../../core/upstream/shards.ts'
import { advertisedUrl } from '../shell/advertise.ts'
import { ContributionStore, windowId } from './contribution-store.ts'
import type { BatchWrite, MergeWindow } from './contribution-store.ts'
import { HttpService, httpLimits } from '../shell/http.ts'
import { roleLogger } from '../shell/log.ts'
import type { Logger } from '../shell/log.ts'
import type { PipelineInfo, Route, ServiceApi } from '../shell/http.ts'
import { RoleMesh, SOFTWARE_VERSION } from '../mesh/role-mesh.ts'
import type { HeartbeatInput } from '../mesh/mesh-node.ts'
import { Metrics } from '../shell/metrics.ts'
import { PartialsRoute } from './partials-route.ts'
import type { Ack } from './partials-route.ts'
import { NodeSecurity } from '../shell/security.ts'
import type { Sample } from '../shell/metrics.ts'
import type { MergeOptions } from './merge-options.ts'
import type { ReplicatedChange, Replication } from './replication.ts'
import { ResultStore } from '../shell/result-store.ts'
import { SerialQueue } from '../shell/serial-queue.ts'
import { Sinks } from '../sinks/delivery.ts'
import { withLive } from '../shell/results.ts'
import type { ResultQuery, WindowResult } from '../shell/results.ts'

/** How often state past retention is pruned. */
const PRUNE_EVERY = 60_000

/** Most batches committed together. */
const GROUP_MAX = 64

interface Queued {
  batch: Batch
  now: number
  resolve: (ack: Ack) => void
  reject: (err: unknown) => void
}


/** Receives the windows finalized in one pass; see MergeNode.onFinal. */
export type FinalListener = (entries: readonly WindowEntry[]) => void

interface PipelineStats {
  received: number
  ignored: number
  afterFinal: number
  finalized: number
  revised: number
}

export class MergeNode implements ServiceApi {
  readonly role: 'fog' | 'cloud'
  readonly id: string
  readonly metrics = new Metrics()
  readonly #options: MergeOptions
  readonly #log: Logger
  readonly #store: ContributionStore
  readonly #results: ResultStore
  readonly #finalizer: Finalizer
  readonly #http: HttpService
  readonly #security: NodeSecurity
  /** The security was made here (from the options), so it is closed here. */
  readonly #ownsSecurity: boolean
  /** Pipelines from --pipelines, by name. */
  readonly #fileSpecs: Map<string, PipelineSpec>
  /** Pipelines from --pipelines and deployed ones, by name (shown as specs by /v1/pipelines). */
  #specs: Map<string, PipelineSpec>
  /** Every pipeline merged here: from --pipelines and learned from batches. */
  readonly #defs = new Map<string, PipelineDef>()
  /**
   * The definitions in the store. Kept apart from #defs because the windows stored with a definition
   * must stay mergeable after a restart without the pipelines file.
   */
  readonly #learned = new Map<string, PipelineDef>()
  /** Windows not final yet, or changed since finalized. Final windows live only in the store. */
  readonly #pending = new Map<string, MergeWindow>()
  readonly #listeners = new Set<FinalListener>()
  readonly #stats = new Map<string, PipelineStats>()
  readonly #partials: PartialsRoute
  #listenerErrors = 0
  #listenerFailing = false
  /** The sinks of the config file: they get every final window and every later revision. */
  readonly #sinks: Sinks | undefined
  #ready = false
  #stopped = false
  #finalizeQueued = false
  #finalizing = false
  /** Edges expired in the mesh view that are no longer waited for (see #applyGossip). */
  readonly #silenced = new Set<string>()
  #timers: NodeJS.Timeout[] = []
  readonly #replication: Replication | undefined
  /** Commits and finalization passes run one at a time: with replication they wait for etcd. */
  readonly #exclusive = new SerialQueue()
  /** Batches waiting for the commit under way to finish (see #enqueue). */
  readonly #queue: Queued[] = []
  #groupQueued = false
  /** Off unless --mesh-port or --bootstrap is given. */
  readonly membership: RoleMesh
  /** Contributions received so far and when last sampled, for the heartbeat's rate. */
  #rate = { at: Date.now(), received: 0, perSecond: 0 }
  /** Batches waiting to leave this node (a fog's outbox for the cloud), for heartbeats; set by the owner. */
  outboxDepth: () => number = () => 0
  /** Revision of the deployed pipeline set this fog serves, for heartbeats; set by the owner. */
  deployedRevision: () => number = () => 0

  /**
   * With `replication`, the replicated state is the durable one: the local stores are kept in memory as
   * a mirror of it (filled through applyReplicated), and the data dir holds only what is this node's own.
   * `log` defaults to the node's own, from its options (--log-level, --log-format).
   */
  constructor (role: 'fog' | 'cloud', options: MergeOptions, specs: PipelineSpec[], replication?: Replication, routes: Route[] = [],
    log: Logger = roleLogger(role, options), security?: NodeSecurity) {
    this.#ownsSecurity = security === undefined
    this.#security = security ?? new NodeSecurity(options, [{ flag: '--host', host: options.host }])
    this.role = role
    this.id = options.id
    this.#options = options
    this.#log = log
    this.#replication = replication
    this.#fileSpecs = new Map(specs.map(s => [s.name, s]))
    this.#specs = new Map(this.#fileSpecs)
    for (const s of specs) this.#defs.set(s.name, pipelineDef(s))
    const dataDir = replication === undefined ? options.dataDir : undefined
    this.#store = new ContributionStore({ dataDir })
    this.#results = new ResultStore({ dataDir, retention: options.retention, maxResultsPerPipeline: options.maxResults, synchronous: 'FULL' })
    for (const def of this.#store.pipelines()) {
      this.#learned.set(def.name, def)
      const known = this.#defs.get(def.name)
      if (known !== undefined && !sameSelects(known, def)) {
        throw new ConfigError(`pipeline "${def.name}" in ${options.pipelines ?? 'the pipelines file'} merges differently from the one in ${options.dataDir} ` +
          '(learned from batches): its stored partials cannot be merged with the new definition; use a new pipeline name or another data dir')
      }
      if (known === undefined) this.#defs.set(def.name, def)
    }
    this.#finalizer = new Finalizer(options.finalizeAfter)
    // Idle flags are not stored: after a restart every edge counts as active until its next batch
    // says otherwise, which at worst makes windows wait as they did before edges could be idle.
    for (const w of this.#store.watermarks()) this.#finalizer.observe(w.pipeline, w.edge, w.watermark, w.lastSeen)
    for (const w of this.#store.pendingWindows()) this.#pending.set(windowId(w), w)
    this.#partials = new PartialsRoute({
      role,
      maxBatch: options.maxBatch,
      security: this.#security,
      ready: () => this.#ready,
      commit: async (batch, now) => {
        this.#replication?.admit(batch)
        const ack = await this.#enqueue(batch, now)
        this.#queueFinalize()
        return ack
      }
    })
    this.#http = new HttpService(this, [
      this.#partials.route,
      { method: 'GET', path: '/v1/shards', handle: () => ({ body: this.shards() }) },
      ...routes
    ],
      { host: options.host, port: options.httpPort, maxBody: options.maxBatch, ...httpLimits(options), tls: this.#security.server, apiToken: this.#security.apiToken, log })
    this.membership = new RoleMesh(options, role, () => this.#heartbeat())
    this.#registerMetrics()
    this.membership.registerMetrics(this.metrics)
    // Their queues live in the data dir in a cluster too: results wait there while a sink is down.
    this.#sinks = options.sinks !== undefined && options.sinks.length > 0
      ? new Sinks(options.sinks, { dataDir: options.dataDir, log, metrics: this.metrics })
      : undefined
  }

  get httpUrl (): string {
    return this.#http.url
  }

  /** The URL other nodes reach this one at (see advertise.ts). */
  get advertisedUrl (): string {
    return advertisedUrl(this.#options, this.#http.url)
  }

  async start (): Promise<void> {
    await this.#http.listen()
    this.#timers.push(setInterval(() => this.#finalizeSafely(), this.#options.tick))
    this.#timers.push(setInterval(() => this.#prune(), PRUNE_EVERY))
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
    await this.#exclusive.drained()
    await this.#sinks?.stop()
    this.#results.close()
    this.#store.close()
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

  #heartbeat (): HeartbeatInput {
    const received = [...this.#stats.values()].reduce((n, s) => n + s.received, 0)
    const now = Date.now()
    const r = this.#rate
    // Sampled at each heartbeat rather than kept per second: heartbeats are the only reader.
    if (now > r.at) this.#rate = { at: now, received, perSecond: (received - r.received) * 1000 / (now - r.at) }
    const hb: HeartbeatInput = {
      http: this.advertisedUrl,
      sw: SOFTWARE_VERSION,
      uptime: this.membership.uptime,
      rate: this.#rate.perSecond,
      outbox: this.outboxDepth(),
      pipelines: [...this.#specs.values()].slice(0, 64).map(s => ({ name: s.name, version: s.version, watermark: null }))
    }
    if (this.role === 'fog') {
      const map = this.shards()
      hb.fog = { leader: this.#fogView().leader, shardMapVersion: map.version, endpoints: map.members.slice(0, 16).map(m => m.http), deployed: this.deployedRevision() }
    }
    return hb
  }

  /**
   * Calls `listener` with the windows each finalization pass finalizes (revision 0) or finalizes again
   * (revision + 1), each with all its contributions and `final` set to that revision: what a fog
   * forwards to the cloud (and with none after a pass that finalized nothing). All of a pass at once,
   * so that one outbox append (one fsync) takes them. It runs synchronously after the results are
   * durable and before the windows are recorded as final, so a durable outbox appended to here misses
   * none: after a crash in between, the windows are finalized
   * again with the same revisions and contributions, which receivers ignore as replays. If a listener
   * throws, the pass's windows stay pending and are offered again on the next tick (listeners that took
   * them already see them twice). Returns a remover.
   */
  onFinal (listener: FinalListener): () => void {
    this.#listeners.add(listener)
    return () => { this.#listeners.delete(listener) }
  }

  /**
   * The deployed pipelines, as of the latest change: merged here from now on and listed with their
   * specs. A pipeline deleted from the set keeps its definition (it may have windows still to
   * finalize, and its results stay queryable); new windows of it come only from edges that have not
   * heard of the deletion yet.
   */
  setDeployed (specs: readonly PipelineSpec[]): void {
    const next = new Map(this.#fileSpecs)
    for (const s of specs) {
      if (next.has(s.name)) continue
      next.set(s.name, s)
      // The deployment checked it merges as the definition known here; the version is the news.
      this.#defs.set(s.name, pipelineDef(s))
    }
    this.#specs = next
    this.membership.announce()
  }

  /** How a pipeline merged here merges (from --pipelines, or learned from batches), for forwarding. */
  definition (pipeline: string): PipelineDef | undefined {
    return this.#defs.get(pipeline)
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

  /**
   * Batches are applied in groups: those that arrive while a commit is under way wait for it, then
   * go together in one commit (one fsync, or one etcd round trip), each answered after it.
   */
  async #enqueue (batch: Batch, now: number): Promise<Ack> {
    const ack = new Promise<Ack>((resolve, reject) => { this.#queue.push({ batch, now, resolve, reject }) })
    this.#scheduleGroup()
    return await ack
  }

  #scheduleGroup (): void {
    if (this.#groupQueued) return
    this.#groupQueued = true
    void this.#exclusive.run(async () => {
      this.#groupQueued = false
      await this.#applyQueued()
    })
  }

  /**
   * Applies the queued batches: checks each one's definitions first (a conflict refuses that batch
   * whole), works out the changes on copies, commits them in one transaction, and only then updates
   * the state in memory, so a failed commit leaves everything as it was (and refuses every batch of
   * the group). With replication the commit goes to the replicated state first (fenced), then to the
   * local store.
   */
  async #applyQueued (): Promise<void> {
    const group = this.#queue.splice(0, GROUP_MAX)
    if (this.#queue.length > 0) this.#scheduleGroup()
    const staged = new Map<string, MergeWindow>()
    const defs = new Map<string, PipelineDef>()
    const write: BatchWrite = { pipelines: [], windows: [], contributions: [], watermarks: [], seen: [] }
    const toWrite = new Set<MergeWindow>()
    const taken: Array<{ q: Queued, ack: Ack, counts: Map<string, Pick<PipelineStats, 'received' | 'ignored' | 'afterFinal'>> }> = []
    for (const q of group) {
      try {
        taken.push({ q, ...this.#stage(q.batch, q.now, staged, defs, write, toWrite) })
      } catch (err) {
        q.reject(err)
      }
    }
    if (taken.length === 0) return
    write.pipelines = [...defs.values()]
    write.windows = [...toWrite]
    try {
      if (this.#replication !== undefined && (write.windows.length > 0 || write.contributions.length > 0 || write.pipelines.length > 0)) {
        const changed = new Set(write.windows)
        for (const c of write.contributions) changed.add(c.window)
        await this.#replication.commitBatch(write, [...changed])
      }
      this.#store.write(write)
    } catch (err) {
      for (const { q } of taken) q.reject(err)
      return
    }

    for (const d of defs.values()) {
      this.#learned.set(d.name, d)
      if (!this.#specs.has(d.name)) this.#defs.set(d.name, d)
    }
    for (const [id, w] of staged) {
      if (w.finalRevision === null || w.dirty) this.#pending.set(id, w)
    }
    for (const { q: { batch, now }, counts } of taken) {
      for (const wm of batch.watermarks) this.#finalizer.observe(wm.pipeline, wm.edge, wm.watermark, now, wm.idle === true)
      if (batch.role === 'edge') this.#finalizer.seen(batch.sender, now)
      for (const [pipeline, c] of counts) {
        const s = this.#statsOf(pipeline)
        s.received += c.received
        s.ignored += c.ignored
        s.afterFinal += c.afterFinal
      }
    }
    for (const { q, ack } of taken) q.resolve(ack)
  }

  /** One batch's changes, on top of what the batches before it in the group staged. */
  #stage (batch: Batch, now: number, staged: Map<string, MergeWindow>, defs: Map<string, PipelineDef>, write: BatchWrite, toWrite: Set<MergeWindow>):
  { ack: Ack, counts: Map<string, Pick<PipelineStats, 'received' | 'ignored' | 'afterFinal'>> } {
    const newDefs: PipelineDef[] = []
    for (const d of batch.pipelines) {
      const known = defs.get(d.name) ?? this.#defs.get(d.name)
      if (known !== undefined && !sameSelects(known, d)) {
        throw new HttpError(409, 'pipeline_conflict', `pipeline "${d.name}" version ${d.version} from ${batch.sender} merges differently ` +
          `(window or select) from the "${d.name}" this ${this.role} merges (version ${known.version}); nothing was stored`)
      }
      const learned = defs.get(d.name) ?? this.#learned.get(d.name)
      if (learned === undefined || d.version > learned.version) newDefs.push(d)
    }
    for (const d of newDefs) defs.set(d.name, d)
    const counts = new Map<string, Pick<PipelineStats, 'received' | 'ignored' | 'afterFinal'>>()
    let applied = 0
    let ignored = 0
    for (const e of batch.windows) {
      if (e.contributions.length === 0) continue
      const id = windowId(e)
      let w = staged.get(id)
      if (w === undefined) {
        const known = this.#pending.get(id) ?? this.#store.window(e.pipeline, e.key, e.start, e.end)
        if (known === undefined) {
          w = { pipeline: e.pipeline, key: e.key, start: e.start, end: e.end, firstSeen: now, finalRevision: null, finalAt: null, dirty: false, upstreamFinal: false, contributions: new Map() }
          toWrite.add(w)
        } else {
          w = { ...known, contributions: new Map(known.contributions) }
        }
        staged.set(id, w)
      }
      let c = counts.get(e.pipeline)
      if (c === undefined) counts.set(e.pipeline, c = { received: 0, ignored: 0, afterFinal: 0 })
      for (const contribution of e.contributions) {
        c.received++
        if (!supersedes(w.contributions.get(contribution.edge), contribution)) {
          ignored++
          c.ignored++
          continue
        }
        w.contributions.set(contribution.edge, contribution)
        write.contributions.push({ window: w, contribution })
        applied++
        if (w.finalRevision !== null) {
          c.afterFinal++
          w.dirty = true
          toWrite.add(w)
        }
      }
      // Only a fog finalizes merged windows; an edge's `final` would mean nothing here.
      if (batch.role === 'fog' && e.final !== undefined && w.finalRevision === null && !w.upstreamFinal) {
        w.upstreamFinal = true
        toWrite.add(w)
      }
    }
    for (const wm of batch.watermarks) write.watermarks.push({ pipeline: wm.pipeline, edge: wm.edge, watermark: wm.watermark, lastSeen: now })
    if (batch.role === 'edge') write.seen.push({ edge: batch.sender, at: now })
    return { ack: { acked: batch.seq, applied, ignored }, counts }
  }

  // Finalization

  /** Right after a batch is answered: a window it completed should not wait for the next tick. */
  #queueFinalize (): void {
    if (this.#finalizeQueued) return
    this.#finalizeQueued = true
    setImmediate(() => {
      this.#finalizeQueued = false
      this.#finalizeSafely()
    })
  }

  #finalizeSafely (): void {
    // One pass at a time; a tick that finds one under way (waiting for etcd) skips.
    if (this.#stopped || this.#finalizing) return
    this.#finalizing = true
    this.#exclusive.run(async () => await this.#finalizeDue(Date.now())).catch((err: unknown) => {
      // A failed write leaves the windows pending; the next tick tries again. A refusal of the
      // replicated state (no quorum, the map moved) is reported where it is seen, not at every tick.
      if (!this.#stopped && !(err instanceof HttpError)) this.#log.error('merge.finalize_failed', 'finalization failed; the windows stay pending', { err })
    }).finally(() => { this.#finalizing = false })
  }

  /**
   * A fog in the mesh finalizes on the watermarks edges gossip too (those their fogs acknowledged: a
   * cluster member that missed an edge's watermark batch catches up, and an edge is known before it
   * sends), and stops waiting for an edge whose heartbeats stopped, as for an edge gone silent.
   */
  #applyGossip (now: number): void {
    const node = this.membership.node
    if (this.role !== 'fog' || node === undefined) return
    for (const p of node.view().peers) {
      if (p.role !== 'edge') continue
      if (p.state === 'alive') {
        this.#silenced.delete(p.id)
        for (const pl of p.heartbeat.pipelines ?? []) {
          if (typeof pl.watermark === 'number' && Number.isFinite(pl.watermark) && this.#defs.has(pl.name)) this.#finalizer.gossiped(pl.name, p.id, pl.watermark, now)
        }
      } else if (!this.#silenced.has(p.id)) {
        // Once per expiry: a batch from it later makes it waited for again.
        this.#silenced.add(p.id)
        this.#finalizer.silence(p.id)
      }
    }
  }

  async #finalizeDue (now: number): Promise<void> {
    if (this.#stopped || this.#replication?.finalizing() === false) return
    this.#applyGossip(now)
    const due: Array<{ id: string, window: MergeWindow, revision: number }> = []
    for (const [id, w] of this.#pending) {
      // In a cluster only the owner of a window's shard finalizes it.
      if (this.#replication !== undefined && !this.#replication.owns(w.pipeline, w.key)) continue
      if (w.finalRevision !== null) {
        if (w.dirty) due.push({ id, window: w, revision: w.finalRevision + 1 })
      } else if (w.upstreamFinal || this.#finalizer.isDue(w.pipeline, w.end, w.firstSeen, now)) {
        due.push({ id, window: w, revision: 0 })
      }
    }
    // An empty pass is news too: every window left pending waits for an edge (a fog's progress).
    if (due.length === 0) {
      this.#notify(due)
      return
    }
    await this.#replication?.commitFinal(due, now)
    if (this.#stopped) return
    const results = due.map(d => this.#result(d.window, true, d.revision))
    for (const r of results) this.#results.put(r)
    // Durable before the window is recorded as final: a crash in between finalizes it again, same revision.
    this.#results.flush()
    // In the sinks' queues before the window is recorded as final too (a repeat is harmless: at least once).
    if (!this.#toSinks(results)) return
    if (!this.#notify(due)) return
    this.#store.markFinal(due, now)
    for (const d of due) {
      this.#pending.delete(d.id)
      const s = this.#statsOf(d.window.pipeline)
      if (d.revision === 0) s.finalized++
      else s.revised++
    }
  }

  #toSinks (results: readonly WindowResult[]): boolean {
    if (this.#sinks === undefined) return true
    try {
      this.#sinks.append(results)
      return true
    } catch (err) {
      this.#listenerErrors++
      if (!this.#listenerFailing) this.#log.error('merge.listener_failed', 'the sinks\' queues did not take final windows; the windows stay pending and are offered again', { err })
      this.#listenerFailing = true
      return false
    }
  }

  #notify (due: Array<{ window: MergeWindow, revision: number }>): boolean {
    if (this.#listeners.size === 0) return true
    const entries: WindowEntry[] = due.map(({ window: w, revision }) => ({
      pipeline: w.pipeline, key: w.key, start: w.start, end: w.end, final: revision, contributions: [...w.contributions.values()]
    }))
    try {
      for (const listener of this.#listeners) listener(entries)
      this.#listenerFailing = false
      return true
    } catch (err) {
      this.#listenerErrors++
      // Logged when failures start, not on every tick while they last.
      if (!this.#listenerFailing) this.#log.error('merge.listener_failed', 'a final-window listener failed; the windows stay pending and are offered again', { err })
      this.#listenerFailing = true
      return false
    }
  }

  #result (w: MergeWindow, final: boolean, revision: number): WindowResult {
    const def = this.#defs.get(w.pipeline)
    if (def === undefined) throw new Error(`no definition of pipeline ${w.pipeline}`)
    return {
      pipeline: w.pipeline,
      key: w.key,
      start: w.start,
      end: w.end,
      final,
      revision,
      sources: w.contributions.size,
      values: mergeContributions(def, w.contributions.values())
    }
  }

  #prune (): void {
    if (this.#stopped) return
    try {
      const now = Date.now()
      this.#results.prune(now)
      // In a cluster, windows leave when the leader removes them from etcd (see removeReplicated).
      if (this.#replication === undefined) this.#store.prune(now - this.#options.retention, this.#options.maxResults)
    } catch (err) {
      this.#log.error('merge.prune_failed', 'pruning failed', { err })
    }
  }

  #statsOf (pipeline: string): PipelineStats {
    let s = this.#stats.get(pipeline)
    if (s === undefined) this.#stats.set(pipeline, s = { received: 0, ignored: 0, afterFinal: 0, finalized: 0, revised: 0 })
    return s
  }

  // ServiceApi

  isReady (): boolean {
    return this.#ready
  }

  /**
   * Pipelines from --pipelines as their YAML shape; pipelines learned from batches as their merge
   * definition: `{ name, version, window: kind, selects: [{ name, fn, params }] }`.
   */
  pipelines (): PipelineInfo[] {
    return [...this.#defs.values()].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0).map(def => {
      const spec = this.#specs.get(def.name)
      return spec !== undefined
        ? { name: spec.name, version: spec.version, spec: pipelineToPlain(spec) }
        : { name: def.name, version: def.version, spec: { ...def } }
    })
  }

  /** Final results from the store, with the windows not final yet (`final: false`, merged so far) mixed in. */
  results (pipeline: string, q: ResultQuery): WindowResult[] | undefined {
    if (!this.#defs.has(pipeline)) return undefined
    const live: WindowResult[] = []
    for (const w of this.#pending.values()) {
      if (w.pipeline === pipeline && w.finalRevision === null) live.push(this.#result(w, false, 0))
    }
    return withLive(this.#results.query(pipeline, q), live, q)
  }

  /**
   * Cluster mode: changes other nodes committed (and this node's own, seen again, which change
   * nothing). A window record is whole: it replaces what is here, and a final one becomes a result.
   */
  applyReplicated (change: ReplicatedChange): void {
    if (this.#stopped) return
    for (const d of change.pipelines) {
      this.#learned.set(d.name, d)
      if (!this.#specs.has(d.name)) this.#defs.set(d.name, d)
    }
    const write: BatchWrite = { pipelines: change.pipelines, windows: change.windows, contributions: [], watermarks: [], seen: [] }
    for (const w of change.windows) for (const contribution of w.contributions.values()) write.contributions.push({ window: w, contribution })
    this.#store.write(write)
    const finals: Array<{ window: MergeWindow, revision: number }> = []
    const now = Date.now()
    for (const w of change.windows) {
      const id = windowId(w)
      // Edges whose partials another coordinator took feed this pipeline: a coordinator that takes over
      // the shard (or restarts) must wait for them too, not only for the edges it has heard from.
      for (const edge of w.contributions.keys()) this.#finalizer.know(w.pipeline, edge, now)
      if (w.finalRevision !== null && !w.dirty) {
        if (this.#defs.has(w.pipeline)) this.#results.put(this.#result(w, true, w.finalRevision))
        finals.push({ window: w, revision: w.finalRevision })
        this.#pending.delete(id)
      } else {
        this.#pending.set(id, w)
      }
    }
    if (finals.length > 0) {
      this.#results.flush()
      for (const f of finals) this.#store.markFinal([f], f.window.finalAt ?? Date.now())
    }
  }

  /** Cluster mode: windows removed from the replicated state (past retention). */
  removeReplicated (windows: ReadonlyArray<{ pipeline: string, key: string, start: number, end: number }>): void {
    if (this.#stopped) return
    for (const w of windows) this.#pending.delete(windowId(w))
    this.#store.remove(windows)
  }

  /** Windows final since before `before` (as the retention prune sees them), at most `limit`. */
  finalBefore (before: number, limit: number): Array<{ pipeline: string, key: string, start: number, end: number }> {
    return this.#store.finalBefore(before, limit)
  }

  /** A window as stored here (pending or final), with its contributions. */
  window (ref: { pipeline: string, key: string, start: number, end: number }): MergeWindow | undefined {
    return this.#pending.get(windowId(ref)) ?? this.#store.window(ref.pipeline, ref.key, ref.start, ref.end)
  }

  /** GET /v1/shards: the cluster's shard map, or (a single node) no shards: send it everything. */
  shards (): ShardMapView {
    return this.#replication?.view() ?? {
      version: 0, shards: 0, owners: [], members: [{ id: this.id, http: this.advertisedUrl }], leader: null, status: 'embedded'
    }
  }

  mesh (): unknown {
    const edges = new Map<string, { id: string, lastSeen: number, watermarks: Record<string, string> }>()
    for (const w of this.#finalizer.watermarks()) {
      if (!Number.isFinite(w.watermark)) continue
      let e = edges.get(w.edge)
      if (e === undefined) edges.set(w.edge, e = { id: w.edge, lastSeen: w.lastSeen, watermarks: {} })
      e.lastSeen = Math.max(e.lastSeen, w.lastSeen)
      e.watermarks[w.pipeline] = new Date(w.watermark).toISOString()
    }
    return {
      ...this.membership.json(),
      fog: this.#fogView(),
      edges: [...edges.values()].sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
        .map(e => ({ id: e.id, lastSeen: Number.isFinite(e.lastSeen) ? new Date(e.lastSeen).toISOString() : null, watermarks: e.watermarks }))
    }
  }

  #fogView (): { leader: string | null, shardMapVersion: number, shards: number, status: string } {
    const v = this.shards()
    return { leader: v.leader ?? (this.role === 'fog' ? this.id : null), shardMapVersion: v.version, shards: v.shards, status: v.status }
  }

  #registerMetrics (): void {
    const m = this.metrics
    const perPipeline = (read: (s: PipelineStats) => number) => (): Sample[] => [...this.#stats].map(([pipeline, s]) => [{ pipeline }, read(s)])
    this.#partials.registerMetrics(m)
    m.counter('fogmesh_partials_received_total', 'Contributions (one edge\'s partial of one window) in accepted batches', ['pipeline'], perPipeline(s => s.received))
    m.counter('fogmesh_partials_ignored_total', 'Contributions already known at this or a higher revision (replays, second routes)', ['pipeline'], perPipeline(s => s.ignored))
    m.counter('fogmesh_partials_after_final_total', 'Contributions that changed a window already final (merged; the window gets revision + 1)', ['pipeline'], perPipeline(s => s.afterFinal))
    m.counter('fogmesh_windows_finalized_total', 'Merged windows finalized (revision 0)', ['pipeline'], perPipeline(s => s.finalized))
    m.counter('fogmesh_windows_revised_total', 'Final windows finalized again with a new revision', ['pipeline'], perPipeline(s => s.revised))
    m.counter('fogmesh_final_listener_errors_total', 'Finalization passes a final-window listener (forwarding) failed; their windows are offered again', [], () => [[{}, this.#listenerErrors]])
    m.gauge('fogmesh_pending_windows', 'Merged windows not final yet', ['pipeline'], () => {
      const n = new Map<string, number>([...this.#defs.keys()].map(p => [p, 0]))
      for (const w of this.#pending.values()) if (w.finalRevision === null) n.set(w.pipeline, (n.get(w.pipeline) ?? 0) + 1)
      return [...n].map(([pipeline, v]) => [{ pipeline }, v])
    })
    m.gauge('fogmesh_edge_watermark_seconds', 'Each edge\'s event-time watermark per pipeline, as last reported', ['pipeline', 'edge'], () =>
      [...this.#finalizer.watermarks()].filter(w => Number.isFinite(w.watermark)).map(w => [{ pipeline: w.pipeline, edge: w.edge }, w.watermark / 1000]))
  }
}

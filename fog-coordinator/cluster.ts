/**
 * A fog coordinator's membership in a cluster replicated by etcd (the Raft engine), as the MergeNode's
 * Replication.
 *
 * - Membership: each coordinator registers `m/<id>` under its own lease (`--lease-ttl`); a coordinator
 *   that dies stops renewing it, and etcd removes the key when it expires.
 * - Leader: the first to create `leader` under its lease; it keeps the shard map (`shardmap`): every
 *   virtual shard assigned to a live member, balanced, moving as few shards as possible. It also
 *   removes expired windows and compacts etcd's history. Every leader write is fenced on the leader key
 *   (value and lease) and on the map's revision, so a deposed leader cannot write.
 * - Mirror: every coordinator loads everything under the prefix, then watches it, so each holds the
 *   whole replicated state (all windows, the map, the members); queries answer the same everywhere, and
 *   a new owner already has the open windows of the shards it takes over. The map comes through the same
 *   watch as the windows, in revision order: when a coordinator sees it own a shard, it has seen every
 *   write the previous owner could make to it.
 * - Fenced writes: a coordinator commits windows only of shards it owns, in transactions that compare
 *   its member key's lease and the map's revision. A coordinator partitioned from etcd, or deposed,
 *   cannot commit; an edge with an old map gets 421 wrong_shard with the current one.
 * - Quorum: a coordinator that cannot commit (etcd lost its majority, or this coordinator cannot reach
 *   it) answers 503 no_quorum, so edges fail over to the cloud; it probes etcd and resumes by itself.
 *
 * - TLS: endpoints given as `https://host:port` are reached over TLS (all of them or none): etcd's
 *   certificate is verified against the node's --tls-ca (default the system's CAs), and the node's own
 *   certificate (--tls-cert/--tls-key) is presented as the client certificate, so an etcd started with
 *   `--client-cert-auth --trusted-ca-file <site CA>` admits only the site's nodes.
 *
 * The etcd3 client's own Election is not used: it has had double-leader bugs after etcd restarts; the
 * fencing here does not depend on events arriving.
 */
import { rootCertificates } from 'node:tls'
import { Etcd3, isRecoverableError } from 'etcd3'
import type { IKeyValue, IOptions, Lease, Watcher } from 'etcd3'
import { ConsecutiveBreaker, ExponentialBackoff, circuitBreaker, handleWhen, retry } from 'cockatiel'
import { ConfigError, HttpError } from '../core/errors.ts'
import { EMPTY_DEPLOYMENT, readDeployedSet } from '../core/pipeline/deployment.ts'
import type { DeployedSet } from '../core/pipeline/deployment.ts'
import type { Batch, PipelineDef } from '../core/upstream/batch.ts'
import { assignShards, shardOf } from '../core/upstream/shards.ts'
import type { ShardMap, ShardMapView } from '../core/upstream/shards.ts'
import type { BatchWrite, MergeWindow } from '../server/merge/contribution-store.ts'
import type { DeploymentStore } from '../server/shell/deployment-store.ts'
import { windowId } from '../server/merge/contribution-store.ts'
import type { Logger } from '../server/shell/log.ts'
import type { Metrics } from '../server/shell/metrics.ts'
import type { ReplicatedChange, Replication } from '../server/merge/replication.ts'
import type { ClientTls } from '../server/shell/tls.ts'
import { ClusterLayout, decodeWindow, encodeWindow } from './cluster-layout.ts'
import type { MemberRecord, WindowRef } from './cluster-layout.ts'

export interface ClusterOptions {
  /** This coordinator's id (unique in the cluster). */
  id: string
  /** etcd endpoints, `host:port` or `http://host:port` (plain), or all `https://host:port` (TLS, with `tls`). */
  endpoints: string[]
  /** With https endpoints: the CA that verifies etcd (default the system's) and the client certificate to present. */
  tls?: ClientTls
  /** Key prefix of this cluster in etcd. */
  prefix: string
  /** Lease TTL, ms (rounded up to whole seconds, at least 1 s). */
  leaseTtl: number
  /** Virtual shards of a new cluster (an existing map keeps its count). */
  shards: number
  /** Longest an etcd request may take, ms; beyond it the cluster counts as without quorum. */
  etcdTimeout: number
  /** How often the leader removes expired windows and compacts etcd's history, ms. */
  maintainEvery: number
  /** Windows older than this are removed (their results expire), ms. */
  retention: number
  /** With a cloud sink: final windows are marked "to forward" in the same commit. */
  forward: boolean
  log: Logger
}

/** Defaults of the options `fogmesh fog` does not expose. */
export const CLUSTER_DEFAULTS = {
  prefix: '/fogmesh/',
  leaseTtl: 5_000,
  shards: 64,
  etcdTimeout: 2_000,
  maintainEvery: 60_000
}

/** Most operations in one transaction (etcd's --max-txn-ops defaults to 128) and most value bytes. */
const TXN_OPS = 100
const TXN_BYTES = 1024 * 1024
/** How often a coordinator checks that etcd answers (and so whether it has quorum), ms. */
const PROBE_EVERY = 1_000
/** Most windows one maintenance pass removes (the next pass takes the rest). */
const MAINTAIN_MAX = 20_000
/** Pages of the initial load. */
const LOAD_PAGE = 1_000
/**
 * Watermarks are not replicated: edges send theirs to every coordinator, after the windows they cover
 * are committed. A coordinator that has just joined has not heard from every edge yet, and a merge node
 * does not wait for edges it does not know, so it finalizes nothing until every active edge has had
 * time to report (edges send watermarks about once a second).
 */
const JOIN_GRACE = 3_000

type Status = ShardMapView['status']

/** Receives what other coordinators committed, and the shards this one takes over. */
export interface ClusterSink {
  apply: (change: ReplicatedChange) => void
  /** This coordinator now owns these windows' shards and they are still to be forwarded. */
  toForward: (windows: Array<{ ref: WindowRef, revision: number }>) => void
  /** Windows final since before `before` (the leader removes them from etcd), at most `limit`. */
  expired: (before: number, limit: number) => WindowRef[]
  /** Windows removed from etcd. */
  removed: (windows: WindowRef[]) => void
  /** The deployed pipeline set changed (at start: the one in etcd, if any). */
  deployed: (set: DeployedSet) => void
}

interface Mark {
  ref: WindowRef
  revision: number
}

export class FogCluster implements Replication, DeploymentStore {
  readonly #o: ClusterOptions
  readonly #layout: ClusterLayout
  readonly #client: Etcd3
  #sink: ClusterSink | undefined
  #http = ''
  #lease: Lease | undefined
  #leaseId = ''
  #watcher: Watcher | undefined
  /** Mod revision of every key known here: older events are not applied again. */
  readonly #revs = new Map<string, number>()
  readonly #members = new Map<string, MemberRecord>()
  readonly #marks = new Map<string, Mark>()
  #leader: string | null = null
  #deployed: DeployedSet = EMPTY_DEPLOYMENT
  #map: ShardMap | undefined
  #mapRev = 0
  /** The revision of the last event applied here: a new watch starts after it. */
  #seenRev = 0
  #quorum = false
  #started = false
  #joinedAt = Infinity
  #stopped = false
  #timers: NodeJS.Timeout[] = []
  #reconciling = false
  #rewatching = false
  #reconcileAgain = false
  #registering: Promise<void> | undefined
  /** The revision to compact to at the next maintenance (the current one at the last). */
  #compactTo = 0
  readonly stats = { commits: 0, fenced: 0, unavailable: 0, compactions: 0, removed: 0, dbSize: 0 }

  constructor (options: ClusterOptions) {
    this.#o = options
    this.#layout = new ClusterLayout(options.prefix)
    const timeout = options.etcdTimeout
    this.#client = new Etcd3({
      ...etcdConnection(options.endpoints, options.tls),
      dialTimeout: timeout,
      defaultCallOptions: ctx => ctx.isStream ? {} : { deadline: Date.now() + timeout },
      faultHandling: {
        // A member that fails is skipped for a second, not five: after quorum returns, commits should too.
        host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 1_000, breaker: new ConsecutiveBreaker(3) }),
        global: retry(handleWhen(isRecoverableError), { maxAttempts: 2 }),
        // etcd3 types this as one backoff step and asks it for the next: a step it is.
        watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2_000 }).next()
      }
    })
  }

  /** Loads the replicated state into `sink`, then joins: lease, member key, watch, campaign. */
  async start (http: string, sink: ClusterSink): Promise<void> {
    this.#http = http
    this.#sink = sink
    for (let attempt = 0; !this.#stopped; attempt++) {
      try {
        await this.#load()
        await this.#register()
        break
      } catch (err) {
        if (attempt === 0 || attempt % 10 === 0) {
          const secure = this.#o.endpoints.some(e => e.startsWith('https://'))
          const hint = secure ? ' (over TLS: --tls-ca must verify etcd\'s certificate, and etcd\'s --trusted-ca-file must have signed this node\'s --tls-cert)' : ''
          this.#o.log.warn('cluster.etcd_unavailable', `etcd ${this.#o.endpoints.join(',')} not usable yet (${(err as Error).message})${hint}; retrying`, {
            endpoints: this.#o.endpoints, reason: (err as Error).message, attempt, tls: secure
          })
        }
        await sleep(Math.min(2_000, 200 * 2 ** Math.min(attempt, 4)))
      }
    }
    this.#quorum = true
    this.#started = true
    this.#joinedAt = Date.now()
    this.#timers.push(setInterval(() => { void this.#probe() }, PROBE_EVERY))
    this.#timers.push(setInterval(() => { void this.#maintain() }, this.#o.maintainEvery))
    this.#scheduleReconcile()
    // Ready means taking partials: wait for the leader (maybe this one) to put it in the map.
    while (!this.#stopped && !this.#ownedShards().size && this.#status() !== 'ok') await sleep(50)
    this.#gained(new Set())
  }

  /** Leaves the cluster at once: revoking the lease removes the member key (and leadership). */
  async stop (): Promise<void> {
    this.#stopped = true
    for (const t of this.#timers) clearInterval(t)
    await this.#watcher?.cancel().catch(() => {})
    await this.#lease?.revoke().catch(() => {})
    this.#client.close()
  }

  // Replication

  admit (batch: Batch): void {
    const status = this.#status()
    if (status === 'starting') throw new HttpError(503, 'starting', 'this fog coordinator is joining its cluster; send the batch again shortly')
    if (status === 'no_quorum') {
      throw new HttpError(503, 'no_quorum', 'the fog cluster cannot commit: etcd has no quorum or is out of reach from this coordinator; send the batch elsewhere (the cloud) or later')
    }
    for (const w of batch.windows) {
      if (w.contributions.length > 0 && !this.owns(w.pipeline, w.key)) this.#misrouted(w.pipeline, w.key)
    }
  }

  finalizing (): boolean {
    return Date.now() - this.#joinedAt >= JOIN_GRACE
  }

  owns (pipeline: string, key: string): boolean {
    const map = this.#map
    return map !== undefined && map.shards > 0 && map.owners[shardOf(pipeline, key, map.shards)] === this.#o.id
  }

  view (): ShardMapView {
    const map = this.#map ?? { version: 0, shards: 0, owners: [], members: [], leader: null }
    return { ...map, leader: this.#leader, status: this.#status() }
  }

  async commitBatch (write: BatchWrite, windows: readonly MergeWindow[]): Promise<void> {
    const puts: Array<[string, Buffer | string]> = []
    const compares: Array<[string, 'Mod', number]> = []
    for (const d of write.pipelines) {
      const key = this.#layout.pipeline(d.name)
      puts.push([key, JSON.stringify(d)])
      // Two coordinators learning one pipeline at once must not both write it.
      compares.push([key, 'Mod', this.#revs.get(key) ?? 0])
    }
    for (const w of windows) {
      if (!this.owns(w.pipeline, w.key)) this.#misrouted(w.pipeline, w.key)
      puts.push([this.#layout.window(w), encodeWindow(w)])
    }
    await this.#commit(puts, [], compares)
  }

  async commitFinal (due: ReadonlyArray<{ window: MergeWindow, revision: number }>, at: number): Promise<void> {
    const puts: Array<[string, Buffer | string]> = []
    for (const { window: w, revision } of due) {
      puts.push([this.#layout.window(w), encodeWindow({ ...w, finalRevision: revision, finalAt: at, dirty: false })])
      if (this.#o.forward) puts.push([this.#layout.mark(w), String(revision)])
    }
    await this.#commit(puts, [], [])
  }

  /** The cloud acknowledged these windows: their marks go (not fenced: any holder may clear them). */
  async forwarded (windows: ReadonlyArray<{ ref: WindowRef, revision: number }>): Promise<void> {
    const ops = windows.filter(w => (this.#marks.get(windowId(w.ref))?.revision ?? Infinity) <= w.revision)
    for (let i = 0; i < ops.length; i += TXN_OPS) {
      const chunk = ops.slice(i, i + TXN_OPS)
      // One transaction for many deletes; the compare always holds.
      await this.#client.if(this.#layout.shardMap, 'Mod', '>', -1)
        .then(...chunk.map(w => this.#client.delete().key(this.#layout.mark(w.ref))))
        .commit()
    }
  }

  /** The deployed set as this coordinator's mirror of etcd has it. */
  current (): DeployedSet {
    return this.#deployed
  }

  /**
   * Stores a new deployed set if etcd's is still the one this coordinator knows (another coordinator
   * may have deployed meanwhile: 409, and the client sends its request again).
   */
  async replace (next: DeployedSet, expected: number): Promise<void> {
    const key = this.#layout.deployed
    if (this.#deployed.revision !== expected) {
      throw new HttpError(409, 'deployment_conflict', `the deployed set changed meanwhile (revision ${this.#deployed.revision}, expected ${expected}); send the request again`)
    }
    let res
    try {
      res = await this.#client.if(key, 'Mod', '==', this.#revs.get(key) ?? 0).then(this.#client.put(key).value(JSON.stringify(next))).commit()
    } catch (err) {
      this.#noQuorum(err)
      throw new HttpError(503, 'no_quorum', `the fog cluster cannot store the deployment (etcd: ${(err as Error).message}); nothing changed`)
    }
    if (!res.succeeded) throw new HttpError(409, 'deployment_conflict', 'another coordinator deployed at the same time; send the request again')
    this.#revs.set(key, Number(res.header.revision))
    this.#deployed = next
  }

  // Committing

  /** Fenced commits, in as many transactions as etcd's limits need (every one fenced, idempotent). */
  async #commit (puts: Array<[string, Buffer | string]>, deletes: string[], compares: Array<[string, 'Mod', number]>): Promise<void> {
    const chunks: Array<Array<[string, Buffer | string]>> = [[]]
    let bytes = 0
    for (const p of puts) {
      const last = chunks[chunks.length - 1]
      if (last.length > 0 && (last.length + compares.length >= TXN_OPS || bytes + p[1].length > TXN_BYTES)) {
        chunks.push([])
        bytes = 0
      }
      chunks[chunks.length - 1].push(p)
      bytes += p[1].length + p[0].length
    }
    for (const [i, chunk] of chunks.entries()) {
      const mapRev = this.#mapRev
      let txn = this.#client.if(this.#layout.member(this.#o.id), 'Lease', '==', this.#leaseId)
        .and(this.#layout.shardMap, 'Mod', '==', mapRev)
      // Definitions go with the first chunk, before any window that needs them.
      if (i === 0) for (const [key, , rev] of compares) txn = txn.and(key, 'Mod', '==', rev)
      txn = txn.then(...chunk.map(([k, v]) => this.#client.put(k).value(v)), ...(i === 0 ? deletes.map(k => this.#client.delete().key(k)) : []))
      let res
      try {
        res = await txn.commit()
      } catch (err) {
        this.stats.unavailable++
        this.#noQuorum(err)
        throw new HttpError(503, 'no_quorum', `the fog cluster cannot commit (etcd: ${(err as Error).message}); nothing more was stored`)
      }
      this.#quorum = true
      if (!res.succeeded) {
        this.stats.fenced++
        if (this.#mapRev !== mapRev || this.#members.get(this.#o.id) === undefined) {
          throw new HttpError(421, 'wrong_shard', 'the shard map changed while the batch was committed; send it to the current owners', { details: { shardMap: this.view() } })
        }
        void this.#reregisterIfLost()
        throw new HttpError(503, 'retry', 'the cluster state changed under this batch (a pipeline was learned at the same time, or this coordinator\'s lease is being renewed); send it again')
      }
      this.stats.commits++
      const rev = Number(res.header.revision)
      for (const [k, v] of chunk) {
        this.#revs.set(k, Math.max(this.#revs.get(k) ?? 0, rev))
        // The watch skips this commit when it comes back (the revision is known): note the mark now.
        const parsed = this.#layout.parse(k)
        if (parsed.kind === 'mark') this.#marks.set(windowId(parsed.ref), { ref: parsed.ref, revision: Number(v) })
      }
      if (i === 0) for (const [k] of compares) this.#revs.set(k, Math.max(this.#revs.get(k) ?? 0, rev))
    }
  }

  #misrouted (pipeline: string, key: string): never {
    const map = this.#map
    const owner = map === undefined || map.shards === 0 ? null : map.owners[shardOf(pipeline, key, map.shards)]
    throw new HttpError(421, 'wrong_shard', `window ${pipeline}/${key.slice(0, 60)} belongs to ${owner === null ? 'no coordinator yet' : `coordinator ${owner}`} ` +
      `(shard map version ${map?.version ?? 0}), not to ${this.#o.id}; nothing was stored`, { details: { shardMap: this.view() } })
  }

  #status (): Status {
    if (!this.#started) return 'starting'
    if (!this.#quorum) return 'no_quorum'
    if (this.#map === undefined || this.#map.shards === 0) return 'starting'
    return 'ok'
  }

  #noQuorum (err: unknown): void {
    if (this.#quorum) this.#o.log.error('cluster.quorum_lost', `etcd does not answer (${(err as Error).message}); taking no partials until it does`, { reason: (err as Error).message })
    this.#quorum = false
  }

  /** A linearizable read each second says whether etcd has quorum. */
  async #probe (): Promise<void> {
    if (this.#stopped) return
    try {
      await this.#client.get(this.#layout.shardMap).exec()
      if (!this.#quorum) this.#o.log.info('cluster.quorum_back', 'etcd answers again; taking partials')
      this.#quorum = true
      void this.#reregisterIfLost()
    } catch (err) {
      this.#noQuorum(err)
    }
  }

  // Membership and leadership

  async #register (): Promise<void> {
    const ttl = Math.max(1, Math.ceil(this.#o.leaseTtl / 1000))
    const lease = this.#client.lease(ttl)
    const id = await lease.grant()
    lease.on('lost', err => {
      if (this.#stopped || lease !== this.#lease) return
      this.#o.log.warn('cluster.lease_lost', `lease lost (${err.message}); joining again`, { reason: err.message })
      this.#lease = undefined
      void this.#reregisterIfLost()
    })
    const member: MemberRecord = { id: this.#o.id, http: this.#http, since: Date.now() }
    const key = this.#layout.member(this.#o.id)
    const res = await this.#client.put(key).value(JSON.stringify(member)).lease(id)
    // Known at once, not when the watch brings it: until then this coordinator would think it lost it.
    this.#members.set(this.#o.id, member)
    this.#revs.set(key, Number(res.header.revision))
    this.#lease = lease
    this.#leaseId = id
    await this.#campaign()
  }

  /** After a lost lease: a new one, the member key again, and a campaign. */
  async #reregisterIfLost (): Promise<void> {
    if (this.#stopped || !this.#started || (this.#lease !== undefined && this.#members.get(this.#o.id) !== undefined)) return
    if (this.#registering !== undefined) return await this.#registering
    this.#registering = (async () => {
      try {
        const old = this.#lease
        this.#lease = undefined
        old?.release()
        await this.#register()
      } catch (err) {
        this.#o.log.warn('cluster.rejoin_failed', `could not join again yet (${(err as Error).message})`, { reason: (err as Error).message })
      } finally {
        this.#registering = undefined
      }
    })()
    await this.#registering
  }

  async #campaign (): Promise<void> {
    if (this.#leaseId === '') return
    await this.#client.if(this.#layout.leader, 'Create', '==', 0)
      .then(this.#client.put(this.#layout.leader).value(this.#o.id).lease(this.#leaseId))
      .commit()
  }

  #isLeader (): boolean {
    return this.#leader === this.#o.id && this.#lease !== undefined
  }

  #scheduleReconcile (): void {
    if (this.#reconciling) {
      this.#reconcileAgain = true
      return
    }
    this.#reconciling = true
    setImmediate(() => {
      this.#reconcile().catch(err => { this.#o.log.warn('cluster.shard_map_failed', `shard map update failed (${(err as Error).message}); retrying`, { reason: (err as Error).message }) })
        .finally(() => {
          this.#reconciling = false
          if (this.#reconcileAgain) {
            this.#reconcileAgain = false
            this.#scheduleReconcile()
          }
        })
    })
  }

  /** The leader's one job on every membership change: a map with every shard on a live member. */
  async #reconcile (): Promise<void> {
    if (this.#stopped || !this.#started) return
    if (this.#leader === null) {
      await this.#campaign()
      return
    }
    if (!this.#isLeader()) return
    const live = [...this.#members.keys()]
    const shards = this.#map?.shards ?? this.#o.shards
    const owners = assignShards(this.#map?.owners ?? [], live, shards)
    const members = [...this.#members.values()].map(m => ({ id: m.id, http: m.http })).sort((a, b) => a.id < b.id ? -1 : 1)
    const prev = this.#map
    if (prev !== undefined && sameList(prev.owners, owners) && JSON.stringify(prev.members) === JSON.stringify(members)) return
    const map: ShardMap = { version: (prev?.version ?? 0) + 1, shards, owners, members, leader: this.#o.id }
    const res = await this.#client.if(this.#layout.leader, 'Value', '==', this.#o.id)
      .and(this.#layout.leader, 'Lease', '==', this.#leaseId)
      .and(this.#layout.shardMap, 'Mod', '==', this.#mapRev)
      .then(this.#client.put(this.#layout.shardMap).value(JSON.stringify(map)))
      .commit()
    if (!res.succeeded) {
      // The map or the leadership changed meanwhile: the watch brings the news, then this runs again.
      this.#reconcileAgain = true
      return
    }
    const moved = prev === undefined ? shards : owners.filter((o, i) => o !== prev.owners[i]).length
    this.#o.log.info('cluster.shard_map', `shard map version ${map.version}: ${live.length} member(s), ${moved} shard(s) moved`, { version: map.version, members: live.length, moved })
  }

  /**
   * Leader: removes the windows final for longer than the retention (with their marks: a window that
   * is gone cannot be forwarded any more) and compacts etcd's history. Retention counts from
   * finalization, as in the result store, not from event time: backfilled data must not go before it
   * was final.
   */
  async #maintain (): Promise<void> {
    if (this.#stopped || !this.#isLeader() || !this.#quorum || this.#sink === undefined) return
    try {
      const expired = this.#sink.expired(Date.now() - this.#o.retention, MAINTAIN_MAX)
      for (let i = 0; i < expired.length; i += TXN_OPS / 2) {
        const chunk = expired.slice(i, i + TXN_OPS / 2)
        const res = await this.#client.if(this.#layout.leader, 'Lease', '==', this.#leaseId)
          .then(...chunk.flatMap(w => [this.#client.delete().key(this.#layout.window(w)), this.#client.delete().key(this.#layout.mark(w))]))
          .commit()
        if (!res.succeeded) return
        this.stats.removed += chunk.length
      }
      const status = await this.#client.maintenance.status({})
      this.stats.dbSize = Number(status.dbSize)
      const current = Number(status.header.revision)
      // History back to the previous run stays: a watcher that fell behind by less can catch up.
      if (this.#compactTo > 0) {
        await this.#client.kv.compact({ revision: String(this.#compactTo) })
        this.stats.compactions++
      }
      this.#compactTo = current
    } catch (err) {
      this.#o.log.warn('cluster.maintenance_failed', `maintenance failed (${(err as Error).message}); next time`, { reason: (err as Error).message })
    }
  }

  // The mirror

  /** Everything under the prefix, page by page at one revision, then a watch from the next one. */
  async #load (): Promise<void> {
    const end = prefixEnd(this.#layout.prefix)
    let from = this.#layout.prefix
    let rev = 0
    const kvs: IKeyValue[] = []
    for (;;) {
      let q = this.#client.getAll().inRange({ start: from, end }).limit(LOAD_PAGE)
      if (rev > 0) q = q.revision(rev)
      const res = await q.exec()
      if (rev === 0) rev = Number(res.header.revision)
      kvs.push(...res.kvs)
      if (!res.more || res.kvs.length === 0) break
      from = res.kvs[res.kvs.length - 1].key.toString() + '\0'
    }
    // A reload must not keep members, the leader or marks that went while this was not watching.
    for (const key of this.#revs.keys()) {
      const kind = this.#layout.parse(key).kind
      if (kind === 'member' || kind === 'leader' || kind === 'mark') this.#revs.delete(key)
    }
    this.#members.clear()
    this.#marks.clear()
    this.#leader = null
    this.#applyEvents(kvs.map(kv => ({ type: 'Put' as const, kv })), true)
    this.#seenRev = rev
    await this.#watch(rev + 1)
  }

  /**
   * Watches from `fromRev`. The etcd3 watcher resumes by itself after its stream breaks, but from the
   * revision etcd reports on reconnecting, not from the last event delivered, so events committed while
   * it was cut off can be skipped. A broken watch is therefore dropped, and a new one starts right after
   * the last event applied here (or, when that history was compacted away, everything is loaded again).
   */
  async #watch (fromRev: number): Promise<void> {
    const watcher = await this.#client.watch().prefix(this.#layout.prefix).startRevision(String(fromRev)).create()
    if (this.#stopped) {
      await watcher.cancel().catch(() => {})
      return
    }
    this.#watcher = watcher
    watcher.on('data', res => {
      if (watcher === this.#watcher) this.#applyEvents(res.events, false)
    })
    const drop = (reload: boolean) => {
      if (watcher !== this.#watcher || this.#stopped) return
      this.#watcher = undefined
      void watcher.cancel().catch(() => {})
      void this.#rewatch(reload)
    }
    watcher.on('disconnected', () => { drop(false) })
    // Canceled by etcd (e.g. its start revision was compacted): load everything again.
    watcher.on('error', err => {
      this.#o.log.warn('cluster.watch_canceled', `watch canceled (${err.message}); loading the state again`, { reason: err.message })
      drop(true)
    })
  }

  async #rewatch (reload: boolean): Promise<void> {
    if (this.#rewatching) return
    this.#rewatching = true
    try {
      for (let attempt = 0; !this.#stopped && this.#watcher === undefined; attempt++) {
        try {
          if (reload) {
            await this.#load()
          } else {
            await this.#watch(this.#seenRev + 1)
          }
        } catch (err) {
          reload = reload || /compact/i.test((err as Error).message)
          await sleep(Math.min(2_000, 100 * 2 ** Math.min(attempt, 5)))
        }
      }
    } finally {
      this.#rewatching = false
    }
  }

  #applyEvents (events: ReadonlyArray<{ type: 'Put' | 'Delete', kv: IKeyValue }>, initial: boolean): void {
    const change: ReplicatedChange = { pipelines: [], windows: [] }
    const removed: WindowRef[] = []
    const before = this.#ownedShards()
    let membership = false
    for (const { type, kv } of events) {
      const key = kv.key.toString()
      const rev = Number(kv.mod_revision)
      this.#seenRev = Math.max(this.#seenRev, rev)
      const parsed = this.#layout.parse(key)
      if (type === 'Delete') {
        this.#revs.delete(key)
        if (parsed.kind === 'member') {
          this.#members.delete(parsed.id)
          membership = true
        } else if (parsed.kind === 'leader') {
          this.#leader = null
          membership = true
        } else if (parsed.kind === 'mark') {
          this.#marks.delete(windowId(parsed.ref))
        } else if (parsed.kind === 'window') {
          removed.push(parsed.ref)
        }
        continue
      }
      // This coordinator's own commits come back through the watch: nothing newer than them is lost.
      if ((this.#revs.get(key) ?? 0) >= rev) continue
      this.#revs.set(key, rev)
      try {
        switch (parsed.kind) {
          case 'member': {
            this.#members.set(parsed.id, JSON.parse(kv.value.toString()) as MemberRecord)
            membership = true
            break
          }
          case 'leader': {
            const leader = kv.value.toString()
            if (leader !== this.#leader) this.#o.log.info('cluster.leader', `leader: ${leader}${leader === this.#o.id ? ' (this coordinator)' : ''}`, { leader })
            this.#leader = leader
            membership = true
            break
          }
          case 'shardmap': {
            const map = JSON.parse(kv.value.toString()) as ShardMap
            this.#map = map
            this.#mapRev = rev
            break
          }
          case 'pipeline':
            change.pipelines.push(JSON.parse(kv.value.toString()) as PipelineDef)
            break
          case 'deployed':
            this.#deployed = readDeployedSet(JSON.parse(kv.value.toString()))
            this.#sink?.deployed(this.#deployed)
            break
          case 'window':
            change.windows.push(decodeWindow(kv.value))
            break
          case 'mark':
            this.#marks.set(windowId(parsed.ref), { ref: parsed.ref, revision: Number(kv.value.toString()) })
            break
        }
      } catch (err) {
        // Only coordinators write here; a value they cannot read is a bug or tampering: report, go on.
        this.#o.log.error('cluster.unreadable_value', `unreadable value at ${key} (${(err as Error).message}); ignored`, { key, err })
      }
    }
    if (change.pipelines.length > 0 || change.windows.length > 0) this.#sink?.apply(change)
    if (removed.length > 0) this.#sink?.removed(removed)
    if (membership && !initial) this.#scheduleReconcile()
    if (!initial && this.#started) this.#gained(before)
    if (!initial && this.#members.get(this.#o.id) === undefined) void this.#reregisterIfLost()
  }

  #ownedShards (): Set<number> {
    const owned = new Set<number>()
    this.#map?.owners.forEach((o, i) => { if (o === this.#o.id) owned.add(i) })
    return owned
  }

  /** Windows still to forward in shards this coordinator has just taken over. */
  #gained (before: Set<number>): void {
    const map = this.#map
    if (map === undefined || map.shards === 0 || this.#marks.size === 0) return
    const now = this.#ownedShards()
    if ([...now].every(s => before.has(s))) return
    const take = [...this.#marks.values()].filter(m => {
      const s = shardOf(m.ref.pipeline, m.ref.key, map.shards)
      return now.has(s) && !before.has(s)
    })
    if (take.length > 0) this.#sink?.toForward(take)
  }

  registerMetrics (m: Metrics): void {
    m.gauge('fogmesh_cluster_quorum', 'Whether this coordinator can commit to etcd (1) or not (0: it takes no partials)', [], () => [[{}, this.#quorum ? 1 : 0]])
    m.gauge('fogmesh_cluster_leader', 'Whether this coordinator is the cluster\'s leader', [], () => [[{}, this.#isLeader() ? 1 : 0]])
    m.gauge('fogmesh_cluster_members', 'Live coordinators in the cluster', [], () => [[{}, this.#members.size]])
    m.gauge('fogmesh_cluster_shards_owned', 'Virtual shards this coordinator owns', [], () => [[{}, this.#ownedShards().size]])
    m.gauge('fogmesh_cluster_shard_map_version', 'Version of the shard map this coordinator holds', [], () => [[{}, this.#map?.version ?? 0]])
    m.counter('fogmesh_cluster_commits_total', 'Fenced etcd transactions committed', [], () => [[{}, this.stats.commits]])
    m.counter('fogmesh_cluster_fenced_total', 'Commits refused by the fence (the map or this coordinator\'s lease changed)', [], () => [[{}, this.stats.fenced]])
    m.counter('fogmesh_cluster_unavailable_total', 'Commits that failed because etcd did not answer', [], () => [[{}, this.stats.unavailable]])
    m.counter('fogmesh_cluster_windows_removed_total', 'Window records and marks removed past retention (by this coordinator as leader)', [], () => [[{}, this.stats.removed]])
    m.counter('fogmesh_cluster_compactions_total', 'etcd history compactions (by this coordinator as leader)', [], () => [[{}, this.stats.compactions]])
    m.gauge('fogmesh_etcd_db_bytes', 'Size of etcd\'s database as of the leader\'s last maintenance (0 elsewhere)', [], () => [[{}, this.stats.dbSize]])
  }
}

function sameList<T> (a: readonly T[], b: readonly T[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

/** The first key after every key with this prefix. */
function prefixEnd (prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)
}

function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}


/**
 * The etcd3 client's hosts and credentials for `--etcd` endpoints: `host:port` and `http://…` plain,
 * `https://…` over TLS verified against `tls.ca` (default the system's CAs), presenting `tls.cert` as
 * the client certificate when there is one. One client speaks one of the two: a mix is a ConfigError.
 */
export function etcdConnection (endpoints: readonly string[], tls: ClientTls = {}): Pick<IOptions, 'hosts' | 'credentials'> {
  const hosts = endpoints.map(e => /^https?:\/\//i.test(e) ? e.replace(/^https?/i, s => s.toLowerCase()) : `http://${e}`)
  const secure = hosts.filter(h => h.startsWith('https://')).length
  if (secure === 0) return { hosts }
  if (secure !== hosts.length) {
    throw new ConfigError(`--etcd ${endpoints.join(',')}: either every endpoint is https:// (TLS) or none is`)
  }
  return {
    hosts,
    credentials: {
      rootCertificate: tls.ca ?? Buffer.from(rootCertificates.join('\n')),
      ...tls.cert !== undefined && tls.key !== undefined ? { privateKey: tls.key, certChain: tls.cert } : {}
    }
  }
}

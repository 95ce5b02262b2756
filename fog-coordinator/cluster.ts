/**
 * A fog coordinator's membership in a cluster replicated by etcd (the Raft engine), as the MergeNode's
 * Replication and the fog's DeploymentStore. It wires the parts that each do one job:
 *
 * - etcd-client.ts: the etcd3 client (plain or TLS, with deadlines) and etcd's transaction limits;
 * - cluster-layout.ts: what is kept under the prefix, and how (the on-etcd format);
 * - cluster-session.ts: membership (the member key under this coordinator's lease, joining again after
 *   a lost lease) and quorum (503 no_quorum while etcd does not answer; probed each second);
 * - cluster-leader.ts: the leader's campaign, the shard map it keeps balanced, and maintenance
 *   (removing windows past retention, compacting etcd's history), every write fenced;
 * - cluster-mirror.ts: the whole replicated state loaded, then watched, in revision order;
 * - fenced-commits.ts: a batch's changes, final windows, "to forward" marks and hand-offs to the sinks,
 *   committed only for shards this coordinator owns, fenced on its lease and the map's revision;
 * - cluster-deployments.ts: the deployed pipeline set, compared and swapped in etcd.
 *
 * Invariants: a coordinator is ready (takes partials) only once the leader put it in the map, and it
 * finalizes nothing before every active edge had time to report to it; stopping revokes the lease, so
 * its shards move at once rather than after --lease-ttl. Hand-offs to the sinks in the shards it comes
 * to own (at its start, or taking them over) go to the node's sinks again, then from etcd.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { Etcd3 } from 'etcd3'
import type { DeployedSet } from '../core/pipeline/deployment.ts'
import type { Batch } from '../core/upstream/batch.ts'
import type { ShardMapView } from '../core/upstream/shards.ts'
import type { BatchWrite, MergeWindow } from '../server/merge/contribution-store.ts'
import type { Logger } from '../server/shell/log.ts'
import type { Metrics } from '../server/shell/metrics.ts'
import type { ReplicatedChange, Replication } from '../server/merge/replication.ts'
import type { WindowResult } from '../server/shell/results.ts'
import type { ClientTls } from '../server/shell/tls.ts'
import { ClusterLayout, decodeHandoff } from './cluster-layout.ts'
import type { WindowRef } from './cluster-layout.ts'
import { EtcdDeploymentStore } from './cluster-deployments.ts'
import { ClusterLeader } from './cluster-leader.ts'
import { ClusterMirror } from './cluster-mirror.ts'
import type { Handoff } from './cluster-mirror.ts'
import { ClusterSession } from './cluster-session.ts'
import { openEtcd } from './etcd-client.ts'
import { FencedCommits } from './fenced-commits.ts'

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

/** How often a coordinator checks that etcd answers (and so whether it has quorum), ms. */
const PROBE_EVERY = 1_000

export class FogCluster implements Replication {
  readonly #o: ClusterOptions
  readonly #client: Etcd3
  readonly #session: ClusterSession
  readonly #leader: ClusterLeader
  readonly #mirror: ClusterMirror
  readonly #commits: FencedCommits
  /** The deployed pipeline set, kept in etcd for the whole cluster. */
  readonly deployments: EtcdDeploymentStore
  #stopped = false
  #timers: NodeJS.Timeout[] = []
  /** The node's sinks (see handOver); without, hand-offs are left for an owner with sinks. */
  #toSinks: ((results: readonly WindowResult[]) => boolean) | undefined

  constructor (options: ClusterOptions) {
    this.#o = options
    const layout = new ClusterLayout(options.prefix)
    const client = this.#client = openEtcd(options)
    const base = { id: options.id, client, layout, log: options.log }
    // The session and the leader are made after the mirror; the mirror calls them only once it loads, at start.
    this.#mirror = new ClusterMirror({
      ...base,
      joined: () => this.#session.joined,
      membershipChanged: () => { this.#leader.schedule() },
      selfMissing: () => { void this.#session.rejoin() },
      handedOver: handoffs => { this.#handedOver(handoffs) }
    })
    this.#session = new ClusterSession({ ...base, leaseTtl: options.leaseTtl, mirror: this.#mirror, registered: async () => { await this.#leader.campaign() } })
    this.#leader = new ClusterLeader({ ...base, shards: options.shards, retention: options.retention, session: this.#session, mirror: this.#mirror })
    this.#commits = new FencedCommits({ ...base, forward: options.forward, session: this.#session, mirror: this.#mirror })
    this.deployments = new EtcdDeploymentStore({ client, layout, session: this.#session, mirror: this.#mirror })
  }

  /**
   * Loads the replicated state into `sink`, then joins: lease, member key, watch, campaign. `abort`
   * (a stop signal while etcd is not reachable yet) ends the wait: the node then stops without joining.
   */
  async start (http: string, sink: ClusterSink, abort?: AbortSignal): Promise<void> {
    this.#mirror.sendTo(sink)
    const ended = () => this.#stopped || abort?.aborted === true
    for (let attempt = 0; !ended(); attempt++) {
      try {
        await this.#mirror.load()
        await this.#session.register(http)
        break
      } catch (err) {
        if (attempt === 0 || attempt % 10 === 0) {
          const secure = this.#o.endpoints.some(e => e.startsWith('https://'))
          const hint = secure ? ' (over TLS: --tls-ca must verify etcd\'s certificate, and etcd\'s --trusted-ca-file must have signed this node\'s --tls-cert)' : ''
          this.#o.log.warn('cluster.etcd_unavailable', `etcd ${this.#o.endpoints.join(',')} not usable yet (${(err as Error).message})${hint}; retrying`, {
            endpoints: this.#o.endpoints, reason: (err as Error).message, attempt, tls: secure
          })
        }
        await sleep(Math.min(2_000, 200 * 2 ** Math.min(attempt, 4)), undefined, { signal: abort }).catch(() => {})
      }
    }
    if (ended()) return
    this.#session.join()
    this.#timers.push(setInterval(() => { void this.#session.probe() }, PROBE_EVERY))
    this.#timers.push(setInterval(() => { void this.#leader.maintain((before, limit) => sink.expired(before, limit)) }, this.#o.maintainEvery))
    this.#leader.schedule()
    // Ready means taking partials: wait for the leader (maybe this one) to put it in the map.
    while (!ended() && !this.#mirror.ownedShards().size && this.#session.status() !== 'ok') await sleep(50)
    this.#mirror.gained(new Set())
  }

  /** Leaves the cluster at once: revoking the lease removes the member key (and leadership). */
  async stop (): Promise<void> {
    this.#stopped = true
    for (const t of this.#timers) clearInterval(t)
    this.#commits.stop()
    this.#leader.stop()
    this.#session.stop()
    await this.#mirror.stop()
    await this.#session.leave()
    this.#client.close()
  }

  // Replication

  admit (batch: Batch): void {
    this.#commits.admit(batch)
  }

  finalizing (): boolean {
    return this.#session.finalizing()
  }

  owns (pipeline: string, key: string): boolean {
    return this.#mirror.owns(pipeline, key)
  }

  view (): ShardMapView {
    return this.#session.view()
  }

  async commitBatch (write: BatchWrite, windows: readonly MergeWindow[]): Promise<void> {
    await this.#commits.commitBatch(write, windows)
  }

  async commitFinal (due: ReadonlyArray<{ window: MergeWindow, revision: number }>, at: number, results?: readonly WindowResult[]): Promise<(() => void) | undefined> {
    return await this.#commits.commitFinal(due, at, results)
  }

  handOver (toSinks: (results: readonly WindowResult[]) => boolean): void {
    this.#toSinks = toSinks
  }

  /** Hand-offs in shards this coordinator now owns: into its sinks' queues (a repeat is harmless), then from etcd. */
  #handedOver (handoffs: readonly Handoff[]): void {
    if (this.#toSinks === undefined || this.#stopped) return
    const results: WindowResult[] = []
    const keys: string[] = []
    for (const h of handoffs) {
      try {
        results.push(...decodeHandoff(h.value))
        keys.push(h.key)
      } catch (err) {
        // Only coordinators write them; one no coordinator can read is reported and left where it is.
        this.#o.log.error('cluster.unreadable_value', `unreadable hand-off to the sinks at ${h.key} (${(err as Error).message}); ignored`, { key: h.key, err })
      }
    }
    let queued = false
    try {
      queued = this.#toSinks(results)
    } catch (err) {
      this.#o.log.error('cluster.handoff_failed', 'the sinks\' queues did not take results handed over; they stay in etcd and are offered again at the next start', { err })
    }
    if (!queued) return
    this.#o.log.info('cluster.handed_over', `${results.length} final result(s) of shards this coordinator now owns handed to its sinks again`, { results: results.length, handoffs: keys.length })
    this.#commits.sunk(keys)
  }

  /** The cloud acknowledged these windows: their "to forward" marks go. */
  async forwarded (windows: ReadonlyArray<{ ref: WindowRef, revision: number }>): Promise<void> {
    await this.#commits.forwarded(windows)
  }

  registerMetrics (m: Metrics): void {
    const commits = this.#commits.stats
    const leader = this.#leader.stats
    m.gauge('fogmesh_cluster_quorum', 'Whether this coordinator can commit to etcd (1) or not (0: it takes no partials)', [], () => [[{}, this.#session.quorum ? 1 : 0]])
    m.gauge('fogmesh_cluster_leader', 'Whether this coordinator is the cluster\'s leader', [], () => [[{}, this.#leader.isLeader() ? 1 : 0]])
    m.gauge('fogmesh_cluster_members', 'Live coordinators in the cluster', [], () => [[{}, this.#mirror.members.size]])
    m.gauge('fogmesh_cluster_shards_owned', 'Virtual shards this coordinator owns', [], () => [[{}, this.#mirror.ownedShards().size]])
    m.gauge('fogmesh_cluster_shard_map_version', 'Version of the shard map this coordinator holds', [], () => [[{}, this.#mirror.map?.version ?? 0]])
    m.counter('fogmesh_cluster_commits_total', 'Fenced etcd transactions committed', [], () => [[{}, commits.commits]])
    m.counter('fogmesh_cluster_fenced_total', 'Commits refused by the fence (the map or this coordinator\'s lease changed)', [], () => [[{}, commits.fenced]])
    m.counter('fogmesh_cluster_unavailable_total', 'Commits that failed because etcd did not answer', [], () => [[{}, commits.unavailable]])
    m.counter('fogmesh_cluster_windows_removed_total', 'Window records and marks removed past retention (by this coordinator as leader)', [], () => [[{}, leader.removed]])
    m.counter('fogmesh_cluster_compactions_total', 'etcd history compactions (by this coordinator as leader)', [], () => [[{}, leader.compactions]])
    m.gauge('fogmesh_etcd_db_bytes', 'Size of etcd\'s database as of the leader\'s last maintenance (0 elsewhere)', [], () => [[{}, leader.dbSize]])
  }
}

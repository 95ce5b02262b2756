/**
 * The leader's duties in a fog cluster. The leader is the first coordinator to create `leader` under
 * its lease; it keeps the shard map (`shardmap`): every virtual shard assigned to a live member,
 * balanced, moving as few shards as possible. It also removes windows past retention and compacts
 * etcd's history.
 *
 * Invariants:
 * - every leader write is fenced on the leader key (value and lease) and on the map's revision, so a
 *   deposed leader cannot write;
 * - one reconcile at a time; a change seen meanwhile (or a fenced write) runs it again;
 * - retention counts from finalization, as in the result store, not from event time: backfilled data
 *   must not go before it was final; a window goes with its mark (a window that is gone cannot be
 *   forwarded any more).
 *
 * The etcd3 client's own Election is not used: it has had double-leader bugs after etcd restarts; the
 * fencing here does not depend on events arriving.
 */
import type { Etcd3 } from 'etcd3'
import { assignShards } from '../core/upstream/shards.ts'
import type { ShardMap } from '../core/upstream/shards.ts'
import type { Logger } from '../server/shell/log.ts'
import type { ClusterLayout, WindowRef } from './cluster-layout.ts'
import type { ClusterMirror } from './cluster-mirror.ts'
import type { ClusterSession } from './cluster-session.ts'
import { TXN_OPS } from './etcd-client.ts'

/** Most windows one maintenance pass removes (the next pass takes the rest). */
const MAINTAIN_MAX = 20_000

export interface ClusterLeaderParts {
  id: string
  client: Etcd3
  layout: ClusterLayout
  log: Logger
  /** Virtual shards of a new cluster (an existing map keeps its count). */
  shards: number
  /** Windows final for longer than this are removed, ms. */
  retention: number
  session: ClusterSession
  mirror: ClusterMirror
}

export class ClusterLeader {
  readonly #p: ClusterLeaderParts
  #stopped = false
  #reconciling = false
  #reconcileAgain = false
  /** The revision to compact to at the next maintenance (the current one at the last). */
  #compactTo = 0
  readonly stats = { compactions: 0, removed: 0, dbSize: 0 }

  constructor (parts: ClusterLeaderParts) {
    this.#p = parts
  }

  stop (): void {
    this.#stopped = true
  }

  isLeader (): boolean {
    return this.#p.mirror.leader === this.#p.id && this.#p.session.leased
  }

  /** Becomes the leader if there is none (under this coordinator's lease). */
  async campaign (): Promise<void> {
    const { client, layout, session, id } = this.#p
    if (session.leaseId === '') return
    await client.if(layout.leader, 'Create', '==', 0)
      .then(client.put(layout.leader).value(id).lease(session.leaseId))
      .commit()
  }

  /** On every membership change: a reconcile soon (again after the one under way, if any). */
  schedule (): void {
    if (this.#reconciling) {
      this.#reconcileAgain = true
      return
    }
    this.#reconciling = true
    setImmediate(() => {
      this.#reconcile().catch(err => { this.#p.log.warn('cluster.shard_map_failed', `shard map update failed (${(err as Error).message}); retrying`, { reason: (err as Error).message }) })
        .finally(() => {
          this.#reconciling = false
          if (this.#reconcileAgain) {
            this.#reconcileAgain = false
            this.schedule()
          }
        })
    })
  }

  /** The leader's one job on every membership change: a map with every shard on a live member. */
  async #reconcile (): Promise<void> {
    const { client, layout, log, session, mirror, id } = this.#p
    if (this.#stopped || !session.joined) return
    if (mirror.leader === null) {
      await this.campaign()
      return
    }
    if (!this.isLeader()) return
    const live = [...mirror.members.keys()]
    const prev = mirror.map
    const shards = prev?.shards ?? this.#p.shards
    const owners = assignShards(prev?.owners ?? [], live, shards)
    const members = [...mirror.members.values()].map(m => ({ id: m.id, http: m.http })).sort((a, b) => a.id < b.id ? -1 : 1)
    if (prev !== undefined && sameList(prev.owners, owners) && JSON.stringify(prev.members) === JSON.stringify(members)) return
    const map: ShardMap = { version: (prev?.version ?? 0) + 1, shards, owners, members, leader: id }
    const res = await client.if(layout.leader, 'Value', '==', id)
      .and(layout.leader, 'Lease', '==', session.leaseId)
      .and(layout.shardMap, 'Mod', '==', mirror.mapRev)
      .then(client.put(layout.shardMap).value(JSON.stringify(map)))
      .commit()
    if (!res.succeeded) {
      // The map or the leadership changed meanwhile: the watch brings the news, then this runs again.
      this.#reconcileAgain = true
      return
    }
    const moved = prev === undefined ? shards : owners.filter((o, i) => o !== prev.owners[i]).length
    log.info('cluster.shard_map', `shard map version ${map.version}: ${live.length} member(s), ${moved} shard(s) moved`, { version: map.version, members: live.length, moved })
  }

  /**
   * Removes the windows final for longer than the retention (with their marks) and compacts etcd's
   * history; `expired` lists them (the node's mirror knows when each was finalized).
   */
  async maintain (expired: (before: number, limit: number) => WindowRef[]): Promise<void> {
    const { client, layout, log, session } = this.#p
    if (this.#stopped || !this.isLeader() || !session.quorum) return
    try {
      const windows = expired(Date.now() - this.#p.retention, MAINTAIN_MAX)
      for (let i = 0; i < windows.length; i += TXN_OPS / 2) {
        const chunk = windows.slice(i, i + TXN_OPS / 2)
        const res = await client.if(layout.leader, 'Lease', '==', session.leaseId)
          .then(...chunk.flatMap(w => [client.delete().key(layout.window(w)), client.delete().key(layout.mark(w))]))
          .commit()
        if (!res.succeeded) return
        this.stats.removed += chunk.length
      }
      const status = await client.maintenance.status({})
      this.stats.dbSize = Number(status.dbSize)
      const current = Number(status.header.revision)
      // History back to the previous run stays: a watcher that fell behind by less can catch up.
      if (this.#compactTo > 0) {
        await client.kv.compact({ revision: String(this.#compactTo) })
        this.stats.compactions++
      }
      this.#compactTo = current
    } catch (err) {
      log.warn('cluster.maintenance_failed', `maintenance failed (${(err as Error).message}); next time`, { reason: (err as Error).message })
    }
  }
}

function sameList<T> (a: readonly T[], b: readonly T[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

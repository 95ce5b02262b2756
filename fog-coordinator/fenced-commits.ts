/**
 * What a fog coordinator writes to etcd for its MergeNode (as its Replication): a batch's changes,
 * final windows, and the clearing of "to forward" marks once the cloud has a window.
 *
 * Invariants:
 * - a coordinator commits windows only of shards it owns, in transactions that compare its member
 *   key's lease and the map's revision: a coordinator partitioned from etcd, or deposed, cannot
 *   commit; an edge with an old map gets 421 wrong_shard with the current one;
 * - definitions are compared at the revision known here, so two coordinators learning one pipeline
 *   at once do not both write it; they go with the first transaction, before any window that needs them;
 * - a commit too large for one transaction (etcd's --max-txn-ops, request size) goes in several, every
 *   one fenced and idempotent;
 * - a commit etcd does not answer is 503 no_quorum, and the coordinator takes no partials until etcd
 *   answers again (see cluster-session.ts);
 * - with a cloud (`forward`), final windows are marked "to forward" in the same commit;
 * - a commit etcd does not answer may have been taken all the same: its final windows then become final
 *   here only through the watch, after their pass failed, and the mirror forwards them and hands their
 *   results to the sinks (see cluster-mirror.ts), as the pass would have;
 * - with sinks, the results of final windows are committed with them too, one hand-off per shard (or
 *   more, for a large pass), in the same transaction as its windows: a window is never final in etcd
 *   without its result being either in a hand-off or in the sinks' queues of the coordinator that
 *   committed it. Hand-offs go once the results are in the sinks' queues: not fenced, as those
 *   queues have them whoever owns the shard now, and batched, at most one transaction in flight (one
 *   per pass, none without sinks); one left behind is offered again by the shard's owner (a repeat);
 * - FOGMESH_FAULT_AFTER_FINAL_COMMIT=N (tests only): the N-th commit of final windows, once etcd took
 *   it, logs `fault.after_final_commit` and never returns, so that a test can SIGKILL the coordinator
 *   in the gap between etcd and its sinks' queues.
 */
import { randomBytes } from 'node:crypto'
import type { Etcd3 } from 'etcd3'
import { HttpError } from '../core/errors.ts'
import type { Batch } from '../core/upstream/batch.ts'
import { shardOf } from '../core/upstream/shards.ts'
import type { BatchWrite, MergeWindow } from '../server/merge/contribution-store.ts'
import type { Replication } from '../server/merge/replication.ts'
import type { Logger } from '../server/shell/log.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { encodeHandoff, encodeWindow } from './cluster-layout.ts'
import type { ClusterLayout, WindowRef } from './cluster-layout.ts'
import type { ClusterMirror } from './cluster-mirror.ts'
import type { ClusterSession } from './cluster-session.ts'
import { TXN_BYTES, TXN_OPS } from './etcd-client.ts'

type Put = [string, Buffer | string]

/** How soon hand-offs whose removal failed are tried again, ms. */
const SUNK_RETRY = 1_000

export interface FencedCommitsParts {
  id: string
  client: Etcd3
  layout: ClusterLayout
  log: Logger
  /** With a cloud sink: final windows are marked "to forward" in the same commit. */
  forward: boolean
  session: ClusterSession
  mirror: ClusterMirror
}

export class FencedCommits implements Pick<Replication, 'admit' | 'commitBatch' | 'commitFinal'> {
  readonly #p: FencedCommitsParts
  readonly stats = { commits: 0, fenced: 0, unavailable: 0 }
  /** Hand-offs whose results are in the sinks' queues, to remove with the next transaction. */
  #sunk: string[] = []
  #removing = false
  #stopped = false
  /** Unique per process: with a counter, the hand-offs' pass names. */
  readonly #incarnation = randomBytes(4).toString('hex')
  #passes = 0
  /** See FOGMESH_FAULT_AFTER_FINAL_COMMIT above (0: off). */
  readonly #faultAfter = Number(process.env.FOGMESH_FAULT_AFTER_FINAL_COMMIT ?? 0)
  #finalCommits = 0

  constructor (parts: FencedCommitsParts) {
    this.#p = parts
  }

  /** No more removals of hand-offs are started (those left are offered again after the restart). */
  stop (): void {
    this.#stopped = true
  }

  admit (batch: Batch): void {
    const status = this.#p.session.status()
    if (status === 'starting') throw new HttpError(503, 'starting', 'this fog coordinator is joining its cluster; send the batch again shortly')
    if (status === 'no_quorum') {
      throw new HttpError(503, 'no_quorum', 'the fog cluster cannot commit: etcd has no quorum or is out of reach from this coordinator; send the batch elsewhere (the cloud) or later')
    }
    for (const w of batch.windows) {
      if (w.contributions.length > 0 && !this.#p.mirror.owns(w.pipeline, w.key)) this.#misrouted(w.pipeline, w.key)
    }
  }

  async commitBatch (write: BatchWrite, windows: readonly MergeWindow[]): Promise<void> {
    const { layout, mirror } = this.#p
    const puts: Put[][] = []
    const compares: Array<[string, 'Mod', number]> = []
    for (const d of write.pipelines) {
      const key = layout.pipeline(d.name)
      puts.push([[key, JSON.stringify(d)]])
      // Two coordinators learning one pipeline at once must not both write it.
      compares.push([key, 'Mod', mirror.rev(key)])
    }
    for (const w of windows) {
      if (!this.#p.mirror.owns(w.pipeline, w.key)) this.#misrouted(w.pipeline, w.key)
      puts.push([[layout.window(w), encodeWindow(w)]])
    }
    await this.#commit(puts, [], compares)
  }

  /**
   * Commits windows as final (with a cloud, marked "to forward"); with `results` (the same order as
   * `due`: the node has sinks) they go with them in hand-offs, and the function returned removes those
   * once the results are in the sinks' queues.
   */
  async commitFinal (due: ReadonlyArray<{ window: MergeWindow, revision: number }>, at: number, results?: readonly WindowResult[]): Promise<(() => void) | undefined> {
    const { layout, forward } = this.#p
    const puts = due.map(({ window: w, revision }): Put[] => {
      const record: Put = [layout.window(w), encodeWindow({ ...w, finalRevision: revision, finalAt: at, dirty: false })]
      return forward ? [record, [layout.mark(w), String(revision)]] : [record]
    })
    const handoffs: string[] = []
    const groups = results === undefined || results.length === 0 ? puts : this.#handoffGroups(puts, results, at, handoffs)
    await this.#commit(groups, [], [])
    if (due.length > 0 && ++this.#finalCommits === this.#faultAfter) {
      this.#p.log.warn('fault.after_final_commit', `FOGMESH_FAULT_AFTER_FINAL_COMMIT: final commit ${this.#finalCommits} is in etcd; stopping here, before the sinks' queues`, {})
      await new Promise<never>(() => {})
    }
    return handoffs.length === 0 ? undefined : () => { this.sunk(handoffs) }
  }

  /**
   * The windows' puts in groups that each fit in one transaction with the hand-off of their results:
   * by shard (the owner after a crash takes a shard's hand-offs), cut where a group would be too large.
   * The names of the hand-offs go into `names`.
   */
  #handoffGroups (puts: Put[][], results: readonly WindowResult[], at: number, names: string[]): Put[][] {
    const { layout, mirror, id } = this.#p
    const shards = mirror.map?.shards ?? 0
    const byShard = new Map<number, number[]>()
    results.forEach((r, i) => {
      const s = shards === 0 ? 0 : shardOf(r.pipeline, r.key, shards)
      const list = byShard.get(s)
      if (list === undefined) byShard.set(s, [i])
      else list.push(i)
    })
    const pass = `${id}.${at}.${this.#incarnation}.${++this.#passes}`
    const groups: Put[][] = []
    for (const [shard, indexes] of byShard) {
      let part = 0
      let group: Put[] = []
      let taken: WindowResult[] = []
      let ops = 1
      let bytes = 0
      const close = (): void => {
        const name = layout.handoff(shard, `${pass}.${part++}`)
        names.push(name)
        groups.push([...group, [name, encodeHandoff(taken)]])
        group = []
        taken = []
        ops = 1
        bytes = 0
      }
      for (const i of indexes) {
        // A result in JSON is far larger than its share of the key: a margin for the hand-off's own bytes.
        const size = puts[i].reduce((n, [k, v]) => n + k.length + v.length, 0) + 2 * JSON.stringify(results[i]).length
        if (taken.length > 0 && (ops + puts[i].length > TXN_OPS || bytes + size > TXN_BYTES)) close()
        group.push(...puts[i])
        taken.push(results[i])
        ops += puts[i].length
        bytes += size
      }
      close()
    }
    return groups
  }

  /** Hand-offs whose results are in the sinks' queues go, in one transaction with any left from before. */
  sunk (names: readonly string[]): void {
    this.#sunk.push(...names)
    if (this.#removing || this.#stopped || this.#sunk.length === 0) return
    this.#removing = true
    const { client, layout } = this.#p
    const take = this.#sunk.splice(0, TXN_OPS)
    // The compare always holds: removing a hand-off whose results are in a sinks' queue is right whoever owns the shard.
    client.if(layout.shardMap, 'Mod', '>', -1).then(...take.map(k => client.delete().key(k))).commit().then(() => {
      this.#removing = false
      if (this.#sunk.length > 0) this.sunk([])
    }, () => {
      // Left in etcd they would be offered again after a restart or a takeover (a repeat): try again soon.
      this.#sunk.unshift(...take)
      setTimeout(() => {
        this.#removing = false
        this.sunk([])
      }, SUNK_RETRY).unref()
    })
  }

  /** The cloud acknowledged these windows: their marks go (not fenced: any holder may clear them). */
  async forwarded (windows: ReadonlyArray<{ ref: WindowRef, revision: number }>): Promise<void> {
    const { client, layout, mirror } = this.#p
    const ops = windows.filter(w => (mirror.mark(w.ref)?.revision ?? Infinity) <= w.revision)
    for (let i = 0; i < ops.length; i += TXN_OPS) {
      const chunk = ops.slice(i, i + TXN_OPS)
      // One transaction for many deletes; the compare always holds.
      await client.if(layout.shardMap, 'Mod', '>', -1)
        .then(...chunk.map(w => client.delete().key(layout.mark(w.ref))))
        .commit()
    }
  }

  /**
   * Fenced commits, in as many transactions as etcd's limits need (every one fenced, idempotent); the
   * puts of one group always go in one transaction.
   */
  async #commit (groups: Put[][], deletes: string[], compares: Array<[string, 'Mod', number]>): Promise<void> {
    const { client, layout, session, mirror, id } = this.#p
    const chunks: Put[][] = [[]]
    let bytes = 0
    for (const g of groups) {
      const last = chunks[chunks.length - 1]
      const size = g.reduce((n, [k, v]) => n + k.length + v.length, 0)
      if (last.length > 0 && (last.length + g.length + compares.length > TXN_OPS || bytes + size > TXN_BYTES)) {
        chunks.push([])
        bytes = 0
      }
      chunks[chunks.length - 1].push(...g)
      bytes += size
    }
    for (const [i, chunk] of chunks.entries()) {
      const mapRev = mirror.mapRev
      let txn = client.if(layout.member(id), 'Lease', '==', session.leaseId)
        .and(layout.shardMap, 'Mod', '==', mapRev)
      // Definitions go with the first chunk, before any window that needs them.
      if (i === 0) for (const [key, , rev] of compares) txn = txn.and(key, 'Mod', '==', rev)
      txn = txn.then(...chunk.map(([k, v]) => client.put(k).value(v)), ...(i === 0 ? deletes.map(k => client.delete().key(k)) : []))
      let res
      // Until etcd answers, the watch bringing this chunk's marks or hand-offs back is no news.
      mirror.committing(chunk)
      try {
        res = await txn.commit()
      } catch (err) {
        // etcd may have taken it all the same: the mirror then takes over what the watch brings of it.
        mirror.uncommitted(chunk)
        this.stats.unavailable++
        session.unanswered(err)
        throw new HttpError(503, 'no_quorum', `the fog cluster cannot commit (etcd: ${(err as Error).message}); nothing more was stored`)
      }
      session.answered()
      if (!res.succeeded) {
        mirror.uncommitted(chunk)
        this.stats.fenced++
        if (mirror.mapRev !== mapRev || mirror.members.get(id) === undefined) {
          throw new HttpError(421, 'wrong_shard', 'the shard map changed while the batch was committed; send it to the current owners', { details: { shardMap: session.view() } })
        }
        void session.rejoin()
        throw new HttpError(503, 'retry', 'the cluster state changed under this batch (a pipeline was learned at the same time, or this coordinator\'s lease is being renewed); send it again')
      }
      this.stats.commits++
      const rev = Number(res.header.revision)
      mirror.committed(chunk, rev)
      if (i === 0) mirror.compared(compares.map(([k]) => k), rev)
    }
  }

  #misrouted (pipeline: string, key: string): never {
    const { mirror, session, id } = this.#p
    const owner = mirror.owner(pipeline, key)
    throw new HttpError(421, 'wrong_shard', `window ${pipeline}/${key.slice(0, 60)} belongs to ${owner === null ? 'no coordinator yet' : `coordinator ${owner}`} ` +
      `(shard map version ${mirror.map?.version ?? 0}), not to ${id}; nothing was stored`, { details: { shardMap: session.view() } })
  }
}

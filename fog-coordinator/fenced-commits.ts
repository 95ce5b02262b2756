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
 * - with a cloud (`forward`), final windows are marked "to forward" in the same commit.
 */
import type { Etcd3 } from 'etcd3'
import { HttpError } from '../core/errors.ts'
import type { Batch } from '../core/upstream/batch.ts'
import type { BatchWrite, MergeWindow } from '../server/merge/contribution-store.ts'
import type { Replication } from '../server/merge/replication.ts'
import { encodeWindow } from './cluster-layout.ts'
import type { ClusterLayout, WindowRef } from './cluster-layout.ts'
import type { ClusterMirror } from './cluster-mirror.ts'
import type { ClusterSession } from './cluster-session.ts'
import { TXN_BYTES, TXN_OPS } from './etcd-client.ts'

export interface FencedCommitsParts {
  id: string
  client: Etcd3
  layout: ClusterLayout
  /** With a cloud sink: final windows are marked "to forward" in the same commit. */
  forward: boolean
  session: ClusterSession
  mirror: ClusterMirror
}

export class FencedCommits implements Pick<Replication, 'admit' | 'commitBatch' | 'commitFinal'> {
  readonly #p: FencedCommitsParts
  readonly stats = { commits: 0, fenced: 0, unavailable: 0 }

  constructor (parts: FencedCommitsParts) {
    this.#p = parts
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
    const puts: Array<[string, Buffer | string]> = []
    const compares: Array<[string, 'Mod', number]> = []
    for (const d of write.pipelines) {
      const key = layout.pipeline(d.name)
      puts.push([key, JSON.stringify(d)])
      // Two coordinators learning one pipeline at once must not both write it.
      compares.push([key, 'Mod', mirror.rev(key)])
    }
    for (const w of windows) {
      if (!this.#p.mirror.owns(w.pipeline, w.key)) this.#misrouted(w.pipeline, w.key)
      puts.push([layout.window(w), encodeWindow(w)])
    }
    await this.#commit(puts, [], compares)
  }

  async commitFinal (due: ReadonlyArray<{ window: MergeWindow, revision: number }>, at: number): Promise<void> {
    const { layout } = this.#p
    const puts: Array<[string, Buffer | string]> = []
    for (const { window: w, revision } of due) {
      puts.push([layout.window(w), encodeWindow({ ...w, finalRevision: revision, finalAt: at, dirty: false })])
      if (this.#p.forward) puts.push([layout.mark(w), String(revision)])
    }
    await this.#commit(puts, [], [])
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

  /** Fenced commits, in as many transactions as etcd's limits need (every one fenced, idempotent). */
  async #commit (puts: Array<[string, Buffer | string]>, deletes: string[], compares: Array<[string, 'Mod', number]>): Promise<void> {
    const { client, layout, session, mirror, id } = this.#p
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
      const mapRev = mirror.mapRev
      let txn = client.if(layout.member(id), 'Lease', '==', session.leaseId)
        .and(layout.shardMap, 'Mod', '==', mapRev)
      // Definitions go with the first chunk, before any window that needs them.
      if (i === 0) for (const [key, , rev] of compares) txn = txn.and(key, 'Mod', '==', rev)
      txn = txn.then(...chunk.map(([k, v]) => client.put(k).value(v)), ...(i === 0 ? deletes.map(k => client.delete().key(k)) : []))
      let res
      try {
        res = await txn.commit()
      } catch (err) {
        this.stats.unavailable++
        session.unanswered(err)
        throw new HttpError(503, 'no_quorum', `the fog cluster cannot commit (etcd: ${(err as Error).message}); nothing more was stored`)
      }
      session.answered()
      if (!res.succeeded) {
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

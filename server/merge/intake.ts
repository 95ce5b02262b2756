/**
 * The intake of a merge node: authorized batches (from the PartialsRoute) become state, in groups.
 * Batches that arrive while a commit is under way wait for it, then go together in one commit (one
 * fsync, or one etcd round trip), each answered after it.
 *
 * Invariants ("counts exactly once" rests on the first two):
 * - a batch is acknowledged only after it is committed;
 * - a contribution replaces the stored one only with a higher revision (replays and the same
 *   contribution by two routes change nothing);
 * - a contribution to a window already final is merged in, and the window marked dirty (finalized
 *   again with revision + 1), never dropped;
 * - the changes are worked out on copies and applied in memory only after the commit, so a failed
 *   commit leaves everything as it was (and refuses every batch of its group); with replication the
 *   commit goes to the replicated state first (fenced), then to the local store;
 * - a batch whose definitions conflict is refused whole, and the rest of its group goes on.
 */
import type { Batch, PipelineDef } from '../../core/upstream/batch.ts'
import type { Finalizer } from '../../core/upstream/merge.ts'
import { supersedes } from '../../core/upstream/merge.ts'
import type { SerialQueue } from '../shell/serial-queue.ts'
import { windowId } from './contribution-store.ts'
import type { BatchWrite, MergeWindow } from './contribution-store.ts'
import type { MergeStats, PipelineStats } from './merge-stats.ts'
import type { MergeWindows } from './merge-windows.ts'
import type { Ack } from './partials-route.ts'
import type { PipelineRegistry } from './pipeline-registry.ts'
import type { Replication } from './replication.ts'

/** Most batches committed together. */
const GROUP_MAX = 64

interface Queued {
  batch: Batch
  now: number
  resolve: (ack: Ack) => void
  reject: (err: unknown) => void
}

type Counts = Map<string, Pick<PipelineStats, 'received' | 'ignored' | 'afterFinal'>>

export interface IntakeParts {
  pipelines: PipelineRegistry
  windows: MergeWindows
  /** Told every watermark and every edge heard from, once its batch is committed. */
  finalizer: Finalizer
  stats: MergeStats
  /** Commits and finalization passes run one at a time: with replication they wait for etcd. */
  exclusive: SerialQueue
  replication?: Replication
}

export class Intake {
  readonly #p: IntakeParts
  /** Batches waiting for the commit under way to finish. */
  readonly #queue: Queued[] = []
  #groupQueued = false

  constructor (parts: IntakeParts) {
    this.#p = parts
  }

  /** Applies `batch` durably with the others that wait, and answers for it. */
  async commit (batch: Batch, now: number): Promise<Ack> {
    const ack = new Promise<Ack>((resolve, reject) => { this.#queue.push({ batch, now, resolve, reject }) })
    this.#scheduleGroup()
    return await ack
  }

  #scheduleGroup (): void {
    if (this.#groupQueued) return
    this.#groupQueued = true
    void this.#p.exclusive.run(async () => {
      this.#groupQueued = false
      await this.#applyQueued()
    })
  }

  async #applyQueued (): Promise<void> {
    const { pipelines, windows, finalizer, stats, replication } = this.#p
    const group = this.#queue.splice(0, GROUP_MAX)
    if (this.#queue.length > 0) this.#scheduleGroup()
    const staged = new Map<string, MergeWindow>()
    const defs = new Map<string, PipelineDef>()
    const write: BatchWrite = { pipelines: [], windows: [], contributions: [], watermarks: [], seen: [] }
    const toWrite = new Set<MergeWindow>()
    const taken: Array<{ q: Queued, ack: Ack, counts: Counts }> = []
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
      if (replication !== undefined && (write.windows.length > 0 || write.contributions.length > 0 || write.pipelines.length > 0)) {
        const changed = new Set(write.windows)
        for (const c of write.contributions) changed.add(c.window)
        await replication.commitBatch(write, [...changed])
      }
      windows.store.write(write)
    } catch (err) {
      for (const { q } of taken) q.reject(err)
      return
    }

    pipelines.learn(defs.values())
    for (const w of staged.values()) windows.keep(w)
    for (const { q: { batch, now }, counts } of taken) {
      for (const wm of batch.watermarks) finalizer.observe(wm.pipeline, wm.edge, wm.watermark, now, wm.idle === true)
      if (batch.role === 'edge') finalizer.seen(batch.sender, now)
      for (const [pipeline, c] of counts) {
        const s = stats.of(pipeline)
        s.received += c.received
        s.ignored += c.ignored
        s.afterFinal += c.afterFinal
      }
    }
    for (const { q, ack } of taken) q.resolve(ack)
  }

  /** One batch's changes, on top of what the batches before it in the group staged. */
  #stage (batch: Batch, now: number, staged: Map<string, MergeWindow>, defs: Map<string, PipelineDef>, write: BatchWrite, toWrite: Set<MergeWindow>):
  { ack: Ack, counts: Counts } {
    for (const d of this.#p.pipelines.toLearn(batch, defs)) defs.set(d.name, d)
    const counts: Counts = new Map()
    let applied = 0
    let ignored = 0
    for (const e of batch.windows) {
      if (e.contributions.length === 0) continue
      const id = windowId(e)
      let w = staged.get(id)
      if (w === undefined) {
        const known = this.#p.windows.find(e)
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
}

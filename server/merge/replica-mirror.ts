/**
 * A cluster member's copy of the replicated state (see replication.ts): the changes other nodes
 * committed (and this node's own, seen again, which change nothing) come in here and go into the
 * node's stores, which in a cluster are kept in memory as a mirror of the replicated state.
 *
 * Invariants:
 * - a window record is whole: it replaces what is here, and a final one (not changed since) becomes
 *   a result and leaves the pending windows;
 * - every edge with a contribution to a window is known to the finalizer as feeding its pipeline, so
 *   a node that takes over a shard (or restarts) waits for the edges another node heard from too;
 * - windows leave only when the replicated state removed them (past retention).
 */
import type { Finalizer } from '../../core/upstream/merge.ts'
import type { ResultStore } from '../shell/result-store.ts'
import type { BatchWrite, MergeWindow } from './contribution-store.ts'
import { windowResult } from './merge-windows.ts'
import type { MergeWindows, WindowRef } from './merge-windows.ts'
import type { PipelineRegistry } from './pipeline-registry.ts'
import type { ReplicatedChange } from './replication.ts'

export interface ReplicaMirrorParts {
  pipelines: PipelineRegistry
  windows: MergeWindows
  finalizer: Finalizer
  results: ResultStore
}

export class ReplicaMirror {
  readonly #p: ReplicaMirrorParts
  #stopped = false

  constructor (parts: ReplicaMirrorParts) {
    this.#p = parts
  }

  /** The node's stores are closing: changes arriving from now on are left to the replicated state. */
  stop (): void {
    this.#stopped = true
  }

  /** Changes other nodes committed (and this node's own, seen again). */
  apply (change: ReplicatedChange): void {
    if (this.#stopped) return
    const { pipelines, windows, finalizer, results } = this.#p
    pipelines.learn(change.pipelines)
    const write: BatchWrite = { pipelines: change.pipelines, windows: change.windows, contributions: [], watermarks: [], seen: [] }
    for (const w of change.windows) for (const contribution of w.contributions.values()) write.contributions.push({ window: w, contribution })
    windows.store.write(write)
    const finals: Array<{ window: MergeWindow, revision: number }> = []
    const now = Date.now()
    for (const w of change.windows) {
      // Edges whose partials another coordinator took feed this pipeline: a coordinator that takes over
      // the shard (or restarts) must wait for them too, not only for the edges it has heard from.
      for (const edge of w.contributions.keys()) finalizer.know(w.pipeline, edge, now)
      if (w.finalRevision !== null && !w.dirty) {
        if (pipelines.has(w.pipeline)) results.put(windowResult(pipelines.definition(w.pipeline), w, true, w.finalRevision))
        finals.push({ window: w, revision: w.finalRevision })
        windows.settle(w)
      } else {
        windows.keep(w)
      }
    }
    if (finals.length > 0) {
      results.flush()
      for (const f of finals) windows.store.markFinal([f], f.window.finalAt ?? Date.now())
    }
  }

  /** Windows removed from the replicated state (past retention). */
  remove (refs: readonly WindowRef[]): void {
    if (this.#stopped) return
    for (const w of refs) this.#p.windows.settle(w)
    this.#p.windows.store.remove(refs)
  }

  /** Windows final since before `before` (as the retention prune sees them), at most `limit`. */
  finalBefore (before: number, limit: number): WindowRef[] {
    return this.#p.windows.store.finalBefore(before, limit)
  }

  /** A window as stored here (pending or final), with its contributions. */
  window (ref: WindowRef): MergeWindow | undefined {
    return this.#p.windows.find(ref)
  }
}

/**
 * The merged windows of a merge node: every window in its ContributionStore, and those not final yet
 * (or changed since they were finalized) in memory too, where finalization looks for due ones and
 * queries find the windows still open.
 *
 * Invariants:
 * - a window is in memory exactly while it is pending (not final, or final and dirty); final windows
 *   live only in the store, and a lookup finds a window in either;
 * - a window's result is the merge of all its contributions with its pipeline's definition.
 */
import type { PipelineDef } from '../../core/upstream/batch.ts'
import { mergeContributions } from '../../core/upstream/merge.ts'
import type { WindowResult } from '../shell/results.ts'
import { windowId } from './contribution-store.ts'
import type { ContributionStore, MergeWindow } from './contribution-store.ts'

export type WindowRef = Pick<MergeWindow, 'pipeline' | 'key' | 'start' | 'end'>

export class MergeWindows {
  readonly store: ContributionStore
  readonly #pending = new Map<string, MergeWindow>()

  constructor (store: ContributionStore) {
    this.store = store
    for (const w of store.pendingWindows()) this.#pending.set(windowId(w), w)
  }

  /** A window as stored here (pending or final), with its contributions. */
  find (ref: WindowRef): MergeWindow | undefined {
    return this.#pending.get(windowId(ref)) ?? this.store.window(ref.pipeline, ref.key, ref.start, ref.end)
  }

  /** The pending windows, by id. */
  pending (): IterableIterator<[string, MergeWindow]> {
    return this.#pending.entries()
  }

  /** Keeps `w` in memory if it is pending, as the latest state of its window. */
  keep (w: MergeWindow): void {
    if (w.finalRevision === null || w.dirty) this.#pending.set(windowId(w), w)
  }

  /** The window is final (or gone): only the store has it now. */
  settle (ref: WindowRef): void {
    this.#pending.delete(windowId(ref))
  }

  /** Windows not final yet per pipeline, every pipeline of `pipelines` listed (with 0). */
  openCounts (pipelines: Iterable<string>): Map<string, number> {
    const n = new Map<string, number>([...pipelines].map(p => [p, 0]))
    for (const w of this.#pending.values()) if (w.finalRevision === null) n.set(w.pipeline, (n.get(w.pipeline) ?? 0) + 1)
    return n
  }
}

/** A window's result: the merge of its contributions with its pipeline's definition. */
export function windowResult (def: PipelineDef | undefined, w: MergeWindow, final: boolean, revision: number): WindowResult {
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

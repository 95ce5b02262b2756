/**
 * What a merge node counts per pipeline: contributions taken (by the intake) and windows finalized
 * (by the finalization pass). One table for both, so that each pipeline is listed by every counter
 * from its first contribution on, with 0 where nothing happened yet.
 */
import type { Metrics, Sample } from '../shell/metrics.ts'

export interface PipelineStats {
  received: number
  ignored: number
  afterFinal: number
  finalized: number
  revised: number
}

export class MergeStats {
  readonly #stats = new Map<string, PipelineStats>()

  of (pipeline: string): PipelineStats {
    let s = this.#stats.get(pipeline)
    if (s === undefined) this.#stats.set(pipeline, s = { received: 0, ignored: 0, afterFinal: 0, finalized: 0, revised: 0 })
    return s
  }

  /** Contributions received so far, every pipeline. */
  received (): number {
    return [...this.#stats.values()].reduce((n, s) => n + s.received, 0)
  }

  registerMetrics (m: Metrics): void {
    const perPipeline = (read: (s: PipelineStats) => number) => (): Sample[] => [...this.#stats].map(([pipeline, s]) => [{ pipeline }, read(s)])
    m.counter('fogmesh_partials_received_total', 'Contributions (one edge\'s partial of one window) in accepted batches', ['pipeline'], perPipeline(s => s.received))
    m.counter('fogmesh_partials_ignored_total', 'Contributions already known at this or a higher revision (replays, second routes)', ['pipeline'], perPipeline(s => s.ignored))
    m.counter('fogmesh_partials_after_final_total', 'Contributions that changed a window already final (merged; the window gets revision + 1)', ['pipeline'], perPipeline(s => s.afterFinal))
    m.counter('fogmesh_windows_finalized_total', 'Merged windows finalized (revision 0)', ['pipeline'], perPipeline(s => s.finalized))
    m.counter('fogmesh_windows_revised_total', 'Final windows finalized again with a new revision', ['pipeline'], perPipeline(s => s.revised))
  }
}

/**
 * The finalization pass of a merge node: finds the windows due (every live edge's watermark past
 * their end, or `--finalize-after` after they were first seen, or at once when a fog says they are
 * final, or final windows changed since), makes their results, hands them to the sinks and the
 * final-window listeners (a fog's forwarder), and records them as final.
 *
 * Invariants:
 * - one pass at a time, never beside a commit (they share the node's SerialQueue); a tick that finds a
 *   pass under way skips;
 * - in a cluster, only the owner of a window's shard finalizes it, and only once the replicated state
 *   took the pass (commitFinal);
 * - a window is recorded as final only after its result is durable, is in the sinks' queues and every
 *   listener took it: a crash or a failure in between leaves it pending, and it is finalized again
 *   with the same revision and contributions (which receivers ignore as replays);
 * - in a cluster, where a crash after commitFinal leaves the window final for every member, the
 *   results go to the replicated state with it (with sinks), as handed to the sinks, until they are in
 *   the sinks' queues: the owner of the shard after a restart or a takeover appends them again;
 * - a final window changed since is finalized again with revision + 1, never dropped.
 */
import { HttpError } from '../../core/errors.ts'
import type { WindowEntry } from '../../core/upstream/batch.ts'
import type { Finalizer } from '../../core/upstream/merge.ts'
import type { Logger } from '../shell/log.ts'
import type { Metrics } from '../shell/metrics.ts'
import type { ResultStore } from '../shell/result-store.ts'
import type { WindowResult } from '../shell/results.ts'
import type { SerialQueue } from '../shell/serial-queue.ts'
import type { Sinks } from '../sinks/delivery.ts'
import type { MergeWindow } from './contribution-store.ts'
import type { MergeStats } from './merge-stats.ts'
import { windowResult } from './merge-windows.ts'
import type { MergeWindows } from './merge-windows.ts'
import type { PipelineRegistry } from './pipeline-registry.ts'
import type { Replication } from './replication.ts'

/** Receives the windows finalized in one pass; see Finalization.onFinal. */
export type FinalListener = (entries: readonly WindowEntry[]) => void

export interface FinalizationParts {
  pipelines: PipelineRegistry
  windows: MergeWindows
  finalizer: Finalizer
  results: ResultStore
  stats: MergeStats
  /** Shared with the intake: a pass never runs beside a commit. */
  exclusive: SerialQueue
  log: Logger
  replication?: Replication
  /** The sinks of the config file: they get every final window and every later revision. */
  sinks?: Sinks
  /** Brings what the mesh's gossip knows of the edges into the finalizer before each pass. */
  gossip?: { apply: (now: number) => void }
}

export class Finalization {
  readonly #p: FinalizationParts
  readonly #listeners = new Set<FinalListener>()
  #listenerErrors = 0
  #listenerFailing = false
  #queued = false
  #running = false
  #stopped = false

  constructor (parts: FinalizationParts) {
    this.#p = parts
  }

  /** No pass starts from now on (one under way ends early). */
  stop (): void {
    this.#stopped = true
  }

  /**
   * Calls `listener` with the windows each pass finalizes (revision 0) or finalizes again
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

  /** Right after a batch is answered: a window it completed should not wait for the next tick. */
  soon (): void {
    if (this.#queued) return
    this.#queued = true
    setImmediate(() => {
      this.#queued = false
      this.run()
    })
  }

  /** A pass now, unless one is under way (waiting for etcd); failures are logged, the windows stay pending. */
  run (): void {
    if (this.#stopped || this.#running) return
    this.#running = true
    this.#p.exclusive.run(async () => await this.#finalizeDue(Date.now())).catch((err: unknown) => {
      // A failed write leaves the windows pending; the next tick tries again. A refusal of the
      // replicated state (no quorum, the map moved) is reported where it is seen, not at every tick.
      if (!this.#stopped && !(err instanceof HttpError)) this.#p.log.error('merge.finalize_failed', 'finalization failed; the windows stay pending', { err })
    }).finally(() => { this.#running = false })
  }

  async #finalizeDue (now: number): Promise<void> {
    const { pipelines, windows, finalizer, results, stats, replication } = this.#p
    if (this.#stopped || replication?.finalizing() === false) return
    this.#p.gossip?.apply(now)
    const due: Array<{ window: MergeWindow, revision: number }> = []
    for (const [, w] of windows.pending()) {
      // In a cluster only the owner of a window's shard finalizes it.
      if (replication !== undefined && !replication.owns(w.pipeline, w.key)) continue
      if (w.finalRevision !== null) {
        if (w.dirty) due.push({ window: w, revision: w.finalRevision + 1 })
      } else if (w.upstreamFinal || finalizer.isDue(w.pipeline, w.end, w.firstSeen, now)) {
        due.push({ window: w, revision: 0 })
      }
    }
    // An empty pass is news too: every window left pending waits for an edge (a fog's progress).
    if (due.length === 0) {
      this.#notify(due)
      return
    }
    const finals = due.map(d => windowResult(pipelines.definition(d.window.pipeline), d.window, true, d.revision))
    const handedOff = await replication?.commitFinal(due, now, this.#p.sinks === undefined ? undefined : finals)
    if (this.#stopped) return
    for (const r of finals) results.put(r)
    // Durable before the window is recorded as final: a crash in between finalizes it again, same revision.
    results.flush()
    // In the sinks' queues before the window is recorded as final too (a repeat is harmless: at least once).
    if (!this.#toSinks(finals)) return
    handedOff?.()
    if (!this.#notify(due)) return
    windows.store.markFinal(due, now)
    for (const d of due) {
      windows.settle(d.window)
      const s = stats.of(d.window.pipeline)
      if (d.revision === 0) s.finalized++
      else s.revised++
    }
  }

  #toSinks (results: readonly WindowResult[]): boolean {
    const sinks = this.#p.sinks
    if (sinks === undefined) return true
    try {
      sinks.append(results)
      return true
    } catch (err) {
      return this.#failed(err, 'the sinks\' queues did not take final windows; the windows stay pending and are offered again')
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
      return this.#failed(err, 'a final-window listener failed; the windows stay pending and are offered again')
    }
  }

  /** A pass's windows were not taken: counted, and logged when failures start, not on every tick while they last. */
  #failed (err: unknown, message: string): false {
    this.#listenerErrors++
    if (!this.#listenerFailing) this.#p.log.error('merge.listener_failed', message, { err })
    this.#listenerFailing = true
    return false
  }

  registerMetrics (m: Metrics): void {
    m.counter('fogmesh_final_listener_errors_total', 'Finalization passes a final-window listener (forwarding) failed; their windows are offered again', [], () => [[{}, this.#listenerErrors]])
  }
}

/**
 * Keeps edges' pipelines active between two runs of a scenario: readings at real-time pace, event time
 * going on from `start`, until released.
 *
 * Why: a pipeline with no reading for its `idle` tells the merge tiers so, and they stop waiting for
 * that edge until it reports again (as Flink does with idle sources). A run published as fast as the
 * brokers take it, to edges that are all idle, can then have its windows finalized at the fog with the
 * first edge's partials and revised when another edge says it is active a tick later; readings at
 * real-time pace never race like that. Between a warm-up and the main run a scenario holds its edges
 * active, so that the main run starts from the state of steady operation rather than depending on how
 * long the waits in between took.
 */
import { runSimulator } from './sim.ts'
import type { SimInput } from './options.ts'

export interface Hold {
  /** Stops the readings; rejects if publishing had failed before. */
  release: () => Promise<void>
}

/** Longer than any scenario holds: the hold ends when released. */
const HOLD_FOR = 3_600_000

export function holdActive (input: SimInput): Hold {
  const stop = new AbortController()
  const signal = input.signal === undefined ? stop.signal : AbortSignal.any([input.signal, stop.signal])
  const running = runSimulator({ duration: HOLD_FOR, ...input, speed: 1, pipelines: undefined, signal })
    .then(() => {}, (err: unknown) => { if (!stop.signal.aborted) throw err })
  // Reported by release, if anyone releases; never an unhandled rejection.
  running.catch(() => {})
  return {
    release: async () => {
      stop.abort()
      await running
    }
  }
}

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
 * long the waits in between took. The hold starts right after the warm-up's last reading, and is
 * released only after it has run for `minActive`: a hold released before its first reading (the main
 * run was ready first) would leave edges as idle as no hold at all.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { runSimulator } from './sim.ts'
import type { SimInput } from './options.ts'

export interface Hold {
  /** Stops the readings; rejects if publishing had failed before. */
  release: () => Promise<void>
}

/**
 * Event time published per run of the simulator: the hold goes on chunk after chunk (each with the
 * next seed) until released, so no run needs to know how long the hold will last.
 */
const CHUNK = 10_000

export interface HoldOptions {
  /**
   * Release waits until the hold has published for at least this long, ms: edges that went idle
   * before it started must have had a reading and said they are active again. The default suits
   * pipelines idle after 1 s at edges that tick every 250 ms, as in the test and chaos scenarios.
   */
  minActive?: number
}

const MIN_ACTIVE = 2_000

export function holdActive (input: SimInput, options: HoldOptions = {}): Hold {
  const startedAt = Date.now()
  const stop = new AbortController()
  const signal = input.signal === undefined ? stop.signal : AbortSignal.any([input.signal, stop.signal])
  const running = (async () => {
    let start = input.start ?? Date.now()
    for (let i = 0; !signal.aborted; i++) {
      await runSimulator({ ...input, start, duration: CHUNK, seed: (input.seed ?? 1) + i, speed: 1, pipelines: undefined, collect: false, signal })
      start += CHUNK
    }
  })().catch((err: unknown) => { if (!stop.signal.aborted) throw err })
  // Reported by release, if anyone releases; never an unhandled rejection.
  running.catch(() => {})
  return {
    release: async () => {
      const wait = startedAt + (options.minActive ?? MIN_ACTIVE) - Date.now()
      if (wait > 0) await sleep(wait, undefined, { signal: input.signal })
      stop.abort()
      await running
    }
  }
}

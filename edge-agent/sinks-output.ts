/**
 * The config file's `sinks:` as an edge output: every closed window (late revisions too) goes into the
 * queue of each sink that takes its pipeline (server/sinks/delivery.ts delivers them). Offered windows
 * are durable at the commit, which comes before the outbox's and the store's.
 */
import { Sinks } from '../server/sinks/delivery.ts'
import type { EdgeOutput, OutputDefinition } from './output.ts'

export const sinksOutput: OutputDefinition<EdgeOutput & { sinks: Sinks }> = {
  kind: 'sinks',
  create (parts) {
    const configs = parts.options.sinks
    if (configs === undefined || configs.length === 0) return undefined
    const sinks = new Sinks(configs, { dataDir: parts.options.dataDir, log: parts.log, metrics: parts.metrics, security: parts.security })
    return {
      sinks,
      window: (_operator, _w, result) => { sinks.offer(result) },
      commit: () => { sinks.flush() },
      start: () => { sinks.start() },
      stop: async () => { await sinks.stop() }
    }
  }
}

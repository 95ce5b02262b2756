/**
 * Upstream delivery (`emit: upstream`, the default) as an edge output: the uplink (uplink.ts) queues
 * each closed window's contribution in the outbox at the commit, and ships the outbox to the fogs (the
 * cloud on failover). Made when the edge has somewhere to send to (--fog, --cloud, or fogs to find in
 * the mesh); without, nothing is queued for upstream.
 *
 * The shipper appends on its own too, before each batch: the uplink's afterAppend is the output's
 * `committed`, so the other outputs and the store commit in the same event-loop turn.
 */
import type { EdgeOutput, OutputDefinition } from './output.ts'
import { Uplink } from './uplink.ts'

export const upstreamOutput: OutputDefinition<EdgeOutput & { uplink: Uplink }> = {
  kind: 'upstream',
  create (parts) {
    const o = parts.options
    if (o.fog.length === 0 && o.cloud === undefined && !parts.discoverFog) return undefined
    const uplink = new Uplink({
      edge: o.id,
      dataDir: o.dataDir,
      fog: o.fog,
      cloud: o.cloud,
      discoverFog: parts.discoverFog,
      failoverAfter: o.failoverAfter,
      outboxMax: o.outboxMax,
      requestTimeout: o.uplinkTimeout,
      retryMax: o.uplinkRetryMax,
      log: parts.log,
      client: parts.security.client,
      afterAppend: parts.committed
    }, parts.operators.values())
    uplink.registerMetrics(parts.metrics)
    return {
      uplink,
      window: (operator, w) => { uplink.onWindow(operator, w) },
      commit: () => { uplink.flush() },
      start: () => { uplink.start() },
      stop: async () => { await uplink.stop() },
      addPipeline: operator => { uplink.addPipeline(operator) }
    }
  }
}

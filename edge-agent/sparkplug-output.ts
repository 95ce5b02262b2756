/**
 * `emit: sparkplug` as an edge output: one Sparkplug Edge Node (sparkplug-node.ts) per group/node that
 * some pipeline names, on the broker the readings come from.
 *
 * Invariants:
 * - nodes are made once the broker is up, for every running pipeline (so hosts see them as soon as the
 *   edge is up), and for a pipeline deployed later at its first window;
 * - windows emitted before the broker is up (a checkpoint restore) are not published;
 * - the nodes' NDEATH goes out before the broker stops (an embedded broker would take the will with it);
 * - at the embedded broker the nodes log in with its internal login, so that they get in whatever users
 *   it has and only to their own topics; at --mqtt-url with the URL's credentials, as the edge does;
 * - while a node's broker is unreachable it queues closed windows (bounded by --sparkplug-max-queued);
 *   those dropped for the bound are counted in fogmesh_sparkplug_dropped_total.
 */
import type { WindowOperator } from '../core/windows/operator.ts'
import type { WindowState } from '../core/windows/window.ts'
import type { Sample } from '../server/shell/metrics.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { EmbeddedBroker } from './broker.ts'
import type { EdgeOutput, OutputDefinition, OutputParts } from './output.ts'
import { SparkplugNode } from './sparkplug-node.ts'

export class SparkplugOutput implements EdgeOutput {
  readonly #parts: OutputParts
  /** By group/node. */
  readonly #nodes = new Map<string, SparkplugNode>()
  #up = false

  constructor (parts: OutputParts) {
    this.#parts = parts
    parts.metrics.counter('fogmesh_sparkplug_dropped_total', 'Closed windows an emit: sparkplug node dropped, oldest first, while its broker was unreachable and its queue full',
      ['group', 'node', 'device'], () => [...this.#nodes.values()].flatMap(n => [...n.dropped].map(([device, v]): Sample => [{ group: n.group, node: n.node, device }, v])))
  }

  window (operator: WindowOperator, _w: WindowState, result: WindowResult): void {
    for (const node of this.#nodesOf(operator)) node.publish(result)
  }

  sourceUp (): void {
    this.#up = true
    for (const o of this.#parts.operators.values()) this.#nodesOf(o)
  }

  async sourceDown (): Promise<void> {
    await Promise.all([...this.#nodes.values()].map(n => n.stop()))
  }

  /** The nodes a pipeline emits to, started on first use. */
  #nodesOf (operator: WindowOperator): SparkplugNode[] {
    const out: SparkplugNode[] = []
    if (!this.#up) return out
    const p = this.#parts
    for (const e of operator.pipeline.emits) {
      if (e.kind !== 'sparkplug' || e.group === undefined || e.node === undefined) continue
      const id = `${e.group}/${e.node}`
      let node = this.#nodes.get(id)
      if (node === undefined) {
        const login = p.source instanceof EmbeddedBroker ? p.source.internalLogin : {}
        node = new SparkplugNode({ maxQueued: p.options.sparkplugMaxQueued, ...login, url: p.source.url, group: e.group, node: e.node, dataDir: p.options.dataDir, log: p.log, tls: p.security.clientTls })
        this.#nodes.set(id, node)
        node.start()
      }
      out.push(node)
    }
    return out
  }
}

export const sparkplugOutput: OutputDefinition<SparkplugOutput> = {
  kind: 'sparkplug',
  create: parts => new SparkplugOutput(parts)
}

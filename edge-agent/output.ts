/**
 * What a destination of the edge's closed windows is (the config file's sinks, `emit: mqtt`,
 * `emit: sparkplug`, upstream delivery), and what it is made from. The kinds are listed in outputs.ts;
 * adding one is one file exporting an OutputDefinition, listed there.
 *
 * Invariants every output keeps:
 * - `window` never blocks and never throws: it buffers (made durable at `commit`) or sends without
 *   waiting, counting its own failures;
 * - `commit` makes durable what `window` took since the last one; the agent calls it in the registry's
 *   order and commits its result store after every output (see EdgeAgent's #commit for why);
 * - an output that makes windows durable on its own (the shipper appending before a batch) calls its
 *   `committed` part right after, in the same event-loop turn, so that the other outputs and the store
 *   follow at once;
 * - what is queued and not delivered at `stop` stays queued for the next start.
 */
import type { WindowOperator } from '../core/windows/operator.ts'
import type { WindowState } from '../core/windows/window.ts'
import type { Logger } from '../server/shell/log.ts'
import type { Metrics } from '../server/shell/metrics.ts'
import type { WindowResult } from '../server/shell/results.ts'
import type { NodeSecurity } from '../server/shell/security.ts'
import type { EdgeOptions } from './config.ts'
import type { MessageSource } from './source.ts'

/** The keys of the registry: the pipeline's `emit:` kinds, and `sinks` (the config file's). */
export type OutputKind = 'sinks' | 'mqtt' | 'sparkplug' | 'upstream'

export interface EdgeOutput {
  /** A closed window of `operator` (late revisions too), with its result as the store has it. */
  window: (operator: WindowOperator, w: WindowState, result: WindowResult) => void
  /** Makes the windows taken since the last commit durable. Outputs that queue nothing have none. */
  commit?: () => void
  /** Before the first reading, after the checkpoint was restored. */
  start?: () => void
  /** The broker the readings come from is up: outputs that publish on it may connect. */
  sourceUp?: () => void
  /** Before the broker the readings come from stops: the last messages on it. */
  sourceDown?: () => Promise<void>
  /** After the last commit. */
  stop?: () => Promise<void>
  /** A pipeline started, or runs a new version. */
  addPipeline?: (operator: WindowOperator) => void
}

/** What outputs are made from (passed in; nothing is assigned later). */
export interface OutputParts {
  options: EdgeOptions
  /** Without --fog, with the mesh on: the fogs are found in the mesh view. */
  discoverFog: boolean
  log: Logger
  /** Each output registers its own metrics here. */
  metrics: Metrics
  /** The site's trust (--tls-ca) and this edge's certificate, for every connection out. */
  security: Pick<NodeSecurity, 'client' | 'clientTls'>
  /** The broker the readings come from; `emit: mqtt` and `emit: sparkplug` publish on it. */
  source: MessageSource
  /** The running pipelines, by name (live: deployments change it). */
  operators: ReadonlyMap<string, WindowOperator>
  /** For an output that commits on its own: the other outputs and the store commit now. */
  committed: () => void
}

/** An output kind. `create` returns undefined when the node's options ask for none of it. */
export interface OutputDefinition<O extends EdgeOutput = EdgeOutput> {
  kind: OutputKind
  create: (parts: OutputParts) => O | undefined
}

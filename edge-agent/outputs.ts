/**
 * The registry of the edge's outputs, keyed as the pipeline's `emit:` kinds and the config file's
 * `sinks:`, and the outputs one agent runs, built from it.
 *
 * Invariants:
 * - the list is in commit order: the sinks' queues, then the outbox (upstream); outputs that queue
 *   nothing (mqtt, sparkplug) have no commit. The agent commits its result store after all of them,
 *   so a window in the store is in every queue (see EdgeAgent's #commit);
 * - windows go to the outputs in list order, outputs start in list order and stop in the reverse;
 * - each kind is listed once, and every `emit:` kind has an output.
 */
import type { WindowOperator } from '../core/windows/operator.ts'
import type { WindowState } from '../core/windows/window.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { mqttOutput } from './actions.ts'
import type { EdgeOutput, OutputDefinition, OutputKind, OutputParts } from './output.ts'
import { sinksOutput } from './sinks-output.ts'
import { sparkplugOutput } from './sparkplug-output.ts'
import { upstreamOutput } from './upstream-output.ts'

// Each definition makes its own output type; the registry only needs what every output is.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const LIST: ReadonlyArray<OutputDefinition<any>> = [sinksOutput, mqttOutput, sparkplugOutput, upstreamOutput]

const KINDS: Record<OutputKind, true> = { sinks: true, mqtt: true, sparkplug: true, upstream: true }

export const OUTPUTS: ReadonlyMap<OutputKind, OutputDefinition> = new Map(LIST.map(d => [d.kind, d]))

if (OUTPUTS.size !== LIST.length) throw new Error('two edge outputs have the same kind')
for (const kind of Object.keys(KINDS)) if (!OUTPUTS.has(kind as OutputKind)) throw new Error(`no edge output for ${kind}`)

/** The outputs of one agent, in the registry's order. */
export class EdgeOutputs {
  readonly #list: EdgeOutput[] = []
  readonly #byDefinition = new Map<OutputDefinition, EdgeOutput>()

  /** `committed` is told which output committed on its own: the others and the store follow. */
  constructor (parts: Omit<OutputParts, 'committed'> & { committed: (by: EdgeOutput) => void }, definitions: ReadonlyArray<OutputDefinition<EdgeOutput>> = [...OUTPUTS.values()]) {
    for (const def of definitions) {
      // Called only once the output runs, so `made` is set by then.
      const made: EdgeOutput | undefined = def.create({ ...parts, committed: () => { if (made !== undefined) parts.committed(made) } })
      if (made === undefined) continue
      this.#list.push(made)
      this.#byDefinition.set(def, made)
    }
  }

  /** The output a definition made, typed as it made it; undefined when the options asked for none. */
  get<O extends EdgeOutput> (def: OutputDefinition<O>): O | undefined {
    return this.#byDefinition.get(def as OutputDefinition) as O | undefined
  }

  window (operator: WindowOperator, w: WindowState, result: WindowResult): void {
    for (const o of this.#list) o.window(operator, w, result)
  }

  /** Commits every output (but `except`), in order. */
  commit (except?: EdgeOutput): void {
    for (const o of this.#list) if (o !== except) o.commit?.()
  }

  start (): void {
    for (const o of this.#list) o.start?.()
  }

  sourceUp (): void {
    for (const o of this.#list) o.sourceUp?.()
  }

  async sourceDown (): Promise<void> {
    await Promise.all(this.#list.map(async o => await o.sourceDown?.()))
  }

  async stop (): Promise<void> {
    for (const o of [...this.#list].reverse()) await o.stop?.()
  }

  addPipeline (operator: WindowOperator): void {
    for (const o of this.#list) o.addPipeline?.(operator)
  }
}

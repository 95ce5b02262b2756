/**
 * Local actions at the edge (`emit: - mqtt: alerts/{room}` with an optional `when`): publish a closed
 * window's result to the local broker, without a round trip to the fog. The `mqtt` edge output.
 * Nothing is queued: a publish that fails is counted, not retried.
 */
import type { Vars } from '../core/expr.ts'
import type { CompiledEmit, CompiledPipeline } from '../core/pipeline/compile.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { resultJson } from '../server/shell/results.ts'
import type { EdgeOutput, OutputDefinition } from './output.ts'

export type Publish = (topic: string, payload: Buffer, qos: 0 | 1 | 2, retain: boolean) => Promise<void>

/** What `when` conditions and topic templates can name: result fields, key parts, and the window. */
export function resultVars (pipeline: CompiledPipeline, r: WindowResult): Vars {
  const vars: Vars = { ...r.values, key: r.key, pipeline: r.pipeline, start: r.start, end: r.end, revision: r.revision }
  const names = pipeline.keyNames
  const parts = names.length === 1 ? [r.key] : r.key.split('/')
  if (parts.length === names.length) names.forEach((name, i) => { if (name !== undefined) vars[name] = parts[i] })
  return vars
}

export function renderTopic (template: string, vars: Vars): string {
  return template.replace(/\{([^}]*)\}/g, (_, name: string) => String(vars[name] ?? ''))
}

export class LocalActions {
  readonly #publish: Publish
  readonly stats = { published: 0, failed: 0 }

  constructor (publish: Publish) {
    this.#publish = publish
  }

  /** Runs the mqtt emits of a pipeline for one result; errors are counted, never thrown. */
  run (pipeline: CompiledPipeline, result: WindowResult): void {
    let vars: Vars | undefined
    for (const emit of pipeline.emits) {
      if (emit.kind !== 'mqtt') continue
      vars ??= resultVars(pipeline, result)
      this.#one(emit, vars, result)
    }
  }

  #one (emit: CompiledEmit, vars: Vars, result: WindowResult): void {
    try {
      if (emit.when !== undefined && emit.when.evaluate(vars) !== true) return
    } catch {
      // a condition over a null value (e.g. max of nothing) is simply not met
      return
    }
    const payload = Buffer.from(JSON.stringify({ pipeline: result.pipeline, ...resultJson(result) }))
    this.#publish(renderTopic(emit.topic ?? '', vars), payload, emit.qos, emit.retain).then(
      () => { this.stats.published++ },
      () => { this.stats.failed++ }
    )
  }
}

/** `emit: mqtt` of every pipeline, on the broker the readings come from. */
export const mqttOutput: OutputDefinition<EdgeOutput & { actions: LocalActions }> = {
  kind: 'mqtt',
  create (parts) {
    const source = parts.source
    const actions = new LocalActions(async (topic, payload, qos, retain) => await source.publish(topic, payload, qos, retain))
    parts.metrics.counter('fogmesh_actions_published_total', 'Local actions (emit: mqtt) published', [], () => [[{}, actions.stats.published]])
    parts.metrics.counter('fogmesh_actions_failed_total', 'Local actions that failed to publish', [], () => [[{}, actions.stats.failed]])
    return {
      actions,
      window: (operator, _w, result) => { actions.run(operator.pipeline, result) }
    }
  }
}

/** Renders a PipelineSpec back into the shape of the YAML language (durations as text). */
import { formatDuration } from '../duration.ts'
import { PIPELINE_DEFAULTS } from './spec.ts'
import type { PipelineSpec } from './spec.ts'

export function pipelineToPlain (spec: PipelineSpec): Record<string, unknown> {
  const w = spec.window
  const window = w.kind === 'tumbling'
    ? { tumbling: formatDuration(w.size) }
    : w.kind === 'hopping'
      ? { hopping: formatDuration(w.size), every: formatDuration(w.every) }
      : w.kind === 'session' ? { session: formatDuration(w.gap) } : { count: w.count }
  const plain: Record<string, unknown> = { name: spec.name, from: spec.from, format: spec.format }
  if (spec.timestamp !== undefined) plain.timestamp = spec.timestamp
  if (spec.where !== undefined) plain.where = spec.where
  if (spec.key.length > 0) plain.key = spec.key.length === 1 ? spec.key[0] : spec.key
  plain.window = window
  plain.lateness = formatDuration(spec.lateness)
  plain.idle = formatDuration(spec.idle)
  // Only when set: definitions from before the option existed keep the same rendering (and identity).
  if (spec.maxFuture !== PIPELINE_DEFAULTS.maxFuture) plain['max-future'] = formatDuration(spec.maxFuture)
  plain.late = spec.late
  if (spec.late === 'update') plain['late-horizon'] = formatDuration(spec.lateHorizon)
  plain.select = Object.fromEntries(spec.select.map(s => [s.name, `${s.fn}(${[s.arg, ...s.params.map(String)].filter(a => a !== undefined).join(', ')})`]))
  plain.emit = spec.emit.map(e => e.kind === 'upstream'
    ? 'upstream'
    : e.kind === 'sparkplug'
      ? { sparkplug: { group: e.group, node: e.node } }
      : { mqtt: e.topic, ...(e.when === undefined ? {} : { when: e.when }), ...(e.qos === 0 ? {} : { qos: e.qos }), ...(e.retain ? { retain: true } : {}) })
  plain.version = spec.version
  return plain
}

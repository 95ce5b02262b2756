/** The part of a pipeline that merging its partials depends on, as batches carry it. */
import type { PipelineSpec } from '../pipeline/spec.ts'
import type { PipelineDef } from './batch.ts'

export function pipelineDef (spec: PipelineSpec): PipelineDef {
  return {
    name: spec.name,
    version: spec.version,
    window: spec.window.kind,
    selects: spec.select.map(s => ({ name: s.name, fn: s.fn, params: [...s.params] }))
  }
}

/** PipelineSpec objects for tests that want a pipeline without going through YAML. */
import { PIPELINE_DEFAULTS } from '../../core/pipeline/spec.ts'
import type { PipelineSpec, SelectSpec } from '../../core/pipeline/spec.ts'

export function countSelect (): SelectSpec {
  return { name: 'n', fn: 'count', params: [] }
}

export function select (fn: string, arg: string, params: number[] = [], name = fn): SelectSpec {
  return { name, fn, arg, params }
}

/** A tumbling 10 s pipeline over sensors/+room/temperature with count and sum(value), changed by `over`. */
export function pipelineSpec (over: Partial<PipelineSpec> = {}): PipelineSpec {
  return {
    ...PIPELINE_DEFAULTS,
    name: 'p',
    from: 'sensors/+room/temperature',
    timestamp: 'ts',
    key: [],
    window: { kind: 'tumbling', size: 10_000 },
    select: [countSelect(), select('sum', 'value')],
    emit: [{ kind: 'upstream' }],
    ...over
  }
}

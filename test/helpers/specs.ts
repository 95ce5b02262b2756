/**
 * Pipelines for tests that want one without going through YAML: PipelineSpec objects, and the
 * count-and-sum definition of upstream batches with its partials.
 */
import { getAggregate } from '../../core/aggregates/index.ts'
import { PIPELINE_DEFAULTS } from '../../core/pipeline/spec.ts'
import type { PipelineSpec, SelectSpec } from '../../core/pipeline/spec.ts'
import type { Contribution, PipelineDef } from '../../core/upstream/batch.ts'

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

/** A tumbling 10 s pipeline "temp" with n: count() and total: sum(), as batches define it. */
export const COUNT_SUM_DEF: PipelineDef = {
  name: 'temp',
  version: 1,
  window: 'tumbling',
  selects: [{ name: 'n', fn: 'count', params: [] }, { name: 'total', fn: 'sum', params: [] }]
}

/** One edge's partial of a COUNT_SUM_DEF window holding `values` (all at event time `ts`). */
export function countSumContribution (edge: string, values: number[], ts: number, revision = 0): Contribution {
  const count = getAggregate('count')!
  const sum = getAggregate('sum')!
  let n = count.create([])
  let s = sum.create([])
  for (const v of values) {
    n = count.add(n, undefined, ts)
    s = sum.add(s, v, ts)
  }
  return { edge, revision, states: [count.encode(n), sum.encode(s)] }
}

/**
 * The validated, normalized form of one pipeline from a pipelines file. `parse.ts` builds it from YAML;
 * `compile.ts` turns it into the runnable form. Durations are milliseconds, expressions are CEL source.
 */
import type { PayloadFormat } from '../formats/index.ts'

export type { PayloadFormat } from '../formats/index.ts'

export type WindowSpec =
  | { kind: 'tumbling', size: number }
  | { kind: 'hopping', size: number, every: number }
  | { kind: 'session', gap: number }
  | { kind: 'count', count: number }

export type LatePolicy = 'drop' | 'update'

export interface SelectSpec {
  /** Result field name. */
  name: string
  /** Aggregate function name: count, sum, min, max, avg, stddev, percentile, distinct, first, last. */
  fn: string
  /** CEL source of the input expression; undefined for count(). */
  arg?: string
  /** Constant numeric parameters after the input, e.g. [0.95] for percentile(value, 0.95). */
  params: number[]
}

export type EmitSpec =
  | { kind: 'upstream' }
  | {
    kind: 'mqtt'
    /** Topic template; `{field}` is replaced by a result field, the key or a key part. */
    topic: string
    /** CEL condition on the result fields; the result is published only when it holds. */
    when?: string
    qos: 0 | 1 | 2
    retain: boolean
  }
  | {
    /**
     * Publish closed windows as a Sparkplug B Edge Node `node` of group `group` (device = pipeline name),
     * on the broker the edge reads from.
     */
    kind: 'sparkplug'
    group: string
    node: string
  }

export interface PipelineSpec {
  name: string
  /** MQTT topic filter with named wildcards (`sensors/+room/temperature`). */
  from: string
  format: PayloadFormat
  /** CEL source giving the event time (ms or s epoch number, or ISO-8601); undefined = arrival time. */
  timestamp?: string
  where?: string
  /** Group-by expressions; their values are joined with "/". Empty = the single key "*". */
  key: string[]
  window: WindowSpec
  /** Watermark delay, ms. */
  lateness: number
  /**
   * After this long without a reading (ms, processing time), the watermark advances with the wall
   * clock: latest event time + time since that reading arrived − lateness.
   */
  idle: number
  /**
   * Clock guard, ms: a reading whose event time is further ahead of the node's clock than this is
   * rejected (`future_timestamp`) and never moves the watermark.
   */
  maxFuture: number
  late: LatePolicy
  /**
   * With `late: update`, how long after a window closed it can still be updated, ms; later readings are
   * dropped as late. Bounds the memory that closed windows hold.
   */
  lateHorizon: number
  select: SelectSpec[]
  emit: EmitSpec[]
  /** Increases with each deployment; 1 for a pipeline read from a local file. */
  version: number
}

/** The defaults pipelines get for fields they leave out. */
export const PIPELINE_DEFAULTS = {
  format: 'json' as PayloadFormat,
  lateness: 0,
  idle: 5_000,
  maxFuture: 300_000,
  late: 'drop' as LatePolicy,
  lateHorizon: 300_000,
  version: 1
}

/** What a pipeline may be named. */
export const PIPELINE_NAME = /^[a-z0-9-]+$/

/** The key of a pipeline without `key:`. */
export const SINGLE_KEY = '*'

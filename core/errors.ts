/**
 * Typed errors. Every error fogmesh raises on purpose carries a stable snake_case `code` that callers
 * (and the HTTP API, which returns it as `error.code`) can branch on; messages are for people.
 */
export class FogmeshError extends Error {
  readonly code: string

  constructor (code: string, message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
    this.code = code
  }
}

/** A configuration file, flag or option value is wrong. */
export class ConfigError extends FogmeshError {
  constructor (message: string, options?: ErrorOptions) {
    super('config_invalid', message, options)
  }
}

/** One problem in a pipelines file, located at a 1-based line and column. */
export interface PipelineProblem {
  line: number
  col: number
  message: string
}

/** A pipelines file (or a single deployed pipeline) is invalid; `problems` lists every mistake found. */
export class PipelineError extends FogmeshError {
  readonly problems: PipelineProblem[]
  readonly file: string

  constructor (file: string, problems: PipelineProblem[]) {
    super('pipeline_invalid', problems.map(p => `${file}:${p.line}:${p.col}: ${p.message}`).join('\n'))
    this.file = file
    this.problems = problems
  }
}

/**
 * Why a reading was rejected. These are the `reason` label values of
 * `fogmesh_readings_rejected_total`, so they are part of the public contract.
 */
export type RejectReason =
  | 'too_large' // payload over the configured size limit
  | 'parse' // payload cannot be decoded in the pipeline's format
  | 'missing_field' // an expression needs a field the reading lacks
  | 'non_finite' // a number is NaN or infinite
  | 'bad_timestamp' // the event time is missing, unparseable or out of range
  | 'future_timestamp' // the event time is further ahead of the node's clock than `max-future`
  | 'type' // a value has the wrong type (e.g. sum() of a string, a non-boolean where)
  | 'expression' // any other error while evaluating an expression
  | 'sparkplug_topic' // a `format: sparkplug` message on a topic outside the Sparkplug B namespace
  | 'sparkplug_alias' // a Sparkplug DATA metric with an alias its node's or device's last BIRTH did not declare
  | 'sparkplug_no_birth' // Sparkplug DATA from a node or device whose BIRTH was not seen

/** Thrown inside the per-reading path; the pipeline catches it and counts it by `reason`. */
export class ReadingRejected extends FogmeshError {
  readonly reason: RejectReason

  constructor (reason: RejectReason, message: string) {
    super('reading_rejected', message)
    this.reason = reason
  }
}

/** Malformed bytes on the wire (CBOR partials, encoded aggregate state). */
export class WireError extends FogmeshError {
  constructor (message: string, options?: ErrorOptions, code = 'wire_malformed') {
    super(code, message, options)
  }
}

/**
 * Which decoding bound a body broke: the `limit` label of `fogmesh_batches_limited_total`, so part of
 * the public contract.
 */
export type WireLimit =
  | 'inflated' // a compressed body inflates beyond the limit
  | 'depth' // arrays and maps nested too deep
  | 'items' // too many data items in all
  | 'containers' // too many arrays and maps in all
  | 'string' // one string longer than the limit
  | 'length' // a length announces more than the body holds

/**
 * A body over a bound that keeps decoding memory proportional to what is sane for a batch; found
 * before anything is allocated for it. A WireError, so every receiver refuses it as malformed.
 */
export class WireLimitError extends WireError {
  readonly limit: WireLimit

  constructor (limit: WireLimit, message: string) {
    super(message, undefined, 'wire_limit')
    this.limit = limit
  }
}

/**
 * An HTTP request is wrong or cannot be served; `status` is the response status. `details` go into the
 * error object beside `code` and `message` (e.g. the current shard map with a 421 wrong_shard).
 */
export class HttpError extends FogmeshError {
  readonly status: number
  readonly details: Record<string, unknown> | undefined

  constructor (status: number, code: string, message: string, options?: ErrorOptions & { details?: Record<string, unknown> }) {
    super(code, message, options)
    this.status = status
    this.details = options?.details
  }
}

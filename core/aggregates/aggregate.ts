/**
 * The one interface every aggregate function implements. Aggregates are mergeable: an edge adds readings
 * to a state, ships the encoded state upstream, and the fog and cloud merge states from many edges.
 * For every split of a set of readings into parts, merging the parts' states must give the same result
 * as adding all readings to one state (exactly for count/sum/min/max/first/last, within the documented
 * error for percentile and distinct; avg/stddev up to floating-point rounding).
 *
 * Adding an aggregate is one file in this folder plus one line in `index.ts`.
 */
export interface AggregateFunction<S> {
  /** The name used in pipelines: `p95: percentile(value, 0.95)`. */
  readonly name: string
  /**
   * What the first argument must be: `none` (count()), `number` (sum(value)), `scalar` (a number or a
   * string: first, last, distinct).
   */
  readonly input: 'none' | 'number' | 'scalar'
  /** How many constant numeric parameters follow the input: percentile(value, 0.95) has one. */
  readonly params: number
  /** Checks the constant parameters; returns a message when they are wrong. */
  checkParams?: (params: readonly number[]) => string | undefined
  /** A new, empty state. */
  create: (params: readonly number[]) => S
  /**
   * Adds one reading. `value` is already checked against `input` (a finite number for `number`,
   * a finite number or a string for `scalar`, undefined for `none`); `eventTime` is epoch ms.
   * May mutate and return `state`.
   */
  add: (state: S, value: unknown, eventTime: number) => S
  /** Merges `other` into `state` (which may be mutated and returned); `other` is left untouched. */
  merge: (state: S, other: S) => S
  /** The result value shown to users. */
  result: (state: S) => number | string | null
  /** A CBOR-friendly plain value (numbers, strings, arrays, Uint8Array) that `decode` reverses. */
  encode: (state: S) => unknown
  /** Rebuilds a state from `encode`'s output; throws WireError on anything malformed. */
  decode: (data: unknown, params: readonly number[]) => S
}

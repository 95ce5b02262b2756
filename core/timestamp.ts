import { ReadingRejected } from './errors.ts'

/**
 * Numbers below this are epoch seconds, above it epoch milliseconds: 1e11 s is the year 5138 while
 * 1e11 ms is 1973, so no plausible sensor clock is ambiguous.
 */
const SECONDS_BELOW = 1e11
/** Event times must fall in 1970..2200; anything else is a broken clock or a wrong unit. */
const MAX_MS = 7_258_118_400_000
const ISO_8601 = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$/

/**
 * Normalizes an event time to integer epoch milliseconds: a number of seconds (fractions kept to the ms)
 * or milliseconds, a numeric string, an ISO-8601 string, or a Date. Rejects anything else as
 * `bad_timestamp` (`non_finite` for NaN and infinities).
 */
export function toEventTime (value: unknown): number {
  let ms: number
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new ReadingRejected('non_finite', `timestamp is ${value}`)
    ms = Math.abs(value) < SECONDS_BELOW ? value * 1000 : value
  } else if (typeof value === 'string') {
    const trimmed = value.trim()
    if (trimmed !== '' && !Number.isNaN(Number(trimmed))) return toEventTime(Number(trimmed))
    if (!ISO_8601.test(trimmed)) throw new ReadingRejected('bad_timestamp', `timestamp "${value.slice(0, 40)}" is not an epoch number or ISO-8601`)
    ms = Date.parse(trimmed)
  } else if (value instanceof Date) {
    ms = value.getTime()
  } else if (typeof value === 'bigint') {
    return toEventTime(Number(value))
  } else {
    throw new ReadingRejected('bad_timestamp', `timestamp must be a number or a string, not ${value === null ? 'null' : typeof value}`)
  }
  if (!(ms >= 0 && ms <= MAX_MS)) throw new ReadingRejected('bad_timestamp', `timestamp ${String(value).slice(0, 40)} is outside 1970..2200`)
  return Math.round(ms)
}

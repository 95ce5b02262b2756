import { ConfigError } from './errors.ts'

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/

/**
 * Parses a duration such as `500ms`, `10s`, `5m`, `1.5h` or `1d` into milliseconds.
 * A bare number is taken as milliseconds, as YAML authors often write `lateness: 0`.
 */
export function parseDuration (text: string | number): number {
  if (typeof text === 'number') {
    if (!Number.isFinite(text) || text < 0) throw new ConfigError(`invalid duration ${text}: expected a non-negative number of milliseconds`)
    return text
  }
  // A bare 0 needs no unit: `--checkpoint-every 0` turns something off. Other bare numbers are refused,
  // since a unit left out of `--idle 10` is more likely seconds than milliseconds.
  if (text.trim() === '0') return 0
  const m = DURATION.exec(text.trim())
  if (m == null) throw new ConfigError(`invalid duration "${text}": expected a number and a unit (ms, s, m, h, d), like 500ms or 10s`)
  return Math.round(Number(m[1]) * UNITS[m[2]])
}

/** The shortest exact rendering of a duration in milliseconds: 10000 -> "10s". */
export function formatDuration (ms: number): string {
  for (const unit of ['d', 'h', 'm', 's']) {
    const size = UNITS[unit]
    if (ms !== 0 && ms % size === 0) return `${ms / size}${unit}`
  }
  return `${ms}ms`
}

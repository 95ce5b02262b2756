/**
 * Validation helpers for `decode()`. Encoded states arrive over the network, so every field is checked
 * and anything unexpected becomes a WireError naming the aggregate, never a TypeError or a NaN later on.
 */
import { WireError } from '../errors.ts'

export function wireError (aggregate: string, message: string): WireError {
  return new WireError(`invalid ${aggregate} state: ${message}`)
}

/** A short description of an unexpected value for error messages, without dumping large payloads. */
export function describe (value: unknown): string {
  if (value === null) return 'null'
  if (value === undefined) return 'undefined'
  if (Array.isArray(value)) return `an array of length ${value.length}`
  if (value instanceof Uint8Array) return `${value.length} bytes`
  switch (typeof value) {
    case 'number': return Number.isFinite(value) ? `the number ${value}` : String(value)
    case 'string': return value.length > 40 ? `a string of length ${value.length}` : JSON.stringify(value)
    case 'bigint': return `the integer ${value > 1000000000000000000000n ? 'above 1e21' : String(value)}`
    default: return `a value of type ${typeof value}`
  }
}

export function finiteNumber (aggregate: string, what: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw wireError(aggregate, `${what} must be a finite number, got ${describe(value)}`)
  }
  return value
}

/** A count of readings: a non-negative integer small enough to add exactly. */
export function countNumber (aggregate: string, what: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw wireError(aggregate, `${what} must be a non-negative integer, got ${describe(value)}`)
  }
  return value
}

export function array (aggregate: string, value: unknown, minLength: number, maxLength: number, shape: string): unknown[] {
  if (!Array.isArray(value) || value.length < minLength || value.length > maxLength) {
    throw wireError(aggregate, `expected ${shape}, got ${describe(value)}`)
  }
  return value
}

/** A reading value of a `scalar` aggregate: a finite number or a string. */
export function scalar (aggregate: string, what: string, value: unknown): number | string {
  if (typeof value === 'string') return value
  if (typeof value === 'number' && Number.isFinite(value)) return value
  throw wireError(aggregate, `${what} must be a finite number or a string, got ${describe(value)}`)
}

/** Checks the decoders of several formats share: UTF-8 text, plain objects, finite numbers. */
import { ReadingRejected } from '../errors.ts'
import type { Fields } from './format.ts'

const utf8 = new TextDecoder('utf-8', { fatal: true })

export function text (payload: Uint8Array): string {
  try {
    return utf8.decode(payload)
  } catch {
    throw new ReadingRejected('parse', 'payload is not valid UTF-8')
  }
}

export function isPlainObject (v: unknown): v is Fields {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array)
}

/**
 * A reading with a NaN or infinite number in a top-level field is rejected whether or not the pipeline
 * uses that field: such a value means a broken sensor, and its other fields are not to be trusted.
 */
export function finite (fields: Fields): Fields {
  for (const k in fields) {
    const v = fields[k]
    if (typeof v === 'number' && !Number.isFinite(v)) throw new ReadingRejected('non_finite', `field "${k}" is ${v}`)
  }
  return fields
}

/** A bare number is a reading with one field, `value`: `21.5` and `{"value": 21.5}` mean the same. */
export function record (v: unknown, format: string): Fields {
  if (isPlainObject(v)) return finite(v)
  if (typeof v === 'number') return finite({ value: v })
  throw new ReadingRejected('parse', `${format} payload must be an object or a number, not ${Array.isArray(v) ? 'an array' : v === null ? 'null' : typeof v}`)
}

export function parseJson (payload: Uint8Array, what: string): unknown {
  const source = text(payload)
  try {
    return JSON.parse(source)
  } catch (err) {
    throw new ReadingRejected('parse', `invalid ${what}: ${(err as Error).message}`)
  }
}

/**
 * Whether a decoded value (JSON or CBOR from another machine) is a plain map of fields: not null, an
 * array, a byte string or an object with a prototype of its own.
 */
export function isPlainMap (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array) && Object.getPrototypeOf(v) === Object.prototype
}

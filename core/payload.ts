/**
 * Payload formats: each decoder turns one MQTT payload into the records (readings) it carries.
 * A record is the set of top-level fields that expressions see.
 */
import { Decoder } from 'cbor-x'
import { ReadingRejected } from './errors.ts'
import type { PayloadFormat } from './pipeline/spec.ts'

export type Fields = Record<string, unknown>
export type PayloadDecoder = (payload: Uint8Array) => Fields[]

const cbor = new Decoder({ mapsAsObjects: true, useRecords: false })
const utf8 = new TextDecoder('utf-8', { fatal: true })

function text (payload: Uint8Array): string {
  try {
    return utf8.decode(payload)
  } catch {
    throw new ReadingRejected('parse', 'payload is not valid UTF-8')
  }
}

function isPlainObject (v: unknown): v is Fields {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array)
}

/**
 * A reading with a NaN or infinite number in a top-level field is rejected whether or not the pipeline
 * uses that field: such a value means a broken sensor, and its other fields are not to be trusted.
 */
function finite (fields: Fields): Fields {
  for (const k in fields) {
    const v = fields[k]
    if (typeof v === 'number' && !Number.isFinite(v)) throw new ReadingRejected('non_finite', `field "${k}" is ${v}`)
  }
  return fields
}

/** A bare number is a reading with one field, `value`: `21.5` and `{"value": 21.5}` mean the same. */
function record (v: unknown, format: string): Fields {
  if (isPlainObject(v)) return finite(v)
  if (typeof v === 'number') return finite({ value: v })
  throw new ReadingRejected('parse', `${format} payload must be an object or a number, not ${Array.isArray(v) ? 'an array' : v === null ? 'null' : typeof v}`)
}

function parseJson (payload: Uint8Array, what: string): unknown {
  const source = text(payload)
  try {
    return JSON.parse(source)
  } catch (err) {
    throw new ReadingRejected('parse', `invalid ${what}: ${(err as Error).message}`)
  }
}

const json: PayloadDecoder = (payload) => [record(parseJson(payload, 'JSON'), 'JSON')]

const cborPayload: PayloadDecoder = (payload) => {
  let v: unknown
  try {
    v = cbor.decode(payload)
  } catch (err) {
    throw new ReadingRejected('parse', `invalid CBOR: ${(err as Error).message}`)
  }
  if (v instanceof Map) v = Object.fromEntries(v)
  return [record(v, 'CBOR')]
}

const NUMBER = /^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$|^\s*[-+]?(NaN|Infinity)\s*$/

const textPayload: PayloadDecoder = (payload) => {
  const s = text(payload)
  if (!NUMBER.test(s)) throw new ReadingRejected('parse', `text payload "${s.slice(0, 40)}" is not a number`)
  return [finite({ value: Number(s) })]
}

/**
 * SenML (RFC 8428) in JSON: an array of records with base fields (bn, bt, bu, bv) that apply to the
 * records after them. Each resolved record is one reading with `name`, `value` (or `string`/`bool`),
 * `unit` and `time` (seconds since the epoch).
 */
const senml: PayloadDecoder = (payload) => {
  const v = parseJson(payload, 'SenML JSON')
  if (!Array.isArray(v) || v.length === 0) throw new ReadingRejected('parse', 'SenML payload must be a non-empty array of records')
  let bn = ''
  let bt = 0
  let bu: unknown
  let bv = 0
  const out: Fields[] = []
  for (const r of v) {
    if (!isPlainObject(r)) throw new ReadingRejected('parse', 'SenML record must be an object')
    if (r.bn !== undefined) bn = String(r.bn)
    if (r.bt !== undefined) bt = Number(r.bt)
    if (r.bu !== undefined) bu = r.bu
    if (r.bv !== undefined) bv = Number(r.bv)
    const fields: Fields = { ...r }
    for (const base of ['bn', 'bt', 'bu', 'bv', 'bver', 'n', 't', 'u', 'v', 'vs', 'vb', 's', 'vd']) delete fields[base]
    fields.name = bn + (r.n === undefined ? '' : String(r.n))
    if (r.v !== undefined) fields.value = bv + Number(r.v)
    else if (r.s !== undefined) fields.value = bv + Number(r.s)
    else if (r.vs !== undefined) fields.string = r.vs
    else if (r.vb !== undefined) fields.bool = r.vb
    const unit = r.u ?? bu
    if (unit !== undefined) fields.unit = unit
    // RFC 8428: times below 2^28 are relative to now
    const t = bt + (r.t === undefined ? 0 : Number(r.t))
    fields.time = Math.abs(t) < 2 ** 28 ? Date.now() / 1000 + t : t
    out.push(finite(fields))
  }
  return out
}

export const PAYLOAD_DECODERS: Record<PayloadFormat, PayloadDecoder> = {
  json,
  cbor: cborPayload,
  text: textPayload,
  senml
}

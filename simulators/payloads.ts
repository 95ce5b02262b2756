/**
 * How a simulated reading goes on the wire in each payload format, and the malformed payloads the
 * simulator mixes in to exercise the agent's rejection paths.
 *
 * - json / cbor: `{device, room, value, humidity, ts}` with `ts` in epoch ms.
 * - text: just the value (`21.37`); there is no event time, device or room in the payload, so
 *   pipelines read room/device from named topic wildcards and run on arrival time.
 * - senml: `[{"bn":"<device>:","bt":<ts seconds>,"n":"temp","u":"Cel","v":<value>}]`; the agent's
 *   decoder resolves it to `{name: "<device>:temp", value, unit: "Cel", time: <seconds>}`, so the
 *   device is the part of `name` before ":" and the room comes from a named topic wildcard
 *   (`sensors/+room/temperature`); pipelines use `timestamp: time`. Humidity is not sent.
 */
import { Encoder } from 'cbor-x'
import type { PayloadFormat } from '../core/pipeline/spec.ts'
import type { Rng } from './random.ts'

export interface Reading {
  device: string
  room: string
  /** Temperature, °C, 2 decimals. */
  value: number
  /** Relative humidity, %, 0..100, 1 decimal. */
  humidity: number
  /** Event time, epoch ms. */
  ts: number
}

export type MalformedKind =
  | 'garbage' // random bytes, not valid UTF-8 nor CBOR
  | 'truncated' // a valid payload cut short
  | 'wrong_shape' // a JSON/CBOR array instead of an object; a bare SenML record instead of an array
  | 'missing_value' // no `value` (SenML: a record without `v`)
  | 'string_value' // `value` is a string (SenML: `vs` instead of `v`)
  | 'nan' // value NaN (cbor, text)
  | 'infinity' // value ±Infinity (cbor, text)
  | 'bad_timestamp' // the timestamp is a word
  | 'future_timestamp' // the timestamp is in the year 3000
  | 'not_a_number' // text that is not a number
  | 'empty' // an empty payload

/** The malformed kinds that make sense per format; the generator picks uniformly among them. */
export const MALFORMED_KINDS: Record<PayloadFormat, readonly MalformedKind[]> = {
  json: ['garbage', 'truncated', 'wrong_shape', 'missing_value', 'string_value', 'bad_timestamp', 'future_timestamp', 'empty'],
  cbor: ['garbage', 'truncated', 'wrong_shape', 'missing_value', 'string_value', 'nan', 'infinity', 'bad_timestamp', 'future_timestamp', 'empty'],
  text: ['garbage', 'not_a_number', 'nan', 'infinity', 'empty'],
  senml: ['garbage', 'truncated', 'wrong_shape', 'missing_value', 'string_value', 'bad_timestamp', 'future_timestamp', 'empty']
}

// Plain maps, no record extension: the agent decodes with useRecords: false.
const cbor = new Encoder({ useRecords: false, mapsAsObjects: true })
const utf8 = new TextEncoder()
const YEAR_3000 = Date.UTC(3000, 0, 1)

function fields (r: Reading): Record<string, unknown> {
  return { device: r.device, room: r.room, value: r.value, humidity: r.humidity, ts: r.ts }
}

function senmlRecord (r: Reading): Record<string, unknown> {
  return { bn: `${r.device}:`, bt: r.ts / 1000, n: 'temp', u: 'Cel', v: r.value }
}

function objectPayload (format: PayloadFormat, obj: unknown): Uint8Array {
  return format === 'cbor' ? new Uint8Array(cbor.encode(obj)) : utf8.encode(JSON.stringify(obj))
}

export function encodeReading (r: Reading, format: PayloadFormat): Uint8Array {
  switch (format) {
    case 'json':
    case 'cbor':
      return objectPayload(format, fields(r))
    case 'text':
      return utf8.encode(String(r.value))
    case 'senml':
      return utf8.encode(JSON.stringify([senmlRecord(r)]))
  }
}

/** A malformed payload of `kind` standing in for reading `r`. */
export function encodeMalformed (r: Reading, format: PayloadFormat, kind: MalformedKind, rng: Rng): Uint8Array {
  switch (kind) {
    case 'garbage': {
      // 0xff 0xfe: invalid as UTF-8 and a stray CBOR break code, so no format can decode it by luck
      const bytes = [0xff, 0xfe]
      const n = 4 + rng.int(13)
      for (let i = 0; i < n; i++) bytes.push(rng.int(256))
      return new Uint8Array(bytes)
    }
    case 'truncated': {
      const whole = encodeReading(r, format)
      return whole.slice(0, Math.max(1, Math.floor(whole.length / 2)))
    }
    case 'empty':
      return new Uint8Array(0)
    case 'not_a_number':
      return utf8.encode(rng.pick(['warm', '21,5', '--', 'null', 'twenty']))
    case 'nan':
      return format === 'text' ? utf8.encode('NaN') : objectPayload(format, { ...fields(r), value: NaN })
    case 'infinity': {
      const v = rng.chance(0.5) ? Infinity : -Infinity
      return format === 'text' ? utf8.encode(String(v)) : objectPayload(format, { ...fields(r), value: v })
    }
    default:
      break
  }
  if (format === 'senml') {
    const rec = senmlRecord(r)
    switch (kind) {
      case 'wrong_shape': return utf8.encode(JSON.stringify(rec))
      case 'missing_value': { const { v: _v, ...rest } = rec; return utf8.encode(JSON.stringify([rest])) }
      case 'string_value': { const { v, ...rest } = rec; return utf8.encode(JSON.stringify([{ ...rest, vs: String(v) }])) }
      case 'bad_timestamp': return utf8.encode(JSON.stringify([{ ...rec, bt: 'yesterday' }]))
      case 'future_timestamp': return utf8.encode(JSON.stringify([{ ...rec, bt: (YEAR_3000 + r.ts % 86_400_000) / 1000 }]))
      default: throw new Error(`malformed kind ${kind} does not apply to senml`)
    }
  }
  if (format === 'json' || format === 'cbor') {
    const f = fields(r)
    switch (kind) {
      case 'wrong_shape': return objectPayload(format, [r.value, r.humidity])
      case 'missing_value': { const { value: _v, ...rest } = f; return objectPayload(format, rest) }
      case 'string_value': return objectPayload(format, { ...f, value: String(r.value) })
      case 'bad_timestamp': return objectPayload(format, { ...f, ts: rng.pick(['yesterday', 'now', '2024-13-45T99:00:00Z']) })
      case 'future_timestamp': return objectPayload(format, { ...f, ts: YEAR_3000 + r.ts % 86_400_000 })
      default: break
    }
  }
  throw new Error(`malformed kind ${kind} does not apply to ${format}`)
}

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
 * - sparkplug: each room is a Sparkplug Edge Node of group SPARKPLUG_GROUP and each device one of its
 *   devices (topic `spBv1.0/sim/DDATA/<room>/<device>`). Each publisher (broker) first sends the NBIRTH
 *   of every room with devices on it and the DBIRTH of each such device (`temperature` alias 1 and
 *   `humidity` alias 2, both Double, null values: births carry no readings), then one alias-only
 *   DDATA per reading: `temperature` with its own timestamp, `humidity` with the payload's (both ts).
 *   Pipelines use `timestamp: timestamp`, `where: name == "temperature"`, `key: node` for the room.
 */
import { Encoder } from 'cbor-x'
import { DataType, encodeSparkplug, sparkplugTopic } from '../core/formats/sparkplug-wire.ts'
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
  | 'unknown_alias' // Sparkplug DDATA with an alias the device's DBIRTH did not declare

/** The malformed kinds that make sense per format; the generator picks uniformly among them. */
export const MALFORMED_KINDS: Record<PayloadFormat, readonly MalformedKind[]> = {
  json: ['garbage', 'truncated', 'wrong_shape', 'missing_value', 'string_value', 'bad_timestamp', 'future_timestamp', 'empty'],
  cbor: ['garbage', 'truncated', 'wrong_shape', 'missing_value', 'string_value', 'nan', 'infinity', 'bad_timestamp', 'future_timestamp', 'empty'],
  text: ['garbage', 'not_a_number', 'nan', 'infinity', 'empty'],
  senml: ['garbage', 'truncated', 'wrong_shape', 'missing_value', 'string_value', 'bad_timestamp', 'future_timestamp', 'empty'],
  // An empty Sparkplug payload is a valid message without metrics, so not malformed.
  sparkplug: ['garbage', 'truncated', 'unknown_alias']
}

/** The Sparkplug group of simulated nodes (one node per room). */
export const SPARKPLUG_GROUP = 'sim'
/** The metrics of a simulated Sparkplug device: name and alias. */
const SPARKPLUG_METRICS = [['temperature', 1], ['humidity', 2]] as const

export function sparkplugDataTopic (room: string, device: string): string {
  return sparkplugTopic(SPARKPLUG_GROUP, 'DDATA', room, device)
}

/** The NBIRTH of a simulated room node (seq 0, bdSeq 0) and its topic. */
export function sparkplugNodeBirth (room: string, ts: number): { topic: string, payload: Uint8Array } {
  return {
    topic: sparkplugTopic(SPARKPLUG_GROUP, 'NBIRTH', room),
    payload: encodeSparkplug({
      timestamp: ts,
      seq: 0,
      metrics: [
        { name: 'bdSeq', datatype: DataType.Int64, longValue: 0 },
        { name: 'Node Control/Rebirth', datatype: DataType.Boolean, booleanValue: false }
      ]
    })
  }
}

/** The DBIRTH of a simulated device: its metrics' names, aliases and datatypes, with null values. */
export function sparkplugDeviceBirth (room: string, device: string, ts: number, seq: number): { topic: string, payload: Uint8Array } {
  return {
    topic: sparkplugTopic(SPARKPLUG_GROUP, 'DBIRTH', room, device),
    payload: encodeSparkplug({
      timestamp: ts,
      seq,
      metrics: SPARKPLUG_METRICS.map(([name, alias]) => ({ name, alias, datatype: DataType.Double, isNull: true }))
    })
  }
}

function sparkplugData (r: Reading, aliasOffset = 0): Uint8Array {
  // Alias-only, without datatypes (Sparkplug: DATA should leave them out), as plants send them.
  return encodeSparkplug({
    timestamp: r.ts,
    metrics: [
      { alias: SPARKPLUG_METRICS[0][1] + aliasOffset, timestamp: r.ts, doubleValue: r.value },
      { alias: SPARKPLUG_METRICS[1][1] + aliasOffset, doubleValue: r.humidity }
    ]
  })
}

/**
 * A Sparkplug payload with `seq` (field 3, a varint) appended: protobuf takes fields in any order, and
 * the generator knows the seq only when it orders each publisher's messages.
 */
export function withSeq (payload: Uint8Array, seq: number): Uint8Array {
  const out = new Uint8Array(payload.length + 3)
  out.set(payload)
  let n = payload.length
  out[n++] = 0x18
  let v = seq
  while (v >= 0x80) {
    out[n++] = (v & 0x7f) | 0x80
    v >>>= 7
  }
  out[n++] = v
  return out.slice(0, n)
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
    case 'sparkplug':
      return sparkplugData(r)
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
      if (format === 'sparkplug') {
        // Cut inside the first metric (after the payload timestamp): a length then promises more than
        // is there, so it never decodes by luck, whatever is appended after.
        const head = encodeSparkplug({ timestamp: r.ts }).length
        return whole.slice(0, head + 3)
      }
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
    case 'unknown_alias':
      return sparkplugData(r, 100)
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

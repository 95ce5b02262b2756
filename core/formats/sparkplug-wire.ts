/**
 * Sparkplug B on the wire (Eclipse Sparkplug 3.0): the topic namespace, the datatypes and the protobuf
 * payload, through the generated code of the Eclipse Tahu `sparkplug-payload` package (its protobuf
 * classes, not its convenience decoder: that one reads a value by the metric's own datatype, which DATA
 * messages leave out, so alias-only DATA needs the datatype from the BIRTH, as here).
 *
 * 64-bit fields (timestamps, seq, aliases, Int64/UInt64/DateTime values) arrive as Long objects or
 * numbers; they become numbers, exact below 2^53.
 *
 * The protobuf code (protobufjs and long, about a megabyte resident) is loaded at the first payload
 * encoded or decoded, not by every node that merely lists the format: it is CommonJS, so a synchronous
 * require() does it.
 */
import { createRequire } from 'node:module'
import type ProtoModule from 'sparkplug-payload/lib/sparkplugPayloadProto.js'

type PayloadClass = typeof ProtoModule.org.eclipse.tahu.protobuf.Payload
let payloadClass: PayloadClass | undefined

/** The generated Payload class, loaded on first use. */
function sparkplugPayload (): PayloadClass {
  if (payloadClass === undefined) {
    const proto = createRequire(import.meta.url)('sparkplug-payload/lib/sparkplugPayloadProto.js') as typeof ProtoModule
    payloadClass = proto.org.eclipse.tahu.protobuf.Payload
  }
  return payloadClass
}

export type WirePayload = InstanceType<PayloadClass>
export type WireMetric = WirePayload['metrics'][number]

export const NAMESPACE = 'spBv1.0'

/** Sparkplug B datatypes (the DataType enum of the specification) that fogmesh reads or writes. */
export const DataType = {
  Int8: 1,
  Int16: 2,
  Int32: 3,
  Int64: 4,
  UInt8: 5,
  UInt16: 6,
  UInt32: 7,
  UInt64: 8,
  Float: 9,
  Double: 10,
  Boolean: 11,
  String: 12,
  DateTime: 13,
  Text: 14,
  UUID: 15
} as const

export const NODE_TYPES = new Set(['NBIRTH', 'NDEATH', 'NDATA', 'NCMD'])
export const DEVICE_TYPES = new Set(['DBIRTH', 'DDEATH', 'DDATA', 'DCMD'])

/** The metric a host writes true to, to ask an Edge Node for a new birth. */
export const REBIRTH_METRIC = 'Node Control/Rebirth'

export interface SparkplugTopic {
  group: string
  type: string
  node: string
  /** "" for node messages. */
  device: string
}

/**
 * Reads `spBv1.0/<group>/<type>/<node>[/<device>]`; undefined when the topic has another shape.
 * `spBv1.0/STATE/<host>` (host application state) reads as type STATE with no node.
 */
export function parseSparkplugTopic (topic: string): SparkplugTopic | undefined {
  const parts = topic.split('/')
  if (parts[0] !== NAMESPACE || parts.some(p => p === '')) return undefined
  if (parts.length === 3 && parts[1] === 'STATE') return { group: '', type: 'STATE', node: parts[2], device: '' }
  const type = parts[2]
  if (parts.length === 4 && NODE_TYPES.has(type)) return { group: parts[1], type, node: parts[3], device: '' }
  if (parts.length === 5 && DEVICE_TYPES.has(type)) return { group: parts[1], type, node: parts[3], device: parts[4] }
  return undefined
}

export function sparkplugTopic (group: string, type: string, node: string, device?: string): string {
  return `${NAMESPACE}/${group}/${type}/${node}${device === undefined || device === '' ? '' : `/${device}`}`
}

const CLIENT_ID_PREFIX = 'fogmesh-sparkplug'

/**
 * The MQTT client id of fogmesh's Edge Node `node` of `group`. It names the node so that the embedded
 * broker can hold the edge's own connection to that node's topics; the pid keeps two edges apart on a
 * shared broker. Group and node are one topic level each (no `/`), so the id reads back unambiguously.
 */
export function sparkplugClientId (group: string, node: string, pid: number): string {
  return `${CLIENT_ID_PREFIX}/${group}/${node}/${pid}`
}

/** The group and node a sparkplugClientId names; undefined for any other id. */
export function nodeOfSparkplugClientId (id: string): { group: string, node: string } | undefined {
  const parts = id.split('/')
  if (parts.length !== 4 || parts[0] !== CLIENT_ID_PREFIX || parts[1] === '' || parts[2] === '') return undefined
  return { group: parts[1], node: parts[2] }
}

interface LongLike { low: number, high: number, unsigned?: boolean }

/** A protobuf 64-bit value as a number: exact below 2^53. `signed` reads the bits as two's complement. */
export function toNumber (v: number | LongLike | null | undefined, signed = false): number | undefined {
  if (v === null || v === undefined) return undefined
  if (typeof v === 'number') return v
  const high = signed ? v.high | 0 : v.high >>> 0
  return high * 4294967296 + (v.low >>> 0)
}

function own (m: object, field: string): boolean {
  return Object.prototype.hasOwnProperty.call(m, field)
}

/** The shortest decimal that is the same float32: what a user wrote, not 21.3700008392334. */
function float32 (v: number): number {
  if (!Number.isFinite(v)) return v
  for (let digits = 6; digits < 9; digits++) {
    const d = Number(v.toPrecision(digits))
    if (Math.fround(d) === v) return d
  }
  return v
}

/**
 * A metric's value as a user expects it: integers, floats and date-times as numbers, booleans, and
 * strings. Undefined for the datatypes that are not one value (DataSet, Template, Bytes, File,
 * PropertySet, arrays) and for an unknown datatype.
 */
export function metricValue (m: WireMetric, datatype: number): number | boolean | string | undefined {
  switch (datatype) {
    case DataType.Int8:
    case DataType.Int16:
    case DataType.Int32:
      // two's complement in the unsigned int_value
      return own(m, 'intValue') ? Number(m.intValue) | 0 : toNumber(m.longValue as LongLike, true)
    case DataType.UInt8:
    case DataType.UInt16:
    case DataType.UInt32:
      // UInt32 is in int_value since Sparkplug 3.0, in long_value before: either is read
      return own(m, 'intValue') ? Number(m.intValue) >>> 0 : toNumber(m.longValue as LongLike)
    case DataType.Int64:
      return toNumber(m.longValue as LongLike, true)
    case DataType.UInt64:
    case DataType.DateTime:
      return toNumber(m.longValue as LongLike)
    case DataType.Float:
      return own(m, 'floatValue') ? float32(Number(m.floatValue)) : own(m, 'doubleValue') ? Number(m.doubleValue) : undefined
    case DataType.Double:
      return own(m, 'doubleValue') ? Number(m.doubleValue) : own(m, 'floatValue') ? float32(Number(m.floatValue)) : undefined
    case DataType.Boolean:
      return own(m, 'booleanValue') ? m.booleanValue === true : undefined
    case DataType.String:
    case DataType.Text:
    case DataType.UUID:
      return own(m, 'stringValue') ? String(m.stringValue) : undefined
    default:
      return undefined
  }
}

/** The fields of a metric that carry `value` of `datatype` (for encoding). */
export function valueFields (datatype: number, value: number | boolean | string): WireMetric {
  switch (datatype) {
    case DataType.Boolean: return { booleanValue: value as boolean }
    case DataType.Double: return { doubleValue: value as number }
    case DataType.Float: return { floatValue: value as number }
    case DataType.Int64:
    case DataType.UInt64:
    case DataType.DateTime: return { longValue: value as number }
    case DataType.String:
    case DataType.Text:
    case DataType.UUID: return { stringValue: value as string }
    default: return { intValue: (value as number) >>> 0 }
  }
}

export function encodeSparkplug (payload: ConstructorParameters<PayloadClass>[0]): Uint8Array {
  return sparkplugPayload().encode(payload ?? {}).finish()
}

/** Throws what protobufjs throws on a truncated or garbled payload. */
export function decodeSparkplug (bytes: Uint8Array): WirePayload {
  return sparkplugPayload().decode(bytes)
}

/** The NCMD a host application sends to ask a node for a new NBIRTH (and DBIRTHs). */
export function rebirthRequest (now: number): Uint8Array {
  return encodeSparkplug({ timestamp: now, metrics: [{ name: REBIRTH_METRIC, timestamp: now, datatype: DataType.Boolean, booleanValue: true }] })
}

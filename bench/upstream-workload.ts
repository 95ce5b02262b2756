/**
 * The upstream bench's readings, and what forwarding them raw would cost. Every key (a device) reads
 * once per second of event time, so a window of W seconds holds W readings per key; keys alternate
 * between the two edges. Event time starts on a window boundary, and the readings after the last
 * measured window only go as far as needed to close it (they stay in a window that is never measured).
 */
import { deflateRawSync } from 'node:zlib'
import { Encoder } from 'cbor-x'
import { publishSize } from './lib.ts'
import { createRng } from '../simulators/random.ts'

const ROOMS = 50

export interface Reading {
  edge: number
  ts: number
  topic: string
  payload: Buffer
  /** The payload as an object, for the raw encodings. */
  fields: Record<string, unknown>
  /** In a measured window (the others only close the last one). */
  measured: boolean
}

export interface WorkloadOptions {
  keys: number
  edges: number
  windowMs: number
  windows: number
  lateness: number
  /** Event time of the first window's start; a multiple of windowMs. */
  origin: number
  seed: number
}


/** Readings in event-time order: key k reads at origin + s * 1000 + k * 1000 / keys for each second s. */
export function makeReadings (o: WorkloadOptions): Reading[] {
  const random = createRng(o.seed).next
  const end = o.origin + o.windows * o.windowMs
  const values = Array.from({ length: o.keys }, () => 15 + random() * 10)
  // Past the last window, one more second of readings from its end plus the lateness: every edge's
  // watermark passes the end, and the next window (closing a whole window later) stays open.
  const stop = end + o.lateness + Math.min(o.windowMs, 1000)
  const out: Reading[] = []
  for (let second = o.origin; second < stop; second += 1000) {
    for (let k = 0; k < o.keys; k++) {
      const ts = second + Math.floor(k * 1000 / o.keys)
      if (ts >= stop) continue
      values[k] += (random() - 0.5) * 0.4
      const room = `room${k % ROOMS}`
      const fields = { device: `d${k}`, room, value: Math.round(values[k] * 100) / 100, ts }
      out.push({ edge: k % o.edges, ts, topic: `sensors/${room}/temperature`, payload: Buffer.from(JSON.stringify(fields)), fields, measured: ts < end })
    }
  }
  return out.sort((a, b) => a.ts - b.ts)
}

const cbor = new Encoder({ useRecords: false, mapsAsObjects: true })

/** What forwarding the measured readings raw would send, in bytes (totals). */
export interface RawSizes {
  /** MQTT payloads alone. */
  mqttPayload: number
  /** Whole QoS 0 PUBLISH packets (topic and framing included). */
  mqttPacket: number
  /** Per edge and window, one JSON array of the payloads. */
  json: number
  /** Per edge and window, one CBOR array of the payloads (the partial batches' encoding). */
  cbor: number
  /** The same, deflated as partial batches are (above 1 KiB, when that saves a tenth). */
  cborDeflated: number
}

export function rawSizes (readings: Reading[], windowMs: number): RawSizes {
  const sizes: RawSizes = { mqttPayload: 0, mqttPacket: 0, json: 0, cbor: 0, cborDeflated: 0 }
  const batches = new Map<string, Array<Record<string, unknown>>>()
  for (const r of readings) {
    if (!r.measured) continue
    sizes.mqttPayload += r.payload.length
    sizes.mqttPacket += publishSize(r.topic, r.payload.toString())
    const id = `${r.edge}:${Math.floor(r.ts / windowMs)}`
    let batch = batches.get(id)
    if (batch === undefined) batches.set(id, batch = [])
    batch.push(r.fields)
  }
  for (const batch of batches.values()) {
    sizes.json += Buffer.byteLength(JSON.stringify(batch))
    const body = cbor.encode(batch)
    sizes.cbor += body.length
    const deflated = body.length > 1024 ? deflateRawSync(body).length : body.length
    sizes.cborDeflated += deflated < body.length * 0.9 ? deflated : body.length
  }
  return sizes
}

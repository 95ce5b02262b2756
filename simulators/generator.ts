/**
 * Seeded generation of everything the simulator publishes. Generation is pure: the same options and
 * origin always give the same messages in the same order, which is what lets the oracle (truth.ts)
 * predict the agent's results exactly.
 */
import type { SimOptions } from './options.ts'
import { encodeMalformed, encodeReading, MALFORMED_KINDS } from './payloads.ts'
import type { MalformedKind, Reading } from './payloads.ts'
import { createRng } from './random.ts'

export interface Message {
  topic: string
  payload: Uint8Array
  /** Index of the broker (in `options.mqtt`) the message goes to. */
  broker: number
  device: string
  /** When the message is due, in event time (epoch ms): the publishing schedule at speed > 0. */
  due: number
  /** The reading behind the message; for malformed messages the reading it stands in for. */
  reading: Reading
  /** Set on malformed messages. */
  malformed?: MalformedKind
  /** The reading's event time was pushed back by `lateBy`. */
  late: boolean
  /** This is the second copy of the message before it. */
  duplicate: boolean
}

export interface GenerationStats {
  /** Readings generated (well-formed ones, malformed slots excluded, duplicates counted once). */
  readings: number
  late: number
  duplicates: number
  malformed: Partial<Record<MalformedKind, number>>
  /** All messages, duplicates included. */
  messages: number
}

export interface Generated {
  /** Event-time origin, epoch ms. */
  origin: number
  /** Per broker, in publish order. */
  streams: Message[][]
  stats: GenerationStats
}

export function deviceName (i: number): string {
  return `d${i}`
}

export function roomName (i: number, rooms: number): string {
  return `r${i % rooms}`
}

export function topicFor (template: string, device: string, room: string): string {
  return template.replaceAll('{room}', room).replaceAll('{device}', device)
}

function round (v: number, decimals: number): number {
  const f = 10 ** decimals
  // + 0 turns -0 into 0, which JSON and String() would print as "0" anyway but CBOR would not
  return Math.round(v * f) / f + 0
}

type GenOptions = Pick<SimOptions, 'devices' | 'rooms' | 'rate' | 'duration' | 'topic' | 'format' | 'seed' | 'jitter' | 'lateShare' | 'lateBy' | 'duplicateShare' | 'malformedShare'> & { brokers: number }

function deviceMessages (i: number, o: GenOptions, origin: number): Message[] {
  const rng = createRng(o.seed, i)
  const device = deviceName(i)
  const room = roomName(i, o.rooms)
  const topic = topicFor(o.topic, device, room)
  const broker = i % o.brokers
  const period = 1000 / o.rate
  const count = Math.floor(o.duration * o.rate / 1000)
  // Devices are not synchronized: each starts somewhere in the first period.
  const phase = rng.next() * period
  // Some devices sit in cold rooms (or outdoors), so temperatures below zero do occur.
  let value = -10 + rng.next() * 40
  let humidity = 30 + rng.next() * 40
  const kinds = MALFORMED_KINDS[o.format]
  const out: Message[] = []
  for (let k = 0; k < count; k++) {
    // Every draw happens whatever the options, so changing one share leaves the rest of the run alone.
    value += (rng.next() - 0.5) * 0.6
    humidity = Math.min(100, Math.max(0, humidity + (rng.next() - 0.5) * 2))
    const jitter = Math.floor(rng.next() * o.jitter)
    const late = rng.next() < o.lateShare
    const duplicate = rng.next() < o.duplicateShare
    const malformed = rng.next() < o.malformedShare
    const kind = kinds[Math.floor(rng.next() * kinds.length)]
    const malformedSeed = rng.int(2 ** 32)
    const due = origin + Math.floor(phase + k * period)
    const ts = due - jitter - (late ? o.lateBy : 0)
    const reading: Reading = { device, room, value: round(value, 2), humidity: round(humidity, 1), ts }
    const msg: Message = malformed
      ? { topic, payload: encodeMalformed(reading, o.format, kind, createRng(malformedSeed)), broker, device, due, reading, malformed: kind, late: false, duplicate: false }
      : { topic, payload: encodeReading(reading, o.format), broker, device, due, reading, late, duplicate: false }
    out.push(msg)
    if (duplicate) out.push({ ...msg, duplicate: true })
  }
  return out
}

/**
 * Generates the messages of a run. Device i publishes to broker i % brokers; each broker's stream is
 * ordered by due time, then device index, a duplicate right after its original.
 */
export function generate (o: GenOptions, origin: number): Generated {
  const all: Array<{ msg: Message, device: number, seq: number }> = []
  for (let i = 0; i < o.devices; i++) {
    deviceMessages(i, o, origin).forEach((msg, seq) => all.push({ msg, device: i, seq }))
  }
  all.sort((a, b) => a.msg.due - b.msg.due || a.device - b.device || a.seq - b.seq)
  const streams: Message[][] = Array.from({ length: o.brokers }, () => [])
  const stats: GenerationStats = { readings: 0, late: 0, duplicates: 0, malformed: {}, messages: all.length }
  for (const { msg } of all) {
    streams[msg.broker].push(msg)
    if (msg.duplicate) {
      stats.duplicates++
    } else if (msg.malformed !== undefined) {
      stats.malformed[msg.malformed] = (stats.malformed[msg.malformed] ?? 0) + 1
    } else {
      stats.readings++
      if (msg.late) stats.late++
    }
  }
  return { origin, streams, stats }
}

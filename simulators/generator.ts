/**
 * Seeded generation of everything the simulator publishes. Generation is pure: the same options and
 * origin always give the same messages in the same order, which is what lets the oracle (truth.ts)
 * predict the agent's results exactly.
 *
 * It streams: each device is a generator that keeps its random state between messages, and `messages`
 * merges them in due order through a heap, so a run of any length needs memory for one pending
 * message per device, not for the run. `generate` collects a whole run, for tests and small runs.
 *
 * Invariants the truths of earlier runs rely on:
 * - every device draws from its own random stream, the same draws per reading whatever the options,
 *   so a seed gives the same messages as before and changing one share leaves the rest alone;
 * - what later options decide (pausing, clocks ahead) is drawn from a second stream per device, which
 *   runs without them never touch;
 * - within a broker, messages are ordered by due time, then device index, a duplicate right after
 *   its original.
 */
import type { SimOptions } from './options.ts'
import { encodeMalformed, encodeReading, MALFORMED_KINDS, sparkplugDataTopic, sparkplugDeviceBirth, sparkplugNodeBirth, withSeq } from './payloads.ts'
import type { MalformedKind, Reading } from './payloads.ts'
import { createRng } from './random.ts'
import type { Rng } from './random.ts'

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
  /** The reading's event time is `futureBy` ahead of its due time (a device with a bad clock). */
  future?: boolean
  /** This is the second copy of the message before it. */
  duplicate: boolean
  /** A Sparkplug NBIRTH or DBIRTH, sent before the readings: no reading of its own (`reading` is a placeholder). */
  control?: true
}

export interface GenerationStats {
  /** Readings generated (well-formed ones, malformed slots excluded, duplicates counted once). */
  readings: number
  late: number
  /** Readings dated `futureBy` ahead (counted in `readings`). */
  future: number
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

export type GenOptions = Pick<SimOptions, 'devices' | 'rooms' | 'rate' | 'duration' | 'topic' | 'format' | 'seed' | 'jitter' |
'lateShare' | 'lateBy' | 'duplicateShare' | 'malformedShare'> &
Partial<Pick<SimOptions, 'pauseShare' | 'pauseAfter' | 'pauseFor' | 'futureShare' | 'futureBy'>> & { brokers: number }

/**
 * Offset of the second random stream of each device. createRng multiplies the stream number by an odd
 * constant modulo 2^32, so streams below 2^32 never collide: this leaves 2^30 devices room.
 */
const AUX_STREAM = 2 ** 30

/** The rate of device i: a list of rates is handed out round robin. */
export function rateOf (o: Pick<SimOptions, 'rate'>, i: number): number {
  const rates = typeof o.rate === 'number' ? [o.rate] : o.rate
  return rates[i % rates.length]
}

/** One device's readings, one at a time, in due order. */
class Device {
  readonly index: number
  /** The next message, undefined once the device is done. */
  head: Message | undefined
  readonly #o: GenOptions
  readonly #origin: number
  readonly #rng: Rng
  readonly #aux: Rng
  readonly #device: string
  readonly #room: string
  readonly #topic: string
  readonly #broker: number
  readonly #period: number
  readonly #count: number
  readonly #phase: number
  readonly #pauses: boolean
  readonly #kinds: readonly MalformedKind[]
  #value: number
  #humidity: number
  #k = 0
  #duplicate: Message | undefined

  constructor (i: number, o: GenOptions, origin: number) {
    this.index = i
    this.#o = o
    this.#origin = origin
    this.#rng = createRng(o.seed, i)
    this.#aux = createRng(o.seed, AUX_STREAM + i)
    this.#device = deviceName(i)
    this.#room = roomName(i, o.rooms)
    this.#topic = o.format === 'sparkplug' ? sparkplugDataTopic(this.#room, this.#device) : topicFor(o.topic, this.#device, this.#room)
    this.#broker = i % o.brokers
    const rate = rateOf(o, i)
    this.#period = 1000 / rate
    // Devices are not synchronized: each starts somewhere in the first period.
    this.#phase = this.#rng.next() * this.#period
    // Every reading due before the end counts. floor(duration * rate) is the same count whenever
    // duration * rate is whole (as it was for every run before slow devices), and the margin keeps
    // rounding from adding one there; a device slower than the duration allows still gets the
    // readings its own phase puts in the run.
    const whole = Math.floor(o.duration * rate / 1000)
    this.#count = this.#phase + whole * this.#period < o.duration - 1e-6 ? whole + 1 : whole
    // Some devices sit in cold rooms (or outdoors), so temperatures below zero do occur.
    this.#value = -10 + this.#rng.next() * 40
    this.#humidity = 30 + this.#rng.next() * 40
    this.#kinds = MALFORMED_KINDS[o.format]
    this.#pauses = this.#aux.next() < (o.pauseShare ?? 0)
    this.advance()
  }

  /** Moves `head` to the next message. */
  advance (): void {
    if (this.#duplicate !== undefined) {
      this.head = this.#duplicate
      this.#duplicate = undefined
      return
    }
    const o = this.#o
    const rng = this.#rng
    while (this.#k < this.#count) {
      const k = this.#k++
      // Every draw happens whatever the options, so changing one share leaves the rest of the run alone.
      this.#value += (rng.next() - 0.5) * 0.6
      this.#humidity = Math.min(100, Math.max(0, this.#humidity + (rng.next() - 0.5) * 2))
      const jitter = Math.floor(rng.next() * o.jitter)
      let late = rng.next() < o.lateShare
      const duplicate = rng.next() < o.duplicateShare
      const malformed = rng.next() < o.malformedShare
      const kind = this.#kinds[Math.floor(rng.next() * this.#kinds.length)]
      const malformedSeed = rng.int(2 ** 32)
      const future = this.#aux.next() < (o.futureShare ?? 0) && !malformed
      const offset = Math.floor(this.#phase + k * this.#period)
      // A paused device sends nothing, but its sensor goes on (the draws above).
      if (this.#pauses && this.#paused(offset)) continue
      const due = this.#origin + offset
      if (future) late = false
      const ts = future ? due - jitter + (o.futureBy ?? 0) : due - jitter - (late ? o.lateBy : 0)
      const reading: Reading = { device: this.#device, room: this.#room, value: round(this.#value, 2), humidity: round(this.#humidity, 1), ts }
      const base = { topic: this.#topic, broker: this.#broker, device: this.#device, due, reading, duplicate: false }
      const msg: Message = malformed
        ? { ...base, payload: encodeMalformed(reading, o.format, kind, createRng(malformedSeed)), malformed: kind, late: false }
        : { ...base, payload: encodeReading(reading, o.format), late }
      if (future) msg.future = true
      if (duplicate) this.#duplicate = { ...msg, duplicate: true }
      this.head = msg
      return
    }
    this.head = undefined
  }

  /** Whether a pausing device is silent `offset` ms into the run: it sends for pauseAfter, then rests pauseFor. */
  #paused (offset: number): boolean {
    const on = this.#o.pauseAfter ?? Infinity
    const off = this.#o.pauseFor ?? 0
    if (off <= 0 || on === Infinity) return false
    return offset % (on + off) >= on
  }
}

/** Min-heap of devices by (due of their next message, device index). */
class DeviceHeap {
  readonly #items: Device[] = []

  get size (): number {
    return this.#items.length
  }

  peek (): Device {
    return this.#items[0]
  }

  #less (a: Device, b: Device): boolean {
    const x = a.head!.due
    const y = b.head!.due
    return x < y || (x === y && a.index < b.index)
  }

  push (d: Device): void {
    const items = this.#items
    items.push(d)
    let i = items.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.#less(items[i], items[parent])) break
      ;[items[i], items[parent]] = [items[parent], items[i]]
      i = parent
    }
  }

  /** Restores the heap after the top's key grew (its head moved on), or removes it when it is done. */
  settleTop (): void {
    const items = this.#items
    if (items[0].head === undefined) {
      const last = items.pop()!
      if (items.length === 0) return
      items[0] = last
    }
    let i = 0
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let m = i
      if (l < items.length && this.#less(items[l], items[m])) m = l
      if (r < items.length && this.#less(items[r], items[m])) m = r
      if (m === i) return
      ;[items[i], items[m]] = [items[m], items[i]]
      i = m
    }
  }
}

export function emptyStats (): GenerationStats {
  return { readings: 0, late: 0, future: 0, duplicates: 0, malformed: {}, messages: 0 }
}

export function countMessage (stats: GenerationStats, msg: Message): void {
  stats.messages++
  if (msg.control === true) return
  if (msg.duplicate) {
    stats.duplicates++
  } else if (msg.malformed !== undefined) {
    stats.malformed[msg.malformed] = (stats.malformed[msg.malformed] ?? 0) + 1
  } else {
    stats.readings++
    if (msg.late) stats.late++
    if (msg.future === true) stats.future++
  }
}

/**
 * Every message of a run in due order (then device index), each broker's share in its publish order.
 * `stats` counts what has been yielded so far.
 */
export function * messages (o: GenOptions, origin: number, stats: GenerationStats = emptyStats()): Generator<Message, void, undefined> {
  const heap = new DeviceHeap()
  for (let i = 0; i < o.devices; i++) {
    const d = new Device(i, o, origin)
    if (d.head !== undefined) heap.push(d)
  }
  const seqs = o.format === 'sparkplug' ? new SparkplugSeqs() : undefined
  if (seqs !== undefined) {
    for (const msg of sparkplugBirths(o, origin, seqs)) {
      countMessage(stats, msg)
      yield msg
    }
  }
  while (heap.size > 0) {
    const d = heap.peek()
    let msg = d.head!
    d.advance()
    heap.settleTop()
    if (seqs !== undefined && msg.malformed !== 'garbage' && msg.malformed !== 'truncated') {
      // A duplicate is the same MQTT message sent twice: the same seq.
      msg = { ...msg, payload: withSeq(msg.payload, seqs.next(msg.broker, msg.reading.room, msg.duplicate)) }
    }
    countMessage(stats, msg)
    yield msg
  }
}

/** Sparkplug seq per publisher (broker) and node (room): 0 for the NBIRTH, then +1 per message, wrapping at 256. */
class SparkplugSeqs {
  readonly #last = new Map<string, number>()

  next (broker: number, room: string, again = false): number {
    const key = `${broker}/${room}`
    const last = this.#last.get(key)
    const seq = last === undefined ? 0 : again ? last : (last + 1) % 256
    this.#last.set(key, seq)
    return seq
  }
}

/**
 * The births each publisher sends first: the NBIRTH of every room that has devices on its broker, each
 * followed by the DBIRTH of those devices.
 */
function * sparkplugBirths (o: GenOptions, origin: number, seqs: SparkplugSeqs): Generator<Message> {
  for (let broker = 0; broker < o.brokers; broker++) {
    const rooms = new Map<string, string[]>()
    for (let i = broker; i < o.devices; i += o.brokers) {
      const room = roomName(i, o.rooms)
      rooms.set(room, [...rooms.get(room) ?? [], deviceName(i)])
    }
    for (const [room, devices] of rooms) {
      const placeholder = (device: string): Reading => ({ device, room, value: 0, humidity: 0, ts: origin })
      const node = sparkplugNodeBirth(room, origin)
      seqs.next(broker, room)
      yield { ...node, broker, device: devices[0], due: origin, reading: placeholder(devices[0]), late: false, duplicate: false, control: true }
      for (const device of devices) {
        const birth = sparkplugDeviceBirth(room, device, origin, seqs.next(broker, room))
        yield { ...birth, broker, device, due: origin, reading: placeholder(device), late: false, duplicate: false, control: true }
      }
    }
  }
}

/**
 * Generates the messages of a run at once. Device i publishes to broker i % brokers; each broker's
 * stream is ordered by due time, then device index, a duplicate right after its original.
 */
export function generate (o: GenOptions, origin: number): Generated {
  const streams: Message[][] = Array.from({ length: o.brokers }, () => [])
  const stats = emptyStats()
  for (const msg of messages(o, origin, stats)) streams[msg.broker].push(msg)
  return { origin, streams, stats }
}

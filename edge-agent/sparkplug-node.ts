/**
 * `emit: [{ sparkplug: { group: G, node: N } }]`: the edge publishes its closed windows as a Sparkplug B
 * Edge Node, on the broker it reads from, over a connection of its own (whose will is the NDEATH).
 *
 * Invariants (Eclipse Sparkplug 3.0):
 * - on every (re)connection the NBIRTH goes first (seq 0, a new bdSeq, `Node Control/Rebirth`), then one
 *   DBIRTH per device (device = pipeline name) with every metric known so far, each with its alias
 *   and its last value; the connection's will is an NDEATH carrying the same bdSeq;
 * - each closed window is one DDATA with one metric per key and result field, named `<key>/<field>` in
 *   the births and sent by alias only, timestamped at the window's end; a window with a metric not yet
 *   born (a new key) first gets a new DBIRTH of its device;
 * - seq counts every message but the NDEATH, 0–255 wrapping, reset by the NBIRTH;
 * - an NCMD `Node Control/Rebirth` = true makes the node publish its births again;
 * - while disconnected (or not yet connected), each closed window's DDATA is kept, in memory, up to
 *   `maxQueued` per device (the oldest dropped past it, and counted); after the next connection's
 *   births they go out in order as historical DDATA (`is_historical`, Sparkplug's store and forward),
 *   timestamped at their window's end, before any live DDATA. The births carry the current values;
 *   queued windows are lost with the process.
 * DDATA metrics carry their datatype (Sparkplug says they should not, but the reference JavaScript
 * decoder reads each value by its metric's own datatype, so hosts built on it would read nulls).
 * bdSeq is kept in the data dir, so a restarted edge's NBIRTH does not repeat the last one's.
 * mqtt.js is loaded by the first node started, not with the agent: most edges run no Sparkplug node.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { MqttClient } from 'mqtt'
import { DataType, decodeSparkplug, encodeSparkplug, REBIRTH_METRIC, sparkplugClientId, sparkplugTopic, valueFields } from '../core/formats/sparkplug-wire.ts'
import type { WireMetric } from '../core/formats/sparkplug-wire.ts'
import type { Logger } from '../server/shell/log.ts'
import type { ClientTls } from '../server/shell/tls.ts'
import type { WindowResult } from '../server/shell/results.ts'

/** What a node keeps while its broker is unreachable, as the edge runs it. */
export interface SparkplugQueueOptions {
  /** Closed windows (one DDATA each: one key's window) kept per device; the oldest are dropped past it. */
  maxQueued: number
}

export interface SparkplugNodeOptions extends SparkplugQueueOptions {
  url: string
  /** Login at the broker, when not in `url` (the embedded broker's for the edge's own clients). */
  username?: string
  password?: string
  group: string
  node: string
  dataDir: string
  log: Logger
  tls?: ClientTls
}

interface DeviceMetric {
  alias: number
  datatype: number
  value: number | boolean | string | null
}

/** A closed window not yet published: its metrics' values as they were when it closed. */
interface QueuedWindow {
  end: number
  metrics: DeviceMetric[]
}

function datatypeOf (v: unknown): number {
  return typeof v === 'boolean' ? DataType.Boolean : typeof v === 'string' ? DataType.String : DataType.Double
}

function metric (name: string | undefined, m: DeviceMetric, timestamp: number, historical = false): WireMetric {
  const out: WireMetric = { alias: m.alias, datatype: m.datatype, timestamp, ...m.value === null ? { isNull: true } : valueFields(m.datatype, m.value) }
  if (name !== undefined) out.name = name
  if (historical) out.isHistorical = true
  return out
}

export class SparkplugNode {
  readonly #o: SparkplugNodeOptions
  readonly #devices = new Map<string, Map<string, DeviceMetric>>()
  /** By device, oldest first: windows closed while disconnected. */
  readonly #queued = new Map<string, QueuedWindow[]>()
  readonly #bdSeqFile: string
  #client: MqttClient | undefined
  #bdSeq = 0
  #seq = 0
  #nextAlias = 1
  #connected = false
  #stopped = false
  readonly stats = { births: 0, data: 0, historical: 0, failed: 0 }
  /** Queued windows dropped for the bound, by device. */
  readonly dropped = new Map<string, number>()

  constructor (o: SparkplugNodeOptions) {
    this.#o = o
    this.#bdSeqFile = join(o.dataDir, `sparkplug-${encodeURIComponent(o.group)}-${encodeURIComponent(o.node)}.bdseq`)
    try {
      this.#bdSeq = (Number(readFileSync(this.#bdSeqFile, 'utf8')) + 1) % 256 || 0
    } catch {
      this.#bdSeq = 0
    }
  }

  get id (): string {
    return `${this.#o.group}/${this.#o.node}`
  }

  get group (): string {
    return this.#o.group
  }

  get node (): string {
    return this.#o.node
  }

  start (): void {
    import('mqtt').then(({ default: mqtt }) => {
      if (!this.#stopped) this.#connect(mqtt.connect)
    }, (err: Error) => {
      this.#o.log.warn('sparkplug.unavailable', `cannot load the MQTT client (${err.message})`)
    })
  }

  /** The will (NDEATH) is set per connection, so each new connection takes the next bdSeq. */
  #connect (connect: typeof import('mqtt').connect): void {
    const o = this.#o
    const bdSeq = this.#bdSeq
    try {
      writeFileSync(this.#bdSeqFile, String(bdSeq))
    } catch {
      // best effort: a bdSeq repeated after a restart only confuses hosts that check it
    }
    const client = connect(o.url, {
      clientId: sparkplugClientId(o.group, o.node, process.pid),
      ...o.username !== undefined ? { username: o.username, password: o.password } : {},
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      will: { topic: sparkplugTopic(o.group, 'NDEATH', o.node), payload: Buffer.from(this.#death(bdSeq)), qos: 1, retain: false },
      ...o.tls?.ca !== undefined ? { ca: o.tls.ca } : {},
      ...o.tls?.cert !== undefined ? { cert: o.tls.cert, key: o.tls.key } : {}
    })
    this.#client = client
    client.on('connect', () => {
      this.#connected = true
      client.subscribe(sparkplugTopic(o.group, 'NCMD', o.node), { qos: 1 })
      this.#births()
      this.#forward()
    })
    client.on('message', (_topic, payload) => {
      try {
        const p = decodeSparkplug(payload)
        if (p.metrics.some(m => m.name === REBIRTH_METRIC && m.booleanValue === true)) this.#births()
      } catch {
        // not a command we can read: ignored, as nodes do
      }
    })
    client.on('error', () => {})
    client.on('close', () => {
      if (this.#client !== client) return
      this.#connected = false
      // A new connection needs a new will with the next bdSeq, so reconnecting is done here, not by mqtt.js.
      setTimeout(() => {
        if (this.#client !== client) return
        client.removeAllListeners()
        client.end(true)
        this.#bdSeq = (this.#bdSeq + 1) % 256
        this.#connect(connect)
      }, 1_000).unref()
    })
  }

  #death (bdSeq: number): Uint8Array {
    return encodeSparkplug({ timestamp: Date.now(), metrics: [{ name: 'bdSeq', datatype: DataType.Int64, longValue: bdSeq }] })
  }

  #nextSeq (): number {
    const seq = this.#seq
    this.#seq = (this.#seq + 1) % 256
    return seq
  }

  #publish (topic: string, payload: Uint8Array): void {
    this.#client?.publish(topic, Buffer.from(payload), { qos: 0 }, err => { if (err != null) this.stats.failed++ })
  }

  #births (): void {
    if (!this.#connected) return
    const o = this.#o
    const now = Date.now()
    this.#seq = 0
    this.#publish(sparkplugTopic(o.group, 'NBIRTH', o.node), encodeSparkplug({
      timestamp: now,
      seq: this.#nextSeq(),
      metrics: [
        { name: 'bdSeq', datatype: DataType.Int64, longValue: this.#bdSeq, timestamp: now },
        { name: REBIRTH_METRIC, datatype: DataType.Boolean, booleanValue: false, timestamp: now }
      ]
    }))
    for (const device of this.#devices.keys()) this.#deviceBirth(device, now)
    this.stats.births++
  }

  #deviceBirth (device: string, now: number): void {
    const metrics = this.#devices.get(device)!
    this.#publish(sparkplugTopic(this.#o.group, 'DBIRTH', this.#o.node, device), encodeSparkplug({
      timestamp: now,
      seq: this.#nextSeq(),
      metrics: [...metrics].map(([name, m]) => metric(name, m, now))
    }))
  }

  /** The queued windows, after the births: a host reads their aliases from those. */
  #forward (): void {
    for (const [device, windows] of this.#queued) {
      for (const w of windows) this.#data(device, w, true)
      this.stats.historical += windows.length
    }
    this.#queued.clear()
  }

  #data (device: string, w: QueuedWindow, historical: boolean): void {
    this.#publish(sparkplugTopic(this.#o.group, 'DDATA', this.#o.node, device), encodeSparkplug({
      timestamp: w.end,
      seq: this.#nextSeq(),
      metrics: w.metrics.map(m => metric(undefined, m, w.end, historical))
    }))
  }

  #enqueue (device: string, w: QueuedWindow): void {
    let windows = this.#queued.get(device)
    if (windows === undefined) {
      windows = []
      this.#queued.set(device, windows)
    }
    windows.push(w)
    if (windows.length > this.#o.maxQueued) {
      windows.shift()
      this.dropped.set(device, (this.dropped.get(device) ?? 0) + 1)
    }
  }

  /** Publishes one closed window of pipeline `result.pipeline` (the device). */
  publish (result: WindowResult): void {
    const device = result.pipeline
    let metrics = this.#devices.get(device)
    if (metrics === undefined) {
      metrics = new Map()
      this.#devices.set(device, metrics)
    }
    let born = true
    const sent: DeviceMetric[] = []
    for (const [field, v] of Object.entries(result.values)) {
      const name = `${result.key}/${field}`
      const value = typeof v === 'number' || typeof v === 'boolean' || typeof v === 'string' ? v : null
      let m = metrics.get(name)
      if (m === undefined) {
        m = { alias: this.#nextAlias++, datatype: datatypeOf(value), value }
        metrics.set(name, m)
        born = false
      }
      // A value of another type than the birth declared (a string after numbers) cannot go under that alias.
      m.value = value === null || datatypeOf(value) === m.datatype ? value : null
      // A copy: a queued window keeps its own values, not the metric's latest.
      sent.push({ ...m })
    }
    const w = { end: result.end, metrics: sent }
    if (!this.#connected) {
      // The next connection's births declare every metric, new ones included.
      this.#enqueue(device, w)
      return
    }
    if (!born) this.#deviceBirth(device, Date.now())
    this.#data(device, w, false)
    this.stats.data++
  }

  /** A clean stop: the NDEATH is published (a will only goes out when the connection is lost). */
  async stop (): Promise<void> {
    this.#stopped = true
    const client = this.#client
    this.#client = undefined
    if (client === undefined) return
    if (this.#connected) {
      await client.publishAsync(sparkplugTopic(this.#o.group, 'NDEATH', this.#o.node), Buffer.from(this.#death(this.#bdSeq)), { qos: 1 }).catch(() => {})
    }
    client.removeAllListeners('close')
    await client.endAsync().catch(() => {})
  }
}

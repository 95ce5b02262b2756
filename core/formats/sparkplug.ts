/**
 * `format: sparkplug`: Sparkplug B (Eclipse Sparkplug 3.0) as a host application reads it. Each metric
 * of an NBIRTH, DBIRTH, NDATA or DDATA is one reading with the fields `group`, `node`, `device` ("" for
 * node metrics), `name`, `value` and `timestamp` (the metric's, else the payload's; epoch ms).
 *
 * The decoder is stateful, one per runner (an edge's sparkplug pipelines share it):
 * - a BIRTH sets the alias table and the datatypes of its node or device (an NBIRTH also forgets the
 *   node's devices: they are born again after it); DATA metrics that carry only an alias, or no
 *   datatype, are read through them;
 * - a DATA metric with an alias no BIRTH declared is refused on its own (`sparkplug_alias`); DATA from a
 *   node or device with no BIRTH seen is refused as a whole (`sparkplug_no_birth`). Either asks the node
 *   for a rebirth (NCMD `Node Control/Rebirth` = true), at most once per node per REBIRTH_EVERY;
 * - NDEATH (with the bdSeq of the current birth: an older session's will is ignored) and DDEATH mark the
 *   node or device offline; a BIRTH marks it online again;
 * - seq (0–255, per node, wrapping) is checked on every message but NDEATH; a gap is counted, not refused:
 *   MQTT may lose QoS 0 messages, and the readings that did arrive are still good;
 * - null metrics, and datatypes that are not one value (DataSet, Template, Bytes, File, PropertySet,
 *   arrays) are skipped; a NaN or infinite number is refused on its own (`non_finite`);
 * - NCMD, DCMD and STATE carry no readings; another topic shape is refused (`sparkplug_topic`), a payload
 *   that is not a Sparkplug protobuf too (`parse`).
 * BIRTH metrics are readings too (their value is the current one): pipelines pick the metrics they
 * aggregate with `where: name == "…"` (an NBIRTH also reports `bdSeq` and `Node Control/Rebirth`).
 */
import { ReadingRejected } from '../errors.ts'
import type { DecoderContext, Fields, PayloadDecoder, PayloadFormatDef } from './format.ts'
import { decodeSparkplug, metricValue, parseSparkplugTopic, rebirthRequest, sparkplugTopic, toNumber } from './sparkplug-wire.ts'
import type { WireMetric, WirePayload } from './sparkplug-wire.ts'

/** The shortest time between two rebirth requests to one node, ms. */
export const REBIRTH_EVERY = 5_000

interface Born {
  /** alias -> metric name */
  aliases: Map<number, string>
  /** metric name -> datatype */
  types: Map<string, number>
  online: boolean
}

interface NodeState extends Born {
  group: string
  node: string
  /** Undefined until an NBIRTH: DATA is refused until then. */
  born: boolean
  bdSeq: number | undefined
  seq: number | undefined
  devices: Map<string, Born>
  lastRebirth: number
}

export interface SparkplugStatus {
  group: string
  node: string
  device: string
  online: boolean
}

export class SparkplugDecoder {
  readonly #ctx: DecoderContext
  readonly #nodes = new Map<string, NodeState>()
  /** Counters, read by the agent's /metrics. */
  readonly stats = { seqGaps: 0, rebirthRequests: 0, deaths: 0 }

  constructor (ctx: DecoderContext) {
    this.#ctx = ctx
  }

  /** Every node and device seen, online or not (the `fogmesh_sparkplug_online` gauge). */
  status (): SparkplugStatus[] {
    const out: SparkplugStatus[] = []
    for (const n of this.#nodes.values()) {
      out.push({ group: n.group, node: n.node, device: '', online: n.online })
      for (const [device, d] of n.devices) out.push({ group: n.group, node: n.node, device, online: d.online })
    }
    return out
  }

  readonly decode: PayloadDecoder = (payload, topic = '') => {
    const t = parseSparkplugTopic(topic)
    if (t === undefined) throw new ReadingRejected('sparkplug_topic', `"${topic.slice(0, 100)}" is not a Sparkplug B topic (spBv1.0/<group>/<N|D><BIRTH|DEATH|DATA|CMD>/<node>[/<device>])`)
    if (t.type === 'STATE' || t.type === 'NCMD' || t.type === 'DCMD') return []
    let p: WirePayload
    try {
      p = decodeSparkplug(payload)
    } catch (err) {
      throw new ReadingRejected('parse', `invalid Sparkplug B payload: ${(err as Error).message}`)
    }
    const key = `${t.group}/${t.node}`
    let node = this.#nodes.get(key)
    if (node === undefined) {
      node = { group: t.group, node: t.node, born: false, aliases: new Map(), types: new Map(), online: false, bdSeq: undefined, seq: undefined, devices: new Map(), lastRebirth: -Infinity }
      this.#nodes.set(key, node)
    }
    if (t.type === 'NDEATH') {
      const bdSeq = this.#bdSeq(p)
      // A will left by an earlier session may be delivered after the node was born again.
      if (bdSeq !== undefined && node.bdSeq !== undefined && bdSeq !== node.bdSeq) return []
      node.online = false
      for (const d of node.devices.values()) d.online = false
      this.stats.deaths++
      return []
    }
    this.#checkSeq(node, p, t.type === 'NBIRTH')
    switch (t.type) {
      case 'NBIRTH':
        node.born = true
        node.online = true
        node.bdSeq = this.#bdSeq(p)
        // The node's devices are born again after it.
        node.devices.clear()
        learn(node, p.metrics)
        return this.#readings(node, node, '', p)
      case 'DBIRTH': {
        if (!node.born) return this.#noBirth(node, `DBIRTH of ${t.device} before the NBIRTH of its node ${key}`)
        const device: Born = { aliases: new Map(), types: new Map(), online: true }
        node.devices.set(t.device, device)
        learn(device, p.metrics)
        return this.#readings(node, device, t.device, p)
      }
      case 'DDEATH': {
        const device = node.devices.get(t.device)
        if (device !== undefined) device.online = false
        this.stats.deaths++
        return []
      }
      case 'NDATA':
        if (!node.born) return this.#noBirth(node, `NDATA from ${key} before its NBIRTH`)
        return this.#readings(node, node, '', p)
      default: {
        const device = node.devices.get(t.device)
        if (!node.born || device === undefined) return this.#noBirth(node, `DDATA from ${key}/${t.device} before its DBIRTH`)
        return this.#readings(node, device, t.device, p)
      }
    }
  }

  #bdSeq (p: WirePayload): number | undefined {
    const m = p.metrics.find(m => m.name === 'bdSeq')
    return m === undefined ? undefined : toNumber(m.longValue as Parameters<typeof toNumber>[0]) ?? (m.intValue ?? undefined)
  }

  #checkSeq (node: NodeState, p: WirePayload, birth: boolean): void {
    if (!Object.prototype.hasOwnProperty.call(p, 'seq')) return
    const seq = toNumber(p.seq as Parameters<typeof toNumber>[0])!
    if (!birth && node.seq !== undefined && seq !== (node.seq + 1) % 256) this.stats.seqGaps++
    node.seq = seq
  }

  #noBirth (node: NodeState, message: string): never {
    this.#rebirth(node)
    throw new ReadingRejected('sparkplug_no_birth', message)
  }

  /** Asks the node for a new birth, as host applications do, at most once per REBIRTH_EVERY. */
  #rebirth (node: NodeState): void {
    const publish = this.#ctx.publish
    if (publish === undefined) return
    const now = this.#ctx.now()
    if (now - node.lastRebirth < REBIRTH_EVERY) return
    node.lastRebirth = now
    this.stats.rebirthRequests++
    publish(sparkplugTopic(node.group, 'NCMD', node.node), rebirthRequest(now))
  }

  #readings (node: NodeState, born: Born, device: string, p: WirePayload): Fields[] {
    const out: Fields[] = []
    const sent = toNumber(p.timestamp as Parameters<typeof toNumber>[0])
    const payloadTs = Object.prototype.hasOwnProperty.call(p, 'timestamp') ? sent : undefined
    for (const m of p.metrics) {
      let name = Object.prototype.hasOwnProperty.call(m, 'name') ? String(m.name) : undefined
      if (name === undefined) {
        const alias = Object.prototype.hasOwnProperty.call(m, 'alias') ? toNumber(m.alias as Parameters<typeof toNumber>[0]) : undefined
        name = alias === undefined ? undefined : born.aliases.get(alias)
        if (name === undefined) {
          this.#ctx.reject('sparkplug_alias')
          this.#rebirth(node)
          continue
        }
      }
      if (m.isNull === true) continue
      const datatype = Object.prototype.hasOwnProperty.call(m, 'datatype') ? Number(m.datatype) : born.types.get(name)
      const value = datatype === undefined ? undefined : metricValue(m, datatype)
      if (value === undefined) continue
      if (typeof value === 'number' && !Number.isFinite(value)) {
        this.#ctx.reject('non_finite')
        continue
      }
      const fields: Fields = { group: node.group, node: node.node, device, name, value }
      const ts = Object.prototype.hasOwnProperty.call(m, 'timestamp') ? toNumber(m.timestamp as Parameters<typeof toNumber>[0]) : payloadTs
      if (ts !== undefined) fields.timestamp = ts
      out.push(fields)
    }
    return out
  }
}

/** Records the aliases and datatypes a BIRTH declares. */
function learn (born: Born, metrics: WireMetric[]): void {
  born.aliases.clear()
  born.types.clear()
  for (const m of metrics) {
    if (!Object.prototype.hasOwnProperty.call(m, 'name')) continue
    const name = String(m.name)
    if (Object.prototype.hasOwnProperty.call(m, 'alias')) born.aliases.set(toNumber(m.alias as Parameters<typeof toNumber>[0])!, name)
    if (Object.prototype.hasOwnProperty.call(m, 'datatype')) born.types.set(name, Number(m.datatype))
  }
}

const decoders = new WeakMap<PayloadDecoder, SparkplugDecoder>()

/** The Sparkplug state behind a decoder made by this format; undefined for any other decoder. */
export function sparkplugState (decoder: PayloadDecoder | undefined): SparkplugDecoder | undefined {
  return decoder === undefined ? undefined : decoders.get(decoder)
}

export const sparkplug: PayloadFormatDef<'sparkplug'> = {
  name: 'sparkplug',
  describe: 'Sparkplug B on spBv1.0/…: each metric of a BIRTH or DATA one reading',
  stateful: true,
  create: (ctx) => {
    const d = new SparkplugDecoder(ctx)
    decoders.set(d.decode, d)
    return d.decode
  }
}

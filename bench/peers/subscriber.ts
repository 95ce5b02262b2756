/**
 * The hand-written peer of the edge agent (bench/peers.ts): what a user would write instead of running
 * fogmesh, an mqtt.js subscriber that keeps the edge part's windows in a Map. Same input (readings
 * `{"device","value","ts"}` on sensors/<room>/temperature, from the broker at --url), same windows
 * (tumbling 10 s by event time, keyed by device, 1 s of lateness behind the highest event time seen),
 * same six aggregates per window (count, avg, min, max, p95 of value, distinct rooms); a window's
 * results go into a Map when the watermark passes its end. No durability, no API, no upstream.
 *
 *   node bench/peers/subscriber.ts --url mqtt://127.0.0.1:1883
 *
 * stdout: `ready peer http=<url>` once subscribed; GET <url>/metrics gives its counters in the
 * Prometheus text format, as the agent's do.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { parseArgs } from 'node:util'
import { connectAsync } from 'mqtt'

const WINDOW_MS = 10_000
const LATENESS_MS = 1_000
const TOPIC = 'sensors/+/temperature'

interface Acc {
  n: number
  sum: number
  low: number
  high: number
  values: number[]
  rooms: Set<string>
}

interface Result {
  n: number
  mean: number
  low: number
  high: number
  p95: number
  devices: number
}

const { values: args } = parseArgs({ options: { url: { type: 'string' } } })
if (args.url === undefined) {
  process.stderr.write('usage: node bench/peers/subscriber.ts --url mqtt://host:port\n')
  process.exit(2)
}

/** Open windows: window start -> device -> accumulator. */
const open = new Map<number, Map<string, Acc>>()
const results = new Map<string, Result>()
let messages = 0
let readings = 0
let late = 0
let invalid = 0
let emitted = 0
let maxTs = -Infinity
let watermark = -Infinity

/** Nearest-rank percentile of unsorted values. */
function percentile (xs: number[], q: number): number {
  const s = xs.slice().sort((a, b) => a - b)
  return s[Math.max(0, Math.ceil(q * s.length) - 1)]
}

function closeUpTo (wm: number): void {
  for (const [start, byKey] of open) {
    if (start + WINDOW_MS > wm) continue
    for (const [device, a] of byKey) {
      results.set(`${device}@${start}`, { n: a.n, mean: a.sum / a.n, low: a.low, high: a.high, p95: percentile(a.values, 0.95), devices: a.rooms.size })
      emitted++
    }
    open.delete(start)
  }
}

function onMessage (topic: string, payload: Buffer): void {
  messages++
  let r: { device?: unknown, value?: unknown, ts?: unknown }
  try {
    r = JSON.parse(payload.toString())
  } catch {
    invalid++
    return
  }
  const { device, value, ts } = r
  if (typeof device !== 'string' || typeof value !== 'number' || typeof ts !== 'number' || !Number.isFinite(value)) {
    invalid++
    return
  }
  const start = ts - (ts % WINDOW_MS)
  if (start + WINDOW_MS <= watermark) {
    late++
    return
  }
  const room = topic.split('/')[1]
  let byKey = open.get(start)
  if (byKey === undefined) open.set(start, byKey = new Map())
  let a = byKey.get(device)
  if (a === undefined) byKey.set(device, a = { n: 0, sum: 0, low: Infinity, high: -Infinity, values: [], rooms: new Set() })
  a.n++
  a.sum += value
  if (value < a.low) a.low = value
  if (value > a.high) a.high = value
  a.values.push(value)
  a.rooms.add(room)
  readings++
  if (ts > maxTs) {
    maxTs = ts
    const wm = maxTs - LATENESS_MS
    // Windows only close when the watermark crosses a window boundary.
    if (Math.floor(wm / WINDOW_MS) !== Math.floor(watermark / WINDOW_MS)) closeUpTo(wm)
    watermark = wm
  }
}

const client = await connectAsync(args.url, { clientId: `bench-peer-${process.pid}`, clean: true, reconnectPeriod: 0, connectTimeout: 10_000 })
client.on('message', onMessage)
client.on('error', err => process.stderr.write(`peer: ${err.message}\n`))
await client.subscribeAsync(TOPIC, { qos: 0 })

const server = createServer((req, res) => {
  let openWindows = 0
  for (const byKey of open.values()) openWindows += byKey.size
  res.setHeader('content-type', 'text/plain')
  res.end(`peer_messages_total ${messages}\npeer_readings_total ${readings}\npeer_readings_late_total ${late}\npeer_invalid_total ${invalid}\n` +
    `peer_windows_emitted_total ${emitted}\npeer_open_windows ${openWindows}\npeer_results ${results.size}\n`)
})
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`ready peer http=http://127.0.0.1:${(server.address() as AddressInfo).port}\n`)
})
const stop = (): void => {
  server.close()
  client.end(true, {}, () => process.exit(0))
  setTimeout(() => process.exit(0), 2_000).unref()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)

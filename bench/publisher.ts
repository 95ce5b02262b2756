/**
 * The benchmark's load: pre-generates every PUBLISH packet, connects once, then on `go` (a stdin line)
 * writes them over the one connection as fast as the socket drains. QoS 0, so the broker's reading
 * speed is the only brake (TCP backpressure: the next chunk waits for 'drain').
 *
 *   node bench/publisher.ts --url mqtt://127.0.0.1:1883 --readings 200000 --keys 1000
 *
 * stdout: `ready readings=N bytes=B`, then `written ms=T bytes=B` once the last byte is handed to the
 * kernel. It then stays connected until `stop` (or stdin closes), so a broker still working through
 * its socket buffer is never cut off.
 */
import { once } from 'node:events'
import { connect } from 'node:net'
import type { Socket } from 'node:net'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { connectPacket, DISCONNECT, publishSize, writePublish } from './lib.ts'
import { createRng } from '../simulators/random.ts'

/** Large enough to amortize write calls, small enough that 'drain' paces us closely. */
const CHUNK = 64 * 1024
const ROOMS = 50
/** 2026-01-01T00:00:00Z; a multiple of every window size the bench uses. */
const EPOCH = 1_767_225_600_000

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    readings: { type: 'string', default: '200000' },
    keys: { type: 'string', default: '1000' },
    // Event time advances one slot per `per-slot` readings: 1,000 readings per 100 ms by default.
    'per-slot': { type: 'string', default: '1000' },
    'slot-ms': { type: 'string', default: '100' },
    // Starting 8 s into a 10 s window makes the first windows close within the first 3 s of event time.
    'offset-ms': { type: 'string', default: '8000' },
    seed: { type: 'string', default: '1' }
  }
})

function fail (message: string): never {
  process.stderr.write(`publisher: ${message}\n`)
  process.exit(1)
}


interface Workload {
  stream: Buffer
  readings: number
}

/**
 * Readings cycle through the keys in a scrambled but complete order (a stride coprime to the key
 * count), so every key sees one reading per `keys` readings. Within a slot, event times are jittered
 * by less than the slot, which keeps them out of order by far less than the pipeline's lateness.
 */
function generate (readings: number, keys: number, perSlot: number, slotMs: number, offsetMs: number, seed: number): Workload {
  const random = createRng(seed).next
  let stride = 7919
  while (gcd(stride, keys) !== 1) stride += 2
  const topics = Array.from({ length: ROOMS }, (_, i) => `sensors/room${i}/temperature`)
  const packets: Array<[string, string]> = new Array(readings)
  let size = 0
  for (let i = 0; i < readings; i++) {
    const device = (i * stride) % keys
    const slot = Math.floor(i / perSlot)
    const ts = EPOCH + offsetMs + slot * slotMs + Math.floor(random() * slotMs)
    const value = (18 + 8 * random()).toFixed(2)
    const topic = topics[device % ROOMS]
    const payload = `{"device":"d${device}","value":${value},"ts":${ts}}`
    packets[i] = [topic, payload]
    size += publishSize(topic, payload)
  }
  const stream = Buffer.allocUnsafe(size)
  let offset = 0
  for (const [topic, payload] of packets) offset = writePublish(stream, offset, topic, payload)
  if (offset !== size) fail(`encoded ${offset} bytes, expected ${size}`)
  return { stream, readings }
}

function gcd (a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b]
  return a
}

async function connectMqtt (url: string): Promise<Socket> {
  const u = new URL(url)
  const socket = connect({ host: u.hostname, port: Number(u.port || 1883), noDelay: true })
  await Promise.race([
    once(socket, 'connect'),
    new Promise((_resolve, reject) => setTimeout(() => reject(new Error(`no TCP connection to ${url} within 10 s`)), 10_000).unref())
  ])
  socket.write(connectPacket(`bench-pub-${process.pid}`))
  // CONNACK is 4 bytes: 0x20, 0x02, session present, return code.
  const ack = await new Promise<Buffer>((resolve, reject) => {
    let got = Buffer.alloc(0)
    const timer = setTimeout(() => reject(new Error(`no CONNACK from ${url} within 10 s`)), 10_000)
    const onData = (d: Buffer): void => {
      got = Buffer.concat([got, d])
      if (got.length < 4) return
      clearTimeout(timer)
      socket.off('data', onData)
      resolve(got)
    }
    socket.on('data', onData)
  })
  if (ack[0] !== 0x20 || ack[3] !== 0) throw new Error(`connection refused by ${url}: CONNACK ${ack.subarray(0, 4).toString('hex')}`)
  // Nothing else comes back for QoS 0; keep reading so the socket never stalls on a full receive buffer.
  socket.resume()
  return socket
}

async function main (): Promise<void> {
  if (values.url === undefined) fail('--url is required')
  const int = (name: keyof typeof values): number => {
    const n = Number(values[name])
    if (!Number.isInteger(n) || n < 0) fail(`--${name}: expected a whole number, got ${String(values[name])}`)
    return n
  }
  const { stream, readings } = generate(int('readings'), Math.max(1, int('keys')), Math.max(1, int('per-slot')), int('slot-ms'), int('offset-ms'), int('seed'))
  const socket = await connectMqtt(values.url)
  let finished = false
  socket.on('error', err => { if (!finished) fail(`socket error: ${err.message}`) })
  socket.on('close', () => { if (!finished) fail('the broker closed the connection') })

  const input = createInterface({ input: process.stdin })
  const commands = input[Symbol.asyncIterator]()
  const next = async (): Promise<string> => {
    const r = await commands.next()
    return r.done === true ? 'stop' : r.value.trim()
  }
  process.stdout.write(`ready readings=${readings} bytes=${stream.length}\n`)

  if (await next() === 'go') {
    const t0 = performance.now()
    for (let offset = 0; offset < stream.length; offset += CHUNK) {
      if (!socket.write(stream.subarray(offset, offset + CHUNK))) await once(socket, 'drain')
    }
    process.stdout.write(`written ms=${(performance.now() - t0).toFixed(1)} bytes=${stream.length}\n`)
    while (await next() !== 'stop') { /* only stop ends the connection */ }
  }
  finished = true
  socket.end(DISCONNECT)
  input.close()
  // The broker may take its time closing; we have nothing left to say.
  setTimeout(() => process.exit(0), 2_000).unref()
}

main().catch((err: unknown) => fail((err as Error).message))

/**
 * The edge's embedded broker under clients that try to make it hold too much: a PUBLISH announcing
 * 200 MB, QoS 2 publishes never released, packets piled up before the session starts, and more
 * connections than allowed. Each is disconnected and counted, and the broker keeps serving others.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { connect } from 'node:net'
import type { Socket } from 'node:net'
import mqtt from 'mqtt'
import t from 'tap'
import { PacketSizeGuard } from '../edge-agent/broker.ts'
import { fetchMetric } from './helpers/ground-truth.ts'
import { sleep, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'
import { remainingLength } from '../bench/lib.ts'

const PIPELINES = new URL('fixtures/all-windows.yaml', import.meta.url).pathname

function varint (n: number): Buffer {
  return Buffer.from(remainingLength(n))
}

function str (s: string): Buffer {
  const b = Buffer.from(s)
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b])
}

function packet (type: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([type]), varint(body.length), body])
}

/** CONNECT, MQTT 3.1.1, clean session, keepalive 60 s. */
function connectPacket (clientId: string): Buffer {
  return packet(0x10, Buffer.concat([str('MQTT'), Buffer.from([4, 0x02, 0, 60]), str(clientId)]))
}

function publishPacket (topic: string, payload: Buffer, qos: 0 | 2 = 0, id = 1): Buffer {
  const head = qos === 2 ? Buffer.concat([str(topic), Buffer.from([id >> 8, id & 0xff])]) : str(topic)
  return packet(qos === 2 ? 0x34 : 0x30, Buffer.concat([head, payload]))
}

interface Raw {
  socket: Socket
  closed: Promise<void>
  /** Bytes received so far. */
  received: () => Buffer
}

async function raw (url: string): Promise<Raw> {
  const { hostname, port } = new URL(url)
  const socket = connect({ host: hostname, port: Number(port) })
  socket.on('error', () => {})
  const chunks: Buffer[] = []
  socket.on('data', (c: Buffer) => chunks.push(c))
  const closed = new Promise<void>(resolve => socket.once('close', () => resolve()))
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', reject)
  })
  return { socket, closed, received: () => Buffer.concat(chunks) }
}

/** Resolves true once the socket closed, false if it is still open after `ms`. */
async function closedWithin (r: Raw, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const result = await Promise.race([r.closed.then(() => true), new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(false), ms) })])
  clearTimeout(timer)
  return result
}

async function connected (url: string, id: string): Promise<Raw> {
  const r = await raw(url)
  r.socket.write(connectPacket(id))
  await waitFor(() => r.received().length >= 4, { timeoutMs: 5_000, message: `CONNACK for ${id}` })
  return r
}

function peakRss (pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (m === null) throw new Error('no VmHWM in /proc/<pid>/status')
  return Number(m[1]) * 1024
}

async function closedCount (edge: RunningProcess, reason: string): Promise<number> {
  return (await fetchMetric(edge.http, 'fogmesh_broker_connections_closed_total')).get(`{reason="${reason}"}`) ?? 0
}

t.test('the packet guard follows fixed headers across chunks', async t => {
  const ok = Buffer.concat([connectPacket('c'), publishPacket('a/b', Buffer.alloc(1000)), publishPacket('a/b', Buffer.alloc(100_000)), Buffer.from([0xc0, 0x00])])
  const whole = new PacketSizeGuard(200_000)
  t.equal(whole.feed(ok), -1, 'packets under the limit pass')
  const bytewise = new PacketSizeGuard(200_000)
  t.ok([...ok].every(b => bytewise.feed(Buffer.from([b])) === -1), 'also a byte at a time')
  const over = new PacketSizeGuard(200_000)
  t.equal(over.feed(Buffer.concat([ok, Buffer.from([0x30, 0xff, 0xff])])), -1, 'not yet known to be over')
  t.ok(over.feed(Buffer.from([0xff])) > 200_000, 'over once the lower bound of the length is')
  const split = new PacketSizeGuard(100_000)
  t.equal(split.feed(Buffer.from([0x30])), -1)
  t.equal(split.feed(varint(100_001)), 100_001, 'a length split from its type byte')
})

t.test('the embedded broker bounds what a client can make it hold', { timeout: 90_000 }, async t => {
  const dir = await tmpDir('fogmesh-broker-limits-')
  t.teardown(() => dir.cleanup())
  const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', PIPELINES, '--http-port', '0', '--mqtt-port', '0', '--data-dir', join(dir.path, 'data'),
    '--mqtt-max-inflight', '5', '--mqtt-max-queued', '4', '--mqtt-max-connections', '12'])
  t.teardown(async () => {
    if (edge.proc.exitCode === null && edge.proc.signalCode === null) await edge.stop().catch(() => edge.kill('SIGKILL'))
  })
  const url = edge.mqtt!
  const client = await mqtt.connectAsync(url, { clientId: 'sensor-1', reconnectPeriod: 0, connectTimeout: 5_000 })
  t.teardown(() => client.endAsync(true))
  const reading = (i: number): string => JSON.stringify({ device: 'd1', value: 20 + i, humidity: 40, ts: Date.now() })
  const messages = async (): Promise<number> => (await fetchMetric(edge.http, 'fogmesh_mqtt_messages_total')).get('') ?? 0
  for (let i = 0; i < 20; i++) await client.publishAsync('sensors/r1/temperature', reading(i), { qos: 1 })
  await waitFor(async () => (await messages()) >= 20, { message: 'the warm-up readings' })

  await t.test('a PUBLISH announcing 200 MB is cut off at its header', async t => {
    const before = peakRss(edge.proc.pid!)
    const r = await connected(url, 'big-1')
    const announced = 200 * 1024 * 1024
    const topic = str('sensors/r1/temperature')
    r.socket.write(Buffer.concat([Buffer.from([0x30]), varint(topic.length + announced), topic]))
    // Streams up to 64 MB of the body: far more than the bound below, so that buffering it would show.
    const chunk = Buffer.alloc(256 * 1024, 0x41)
    let sent = 0
    const started = Date.now()
    while (sent < 64 * 1024 * 1024 && !r.socket.destroyed && Date.now() - started < 20_000) {
      if (!r.socket.write(chunk)) {
        await Promise.race([new Promise(resolve => r.socket.once('drain', resolve)), r.closed, sleep(1_000)])
      }
      sent += chunk.length
    }
    t.ok(await closedWithin(r, 5_000), 'the broker closed the connection')
    t.ok(sent < 64 * 1024 * 1024, `closed after ${(sent / 1e6).toFixed(1)} MB of the 200 MB were sent`)
    const after = peakRss(edge.proc.pid!)
    t.comment(`edge peak RSS ${(before / 1e6).toFixed(0)} MB -> ${(after / 1e6).toFixed(0)} MB (+${((after - before) / 1e6).toFixed(1)} MB)`)
    t.ok(after - before < 32e6, `peak RSS grew by ${((after - before) / 1e6).toFixed(1)} MB, less than 32 MB`)
    t.equal(await closedCount(edge, 'packet_too_large'), 1, 'counted')
  })

  await t.test('a payload over --max-payload but within the packet room is refused as a reading, not a connection', async t => {
    const r = await connected(url, 'big-2')
    r.socket.write(publishPacket('sensors/r1/temperature', Buffer.alloc(100 * 1024, 0x20)))
    t.notOk(await closedWithin(r, 500), 'still connected')
    r.socket.destroy()
    await waitFor(async () => ((await fetchMetric(edge.http, 'fogmesh_readings_rejected_total')).get('{reason="too_large"}') ?? 0) >= 1, { message: 'a too_large rejection' })
  })

  await t.test('QoS 2 publishes never released: disconnected past --mqtt-max-inflight', async t => {
    const r = await connected(url, 'unreleased')
    for (let id = 1; id <= 10; id++) r.socket.write(publishPacket('sensors/r1/temperature', Buffer.from(reading(id)), 2, id))
    t.ok(await closedWithin(r, 5_000), 'closed')
    await waitFor(async () => (await closedCount(edge, 'inflight_limit')) === 1, { message: 'inflight_limit counted' })
  })

  await t.test('packets piled up before the session starts: disconnected past --mqtt-max-queued', async t => {
    const r = await raw(url)
    const pings = Array.from({ length: 20 }, () => Buffer.from([0xc0, 0x00]))
    r.socket.write(Buffer.concat([connectPacket('eager'), ...pings]))
    t.ok(await closedWithin(r, 5_000), 'closed')
    await waitFor(async () => (await closedCount(edge, 'queue_limit')) === 1, { message: 'queue_limit counted' })
  })

  await t.test('connections over --mqtt-max-connections are closed at once', async t => {
    const open: Raw[] = []
    t.teardown(() => { for (const r of open) r.socket.destroy() })
    // The warm-up client holds one of the 12.
    for (let i = 0; i < 11; i++) open.push(await raw(url))
    const extra = await raw(url)
    t.ok(await closedWithin(extra, 5_000), 'the 13th connection is closed')
    await waitFor(async () => (await closedCount(edge, 'max_connections')) >= 1, { message: 'max_connections counted' })
    for (const r of open) r.socket.destroy()
    await Promise.all(open.map(r => r.closed))
  })

  await t.test('the broker still serves other clients', async t => {
    const seen = await messages()
    await client.publishAsync('sensors/r1/temperature', reading(99), { qos: 1 })
    const fresh = await mqtt.connectAsync(url, { clientId: 'sensor-2', reconnectPeriod: 0, connectTimeout: 5_000 })
    await fresh.publishAsync('sensors/r2/temperature', reading(98), { qos: 2 })
    await fresh.endAsync()
    await waitFor(async () => (await messages()) >= seen + 2, { message: 'readings after the attacks' })
    t.pass('readings still arrive')
  })
  t.equal(await edge.stop(), 0, 'stops cleanly')
})

/**
 * Publishing the generated streams: one MQTT connection per broker, so each broker receives its
 * messages in exactly the generated order (one client publishes in call order, and a broker keeps a
 * client's order).
 */
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { connectAsync } from 'mqtt'
import type { MqttClient } from 'mqtt'
import { FogmeshError } from '../core/errors.ts'
import type { Message } from './generator.ts'

/** Publishes allowed to wait for their ack at once: enough to keep a LAN busy, bounded memory. */
const MAX_IN_FLIGHT = 256

export class SimulatorError extends FogmeshError {
  constructor (message: string, options?: ErrorOptions) {
    super('sim_failed', message, options)
  }
}

export interface Connection {
  url: string
  client: MqttClient
}

export async function connectBroker (url: string, index: number, signal?: AbortSignal): Promise<Connection> {
  signal?.throwIfAborted()
  try {
    const client = await connectAsync(url, {
      clientId: `fogmesh-sim-${index}-${randomBytes(4).toString('hex')}`,
      clean: true,
      // A reconnect could resend or reorder in-flight messages; a failed run is better than a wrong truth.
      reconnectPeriod: 0,
      connectTimeout: 10_000
    })
    return { url, client }
  } catch (err) {
    throw new SimulatorError(`cannot connect to ${url}: ${(err as Error).message}`, { cause: err })
  }
}

export async function disconnect (c: Connection, force = false): Promise<void> {
  try {
    await c.client.endAsync(force)
  } catch {}
}

export interface PublishOptions {
  qos: 0 | 1 | 2
  /** Event time per wall-clock time; 0 = as fast as the broker acks. */
  speed: number
  /** Event-time origin of the schedule, epoch ms. */
  origin: number
  /** Wall-clock time (epoch ms) that corresponds to `origin`. */
  wallStart: number
  signal?: AbortSignal
}

/** Publishes `messages` in order and resolves when the broker has acked every one. */
export async function publishStream (c: Connection, messages: readonly Message[], o: PublishOptions): Promise<void> {
  const pending = new Set<Promise<void>>()
  let failure: unknown
  // Acks never come once the connection is gone (there is no reconnect), and an abort must not wait
  // for them either: every wait below also races this.
  let stop: (err: Error) => void = () => {}
  const stopped = new Promise<never>((_resolve, reject) => { stop = reject })
  stopped.catch(() => {})
  const onClose = (): void => stop(new SimulatorError(`connection to ${c.url} closed before every message was acked`))
  const onAbort = (): void => stop(o.signal?.reason instanceof Error ? o.signal.reason : new Error('aborted'))
  c.client.on('close', onClose)
  o.signal?.addEventListener('abort', onAbort)
  try {
    o.signal?.throwIfAborted()
    for (const m of messages) {
      if (o.speed > 0) {
        const wait = o.wallStart + (m.due - o.origin) / o.speed - Date.now()
        if (wait > 0) await Promise.race([sleep(wait, undefined, { signal: o.signal }), stopped])
      }
      if (failure !== undefined) break
      const payload = Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength)
      const p: Promise<void> = c.client.publishAsync(m.topic, payload, { qos: o.qos }).then(
        () => { pending.delete(p) },
        (err: unknown) => { failure ??= err; pending.delete(p) })
      pending.add(p)
      if (pending.size >= MAX_IN_FLIGHT) await Promise.race([Promise.race(pending), stopped])
    }
    await Promise.race([Promise.all(pending), stopped])
  } finally {
    c.client.off('close', onClose)
    o.signal?.removeEventListener('abort', onAbort)
  }
  if (failure !== undefined) throw new SimulatorError(`publishing to ${c.url} failed: ${(failure as Error).message}`, { cause: failure })
}

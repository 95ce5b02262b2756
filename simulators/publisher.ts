/**
 * Publishing to the brokers: one MQTT connection per broker, so each broker receives its messages in
 * exactly the order they are sent (one client publishes in call order, and a broker keeps a client's
 * order). A Sender bounds the publishes waiting for their ack, so a producer that awaits it runs at
 * the brokers' pace with bounded memory, however long the run.
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

/**
 * Publishes messages on one connection in call order. `send` resolves at once while fewer than
 * MAX_IN_FLIGHT publishes wait for their ack, else when one is acked; it rejects once the connection
 * closed, a publish failed or the signal aborted. `flush` waits for every ack. Call `close` when done.
 */
export class Sender {
  readonly #c: Connection
  readonly #qos: 0 | 1 | 2
  readonly #signal: AbortSignal | undefined
  #inFlight = 0
  #failure: Error | undefined
  #wake: (() => void) | undefined
  readonly #onClose = (): void => this.#fail(new SimulatorError(`connection to ${this.#c.url} closed before every message was acked`))
  readonly #onAbort = (): void => this.#fail(this.#signal?.reason instanceof Error ? this.#signal.reason : new Error('aborted'))

  constructor (c: Connection, qos: 0 | 1 | 2, signal?: AbortSignal) {
    this.#c = c
    this.#qos = qos
    this.#signal = signal
    // Acks never come once the connection is gone (there is no reconnect), and an abort must not wait
    // for them either: both end every wait.
    c.client.on('close', this.#onClose)
    signal?.addEventListener('abort', this.#onAbort)
    if (signal?.aborted === true) this.#onAbort()
    // Gone already (a broker that dropped us while we were busy): publishes would never settle.
    if (!c.client.connected) this.#onClose()
  }

  #fail (err: Error): void {
    this.#failure ??= err
    this.#wake?.()
  }

  #check (): void {
    const f = this.#failure
    if (f === undefined) return
    if (f instanceof SimulatorError || f === this.#signal?.reason) throw f
    throw new SimulatorError(`publishing to ${this.#c.url} failed: ${f.message}`, { cause: f })
  }

  async #until (done: () => boolean): Promise<void> {
    while (!done() && this.#failure === undefined) {
      await new Promise<void>(resolve => { this.#wake = resolve })
      this.#wake = undefined
    }
    this.#check()
  }

  /** Undefined when the message went out without waiting (no promise per message on the fast path). */
  send (m: Pick<Message, 'topic' | 'payload'>): Promise<void> | undefined {
    this.#check()
    const payload = Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength)
    this.#inFlight++
    this.#c.client.publishAsync(m.topic, payload, { qos: this.#qos }).then(
      () => { this.#settled() },
      (err: unknown) => { this.#failure ??= err instanceof Error ? err : new Error(String(err)); this.#settled() })
    if (this.#inFlight >= MAX_IN_FLIGHT) return this.#until(() => this.#inFlight < MAX_IN_FLIGHT)
    return undefined
  }

  #settled (): void {
    this.#inFlight--
    this.#wake?.()
  }

  async flush (): Promise<void> {
    await this.#until(() => this.#inFlight === 0)
  }

  close (): void {
    this.#c.client.off('close', this.#onClose)
    this.#signal?.removeEventListener('abort', this.#onAbort)
  }
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

/** When a message is due on the wall clock: wallStart + (due − origin) / speed; at speed 0, now. */
export function scheduledAt (due: number, o: Pick<PublishOptions, 'speed' | 'origin' | 'wallStart'>): number {
  return o.speed > 0 ? o.wallStart + (due - o.origin) / o.speed : o.wallStart
}

/** Publishes `messages` in order, each at its time, and resolves when the broker has acked every one. */
export async function publishStream (c: Connection, messages: Iterable<Message>, o: PublishOptions): Promise<void> {
  const sender = new Sender(c, o.qos, o.signal)
  try {
    for (const m of messages) {
      if (o.speed > 0) {
        const wait = scheduledAt(m.due, o) - Date.now()
        if (wait > 0) await sleep(wait, undefined, { signal: o.signal })
      }
      const p = sender.send(m)
      if (p !== undefined) await p
    }
    await sender.flush()
  } finally {
    sender.close()
  }
}

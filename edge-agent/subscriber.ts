/**
 * Readings from an existing broker (Mosquitto, EMQX, ...): one mqtt.js client with a persistent session
 * (clean: false, a stable client id, QoS 1 subscriptions), so the broker keeps readings for the agent
 * while it restarts or the link is down, and the client reconnects by itself.
 *
 * mqtt.js (a few MB resident) is loaded when the subscriber starts: an edge with the embedded broker
 * never needs it for its input.
 */
import type { MqttClient } from 'mqtt'
import type { Logger } from '../server/shell/log.ts'
import type { ClientTls } from '../server/shell/tls.ts'
import type { MessageHandler, MessageSource } from './source.ts'

export interface SubscriberOptions {
  url: string
  clientId: string
  /** Plain MQTT filters to subscribe to (one per pipeline). */
  filters: () => string[]
  connectTimeout: number
  log: Logger
  /** For an mqtts:// broker: the CA that verifies it (default: the system's), and this edge's certificate. */
  tls?: ClientTls
}

export class BrokerSubscriber implements MessageSource {
  readonly #options: SubscriberOptions
  #client?: MqttClient
  /** Connection events, for metrics. */
  readonly stats = { connects: 0, disconnects: 0 }

  constructor (options: SubscriberOptions) {
    this.#options = options
  }

  get url (): string {
    const u = new URL(this.#options.url)
    u.username = ''
    u.password = ''
    return u.toString().replace(/\/$/, '')
  }

  async start (onMessage: MessageHandler): Promise<void> {
    const { default: mqtt } = await import('mqtt')
    const client = mqtt.connect(this.#options.url, {
      clientId: this.#options.clientId,
      clean: false,
      reconnectPeriod: 1_000,
      connectTimeout: this.#options.connectTimeout,
      // mqtt.js verifies an mqtts:// broker's certificate (rejectUnauthorized) against these CAs.
      ...this.#options.tls?.ca !== undefined ? { ca: this.#options.tls.ca } : {},
      ...this.#options.tls?.cert !== undefined ? { cert: this.#options.tls.cert, key: this.#options.tls.key } : {},
      rejectUnauthorized: true
    })
    this.#client = client
    client.on('message', (topic, payload) => onMessage(topic, payload, Date.now()))
    const log = this.#options.log
    let connected = false
    // mqtt.js retries every second: the same error again is not news.
    let lastError: string | undefined
    client.on('close', () => {
      this.stats.disconnects++
      if (connected) log.warn('mqtt.disconnected', `${this.url}: connection lost; reconnecting`, { url: this.url })
      connected = false
    })
    client.on('error', (err) => {
      const reason = errorReason(err)
      const level = reason === lastError ? 'debug' : 'warn'
      lastError = reason
      log[level]('mqtt.error', `${this.url}: ${reason}`, { url: this.url, reason })
    })
    client.on('connect', (connack) => {
      this.stats.connects++
      connected = true
      lastError = undefined
      log.info('mqtt.connected', `${this.url}: connected${connack.sessionPresent ? ' (session kept)' : ''}`, { url: this.url, sessionPresent: connack.sessionPresent })
      // A present session still holds our subscriptions (and the readings queued for them).
      if (!connack.sessionPresent) {
        this.resubscribe().catch((err: Error) => { log.error('mqtt.subscribe_failed', `${this.url}: ${err.message}`, { url: this.url, reason: err.message }) })
      }
    })
    // The agent serves its API whether or not the broker is up; mqtt.js keeps reconnecting.
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        log.warn('mqtt.unreachable', `${this.url}: not reachable yet, retrying in the background`, { url: this.url })
        resolve()
      }, this.#options.connectTimeout)
      client.once('connect', () => {
        clearTimeout(timer)
        resolve()
      })
    })
  }

  /** Subscribes to the current filters (at connect without a session, and after pipelines change). */
  async resubscribe (): Promise<void> {
    const client = this.#client
    const filters = this.#options.filters()
    if (filters.length === 0 || client === undefined || !client.connected) return
    const granted = await client.subscribeAsync(filters, { qos: 1 })
    const refused = granted.filter(g => g.qos === 128)
    if (refused.length > 0) throw new Error(`broker refused subscriptions: ${refused.map(g => g.topic).join(', ')}`)
  }

  async publish (topic: string, payload: Buffer, qos: 0 | 1 | 2, retain: boolean): Promise<void> {
    await this.#client?.publishAsync(topic, payload, { qos, retain })
  }

  async stop (): Promise<void> {
    await this.#client?.endAsync()
  }
}

/**
 * An error's cause in one line: OpenSSL's alerts (the broker refused our certificate) carry their
 * words in `reason`, while their message adds OpenSSL's source file and line.
 */
function errorReason (err: Error): string {
  const { reason } = err as Error & { reason?: unknown }
  return typeof reason === 'string' && reason !== '' ? reason : err.message.split('\n')[0].trim()
}

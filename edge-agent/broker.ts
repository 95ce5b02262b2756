/**
 * The embedded MQTT broker (aedes) that sensors publish to. With users configured it authenticates
 * every client and enforces per-user publish and subscribe topic rules; without, access is anonymous.
 */
import { timingSafeEqual } from 'node:crypto'
import { createServer } from 'node:net'
import type { AddressInfo, Server } from 'node:net'
import { Aedes } from 'aedes'
import type { AuthenticateError, Client, PublishPacket, Subscription } from 'aedes'
import { compileTopicFilter, filterCovers } from '../core/topic.ts'
import type { BrokerUser } from './config.ts'
import type { MessageHandler, MessageSource } from './source.ts'

export interface BrokerOptions {
  host: string
  port: number
  users: BrokerUser[]
}

function same (a: string, b: string): boolean {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}

export class EmbeddedBroker implements MessageSource {
  readonly #options: BrokerOptions
  readonly #users: Map<string, BrokerUser & { canPublish: (topic: string) => boolean }>
  #broker?: Aedes
  #server?: Server
  #url = ''
  /** Authentication and authorization failures, for metrics. */
  readonly denied = { connect: 0, publish: 0, subscribe: 0 }

  constructor (options: BrokerOptions) {
    this.#options = options
    this.#users = new Map(options.users.map(u => {
      const filters = u.publish.map(f => compileTopicFilter(f))
      return [u.username, { ...u, canPublish: (topic: string) => filters.some(f => f.match(topic) !== undefined) }]
    }))
  }

  get url (): string {
    return this.#url
  }

  async start (onMessage: MessageHandler): Promise<void> {
    const broker = await Aedes.createBroker({ heartbeatInterval: 60_000, drainTimeout: 30_000, maxClientsIdLength: 128 })
    this.#broker = broker
    if (this.#users.size > 0) {
      broker.authenticate = (client: Client, username: string | undefined, password: Buffer | undefined, done: (err: AuthenticateError | null, ok: boolean) => void) => {
        const user = username === undefined ? undefined : this.#users.get(username)
        if (user !== undefined && password !== undefined && same(password.toString('utf8'), user.password)) {
          ;(client as Client & { fogmeshUser?: string }).fogmeshUser = user.username
          done(null, true)
          return
        }
        this.denied.connect++
        const err = new Error('bad username or password') as AuthenticateError
        err.returnCode = 4
        done(err, false)
      }
    }
    broker.authorizePublish = (client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void) => {
      if (packet.topic.startsWith('$SYS')) {
        done(new Error('$SYS topics are reserved'))
        return
      }
      const user = this.#userOf(client)
      if (user !== undefined && !user.canPublish(packet.topic)) {
        this.denied.publish++
        done(new Error(`user ${user.username} may not publish to ${packet.topic}`))
        return
      }
      done(null)
    }
    broker.authorizeSubscribe = (client: Client | null, sub: Subscription, done: (err: Error | null, sub?: Subscription | null) => void) => {
      const user = this.#userOf(client)
      if (user !== undefined && !user.subscribe.some(f => filterCovers(f, sub.topic))) {
        this.denied.subscribe++
        done(null, null) // SUBACK 0x80 for this filter; the client stays connected
        return
      }
      done(null, sub)
    }
    // Readings arrive here once aedes accepted them; client is null for the broker's own publishes
    // (heartbeats and our local actions), which are not readings.
    broker.on('publish', (packet: PublishPacket, client: Client | null) => {
      if (client !== null) onMessage(packet.topic, packet.payload as Buffer, Date.now())
    })
    const server = createServer(broker.handle)
    this.#server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.#options.port, this.#options.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    const { port } = server.address() as AddressInfo
    const host = this.#options.host === '0.0.0.0' || this.#options.host === '::' ? '127.0.0.1' : this.#options.host
    this.#url = `mqtt://${host.includes(':') ? `[${host}]` : host}:${port}`
  }

  #userOf (client: Client | null): BrokerUser & { canPublish: (topic: string) => boolean } | undefined {
    if (this.#users.size === 0 || client === null) return undefined
    const name = (client as Client & { fogmeshUser?: string }).fogmeshUser
    return name === undefined ? undefined : this.#users.get(name)
  }

  async publish (topic: string, payload: Buffer, qos: 0 | 1 | 2, retain: boolean): Promise<void> {
    const broker = this.#broker
    if (broker === undefined) return
    await new Promise<void>((resolve, reject) => {
      broker.publish({ cmd: 'publish', topic, payload, qos, retain, dup: false }, (err?: Error) => { if (err != null) reject(err); else resolve() })
    })
  }

  async stop (): Promise<void> {
    const server = this.#server
    const broker = this.#broker
    if (server !== undefined) {
      await new Promise<void>(resolve => {
        server.close(() => resolve())
        broker?.close()
      })
    }
  }
}

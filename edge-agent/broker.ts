/**
 * The embedded MQTT broker (aedes) that sensors publish to. With users configured it authenticates
 * every client and enforces per-user publish and subscribe topic rules; without, access is anonymous.
 *
 * No client can make the broker hold more than a bounded amount for it: a packet is at most
 * `maxPacket` bytes (checked on the fixed header, before its body is read: mqtt-packet buffers a
 * whole packet before anyone sees it, and aedes has no size option), at most `maxInflight` QoS 2
 * publishes wait for their PUBREL, at most `maxQueued` packets wait for the session to start, and at
 * most `maxConnections` connections are open. A client over a bound is disconnected and counted.
 *
 * With `tls` and `tlsPort` the broker also listens for MQTT over TLS there, with the node's
 * certificate; the same users, rules and bounds apply to both listeners (aedes sees one broker).
 *
 * `clients()` lists who is connected (GET /v1/broker, the console's edge view): per client a record
 * made when it connects, with counters the publish path bumps (no allocation per message). The list is
 * bounded by `maxConnections` per listener; of the clients gone, the last RECENT_GONE are kept.
 *
 * The edge's own Sparkplug nodes (emit: sparkplug) are clients too, and must get in whatever the users
 * are: they log in as INTERNAL_USER with a secret made at random for this process (internalLogin), so
 * no password is in the config, the logs or the command line. That user name is reserved (no
 * configured user may take it, and a client presenting it with another password is refused), and its
 * clients may only publish their own node's Sparkplug messages and subscribe to its NCMD: their client
 * id names the node (sparkplugClientId), and no other client may use such an id (it would take the
 * node's connection over). They are listed by clients() like any other, as that user.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto'
import { createServer } from 'node:net'
import type { AddressInfo, Server, Socket } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'
import type { Server as TlsServer } from 'node:tls'
import { Aedes } from 'aedes'
import type { AuthenticateError, Client, PublishPacket, Subscription } from 'aedes'
import { ConfigError } from '../core/errors.ts'
import { nodeOfSparkplugClientId, parseSparkplugTopic, sparkplugTopic } from '../core/formats/sparkplug-wire.ts'
import { compileTopicFilter, filterCovers } from '../core/topic.ts'
import type { Metrics } from '../server/shell/metrics.ts'
import type { ServerTls } from '../server/shell/tls.ts'
import type { BrokerUser } from './config.ts'
import type { MessageHandler, MessageSource } from './source.ts'

export interface BrokerOptions {
  host: string
  port: number
  users: BrokerUser[]
  /** How the edge's own clients (its Sparkplug nodes) log in, whatever `users` are. */
  internal: InternalLogin
  /** Largest remaining length (everything after the fixed header) of a packet, bytes. */
  maxPacket?: number
  /** Most inbound QoS 2 publishes of one client awaiting PUBREL. */
  maxInflight?: number
  /** Most packets of one client queued before its session is established. */
  maxQueued?: number
  /** Most open client connections (of each listener). */
  maxConnections?: number
  /** Port of the MQTT-over-TLS listener (0: any free port); none without it. Needs `tls`. */
  tlsPort?: number
  tls?: ServerTls
}

/** The user name of the edge's own clients; reserved, and shown as such in GET /v1/broker. */
export const INTERNAL_USER = '(fogmesh)'

export interface InternalLogin {
  readonly username: typeof INTERNAL_USER
  readonly password: string
}

/** A login for the edge's own clients, valid for this process only. */
export function internalLogin (): InternalLogin {
  return { username: INTERNAL_USER, password: randomBytes(32).toString('base64url') }
}

/** The messages an Edge Node publishes (NCMD and DCMD are a host's). */
const NODE_PUBLISHES = new Set(['NBIRTH', 'NDEATH', 'NDATA', 'DBIRTH', 'DDEATH', 'DDATA'])

/** Room for a PUBLISH's topic, packet id and properties beside a payload of the largest size. */
export const PACKET_HEADROOM = 64 * 1024

/**
 * Defaults of the bounds, as the edge's flags give them. Packets somewhat over --max-payload are still
 * read, so that the reading is refused and counted as too_large rather than the sensor disconnected.
 */
export const BROKER_LIMITS = { maxPacket: 256 * 1024, maxInflight: 512, maxQueued: 32, maxConnections: 1024 }

/** How long stop waits for clients' connections to end before destroying them, ms. */
const STOP_GRACE = 2_000

/** Disconnected clients kept for GET /v1/broker, newest last. */
export const RECENT_GONE = 20

/** A client of the embedded broker, as GET /v1/broker shows it. */
export interface BrokerClient {
  id: string
  /** The user it authenticated as; null when the broker has no users. */
  user: string | null
  /** Remote address and port. */
  address: string
  listener: 'mqtt' | 'mqtts'
  connectedAt: string
  /** When it went away; only on clients no longer connected. */
  disconnectedAt?: string
  /** Publishes the broker accepted from it. */
  messages: number
  /** Of those, messages rejected as a whole (too large, undecodable) or with a rejected reading. */
  rejected: number
  /** Publishes refused by its user's topic rules. */
  denied: number
  lastMessageAt: string | null
}

interface ClientRecord {
  id: string
  user: string | null
  address: string
  listener: 'mqtt' | 'mqtts'
  connectedAt: number
  disconnectedAt: number
  messages: number
  rejected: number
  denied: number
  lastMessageAt: number
}

function clientJson (r: ClientRecord): BrokerClient {
  const c: BrokerClient = {
    id: r.id,
    user: r.user,
    address: r.address,
    listener: r.listener,
    connectedAt: new Date(r.connectedAt).toISOString(),
    messages: r.messages,
    rejected: r.rejected,
    denied: r.denied,
    lastMessageAt: r.lastMessageAt === 0 ? null : new Date(r.lastMessageAt).toISOString()
  }
  if (r.disconnectedAt !== 0) c.disconnectedAt = new Date(r.disconnectedAt).toISOString()
  return c
}

/** Why the broker closed a connection: the `reason` label of fogmesh_broker_connections_closed_total. */
export type CloseReason = 'packet_too_large' | 'inflight_limit' | 'queue_limit' | 'max_connections'

/**
 * Follows the MQTT fixed headers in a connection's byte stream (type byte, then the remaining length
 * in 1 to 4 bytes of 7 bits, least significant first) and skips each packet's body unread.
 */
export class PacketSizeGuard {
  readonly #max: number
  /** Body bytes of the current packet still to come. */
  #skip = 0
  /** Reading a remaining length (after a type byte). */
  #inLength = false
  #length = 0
  #scale = 1
  #lengthBytes = 0
  /** A malformed length: mqtt-packet refuses it and aedes closes the connection, so stop following. */
  #lost = false

  constructor (max: number) {
    this.#max = max
  }

  /**
   * Takes the next bytes; returns the announced remaining length once it exceeds the limit (a lower
   * bound while its last length bytes are still to come, so a huge packet is caught at once), else -1.
   */
  feed (chunk: Uint8Array): number {
    let i = 0
    while (i < chunk.length && !this.#lost) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, chunk.length - i)
        this.#skip -= n
        i += n
        continue
      }
      const byte = chunk[i++]
      if (!this.#inLength) {
        this.#inLength = true
        this.#length = 0
        this.#scale = 1
        this.#lengthBytes = 0
        continue
      }
      this.#length += (byte & 0x7f) * this.#scale
      this.#scale *= 128
      this.#lengthBytes++
      if (this.#length > this.#max) return this.#length
      if ((byte & 0x80) !== 0) {
        if (this.#lengthBytes === 4) this.#lost = true
        continue
      }
      this.#inLength = false
      this.#skip = this.#length
    }
    return -1
  }
}

/** A client as authenticate tagged it: its user, and for the edge's own clients the node they are. */
type TaggedClient = Client & { fogmeshUser?: string, fogmeshNode?: { group: string, node: string } }

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
  #tlsServer?: TlsServer
  #url = ''
  #tlsUrl: string | undefined
  /** Authentication and authorization failures, for metrics. */
  readonly denied = { connect: 0, publish: 0, subscribe: 0 }
  /** Connections closed for going over a bound, for metrics. */
  readonly closed: Record<CloseReason, number> = { packet_too_large: 0, inflight_limit: 0, queue_limit: 0, max_connections: 0 }
  /** Connected clients by aedes' client object. */
  readonly #clients = new Map<Client, ClientRecord>()
  /** The last RECENT_GONE clients that disconnected, oldest first. */
  readonly #gone: ClientRecord[] = []
  /** Sockets of the TLS listener, to tell which listener a client came through. */
  readonly #tlsSockets = new WeakSet<Socket>()
  /** Every open client connection, of both listeners: what stop destroys if it outlives the grace. */
  readonly #sockets = new Set<Socket>()

  constructor (options: BrokerOptions) {
    if (options.users.some(u => u.username === INTERNAL_USER)) throw new ConfigError(`users: "${INTERNAL_USER}" is reserved for the edge's own connections; pick another username`)
    this.#options = options
    this.#users = new Map(options.users.map(u => {
      const filters = u.publish.map(f => compileTopicFilter(f))
      return [u.username, { ...u, canPublish: (topic: string) => filters.some(f => f.match(topic) !== undefined) }]
    }))
  }

  get url (): string {
    return this.#url
  }

  /** The mqtts:// URL of the TLS listener, if any. */
  get tlsUrl (): string | undefined {
    return this.#tlsUrl
  }

  /** A rotated certificate: new TLS connections use it. */
  setTls (tls: ServerTls): void {
    this.#tlsServer?.setSecureContext({ cert: tls.cert, key: tls.key })
  }

  async start (onMessage: MessageHandler): Promise<void> {
    const limits = { ...BROKER_LIMITS, ...definedOnly(this.#options) }
    const broker = await Aedes.createBroker({
      heartbeatInterval: 60_000,
      drainTimeout: 30_000,
      maxClientsIdLength: 128,
      maxInflightInbound: limits.maxInflight,
      queueLimit: limits.maxQueued
    })
    // aedes reports a client over its in-flight or queue bound only as an error (one per packet over
    // it, when a read held several); it has closed the connection.
    const counted = new WeakSet<Client>()
    const onClientError = (client: Client, err: Error): void => {
      const reason = err.message.startsWith('maxInflightInbound exceeded')
        ? 'inflight_limit'
        : err.message === 'Client queue limit reached' ? 'queue_limit' : undefined
      if (reason === undefined || counted.has(client)) return
      counted.add(client)
      this.closed[reason]++
    }
    broker.on('clientError', onClientError)
    broker.on('connectionError', onClientError)
    // A record per connected client (after CONNECT was accepted), kept until it disconnects.
    broker.on('client', (client: Client) => {
      const conn = client.conn as Partial<Socket>
      const host = conn.remoteAddress ?? ''
      this.#clients.set(client, {
        id: client.id,
        user: (client as TaggedClient).fogmeshUser ?? null,
        address: host === '' ? '' : `${host.includes(':') ? `[${host}]` : host}:${conn.remotePort ?? ''}`,
        listener: this.#tlsSockets.has(client.conn as Socket) ? 'mqtts' : 'mqtt',
        connectedAt: Date.now(),
        disconnectedAt: 0,
        messages: 0,
        rejected: 0,
        denied: 0,
        lastMessageAt: 0
      })
    })
    broker.on('clientDisconnect', (client: Client) => {
      const r = this.#clients.get(client)
      if (r === undefined) return
      this.#clients.delete(client)
      r.disconnectedAt = Date.now()
      this.#gone.push(r)
      if (this.#gone.length > RECENT_GONE) this.#gone.shift()
    })
    this.#broker = broker
    // Without users anyone gets in, but not under the edge's own user name.
    broker.authenticate = (client: Client, username: string | undefined, password: Buffer | undefined, done: (err: AuthenticateError | null, ok: boolean) => void) => {
      if (this.#login(client as TaggedClient, username, password)) {
        done(null, true)
        return
      }
      this.denied.connect++
      const err = new Error('bad username or password') as AuthenticateError
      err.returnCode = 4
      done(err, false)
    }
    broker.authorizePublish = (client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void) => {
      if (packet.topic.startsWith('$SYS')) {
        done(new Error('$SYS topics are reserved'))
        return
      }
      if (client !== null && !this.#mayPublish(client as TaggedClient, packet.topic)) {
        this.denied.publish++
        const r = this.#clients.get(client)
        if (r !== undefined) r.denied++
        done(new Error(`user ${(client as TaggedClient).fogmeshUser} may not publish to ${packet.topic}`))
        return
      }
      done(null)
    }
    broker.authorizeSubscribe = (client: Client | null, sub: Subscription, done: (err: Error | null, sub?: Subscription | null) => void) => {
      if (client !== null && !this.#maySubscribe(client as TaggedClient, sub.topic)) {
        this.denied.subscribe++
        done(null, null) // SUBACK 0x80 for this filter; the client stays connected
        return
      }
      done(null, sub)
    }
    // Readings arrive here once aedes accepted them; client is null for the broker's own publishes
    // (heartbeats and our local actions), which are not readings.
    broker.on('publish', (packet: PublishPacket, client: Client | null) => {
      if (client === null) return
      const now = Date.now()
      const accepted = onMessage(packet.topic, packet.payload as Buffer, now)
      const r = this.#clients.get(client)
      if (r !== undefined) {
        r.messages++
        r.lastMessageAt = now
        if (!accepted) r.rejected++
      }
    })
    const handle = (socket: Socket): void => {
      this.#sockets.add(socket)
      socket.once('close', () => this.#sockets.delete(socket))
      guardPacketSize(socket, limits.maxPacket, () => { this.closed.packet_too_large++ })
      broker.handle(socket)
    }
    const server = createServer(handle)
    this.#server = server
    this.#url = await this.#listen(server, this.#options.port, 'mqtt', limits.maxConnections)
    const tls = this.#options.tls
    if (this.#options.tlsPort !== undefined && tls !== undefined) {
      const tlsServer = createTlsServer({ cert: tls.cert, key: tls.key }, (socket: Socket) => {
        this.#tlsSockets.add(socket)
        handle(socket)
      })
      this.#tlsServer = tlsServer
      this.#tlsUrl = await this.#listen(tlsServer, this.#options.tlsPort, 'mqtts', limits.maxConnections)
    }
  }

  async #listen (server: Server, port: number, scheme: string, maxConnections: number): Promise<string> {
    server.maxConnections = maxConnections
    // Node closes a connection over maxConnections as soon as it is accepted.
    server.on('drop', () => { this.closed.max_connections++ })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, this.#options.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    const bound = (server.address() as AddressInfo).port
    const host = this.#options.host === '0.0.0.0' || this.#options.host === '::' ? '127.0.0.1' : this.#options.host
    return `${scheme}://${host.includes(':') ? `[${host}]` : host}:${bound}`
  }

  /**
   * GET /v1/broker: the connected clients (by id), the last ones that disconnected (newest first), and
   * the refusals and closes counted since the start.
   */
  clients (): { clients: BrokerClient[], disconnected: BrokerClient[], denied: Record<string, number>, closed: Record<CloseReason, number> } {
    const clients = [...this.#clients.values()].map(clientJson).sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
    return { clients, disconnected: this.#gone.map(clientJson).reverse(), denied: { ...this.denied }, closed: { ...this.closed } }
  }

  registerMetrics (m: Metrics): void {
    m.counter('fogmesh_broker_connections_closed_total', 'Embedded broker connections closed for going over a bound, by bound', ['reason'],
      () => Object.entries(this.closed).map(([reason, n]) => [{ reason }, n]))
  }

  /** Whether the client gets in; tags it with its user (and the edge's own clients with their node). */
  #login (client: TaggedClient, username: string | undefined, password: Buffer | undefined): boolean {
    const node = nodeOfSparkplugClientId(client.id)
    if (username === INTERNAL_USER) {
      if (node === undefined || password === undefined || !same(password.toString('utf8'), this.#options.internal.password)) return false
      client.fogmeshUser = INTERNAL_USER
      client.fogmeshNode = node
      return true
    }
    // Those ids are the edge's own nodes': MQTT would close a node's connection for anyone taking its id.
    if (node !== undefined) return false
    if (this.#users.size === 0) return true
    const user = username === undefined ? undefined : this.#users.get(username)
    if (user === undefined || password === undefined || !same(password.toString('utf8'), user.password)) return false
    client.fogmeshUser = user.username
    return true
  }

  #mayPublish (client: TaggedClient, topic: string): boolean {
    const own = client.fogmeshNode
    if (own !== undefined) {
      const t = parseSparkplugTopic(topic)
      return t !== undefined && t.group === own.group && t.node === own.node && NODE_PUBLISHES.has(t.type)
    }
    const user = this.#userOf(client)
    return user === undefined || user.canPublish(topic)
  }

  /** The configured user a client logged in as; none without users. */
  #userOf (client: TaggedClient): BrokerUser & { canPublish: (topic: string) => boolean } | undefined {
    return client.fogmeshUser === undefined ? undefined : this.#users.get(client.fogmeshUser)
  }

  #maySubscribe (client: TaggedClient, filter: string): boolean {
    const own = client.fogmeshNode
    if (own !== undefined) return filter === sparkplugTopic(own.group, 'NCMD', own.node)
    const user = this.#userOf(client)
    return user === undefined || user.subscribe.some(f => filterCovers(f, filter))
  }

  /** How the edge's own clients log in (given at construction). */
  get internalLogin (): InternalLogin {
    return this.#options.internal
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
    // Both listeners stop accepting first; closing the broker then ends their clients' connections,
    // which is what the servers' close waits for.
    const closed = [server, this.#tlsServer].filter(s => s !== undefined).map(s => new Promise<void>(resolve => s.close(() => resolve())))
    if (server !== undefined) broker?.close()
    // A connection aedes does not end (one still in its handshake, a peer that never closes its side)
    // would hold the servers' close, and the node's stop, forever: after a grace it is destroyed.
    const grace = setTimeout(() => { for (const socket of this.#sockets) socket.destroy() }, STOP_GRACE)
    await Promise.all(closed)
    clearTimeout(grace)
  }
}

function definedOnly<T extends object> (o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>
}

/**
 * Checks each chunk as the socket receives it, before it reaches the stream's buffer and aedes' parser,
 * and destroys the socket at the first fixed header announcing more than `max` bytes. Readable.push is
 * the one place every received chunk passes without switching the socket to flowing mode (aedes reads
 * it paused); overriding it on the instance costs a header walk per chunk and no copy.
 */
function guardPacketSize (socket: Socket, max: number, onTooLarge: () => void): void {
  const guard = new PacketSizeGuard(max)
  const push = socket.push.bind(socket)
  let tripped = false
  socket.push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
    if (tripped) return false
    if (chunk instanceof Uint8Array && guard.feed(chunk) >= 0) {
      tripped = true
      onTooLarge()
      socket.destroy()
      return false
    }
    return push(chunk, encoding)
  }
}

/**
 * A node's membership in the mesh: a libp2p 3 node (TCP, noise, yamux, identify, gossipsub, optionally
 * a private network through the mesh key) that gossips this node's heartbeat and keeps a view of every
 * other node from theirs. Peers are found through a bootstrap list and, on a LAN, mDNS.
 *
 * Heartbeats are checked by gossipsub's topic validator, so a bad one is neither used nor forwarded,
 * and messages must be signed (StrictSign), which lets the validator hold the heartbeat's `peerId` to
 * the key that signed it.
 */
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub, StrictSign, TopicValidatorResult } from '@libp2p/gossipsub'
import type { GossipSub, GossipsubOpts, Message } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import type { Libp2p } from '@libp2p/interface'
import { mdns } from '@libp2p/mdns'
import { peerIdFromString } from '@libp2p/peer-id'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import type { Multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { ConfigError } from '../../core/errors.ts'
import { decodeHeartbeat, encodeHeartbeat, HEARTBEAT_VERSION } from '../../core/mesh/heartbeat.ts'
import type { Heartbeat, HeartbeatRejectReason, MeshRole } from '../../core/mesh/heartbeat.ts'
import type { Metrics, Sample } from '../shell/metrics.ts'
import { loadOrCreatePeerKey } from './keys.ts'

/** What the node's owner fills in for each heartbeat; the mesh node adds version, peer id and time. */
export type HeartbeatInput = Omit<Heartbeat, 'v' | 'id' | 'role' | 'peerId' | 'at'>

export interface MeshNodeOptions {
  /** This node's id (the `--id` of its role). */
  id: string
  role: MeshRole
  /** Called for every heartbeat sent; keep it cheap and synchronous. */
  heartbeat: () => HeartbeatInput
  /** Address to listen on (IPv4 or IPv6). Default 127.0.0.1. */
  host?: string
  /** TCP port; 0 picks a free one. Default 0. */
  port?: number
  /** Multiaddrs of peers to join through, each ending in /p2p/<peer id>. Default none. */
  bootstrap?: string[]
  /** Find peers on the LAN by multicast DNS. Default false: tests and loopback setups must not multicast. */
  mdns?: boolean
  /** The mesh key as `loadMeshKey` returns it; without one the mesh is open to anyone who can connect. */
  meshKey?: Uint8Array
  /** Directory keeping `peer.key`; without one the node has a new peer id at each start. */
  dataDir?: string
  /** Time between heartbeats, ms. Default 2000. */
  heartbeatInterval?: number
  /** A peer not heard from for this long is `expired`, ms. Default 3 intervals + 4 s (10 s). */
  expiry?: number
  /** An expired peer leaves the view after this long without a heartbeat, ms. Default 10 × expiry. */
  forgetAfter?: number
  /** Longest wait between two tries to reach an unconnected bootstrap peer, ms. Default 30000. */
  redialMax?: number
  /**
   * Connections this node keeps to peers it learnt of from heartbeats, beside its bootstrap peers, so
   * the mesh does not hang off (and fall apart with) the bootstrap peer. Default 6, twice gossipsub's
   * mesh degree: the connections outside the mesh carry gossip and are there to graft when a mesh peer leaves.
   */
  minPeers?: number
  /** Gossip topic; a different topic is a separate mesh on the same network. Default fogmesh/heartbeat/1. */
  topic?: string
  /** Software version put in heartbeats and libp2p's identify. */
  version?: string
}

export type ResolvedMeshOptions = Required<Omit<MeshNodeOptions, 'meshKey' | 'dataDir'>> & Pick<MeshNodeOptions, 'meshKey' | 'dataDir'>

export const MESH_DEFAULTS = {
  host: '127.0.0.1',
  port: 0,
  mdns: false,
  heartbeatInterval: 2000,
  /** Added to 3 intervals for the expiry: room for a late timer and a gossip hop or two. */
  expirySlack: 4000,
  forgetAfterExpiries: 10,
  redialMax: 30_000,
  minPeers: 6,
  /**
   * Inbound connections accepted per second from one IP address. libp2p's default of 5 throttles a
   * mesh whose nodes share an address (edges behind one NAT, a test or demo on one host) for seconds.
   */
  inboundPerHostPerSecond: 100,
  topic: 'fogmesh/heartbeat/1',
  /** The mDNS service name, so fogmesh nodes do not answer (or dial) other libp2p software on the LAN. */
  mdnsServiceTag: '_fogmesh._udp.local'
} as const

/**
 * Gossipsub tuned for what the mesh carries: tens of nodes, each gossiping one small heartbeat (~500
 * bytes signed) every couple of seconds, where gossipsub's defaults are sized for large meshes and big
 * messages. All of it is local policy: a node left at the defaults still interoperates. `bench/mesh.ts`
 * measures the effect (20 nodes: 40% fewer gossip bytes per node, and faster convergence).
 */
export const GOSSIP_TUNING = {
  /**
   * Mesh degree 3 rather than 6: each node relays a heartbeat to ~3 mesh peers instead of ~6, and
   * relayed copies (mostly duplicates) are most of the traffic. Losing one mesh link still leaves two,
   * and the gossip below delivers what the mesh misses.
   */
  D: 3,
  /** Graft back up to D when a node is down to 1 mesh peer, not before. */
  Dlo: 2,
  /**
   * Prune back to D above 5, not 12: a well-connected node (the bootstrap peer everyone joins through)
   * relays to a few peers rather than a dozen.
   */
  Dhi: 5,
  /** Kept by score when pruning, the rest at random; gossipsub's 4 would exceed D. */
  Dscore: 2,
  /** Outbound mesh peers kept when pruning; must stay below Dlo. */
  Dout: 1,
  /**
   * Every connected peer outside the mesh gets IHAVE for every new heartbeat, at each gossipsub
   * heartbeat (1 s): delivery then needs only a connected graph of connections, not of meshes, and a
   * node that joined through a bootstrap peer whose mesh was already full sees the whole mesh within a
   * second (with the default 25%, some such nodes waited several seconds). An IHAVE entry (~46 bytes)
   * costs a tenth of a relayed heartbeat.
   */
  gossipFactor: 1,
  /**
   * Message ids are gossiped in the two gossipsub heartbeats after a message arrives, not three: the
   * IHAVE reaches every non-mesh peer (above), so a third round only costs bytes. One round would save
   * a sixth of the traffic but leave a node that connects just after it waiting a whole interval for
   * each peer's next heartbeat (half the 20-node bench runs then converged in 3 s rather than 1.7 s).
   */
  mcacheGossip: 2,
  /**
   * A node's own heartbeat goes to its mesh peers (and then the gossip), not to every connected peer:
   * flooding defends a publisher against hostile peers eclipsing it on open networks; who may join a
   * fogmesh mesh is the mesh key's job.
   */
  floodPublish: false
} as const satisfies Partial<GossipsubOpts>

export function resolveMeshOptions (o: MeshNodeOptions): ResolvedMeshOptions {
  const heartbeatInterval = o.heartbeatInterval ?? MESH_DEFAULTS.heartbeatInterval
  const expiry = o.expiry ?? 3 * heartbeatInterval + MESH_DEFAULTS.expirySlack
  if (expiry <= heartbeatInterval) throw new ConfigError(`mesh expiry (${expiry} ms) must be longer than the heartbeat interval (${heartbeatInterval} ms)`)
  return {
    ...o,
    host: o.host ?? MESH_DEFAULTS.host,
    port: o.port ?? MESH_DEFAULTS.port,
    bootstrap: o.bootstrap ?? [],
    mdns: o.mdns ?? MESH_DEFAULTS.mdns,
    heartbeatInterval,
    expiry,
    forgetAfter: o.forgetAfter ?? MESH_DEFAULTS.forgetAfterExpiries * expiry,
    redialMax: o.redialMax ?? MESH_DEFAULTS.redialMax,
    minPeers: o.minPeers ?? MESH_DEFAULTS.minPeers,
    topic: o.topic ?? MESH_DEFAULTS.topic,
    version: o.version ?? '0.0.0'
  }
}

export type PeerState = 'alive' | 'expired'

export interface MeshPeer {
  id: string
  role: MeshRole
  peerId: string
  state: PeerState
  /** When this node last accepted a heartbeat from the peer, ms since the epoch (local clock). */
  lastSeen: number
  http: string
  heartbeat: Heartbeat
}

export interface MeshView {
  self: { id: string, role: MeshRole, peerId: string }
  peers: MeshPeer[]
}

export interface MeshStats {
  /** Gossip messages dropped by the validator, by reason. */
  rejected: Partial<Record<HeartbeatRejectReason, number>>
  heartbeatsSent: number
  heartbeatsReceived: number
  /** Gossipsub protocol bytes (RPC frames, before noise and yamux framing). */
  bytesSent: number
  bytesReceived: number
}

interface BootstrapPeer {
  addr: Multiaddr
  peerId: string
  nextTry: number
  backoff: number
}

/** Checks `--bootstrap` values up front so a typo fails at start-up, naming the value. */
export function parseBootstrap (list: string[]): Array<{ addr: Multiaddr, peerId: string }> {
  return list.map(raw => {
    let addr: Multiaddr
    try {
      addr = multiaddr(raw)
    } catch (err) {
      throw new ConfigError(`--bootstrap: not a multiaddr: ${JSON.stringify(raw)} (${(err as Error).message})`, { cause: err })
    }
    const peerId = addr.getComponents().findLast(c => c.name === 'p2p')?.value
    if (peerId === undefined) throw new ConfigError(`--bootstrap: ${raw} lacks /p2p/<peer id> (the peer's ready line prints its full address)`)
    try {
      peerIdFromString(peerId)
    } catch (err) {
      throw new ConfigError(`--bootstrap: ${raw}: bad peer id ${peerId}`, { cause: err })
    }
    return { addr, peerId }
  })
}

/**
 * Gossipsub reports its traffic only through a metrics register; this one keeps the two byte counters
 * the mesh reports and ignores the rest.
 */
function byteCounter (stats: MeshStats): NonNullable<GossipsubOpts['metricsRegister']> {
  const noop = { inc () {}, set () {}, addCollect () {}, observe () {}, reset () {}, startTimer: () => () => {} }
  const gauge = (config: { name: string }): unknown => {
    if (config.name === 'gossipsub_rpc_sent_bytes_total') return { ...noop, inc (v = 1) { stats.bytesSent += v } }
    if (config.name === 'gossipsub_rpc_recv_bytes_total') return { ...noop, inc (v = 1) { stats.bytesReceived += v } }
    return noop
  }
  return { gauge, histogram: () => noop, avgMinMax: () => noop } as unknown as NonNullable<GossipsubOpts['metricsRegister']>
}

function listenAddr (host: string, port: number): string {
  return `/${host.includes(':') ? 'ip6' : 'ip4'}/${host}/tcp/${port}`
}

export class MeshNode {
  readonly options: ResolvedMeshOptions
  readonly stats: MeshStats = { rejected: {}, heartbeatsSent: 0, heartbeatsReceived: 0, bytesSent: 0, bytesReceived: 0 }
  #libp2p: Libp2p<{ pubsub: GossipSub }> | undefined
  #peers = new Map<string, MeshPeer>()
  #bootstrap: BootstrapPeer[]
  #timer: NodeJS.Timeout | undefined
  #soon: NodeJS.Timeout | undefined

  constructor (options: MeshNodeOptions) {
    this.options = resolveMeshOptions(options)
    this.#bootstrap = parseBootstrap(this.options.bootstrap).map(b => ({ ...b, nextTry: 0, backoff: this.options.heartbeatInterval }))
  }

  /** The libp2p node, for diagnostics and tests; undefined before start and after stop. */
  get libp2p (): Libp2p<{ pubsub: GossipSub }> | undefined {
    return this.#libp2p
  }

  get peerId (): string {
    return this.#node().peerId.toString()
  }

  async start (): Promise<void> {
    if (this.#libp2p !== undefined) return
    const o = this.options
    const privateKey = o.dataDir === undefined ? undefined : await loadOrCreatePeerKey(o.dataDir)
    const node = await createLibp2p({
      privateKey,
      nodeInfo: { name: 'fogmesh', version: o.version },
      addresses: { listen: [listenAddr(o.host, o.port)] },
      connectionManager: { inboundConnectionThreshold: MESH_DEFAULTS.inboundPerHostPerSecond },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      connectionProtector: o.meshKey === undefined ? undefined : preSharedKey({ psk: o.meshKey }),
      peerDiscovery: o.mdns ? [mdns({ serviceTag: MESH_DEFAULTS.mdnsServiceTag, interval: o.heartbeatInterval * 5 })] : [],
      services: {
        identify: identify(),
        pubsub: gossipsub({
          globalSignaturePolicy: StrictSign,
          allowPublishToZeroTopicPeers: true,
          // Every node of a mesh on one host, or edges behind one NAT, share an IP address; gossipsub's
          // default penalty for that would cut them off. Who may connect is the mesh key's job.
          scoreParams: { IPColocationFactorWeight: 0 },
          metricsRegister: byteCounter(this.stats),
          metricsTopicStrToLabel: new Map([[o.topic, 'heartbeat']]),
          ...GOSSIP_TUNING
        })
      }
    })
    this.#libp2p = node
    const pubsub = node.services.pubsub
    pubsub.topicValidators.set(o.topic, (_peer, msg) => this.#validate(msg))
    pubsub.addEventListener('message', evt => { this.#receive(evt.detail) })
    // A peer that just subscribed hears from us now rather than up to an interval later.
    pubsub.addEventListener('subscription-change', () => { this.#publishSoon() })
    pubsub.subscribe(o.topic)
    if (o.mdns) {
      node.addEventListener('peer:discovery', evt => {
        node.dial(evt.detail.id).catch(() => {}) // unreachable or outside the mesh key: mDNS will offer it again
      })
    }
    this.#tick()
  }

  async stop (): Promise<void> {
    clearTimeout(this.#timer)
    clearTimeout(this.#soon)
    this.#timer = this.#soon = undefined
    const node = this.#libp2p
    this.#libp2p = undefined
    if (node !== undefined) await node.stop()
  }

  /** The address peers can bootstrap from, `<multiaddr>/p2p/<peer id>`, for the ready line. */
  multiaddr (): string {
    const node = this.#node()
    const addrs = node.getMultiaddrs().map(a => a.toString())
    const suffix = `/p2p/${node.peerId.toString()}`
    const addr = addrs[0]
    if (addr === undefined) return suffix
    return addr.endsWith(suffix) ? addr : addr + suffix
  }

  view (now = Date.now()): MeshView {
    const o = this.options
    const peers = [...this.#peers.values()].map(p => ({ ...p, state: (now - p.lastSeen > o.expiry ? 'expired' : 'alive') as PeerState }))
    peers.sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
    return { self: { id: o.id, role: o.role, peerId: this.peerId }, peers }
  }

  /** Adds `fogmesh_gossip_rejected_total{reason}` and `fogmesh_gossip_bytes_total{direction}`. */
  registerMetrics (metrics: Metrics): void {
    metrics.counter('fogmesh_gossip_rejected_total', 'Gossip messages dropped by validation, by reason', ['reason'],
      () => Object.entries(this.stats.rejected).map(([reason, n]): Sample => [{ reason }, n]))
    metrics.counter('fogmesh_gossip_bytes_total', 'Gossipsub protocol bytes sent and received', ['direction'],
      () => [[{ direction: 'sent' }, this.stats.bytesSent], [{ direction: 'received' }, this.stats.bytesReceived]])
  }

  #node (): Libp2p<{ pubsub: GossipSub }> {
    if (this.#libp2p === undefined) throw new Error('mesh node is not started')
    return this.#libp2p
  }

  #validate (msg: Message): TopicValidatorResult {
    const result = msg.type === 'signed'
      ? decodeHeartbeat(msg.data, msg.from.toString())
      : { ok: false as const, reason: 'unsigned' as const }
    if (result.ok) return TopicValidatorResult.Accept
    this.stats.rejected[result.reason] = (this.stats.rejected[result.reason] ?? 0) + 1
    return TopicValidatorResult.Reject
  }

  #receive (msg: Message): void {
    if (msg.topic !== this.options.topic || msg.type !== 'signed') return
    // Validated already; decoding again is cheaper than keeping the result between the two callbacks.
    const result = decodeHeartbeat(msg.data, msg.from.toString())
    if (!result.ok) return
    const hb = result.heartbeat
    const known = this.#peers.get(hb.peerId)
    // Gossip can deliver an older heartbeat after a newer one.
    if (known !== undefined && known.heartbeat.at > hb.at) return
    this.stats.heartbeatsReceived++
    this.#peers.set(hb.peerId, { id: hb.id, role: hb.role, peerId: hb.peerId, state: 'alive', lastSeen: Date.now(), http: hb.http, heartbeat: hb })
  }

  #tick (): void {
    this.#publish()
    this.#forget()
    this.#redial()
    this.#connectMore()
    // Jittered so that nodes started together do not beat in lockstep.
    const interval = this.options.heartbeatInterval * (0.9 + 0.2 * Math.random())
    this.#timer = setTimeout(() => { this.#tick() }, interval)
  }

  /** Something a heartbeat carries changed (the deployed set, say): tell the mesh now, not an interval later. */
  announce (): void {
    this.#publishSoon()
  }

  #publishSoon (): void {
    if (this.#soon !== undefined || this.#libp2p === undefined) return
    this.#soon = setTimeout(() => {
      this.#soon = undefined
      this.#publish()
    }, 100)
  }

  #publish (): void {
    const node = this.#libp2p
    if (node === undefined) return
    const hb: Heartbeat = {
      ...this.options.heartbeat(),
      v: HEARTBEAT_VERSION,
      id: this.options.id,
      role: this.options.role,
      peerId: node.peerId.toString(),
      at: Date.now(),
      addrs: node.getMultiaddrs().slice(0, 8).map(a => a.toString())
    }
    this.stats.heartbeatsSent++
    node.services.pubsub.publish(this.options.topic, encodeHeartbeat(hb)).catch(() => {
      // Nobody to send to, or stopping: the next beat tries again.
    })
  }

  #forget (): void {
    const cutoff = Date.now() - this.options.forgetAfter
    for (const [peerId, p] of this.#peers) if (p.lastSeen < cutoff) this.#peers.delete(peerId)
  }

  /** Dials a few alive peers from the view while this node has fewer connections than `minPeers`. */
  #connectMore (): void {
    const node = this.#libp2p
    if (node === undefined) return
    const connected = new Set(node.getConnections().map(c => c.remotePeer.toString()))
    let wanted = this.options.minPeers - connected.size
    if (wanted <= 0) return
    const now = Date.now()
    const candidates = [...this.#peers.values()].filter(p => !connected.has(p.peerId) && now - p.lastSeen <= this.options.expiry && (p.heartbeat.addrs?.length ?? 0) > 0)
    // Random picks spread the connections, rather than every node dialling the same few peers.
    for (let i = candidates.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [candidates[i], candidates[j]] = [candidates[j], candidates[i]]
    }
    for (const p of candidates) {
      if (wanted-- <= 0) break
      let addrs: Multiaddr[]
      try {
        // Only addresses naming the peer that signed the heartbeat: a heartbeat cannot send us to a third party.
        addrs = (p.heartbeat.addrs ?? []).map(a => multiaddr(a)).filter(a => a.getComponents().findLast(c => c.name === 'p2p')?.value === p.peerId)
      } catch {
        continue
      }
      if (addrs.length > 0) node.dial(addrs).catch(() => {}) // tried again at a later tick if still short of peers
    }
  }

  /**
   * Keeps trying bootstrap peers that are not connected, with backoff: @libp2p/bootstrap dials its list
   * once at start, so a node started before its bootstrap peer would never join.
   */
  #redial (): void {
    const node = this.#libp2p
    if (node === undefined) return
    const now = Date.now()
    const self = node.peerId.toString()
    const connected = new Set(node.getConnections().map(c => c.remotePeer.toString()))
    for (const b of this.#bootstrap) {
      if (b.peerId === self) continue
      if (connected.has(b.peerId)) {
        b.backoff = this.options.heartbeatInterval
        continue
      }
      if (now < b.nextTry) continue
      b.nextTry = now + b.backoff
      b.backoff = Math.min(b.backoff * 2, this.options.redialMax)
      node.dial(b.addr).catch(() => {}) // down or not yet up: tried again after the backoff
    }
  }
}

/**
 * A server role's part in the mesh: a MeshNode started and stopped with the role, the ` mesh=` part of
 * the ready line, and the `self`/`peers` part of `GET /v1/mesh`. The mesh is on when `--mesh-port` or
 * `--bootstrap` is given, else off, so a single machine without those flags runs as it did before the
 * mesh (no libp2p, no peer key in the data dir).
 *
 * libp2p is loaded only by a role whose mesh is on (about 30 MB resident on a gateway that does not
 * use it otherwise): mesh-node.ts and keys.ts are imported for their types alone. Their code starts
 * loading at construction when the mesh is on; `load()` waits for it and checks `--bootstrap`, so a
 * role that calls it before opening any port fails on a typo before listening (`start()` calls it too).
 */
import { readFileSync } from 'node:fs'
import type { MeshRole } from '../../core/mesh/heartbeat.ts'
import type { Metrics, Sample } from '../shell/metrics.ts'
import type { CommonOptions } from '../shell/options.ts'
import type * as MeshCode from './mesh-node.ts'
import type { HeartbeatInput, MeshNode, MeshPeer } from './mesh-node.ts'

/** The software version gossiped in heartbeats. */
export const SOFTWARE_VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version

export function meshEnabled (o: Pick<CommonOptions, 'meshPort' | 'bootstrap' | 'mdns'>): boolean {
  return o.meshPort !== undefined || (o.bootstrap?.length ?? 0) > 0 || o.mdns === true
}

/** A peer as `GET /v1/mesh` lists it. */
export interface MeshPeerJson {
  id: string
  role: MeshRole
  state: string
  lastSeen: string
  http: string
  /** The pipelines the peer runs (edges) or serves (fogs), with the versions and watermarks, as it last gossiped. */
  pipelines: Array<{ name: string, version: number, watermark: string | null }>
  /** Closed windows waiting in the peer's outbox for a fog or the cloud (edges; 0 elsewhere). */
  outbox: number
}

export interface MeshSelfJson {
  self: { id: string, role: MeshRole, peerId: string | null }
  peers: MeshPeerJson[]
}

export class RoleMesh {
  readonly #options: CommonOptions
  readonly #role: MeshRole
  readonly #heartbeat: () => HeartbeatInput
  readonly #started = Date.now()
  #node: MeshNode | undefined
  /** The mesh code with --bootstrap checked, loading since construction; undefined with the mesh off. */
  readonly #mesh: Promise<typeof MeshCode> | undefined

  constructor (options: CommonOptions, role: MeshRole, heartbeat: () => HeartbeatInput) {
    this.#options = options
    this.#role = role
    this.#heartbeat = heartbeat
    if (!meshEnabled(options)) return
    this.#mesh = import('./mesh-node.ts').then(mesh => {
      mesh.parseBootstrap(options.bootstrap ?? [])
      return mesh
    })
    // Reported by load() or start(); unobserved until then.
    this.#mesh.catch(() => {})
  }

  /** Loads the mesh code and checks --bootstrap (a ConfigError naming the value); nothing with the mesh off. */
  async load (): Promise<void> {
    await this.#mesh
  }

  get enabled (): boolean {
    return meshEnabled(this.#options)
  }

  /** The running mesh node; undefined with the mesh off, before start and after stop. */
  get node (): MeshNode | undefined {
    return this.#node
  }

  /** ms since this role started, for heartbeats. */
  get uptime (): number {
    return Date.now() - this.#started
  }

  async start (): Promise<void> {
    if (this.#mesh === undefined || this.#node !== undefined) return
    const mesh = await this.#mesh
    const o = this.#options
    const { loadMeshKey } = await import('./keys.ts')
    const node = new mesh.MeshNode({
      id: o.id,
      role: this.#role,
      heartbeat: this.#heartbeat,
      host: o.host,
      port: o.meshPort ?? 0,
      bootstrap: o.bootstrap ?? [],
      meshKey: o.meshKey === undefined ? undefined : await loadMeshKey(o.meshKey),
      dataDir: o.dataDir,
      heartbeatInterval: o.meshHeartbeat,
      expiry: o.meshExpiry,
      mdns: o.mdns === true,
      version: SOFTWARE_VERSION
    })
    await node.start()
    this.#node = node
  }

  async stop (): Promise<void> {
    const node = this.#node
    this.#node = undefined
    await node?.stop()
  }

  /** A heartbeat field changed: publish now (nothing with the mesh off). */
  announce (): void {
    this.#node?.announce()
  }

  /** ` mesh=<multiaddr>/p2p/<peer id>` for the ready line, or nothing with the mesh off. */
  readySuffix (): string {
    return this.#node === undefined ? '' : ` mesh=${this.#node.multiaddr()}`
  }

  /** Alive peers of a role, from the view; none with the mesh off. */
  alive (role: MeshRole): MeshPeer[] {
    return this.#node?.view().peers.filter(p => p.role === role && p.state === 'alive') ?? []
  }

  /** `self` and `peers` of `GET /v1/mesh`; with the mesh off, no peers and a null peer id. */
  json (): MeshSelfJson {
    const node = this.#node
    if (node === undefined) return { self: { id: this.#options.id, role: this.#role, peerId: null }, peers: [] }
    const view = node.view()
    return {
      self: view.self,
      peers: view.peers.map(p => ({
        id: p.id,
        role: p.role,
        state: p.state,
        lastSeen: new Date(p.lastSeen).toISOString(),
        http: p.http,
        pipelines: p.heartbeat.pipelines.map(({ name, version, watermark }) => ({ name, version, watermark: watermark === null ? null : new Date(watermark).toISOString() })),
        outbox: p.heartbeat.outbox
      }))
    }
  }

  /**
   * The mesh node's metrics, registered up front (the node exists only once started): zero, and
   * `fogmesh_gossip_rejected_total` without series, while the mesh is off.
   */
  registerMetrics (metrics: Metrics): void {
    metrics.counter('fogmesh_gossip_rejected_total', 'Gossip messages dropped by validation, by reason', ['reason'],
      () => Object.entries(this.#node?.stats.rejected ?? {}).map(([reason, n]): Sample => [{ reason }, n]))
    metrics.counter('fogmesh_gossip_bytes_total', 'Gossipsub protocol bytes sent and received', ['direction'], () => {
      const s = this.#node?.stats
      return [[{ direction: 'sent' }, s?.bytesSent ?? 0], [{ direction: 'received' }, s?.bytesReceived ?? 0]]
    })
  }
}

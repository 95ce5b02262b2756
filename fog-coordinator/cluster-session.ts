/**
 * A fog coordinator's session with etcd: its membership (the member key `m/<id>` under its own lease,
 * `--lease-ttl`; a coordinator that dies stops renewing it, and etcd removes the key when it expires)
 * and whether etcd answers it (quorum).
 *
 * Invariants:
 * - a coordinator that cannot commit (etcd lost its majority, or this coordinator cannot reach it)
 *   is without quorum: it answers 503 no_quorum, so edges fail over to the cloud; a linearizable
 *   read each second finds out when etcd answers again, and it resumes by itself;
 * - a lost lease (or a member key gone) is followed by a new lease, the member key again and a
 *   campaign, one attempt at a time;
 * - it finalizes nothing until JOIN_GRACE after joining (see below).
 */
import type { Etcd3, Lease } from 'etcd3'
import type { ShardMapView } from '../core/upstream/shards.ts'
import type { Logger } from '../server/shell/log.ts'
import type { ClusterLayout, MemberRecord } from './cluster-layout.ts'
import type { ClusterMirror } from './cluster-mirror.ts'

/**
 * Watermarks are not replicated: edges send theirs to every coordinator, after the windows they cover
 * are committed. A coordinator that has just joined has not heard from every edge yet, and a merge node
 * does not wait for edges it does not know, so it finalizes nothing until every active edge has had
 * time to report (edges send watermarks about once a second).
 */
const JOIN_GRACE = 3_000

export type Status = ShardMapView['status']

export interface ClusterSessionParts {
  id: string
  client: Etcd3
  layout: ClusterLayout
  log: Logger
  /** Lease TTL, ms (rounded up to whole seconds, at least 1 s). */
  leaseTtl: number
  mirror: ClusterMirror
  /** After each registration (the first and every one after a lost lease): the leader's campaign. */
  registered: () => Promise<void>
}

export class ClusterSession {
  readonly #p: ClusterSessionParts
  #http = ''
  #lease: Lease | undefined
  #leaseId = ''
  #quorum = false
  #joined = false
  #joinedAt = Infinity
  #stopped = false
  #registering: Promise<void> | undefined

  constructor (parts: ClusterSessionParts) {
    this.#p = parts
  }

  /** The lease of the member key ('' before the first); leader writes are fenced on it. */
  get leaseId (): string { return this.#leaseId }
  /** Whether this coordinator holds a lease now (it may be the leader only then). */
  get leased (): boolean { return this.#lease !== undefined }
  get quorum (): boolean { return this.#quorum }
  get joined (): boolean { return this.#joined }

  /** The member key under a new lease, then the campaign. */
  async register (http: string): Promise<void> {
    this.#http = http
    const { client, layout, log, id } = this.#p
    const ttl = Math.max(1, Math.ceil(this.#p.leaseTtl / 1000))
    const lease = client.lease(ttl)
    const leaseId = await lease.grant()
    lease.on('lost', err => {
      if (this.#stopped || lease !== this.#lease) return
      log.warn('cluster.lease_lost', `lease lost (${err.message}); joining again`, { reason: err.message })
      this.#lease = undefined
      void this.rejoin()
    })
    const member: MemberRecord = { id, http: this.#http, since: Date.now() }
    const res = await client.put(layout.member(id)).value(JSON.stringify(member)).lease(leaseId)
    // Known at once, not when the watch brings it: until then this coordinator would think it lost it.
    this.#p.mirror.registered(member, Number(res.header.revision))
    this.#lease = lease
    this.#leaseId = leaseId
    await this.#p.registered()
  }

  /** Registered and loaded: from now on it takes part (and may finalize after the grace). */
  join (): void {
    this.#quorum = true
    this.#joined = true
    this.#joinedAt = Date.now()
  }

  /** After a lost lease: a new one, the member key again, and a campaign. */
  async rejoin (): Promise<void> {
    if (this.#stopped || !this.#joined || (this.#lease !== undefined && this.#p.mirror.members.get(this.#p.id) !== undefined)) return
    if (this.#registering !== undefined) return await this.#registering
    this.#registering = (async () => {
      try {
        const old = this.#lease
        this.#lease = undefined
        old?.release()
        await this.register(this.#http)
      } catch (err) {
        this.#p.log.warn('cluster.rejoin_failed', `could not join again yet (${(err as Error).message})`, { reason: (err as Error).message })
      } finally {
        this.#registering = undefined
      }
    })()
    await this.#registering
  }

  status (): Status {
    const map = this.#p.mirror.map
    if (!this.#joined) return 'starting'
    if (!this.#quorum) return 'no_quorum'
    if (map === undefined || map.shards === 0) return 'starting'
    return 'ok'
  }

  /** The shard map and status, for GET /v1/shards and /v1/mesh. */
  view (): ShardMapView {
    const map = this.#p.mirror.map ?? { version: 0, shards: 0, owners: [], members: [], leader: null }
    return { ...map, leader: this.#p.mirror.leader, status: this.status() }
  }

  finalizing (): boolean {
    return Date.now() - this.#joinedAt >= JOIN_GRACE
  }

  /** etcd answered a commit. */
  answered (): void {
    this.#quorum = true
  }

  /** etcd did not answer: no partials are taken until it does. */
  unanswered (err: unknown): void {
    if (this.#quorum) this.#p.log.error('cluster.quorum_lost', `etcd does not answer (${(err as Error).message}); taking no partials until it does`, { reason: (err as Error).message })
    this.#quorum = false
  }

  /** A linearizable read each second says whether etcd has quorum. */
  async probe (): Promise<void> {
    if (this.#stopped) return
    try {
      await this.#p.client.get(this.#p.layout.shardMap).exec()
      if (!this.#quorum) this.#p.log.info('cluster.quorum_back', 'etcd answers again; taking partials')
      this.#quorum = true
      void this.rejoin()
    } catch (err) {
      this.unanswered(err)
    }
  }

  /** No more joining again from now on. */
  stop (): void {
    this.#stopped = true
  }

  /** Leaves the cluster at once: revoking the lease removes the member key (and leadership). */
  async leave (): Promise<void> {
    await this.#lease?.revoke().catch(() => {})
  }
}

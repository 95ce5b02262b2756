/**
 * How an edge follows the pipelines deployed at the fog tier: fogs gossip the revision of their
 * deployed set in their heartbeats; when one is ahead of the set this edge runs, the edge fetches the
 * set from that fog (`GET /v1/deployments`), checks it, keeps it in its data dir and applies it. The
 * gossip carries the news and HTTP the set, so heartbeats stay small whatever is deployed, and an edge
 * that joins later (or was away) catches up from the first heartbeat of a fog it hears.
 */
import { readDeployedSet } from '../core/pipeline/deployment.ts'
import type { DeployedSet } from '../core/pipeline/deployment.ts'
import type { DeploymentStore } from '../server/shell/deployment-store.ts'
import type { Logger } from '../server/shell/log.ts'
import type { MeshPeer } from '../server/mesh/mesh-node.ts'
import { PeerClient } from '../server/shell/peer-client.ts'

export interface FollowerOptions {
  store: DeploymentStore
  /** Runs the set (the store already holds it). */
  apply: (set: DeployedSet) => void
  /** Longest a fetch may take, ms. */
  timeout: number
  log: Logger
  /** How fogs are called (TLS trust, this edge's certificate, which lets it past an API token). Default: a plain client. */
  client?: PeerClient
}

/** Largest deployed set accepted from a fog, bytes of JSON (64 pipelines of 16 KiB, and room to spare). */
const MAX_BODY = 2 * 1024 * 1024
/** Wait after a failed fetch, ms: the next heartbeat of that fog would otherwise ask again at once. */
const RETRY_AFTER = 2_000

export class DeploymentFollower {
  readonly #o: FollowerOptions
  readonly #client: PeerClient
  #fetching = false
  #retryAt = 0
  #failing = false
  readonly stats = { applied: 0, failed: 0 }

  constructor (options: FollowerOptions) {
    this.#o = options
    this.#client = options.client ?? new PeerClient()
  }

  get revision (): number {
    return this.#o.store.current().revision
  }

  /** Looks at the fogs alive in the mesh; fetches and applies the set of one that is ahead. */
  check (fogs: readonly MeshPeer[], now = Date.now()): void {
    if (this.#fetching || now < this.#retryAt) return
    let ahead: { url: string, revision: number } | undefined
    for (const p of fogs) {
      const revision = p.heartbeat.fog?.deployed ?? 0
      if (revision > this.revision && revision > (ahead?.revision ?? 0) && URL.canParse(p.http)) ahead = { url: p.http, revision }
    }
    if (ahead === undefined) return
    this.#fetching = true
    this.#fetch(ahead.url).finally(() => { this.#fetching = false })
  }

  async #fetch (base: string): Promise<void> {
    try {
      const res = await this.#client.request(new URL('/v1/deployments', base), { signal: AbortSignal.timeout(this.#o.timeout), maxBody: MAX_BODY })
      if (res.status !== 200) throw new Error(`HTTP ${res.status}`)
      const text = res.text
      const set = readDeployedSet(JSON.parse(text))
      if (this.#failing) this.#o.log.info('deploy.fetch_recovered', `${base} answers again`, { url: base })
      this.#failing = false
      const current = this.#o.store.current()
      // Another fetch may have applied a newer one meanwhile; heartbeats can be ahead of the set served.
      if (set.revision <= current.revision) return
      await this.#o.store.replace(set, current.revision)
      this.#o.apply(set)
      this.stats.applied++
    } catch (err) {
      this.stats.failed++
      this.#retryAt = Date.now() + RETRY_AFTER
      if (!this.#failing) {
        this.#o.log.warn('deploy.fetch_failed', `cannot get the deployed pipelines from ${base} (${(err as Error).message}); trying again`, { url: base, reason: (err as Error).message })
      }
      this.#failing = true
    }
  }
}

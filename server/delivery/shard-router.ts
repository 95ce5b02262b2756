/**
 * Routes an edge's batches to a fog cluster by shard: every window goes to the coordinator that owns
 * its shard (core/upstream/shards.ts), and then the watermarks to every coordinator, since each
 * finalizes the windows of its own shards. The router only holds the map and splits batches; the
 * shipper sends.
 *
 * The watermarks go separately, after every owner has committed its windows: a watermark says "every
 * window ending before this was delivered", and a coordinator that got it with its own part while
 * another owner's part failed could, once it takes over that owner's shards, finalize a window whose
 * contribution is still on its way (a needless revision).
 *
 * The map is learnt by asking `GET /v1/shards` of every coordinator known (the tier's URLs, and the
 * members of the map held), and from the 421 wrong_shard refusals that carry the refusing
 * coordinator's map. The highest version wins and the router never goes back to a lower one: the
 * leader's versions only grow, and a coordinator that lags behind must not undo what another said.
 * A fog that is no cluster (`shards: 0`, or an older fog answering 404) means no routing: the tier's
 * URLs take whole batches in turn, as before clusters.
 */
import { shardOf, parseShardMap } from '../../core/upstream/shards.ts'
import type { ShardMapView } from '../../core/upstream/shards.ts'
import type { Batch, WindowEntry } from '../../core/upstream/batch.ts'
import type { Logger } from '../shell/log.ts'
import { PeerClient } from '../shell/peer-client.ts'

export interface ShardRouterOptions {
  /** Longest a `GET /v1/shards` may take, ms. Default 2 000: a refresh must not hold up delivery. */
  timeout: number
  /** How often the map is asked for while the router runs (between start and stop), ms. Default 10 000. */
  refreshEvery: number
  /** Names the tier in log lines. Default `fog`. */
  name: string
  /** Where adopted maps and bad answers are reported. */
  log: Logger
  /** How coordinators are called (TLS trust, this node's certificate). Default: a plain client. */
  client: PeerClient
}

export const SHARD_ROUTER_DEFAULTS: Omit<ShardRouterOptions, 'log' | 'client'> = {
  timeout: 2_000,
  refreshEvery: 10_000,
  name: 'fog'
}

/** A sub-batch and the coordinator it is for. */
export interface Route {
  member: string
  url: string
  batch: Omit<Batch, 'seq'>
}

export type Plan =
  | {
    ok: true
    /** Version of the map the plan follows. */
    version: number
    /** One batch per owner of the batch's windows, with its windows and no watermark: every one must be acknowledged. */
    owners: Route[]
    /**
     * Watermark-only batches for every member, to send once every owner acknowledged: a coordinator
     * finalizes on a watermark, so it must not get one before the windows it covers are committed at
     * their owners. Best effort: the next watermark or heartbeat makes up for a lost one.
     */
    watermarks: Route[]
  }
  | { ok: false, version: number, detail: string }

/** What an older fog, or a single one, amounts to: no cluster. */
const NO_CLUSTER: ShardMapView = { version: 0, shards: 0, owners: [], members: [], leader: null, status: 'embedded' }

function base (url: string): string {
  return url.replace(/\/+$/, '')
}

export class ShardRouter {
  readonly stats = {
    /** Refreshes done (each asks every known coordinator). */
    refreshes: 0,
    /** Answers to `GET /v1/shards` that were not a valid map, ignored. */
    bad: 0,
    /** Coordinators that did not answer (unreachable, timeout, an unexpected status). */
    unanswered: 0,
    /** Maps adopted (from refreshes and from 421 refusals). */
    adopted: 0
  }

  readonly #seeds: string[]
  readonly #options: ShardRouterOptions
  #map: ShardMapView | undefined
  #refreshing: Promise<void> | undefined
  #timer: NodeJS.Timeout | undefined
  #abort = new AbortController()
  /** The last bad answer logged, so one repeating at every refresh is logged once. */
  #lastBad: string | undefined

  constructor (seeds: string[], options: Partial<ShardRouterOptions> & Pick<ShardRouterOptions, 'log'>) {
    this.#seeds = seeds.map(base)
    this.#options = { ...SHARD_ROUTER_DEFAULTS, client: options.client ?? new PeerClient(), ...options }
  }

  /** The map held, or undefined before any coordinator answered. */
  get map (): ShardMapView | undefined {
    return this.#map
  }

  /** Version of the map held; -1 before any. */
  get version (): number {
    return this.#map?.version ?? -1
  }

  /** URLs of the members that own shards now (none with no cluster). */
  ownerUrls (): string[] {
    const map = this.#map
    if (map === undefined || map.shards === 0) return []
    const owning = new Set(map.owners)
    return map.members.filter(m => owning.has(m.id)).map(m => base(m.http))
  }

  /** A coordinator found while running (a fog learnt from the mesh): asked from the next refresh on. */
  addSeed (url: string): void {
    const b = base(url)
    if (this.#seeds.includes(b)) return
    this.#seeds.push(b)
    if (this.#timer !== undefined) void this.refresh()
  }

  /** Refreshes now and every `refreshEvery` until stop(). */
  start (): void {
    if (this.#timer !== undefined) return
    if (this.#abort.signal.aborted) this.#abort = new AbortController()
    void this.refresh()
    this.#timer = setInterval(() => { void this.refresh() }, this.#options.refreshEvery)
    this.#timer.unref()
  }

  /** Stops refreshing; a refresh under way is abandoned. */
  async stop (): Promise<void> {
    clearInterval(this.#timer)
    this.#timer = undefined
    this.#abort.abort()
    await this.#refreshing
  }

  /**
   * Asks every known coordinator for its map, in parallel, and adopts the highest version offered.
   * Calls made while one is under way share it. Never rejects.
   */
  refresh (): Promise<void> {
    this.#refreshing ??= this.#ask().finally(() => { this.#refreshing = undefined })
    return this.#refreshing
  }

  /**
   * Adopts a map (from a refresh or a 421 refusal) when it is newer than the one held. Maps of a
   * coordinator still starting are not taken: it may not know the cluster's map yet.
   */
  adopt (view: ShardMapView): boolean {
    if (view.status === 'starting') return false
    const held = this.#map
    if (held !== undefined && view.version <= held.version) return false
    this.#map = view
    this.stats.adopted++
    if (view.shards > 0) {
      const owners = new Map<string, number>()
      for (const id of view.owners) if (id !== null) owners.set(id, (owners.get(id) ?? 0) + 1)
      const unowned = view.owners.filter(id => id === null).length
      this.#options.log.info('uplink.shard_map', `${this.#options.name} cluster: shard map v${view.version}, ${view.shards} shards over ` +
        view.members.map(m => `${m.id} (${owners.get(m.id) ?? 0})`).join(', ') + (unowned > 0 ? `, ${unowned} unowned` : ''), {
        tier: this.#options.name, version: view.version, shards: view.shards, members: view.members.length, unowned
      })
    } else if (held !== undefined && held.shards > 0) {
      this.#options.log.info('uplink.shard_map', `${this.#options.name} is no cluster any more (map v${view.version}); sending whole batches`, {
        tier: this.#options.name, version: view.version, shards: 0
      })
    }
    return true
  }

  /**
   * How to send a batch: undefined with no cluster (or before any map is known): send it whole, as
   * before. Fails when a window's shard has no owner: the cluster is moving shards, which is as good
   * as unavailable for that window.
   */
  plan (batch: Omit<Batch, 'seq'>): Plan | undefined {
    const map = this.#map
    if (map === undefined || map.shards === 0) return undefined
    const byOwner = new Map<string, WindowEntry[]>()
    for (const w of batch.windows) {
      const shard = shardOf(w.pipeline, w.key, map.shards)
      const owner = map.owners[shard]
      if (owner === null) {
        return { ok: false, version: map.version, detail: `shard ${shard} (pipeline ${w.pipeline}, key ${w.key}) has no owner in shard map v${map.version}` }
      }
      const windows = byOwner.get(owner)
      if (windows === undefined) byOwner.set(owner, [w])
      else windows.push(w)
    }
    const urls = new Map(map.members.map(m => [m.id, base(m.http)]))
    const owners = [...byOwner].map(([member, windows]) => ({ member, url: urls.get(member)!, batch: { ...batch, watermarks: [], windows } }))
    // A batch with windows but no watermark has nothing more to say; one without windows is a
    // heartbeat, for everybody.
    const sendWatermarks = batch.watermarks.length > 0 || batch.windows.length === 0
    const watermarks = !sendWatermarks
      ? []
      : map.members.map(m => ({
          member: m.id,
          url: base(m.http),
          batch: { sender: batch.sender, role: batch.role, pipelines: [], watermarks: batch.watermarks, windows: [] }
        }))
    return { ok: true, version: map.version, owners, watermarks }
  }

  async #ask (): Promise<void> {
    const urls = new Set([...this.#seeds, ...(this.#map?.members ?? []).map(m => base(m.http))])
    const views = await Promise.all([...urls].map(url => this.#fetch(url)))
    this.stats.refreshes++
    let best: ShardMapView | undefined
    for (const view of views) {
      if (view !== undefined && view.status !== 'starting' && (best === undefined || view.version > best.version)) best = view
    }
    if (best !== undefined && !this.#abort.signal.aborted) this.adopt(best)
  }

  /** The map one coordinator offers, or undefined (no answer, or a bad one: counted). */
  async #fetch (url: string): Promise<ShardMapView | undefined> {
    let status: number
    let text: string
    try {
      const signal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(this.#options.timeout)])
      const res = await this.#options.client.request(url + '/v1/shards', { signal })
      status = res.status
      text = res.text
    } catch {
      this.stats.unanswered++
      return undefined
    }
    // A fog from before clusters does not know the endpoint.
    if (status === 404) return NO_CLUSTER
    if (status !== 200) {
      this.stats.unanswered++
      return undefined
    }
    try {
      return parseShardMap(JSON.parse(text))
    } catch (err) {
      this.stats.bad++
      const problem = `${url} ${(err as Error).message}`
      if (problem !== this.#lastBad) {
        this.#options.log.warn('uplink.shard_map_invalid', `${this.#options.name} ${url}/v1/shards answered no valid shard map (${(err as Error).message}); ignoring it`, {
          tier: this.#options.name, url
        })
      }
      this.#lastBad = problem
      return undefined
    }
  }
}

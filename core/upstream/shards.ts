/**
 * Virtual shards: how a fog cluster splits the key space of every pipeline among its coordinators, and
 * how an edge finds the coordinator that owns a window. A window belongs to shard
 * `xxh32(pipeline + "\0" + key) mod shards`, so every window of one key lands on one coordinator and the
 * edges and coordinators of every version agree on it (this function is part of the wire contract).
 *
 * The shard map says which coordinator owns each shard. Only the cluster's leader writes it; its
 * `version` increases with every change, and a coordinator refuses (421 wrong_shard, with its map) a
 * window of a shard it does not own, so an edge with an old map learns the new one from the refusal.
 */
import xxhash from 'xxhash-wasm'
import { WireError } from '../errors.ts'

const { h32 } = await xxhash()

export const DEFAULT_SHARDS = 64
/** Sanity bound for maps read off the wire. */
const MAX_SHARDS = 65_536

export interface ShardMember {
  id: string
  /** Base URL of its HTTP API (partials go to `<http>/v1/partials`). */
  http: string
}

export interface ShardMap {
  /** Increases with every change; 0 means no cluster (a single fog: send it everything). */
  version: number
  /** Number of virtual shards; 0 with no cluster. */
  shards: number
  /** Owner id of each shard (index = shard), null while unassigned. */
  owners: Array<string | null>
  /** Coordinators in the map, with their HTTP URLs. */
  members: ShardMember[]
  leader: string | null
}

/**
 * `GET /v1/shards`: the map as a coordinator knows it, and whether it takes partials now. A map read
 * off the wire without `status` is taken as `ok`.
 */
export interface ShardMapView extends ShardMap {
  /** `ok`; `no_quorum` (etcd has lost its majority: no partial is taken); `embedded` (single fog). */
  status: 'ok' | 'no_quorum' | 'starting' | 'embedded'
}

export function shardOf (pipeline: string, key: string, shards: number): number {
  if (!(shards > 0)) throw new RangeError(`shardOf: ${shards} shards`)
  return h32(pipeline + '\0' + key) % shards
}

/** The member that owns the shard of (pipeline, key), or undefined (no cluster, or unassigned). */
export function ownerOf (map: ShardMap, pipeline: string, key: string): ShardMember | undefined {
  if (map.shards === 0) return undefined
  const id = map.owners[shardOf(pipeline, key, map.shards)]
  return id === null ? undefined : map.members.find(m => m.id === id)
}

/**
 * A balanced assignment of `shards` shards to `members` (ids) that moves as few shards as possible
 * from `previous` (owners by shard, or empty): every member ends with ⌊shards/n⌋ or ⌈shards/n⌉ shards;
 * members keep what they had up to their share, and only orphaned or surplus shards move. Deterministic
 * for the same input, so a new leader computing it again changes nothing.
 */
export function assignShards (previous: ReadonlyArray<string | null>, members: readonly string[], shards: number): Array<string | null> {
  const owners: Array<string | null> = Array.from({ length: shards }, (_, i) => previous[i] ?? null)
  if (members.length === 0) return owners.fill(null)
  const live = [...new Set(members)].sort()
  const held = new Map<string, number[]>(live.map(m => [m, []]))
  const free: number[] = []
  for (let s = 0; s < shards; s++) {
    const list = owners[s] === null ? undefined : held.get(owners[s]!)
    if (list === undefined) free.push(s)
    else list.push(s)
  }
  // The members holding most keep the larger shares, so fewer shards move.
  const base = Math.floor(shards / live.length)
  const extra = shards % live.length
  const byHolding = [...live].sort((a, b) => held.get(b)!.length - held.get(a)!.length || (a < b ? -1 : 1))
  const quota = new Map(byHolding.map((m, i) => [m, base + (i < extra ? 1 : 0)]))
  for (const m of live) {
    const list = held.get(m)!
    while (list.length > quota.get(m)!) free.push(list.pop()!)
  }
  free.sort((a, b) => a - b)
  for (const m of live) {
    const list = held.get(m)!
    while (list.length < quota.get(m)!) {
      const s = free.shift()!
      owners[s] = m
      list.push(s)
    }
  }
  return owners
}

/** Checks a shard map read off the wire (an HTTP answer, a refusal, gossip). */
export function parseShardMap (v: unknown): ShardMapView {
  const bad = (why: string): never => { throw new WireError(`invalid shard map: ${why}`) }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad('not an object')
  const o = v as Record<string, unknown>
  const { version, shards, owners, members, leader, status } = o
  if (!Number.isSafeInteger(version) || (version as number) < 0) bad('version is not a non-negative integer')
  if (!Number.isSafeInteger(shards) || (shards as number) < 0 || (shards as number) > MAX_SHARDS) bad(`shards is not an integer in 0..${MAX_SHARDS}`)
  if (!Array.isArray(owners) || owners.length !== shards) bad('owners is not a list of one entry per shard')
  // The leader's first map is version 1: a map with shards and version 0 could never replace "no cluster".
  if ((shards as number) > 0 && (version as number) === 0) bad('a map with shards has version 0')
  if (!Array.isArray(members)) bad('members is not a list')
  const ms: ShardMember[] = (members as unknown[]).map(m => {
    const r = m as Record<string, unknown> | null
    if (typeof r !== 'object' || r === null || typeof r.id !== 'string' || r.id === '' || typeof r.http !== 'string') return bad('a member lacks id or http')
    if (!/^https?:\/\//.test(r.http)) bad(`member ${r.id} has no http(s) URL`)
    return { id: r.id, http: r.http }
  })
  const ids = new Set(ms.map(m => m.id))
  if (ids.size !== ms.length) bad('a member id appears twice')
  for (const owner of owners as unknown[]) {
    if (owner !== null && (typeof owner !== 'string' || !ids.has(owner))) bad('an owner is not one of the members')
  }
  if (leader !== null && leader !== undefined && typeof leader !== 'string') bad('leader is not a string')
  const statuses = ['ok', 'no_quorum', 'starting', 'embedded']
  if (status !== undefined && !statuses.includes(status as string)) bad(`status is not one of ${statuses.join(', ')}`)
  return {
    version: version as number,
    shards: shards as number,
    owners: [...owners as Array<string | null>],
    members: ms,
    leader: (leader as string | null | undefined) ?? null,
    status: (status as ShardMapView['status'] | undefined) ?? 'ok'
  }
}

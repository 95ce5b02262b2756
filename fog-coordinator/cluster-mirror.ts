/**
 * A fog cluster member's mirror of etcd: it loads everything under the cluster's prefix, then watches
 * it, so each coordinator holds the whole replicated state (all windows, the map, the members, the
 * leader, the deployed set, the "to forward" marks, the hand-offs to the sinks); queries answer the
 * same everywhere, and a new owner already has the open windows of the shards it takes over, and what
 * their previous owner may not have handed to its sinks.
 *
 * Invariants:
 * - the map comes through the same watch as the windows, in revision order: when a coordinator sees
 *   it own a shard, it has seen every write the previous owner could make to it;
 * - the mod revision of every key known here is kept, and an event no newer is not applied again
 *   (this coordinator's own commits come back through the watch and change nothing);
 * - a "to forward" mark or a hand-off to the sinks that the watch brings in a shard this coordinator
 *   owns is its own commit whose answer it never got (etcd took it, then the deadline passed or the
 *   connection broke): the pass that committed it failed, and the window is final here only through the
 *   watch, so nothing else forwards it or hands its results to the sinks. It is taken over at once, as
 *   on a takeover (a repeat, should a new owner take it over too, is harmless); one that comes while
 *   the commit may still be answered waits for its outcome (see committing);
 * - a broken watch is dropped and a new one starts right after the last event applied here (the
 *   etcd3 watcher resumes from the revision etcd reports on reconnecting, and could skip events);
 *   when that history was compacted away, everything is loaded again, without the members, leader
 *   and marks that went meanwhile, and with what the watch would have brought as news (shards gained,
 *   marks and hand-offs new since);
 * - a value no coordinator could have written is reported and ignored, never applied.
 */
import type { Etcd3, IKeyValue, Watcher } from 'etcd3'
import { setTimeout as sleep } from 'node:timers/promises'
import { EMPTY_DEPLOYMENT, readDeployedSet } from '../core/pipeline/deployment.ts'
import type { DeployedSet } from '../core/pipeline/deployment.ts'
import type { PipelineDef } from '../core/upstream/batch.ts'
import { shardOf } from '../core/upstream/shards.ts'
import type { ShardMap } from '../core/upstream/shards.ts'
import { windowId } from '../server/merge/contribution-store.ts'
import type { ReplicatedChange } from '../server/merge/replication.ts'
import type { Logger } from '../server/shell/log.ts'
import { decodeWindow } from './cluster-layout.ts'
import type { ClusterLayout, MemberRecord, WindowRef } from './cluster-layout.ts'
import type { ClusterSink } from './cluster.ts'

/** Pages of the initial load. */
const LOAD_PAGE = 1_000

/** A window final at `revision` that the cloud has not acknowledged yet. */
export interface Mark {
  ref: WindowRef
  revision: number
}

/** Results of final windows in `shard` that may not be in the sinks' queues yet (see fenced-commits.ts). */
export interface Handoff {
  /** Its etcd key. */
  key: string
  shard: number
  /** The results, encoded (see cluster-layout.ts). */
  value: string
}

export interface ClusterMirrorParts {
  id: string
  client: Etcd3
  layout: ClusterLayout
  log: Logger
  /** Whether this coordinator has joined (before, shards it owns are not news to forward). */
  joined: () => boolean
  /** The members or the leader changed (not at a load). */
  membershipChanged: () => void
  /** This coordinator's member key is gone from etcd (its lease expired). */
  selfMissing: () => void
  /** This coordinator now owns the shards of these hand-offs (taken over, or at its start). */
  handedOver: (handoffs: Handoff[]) => void
}

export class ClusterMirror {
  readonly #p: ClusterMirrorParts
  #sink: ClusterSink | undefined
  #watcher: Watcher | undefined
  #rewatching = false
  #stopped = false
  /** Mod revision of every key known here: older events are not applied again. */
  readonly #revs = new Map<string, number>()
  readonly #members = new Map<string, MemberRecord>()
  readonly #marks = new Map<string, Mark>()
  /** By etcd key. */
  readonly #handoffs = new Map<string, Handoff>()
  #leader: string | null = null
  #deployed: DeployedSet = EMPTY_DEPLOYMENT
  #map: ShardMap | undefined
  #mapRev = 0
  /** The revision of the last event applied here: a new watch starts after it. */
  #seenRev = 0
  /** Keys of marks and hand-offs in this coordinator's commits that etcd has not answered yet. */
  readonly #committing = new Set<string>()
  /** Of those, the ones the watch brought before the answer. */
  readonly #echoed = new Set<string>()

  constructor (parts: ClusterMirrorParts) {
    this.#p = parts
  }

  /** Where what others committed goes (see ClusterSink); set before the first load. */
  sendTo (sink: ClusterSink): void {
    this.#sink = sink
  }

  async stop (): Promise<void> {
    this.#stopped = true
    await this.#watcher?.cancel().catch(() => {})
  }

  get leader (): string | null { return this.#leader }
  get map (): ShardMap | undefined { return this.#map }
  /** The mod revision of the shard map: commits are fenced on it. */
  get mapRev (): number { return this.#mapRev }
  get deployed (): DeployedSet { return this.#deployed }
  get members (): ReadonlyMap<string, MemberRecord> { return this.#members }

  /** The mod revision of `key` as known here (0: none). */
  rev (key: string): number {
    return this.#revs.get(key) ?? 0
  }

  mark (ref: WindowRef): Mark | undefined {
    return this.#marks.get(windowId(ref))
  }

  /**
   * This coordinator is about to commit `puts`: until committed or uncommitted says how it went, the
   * watch bringing one of its marks or hand-offs is not news (the pass that commits them forwards the
   * windows and hands the results to the sinks itself once etcd answers).
   */
  committing (puts: ReadonlyArray<[string, Buffer | string]>): void {
    for (const [k] of puts) {
      const kind = this.#p.layout.parse(k).kind
      if (kind === 'mark' || kind === 'handoff') this.#committing.add(k)
    }
  }

  /**
   * A commit of `puts` (see committing) got no answer, or was refused. Refused, etcd took none of it;
   * unanswered, it may have: the marks and hand-offs of it that the watch already brought are taken
   * over now, those it brings later when they come.
   */
  uncommitted (puts: ReadonlyArray<[string, Buffer | string]>): void {
    const marks: Mark[] = []
    const handoffs: Handoff[] = []
    for (const [k] of puts) {
      this.#committing.delete(k)
      if (!this.#echoed.delete(k)) continue
      const parsed = this.#p.layout.parse(k)
      if (parsed.kind === 'mark' && this.owns(parsed.ref.pipeline, parsed.ref.key)) {
        const mark = this.#marks.get(windowId(parsed.ref))
        if (mark !== undefined) marks.push(mark)
      } else if (parsed.kind === 'handoff' && this.#ownsShard(parsed.shard)) {
        const handoff = this.#handoffs.get(k)
        if (handoff !== undefined) handoffs.push(handoff)
      }
    }
    this.#unanswered(marks, handoffs)
    this.#takeOver(marks, handoffs)
  }

  #unanswered (marks: readonly Mark[], handoffs: readonly Handoff[]): void {
    if (marks.length === 0 && handoffs.length === 0) return
    this.#p.log.info('cluster.unanswered_commit', `etcd took a commit of final windows without answering it: forwarding ${marks.length} window(s) and handing ${handoffs.length} hand-off(s) to the sinks now`, {
      windows: marks.length, handoffs: handoffs.length
    })
  }

  /**
   * This coordinator committed `puts` at `rev`. The watch skips the commit when it comes back (the
   * revision is known), so what matters of it is noted now: the revisions, and the marks.
   */
  committed (puts: ReadonlyArray<[string, Buffer | string]>, rev: number): void {
    for (const [k, v] of puts) {
      this.#committing.delete(k)
      this.#echoed.delete(k)
      this.#revs.set(k, Math.max(this.#revs.get(k) ?? 0, rev))
      const parsed = this.#p.layout.parse(k)
      if (parsed.kind === 'mark') this.#marks.set(windowId(parsed.ref), { ref: parsed.ref, revision: Number(v) })
      else if (parsed.kind === 'handoff') this.#handoffs.set(k, { key: k, shard: parsed.shard, value: v.toString() })
    }
  }

  /** This coordinator's key compared at `rev` held (definitions committed with a batch). */
  compared (keys: readonly string[], rev: number): void {
    for (const k of keys) this.#revs.set(k, Math.max(this.#revs.get(k) ?? 0, rev))
  }

  /** This coordinator registered: known at once, not when the watch brings it. */
  registered (member: MemberRecord, rev: number): void {
    this.#members.set(member.id, member)
    this.#revs.set(this.#p.layout.member(member.id), rev)
  }

  /** This coordinator stored the deployed set `set` at `rev`. */
  deployedStored (set: DeployedSet, rev: number): void {
    this.#revs.set(this.#p.layout.deployed, rev)
    this.#deployed = set
  }

  ownedShards (): Set<number> {
    const owned = new Set<number>()
    this.#map?.owners.forEach((o, i) => { if (o === this.#p.id) owned.add(i) })
    return owned
  }

  /** The coordinator that owns the shard of (pipeline, key), or null without a map. */
  owner (pipeline: string, key: string): string | null {
    const map = this.#map
    return map === undefined || map.shards === 0 ? null : map.owners[shardOf(pipeline, key, map.shards)]
  }

  /** Whether this coordinator owns the shard of (pipeline, key), and so commits and finalizes its windows. */
  owns (pipeline: string, key: string): boolean {
    return this.owner(pipeline, key) === this.#p.id
  }

  #ownsShard (shard: number): boolean {
    return this.#map?.owners[shard] === this.#p.id
  }

  /** Everything under the prefix, page by page at one revision, then a watch from the next one. */
  async load (): Promise<void> {
    const { client, layout } = this.#p
    const end = prefixEnd(layout.prefix)
    let from = layout.prefix
    let rev = 0
    const kvs: IKeyValue[] = []
    for (;;) {
      let q = client.getAll().inRange({ start: from, end }).limit(LOAD_PAGE)
      if (rev > 0) q = q.revision(rev)
      const res = await q.exec()
      if (rev === 0) rev = Number(res.header.revision)
      kvs.push(...res.kvs)
      if (!res.more || res.kvs.length === 0) break
      from = res.kvs[res.kvs.length - 1].key.toString() + '\0'
    }
    // A reload (the watch's history was compacted away) after joining: what it missed is news as the
    // watch's events would have been, shards gained meanwhile and marks and hand-offs new since.
    const reload = this.#p.joined()
    const before = this.ownedShards()
    const knownMarks = new Map([...this.#marks].map(([id, m]) => [id, m.revision]))
    const knownHandoffs = new Set(this.#handoffs.keys())
    // A reload must not keep members, the leader, marks or hand-offs that went while this was not watching.
    for (const key of this.#revs.keys()) {
      const kind = layout.parse(key).kind
      if (kind === 'member' || kind === 'leader' || kind === 'mark' || kind === 'handoff') this.#revs.delete(key)
    }
    this.#members.clear()
    this.#marks.clear()
    this.#handoffs.clear()
    this.#leader = null
    this.#applyEvents(kvs.map(kv => ({ type: 'Put' as const, kv })), true)
    this.#seenRev = rev
    if (reload) {
      this.gained(before, {
        marks: [...this.#marks].filter(([id, m]) => knownMarks.get(id) !== m.revision && this.#unclaimed(layout.mark(m.ref))).map(([, m]) => m),
        handoffs: [...this.#handoffs.values()].filter(h => !knownHandoffs.has(h.key) && this.#unclaimed(h.key))
      })
    }
    await this.#watch(rev + 1)
  }

  /** A mark or hand-off of this coordinator's that it has not handed on, unless a commit of it is still unanswered. */
  #unclaimed (key: string): boolean {
    if (!this.#committing.has(key)) return true
    this.#echoed.add(key)
    return false
  }

  async #watch (fromRev: number): Promise<void> {
    const watcher = await this.#p.client.watch().prefix(this.#p.layout.prefix).startRevision(String(fromRev)).create()
    if (this.#stopped) {
      await watcher.cancel().catch(() => {})
      return
    }
    this.#watcher = watcher
    watcher.on('data', res => {
      if (watcher === this.#watcher) this.#applyEvents(res.events, false)
    })
    const drop = (reload: boolean) => {
      if (watcher !== this.#watcher || this.#stopped) return
      this.#watcher = undefined
      void watcher.cancel().catch(() => {})
      void this.#rewatch(reload)
    }
    watcher.on('disconnected', () => { drop(false) })
    // Canceled by etcd (e.g. its start revision was compacted): load everything again.
    watcher.on('error', err => {
      this.#p.log.warn('cluster.watch_canceled', `watch canceled (${err.message}); loading the state again`, { reason: err.message })
      drop(true)
    })
  }

  async #rewatch (reload: boolean): Promise<void> {
    if (this.#rewatching) return
    this.#rewatching = true
    try {
      for (let attempt = 0; !this.#stopped && this.#watcher === undefined; attempt++) {
        try {
          if (reload) {
            await this.load()
          } else {
            await this.#watch(this.#seenRev + 1)
          }
        } catch (err) {
          reload = reload || /compact/i.test((err as Error).message)
          await sleep(Math.min(2_000, 100 * 2 ** Math.min(attempt, 5)))
        }
      }
    } finally {
      this.#rewatching = false
    }
  }

  #applyEvents (events: ReadonlyArray<{ type: 'Put' | 'Delete', kv: IKeyValue }>, initial: boolean): void {
    const { id, layout, log } = this.#p
    const change: ReplicatedChange = { pipelines: [], windows: [] }
    const removed: WindowRef[] = []
    const before = this.ownedShards()
    // Marks and hand-offs of this coordinator's own commits that it never heard the answer to.
    const unclaimed: { marks: Mark[], handoffs: Handoff[] } = { marks: [], handoffs: [] }
    const mine = (key: string, owned: boolean): boolean => !initial && owned && this.#p.joined() && this.#unclaimed(key)
    let membership = false
    for (const { type, kv } of events) {
      const key = kv.key.toString()
      const rev = Number(kv.mod_revision)
      this.#seenRev = Math.max(this.#seenRev, rev)
      const parsed = layout.parse(key)
      if (type === 'Delete') {
        this.#revs.delete(key)
        if (parsed.kind === 'member') {
          this.#members.delete(parsed.id)
          membership = true
        } else if (parsed.kind === 'leader') {
          this.#leader = null
          membership = true
        } else if (parsed.kind === 'mark') {
          this.#marks.delete(windowId(parsed.ref))
        } else if (parsed.kind === 'handoff') {
          this.#handoffs.delete(key)
        } else if (parsed.kind === 'window') {
          removed.push(parsed.ref)
        }
        continue
      }
      // This coordinator's own commits come back through the watch: nothing newer than them is lost.
      if ((this.#revs.get(key) ?? 0) >= rev) continue
      this.#revs.set(key, rev)
      try {
        switch (parsed.kind) {
          case 'member': {
            this.#members.set(parsed.id, JSON.parse(kv.value.toString()) as MemberRecord)
            membership = true
            break
          }
          case 'leader': {
            const leader = kv.value.toString()
            if (leader !== this.#leader) log.info('cluster.leader', `leader: ${leader}${leader === id ? ' (this coordinator)' : ''}`, { leader })
            this.#leader = leader
            membership = true
            break
          }
          case 'shardmap': {
            const map = JSON.parse(kv.value.toString()) as ShardMap
            this.#map = map
            this.#mapRev = rev
            break
          }
          case 'pipeline':
            change.pipelines.push(JSON.parse(kv.value.toString()) as PipelineDef)
            break
          case 'deployed':
            this.#deployed = readDeployedSet(JSON.parse(kv.value.toString()))
            this.#sink?.deployed(this.#deployed)
            break
          case 'window':
            change.windows.push(decodeWindow(kv.value))
            break
          case 'mark': {
            // Owned at this point of the history: only this coordinator could have committed it.
            const mark = { ref: parsed.ref, revision: Number(kv.value.toString()) }
            this.#marks.set(windowId(parsed.ref), mark)
            if (mine(key, this.owns(parsed.ref.pipeline, parsed.ref.key))) unclaimed.marks.push(mark)
            break
          }
          case 'handoff': {
            const handoff = { key, shard: parsed.shard, value: kv.value.toString() }
            this.#handoffs.set(key, handoff)
            if (mine(key, this.#ownsShard(parsed.shard))) unclaimed.handoffs.push(handoff)
            break
          }
        }
      } catch (err) {
        // Only coordinators write here; a value they cannot read is a bug or tampering: report, go on.
        log.error('cluster.unreadable_value', `unreadable value at ${key} (${(err as Error).message}); ignored`, { key, err })
      }
    }
    if (change.pipelines.length > 0 || change.windows.length > 0) this.#sink?.apply(change)
    if (removed.length > 0) this.#sink?.removed(removed)
    if (membership && !initial) this.#p.membershipChanged()
    if (!initial && this.#p.joined()) this.gained(before, unclaimed)
    if (!initial && this.#members.get(id) === undefined) this.#p.selfMissing()
  }

  /**
   * Windows still to forward, and hand-offs to the sinks, in shards this coordinator has just taken over
   * (owned now, not in `before`; at its start, every shard it owns), with `unclaimed` ones of its own
   * commits (see the invariants) in shards it kept.
   */
  gained (before: Set<number>, unclaimed: { marks: Mark[], handoffs: Handoff[] } = { marks: [], handoffs: [] }): void {
    const map = this.#map
    if (map === undefined || map.shards === 0) return
    const now = this.ownedShards()
    const gained = (s: number): boolean => now.has(s) && !before.has(s)
    // Those in shards gained go with the rest of those shards; those in shards lost since, to the new owner.
    const kept = (s: number): boolean => now.has(s) && before.has(s)
    const markShard = (m: Mark): number => shardOf(m.ref.pipeline, m.ref.key, map.shards)
    const marks = unclaimed.marks.filter(m => this.#marks.get(windowId(m.ref)) === m && kept(markShard(m)))
    const handoffs = unclaimed.handoffs.filter(h => this.#handoffs.get(h.key) === h && kept(h.shard))
    this.#unanswered(marks, handoffs)
    if ((this.#marks.size > 0 || this.#handoffs.size > 0) && [...now].some(s => !before.has(s))) {
      marks.push(...[...this.#marks.values()].filter(m => gained(markShard(m))))
      handoffs.push(...[...this.#handoffs.values()].filter(h => gained(h.shard)))
    }
    this.#takeOver(marks, handoffs)
  }

  #takeOver (marks: Mark[], handoffs: Handoff[]): void {
    if (marks.length > 0) this.#sink?.toForward(marks)
    if (handoffs.length > 0) this.#p.handedOver(handoffs)
  }
}

/** The first key after every key with this prefix. */
function prefixEnd (prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)
}

/**
 * The edge's uplink: every closed window of a pipeline that emits `upstream` becomes a contribution in
 * the durable outbox, and the shipper delivers the outbox to the fog coordinators (the cloud sink on
 * failover). Count windows stay local: they are not merged upstream.
 *
 * An outbox item is one contribution, CBOR:
 *   [defId, key, start, end, edge, revision, [state, …], watermark | null]
 * `defId` names the PipelineDef the states were made with (kept in the outbox's meta, so items from
 * before a restart with an edited pipelines file still go out with the definition they were made with).
 *
 * Watermarks never run ahead of the outbox: a receiver finalizes a window once every edge's watermark
 * has passed its end, so a batch may only carry a watermark when every window that closed before it is
 * in that batch or was delivered already. Each item records the watermark as of the last flush before
 * it was emitted (all windows ending at or before it were in the outbox by then), and a batch carries,
 * per pipeline, the highest recorded watermark of its items; a batch that leaves nothing pending for
 * its target carries the pipelines' current watermarks (as of the flush just before it was built).
 *
 * Only such a batch may also say a pipeline is idle (`idle: true` with its watermark): the operator was
 * idle at that flush (no reading for `idle`, no window open), so every window it will ever have closed
 * is in the outbox, and none of them waits for the target. Receivers then stop waiting for this edge
 * in that pipeline; the next batch without the flag (a reading came) makes them wait again.
 */
import { Decoder, Encoder } from 'cbor-x'
import { ConfigError } from '../core/errors.ts'
import type { Batch, PipelineDef } from '../core/upstream/batch.ts'
import { pipelineDef } from '../core/upstream/pipeline-def.ts'
import type { WindowOperator } from '../core/windows/operator.ts'
import type { WindowState } from '../core/windows/window.ts'
import type { Logger } from '../server/shell/log.ts'
import type { Metrics } from '../server/shell/metrics.ts'
import { BatchBuilder } from '../server/delivery/batch-builder.ts'
import type { OutboxWindow, SenderWatermark } from '../server/delivery/batch-builder.ts'
import { Outbox, OutboxDefinitions } from '../server/delivery/outbox.ts'
import type { BatchDefinitions } from '../server/delivery/outbox.ts'
import type { OutboxItem } from '../server/delivery/outbox.ts'
import type { PeerClient } from '../server/shell/peer-client.ts'
import { FAILURE_REASONS, SHIPPER_DEFAULTS, Shipper } from '../server/delivery/shipper.ts'
import type { BatchContext, ShipperStatus } from '../server/delivery/shipper.ts'

export interface UplinkOptions {
  /** This edge's id: the sender of batches and the edge of its contributions. */
  edge: string
  /** Directory of the outbox database; undefined keeps it in memory (tests). */
  dataDir?: string
  /** Fog coordinator URLs: tried in turn, or, when they are a cluster, where its shard map is asked. */
  fog: string[]
  /** Cloud sink URLs, tried in turn: the primary when there is no fog, else used on failover. */
  cloud?: string[]
  /**
   * With no `fog` URLs, have a fog tier anyway and wait for fogs to be found (`addFog`, from the mesh)
   * rather than send to the cloud, or need one: the cloud, if any, takes over only on failover.
   * Default false.
   */
  discoverFog?: boolean
  failoverAfter: number
  /** Outbox bound, bytes. */
  outboxMax: number
  requestTimeout: number
  retryMax: number
  log: Logger
  /** How fogs and the cloud are called (TLS trust, this edge's certificate). Default: a plain client. */
  client?: PeerClient
  /**
   * Called right after each append to the outbox, whoever flushed (the agent's tick or the shipper
   * before a batch): the edge commits its result store there, so that the store never lags the
   * outbox by an event-loop turn (see checkpoint.ts for why that order matters). Default: nothing.
   */
  afterAppend?: () => void
}

export interface UplinkStatus extends ShipperStatus {
  fog: string[]
  cloud: string[] | null
  outbox: { items: number, bytes: number, dropped: number }
}


const encoder = new Encoder({ useRecords: false, mapsAsObjects: true })
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true })

/** Whether a pipeline's windows go upstream: it emits `upstream` and its windows are mergeable. */
export function goesUpstream (operator: WindowOperator): boolean {
  return operator.pipeline.spec.window.kind !== 'count' && operator.pipeline.emits.some(e => e.kind === 'upstream')
}

interface Upstream {
  operator: WindowOperator
  defId: string
  def: PipelineDef
}

type Item = [defId: string, key: string, start: number, end: number, edge: string, revision: number, states: unknown[], watermark: number | null]

/** A contribution in the outbox, as `appendedSince` lists them. */
export interface QueuedContribution {
  /** The definition it was made with (maybe not the pipeline's current one). */
  def: PipelineDef
  key: string
  start: number
  end: number
  revision: number
  states: unknown[]
}

export class Uplink {
  readonly outbox: Outbox
  readonly #shipper: Shipper
  readonly #edge: string
  /** Fog URLs: from --fog, and those found through the mesh since. */
  readonly #fog: string[]
  readonly #cloud: string[] | undefined
  readonly #log: Logger
  readonly #afterAppend: () => void
  readonly #maxBuffered: number
  /** Pipelines that go upstream, by name. */
  readonly #upstream = new Map<string, Upstream>()
  /** Every definition items may refer to, by id (loaded from the outbox on demand). */
  readonly #defs: OutboxDefinitions
  /** Builds the batches from the outbox's items. */
  readonly #builder: BatchBuilder
  /** Per pipeline, the watermark as of the last flush: every window ending at or before it is in the outbox. */
  readonly #safe = new Map<string, number>()
  /** Pipelines idle as of the last flush that reached the outbox. */
  readonly #idle = new Set<string>()
  #buffer: Uint8Array[] = []
  #buffered = 0
  #closed = false
  /** Contributions lost before reaching the outbox (it could not be written for too long); the builder counts the unreadable ones. */
  #lost = 0
  #appendFailing = false
  /** Per pipeline, the highest watermark the fog tier acknowledged from this edge. */
  readonly #ackedByFog = new Map<string, number>()
  /** The highest shard map version the mesh has announced (see shardMapSeen). */
  #mapSeen = 0

  constructor (options: UplinkOptions, operators: Iterable<WindowOperator>) {
    this.#edge = options.edge
    this.#fog = [...options.fog]
    this.#cloud = options.cloud
    this.#log = options.log
    this.#afterAppend = options.afterAppend ?? (() => {})
    this.#maxBuffered = options.outboxMax
    const tiers = [
      // The fogs may be a cluster that splits windows by shard: the router finds out and follows it.
      ...(options.fog.length > 0 || options.discoverFog === true ? [{ name: 'fog', urls: options.fog, route: true, discovered: options.discoverFog }] : []),
      ...(options.cloud !== undefined ? [{ name: 'cloud', urls: options.cloud }] : [])
    ]
    if (tiers.length === 0) throw new ConfigError('an uplink needs --fog or --cloud, or the mesh to find fogs in')
    this.outbox = new Outbox({ dataDir: options.dataDir, maxBytes: options.outboxMax, targets: tiers.map(t => t.name) })
    this.#defs = new OutboxDefinitions(this.outbox)
    this.#builder = new BatchBuilder({ sender: this.#edge, role: 'edge', log: this.#log, read: item => this.#window(item), current: defs => this.#current(defs) })
    for (const operator of operators) this.addPipeline(operator)
    this.#shipper = new Shipper(this.outbox, this, {
      ...SHIPPER_DEFAULTS,
      tiers,
      failoverAfter: options.failoverAfter,
      requestTimeout: options.requestTimeout,
      retryMax: options.retryMax,
      log: this.#log,
      client: options.client
    })
  }

  start (): void {
    this.#shipper.start()
  }

  /** Stops shipping and keeps what is not delivered in the outbox for the next start. */
  async stop (): Promise<void> {
    await this.#shipper.stop()
    this.flush()
    this.#closed = true
    this.outbox.close()
  }

  /**
   * A pipeline to send upstream, or a new version of one (its windows from now on go with the new
   * definition). A pipeline that stops running keeps its entry: its last windows and its watermark
   * (idle once its `idle` has passed) still go out, so the merge tiers do not wait for it.
   */
  addPipeline (operator: WindowOperator): void {
    if (!goesUpstream(operator)) return
    const def = pipelineDef(operator.pipeline.spec)
    this.#upstream.set(def.name, { operator, defId: this.#defs.idOf(def), def })
  }

  /** A window closed (or was re-emitted by a late reading): queue its contribution. */
  onWindow (operator: WindowOperator, w: WindowState): void {
    const up = this.#upstream.get(operator.pipeline.spec.name)
    if (up === undefined) return
    const selects = operator.pipeline.selects
    // The state is live (the operator keeps updating it): encode it now.
    const states = w.states.map((s, i) => selects[i].fn.encode(s))
    const watermark = this.#safe.get(up.def.name)
    const item: Item = [up.defId, w.key, w.start, w.end, this.#edge, w.revision, states, watermark ?? null]
    const data = encoder.encode(item).slice()
    this.#buffer.push(data)
    this.#buffered += data.byteLength
  }

  /** A fog found while running: batches may go there from now on (see `discoverFog`). */
  addFog (url: string): void {
    if (this.#fog.includes(url)) return
    this.#fog.push(url)
    this.#log.info('uplink.fog_discovered', `found fog ${url} in the mesh`, { url })
    this.#shipper.addUrl('fog', url)
  }

  /** A fog in the mesh holds this shard map version: the fog tier follows it at once if it is newer. */
  shardMapSeen (version: number): void {
    // Once per version: heartbeats repeat it every few seconds, and a refresh that did not get it yet
    // is followed by the router's own refreshes and by the refusals of the old owners.
    if (version <= this.#mapSeen) return
    this.#mapSeen = version
    this.#shipper.shardMapSeen('fog', version)
  }

  /** Told by the shipper of each acknowledged batch: notes the watermarks the fog tier now has. */
  delivered (batch: Omit<Batch, 'seq'>, target: string): void {
    if (target !== 'fog') return
    for (const w of batch.watermarks) {
      if (w.watermark > (this.#ackedByFog.get(w.pipeline) ?? -Infinity)) this.#ackedByFog.set(w.pipeline, w.watermark)
    }
  }

  /**
   * The pipeline's watermark as the fog tier acknowledged it, or null before any: what this edge may
   * tell the mesh. Its current watermark could run ahead of windows the fogs do not have yet.
   */
  fogWatermark (pipeline: string): number | null {
    return this.#ackedByFog.get(pipeline) ?? null
  }

  /** Contributions emitted but not yet in the outbox (an append failed): not durable yet. */
  get backlog (): number {
    return this.#buffer.length
  }

  /** Id of the last outbox item appended: a position for `appendedSince`. */
  get lastAppended (): number {
    return this.outbox.lastId
  }

  /**
   * Contributions appended to the outbox after position `id` that are still in it (not yet
   * delivered to the primary), oldest first; unreadable items are left out (`build` counts them).
   */
  * appendedSince (id: number): Generator<QueuedContribution> {
    for (const item of this.outbox.since(id)) {
      const v = this.#parse(item)
      if (v === undefined) continue
      const [defId, key, start, end, , revision, states] = v
      yield { def: this.#def(defId)!, key, start, end, revision, states }
    }
  }

  /**
   * Appends buffered contributions to the outbox in one transaction, then notes each pipeline's
   * watermark as safe to send. The agent calls it every tick (and before each commit of its results)
   * rather than per window: each append waits for an fsync (synchronous = FULL), which on an SD card
   * would otherwise stall the readings;
   * a window not yet appended is as volatile as a window still open. Never called while an operator
   * is emitting, so every window due at the watermark noted is in the outbox.
   */
  flush (): void {
    if (this.#closed) return
    if (this.#buffer.length > 0) {
      try {
        this.outbox.append(this.#buffer)
      } catch (err) {
        // A full or failing disk: keep the contributions in memory (bounded like the outbox) and
        // retry at the next flush; the watermarks stay where they were meanwhile.
        if (!this.#appendFailing) this.#log.error('outbox.write_failed', `cannot write the outbox (${(err as Error).message}); keeping windows in memory, retrying`, { err })
        this.#appendFailing = true
        while (this.#buffered > this.#maxBuffered && this.#buffer.length > 0) {
          this.#buffered -= this.#buffer.shift()!.byteLength
          this.#lost++
        }
        // Windows not in the outbox yet: no pipeline may be called idle until they are.
        this.#idle.clear()
        return
      }
      if (this.#appendFailing) this.#log.info('outbox.write_recovered', 'the outbox takes writes again')
      this.#appendFailing = false
      this.#buffer = []
      this.#buffered = 0
      this.#afterAppend()
      this.#shipper.notify()
    }
    const now = Date.now()
    let turned = false
    for (const [name, up] of this.#upstream) {
      const wm = up.operator.watermark
      if (Number.isFinite(wm) && wm > (this.#safe.get(name) ?? -Infinity)) this.#safe.set(name, wm)
      const idle = up.operator.isIdle(now)
      if (idle === this.#idle.has(name)) continue
      turned = true
      if (idle) this.#idle.add(name)
      else this.#idle.delete(name)
    }
    // Receivers finalize without an idle edge: that it is active again must not wait for the pacing
    // of watermark-only batches, or windows it is about to contribute to could be finalized without it.
    if (turned) this.#shipper.notify()
  }

  build (items: OutboxItem[], ctx: BatchContext): { batch: Omit<Batch, 'seq'>, used: number } {
    return this.#builder.build(items, ctx)
  }

  /** An item as the batch builder takes it; throws when it cannot be read. */
  #window (item: OutboxItem): OutboxWindow {
    const [defId, key, start, end, edge, revision, states, watermark] = this.#read(item)
    return { defId, def: this.#def(defId)!, key, start, end, contributions: [{ edge, revision, states }], watermark }
  }

  /** The pipelines' watermarks as of the last flush, for a batch that leaves nothing pending. */
  #current (defs: BatchDefinitions): SenderWatermark[] {
    const current: SenderWatermark[] = []
    for (const [name, up] of this.#upstream) {
      if (!defs.take(up.defId, up.def)) continue
      const safe = this.#safe.get(name)
      if (safe === undefined) continue
      // Idle only with no window of it left anywhere on this side: not pending, not buffered.
      current.push({ pipeline: name, watermark: safe, idle: this.#idle.has(name) && this.#buffer.length === 0 })
    }
    return current
  }

  /** An item's fields, or undefined when it cannot be read. */
  #parse (item: OutboxItem): Item | undefined {
    try {
      return this.#read(item)
    } catch {
      return undefined
    }
  }

  #read (item: OutboxItem): Item {
    const v = decoder.decode(item.data) as Item
    if (!Array.isArray(v) || v.length !== 8 || this.#def(v[0]) === undefined) throw new Error('not an outbox contribution')
    return v
  }

  #def (defId: string): PipelineDef | undefined {
    return this.#defs.get(defId)
  }

  status (): UplinkStatus {
    return {
      ...this.#shipper.status(),
      fog: this.#fog,
      cloud: this.#cloud ?? null,
      outbox: { items: this.outbox.items, bytes: this.outbox.bytes, dropped: this.outbox.dropped + this.#lost + this.#builder.unreadable }
    }
  }

  registerMetrics (m: Metrics): void {
    const stats = this.#shipper.stats
    m.gauge('fogmesh_outbox_bytes', 'Size of the partials waiting in the outbox', [], () => [[{}, this.outbox.bytes]])
    m.gauge('fogmesh_outbox_items', 'Partials (window contributions) waiting in the outbox', [], () => [[{}, this.outbox.items]])
    m.counter('fogmesh_outbox_dropped_total', 'Partials dropped undelivered: the outbox was full (oldest first), or unwritable for too long', [], () => [[{}, this.outbox.dropped + this.#lost + this.#builder.unreadable]])
    m.counter('fogmesh_failovers_total', 'Times the uplink failed over from the fog to the cloud', [], () => [[{}, stats.failovers]])
    m.counter('fogmesh_batches_sent_total', 'Batches acknowledged upstream, by tier', ['target'], () => Object.entries(stats.sent).map(([target, n]) => [{ target }, n]))
    m.counter('fogmesh_batches_failed_total', 'Batch requests that failed, by tier and reason', ['target', 'reason'], () =>
      Object.entries(stats.failed).flatMap(([target, byReason]) => FAILURE_REASONS.map(reason => [{ target, reason }, byReason[reason] ?? 0] as [Record<string, string>, number])))
    m.gauge('fogmesh_uplink_target', 'The tier batches go to now (1), by tier', ['target'], () => {
      const now = this.#shipper.status().target
      return Object.keys(stats.sent).map(target => [{ target }, target === now ? 1 : 0])
    })
  }
}

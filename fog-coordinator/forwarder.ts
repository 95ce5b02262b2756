/**
 * Fog → cloud forwarding. Every finalization pass of the fog's MergeNode hands its windows (each with
 * all its contributions and `final` = the fog's revision) to this forwarder, which appends them to a
 * durable outbox in the fog's data dir before the pass is recorded as final; a Shipper delivers the
 * outbox to the cloud sink as role 'fog' batches. While the cloud is down the windows wait in the
 * outbox (bounded by --outbox-max, oldest dropped and counted), across restarts too.
 *
 * An outbox item is one finalized window, CBOR:
 *   [defId, key, start, end, final, [[edge, revision, [state, …]], …], progress | null]
 * `defId` names the PipelineDef in the outbox's meta (as the edge's uplink does), so items keep the
 * definition they were finalized with.
 *
 * Watermarks. Batches carry every edge's watermark as the fog knows it (with its idle flag, so that the
 * cloud does not wait for an idle edge either), and the fog's own progress per
 * pipeline under the fog's id, as if the fog were one more edge: "every window ending at or before this
 * that I will finalize is in this batch or was delivered before". The cloud then waits for the fog, as
 * for an edge, before it finalizes a window edges sent it straight (on failover): without that, the
 * edges' own watermarks would let the cloud finalize a window whose other contributions are still at
 * the fog, and count it again (revision + 1) when the fog delivers. A fog silent for the cloud's
 * --finalize-after is not waited for, like any silent edge.
 *
 * The progress is the lowest watermark of the pipeline's edges as of a pass that succeeded: after a
 * pass, every window left pending has an edge whose watermark is below its end (else it was due), and
 * a new window only comes from an edge whose watermark has not reached its end yet (late updates are
 * revisions, and an edge never heard from is not waited for anywhere). Each item records the progress
 * as of the pass before its own (the windows of its own pass may be cut across batches), and a batch
 * that leaves nothing pending carries the latest. Idle edges are left out of the lowest watermark (the
 * fog does not wait for them either; with every edge idle, all of them count): a window an idle edge
 * contributes to after all comes as a revision, as at the fog. Edges silent at the fog still count (the
 * MergeNode does not say which are live): that only makes the cloud wait longer, at most its
 * --finalize-after. The fog's id must not also be an edge's.
 */
import { Decoder, Encoder } from 'cbor-x'
import type { Batch, WindowEntry } from '../core/upstream/batch.ts'
import type { Logger } from '../server/shell/log.ts'
import type { MergeNode } from '../server/merge/merge-node.ts'
import type { Metrics } from '../server/shell/metrics.ts'
import { BatchBuilder } from '../server/delivery/batch-builder.ts'
import type { OutboxWindow } from '../server/delivery/batch-builder.ts'
import { Outbox, OutboxDefinitions } from '../server/delivery/outbox.ts'
import type { OutboxItem } from '../server/delivery/outbox.ts'
import type { PeerClient } from '../server/shell/peer-client.ts'
import { FAILURE_REASONS, SHIPPER_DEFAULTS, Shipper } from '../server/delivery/shipper.ts'
import type { BatchContext } from '../server/delivery/shipper.ts'

export interface ForwarderOptions {
  /** The fog's id: the sender of batches, and the "edge" its progress watermarks are reported as. */
  fog: string
  /** Directory of the outbox database; undefined keeps it in memory (tests). */
  dataDir?: string
  /** Cloud sink URL, or several (processes of one cloud tier), tried in turn. */
  cloud: string | readonly string[]
  /** Outbox bound, bytes. */
  outboxMax: number
  requestTimeout: number
  retryMax: number
  log: Logger
  /** How the cloud is called (TLS trust, this fog's certificate). Default: a plain client. */
  client?: PeerClient
  /** The cloud acknowledged these windows at these revisions (a cluster clears its "to forward" marks). */
  onDelivered?: (windows: Array<{ ref: { pipeline: string, key: string, start: number, end: number }, revision: number }>) => void
}

/** What the forwarder takes from the fog's merge node: its passes, definitions, watermarks and metrics. */
export type ForwardedNode = Pick<MergeNode, 'onFinal' | 'definition' | 'watermarks' | 'metrics'>

/** The outbox target, and the tier name in metrics. */
const TARGET = 'cloud'

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true })
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true })

type Item = [defId: string, key: string, start: number, end: number, final: number, contributions: Array<[edge: string, revision: number, states: unknown[]]>, progress: number | null]

export class Forwarder {
  readonly outbox: Outbox
  readonly #node: ForwardedNode
  readonly #fog: string
  readonly #shipper: Shipper
  readonly #log: Logger
  readonly #removeListener: () => void
  /** Definitions items refer to, by id (loaded from the outbox's meta on demand). */
  readonly #defs: OutboxDefinitions
  /** Per pipeline, the fog's progress as of the last pass that reached the outbox. */
  readonly #progress = new Map<string, number>()
  /** Builds the batches for the cloud from the outbox's items. */
  readonly #builder: BatchBuilder
  readonly #onDelivered: ForwarderOptions['onDelivered']

  constructor (node: ForwardedNode, options: ForwarderOptions) {
    this.#node = node
    this.#fog = options.fog
    this.#log = options.log
    this.outbox = new Outbox({ dataDir: options.dataDir, maxBytes: options.outboxMax, targets: [TARGET] })
    this.#defs = new OutboxDefinitions(this.outbox)
    this.#builder = new BatchBuilder({
      sender: this.#fog,
      role: 'fog',
      log: this.#log,
      read: item => this.#read(item),
      current: () => [...this.#progress].map(([pipeline, watermark]) => ({ pipeline, watermark })),
      // An edge that has not reported a watermark here holds the fog's progress back, but has none to send.
      relayed: () => node.watermarks().filter(w => Number.isFinite(w.watermark))
    })
    this.#shipper = new Shipper(this.outbox, this, {
      ...SHIPPER_DEFAULTS,
      tiers: [{ name: TARGET, urls: [options.cloud].flat() }],
      requestTimeout: options.requestTimeout,
      retryMax: options.retryMax,
      log: this.#log,
      client: options.client
    })
    this.#onDelivered = options.onDelivered
    this.#removeListener = node.onFinal(entries => { this.forward(entries) })
    this.#registerMetrics(node.metrics)
  }

  start (): void {
    this.#shipper.start()
  }

  /** Stops shipping; what is not delivered stays in the outbox for the next start. */
  async stop (): Promise<void> {
    this.#removeListener()
    await this.#shipper.stop()
    this.outbox.close()
  }

  /**
   * One pass's windows into the outbox, in one transaction (one fsync). Throwing leaves the pass's
   * windows pending in the MergeNode, which offers them again at the next tick. A cluster coordinator
   * also hands over here the final windows of shards it took over that the cloud may not have.
   */
  forward (entries: readonly WindowEntry[]): void {
    const defIds = new Map<string, string>()
    const blobs = entries.map(e => {
      let defId = defIds.get(e.pipeline)
      if (defId === undefined) defIds.set(e.pipeline, defId = this.#defIdOf(e.pipeline))
      const item: Item = [defId, e.key, e.start, e.end, e.final ?? 0, e.contributions.map(c => [c.edge, c.revision, c.states]), this.#progress.get(e.pipeline) ?? null]
      // cbor-x encodes into a shared buffer: keep a copy.
      return encoder.encode(item).slice()
    })
    this.outbox.append(blobs)
    this.#advance()
    // A pass without windows moves only the progress: the shipper sends it at its own pace.
    if (blobs.length > 0) this.#shipper.notify()
  }

  /** The id of a pipeline's current definition, stored in the outbox's meta before any item uses it. */
  #defIdOf (pipeline: string): string {
    const def = this.#node.definition(pipeline)
    if (def === undefined) throw new Error(`no definition of pipeline ${pipeline} to forward its windows with`)
    return this.#defs.idOf(def)
  }

  /** Right after a pass reached the outbox: its pipelines' lowest edge watermarks are the new progress. */
  #advance (): void {
    const lowest = new Map<string, number>()
    const lowestActive = new Map<string, number>()
    for (const w of this.#node.watermarks()) {
      lowest.set(w.pipeline, Math.min(lowest.get(w.pipeline) ?? Infinity, w.watermark))
      if (w.idle !== true) lowestActive.set(w.pipeline, Math.min(lowestActive.get(w.pipeline) ?? Infinity, w.watermark))
    }
    for (const [pipeline, all] of lowest) {
      const wm = lowestActive.get(pipeline) ?? all
      if (wm > (this.#progress.get(pipeline) ?? -Infinity)) this.#progress.set(pipeline, wm)
    }
  }

  // BatchSource (for the shipper)

  /** Nothing to move: passes append to the outbox as they happen. */
  flush (): void {}

  delivered (batch: Omit<Batch, 'seq'>): void {
    if (this.#onDelivered === undefined || batch.windows.length === 0) return
    this.#onDelivered(batch.windows.map(w => ({ ref: { pipeline: w.pipeline, key: w.key, start: w.start, end: w.end }, revision: w.final ?? 0 })))
  }

  build (items: OutboxItem[], ctx: BatchContext): { batch: Omit<Batch, 'seq'>, used: number } {
    return this.#builder.build(items, ctx)
  }

  /** An item's fields; throws when it is not a forwarded window of a known definition. */
  #read (item: OutboxItem): OutboxWindow {
    const v = decoder.decode(item.data) as Item
    const def = Array.isArray(v) && v.length === 7 ? this.#defs.get(v[0]) : undefined
    if (def === undefined) throw new Error('not a forwarded window')
    const [defId, key, start, end, final, contributions, progress] = v
    return { defId, def, key, start, end, final, contributions: contributions.map(([edge, revision, states]) => ({ edge, revision, states })), watermark: progress }
  }

  /** The edge's uplink metrics, for the fog's one tier. */
  #registerMetrics (m: Metrics): void {
    const stats = this.#shipper.stats
    m.gauge('fogmesh_outbox_bytes', 'Size of the final windows waiting in the outbox for the cloud', [], () => [[{}, this.outbox.bytes]])
    m.gauge('fogmesh_outbox_items', 'Final windows waiting in the outbox for the cloud', [], () => [[{}, this.outbox.items]])
    m.counter('fogmesh_outbox_dropped_total', 'Final windows dropped undelivered: the outbox was full (oldest first), or unreadable', [], () => [[{}, this.outbox.dropped + this.#builder.unreadable]])
    m.counter('fogmesh_batches_sent_total', 'Batches acknowledged upstream, by tier', ['target'], () => Object.entries(stats.sent).map(([target, n]) => [{ target }, n]))
    m.counter('fogmesh_batches_failed_total', 'Batch requests that failed, by tier and reason', ['target', 'reason'], () =>
      Object.entries(stats.failed).flatMap(([target, byReason]) => FAILURE_REASONS.map(reason => [{ target, reason }, byReason[reason] ?? 0] as [Record<string, string>, number])))
  }
}

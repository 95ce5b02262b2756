/**
 * Turns outbox items into one outgoing batch: the edge's uplink (items are contributions) and the
 * fog's forwarder (items are finalized windows) both build theirs here, for the Shipper.
 *
 * Invariants:
 * - items go in order, oldest first, and a batch holds one definition per pipeline: the first item
 *   made with another definition of a pipeline already in the batch ends it (`used` says how many
 *   items it took, so the rest go in the next batch);
 * - the same window twice in a batch is one entry: per edge the contribution with the highest
 *   revision, and the highest `final` (a fog's later revision of a window holds every contribution of
 *   the earlier one, or a newer one, so this is that later revision);
 * - the sender's watermark per pipeline is the highest one recorded with the batch's items, and its
 *   current ones (with their idle flags) only when the batch leaves nothing pending for its target:
 *   watermarks never run ahead of the windows they cover;
 * - an item that cannot be read is dropped (taken as used), counted and logged; it never stops the
 *   outbox.
 */
import type { Batch, Contribution, PipelineDef, Watermark, WindowEntry } from '../../core/upstream/batch.ts'
import type { Logger } from '../shell/log.ts'
import { BatchDefinitions } from './outbox.ts'
import type { OutboxItem } from './outbox.ts'
import type { BatchContext } from './shipper.ts'

/** An outbox item as read back. */
export interface OutboxWindow {
  /** The id of its definition in the outbox's meta, and that definition. */
  defId: string
  def: PipelineDef
  key: string
  start: number
  end: number
  /** A fog's finalized window: its revision. */
  final?: number
  contributions: Contribution[]
  /** The sender's watermark of the pipeline recorded with the item, if any. */
  watermark: number | null
}

/** A watermark of the sender itself, as it is now. */
export interface SenderWatermark {
  pipeline: string
  watermark: number
  /** Nothing of the pipeline is open or unsent at the sender: receivers need not wait for it. */
  idle?: boolean
}

export interface BatchBuilderParts {
  /** The sender's id: of the batch, and of its own watermarks. */
  sender: string
  role: 'edge' | 'fog'
  log: Logger
  /** An item's content; throws when it cannot be read (not the sender's format, or an unknown definition). */
  read: (item: OutboxItem) => OutboxWindow
  /**
   * The sender's current watermarks, for a batch that leaves nothing pending; it may add the
   * definitions they need to `defs` (and leave out a pipeline whose definition does not fit).
   */
  current: (defs: BatchDefinitions) => Iterable<SenderWatermark>
  /** Watermarks of others the sender passes on in every batch (a fog: its edges'). Default: none. */
  relayed?: () => Watermark[]
}

export class BatchBuilder {
  readonly #p: BatchBuilderParts
  #unreadable = 0

  constructor (parts: BatchBuilderParts) {
    this.#p = parts
  }

  /** Items dropped because they could not be read. */
  get unreadable (): number {
    return this.#unreadable
  }

  build (items: OutboxItem[], ctx: BatchContext): { batch: Omit<Batch, 'seq'>, used: number } {
    const { sender, role } = this.#p
    const defs = new BatchDefinitions()
    const windows = new Map<string, WindowEntry>()
    const own = new Map<string, number>()
    const idle = new Set<string>()
    let used = 0
    for (const item of items) {
      const w = this.#read(item)
      if (w === undefined) {
        used++
        continue
      }
      if (!defs.take(w.defId, w.def)) break
      used++
      join(windows, w)
      if (w.watermark !== null) own.set(w.def.name, Math.max(own.get(w.def.name) ?? -Infinity, w.watermark))
    }
    if (ctx.drained && used === items.length) {
      // Nothing waits for this target: the current watermarks are safe to send.
      for (const c of this.#p.current(defs)) {
        own.set(c.pipeline, Math.max(own.get(c.pipeline) ?? -Infinity, c.watermark))
        if (c.idle === true) idle.add(c.pipeline)
      }
    }
    const watermarks: Watermark[] = [
      ...this.#p.relayed?.() ?? [],
      ...[...own].map(([pipeline, watermark]) => idle.has(pipeline)
        ? { pipeline, edge: sender, watermark, idle: true }
        : { pipeline, edge: sender, watermark })
    ]
    return { batch: { sender, role, pipelines: defs.list(windows.size > 0), watermarks, windows: [...windows.values()] }, used }
  }

  /** An item's content, or undefined (counted, logged) when it cannot be read. */
  #read (item: OutboxItem): OutboxWindow | undefined {
    try {
      return this.#p.read(item)
    } catch (err) {
      this.#unreadable++
      this.#p.log.warn('outbox.item_unreadable', `outbox item ${item.id} is unreadable (${(err as Error).message}); dropping it`, { item: item.id })
      return undefined
    }
  }
}

/** Adds an item's window to the batch's, joining one already there (see the invariants). */
function join (windows: Map<string, WindowEntry>, w: OutboxWindow): void {
  const id = JSON.stringify([w.def.name, w.key, w.start, w.end])
  const entry = windows.get(id)
  if (entry === undefined) {
    // One item holds one contribution per edge.
    windows.set(id, { pipeline: w.def.name, key: w.key, start: w.start, end: w.end, ...w.final !== undefined ? { final: w.final } : {}, contributions: [...w.contributions] })
    return
  }
  if (w.final !== undefined) entry.final = Math.max(entry.final ?? -Infinity, w.final)
  for (const c of w.contributions) {
    const same = entry.contributions.findIndex(k => k.edge === c.edge)
    if (same < 0) entry.contributions.push(c)
    else if (c.revision > entry.contributions[same].revision) entry.contributions[same] = c
  }
}

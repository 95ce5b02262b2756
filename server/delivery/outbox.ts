/**
 * A durable, bounded queue of items waiting to go upstream, in node:sqlite: the edge keeps its closed
 * windows here until a fog (or the cloud) has them, and a fog can keep its finalized windows here until
 * the cloud has them. Items are opaque blobs (CBOR, by convention) kept in append order.
 *
 * Durability: WAL with synchronous = FULL, so an item whose append returned survives SIGKILL and power
 * loss. Delivery marks are committed with synchronous = NORMAL (no fsync of their own; the next append's
 * fsync carries them): they survive SIGKILL, and one lost to a power cut only sends its items again,
 * which every receiver takes as a replay, so delivery stays at least once at half the fsyncs. Bound: the total size of the items; an append that goes over drops the oldest items first, and
 * counts them.
 *
 * Delivery is tracked per target. An item leaves the outbox when it reaches its primary target (the
 * first of `targets`); delivery to another target (the cloud, while the edge has failed over) is only
 * recorded, because the item is still owed to the primary: the fog forwards what it gets to the cloud,
 * which counts a contribution that arrives by both routes once.
 *
 * Schema (version 1):
 *   items (id INTEGER PRIMARY KEY AUTOINCREMENT, size INTEGER, delivered INTEGER, data BLOB)
 *     `delivered` is a bit set of targets; the bit of each target name is kept in meta `targets`.
 *   meta (name TEXT PRIMARY KEY, value TEXT): the target bits, and whatever the caller keeps there
 *     (sequence numbers, pipeline definitions) so that it is as durable as the items.
 */
import { createHash } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import type { StatementSync } from 'node:sqlite'
import { FogmeshError } from '../../core/errors.ts'
import type { PipelineDef } from '../../core/upstream/batch.ts'

export const OUTBOX_SCHEMA_VERSION = 1

/** Bits of a SQLite integer that are safe to use as target flags. */
const MAX_TARGETS = 30

export interface OutboxOptions {
  /** Directory of the database file; undefined keeps the outbox in memory (tests). */
  dataDir?: string
  /** File name in `dataDir`. Default: outbox.db. */
  file?: string
  /** Largest total size of the items, bytes; an append that goes over drops the oldest items. */
  maxBytes: number
  /**
   * Where items go, primary first. Names are stored with the items' delivery state, so the list may
   * change between runs: an item delivered to what is now the primary is removed when the outbox opens.
   */
  targets: string[]
}

export interface OutboxItem {
  /** Increases in append order, never reused. */
  id: number
  size: number
  data: Uint8Array
  /** Targets the item was delivered to (never the primary: such items are gone). */
  delivered: string[]
}

/** The outbox was used in a way it does not support (an unknown target, a bad option). */
export class OutboxError extends FogmeshError {
  constructor (message: string) {
    super('outbox_invalid', message)
  }
}

interface ItemRow {
  id: number
  size: number
  delivered: number
  data: Uint8Array
}

export class Outbox {
  readonly #db: DatabaseSync
  readonly #maxBytes: number
  readonly #primary: string
  readonly #bits = new Map<string, number>()
  /**
   * Per target, an id below which nothing is pending for it. Saves rescanning the items already
   * delivered to a secondary target (a long failover) on every batch.
   */
  readonly #floor = new Map<string, number>()
  readonly #insert: StatementSync
  readonly #pending: StatementSync
  readonly #pendingAfter: StatementSync
  readonly #remove: StatementSync
  readonly #mark: StatementSync
  #bytes = 0
  #items = 0
  #dropped = 0
  #lastId = 0

  constructor (options: OutboxOptions) {
    if (options.targets.length === 0) throw new OutboxError('an outbox needs at least one target')
    if (!(options.maxBytes > 0)) throw new OutboxError(`the outbox bound must be positive, not ${options.maxBytes}`)
    this.#maxBytes = options.maxBytes
    this.#primary = options.targets[0]
    let path = ':memory:'
    if (options.dataDir !== undefined) {
      mkdirSync(options.dataDir, { recursive: true })
      path = join(options.dataDir, options.file ?? 'outbox.db')
    }
    this.#db = new DatabaseSync(path)
    this.#db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = FULL;
      CREATE TABLE IF NOT EXISTS items (
        id INTEGER PRIMARY KEY AUTOINCREMENT, size INTEGER NOT NULL, delivered INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL
      );
      CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    `)
    const schema = this.meta('schema')
    if (schema !== undefined && Number(schema) !== OUTBOX_SCHEMA_VERSION) {
      throw new OutboxError(`${path}: outbox schema ${schema}, this version reads ${OUTBOX_SCHEMA_VERSION}`)
    }
    this.setMeta('schema', String(OUTBOX_SCHEMA_VERSION))

    const known = JSON.parse(this.meta('targets') ?? '[]') as string[]
    for (const t of options.targets) if (!known.includes(t)) known.push(t)
    if (known.length > MAX_TARGETS) throw new OutboxError(`at most ${MAX_TARGETS} targets, known: ${known.join(', ')}`)
    this.setMeta('targets', JSON.stringify(known))
    known.forEach((t, i) => this.#bits.set(t, 2 ** i))

    this.#insert = this.#db.prepare('INSERT INTO items (size, delivered, data) VALUES (?, 0, ?)')
    this.#pending = this.#db.prepare('SELECT id, size, delivered, data FROM items WHERE id >= ? AND (delivered & ?) = 0 ORDER BY id LIMIT ?')
    this.#pendingAfter = this.#db.prepare('SELECT 1 AS one FROM items WHERE id > ? AND (delivered & ?) = 0 LIMIT 1')
    this.#remove = this.#db.prepare('DELETE FROM items WHERE id = ? RETURNING size')
    this.#mark = this.#db.prepare('UPDATE items SET delivered = delivered | ? WHERE id = ?')

    this.#db.prepare('DELETE FROM items WHERE (delivered & ?) != 0').run(this.#bit(this.#primary))
    const totals = this.#db.prepare('SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes, COALESCE(MAX(id), 0) AS last FROM items').get() as { n: number, bytes: number, last: number }
    this.#items = totals.n
    this.#bytes = totals.bytes
    this.#lastId = totals.last
    // The bound may have been lowered since the items were stored.
    if (this.#bytes > this.#maxBytes) this.#transaction(() => this.#makeRoom(0))
  }

  /** Total size of the items, bytes. */
  get bytes (): number {
    return this.#bytes
  }

  get items (): number {
    return this.#items
  }

  /** Items dropped to keep the bound, since this outbox was opened. */
  get dropped (): number {
    return this.#dropped
  }

  get primary (): string {
    return this.#primary
  }

  /**
   * Id of the last item appended; after a restart, until the next append, of the newest item still
   * here (0 when none). Items appended later have higher ids.
   */
  get lastId (): number {
    return this.#lastId
  }

  /** The items still here that were appended after item `id`, oldest first, whoever they are pending for. */
  * since (id: number, pageSize = 256): Generator<OutboxItem> {
    const page = this.#db.prepare('SELECT id, size, delivered, data FROM items WHERE id > ? ORDER BY id LIMIT ?')
    for (let after = id; ;) {
      const rows = page.all(after, pageSize) as unknown as ItemRow[]
      for (const r of rows) yield { id: r.id, size: r.size, data: r.data, delivered: this.#names(r.delivered) }
      if (rows.length < pageSize) return
      after = rows[rows.length - 1].id
    }
  }

  /**
   * Appends items in order, in one transaction: all of them are durable when this returns, or none
   * (it throws). Makes room first by dropping the oldest items; new items that alone exceed the bound
   * are dropped (counted) too.
   */
  append (blobs: readonly Uint8Array[]): void {
    if (blobs.length === 0) return
    let skip = 0
    let incoming = 0
    for (const b of blobs) incoming += b.byteLength
    // The oldest of the new items go first when they cannot all fit even in an empty outbox.
    while (incoming > this.#maxBytes) incoming -= blobs[skip++].byteLength
    this.#transaction(() => {
      this.#makeRoom(incoming)
      for (let i = skip; i < blobs.length; i++) {
        this.#lastId = Number(this.#insert.run(blobs[i].byteLength, blobs[i]).lastInsertRowid)
      }
      this.#items += blobs.length - skip
      this.#bytes += incoming
    })
    this.#dropped += skip
  }

  /** Drops the oldest items until `incoming` more bytes fit. Runs inside a transaction. */
  #makeRoom (incoming: number): void {
    const excess = this.#bytes + incoming - this.#maxBytes
    if (excess <= 0) return
    // The first id at which the running total of sizes covers the excess: everything up to it goes.
    const cut = this.#db.prepare(`
      SELECT id, running, n FROM (
        SELECT id, SUM(size) OVER (ORDER BY id) AS running, ROW_NUMBER() OVER (ORDER BY id) AS n FROM items
      ) WHERE running >= ? ORDER BY id LIMIT 1`).get(excess) as { id: number, running: number, n: number } | undefined
    if (cut === undefined) {
      // Cannot happen while #bytes is right; recount rather than trust it.
      throw new OutboxError(`outbox accounting is off: ${this.#bytes} bytes counted`)
    }
    this.#db.prepare('DELETE FROM items WHERE id <= ?').run(cut.id)
    this.#bytes -= cut.running
    this.#items -= cut.n
    this.#dropped += cut.n
  }

  /**
   * The oldest items not yet delivered to `target`, in order: at most `limit`, and no more than
   * `maxBytes` in total (but at least one).
   */
  pending (target: string, limit: number, maxBytes = Infinity): OutboxItem[] {
    const bit = this.#bit(target)
    const rows = this.#pending.all(this.#floor.get(target) ?? 0, bit, Math.max(1, limit)) as unknown as ItemRow[]
    this.#floor.set(target, rows.length > 0 ? rows[0].id : this.#lastId + 1)
    const out: OutboxItem[] = []
    let bytes = 0
    for (const r of rows) {
      if (out.length > 0 && bytes + r.size > maxBytes) break
      bytes += r.size
      out.push({ id: r.id, size: r.size, data: r.data, delivered: this.#names(r.delivered) })
    }
    return out
  }

  /** Whether any item after `id` is pending for `target`. */
  hasPendingAfter (target: string, id: number): boolean {
    return this.#pendingAfter.get(id, this.#bit(target)) !== undefined
  }

  /**
   * Records that `target` has the items: delivered to the primary, they are removed; to another
   * target, they stay, marked. Ids no longer in the outbox are ignored.
   */
  markDelivered (target: string, ids: readonly number[]): void {
    if (ids.length === 0) return
    const bit = this.#bit(target)
    // See the opening comment: a lost mark means a replay, not a loss.
    this.#db.exec('PRAGMA synchronous = NORMAL')
    try {
      this.#transaction(() => {
        if (target === this.#primary) {
          for (const id of ids) {
            const gone = this.#remove.all(id) as Array<{ size: number }>
            for (const g of gone) {
              this.#bytes -= g.size
              this.#items--
            }
          }
        } else {
          for (const id of ids) this.#mark.run(bit, id)
        }
      })
    } finally {
      this.#db.exec('PRAGMA synchronous = FULL')
    }
  }

  /** A value the caller keeps with the items (as durable as they are). */
  meta (name: string): string | undefined {
    const row = this.#db.prepare('SELECT value FROM meta WHERE name = ?').get(name) as { value: string } | undefined
    return row?.value
  }

  setMeta (name: string, value: string): void {
    this.#db.prepare('INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value').run(name, value)
  }

  close (): void {
    this.#db.close()
  }

  #bit (target: string): number {
    const bit = this.#bits.get(target)
    if (bit === undefined) throw new OutboxError(`unknown outbox target ${target} (known: ${[...this.#bits.keys()].join(', ')})`)
    return bit
  }

  #names (bits: number): string[] {
    const out: string[] = []
    for (const [name, bit] of this.#bits) if ((bits & bit) !== 0) out.push(name)
    return out
  }

  /** Runs `fn` in one transaction; the in-memory totals are restored when it fails. */
  #transaction (fn: () => void): void {
    const saved = { bytes: this.#bytes, items: this.#items, dropped: this.#dropped, lastId: this.#lastId }
    this.#db.exec('BEGIN IMMEDIATE')
    try {
      fn()
      this.#db.exec('COMMIT')
    } catch (err) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK')
      this.#bytes = saved.bytes
      this.#items = saved.items
      this.#dropped = saved.dropped
      this.#lastId = saved.lastId
      throw err
    }
  }
}

const DEF_META = 'pipeline-def:'

/**
 * Pipeline definitions that outbox items refer to by id (a hash of the definition), kept in the
 * outbox's meta: an item made before a pipeline changed still goes out with the definition it was made
 * with, also after a restart.
 */
export class OutboxDefinitions {
  readonly #outbox: Outbox
  readonly #defs = new Map<string, PipelineDef>()

  constructor (outbox: Outbox) {
    this.#outbox = outbox
  }

  /** The id of `def`, stored before any item uses it. */
  idOf (def: PipelineDef): string {
    const json = JSON.stringify(def)
    const id = createHash('sha256').update(json).digest('base64url').slice(0, 16)
    if (!this.#defs.has(id)) {
      if (this.#outbox.meta(DEF_META + id) === undefined) this.#outbox.setMeta(DEF_META + id, json)
      this.#defs.set(id, def)
    }
    return id
  }

  get (id: string): PipelineDef | undefined {
    let def = this.#defs.get(id)
    if (def === undefined) {
      const json = this.#outbox.meta(DEF_META + id)
      if (json === undefined) return undefined
      def = JSON.parse(json) as PipelineDef
      this.#defs.set(id, def)
    }
    return def
  }
}

/**
 * The pipeline definitions one batch carries. A batch defines each pipeline once, so an item made with
 * another definition of a pipeline already in the batch must wait for the next batch.
 */
export class BatchDefinitions {
  readonly #byName = new Map<string, { id: string, def: PipelineDef }>()

  /** Adds the definition `id`; false when the batch already holds another definition of its pipeline. */
  take (id: string, def: PipelineDef): boolean {
    const held = this.#byName.get(def.name)
    if (held !== undefined) return held.id === id
    this.#byName.set(def.name, { id, def })
    return true
  }

  /** The definitions, for the batch; none for a batch without windows (watermarks need none). */
  list (withWindows: boolean): PipelineDef[] {
    return withWindows ? [...this.#byName.values()].map(d => d.def) : []
  }
}

/**
 * The durable state of a merge node (fog coordinator, cloud sink) in node:sqlite: per window and edge
 * the contribution with the highest revision, per window when it was first seen and its final revision,
 * per pipeline and edge the watermark, and the pipeline definitions learned from batches. The merged
 * results themselves live in the ResultStore beside it.
 *
 * A batch is acknowledged once it is applied here, so an applied batch must survive SIGKILL and power
 * loss: WAL with synchronous=FULL, and one transaction per batch.
 */
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import type { StatementSync } from 'node:sqlite'
import { Decoder, Encoder } from 'cbor-x'
import type { Contribution, PipelineDef } from '../../core/upstream/batch.ts'

/** A merged window as a merge node keeps it. */
export interface MergeWindow {
  pipeline: string
  key: string
  start: number
  end: number
  /** When this node first saw a contribution to it (wall clock, epoch ms). */
  firstSeen: number
  /** The revision of its final result; null until final. */
  finalRevision: number | null
  /** When it was last finalized; null until final. */
  finalAt: number | null
  /** A final window whose contributions changed since: to be finalized again with revision + 1. */
  dirty: boolean
  /** A fog finalized it (a fog → cloud batch): finalize it at once. */
  upstreamFinal: boolean
  /** By edge. */
  contributions: Map<string, Contribution>
}

export interface EdgeWatermark {
  pipeline: string
  edge: string
  watermark: number
  lastSeen: number
}

/** What applying one batch writes, in one transaction. */
export interface BatchWrite {
  /** New definitions, or known ones with a higher version. */
  pipelines: PipelineDef[]
  /** Windows created or whose flags changed. */
  windows: MergeWindow[]
  /** Contributions that superseded the stored ones. */
  contributions: Array<{ window: MergeWindow, contribution: Contribution }>
  watermarks: EdgeWatermark[]
  /** Edges heard from (the sender of an edge batch) and when. */
  seen: Array<{ edge: string, at: number }>
}

export interface ContributionStoreOptions {
  /** Directory of the database file; undefined keeps everything in memory. */
  dataDir?: string
}

interface WindowRow {
  pipeline: string
  key: string
  start: number
  end: number
  first_seen: number
  final_revision: number | null
  final_at: number | null
  dirty: number
  upstream_final: number
}

interface ContributionRow {
  pipeline: string
  key: string
  start: number
  end: number
  edge: string
  revision: number
  states: Uint8Array
}

// The same CBOR options as the wire format: states go back out exactly as they came in.
const encoder = new Encoder({ useRecords: false, mapsAsObjects: true })
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true })

const WINDOW_KEY = 'pipeline = ? AND key = ? AND start = ? AND "end" = ?'

function windowOf (r: WindowRow): MergeWindow {
  return {
    pipeline: r.pipeline,
    key: r.key,
    start: r.start,
    end: r.end,
    firstSeen: r.first_seen,
    finalRevision: r.final_revision,
    finalAt: r.final_at,
    dirty: r.dirty === 1,
    upstreamFinal: r.upstream_final === 1,
    contributions: new Map()
  }
}

function contributionOf (r: ContributionRow): Contribution {
  return { edge: r.edge, revision: r.revision, states: decoder.decode(r.states) as unknown[] }
}

export class ContributionStore {
  readonly #db: DatabaseSync
  readonly #putPipeline: StatementSync
  readonly #putWindow: StatementSync
  readonly #putContribution: StatementSync
  readonly #putWatermark: StatementSync
  readonly #seen: StatementSync
  readonly #getWindow: StatementSync
  readonly #getContributions: StatementSync
  readonly #markFinal: StatementSync

  constructor (options: ContributionStoreOptions) {
    let path = ':memory:'
    if (options.dataDir !== undefined) {
      mkdirSync(options.dataDir, { recursive: true })
      path = join(options.dataDir, 'contributions.db')
    }
    this.#db = new DatabaseSync(path)
    this.#db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = FULL;
      CREATE TABLE IF NOT EXISTS pipelines (
        name TEXT PRIMARY KEY, version INTEGER NOT NULL, def TEXT NOT NULL
      ) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS windows (
        pipeline TEXT NOT NULL, key TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
        first_seen INTEGER NOT NULL, final_revision INTEGER, final_at INTEGER,
        dirty INTEGER NOT NULL DEFAULT 0, upstream_final INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (pipeline, key, start, "end")
      ) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS windows_final_at ON windows (final_at);
      CREATE INDEX IF NOT EXISTS windows_pending ON windows (pipeline) WHERE final_revision IS NULL OR dirty = 1;
      CREATE TABLE IF NOT EXISTS contributions (
        pipeline TEXT NOT NULL, key TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
        edge TEXT NOT NULL, revision INTEGER NOT NULL, states BLOB NOT NULL,
        PRIMARY KEY (pipeline, key, start, "end", edge)
      ) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS edges (
        pipeline TEXT NOT NULL, edge TEXT NOT NULL, watermark REAL NOT NULL, last_seen INTEGER NOT NULL,
        PRIMARY KEY (pipeline, edge)
      ) WITHOUT ROWID;
    `)
    this.#putPipeline = this.#db.prepare(`
      INSERT INTO pipelines (name, version, def) VALUES (?, ?, ?)
      ON CONFLICT (name) DO UPDATE SET version = excluded.version, def = excluded.def`)
    // Batches never touch first_seen or the final revision; only finalization does.
    this.#putWindow = this.#db.prepare(`
      INSERT INTO windows (pipeline, key, start, "end", first_seen, dirty, upstream_final) VALUES (?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (pipeline, key, start, "end") DO UPDATE SET dirty = excluded.dirty, upstream_final = excluded.upstream_final`)
    // The guard repeats supersedes(): a stored revision never goes back, whatever the caller does.
    this.#putContribution = this.#db.prepare(`
      INSERT INTO contributions (pipeline, key, start, "end", edge, revision, states) VALUES (?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (pipeline, key, start, "end", edge) DO UPDATE SET revision = excluded.revision, states = excluded.states
      WHERE excluded.revision > contributions.revision`)
    this.#putWatermark = this.#db.prepare(`
      INSERT INTO edges (pipeline, edge, watermark, last_seen) VALUES (?, ?, ?, ?)
      ON CONFLICT (pipeline, edge) DO UPDATE SET watermark = max(edges.watermark, excluded.watermark), last_seen = excluded.last_seen`)
    this.#seen = this.#db.prepare('UPDATE edges SET last_seen = ? WHERE edge = ?')
    this.#getWindow = this.#db.prepare(`SELECT * FROM windows WHERE ${WINDOW_KEY}`)
    this.#getContributions = this.#db.prepare(`SELECT * FROM contributions WHERE ${WINDOW_KEY}`)
    this.#markFinal = this.#db.prepare(`UPDATE windows SET final_revision = ?, final_at = ?, dirty = 0, upstream_final = 0 WHERE ${WINDOW_KEY}`)
  }

  pipelines (): PipelineDef[] {
    const rows = this.#db.prepare('SELECT def FROM pipelines ORDER BY name').all() as unknown as Array<{ def: string }>
    return rows.map(r => JSON.parse(r.def) as PipelineDef)
  }

  watermarks (): EdgeWatermark[] {
    const rows = this.#db.prepare('SELECT pipeline, edge, watermark, last_seen FROM edges').all() as unknown as Array<{ pipeline: string, edge: string, watermark: number, last_seen: number }>
    return rows.map(r => ({ pipeline: r.pipeline, edge: r.edge, watermark: r.watermark, lastSeen: r.last_seen }))
  }

  /** Windows not final yet, or changed since they were finalized, with their contributions. */
  pendingWindows (): MergeWindow[] {
    const windows = new Map<string, MergeWindow>()
    for (const r of this.#db.prepare('SELECT * FROM windows WHERE final_revision IS NULL OR dirty = 1').all() as unknown as WindowRow[]) {
      windows.set(windowId(r), windowOf(r))
    }
    const rows = this.#db.prepare(`
      SELECT c.* FROM contributions c JOIN windows w USING (pipeline, key, start, "end")
      WHERE w.final_revision IS NULL OR w.dirty = 1`).all() as unknown as ContributionRow[]
    for (const r of rows) windows.get(windowId(r))?.contributions.set(r.edge, contributionOf(r))
    return [...windows.values()]
  }

  /** A stored window with its contributions, or undefined. */
  window (pipeline: string, key: string, start: number, end: number): MergeWindow | undefined {
    const row = this.#getWindow.get(pipeline, key, start, end) as unknown as WindowRow | undefined
    if (row === undefined) return undefined
    const w = windowOf(row)
    for (const r of this.#getContributions.all(pipeline, key, start, end) as unknown as ContributionRow[]) {
      w.contributions.set(r.edge, contributionOf(r))
    }
    return w
  }

  /** Applies a batch's changes in one durable transaction. */
  write (b: BatchWrite): void {
    this.#transaction(() => {
      for (const p of b.pipelines) this.#putPipeline.run(p.name, p.version, JSON.stringify(p))
      for (const w of b.windows) {
        this.#putWindow.run(w.pipeline, w.key, w.start, w.end, w.firstSeen, w.dirty ? 1 : 0, w.upstreamFinal ? 1 : 0)
      }
      for (const { window: w, contribution: c } of b.contributions) {
        this.#putContribution.run(w.pipeline, w.key, w.start, w.end, c.edge, c.revision, encoder.encode(c.states))
      }
      for (const wm of b.watermarks) this.#putWatermark.run(wm.pipeline, wm.edge, wm.watermark, wm.lastSeen)
      for (const s of b.seen) this.#seen.run(s.at, s.edge)
    })
  }

  /** Records windows as final with these revisions. */
  markFinal (finals: Array<{ window: MergeWindow, revision: number }>, at: number): void {
    this.#transaction(() => {
      for (const { window: w, revision } of finals) this.#markFinal.run(revision, at, w.pipeline, w.key, w.start, w.end)
    })
  }

  /** Final windows (not changed since) finalized before `before`: what prune(before) removes first. */
  finalBefore (before: number, limit: number): Array<{ pipeline: string, key: string, start: number, end: number }> {
    return this.#db.prepare('SELECT pipeline, key, start, "end" FROM windows WHERE final_at < ? AND dirty = 0 LIMIT ?').all(before, limit) as unknown as Array<{ pipeline: string, key: string, start: number, end: number }>
  }

  /** Removes these windows and their contributions (a fog cluster's leader removed them from etcd). */
  remove (windows: ReadonlyArray<{ pipeline: string, key: string, start: number, end: number }>): void {
    const contributions = this.#db.prepare(`DELETE FROM contributions WHERE ${WINDOW_KEY}`)
    const rows = this.#db.prepare(`DELETE FROM windows WHERE ${WINDOW_KEY}`)
    this.#transaction(() => {
      for (const w of windows) {
        contributions.run(w.pipeline, w.key, w.start, w.end)
        rows.run(w.pipeline, w.key, w.start, w.end)
      }
    })
  }

  /**
   * Removes final windows (and their contributions) finalized before `before`, and beyond
   * `maxPerPipeline` final windows per pipeline (the oldest go first, as in the ResultStore). Windows
   * waiting to be finalized are never removed. Returns how many windows went.
   */
  prune (before: number, maxPerPipeline: number): number {
    let removed = 0
    this.#transaction(() => {
      const old = 'SELECT pipeline, key, start, "end" FROM windows WHERE final_at < ? AND dirty = 0'
      this.#db.prepare(`DELETE FROM contributions WHERE (pipeline, key, start, "end") IN (${old})`).run(before)
      removed += Number(this.#db.prepare(`DELETE FROM windows WHERE (pipeline, key, start, "end") IN (${old})`).run(before).changes)
      const done = 'final_revision IS NOT NULL AND dirty = 0'
      const counts = this.#db.prepare(`SELECT pipeline, COUNT(*) AS n FROM windows WHERE ${done} GROUP BY pipeline`).all() as Array<{ pipeline: string, n: number }>
      for (const { pipeline, n } of counts) {
        const excess = n - maxPerPipeline
        if (excess <= 0) continue
        const oldest = `SELECT pipeline, key, start, "end" FROM windows WHERE pipeline = ? AND ${done} ORDER BY start, key LIMIT ?`
        this.#db.prepare(`DELETE FROM contributions WHERE (pipeline, key, start, "end") IN (${oldest})`).run(pipeline, excess)
        removed += Number(this.#db.prepare(`DELETE FROM windows WHERE (pipeline, key, start, "end") IN (${oldest})`).run(pipeline, excess).changes)
      }
    })
    return removed
  }

  close (): void {
    this.#db.close()
  }

  #transaction (fn: () => void): void {
    this.#db.exec('BEGIN IMMEDIATE')
    try {
      fn()
      this.#db.exec('COMMIT')
    } catch (err) {
      this.#db.exec('ROLLBACK')
      throw err
    }
  }
}

/** A window's identity, unambiguous whatever characters keys hold. */
export function windowId (w: { pipeline: string, key: string, start: number, end: number }): string {
  return JSON.stringify([w.pipeline, w.key, w.start, w.end])
}

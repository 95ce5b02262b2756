/**
 * Final window results in an embedded SQLite database (node:sqlite: no native build, so it installs on
 * a Raspberry Pi without a compiler). Writes are buffered and committed in one transaction per flush,
 * because a window close can produce thousands of results at once.
 *
 * With `changeLog`, each flush also records the windows it changed in a numbered log, in the same
 * transaction: the edge's checkpoints note the log's position, so that on restart it knows exactly
 * which windows were emitted after its last checkpoint (edge-agent/checkpoint.ts).
 */
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import type { StatementSync } from 'node:sqlite'
import type { ResultQuery, WindowResult } from './results.ts'

export interface ResultStoreOptions {
  /** Directory of the database file; undefined keeps everything in memory. */
  dataDir?: string
  /** Results older than this (by when they were stored) are removed, ms. */
  retention: number
  /** At most this many results per pipeline are kept; the oldest windows go first. */
  maxResultsPerPipeline: number
  /**
   * SQLite's synchronous mode (default NORMAL: a commit survives a crash of the process, not a power
   * loss). FULL where a commit is acknowledged to someone else, e.g. a fog marking a window final.
   */
  synchronous?: 'NORMAL' | 'FULL'
  /** Keep the change log (see above). Default false. */
  changeLog?: boolean
}

/** One window a flush committed: a new result or a higher revision. */
export interface ResultChange {
  /** Position in the log: increases with every change committed, never reused. */
  seq: number
  pipeline: string
  key: string
  start: number
  end: number
  revision: number
}

interface Row {
  pipeline: string
  key: string
  start: number
  end: number
  final: number
  revision: number
  sources: number
  vals: string
}

export class ResultStore {
  readonly #db: DatabaseSync
  readonly #options: ResultStoreOptions
  readonly #upsert: StatementSync
  readonly #pending: WindowResult[] = []
  readonly #logChange: StatementSync | undefined
  #lastChange = 0

  constructor (options: ResultStoreOptions) {
    this.#options = options
    let path = ':memory:'
    if (options.dataDir !== undefined) {
      mkdirSync(options.dataDir, { recursive: true })
      path = join(options.dataDir, 'results.db')
    }
    this.#db = new DatabaseSync(path)
    this.#db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = ${options.synchronous ?? 'NORMAL'};
      CREATE TABLE IF NOT EXISTS results (
        pipeline TEXT NOT NULL, key TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
        final INTEGER NOT NULL, revision INTEGER NOT NULL, sources INTEGER NOT NULL, vals TEXT NOT NULL,
        stored_at INTEGER NOT NULL,
        PRIMARY KEY (pipeline, start, key, "end")
      ) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS results_stored_at ON results (stored_at);
    `)
    // A revision never goes back: a replayed older revision must not overwrite a newer one.
    this.#upsert = this.#db.prepare(`
      INSERT INTO results (pipeline, key, start, "end", final, revision, sources, vals, stored_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (pipeline, start, key, "end") DO UPDATE SET
        final = excluded.final, revision = excluded.revision, sources = excluded.sources,
        vals = excluded.vals, stored_at = excluded.stored_at
      WHERE excluded.revision >= results.revision`)
    if (options.changeLog === true) {
      // AUTOINCREMENT: a position is never reused, even after the log is trimmed.
      this.#db.exec(`CREATE TABLE IF NOT EXISTS changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL, key TEXT NOT NULL,
        start INTEGER NOT NULL, "end" INTEGER NOT NULL, revision INTEGER NOT NULL)`)
      this.#logChange = this.#db.prepare('INSERT INTO changes (pipeline, key, start, "end", revision) VALUES (?, ?, ?, ?, ?)')
      const row = this.#db.prepare('SELECT seq FROM sqlite_sequence WHERE name = \'changes\'').get() as { seq: number } | undefined
      this.#lastChange = row?.seq ?? 0
    }
  }

  /** Position of the last change committed (0 before any, or without a change log). */
  get lastChange (): number {
    return this.#lastChange
  }

  /** Queues a result; it is visible to queries at once and durable after the next flush. */
  put (result: WindowResult): void {
    this.#pending.push(result)
  }

  /** Commits queued results in one transaction. */
  flush (): void {
    if (this.#pending.length === 0) return
    const now = Date.now()
    const log = this.#logChange
    let last = this.#lastChange
    this.#db.exec('BEGIN')
    try {
      for (const r of this.#pending) {
        const changed = this.#upsert.run(r.pipeline, r.key, r.start, r.end, r.final ? 1 : 0, r.revision, r.sources, JSON.stringify(r.values), now).changes
        if (log !== undefined && Number(changed) > 0) last = Number(log.run(r.pipeline, r.key, r.start, r.end, r.revision).lastInsertRowid)
      }
      this.#db.exec('COMMIT')
    } catch (err) {
      this.#db.exec('ROLLBACK')
      throw err
    }
    this.#lastChange = last
    this.#pending.length = 0
  }

  /** Changes committed after position `seq`, in commit order (empty without a change log). */
  changesSince (seq: number): ResultChange[] {
    if (this.#logChange === undefined) return []
    return this.#db.prepare('SELECT seq, pipeline, key, start, "end", revision FROM changes WHERE seq > ? ORDER BY seq').all(seq) as unknown as ResultChange[]
  }

  /** Forgets the changes up to position `seq` (nobody will ask for them again). */
  trimChanges (seq: number): void {
    if (this.#logChange !== undefined) this.#db.prepare('DELETE FROM changes WHERE seq <= ?').run(seq)
  }

  /** The revision committed for a window (queued results are not looked at); undefined when there is none. */
  revisionOf (pipeline: string, key: string, start: number, end: number): number | undefined {
    const row = this.#db.prepare('SELECT revision FROM results WHERE pipeline = ? AND start = ? AND key = ? AND "end" = ?').get(pipeline, start, key, end) as { revision: number } | undefined
    return row?.revision
  }

  query (pipeline: string, q: ResultQuery): WindowResult[] {
    this.flush()
    const params: Array<string | number> = [pipeline, q.from, q.to]
    let sql = 'SELECT pipeline, key, start, "end", final, revision, sources, vals FROM results WHERE pipeline = ? AND start >= ? AND start < ?'
    if (q.key !== undefined) {
      sql += ' AND key = ?'
      params.push(q.key)
    }
    sql += ' ORDER BY start, key, "end" LIMIT ?'
    params.push(q.limit)
    // Bounds may be +-Infinity, which SQLite binds as REAL and compares correctly.
    const rows = this.#db.prepare(sql).all(...params) as unknown as Row[]
    return rows.map(r => ({
      pipeline: r.pipeline,
      key: r.key,
      start: r.start,
      end: r.end,
      final: r.final === 1,
      revision: r.revision,
      sources: r.sources,
      values: JSON.parse(r.vals)
    }))
  }

  /** Removes results past retention and beyond the per-pipeline bound; returns how many went. */
  prune (now = Date.now()): number {
    this.flush()
    let removed = Number(this.#db.prepare('DELETE FROM results WHERE stored_at < ?').run(now - this.#options.retention).changes)
    const counts = this.#db.prepare('SELECT pipeline, COUNT(*) AS n FROM results GROUP BY pipeline').all() as Array<{ pipeline: string, n: number }>
    for (const { pipeline, n } of counts) {
      const excess = n - this.#options.maxResultsPerPipeline
      if (excess <= 0) continue
      removed += Number(this.#db.prepare(`
        DELETE FROM results WHERE (pipeline, start, key, "end") IN (
          SELECT pipeline, start, key, "end" FROM results WHERE pipeline = ? ORDER BY start, key LIMIT ?)`).run(pipeline, excess).changes)
    }
    return removed
  }

  close (): void {
    this.flush()
    this.#db.close()
  }
}

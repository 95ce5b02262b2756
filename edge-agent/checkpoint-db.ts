/**
 * Where the edge keeps its checkpoints: `checkpoint.db` in the data dir (node:sqlite, WAL). One row per
 * pipeline holds its last snapshot; one row holds where the result store's change log and the outbox
 * stood when it was taken, which is how a restart tells the windows emitted after it.
 *
 * Durability: a checkpoint commits with synchronous = FULL (it survives a power cut); the accepted
 * counts saved every tick commit with NORMAL (they survive a crash of the process, and cost no fsync).
 *
 * Schema (version 1):
 *   meta (name TEXT PRIMARY KEY, value TEXT): `schema`
 *   marks (id = 1, taken_at, result_mark, outbox_mark): the last checkpoint's positions
 *   pipelines (name TEXT PRIMARY KEY, identity, snapshot BLOB, windows, readings, checkpointed, accepted)
 *     `checkpointed`: readings the pipeline had accepted (in that run) when the snapshot was taken;
 *     `accepted`: the same count as of the last tick. After a crash, the difference is what was lost.
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import type { StatementSync } from 'node:sqlite'
import { FogmeshError } from '../core/errors.ts'

export const CHECKPOINT_SCHEMA_VERSION = 1
const FILE = 'checkpoint.db'

/** The checkpoint database is from another version of fogmesh. */
export class CheckpointError extends FogmeshError {
  constructor (message: string) {
    super('checkpoint_invalid', message)
  }
}

export interface CheckpointMarks {
  /** Epoch ms. */
  takenAt: number
  /** The result store's change log position: changes after it were committed after the checkpoint. */
  resultMark: number
  /** The last outbox item appended before the checkpoint; null without an uplink. */
  outboxMark: number | null
}

export interface PipelineCheckpoint {
  name: string
  /** Name, version and a hash of the spec: a snapshot is only restored into the same pipeline. */
  identity: string
  /** The operator's snapshot, CBOR. */
  snapshot: Uint8Array
  /** Windows in the snapshot, and readings in its open ones. */
  windows: number
  readings: number
  checkpointed: number
  accepted: number
}

export interface SavedCheckpoint {
  marks: CheckpointMarks
  pipelines: PipelineCheckpoint[]
}

export class CheckpointDb {
  readonly #db: DatabaseSync
  readonly #saveAccepted: StatementSync

  /** `dataDir` undefined keeps the database in memory (tests). */
  constructor (dataDir?: string) {
    let path = ':memory:'
    if (dataDir !== undefined) {
      mkdirSync(dataDir, { recursive: true })
      path = join(dataDir, FILE)
    }
    this.#db = new DatabaseSync(path)
    this.#db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = NORMAL;
      CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS marks (
        id INTEGER PRIMARY KEY CHECK (id = 1), taken_at INTEGER NOT NULL, result_mark INTEGER NOT NULL, outbox_mark INTEGER
      );
      CREATE TABLE IF NOT EXISTS pipelines (
        name TEXT PRIMARY KEY, identity TEXT NOT NULL, snapshot BLOB NOT NULL, windows INTEGER NOT NULL,
        readings INTEGER NOT NULL, checkpointed INTEGER NOT NULL, accepted INTEGER NOT NULL
      ) WITHOUT ROWID;
    `)
    const row = this.#db.prepare('SELECT value FROM meta WHERE name = \'schema\'').get() as { value: string } | undefined
    if (row !== undefined && Number(row.value) !== CHECKPOINT_SCHEMA_VERSION) {
      throw new CheckpointError(`${path}: checkpoint schema ${row.value}, this version reads ${CHECKPOINT_SCHEMA_VERSION} (remove the file to start without it)`)
    }
    this.#db.prepare('INSERT OR REPLACE INTO meta (name, value) VALUES (\'schema\', ?)').run(String(CHECKPOINT_SCHEMA_VERSION))
    this.#saveAccepted = this.#db.prepare('UPDATE pipelines SET accepted = ? WHERE name = ?')
  }

  /** The last checkpoint, or undefined when none was taken. */
  read (): SavedCheckpoint | undefined {
    const marks = this.#db.prepare('SELECT taken_at AS takenAt, result_mark AS resultMark, outbox_mark AS outboxMark FROM marks WHERE id = 1').get() as CheckpointMarks | undefined
    if (marks === undefined) return undefined
    const pipelines = this.#db.prepare('SELECT name, identity, snapshot, windows, readings, checkpointed, accepted FROM pipelines').all() as unknown as PipelineCheckpoint[]
    return { marks: { ...marks }, pipelines }
  }

  /** Replaces the checkpoint with these pipelines and marks, in one durable transaction. */
  write (marks: CheckpointMarks, pipelines: readonly PipelineCheckpoint[]): void {
    const db = this.#db
    db.exec('PRAGMA synchronous = FULL')
    try {
      db.exec('BEGIN IMMEDIATE')
      try {
        db.exec('DELETE FROM pipelines')
        const insert = db.prepare('INSERT INTO pipelines (name, identity, snapshot, windows, readings, checkpointed, accepted) VALUES (?, ?, ?, ?, ?, ?, ?)')
        for (const p of pipelines) insert.run(p.name, p.identity, p.snapshot, p.windows, p.readings, p.checkpointed, p.accepted)
        db.prepare('INSERT OR REPLACE INTO marks (id, taken_at, result_mark, outbox_mark) VALUES (1, ?, ?, ?)').run(marks.takenAt, marks.resultMark, marks.outboxMark)
        db.exec('COMMIT')
      } catch (err) {
        if (db.isTransaction) db.exec('ROLLBACK')
        throw err
      }
    } finally {
      db.exec('PRAGMA synchronous = NORMAL')
    }
  }

  /** Saves each pipeline's accepted count (cheap: no fsync). */
  saveAccepted (counts: ReadonlyMap<string, number>): void {
    this.#db.exec('BEGIN')
    try {
      for (const [name, n] of counts) this.#saveAccepted.run(n, name)
      this.#db.exec('COMMIT')
    } catch (err) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK')
      throw err
    }
  }

  close (): void {
    this.#db.close()
  }
}

/**
 * Removes the checkpoint of an earlier run, if any. A run without checkpoints does not keep the
 * change log they are reconciled with, so a checkpoint from before it would restore windows that
 * have been emitted since. Returns whether there was one.
 */
export function removeCheckpoint (dataDir: string): boolean {
  const path = join(dataDir, FILE)
  if (!existsSync(path)) return false
  for (const suffix of ['', '-wal', '-shm']) rmSync(path + suffix, { force: true })
  return true
}

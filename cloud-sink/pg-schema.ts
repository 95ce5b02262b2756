/**
 * The cloud tier's tables in PostgreSQL, created and upgraded at start.
 *
 * Invariants:
 * - migrations are applied in order, each once, recorded in fogmesh_schema_version in the same
 *   transaction as the change itself, so a crash leaves either the old schema or the new one;
 * - any number of processes may start at once: the migration runs under a transaction-scoped advisory
 *   lock (released by COMMIT, ROLLBACK or a lost connection), so one applies and the others then find
 *   nothing left to do;
 * - a store upgraded by a newer release (a version unknown here) is refused, not written to.
 *
 * Plain SQL (no extension, no stored procedure): Postgres-compatible stores work too.
 */
import type pg from 'pg'
import { ConfigError } from '../core/errors.ts'

/** The advisory lock key of the migration: "fogmesh" in ASCII, so that other users of the database are unlikely to share it. */
const MIGRATION_LOCK = 0x666f676d657368

/**
 * Times are epoch ms (bigint), as everywhere in fogmesh. Window keys are (pipeline, key, start_ms,
 * end_ms). `values` is json, not jsonb: the text is kept as written, field order included.
 */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE fogmesh_pipelines (
     name text PRIMARY KEY, version int NOT NULL, def jsonb NOT NULL);
   CREATE TABLE fogmesh_windows (
     pipeline text NOT NULL, key text NOT NULL, start_ms bigint NOT NULL, end_ms bigint NOT NULL,
     first_seen bigint NOT NULL, final_revision int, final_at bigint,
     dirty boolean NOT NULL DEFAULT false, upstream_final boolean NOT NULL DEFAULT false,
     PRIMARY KEY (pipeline, key, start_ms, end_ms));
   CREATE INDEX fogmesh_windows_pending ON fogmesh_windows (pipeline, start_ms) WHERE final_revision IS NULL OR dirty;
   CREATE INDEX fogmesh_windows_final_at ON fogmesh_windows (final_at);
   CREATE TABLE fogmesh_contributions (
     pipeline text NOT NULL, key text NOT NULL, start_ms bigint NOT NULL, end_ms bigint NOT NULL,
     edge text NOT NULL, revision int NOT NULL, states bytea NOT NULL,
     PRIMARY KEY (pipeline, key, start_ms, end_ms, edge));
   CREATE TABLE fogmesh_watermarks (
     pipeline text NOT NULL, edge text NOT NULL, watermark double precision NOT NULL, last_seen bigint NOT NULL,
     idle boolean NOT NULL DEFAULT false,
     PRIMARY KEY (pipeline, edge));
   CREATE TABLE fogmesh_results (
     pipeline text NOT NULL, key text NOT NULL, start_ms bigint NOT NULL, end_ms bigint NOT NULL,
     revision int NOT NULL, sources int NOT NULL, "values" json NOT NULL, final_at bigint NOT NULL,
     PRIMARY KEY (pipeline, start_ms, key, end_ms));`
]

/** The schema version this release writes. */
export const SCHEMA_VERSION = MIGRATIONS.length

/** Brings the store's schema to SCHEMA_VERSION; returns the versions applied here (none if another process did). */
export async function migrate (client: pg.ClientBase): Promise<number[]> {
  await client.query('BEGIN')
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK])
    await client.query('CREATE TABLE IF NOT EXISTS fogmesh_schema_version (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())')
    const { rows } = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM fogmesh_schema_version')
    const current = rows[0].v ?? 0
    if (current > SCHEMA_VERSION) {
      throw new ConfigError(`the store's schema is version ${current}, newer than this release's (${SCHEMA_VERSION}): run a release that knows it`)
    }
    const applied: number[] = []
    for (let v = current + 1; v <= SCHEMA_VERSION; v++) {
      await client.query(MIGRATIONS[v - 1])
      await client.query('INSERT INTO fogmesh_schema_version (version) VALUES ($1)', [v])
      applied.push(v)
    }
    await client.query('COMMIT')
    return applied
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {})
    throw err
  }
}

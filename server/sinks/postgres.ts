/**
 * `type: postgres`: one row per (pipeline, key, window_start) holding the highest revision, in `table`
 * (default fogmesh_results; `name` or `schema.name`, each part an identifier, quoted), created if
 * missing:
 *   pipeline text, key text, window_start timestamptz, window_end timestamptz, revision int,
 *   sources int, final boolean, "values" jsonb, PRIMARY KEY (pipeline, key, window_start)
 * Written with an upsert that keeps the highest revision, so a repeat changes nothing; every value is
 * a parameter. Plain SQL: works on TimescaleDB and Citus too (the table can be made a hypertable or
 * distributed by the user beforehand; the upsert needs its primary key).
 *
 * The password comes from the url (`postgres://user:${PGPASS}@host/db`), `password-file` or
 * `password-env`. A row refused for its data (SQLSTATE class 22 or 23, e.g. a NUL character in a
 * key) is set aside; anything else (connection, permissions, a missing table) is retried.
 *
 * The pg library is loaded by the first send, not with the node: a node without a postgres sink never
 * pays for it (the config is checked without it).
 */
import type { Pool } from 'pg'
import type { WindowResult } from '../shell/results.ts'
import { SinkRejected } from './sink.ts'
import type { SinkDefinition, SinkFields } from './sink.ts'

export interface PostgresConfig {
  url: string
  password?: string
  /** Identifier parts (schema, name). */
  table: string[]
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/

/** The table's name, quoted, e.g. "public"."fogmesh_results" (as pg.escapeIdentifier quotes). */
export function quotedTable (parts: readonly string[]): string {
  return parts.map(p => `"${p.replaceAll('"', '""')}"`).join('.')
}

function sqlState (err: unknown): string | undefined {
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined
}

export const postgres: SinkDefinition<PostgresConfig> = {
  type: 'postgres',
  batch: 200,
  parse (f: SinkFields): PostgresConfig {
    const url = f.url('url', ['postgres:', 'postgresql:'])
    const table = f.string('table') ?? 'fogmesh_results'
    const parts = table.split('.')
    if (parts.length > 2 || parts.some(p => !IDENT.test(p))) {
      f.fail('table', `expected an identifier (letters, digits, _; up to 63) or schema.name, got ${JSON.stringify(table)}`)
    }
    const password = f.secret('password')
    return { url: url.href, password, table: parts }
  },
  create (config, parts) {
    const table = quotedTable(config.table)
    let pooled: Promise<Pool> | undefined
    const connect = async (): Promise<Pool> => {
      const { default: pg } = await import('pg')
      const pool = new pg.Pool({
        connectionString: config.url,
        ...config.password !== undefined ? { password: config.password } : {},
        max: 2,
        connectionTimeoutMillis: parts.timeout,
        idleTimeoutMillis: 30_000,
        statement_timeout: parts.timeout,
        application_name: `fogmesh-sink-${parts.name}`
      })
      // An idle connection that breaks (the server restarting) must not crash the node.
      pool.on('error', err => { parts.log.debug('sink.connection_lost', `postgres connection lost (${err.message})`) })
      return pool
    }
    let created = false
    const create = `CREATE TABLE IF NOT EXISTS ${table} (
      pipeline text NOT NULL, key text NOT NULL, window_start timestamptz NOT NULL, window_end timestamptz NOT NULL,
      revision int NOT NULL, sources int NOT NULL, final boolean NOT NULL, "values" jsonb NOT NULL,
      PRIMARY KEY (pipeline, key, window_start))`

    const upsert = (rows: number): string => {
      const values: string[] = []
      for (let i = 0; i < rows; i++) {
        const b = i * 8
        values.push(`($${b + 1}, $${b + 2}, $${b + 3}, $${b + 4}, $${b + 5}, $${b + 6}, $${b + 7}, $${b + 8}::jsonb)`)
      }
      return `INSERT INTO ${table} AS t (pipeline, key, window_start, window_end, revision, sources, final, "values")
        VALUES ${values.join(', ')}
        ON CONFLICT (pipeline, key, window_start) DO UPDATE SET window_end = excluded.window_end, revision = excluded.revision,
          sources = excluded.sources, final = excluded.final, "values" = excluded."values"
        WHERE excluded.revision >= t.revision`
    }

    return {
      async send (results) {
        // One row per window: of several in one batch, the highest revision (an upsert may not touch a row twice).
        const byWindow = new Map<string, WindowResult>()
        for (const r of results) {
          const id = JSON.stringify([r.pipeline, r.key, r.start])
          const held = byWindow.get(id)
          if (held === undefined || r.revision >= held.revision) byWindow.set(id, r)
        }
        const rows = [...byWindow.values()]
        const params: unknown[] = []
        for (const r of rows) {
          params.push(r.pipeline, r.key, new Date(r.start).toISOString(), new Date(r.end).toISOString(), r.revision, r.sources, r.final, JSON.stringify(r.values))
        }
        const pool = await (pooled ??= connect())
        try {
          if (!created) {
            await pool.query(create)
            created = true
          }
          await pool.query(upsert(rows.length), params)
        } catch (err) {
          const state = sqlState(err)
          // The table may have been dropped: look again next time.
          if (state === '42P01') created = false
          if (state !== undefined && (state.startsWith('22') || state.startsWith('23'))) throw new SinkRejected(`SQLSTATE ${state}: ${(err as Error).message}`)
          throw err
        }
      },
      async close () {
        if (pooled !== undefined) await (await pooled).end()
      }
    }
  }
}

/**
 * The cloud tier's state in PostgreSQL (tables in cloud-sink/pg-schema.ts), shared by every cloud
 * process started on the same store.
 *
 * Invariants ("counts exactly once" across processes and crashes):
 * - a group of batches is one transaction; its acks are answered only after COMMIT;
 * - a contribution replaces the stored one only if it supersedes it (core's rule, `supersedes`: a
 *   higher revision), enforced by the upsert's WHERE, so replays and the same batch taken by two
 *   processes change nothing;
 * - a batch that stores a contribution locks its window's row (the windows upsert), and a finalization
 *   locks the rows it finalizes (FOR UPDATE SKIP LOCKED): a contribution is either seen by the
 *   finalization that locked its window, or committed after it and marks the now final window dirty
 *   (revision + 1 later). Never neither;
 * - a window is finalized by the one transaction that holds its row lock and finds it still pending:
 *   revision 0 once, then revision + 1 per later change, whichever process runs it;
 * - rows are written in one sorted order in every transaction, so concurrent ones rarely deadlock;
 *   a deadlock or serialization failure is retried whole.
 *
 * Every value is a bound parameter; the SQL text is constant.
 */
import { Decoder, Encoder } from 'cbor-x'
import pg from 'pg'
import { ConfigError, FogmeshError, HttpError } from '../core/errors.ts'
import type { Batch, Contribution, PipelineDef } from '../core/upstream/batch.ts'
import { mergeContributions, sameSelects, supersedes } from '../core/upstream/merge.ts'
import { windowId } from '../server/merge/contribution-store.ts'
import type { MergeWindow } from '../server/merge/contribution-store.ts'
import type { Ack } from '../server/merge/partials-route.ts'
import type { Logger } from '../server/shell/log.ts'
import { redactUrls } from '../server/shell/log.ts'
import type { ResultQuery, WindowResult } from '../server/shell/results.ts'
import { withLive } from '../server/shell/results.ts'
import type { StoreConfig } from './config.ts'
import { migrate } from './pg-schema.ts'

// The same CBOR options as the wire format: states go back out exactly as they came in.
const encoder = new Encoder({ useRecords: false, mapsAsObjects: true })
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true })

/** Within what a bigint and a Date both hold: the API's from/to may be infinite. */
const TIME_BOUND = 8.64e15
/** Attempts of a transaction that failed on a deadlock or a serialization failure. */
const ATTEMPTS = 5
/** Most windows one finalization transaction takes (keeps its locks short). */
const FINALIZE_MAX = 500
/**
 * Most pending windows one pass considers, the earliest ends first (those are due first): a bound on
 * the pass's cost when a backlog builds up; the rest wait for the next passes.
 */
const PENDING_MAX = 50_000
/** How often at most one process records an edge as heard from, ms. */
const SEEN_EVERY = 1_000

/** The store cannot be reached or refused for a reason of its own: the sender retries later. */
export class StoreUnavailable extends HttpError {
  constructor (message: string, options?: ErrorOptions) {
    super(503, 'store_unavailable', message, options)
  }
}

export interface QueuedBatch {
  batch: Batch
  now: number
}

export interface PipelineCounts {
  received: number
  ignored: number
  afterFinal: number
}

/** One batch's outcome in a group: its ack and counts, or the error that refused it alone. */
export type BatchOutcome = { ack: Ack, counts: Map<string, PipelineCounts> } | { error: HttpError }

/** A window not final yet, or final and changed since (without its contributions). */
export type PendingWindow = Omit<MergeWindow, 'contributions' | 'finalAt'>

export interface StoredWatermark {
  pipeline: string
  edge: string
  watermark: number
  lastSeen: number
  idle: boolean
}

/** A finalization in one transaction: which windows, at which revision, with what result. */
export interface Finalized {
  window: PendingWindow
  revision: number
  result: WindowResult
}

interface WindowRow {
  pipeline: string
  key: string
  start_ms: string
  end_ms: string
  first_seen: string
  final_revision: number | null
  dirty: boolean
  upstream_final: boolean
}

function pendingOf (r: WindowRow): PendingWindow {
  return {
    pipeline: r.pipeline,
    key: r.key,
    start: Number(r.start_ms),
    end: Number(r.end_ms),
    firstSeen: Number(r.first_seen),
    finalRevision: r.final_revision,
    dirty: r.dirty,
    upstreamFinal: r.upstream_final
  }
}

/**
 * The server refused the credentials (SQLSTATE class 28), or asked for a password the client did not
 * have (pg says so before sending anything: its SASL step needs a string).
 */
function loginRefused (err: unknown): boolean {
  return sqlState(err)?.startsWith('28') === true || /client password must be a string/.test((err as Error | undefined)?.message ?? '')
}

function sqlState (err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined
}

function byWindow (a: { pipeline: string, key: string, start: number, end: number }, b: { pipeline: string, key: string, start: number, end: number }): number {
  return a.pipeline < b.pipeline ? -1 : a.pipeline > b.pipeline ? 1 : a.key < b.key ? -1 : a.key > b.key ? 1 : a.start - b.start || a.end - b.end
}

function clampTime (t: number): number {
  return Math.max(-TIME_BOUND, Math.min(TIME_BOUND, t))
}

/** Columns of window keys, as the unnest() arrays of a statement. */
function windowColumns (ws: ReadonlyArray<{ pipeline: string, key: string, start: number, end: number }>): unknown[] {
  return [ws.map(w => w.pipeline), ws.map(w => w.key), ws.map(w => w.start), ws.map(w => w.end)]
}

const PENDING_COLUMNS = 'pipeline, key, start_ms, end_ms, first_seen, final_revision, dirty, upstream_final'

/**
 * pg's client, closing its socket when the connection fails on the client's side: pg leaves it open
 * when it gives up before the server does (a password asked for and none given), and the server then
 * holds it for its authentication_timeout (a minute), keeping a process that should exit alive.
 */
class Client extends pg.Client {
  override connect (): Promise<pg.Client>
  override connect (callback: (err: Error) => void): void
  override connect (callback?: (err: Error) => void): Promise<pg.Client> | undefined {
    const close = (): void => { (this as unknown as { connection?: { stream?: { destroy: () => void } } }).connection?.stream?.destroy() }
    if (callback === undefined) return super.connect().catch((err: unknown) => { close(); throw err })
    super.connect((err: Error | null) => {
      if (err !== null) close()
      callback(err as Error)
    })
  }
}

/**
 * A group's changes in one statement (one round trip; a transaction of its own unless definitions or
 * "heard from" need more): the contributions that supersede the stored ones; their windows, created
 * if new, a final one made dirty, each locked (see the top); windows a fog finalized flagged; the
 * watermarks. `dirty` in the windows' values is "changed": it applies only to a row already final. A
 * window with nothing to change is not rewritten (no new row version), but ON CONFLICT DO UPDATE locks
 * it all the same, whatever its WHERE says. Returns how many contributions were stored ('n'), which
 * ones only if not all of the $18 offered were (the usual case needs no row per contribution), and the
 * windows that were final already ('w').
 */
const APPLY = `WITH c AS (
     INSERT INTO fogmesh_contributions AS c (pipeline, key, start_ms, end_ms, edge, revision, states)
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::int[], $7::bytea[])
     ON CONFLICT (pipeline, key, start_ms, end_ms, edge) DO UPDATE SET revision = excluded.revision, states = excluded.states
     WHERE excluded.revision > c.revision
     RETURNING pipeline, key, start_ms, end_ms, edge),
   t AS (
     SELECT pipeline, key, start_ms, end_ms, bool_or(changed) AS changed, bool_or(upstream) AS upstream FROM (
       SELECT pipeline, key, start_ms, end_ms, true AS changed, false AS upstream FROM c
       UNION ALL
       SELECT *, false, true FROM unnest($8::text[], $9::text[], $10::bigint[], $11::bigint[])) x
     GROUP BY pipeline, key, start_ms, end_ms),
   w AS (
     INSERT INTO fogmesh_windows AS w (pipeline, key, start_ms, end_ms, first_seen, dirty, upstream_final)
     SELECT pipeline, key, start_ms, end_ms, $12::bigint, changed, upstream FROM t ORDER BY pipeline, key, start_ms, end_ms
     ON CONFLICT (pipeline, key, start_ms, end_ms) DO UPDATE SET
       dirty = w.dirty OR (w.final_revision IS NOT NULL AND excluded.dirty),
       upstream_final = w.upstream_final OR (w.final_revision IS NULL AND excluded.upstream_final)
     WHERE (w.final_revision IS NOT NULL AND excluded.dirty) OR (w.final_revision IS NULL AND excluded.upstream_final AND NOT w.upstream_final)
     RETURNING pipeline, key, start_ms, end_ms, final_revision IS NOT NULL AS was_final),
   m AS (
     INSERT INTO fogmesh_watermarks AS m (pipeline, edge, watermark, last_seen, idle)
     SELECT * FROM unnest($13::text[], $14::text[], $15::float8[], $16::bigint[], $17::boolean[])
     ON CONFLICT (pipeline, edge) DO UPDATE SET watermark = GREATEST(m.watermark, excluded.watermark),
       last_seen = GREATEST(m.last_seen, excluded.last_seen), idle = excluded.idle)
   SELECT 'n' AS kind, NULL::text AS pipeline, NULL::text AS key, NULL::bigint AS start_ms, NULL::bigint AS end_ms, NULL::text AS edge,
     NULL::boolean AS was_final, count(*)::int AS n FROM c
   UNION ALL
   SELECT 'c', pipeline, key, start_ms, end_ms, edge, NULL, NULL FROM c WHERE (SELECT count(*) FROM c) < $18
   UNION ALL
   SELECT 'w', pipeline, key, start_ms, end_ms, NULL, was_final, NULL FROM w WHERE was_final`

export class PgStore {
  readonly #pool: pg.Pool
  readonly #config: StoreConfig
  readonly #log: Logger
  /**
   * Definitions known to be stored, as last read: a batch whose definitions merge the same way and
   * are not newer needs no statement about them (a stored definition only ever gets a higher version,
   * never another shape).
   */
  readonly #storedDefs = new Map<string, PipelineDef>()
  /** When this process last recorded each edge as heard from (see #apply). */
  readonly #seenWritten = new Map<string, number>()

  constructor (config: StoreConfig, log: Logger, application: string) {
    this.#config = config
    this.#log = log
    this.#pool = new pg.Pool({
      Client,
      connectionString: config.url,
      max: config.pool,
      connectionTimeoutMillis: 5_000,
      idleTimeoutMillis: 30_000,
      application_name: application.slice(0, 63)
    })
    // An idle connection that breaks (PostgreSQL restarting) must not crash the process; the next
    // query on the pool opens a new one.
    this.#pool.on('error', err => { this.#log.debug('store.connection_lost', `a pooled connection to ${config.shown} broke (${redactUrls(err.message)})`) })
  }

  /** The URL with its password masked. */
  get shown (): string {
    return this.#config.shown
  }

  /**
   * Connects and brings the schema up to date; returns the versions applied by this call. A store
   * that refuses the login (a wrong password, none given, no pg_hba.conf entry) is a ConfigError:
   * waiting would not change it.
   */
  async open (): Promise<number[]> {
    let client: pg.PoolClient
    try {
      client = await this.#connect()
    } catch (err) {
      const cause = (err as Error).cause
      if (loginRefused(cause)) {
        const why = sqlState(cause) === undefined ? 'it asks for a password and none was given' : redactUrls((cause as Error).message)
        throw new ConfigError(`the store ${this.#config.shown} refused the login: ${why} ` +
          '(the password comes from the URL, a ${NAME} in it, or PGPASSWORD)', { cause })
      }
      throw err
    }
    try {
      const applied = await migrate(client)
      client.release()
      return applied
    } catch (err) {
      client.release(true)
      throw this.#unavailable(err)
    }
  }

  async close (): Promise<void> {
    await this.#pool.end()
  }

  /** Definitions learned from batches, by name. */
  async pipelines (): Promise<PipelineDef[]> {
    const { rows } = await this.#query<{ def: PipelineDef }>('SELECT def FROM fogmesh_pipelines ORDER BY name')
    return rows.map(r => r.def)
  }

  async watermarks (): Promise<StoredWatermark[]> {
    const { rows } = await this.#query<{ pipeline: string, edge: string, watermark: number, last_seen: string, idle: boolean }>(
      'SELECT pipeline, edge, watermark, last_seen, idle FROM fogmesh_watermarks')
    return rows.map(r => ({ pipeline: r.pipeline, edge: r.edge, watermark: r.watermark, lastSeen: Number(r.last_seen), idle: r.idle }))
  }

  /** Windows to finalize (first time or again), unlocked: a finalization locks and checks them again. */
  async pending (): Promise<PendingWindow[]> {
    const { rows } = await this.#query<WindowRow>(`SELECT ${PENDING_COLUMNS} FROM fogmesh_windows WHERE final_revision IS NULL OR dirty
      ORDER BY end_ms LIMIT ${PENDING_MAX}`)
    return rows.map(pendingOf)
  }

  /**
   * Applies a group of batches in one transaction. `known(name)` is how this process merges a
   * pipeline (its --pipelines file); a batch whose definitions merge differently from those, or from
   * the stored ones, is refused alone (409). A batch whose data PostgreSQL refuses (a NUL in a key) is
   * refused alone too (400), the rest of the group applied without it.
   */
  async commit (group: readonly QueuedBatch[], known: (name: string) => PipelineDef | undefined): Promise<BatchOutcome[]> {
    try {
      let read = new Map<string, PipelineDef>()
      const outcomes = await this.#transaction(async (client, begin) => {
        read = new Map()
        return await this.#apply(client, begin, group, known, read)
      }, null)
      // Only what a committed transaction read: a definition inserted by one that rolled back is not stored.
      for (const [name, def] of read) this.#storedDefs.set(name, def)
      return outcomes
    } catch (err) {
      const state = sqlState(err)
      if (state === undefined || !state.startsWith('22')) throw err
      if (group.length === 1) return [{ error: new HttpError(400, 'bad_batch', `the store refused the batch's data (SQLSTATE ${state}: ${(err as Error).message})`) }]
      const out: BatchOutcome[] = []
      for (const q of group) out.push(...await this.commit([q], known))
      return out
    }
  }

  async #apply (client: pg.PoolClient, begin: () => Promise<void>, group: readonly QueuedBatch[], known: (name: string) => PipelineDef | undefined,
    read: Map<string, PipelineDef>): Promise<BatchOutcome[]> {
    const outcomes: Array<BatchOutcome | undefined> = group.map(() => undefined)
    // Definitions: the first of a name in the group is stored if the name is new; then every batch is
    // checked against what is stored (and this process's file), in the same transaction.
    const offered = new Map<string, PipelineDef>()
    const stored = new Map<string, PipelineDef>()
    for (const q of group) {
      for (const d of q.batch.pipelines) {
        const cached = this.#storedDefs.get(d.name)
        if (cached !== undefined && sameSelects(cached, d) && d.version <= cached.version) stored.set(d.name, cached)
        else if (!offered.has(d.name)) offered.set(d.name, d)
      }
    }
    if (offered.size > 0) {
      await begin()
      const defs = [...offered.values()].sort((a, b) => a.name < b.name ? -1 : 1)
      await client.query(`INSERT INTO fogmesh_pipelines (name, version, def) SELECT * FROM unnest($1::text[], $2::int[], $3::jsonb[])
        ON CONFLICT (name) DO NOTHING`, [defs.map(d => d.name), defs.map(d => d.version), defs.map(d => JSON.stringify(d))])
      const { rows } = await client.query<{ def: PipelineDef }>('SELECT def FROM fogmesh_pipelines WHERE name = ANY($1::text[])', [defs.map(d => d.name)])
      for (const r of rows) {
        stored.set(r.def.name, r.def)
        read.set(r.def.name, r.def)
      }
    }
    const newer = new Map<string, PipelineDef>()
    for (const [i, q] of group.entries()) {
      for (const d of q.batch.pipelines) {
        const have = known(d.name) ?? stored.get(d.name)
        if (have !== undefined && !sameSelects(have, d)) {
          outcomes[i] = {
            error: new HttpError(409, 'pipeline_conflict', `pipeline "${d.name}" version ${d.version} from ${q.batch.sender} merges differently ` +
              `(window or select) from the "${d.name}" this cloud merges (version ${have.version}); nothing was stored`)
          }
          break
        }
      }
      if (outcomes[i] !== undefined) continue
      for (const d of q.batch.pipelines) {
        const s = stored.get(d.name)
        if (s !== undefined && d.version > s.version && d.version > (newer.get(d.name)?.version ?? -Infinity)) newer.set(d.name, d)
      }
    }
    if (newer.size > 0) await begin()
    for (const d of [...newer.values()].sort((a, b) => a.name < b.name ? -1 : 1)) {
      await client.query('UPDATE fogmesh_pipelines SET version = $2, def = $3 WHERE name = $1 AND version < $2', [d.name, d.version, JSON.stringify(d)])
      read.set(d.name, d)
    }

    // Contributions: of several to the same window and edge in the group, the one that supersedes the
    // others (an upsert cannot touch a row twice); the others are replays as far as the store goes.
    interface Offer { pipeline: string, key: string, start: number, end: number, contribution: Contribution, batch: number }
    const best = new Map<string, Offer>()
    const offers: Offer[] = []
    const upstreamFinal = new Map<string, { pipeline: string, key: string, start: number, end: number }>()
    for (const [i, q] of group.entries()) {
      if (outcomes[i] !== undefined) continue
      for (const e of q.batch.windows) {
        if (e.contributions.length === 0) continue
        // Only a fog finalizes merged windows; an edge's `final` would mean nothing here.
        if (q.batch.role === 'fog' && e.final !== undefined) upstreamFinal.set(windowId(e), { pipeline: e.pipeline, key: e.key, start: e.start, end: e.end })
        for (const contribution of e.contributions) {
          const o: Offer = { pipeline: e.pipeline, key: e.key, start: e.start, end: e.end, contribution, batch: i }
          offers.push(o)
          const id = JSON.stringify([e.pipeline, e.key, e.start, e.end, contribution.edge])
          const held = best.get(id)
          if (held === undefined || supersedes(held.contribution, contribution)) best.set(id, o)
        }
      }
    }
    const winners = [...best.values()].sort((a, b) => byWindow(a, b) || (a.contribution.edge < b.contribution.edge ? -1 : 1))
    const finals = [...upstreamFinal.values()].sort(byWindow)

    // Watermarks: the highest per (pipeline, edge) in the group; never moved back.
    const marks = new Map<string, { pipeline: string, edge: string, watermark: number, lastSeen: number, idle: boolean }>()
    const seen = new Map<string, number>()
    let firstSeen = Infinity
    for (const [i, q] of group.entries()) {
      if (outcomes[i] !== undefined) continue
      firstSeen = Math.min(firstSeen, q.now)
      for (const wm of q.batch.watermarks) {
        const id = JSON.stringify([wm.pipeline, wm.edge])
        const m = marks.get(id)
        if (m === undefined) marks.set(id, { pipeline: wm.pipeline, edge: wm.edge, watermark: wm.watermark, lastSeen: q.now, idle: wm.idle === true })
        else {
          m.watermark = Math.max(m.watermark, wm.watermark)
          m.lastSeen = Math.max(m.lastSeen, q.now)
          m.idle = wm.idle === true
        }
      }
      // Heard from: recorded at most every SEEN_EVERY per edge and process, far finer than the
      // --finalize-after it is compared with, and a write less per batch.
      if (q.batch.role === 'edge' && q.now - (this.#seenWritten.get(q.batch.sender) ?? -Infinity) >= SEEN_EVERY) {
        seen.set(q.batch.sender, Math.max(seen.get(q.batch.sender) ?? 0, q.now))
      }
    }
    const ms = [...marks.values()].sort((a, b) => a.pipeline < b.pipeline ? -1 : a.pipeline > b.pipeline ? 1 : a.edge < b.edge ? -1 : 1)

    // One statement: APPLY.
    const applied = new Set<Offer>()
    const wasFinal = new Set<string>()
    if (seen.size > 0) await begin()
    if (winners.length > 0 || finals.length > 0 || ms.length > 0) {
      const { rows } = await client.query<{ kind: string, pipeline: string, key: string, start_ms: string, end_ms: string, edge: string | null, n: number | null }>({
        // Named: prepared once per connection, not parsed and planned again for every group.
        name: 'fogmesh_apply',
        text: APPLY,
        values: [...windowColumns(winners), winners.map(w => w.contribution.edge), winners.map(w => w.contribution.revision),
          winners.map(w => encoder.encode(w.contribution.states)),
          ...windowColumns(finals), firstSeen,
          ms.map(m => m.pipeline), ms.map(m => m.edge), ms.map(m => m.watermark), ms.map(m => m.lastSeen), ms.map(m => m.idle), winners.length]
      })
      for (const r of rows) {
        if (r.kind === 'n') {
          if (r.n === winners.length) for (const w of winners) applied.add(w)
          continue
        }
        const ref = { pipeline: r.pipeline, key: r.key, start: Number(r.start_ms), end: Number(r.end_ms) }
        if (r.kind === 'c') applied.add(best.get(JSON.stringify([ref.pipeline, ref.key, ref.start, ref.end, r.edge]))!)
        else wasFinal.add(windowId(ref))
      }
    }
    // Any batch from an edge says it is alive, in every pipeline it feeds (rows locked in key order).
    if (seen.size > 0) {
      const senders = [...seen].sort((a, b) => a[0] < b[0] ? -1 : 1)
      await client.query(`UPDATE fogmesh_watermarks m SET last_seen = GREATEST(m.last_seen, s.at)
        FROM (SELECT x.pipeline, x.edge, v.at FROM fogmesh_watermarks x JOIN unnest($1::text[], $2::bigint[]) AS v (edge, at) ON x.edge = v.edge
              ORDER BY x.pipeline, x.edge FOR UPDATE OF x) s
        WHERE m.pipeline = s.pipeline AND m.edge = s.edge AND m.last_seen < s.at`, [senders.map(s => s[0]), senders.map(s => s[1])])
      for (const [edge, at] of senders) this.#seenWritten.set(edge, at)
    }

    for (const [i, q] of group.entries()) {
      if (outcomes[i] !== undefined) continue
      outcomes[i] = { ack: { acked: q.batch.seq, applied: 0, ignored: 0 }, counts: new Map() }
    }
    for (const o of offers) {
      const out = outcomes[o.batch] as { ack: Ack, counts: Map<string, PipelineCounts> }
      let c = out.counts.get(o.pipeline)
      if (c === undefined) out.counts.set(o.pipeline, c = { received: 0, ignored: 0, afterFinal: 0 })
      c.received++
      if (applied.has(o)) {
        out.ack.applied++
        if (wasFinal.has(windowId(o))) c.afterFinal++
      } else {
        out.ack.ignored++
        c.ignored++
      }
    }
    return outcomes as BatchOutcome[]
  }

  /**
   * Finalizes what is due among `candidates` in one transaction: locks those rows that no other
   * process holds and that are still pending, asks `decide` again on the locked row (the revision to
   * give it, or undefined), merges each one's contributions, stores the results, hands them to
   * `beforeCommit` (the sinks' durable queues: a repeat after a crash is harmless), records the
   * windows as final and commits. Returns what was finalized.
   */
  async finalize (candidates: readonly PendingWindow[], decide: (w: PendingWindow) => number | undefined,
    definition: (pipeline: string) => PipelineDef | undefined, beforeCommit: (results: WindowResult[]) => void, now: number): Promise<Finalized[]> {
    if (candidates.length === 0) return []
    const ws = [...candidates].sort(byWindow).slice(0, FINALIZE_MAX)
    return await this.#transaction(async client => {
      const { rows } = await client.query<WindowRow>(
        `SELECT ${PENDING_COLUMNS} FROM fogmesh_windows
         WHERE (pipeline, key, start_ms, end_ms) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]))
           AND (final_revision IS NULL OR dirty)
         ORDER BY pipeline, key, start_ms, end_ms
         FOR UPDATE SKIP LOCKED`, windowColumns(ws))
      const due: Array<{ window: PendingWindow, revision: number, def: PipelineDef }> = []
      for (const r of rows) {
        const window = pendingOf(r)
        const def = definition(window.pipeline)
        const revision = decide(window)
        if (def !== undefined && revision !== undefined) due.push({ window, revision, def })
      }
      if (due.length === 0) return []
      const contributions = await this.#contributions(client, due.map(d => d.window))
      const out: Finalized[] = due.map(({ window: w, revision, def }) => {
        const cs = contributions.get(windowId(w)) ?? new Map<string, Contribution>()
        return {
          window: w,
          revision,
          result: { pipeline: w.pipeline, key: w.key, start: w.start, end: w.end, final: true, revision, sources: cs.size, values: mergeContributions(def, cs.values()) }
        }
      })
      const rs = out.map(f => f.result)
      await client.query(`INSERT INTO fogmesh_results AS r (pipeline, key, start_ms, end_ms, revision, sources, "values", final_at)
        SELECT p, k, s, e, rev, src, v::json, $8 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::int[], $6::int[], $7::text[]) AS x (p, k, s, e, rev, src, v)
        ON CONFLICT (pipeline, start_ms, key, end_ms) DO UPDATE SET revision = excluded.revision, sources = excluded.sources,
          "values" = excluded."values", final_at = excluded.final_at
        WHERE excluded.revision >= r.revision`,
      [...windowColumns(rs), rs.map(r => r.revision), rs.map(r => r.sources), rs.map(r => JSON.stringify(r.values)), now])
      await client.query(`UPDATE fogmesh_windows w SET final_revision = x.rev, final_at = $6, dirty = false, upstream_final = false
        FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::int[]) AS x (p, k, s, e, rev)
        WHERE w.pipeline = x.p AND w.key = x.k AND w.start_ms = x.s AND w.end_ms = x.e`,
      [...windowColumns(rs), rs.map(r => r.revision), now])
      beforeCommit(rs)
      return out
    })
  }

  /**
   * Final results with the windows not final yet (merged so far) mixed in, read in one snapshot so
   * that a window finalized meanwhile shows once, either way.
   */
  async results (def: PipelineDef, q: ResultQuery): Promise<WindowResult[]> {
    const from = clampTime(q.from)
    const to = clampTime(q.to)
    const key = q.key ?? null
    return await this.#transaction(async client => {
      const { rows } = await client.query<{ key: string, start_ms: string, end_ms: string, revision: number, sources: number, values: WindowResult['values'] }>(
        `SELECT key, start_ms, end_ms, revision, sources, "values" FROM fogmesh_results
         WHERE pipeline = $1 AND start_ms >= $2 AND start_ms < $3 AND ($4::text IS NULL OR key = $4)
         ORDER BY start_ms, key, end_ms LIMIT $5`, [def.name, from, to, key, q.limit])
      const stored: WindowResult[] = rows.map(r => ({
        pipeline: def.name, key: r.key, start: Number(r.start_ms), end: Number(r.end_ms), final: true, revision: r.revision, sources: r.sources, values: r.values
      }))
      const open = await client.query<WindowRow>(
        `SELECT ${PENDING_COLUMNS} FROM fogmesh_windows
         WHERE pipeline = $1 AND final_revision IS NULL AND start_ms >= $2 AND start_ms < $3 AND ($4::text IS NULL OR key = $4)`, [def.name, from, to, key])
      const windows = open.rows.map(pendingOf)
      const contributions = await this.#contributions(client, windows)
      const live = windows.map(w => {
        const cs = contributions.get(windowId(w)) ?? new Map<string, Contribution>()
        return { pipeline: w.pipeline, key: w.key, start: w.start, end: w.end, final: false, revision: 0, sources: cs.size, values: mergeContributions(def, cs.values()) }
      })
      return withLive(stored, live, q)
    }, 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
  }

  /** The stored contributions of these windows, by window id, then edge. */
  async #contributions (client: pg.PoolClient, ws: readonly PendingWindow[]): Promise<Map<string, Map<string, Contribution>>> {
    const out = new Map<string, Map<string, Contribution>>()
    if (ws.length === 0) return out
    const { rows } = await client.query<{ pipeline: string, key: string, start_ms: string, end_ms: string, edge: string, revision: number, states: Buffer }>(
      `SELECT pipeline, key, start_ms, end_ms, edge, revision, states FROM fogmesh_contributions
       WHERE (pipeline, key, start_ms, end_ms) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]))`, windowColumns(ws))
    for (const r of rows) {
      const id = windowId({ pipeline: r.pipeline, key: r.key, start: Number(r.start_ms), end: Number(r.end_ms) })
      let m = out.get(id)
      if (m === undefined) out.set(id, m = new Map())
      m.set(r.edge, { edge: r.edge, revision: r.revision, states: decoder.decode(r.states) as unknown[] })
    }
    return out
  }

  /**
   * Removes the windows (with their contributions and results) finalized before `before` and
   * unchanged since, and beyond `maxPerPipeline` final windows per pipeline the oldest ones, as the
   * SQLite stores do. Windows waiting to be finalized (again) are never removed.
   */
  async prune (before: number, maxPerPipeline: number): Promise<void> {
    await this.#transaction(async client => {
      const gone = `WITH old AS (
          SELECT pipeline, key, start_ms, end_ms FROM fogmesh_windows WHERE final_at < $1 AND NOT dirty
          UNION
          SELECT pipeline, key, start_ms, end_ms FROM (
            SELECT pipeline, key, start_ms, end_ms, row_number() OVER (PARTITION BY pipeline ORDER BY start_ms DESC, key DESC) AS n
            FROM fogmesh_windows WHERE final_revision IS NOT NULL AND NOT dirty) ranked
          WHERE n > $2),
        w AS (DELETE FROM fogmesh_windows x USING old WHERE (x.pipeline, x.key, x.start_ms, x.end_ms) = (old.pipeline, old.key, old.start_ms, old.end_ms)
              AND x.final_revision IS NOT NULL AND NOT x.dirty RETURNING x.pipeline, x.key, x.start_ms, x.end_ms),
        c AS (DELETE FROM fogmesh_contributions y USING w WHERE (y.pipeline, y.key, y.start_ms, y.end_ms) = (w.pipeline, w.key, w.start_ms, w.end_ms))
        DELETE FROM fogmesh_results z USING w WHERE (z.pipeline, z.key, z.start_ms, z.end_ms) = (w.pipeline, w.key, w.start_ms, w.end_ms)`
      await client.query(gone, [before, maxPerPipeline])
    })
  }

  async #connect (): Promise<pg.PoolClient> {
    try {
      return await this.#pool.connect()
    } catch (err) {
      throw new StoreUnavailable(`cannot reach the store ${this.#config.shown}: ${redactUrls((err as Error).message)}`, { cause: err })
    }
  }

  async #query<R extends pg.QueryResultRow> (sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
    const client = await this.#connect()
    try {
      const r = await client.query<R>(sql, params)
      client.release()
      return r
    } catch (err) {
      client.release(true)
      throw this.#unavailable(err)
    }
  }

  /**
   * Runs `fn` in a transaction (begun with `begin`), again on a deadlock or serialization failure.
   * With `begin` null, `fn` begins one only if it calls the `begin` it is given: a single statement
   * needs none (it commits by itself, in one round trip).
   */
  async #transaction<T> (fn: (client: pg.PoolClient, begin: () => Promise<void>) => Promise<T>, begin: string | null = 'BEGIN'): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.#connect()
      let open = false
      const start = async (): Promise<void> => {
        if (open) return
        await client.query('BEGIN')
        open = true
      }
      try {
        if (begin !== null) {
          await client.query(begin)
          open = true
        }
        const out = await fn(client, start)
        if (open) await client.query('COMMIT')
        client.release()
        return out
      } catch (err) {
        const state = sqlState(err)
        const retry = (state === '40P01' || state === '40001') && attempt < ATTEMPTS
        // A connection whose state is unknown (broken mid-transaction) is not given back to the pool.
        try {
          if (open) await client.query('ROLLBACK')
          client.release()
        } catch {
          client.release(true)
        }
        if (retry) continue
        throw this.#unavailable(err)
      }
    }
  }

  /** A failure that is not about a batch's data: the store is unavailable for now. */
  #unavailable (err: unknown): unknown {
    // Our own errors (a refusal, a store of a newer release) say what they mean already.
    if (err instanceof FogmeshError) return err
    const state = sqlState(err)
    if (state !== undefined && (state.startsWith('22') || state.startsWith('23') || state.startsWith('42'))) return err
    return new StoreUnavailable(`the store ${this.#config.shown} failed: ${redactUrls((err as Error).message ?? String(err))}`, { cause: err })
  }
}

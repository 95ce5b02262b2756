/**
 * The `cloud-pg` part of the bench: contributions committed per second through the cloud tier on
 * PostgreSQL (`fogmesh cloud --store`), through one cloud process and through two on the same store,
 * against raw inserts of the same rows into the same PostgreSQL (the baseline, measured in the same
 * run): how much of what the database takes the tier keeps, and how it scales with processes.
 *
 * The load: closed loops, each an edge posting batches of WINDOWS windows (one contribution each, a
 * higher revision every batch, so every contribution is a committed upsert), through the client edges
 * post with (server/shell/peer-client.ts: node:http, kept-alive connections). The raw baseline runs the
 * same loops with the same rows as one multi-row upsert per batch into a bare table, from a pool of as
 * many connections as loops. Rounds alternate raw, one, two; the medians are reported. Finalization
 * stays out of the figure (--finalize-after is longer than the run). Ratios, not absolute figures: the
 * machine (and its CPU cores, which PostgreSQL, the clouds and the load share) is whatever runs it.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { encode } from 'cbor-x'
import pg from 'pg'
import { batchRequest, closedLoop, windowEntries } from './cluster-workload.ts'
import type { Request } from './cluster-workload.ts'
import { cpuTimes, median, REPO_DIR, spawnNode, stopChild } from './lib.ts'
import type { Child } from './lib.ts'
import { PeerClient } from '../server/shell/peer-client.ts'
import { startPostgres } from '../test/helpers/postgres.ts'

/** Windows (contributions) per batch. */
const WINDOWS = 50
/** Loops in flight, split evenly over the processes measured. */
const LOOPS = 8
const WINDOW_START = Date.UTC(2026, 0, 1)
const WINDOW_MS = 10_000
/** Ratio aims: of raw inserts through one process, and two processes over one. */
const AIM_OF_RAW = 0.5
const AIM_SCALING = 1.6

interface Cpu { postgres: number, clouds: number, load: number }

export interface CloudPgResult {
  rounds: number
  roundMs: number
  contributionsPerBatch: number
  loops: number
  /** Medians, contributions per second. */
  rawPerSecond: number
  onePerSecond: number
  twoPerSecond: number
  /**
   * CPU time per 1,000 contributions (medians, ms): of PostgreSQL (every process of that server), of
   * the cloud processes, and of this load process. Where the time goes on a machine whose cores all
   * three share.
   */
  cpuPerThousand: Record<'raw' | 'one' | 'two', { postgres: number, clouds: number, load: number }>
  /** one / raw. */
  oneOfRaw: number
  /** two / one. */
  scaling: number
  warnings: string[]
}

/** CPU time (ms) of the PostgreSQL server listening on `port`: the postmaster, its exited children and its live ones. */
function postgresCpuMs (port: number): number {
  const stat = (pid: string): string[] => {
    const line = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return line.slice(line.lastIndexOf(')') + 2).split(' ')
  }
  let master: string | undefined
  const all = readdirSync('/proc').filter(e => /^\d+$/.test(e))
  for (const pid of all) {
    try {
      const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
      if (args[0].endsWith('/postgres') && args.includes(String(port))) master = pid
    } catch {}
  }
  if (master === undefined) return NaN
  // utime, stime, cutime, cstime (fields 14-17, here 11-14): in clock ticks of 10 ms.
  const ms = (f: string[], children: boolean) => (Number(f[11]) + Number(f[12]) + (children ? Number(f[13]) + Number(f[14]) : 0)) * 10
  let total = ms(stat(master), true)
  for (const pid of all) {
    try {
      const f = stat(pid)
      if (f[1] === master) total += ms(f, false)
    } catch {}
  }
  return total
}

function ownCpuMs (): number {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}

/** Posts as an edge does: through the node's own client (server/shell/peer-client.ts), kept-alive connections. */
async function post (client: PeerClient, url: string, req: Request): Promise<string> {
  const res = await client.request(url, { method: 'POST', headers: req.headers, body: req.body, signal: AbortSignal.timeout(10_000) })
  return res.status === 200 ? 'ok' : `HTTP ${res.status}`
}

export async function runCloudPgBench (o: { workDir: string, quick: boolean, log: (line: string) => void, rounds?: number }): Promise<CloudPgResult> {
  const rounds = o.rounds ?? (o.quick ? 1 : 3)
  const roundMs = o.quick ? 3_000 : 6_000
  const pgServer = await startPostgres()
  const clouds: Child[] = []
  const pool = new pg.Pool({ connectionString: pgServer.url, max: LOOPS })
  const clients: PeerClient[] = []
  try {
    const start = async (i: number): Promise<string> => {
      const child = spawnNode(`cloud-${i}`, join(REPO_DIR, 'bin', 'fogmesh.js'), ['cloud', '--id', `c${i}`, '--http-port', '0', '--data-dir', join(o.workDir, `cloud-pg-${i}`),
        '--store', pgServer.url, '--finalize-after', '1h', '--log-level', 'warn'])
      clouds.push(child)
      return (await child.line(/^ready cloud \S+ http=(\S+)/, 30_000))[1]
    }
    const urls = [await start(1), await start(2)]
    await pool.query(`CREATE TABLE bench_raw (pipeline text, key text, start_ms bigint, end_ms bigint, edge text, revision int, states bytea,
      PRIMARY KEY (pipeline, key, start_ms, end_ms, edge))`)

    // Each loop is one edge with its own keys; its revision goes up with every batch it sends.
    const revisions = new Map<string, number>()
    const loops = (target: (i: number) => (edge: string, rev: number) => Promise<string>): Array<() => Promise<string>> =>
      Array.from({ length: LOOPS }, (_, i) => {
        const edge = `e${i}`
        const send = target(i)
        return async () => {
          const rev = (revisions.get(edge) ?? 0) + 1
          revisions.set(edge, rev)
          return await send(edge, rev)
        }
      })
    const entries = (edge: string, rev: number) => windowEntries(edge, rev, Array.from({ length: WINDOWS }, (_, k) => `${edge}-k${k}`), WINDOW_START, WINDOW_START + WINDOW_MS)
    // A client per round: a connection left idle since an earlier round may be closing at the server (its keep-alive timeout).
    const through = (processes: number) => {
      const client = new PeerClient()
      clients.push(client)
      return loops(i => async (edge, rev) => await post(client, `${urls[i % processes]}/v1/partials`, batchRequest(edge, rev, entries(edge, rev))))
    }
    const raw = loops(() => async (edge, rev) => {
      const ws = entries(edge, rev)
      // Encoded as the tier's loops encode theirs, so that the load process does the same work either way.
      batchRequest(edge, rev, ws)
      await pool.query(`INSERT INTO bench_raw AS c SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::int[], $7::bytea[])
        ON CONFLICT (pipeline, key, start_ms, end_ms, edge) DO UPDATE SET revision = excluded.revision, states = excluded.states`,
      [ws.map(w => w.pipeline), ws.map(w => w.key), ws.map(w => w.start), ws.map(w => w.end), ws.map(() => edge), ws.map(() => rev),
        ws.map(w => encode(w.contributions[0].states))])
      return 'ok'
    })
    const cpu = { raw: [] as Cpu[], one: [] as Cpu[], two: [] as Cpu[] }
    const rate = async (what: keyof typeof cpu, ops: Array<() => Promise<string>>): Promise<number> => {
      const cloudsMs = () => clouds.reduce((n, c) => n + cpuTimes(c.pid).process, 0)
      const before = { postgres: postgresCpuMs(pgServer.port), clouds: cloudsMs(), load: ownCpuMs() }
      const r = await closedLoop(ops, roundMs)
      const contributions = (r.ok + r.okAfterEnd) * WINDOWS
      const per = (now: number, then: number) => Math.round((now - then) / contributions * 1000 * 10) / 10
      cpu[what].push({ postgres: per(postgresCpuMs(pgServer.port), before.postgres), clouds: per(cloudsMs(), before.clouds), load: per(ownCpuMs(), before.load) })
      const failed = Object.entries(r.failed).map(([k, n]) => `${k} x${n}`).join(', ')
      const perSecond = r.ok * WINDOWS / (roundMs / 1000)
      const c = cpu[what][cpu[what].length - 1]
      o.log(`cloud-pg: ${what}: ${Math.round(perSecond)} contributions/s; CPU ms per 1000: postgres ${c.postgres}, clouds ${c.clouds}, load ${c.load}${failed === '' ? '' : ` (failed: ${failed})`}`)
      return perSecond
    }
    // A first short pass of each warms up the connections and the JIT; it is not counted.
    await closedLoop(raw, 500)
    await closedLoop(through(2), 500)
    const figures = { raw: [] as number[], one: [] as number[], two: [] as number[] }
    for (let round = 0; round < rounds; round++) {
      figures.raw.push(await rate('raw', raw))
      figures.one.push(await rate('one', through(1)))
      figures.two.push(await rate('two', through(2)))
    }
    const rawPerSecond = Math.round(median(figures.raw))
    const onePerSecond = Math.round(median(figures.one))
    const twoPerSecond = Math.round(median(figures.two))
    const oneOfRaw = Math.round(onePerSecond / rawPerSecond * 100) / 100
    const scaling = Math.round(twoPerSecond / onePerSecond * 100) / 100
    const warnings: string[] = []
    if (oneOfRaw < AIM_OF_RAW) warnings.push(`cloud-pg: one process commits ${oneOfRaw} of raw inserts (aim ${AIM_OF_RAW})`)
    if (scaling < AIM_SCALING) warnings.push(`cloud-pg: two processes commit ${scaling}x one (aim ${AIM_SCALING}x)`)
    const medianCpu = (xs: Cpu[]): Cpu => ({ postgres: median(xs.map(x => x.postgres)), clouds: median(xs.map(x => x.clouds)), load: median(xs.map(x => x.load)) })
    const cpuPerThousand = { raw: medianCpu(cpu.raw), one: medianCpu(cpu.one), two: medianCpu(cpu.two) }
    return { rounds, roundMs, contributionsPerBatch: WINDOWS, loops: LOOPS, rawPerSecond, onePerSecond, twoPerSecond, cpuPerThousand, oneOfRaw, scaling, warnings }
  } finally {
    for (const c of clients) c.close()
    await pool.end().catch(() => {})
    await Promise.all(clouds.map(async c => await stopChild(c)))
    await pgServer.stop()
  }
}

export function cloudPgRows (r: CloudPgResult): Array<[string, string]> {
  return [['cloud on PostgreSQL', `raw inserts ${r.rawPerSecond}/s, one cloud process ${r.onePerSecond}/s (x${r.oneOfRaw} of raw, aim ${AIM_OF_RAW}), ` +
    `two ${r.twoPerSecond}/s (x${r.scaling} of one, aim ${AIM_SCALING}); contributions committed, ${r.loops} loops of ${r.contributionsPerBatch}-window batches, median of ${r.rounds} rounds`],
  ['cloud on PostgreSQL, CPU', (['raw', 'one', 'two'] as const).map(k => `${k}: postgres ${r.cpuPerThousand[k].postgres}, clouds ${r.cpuPerThousand[k].clouds}, load ${r.cpuPerThousand[k].load}`).join('; ') +
    ' (ms per 1000 contributions)']]
}

// Runs a real PostgreSQL server for a test: initdb into a temp dir, then `postgres` on a free loopback
// port (TCP on 127.0.0.1 and a socket in the temp dir), trust authentication, fsync off. With
// `password`, TCP connections instead need a role's password (scram-sha-256 in pg_hba.conf), so a test
// can prove that a client really authenticates; the helper's own queries then go through the socket,
// which stays trusted. Needs the
// server binaries (Debian: `apt-get install postgresql`, which .ci/run does; its service is kept from
// running); there is deliberately no silent skip when they are missing. PostgreSQL refuses to run as
// root: as root, initdb and postgres run as the `postgres` user, which owns the temp dir.
import { execFile, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { chown, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import { exitStatus, freePort, serverLifecycle, sleep, stopChild, tmpDir, track } from './process.ts'

const execFileP = promisify(execFile)

export interface Postgres {
  /**
   * postgres://postgres@127.0.0.1:<port>/postgres; with `password`, postgres://<its user>@127.0.0.1:<port>/postgres
   * (no password in it: the test adds it the way it means to prove).
   */
  url: string
  port: number
  /** A query on a new connection. */
  query: <R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]) => Promise<pg.QueryResult<R>>
  /** Stops the server (fast shutdown), keeping its data. */
  pause: () => Promise<void>
  /** Starts it again on the same port. */
  resume: () => Promise<void>
  /** Stops it and removes the temp dir. Safe to call twice. */
  stop: () => Promise<void>
}

function binDir (): string {
  const root = '/usr/lib/postgresql'
  if (existsSync(root)) {
    const versions = readdirSync(root).filter(v => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))
    for (const v of versions) if (existsSync(join(root, v, 'bin', 'postgres'))) return join(root, v, 'bin')
  }
  throw new Error('PostgreSQL is not installed (looked in /usr/lib/postgresql/*/bin): the sink tests need a real server. ' +
    'On Debian/Ubuntu: apt-get install -y postgresql (.ci/run installs it and keeps its system service from running).')
}

/** As root: the uid and gid of the postgres user, to run the server binaries as (signals reach them directly). */
async function owner (): Promise<{ uid: number, gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined
  const id = async (flag: string): Promise<number> => Number((await execFileP('id', [flag, 'postgres'])).stdout.trim())
  return { uid: await id('-u'), gid: await id('-g') }
}

export interface StartPostgresOptions {
  timeoutMs?: number
  /**
   * Connections over TCP must authenticate (scram-sha-256) as this user, a superuser created with this
   * password; the default is trust (no password asked).
   */
  password?: { user: string, password: string }
}

export async function startPostgres (opts: StartPostgresOptions = {}): Promise<Postgres> {
  const bin = binDir()
  const dir = await tmpDir('fogmesh-postgres-')
  const data = join(dir.path, 'data')
  const as = await owner()
  if (as !== undefined) await chown(dir.path, as.uid, as.gid)
  try {
    await execFileP(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale', 'C'], { timeout: 60_000, cwd: dir.path, ...as })
  } catch (err) {
    await dir.cleanup()
    throw new Error(`initdb failed: ${(err as Error).message}`, { cause: err })
  }
  const auth = opts.password
  if (auth !== undefined) {
    // First match wins: the socket (the helper's own queries) stays trusted, TCP asks everyone for a password.
    await writeFile(join(data, 'pg_hba.conf'), 'local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n')
  }
  const port = await freePort()
  const url = `postgres://${auth?.user ?? 'postgres'}@127.0.0.1:${port}/postgres`
  let proc: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let output = ''

  const query = async <R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> => {
    const client = new pg.Client(auth === undefined
      ? { connectionString: url, connectionTimeoutMillis: 2000 }
      : { host: dir.path, port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 2000 })
    client.on('error', () => {})
    await client.connect()
    try {
      return await client.query<R>(sql, params)
    } finally {
      await client.end().catch(() => {})
    }
  }

  const start = async (): Promise<void> => {
    const args = ['-D', data, '-k', dir.path, '-h', '127.0.0.1', '-p', String(port), '-c', 'fsync=off', '-c', 'full_page_writes=off', '-c', 'synchronous_commit=off']
    const child = spawn(join(bin, 'postgres'), args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir.path, ...await owner() })
    track(child)
    proc = child
    child.stdout?.setEncoding('utf8').on('data', (s: string) => { output += s })
    child.stderr?.setEncoding('utf8').on('data', (s: string) => { output += s })
    let gone = false
    let how = ''
    exited = new Promise(resolve => child.once('exit', (code, signal) => { gone = true; how = `exited with status ${exitStatus(code, signal)}`; resolve() }))
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000)
    while (Date.now() < deadline && !gone) {
      try {
        await query('SELECT 1')
        return
      } catch {}
      await sleep(100)
    }
    child.kill('SIGKILL')
    throw new Error(`postgres did not accept connections on 127.0.0.1:${port} (${how || 'timed out'})\n${output.slice(-3000)}`)
  }

  const pause = async (): Promise<void> => {
    // SIGINT: fast shutdown (clients are disconnected at once).
    if (proc !== undefined) await stopChild(proc, exited, 'SIGINT')
  }

  const stop = await serverLifecycle(dir, start, pause)
  if (auth !== undefined) {
    const client = new pg.Client({ host: dir.path, port, user: 'postgres', database: 'postgres' })
    try {
      await client.connect()
      await client.query(`CREATE ROLE ${client.escapeIdentifier(auth.user)} LOGIN SUPERUSER PASSWORD ${client.escapeLiteral(auth.password)}`)
    } catch (err) {
      await stop()
      throw err
    } finally {
      await client.end().catch(() => {})
    }
  }
  return { url, port, query, pause, resume: start, stop }
}

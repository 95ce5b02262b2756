/**
 * The cloud tier on PostgreSQL against a server that asks for a password (scram-sha-256): a cloud
 * process authenticates with the password from a --store-file, from a ${NAME} in the URL, and from
 * PGPASSWORD; a wrong or missing one stops it at once with a clear line; the password is in no output
 * line and not on the process's command line. Also: a stop signal while a cloud waits for a store that
 * is down ends the start cleanly (exit 0, a log line), with no `ready` line.
 */
import { spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t from 'tap'
import type { Test } from 'tap'
import type { Batch } from '../core/upstream/batch.ts'
import { postBatch } from './helpers/partials.ts'
import { stopWhileStarting } from './helpers/stop-signal.ts'
import { startPostgres } from './helpers/postgres.ts'
import type { Postgres } from './helpers/postgres.ts'
import { exitStatus, fetchJson, fogmeshBin, startFogmesh, tmpDir, track } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'

t.setTimeout(90_000)

const USER = 'fogmesh'
// Characters a URL must escape, so that each way of giving it is tested with them.
const PASSWORD = 'Op3n@Sesame/%not-in-logs'

const BATCH: Batch = {
  sender: 'e1',
  role: 'edge',
  seq: 1,
  pipelines: [{ name: 'temp', version: 1, window: 'tumbling', selects: [{ name: 'n', fn: 'count', params: [] }] }],
  watermarks: [],
  windows: [{ pipeline: 'temp', key: 'k', start: Date.UTC(2026, 0, 1), end: Date.UTC(2026, 0, 1) + 10_000, contributions: [{ edge: 'e1', revision: 0, states: [3] }] }]
}

function cmdline (pid: number): string {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ')
}

async function cloud (t: Test, dir: string, id: string, args: string[], env: Record<string, string> = {}): Promise<RunningProcess> {
  const p = await startFogmesh(['cloud', '--id', id, '--http-port', '0', '--data-dir', join(dir, id), '--log-format', 'json', ...args], { env, timeoutMs: 40_000 })
  t.teardown(async () => { await p.stop().catch(() => p.kill('SIGKILL')) })
  return p
}

/** A cloud expected not to start: its exit status and output. */
async function refused (dir: string, id: string, args: string[], env: Record<string, string> = {}): Promise<{ status: number, lines: string[], cmdline: string }> {
  const proc = spawn(process.execPath, [fogmeshBin, 'cloud', '--id', id, '--http-port', '0', '--data-dir', join(dir, id), '--log-format', 'json', ...args],
    { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  track(proc)
  const seen = cmdline(proc.pid!)
  const lines: string[] = []
  for (const s of [proc.stdout, proc.stderr]) createInterface({ input: s }).on('line', l => lines.push(l))
  const status = await new Promise<number>(resolve => proc.once('close', (code, signal) => resolve(exitStatus(code, signal))))
  return { status, lines, cmdline: seen }
}

function withPassword (pg: Postgres, password: string): string {
  return pg.url.replace(`${USER}@`, `${USER}:${encodeURIComponent(password)}@`)
}

t.test('a password-protected store: --store-file, ${NAME} and PGPASSWORD each authenticate; a wrong one is refused clearly', async t => {
  const pg = await startPostgres({ password: { user: USER, password: PASSWORD } })
  t.teardown(() => pg.stop())
  const dir = await tmpDir('fogmesh-cloud-pg-auth-')
  t.teardown(() => dir.cleanup())
  const urlFile = join(dir.path, 'store-url')
  writeFileSync(urlFile, withPassword(pg, PASSWORD) + '\n', { mode: 0o600 })

  const ways: Array<[string, string[], Record<string, string>]> = [
    ['file', ['--store-file', urlFile], {}],
    ['env-ref', ['--store', pg.url.replace(`${USER}@`, `${USER}:\${FOGMESH_STORE_PASSWORD}@`)], { FOGMESH_STORE_PASSWORD: encodeURIComponent(PASSWORD) }],
    ['pgpassword', ['--store', pg.url], { PGPASSWORD: PASSWORD }]
  ]
  for (const [n, [id, args, env]] of ways.entries()) {
    const p = await cloud(t, dir.path, id, args, env)
    t.same((await fetchJson(`${p.http}/healthz`)).body, { status: 'ok', role: 'cloud', id }, `${id}: authenticated, the store reached`)
    // The same contribution each time: stored by the first, a replay for the others.
    t.same((await postBatch(p.http, { ...BATCH, seq: n + 1 })).body, { acked: n + 1, applied: n === 0 ? 1 : 0, ignored: n === 0 ? 0 : 1 }, `${id}: a batch committed through it`)
    const sessions = await pg.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1 AND application_name = $2', [USER, `fogmesh-cloud-${id}`])
    t.ok(sessions.rows[0].n > 0, `${id}: its connections are logged in as ${USER}`)
    t.notOk(cmdline(p.proc.pid!).includes(PASSWORD) || cmdline(p.proc.pid!).includes(encodeURIComponent(PASSWORD)), `${id}: the password is not on the command line`)
    t.notOk([...p.stdout, ...p.stderr].some(l => l.includes(PASSWORD) || l.includes(encodeURIComponent(PASSWORD))), `${id}: the password is in no output line`)
  }

  const wrong = 'Wr0ng-Sesame-not-in-logs'
  const bad = await refused(dir.path, 'wrong', ['--store', pg.url], { PGPASSWORD: wrong })
  t.equal(bad.status, 2, 'a wrong password stops the cloud at once (status 2), not waited for as unreachable')
  t.ok(bad.lines.some(l => l.includes(`the store postgres://***@127.0.0.1:${pg.port}/postgres refused the login: password authentication failed for user "${USER}"`)),
    `the line says the store refused the login, and why:\n${bad.lines.join('\n')}`)
  t.notOk(bad.lines.some(l => l.includes(wrong)), 'the wrong password is in no output line')
  const file = join(dir.path, 'wrong-url')
  writeFileSync(file, withPassword(pg, wrong) + '\n', { mode: 0o600 })
  const badFile = await refused(dir.path, 'wrong-file', ['--store-file', file])
  t.equal(badFile.status, 2)
  t.ok(badFile.lines.some(l => l.includes(`the store postgres://${USER}:***@127.0.0.1:${pg.port}/postgres refused the login`)), 'the URL is shown with its password masked')
  t.notOk(badFile.lines.some(l => l.includes(wrong)) || badFile.cmdline.includes(wrong), 'the wrong password is neither in an output line nor on the command line')
  const none = await refused(dir.path, 'none', ['--store', pg.url], { PGPASSWORD: '' })
  t.equal(none.status, 2)
  t.ok(none.lines.some(l => l.includes('refused the login: it asks for a password and none was given')), 'no password at all: said so')
})

t.test('a stop signal while the cloud waits for a store that is down: the start ends, exit 0 with a log line', async t => {
  const pg = await startPostgres()
  t.teardown(() => pg.stop())
  await pg.pause()
  const dir = await tmpDir('fogmesh-cloud-pg-stop-')
  t.teardown(() => dir.cleanup())
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    await stopWhileStarting(t, ['cloud', '--id', `w-${signal}`, '--data-dir', join(dir.path, signal), '--store', pg.url], 'store.unreachable', signal)
  }
})

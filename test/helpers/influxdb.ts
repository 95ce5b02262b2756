// Runs a real InfluxDB 1.x (influxd) for a test, with a generated config: meta, data and WAL in a temp
// dir, the HTTP API and the RPC bind address on free loopback ports, reporting to influxdata off (no
// outside traffic). Needs `influxd` (Debian: `apt-get install influxdb`, which .ci/run does; its service
// is kept from running); there is deliberately no silent skip when it is missing.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { accessSync, constants as fsConstants } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { delimiter, join } from 'node:path'
import { exitStatus, freePort, serverLifecycle, sleep, stopChild, tmpDir, track } from './process.ts'

export interface Influx {
  /** http://127.0.0.1:<port> */
  url: string
  /** GET /query; returns the parsed JSON. */
  query: (q: string, db?: string) => Promise<InfluxQueryResult>
  /** POST /write of line protocol (ms precision). */
  write: (db: string, lines: string) => Promise<Response>
  pause: () => Promise<void>
  resume: () => Promise<void>
  stop: () => Promise<void>
}

export interface InfluxQueryResult {
  results: Array<{ error?: string, series?: Array<{ name: string, tags?: Record<string, string>, columns: string[], values: unknown[][] }> }>
}

function findInfluxd (): string {
  for (const d of [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), '/usr/bin', '/usr/sbin', '/usr/local/bin']) {
    const f = join(d, 'influxd')
    try {
      accessSync(f, fsConstants.X_OK)
      return f
    } catch {}
  }
  throw new Error('influxd is not installed: the sink tests need a real InfluxDB 1.x. On Debian/Ubuntu: apt-get install -y influxdb ' +
    '(.ci/run installs it and keeps its system service from running).')
}

export async function startInflux (opts: { timeoutMs?: number } = {}): Promise<Influx> {
  const bin = findInfluxd()
  const dir = await tmpDir('fogmesh-influx-')
  const httpPort = await freePort()
  const rpcPort = await freePort()
  const url = `http://127.0.0.1:${httpPort}`
  const conf = join(dir.path, 'influxdb.conf')
  await writeFile(conf, [
    'reporting-disabled = true',
    `bind-address = "127.0.0.1:${rpcPort}"`,
    '[meta]', `  dir = "${join(dir.path, 'meta')}"`,
    '[data]', `  dir = "${join(dir.path, 'data')}"`, `  wal-dir = "${join(dir.path, 'wal')}"`, '  query-log-enabled = false', '  wal-fsync-delay = "0s"',
    '[http]', '  enabled = true', `  bind-address = "127.0.0.1:${httpPort}"`, '  log-enabled = false', '  auth-enabled = false',
    '[monitor]', '  store-enabled = false',
    '[continuous_queries]', '  enabled = false',
    '[subscriber]', '  enabled = false',
    '[[udp]]', '  enabled = false',
    '[[graphite]]', '  enabled = false',
    '[[collectd]]', '  enabled = false',
    '[[opentsdb]]', '  enabled = false'
  ].join('\n') + '\n')
  let proc: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let output = ''

  const query = async (q: string, db?: string): Promise<InfluxQueryResult> => {
    const params = new URLSearchParams({ q, epoch: 'ms' })
    if (db !== undefined) params.set('db', db)
    const res = await fetch(`${url}/query`, { method: 'POST', body: params, signal: AbortSignal.timeout(5000) })
    if (!res.ok) throw new Error(`influx query ${q}: ${res.status} ${await res.text()}`)
    return await res.json() as InfluxQueryResult
  }

  const start = async (): Promise<void> => {
    const child = spawn(bin, ['-config', conf], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, INFLUXDB_REPORTING_DISABLED: 'true' } })
    track(child)
    proc = child
    child.stdout?.setEncoding('utf8').on('data', (s: string) => { output = (output + s).slice(-20_000) })
    child.stderr?.setEncoding('utf8').on('data', (s: string) => { output = (output + s).slice(-20_000) })
    let gone = false
    let how = ''
    exited = new Promise(resolve => child.once('exit', (code, signal) => { gone = true; how = `exited with status ${exitStatus(code, signal)}`; resolve() }))
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000)
    while (Date.now() < deadline && !gone) {
      try {
        const res = await fetch(`${url}/ping`, { signal: AbortSignal.timeout(1000) })
        if (res.status === 204) return
      } catch {}
      await sleep(100)
    }
    child.kill('SIGKILL')
    throw new Error(`influxd did not answer on ${url} (${how || 'timed out'})\n${output.slice(-3000)}`)
  }

  const pause = async (): Promise<void> => {
    if (proc !== undefined) await stopChild(proc, exited, 'SIGTERM')
  }

  const stop = await serverLifecycle(dir, start, pause)
  const write = async (db: string, lines: string): Promise<Response> =>
    await fetch(`${url}/write?db=${encodeURIComponent(db)}&precision=ms`, { method: 'POST', body: lines, signal: AbortSignal.timeout(5000) })
  return { url, query, write, pause, resume: start, stop }
}

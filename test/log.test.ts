/**
 * Logs: JSON lines on stderr with time, level, role, id and a stable event name; --log-level; a client
 * that goes away mid-request is a debug line, not an error with a stack; no secret in any line.
 */
import { connect } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import { HttpService } from '../server/shell/http.ts'
import type { ServiceApi } from '../server/shell/http.ts'
import { createLogger, prettyLine, redactUrls } from '../server/shell/log.ts'
import { Metrics } from '../server/shell/metrics.ts'
import { fetchJson, freePort, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal']

type Line = Record<string, unknown> & { level: string, event: string, msg: string }

/** Every stderr line of a node as an object; fails the test on a line that is not one. */
function records (t: Test, node: RunningProcess): Line[] {
  return node.stderr.map(line => {
    try {
      return JSON.parse(line) as Line
    } catch {
      t.fail(`not a JSON line: ${line}`)
      return { level: '', event: '', msg: line }
    }
  })
}

async function start (t: Test, role: string, args: string[]): Promise<RunningProcess> {
  const dir = await tmpDir('fogmesh-log-')
  const node = await startFogmesh([role, '--id', `${role}-log`, '--http-port', '0', '--data-dir', join(dir.path, 'data'), ...args])
  t.teardown(async () => {
    if (node.proc.exitCode === null) await node.stop().catch(() => node.kill('SIGKILL'))
    await dir.cleanup()
  })
  return node
}

t.test('a node logs JSON lines with time, level, role, id and event; stdout keeps only the ready line', async t => {
  const edge = await start(t, 'edge', ['--mqtt-port', '0'])
  await edge.waitForLine(/"event":"node\.ready"/)
  t.equal(await edge.stop(), 0)
  const lines = records(t, edge)
  t.ok(lines.length >= 4, 'no pipelines, ready, stopping, stopped')
  for (const l of lines) {
    t.match(l.time, ISO, 'ISO time')
    t.ok(LEVELS.includes(l.level), `level name: ${l.level}`)
    t.equal(l.role, 'edge')
    t.equal(l.id, 'edge-log')
    t.match(l.event, /^[a-z]+\.[a-z_]+$/, 'event name')
    t.type(l.msg, 'string')
  }
  t.same(lines.map(l => l.event), ['edge.no_pipelines', 'node.ready', 'node.stopping', 'node.stopped'])
  t.equal(lines[0].level, 'warn')
  t.equal(edge.stdout.length, 1, 'stdout: the ready line alone')
  t.match(edge.stdout[0], /^ready edge edge-log http=/)
})

t.test('--log-level warn leaves out info lines', async t => {
  const edge = await start(t, 'edge', ['--mqtt-port', '0', '--log-level', 'warn'])
  t.equal(await edge.stop(), 0)
  t.same(records(t, edge).map(l => `${l.level} ${l.event}`), ['warn edge.no_pipelines'])
})

t.test('--log-level takes only a level', async t => {
  await t.rejects(startFogmesh(['edge', '--log-level', 'loud', '--http-port', '0', '--mqtt-port', '0'], { timeoutMs: 10_000 }),
    /--log-level: expected one of trace, debug, info, warn, error, fatal, silent/)
})

t.test('a client that goes away mid-body: a debug line without a stack, no error', async t => {
  const cloud = await start(t, 'cloud', ['--log-level', 'debug'])
  const { hostname, port } = new URL(cloud.http)
  for (let i = 0; i < 3; i++) {
    await new Promise<void>((resolve, reject) => {
      const socket = connect(Number(port), hostname, () => {
        socket.write('POST /v1/partials HTTP/1.1\r\nHost: fogmesh\r\nContent-Type: application/cbor\r\nContent-Length: 100000\r\n\r\n')
        socket.write(Buffer.alloc(4096), () => setTimeout(() => { socket.destroy(); resolve() }, 50))
      })
      socket.on('error', reject)
    })
  }
  await waitFor(() => records(t, cloud).filter(l => l.event === 'http.request_aborted').length === 3, { message: 'three http.request_aborted lines' })
  // The node serves on as before.
  t.equal((await fetchJson(`${cloud.http}/healthz`)).status, 200)
  t.equal(await cloud.stop(), 0)
  const lines = records(t, cloud)
  const aborted = lines.filter(l => l.event === 'http.request_aborted')
  for (const l of aborted) {
    t.equal(l.level, 'debug')
    t.equal(l.path, '/v1/partials')
    t.notOk(JSON.stringify(l).includes('    at '), 'no stack')
  }
  t.same(lines.filter(l => l.level === 'error' || l.level === 'fatal'), [], 'no error line')
})

t.test('an internal error is an error line with its stack', async t => {
  const lines: string[] = []
  const api: ServiceApi = {
    role: 'edge', id: 'e1', metrics: new Metrics(), isReady: () => true, pipelines: () => [], results: () => undefined, mesh: () => ({})
  }
  const http = new HttpService(api, [{ method: 'GET', path: '/boom', handle: () => { throw new Error('boom') } }],
    { host: '127.0.0.1', port: 0, maxBody: 1024, log: createLogger({ write: line => lines.push(line) }) })
  await http.listen()
  t.teardown(() => http.close())
  const res = await fetchJson(`${http.url}/boom`)
  t.equal(res.status, 500)
  t.same(res.body, { error: { code: 'internal', message: 'internal error' } })
  t.equal(lines.length, 1)
  const l = JSON.parse(lines[0]) as Line & { err: { message: string, stack: string } }
  t.equal(l.level, 'error')
  t.equal(l.event, 'http.internal_error')
  t.equal(l.err.message, 'boom')
  t.match(l.err.stack, /Error: boom\n\s+at /)
})

t.test('secrets are not logged', async t => {
  t.equal(redactUrls('mqtt://user:s3cret@broker:1883/x'), 'mqtt://user:***@broker:1883/x')
  t.equal(redactUrls('from https://tok3n@host/a and postgres://u:p%40ss@db:5432/plant'), 'from https://***@host/a and postgres://u:***@db:5432/plant')
  t.equal(redactUrls('no url here: user@example.com'), 'no url here: user@example.com')

  const lines: string[] = []
  const log = createLogger({ write: line => lines.push(line), bindings: { role: 'edge', id: 'e1' } })
  log.warn('sink.failed', 'cannot reach postgres://fogmesh:hunter2@db:5432/plant', {
    url: 'mqtt://user:hunter2@broker:1883',
    urls: ['http://a:hunter2@fog:8082'],
    token: 'hunter2',
    config: { password: 'hunter2', authorization: 'Bearer hunter2' },
    err: new Error('connect to mqtt://user:hunter2@broker failed')
  })
  log.child({ sink: 'https://x:hunter2@hook' }).info('sink.delivered', 'ok')
  t.equal(lines.length, 2)
  t.same(lines.filter(line => line.includes('hunter2')), [], 'no password in a line')
  const l = JSON.parse(lines[0]) as Record<string, unknown>
  t.equal(l.url, 'mqtt://user:***@broker:1883')
  t.equal(l.token, '[redacted]')
  t.match(prettyLine(lines[0]), /^\d\d:\d\d:\d\d\.\d{3} WARN {2}sink\.failed cannot reach postgres:\/\/fogmesh:\*\*\*@db:5432\/plant url=mqtt:\/\/user:\*\*\*@broker:1883 /)

  // A node given a broker URL with a password: not in any line it writes.
  const edge = await start(t, 'edge', ['--mqtt-url', `mqtt://fogmesh:hunter2@127.0.0.1:${await freePort()}`, '--log-level', 'debug'])
  await edge.waitForLine(/"event":"mqtt\.error"/)
  t.equal(await edge.stop(), 0)
  t.same([...edge.stdout, ...edge.stderr].filter(line => line.includes('hunter2')), [], 'no password in the node\'s output')
})

/**
 * Slow and greedy HTTP clients against a real node: connections that stall in their headers or their
 * body are answered 408 and closed within the timeouts, connections beyond the cap are closed at once,
 * idle keep-alive connections are closed, each is counted, and normal requests are served throughout.
 */
import { join } from 'node:path'
import { connect } from 'node:net'
import type { Socket } from 'node:net'
import t from 'tap'
import { fetchMetric } from './helpers/ground-truth.ts'
import { fetchJson, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'

interface Conn {
  socket: Socket
  /** Resolves with the ms from opening to close. */
  closed: Promise<number>
  received: () => string
}

async function open (base: string): Promise<Conn> {
  const { hostname, port } = new URL(base)
  const started = Date.now()
  const socket = connect({ host: hostname, port: Number(port) })
  socket.on('error', () => {})
  let data = ''
  socket.on('data', (c: Buffer) => { data += c.toString('latin1') })
  const closed = new Promise<number>(resolve => socket.once('close', () => resolve(Date.now() - started)))
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', reject)
  })
  return { socket, closed, received: () => data }
}

/** Resolves with the ms to close, or undefined if still open after `ms`. */
async function closedWithin (c: Conn, ms: number): Promise<number | undefined> {
  let timer: NodeJS.Timeout | undefined
  const r = await Promise.race([c.closed, new Promise<undefined>(resolve => { timer = setTimeout(() => resolve(undefined), ms) })])
  clearTimeout(timer)
  return r
}

t.test('an HTTP server drops stalled, surplus and idle connections and keeps serving', { timeout: 60_000 }, async t => {
  const dir = await tmpDir('fogmesh-http-limits-')
  t.teardown(() => dir.cleanup())
  const node = await startFogmesh(['fog', '--id', 'f1', '--http-port', '0', '--data-dir', join(dir.path, 'data'),
    '--http-headers-timeout', '1s', '--http-request-timeout', '2s', '--http-keep-alive-timeout', '1s', '--http-max-connections', '24'])
  t.teardown(async () => {
    if (node.proc.exitCode === null && node.proc.signalCode === null) await node.stop().catch(() => node.kill('SIGKILL'))
  })
  const base = node.http
  const dropped = async (): Promise<Map<string, number>> => await fetchMetric(base, 'fogmesh_http_connections_dropped_total')

  await t.test('headers or a body that stall are cut off with 408', async t => {
    const stalledHeaders = await Promise.all(Array.from({ length: 10 }, async (_, i) => {
      const c = await open(base)
      c.socket.write(`GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow-${i}: `)
      return c
    }))
    const stalledBodies = await Promise.all(Array.from({ length: 5 }, async () => {
      const c = await open(base)
      c.socket.write('POST /v1/partials HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/cbor\r\nContent-Length: 100000\r\n\r\n' + 'x'.repeat(100))
      return c
    }))
    // A byte every 300 ms keeps neither alive: the timeouts are for the whole headers and request.
    const drip = setInterval(() => { for (const c of stalledHeaders) if (!c.socket.destroyed) c.socket.write('a') }, 300)
    t.teardown(() => clearInterval(drip))
    const headerTimes = await Promise.all(stalledHeaders.map(async c => await closedWithin(c, 5_000)))
    const bodyTimes = await Promise.all(stalledBodies.map(async c => await closedWithin(c, 6_000)))
    clearInterval(drip)
    t.comment(`closed after (ms): headers ${headerTimes.join(' ')}; bodies ${bodyTimes.join(' ')}`)
    t.ok(headerTimes.every(ms => ms !== undefined && ms >= 900 && ms < 3_000), 'stalled headers are closed about 1 s after connecting')
    t.ok(bodyTimes.every(ms => ms !== undefined && ms >= 1_900 && ms < 4_500), 'a stalled body is closed about 2 s after connecting')
    t.ok([...stalledHeaders, ...stalledBodies].every(c => c.received().startsWith('HTTP/1.1 408')), 'each got a 408 first')
    const counts = await dropped()
    t.equal(counts.get('{reason="headers_timeout"}'), 10, 'counted as headers timeouts')
    t.equal(counts.get('{reason="request_timeout"}'), 5, 'counted as request timeouts')
  })

  await t.test('connections beyond --http-max-connections are closed at once', async t => {
    const held: Conn[] = []
    t.teardown(() => { for (const c of held) c.socket.destroy() })
    for (let i = 0; i < 24; i++) held.push(await open(base))
    const extra = await open(base)
    const ms = await closedWithin(extra, 800)
    t.ok(ms !== undefined, `the 25th connection is closed at once (${ms} ms)`)
    t.equal(extra.received(), '', 'without an answer')
    t.ok((await Promise.all(held.map(async c => await closedWithin(c, 1)))).every(r => r === undefined), 'the 24 held are still open')
    for (const c of held) c.socket.destroy()
    await Promise.all(held.map(c => c.closed))
    // The server sees those closes a moment after the client does: until then it is still full and
    // refuses the connection that reads the metric.
    t.ok(await waitFor(async () => ((await dropped()).get('{reason="max_connections"}') ?? 0) >= 1, { message: 'max_connections in the metric' }), 'counted')
  })

  await t.test('an idle keep-alive connection is closed after --http-keep-alive-timeout', async t => {
    const c = await open(base)
    c.socket.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n')
    const ms = await closedWithin(c, 5_000)
    t.match(c.received(), /^HTTP\/1\.1 200 /, 'answered')
    t.ok(ms !== undefined && ms >= 900 && ms < 3_500, `then closed when idle (${ms} ms)`)
  })

  t.same((await fetchJson(`${base}/healthz`)).body, { status: 'ok', role: 'fog', id: 'f1' }, 'normal requests are still served')
  t.equal(await node.stop(), 0, 'stops cleanly')
})

t.test('a headers timeout longer than the request timeout is refused at start-up', { timeout: 30_000 }, async t => {
  const dir = await tmpDir('fogmesh-http-limits-')
  t.teardown(() => dir.cleanup())
  await t.rejects(startFogmesh(['cloud', '--id', 'c1', '--http-port', '0', '--data-dir', join(dir.path, 'data'), '--http-headers-timeout', '20s', '--http-request-timeout', '10s'], { timeoutMs: 15_000 }),
    /must not be longer than --http-request-timeout/)
})

import { once } from 'node:events'
import { stat, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import { join } from 'node:path'
import mqtt from 'mqtt'
import t from 'tap'
import { startMosquitto } from './helpers/mosquitto.ts'
import { fetchJson, freePort, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'

const clientOptions = { connectTimeout: 5000, reconnectPeriod: 0 }

async function roundTrip (url: string, options: mqtt.IClientOptions = {}): Promise<string> {
  const client = await mqtt.connectAsync(url, { ...clientOptions, ...options })
  try {
    await client.subscribeAsync('fogmesh/test/+', { qos: 1 })
    const received = new Promise<string>(resolve => client.once('message', (topic, payload) => resolve(`${topic} ${payload.toString()}`)))
    await client.publishAsync('fogmesh/test/a', 'hello', { qos: 1 })
    return await received
  } finally {
    await client.endAsync()
  }
}

t.test('startMosquitto: anonymous broker on loopback', async t => {
  const broker = await startMosquitto()
  t.teardown(() => broker.stop())
  t.match(broker.url, /^mqtt:\/\/127\.0\.0\.1:\d+$/)
  t.equal(broker.url, `mqtt://127.0.0.1:${broker.port}`)
  t.equal(await roundTrip(broker.url), 'fogmesh/test/a hello')
  t.match(await broker.log(), /mosquitto version/i)

  await broker.stop()
  await t.rejects(stat(broker.dir), { code: 'ENOENT' }, 'stop() removes the temp dir')
  await broker.stop()
})

t.test('startMosquitto: with users', async t => {
  const broker = await startMosquitto({ users: { edge: 's3cret', other: 'pw with spaces' } })
  t.teardown(() => broker.stop())
  t.equal(await roundTrip(broker.url, { username: 'edge', password: 's3cret' }), 'fogmesh/test/a hello')
  t.equal(await roundTrip(broker.url, { username: 'other', password: 'pw with spaces' }), 'fogmesh/test/a hello')
  await t.rejects(mqtt.connectAsync(broker.url, clientOptions), 'anonymous clients are refused')
  await t.rejects(mqtt.connectAsync(broker.url, { ...clientOptions, username: 'edge', password: 'wrong' }), 'a wrong password is refused')
})

t.test('startMosquitto: two brokers at once get different ports', async t => {
  const [a, b] = await Promise.all([startMosquitto(), startMosquitto()])
  t.teardown(() => Promise.all([a.stop(), b.stop()]))
  t.not(a.port, b.port)
  t.equal(await roundTrip(b.url), 'fogmesh/test/a hello')
})

t.test('startMosquitto: restart on the same port', async t => {
  const first = await startMosquitto()
  t.teardown(() => first.stop())
  t.equal(await roundTrip(first.url), 'fogmesh/test/a hello')
  await first.stop()
  const second = await startMosquitto({ port: first.port })
  t.teardown(() => second.stop())
  t.equal(second.url, first.url)
  t.equal(await roundTrip(second.url), 'fogmesh/test/a hello')
})

t.test('freePort, tmpDir', async t => {
  const port = await freePort()
  t.ok(port > 0 && port < 65536)
  const dir = await tmpDir('fogmesh-helpers-')
  await writeFile(join(dir.path, 'x'), 'x')
  t.ok((await stat(dir.path)).isDirectory())
  await dir.cleanup()
  await t.rejects(stat(dir.path), { code: 'ENOENT' })
  await dir.cleanup()
})

t.test('waitFor', async t => {
  let n = 0
  t.equal(await waitFor(() => ++n >= 3 && n, { intervalMs: 1 }), 3)
  t.equal(await waitFor(() => 0), 0, 'only false, null and undefined mean not yet')
  await t.rejects(waitFor(() => { throw new Error('boom') }, { timeoutMs: 50, message: 'the thing' }),
    { message: /timed out after 50ms waiting for the thing: last error: boom/ })
})

t.test('fetchJson', async t => {
  const server = createServer((req, res) => {
    let body = ''
    req.on('data', chunk => { body += chunk })
    req.on('end', () => {
      if (req.url === '/text') {
        res.writeHead(503).end('unavailable')
        return
      }
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ method: req.method, type: req.headers['content-type'], body }))
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise(resolve => server.close(resolve)))
  const address = server.address()
  if (address == null || typeof address === 'string') throw new Error('no address')
  const base = `http://127.0.0.1:${address.port}`

  const post = await fetchJson(`${base}/x`, { method: 'POST', json: { a: 1 } })
  t.match(post, { status: 200, body: { method: 'POST', type: 'application/json', body: '{"a":1}' } })
  t.match(await fetchJson(`${base}/text`), { status: 503, body: 'unavailable' })
})

t.test('startFogmesh rejects with the output when the process exits before it is ready', async t => {
  await t.rejects(startFogmesh(['--help'], { timeoutMs: 15_000 }), { message: /exited \(\d+\) before printing a line matching/ })
})

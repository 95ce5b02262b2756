/**
 * The edge's broker clients (GET /v1/broker) and the console's edge view, against a real edge with
 * users and an API token: two MQTT clients of two users listed with their ids and message counts, a
 * wrong payload from one counted against it and in the rejected reasons, a client that left listed as
 * gone; then the page in headless Chromium shows the same clients and reasons.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import mqtt from 'mqtt'
import t from 'tap'
import { startBrowser } from './helpers/browser.ts'
import { fetchJson, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'

const ALL_WINDOWS = new URL('fixtures/all-windows.yaml', import.meta.url).pathname
const TOKEN = 'broker-console-read-token-0123456789'
const START = Date.UTC(2026, 0, 1)

interface ClientJson { id: string, user: string | null, address: string, listener: string, connectedAt: string, disconnectedAt?: string, messages: number, rejected: number, denied: number, lastMessageAt: string | null }
interface BrokerJson { embedded: boolean, clients: ClientJson[], disconnected: ClientJson[], denied: Record<string, number>, closed: Record<string, number> }

t.test('an edge lists its broker\'s clients, and the console shows them beside the rejected readings', { timeout: 90_000 }, async t => {
  const dir = await tmpDir('fogmesh-broker-clients-')
  t.teardown(dir.cleanup)
  const config = join(dir.path, 'edge.yaml')
  await writeFile(config, `users:
  - { username: sensor, password: s3cret, publish: [sensors/#], subscribe: [] }
  - { username: lab, password: l4b-pass, publish: [sensors/#], subscribe: [] }
`)
  const tokenFile = join(dir.path, 'api.token')
  await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 })
  const edge = await startFogmesh(['edge', '--id', 'e1', '--pipelines', ALL_WINDOWS, '--config', config, '--mqtt-port', '0', '--http-port', '0',
    '--data-dir', join(dir.path, 'data'), '--api-token-file', tokenFile])
  t.teardown(() => edge.stop(5_000))
  const auth = { headers: { authorization: `Bearer ${TOKEN}` } }
  t.equal((await fetch(`${edge.http}/v1/broker`)).status, 401, 'GET /v1/broker wants the API token')

  const one = await mqtt.connectAsync(edge.mqtt!, { clientId: 'thermo-1', username: 'sensor', password: 's3cret', reconnectPeriod: 0 })
  t.teardown(() => one.endAsync(true))
  const two = await mqtt.connectAsync(edge.mqtt!, { clientId: 'thermo-2', username: 'lab', password: 'l4b-pass', reconnectPeriod: 0 })
  t.teardown(() => two.endAsync(true))
  await t.rejects(mqtt.connectAsync(edge.mqtt!, { clientId: 'intruder', username: 'sensor', password: 'nope', reconnectPeriod: 0 }), /Not authorized|Bad username/)
  const reading = (room: string, i: number) => JSON.stringify({ device: `d${i}`, room, value: 20 + i, humidity: 50, ts: START + i * 100 })
  for (let i = 0; i < 3; i++) await one.publishAsync('sensors/r1/temperature', reading('r1', i), { qos: 1 })
  for (let i = 0; i < 2; i++) await two.publishAsync('sensors/r2/temperature', reading('r2', i), { qos: 1 })
  await two.publishAsync('sensors/r2/temperature', 'this is not json', { qos: 1 })

  const broker = await waitFor(async () => {
    const b = (await fetchJson(`${edge.http}/v1/broker`, auth)).body as BrokerJson
    const by = new Map(b.clients.map(c => [c.id, c]))
    return by.get('thermo-1')?.messages === 3 && by.get('thermo-2')?.messages === 3 ? b : undefined
  }, { timeoutMs: 10_000, message: 'both clients with their messages' })
  t.equal(broker.embedded, true)
  t.same(broker.clients.map(c => [c.id, c.user, c.listener, c.messages, c.rejected, c.denied]),
    [['thermo-1', 'sensor', 'mqtt', 3, 0, 0], ['thermo-2', 'lab', 'mqtt', 3, 1, 0]], 'both clients: ids, users, messages, the wrong payload against thermo-2')
  t.ok(broker.clients.every(c => /^127\.0\.0\.1:\d+$/.test(c.address) && !Number.isNaN(Date.parse(c.connectedAt)) && c.lastMessageAt !== null), 'addresses and times')
  t.same(broker.denied, { connect: 1, publish: 0, subscribe: 0 }, 'the refused login is counted')
  const parse = /^fogmesh_readings_rejected_total\{reason="parse"\} (\d+)$/m.exec(String((await fetchJson(`${edge.http}/metrics`, auth)).body))
  t.equal(Number(parse?.[1]), 1, 'the wrong payload is a parse rejection')

  // The page: the token already in the tab's session storage, the edge view.
  const b = await startBrowser()
  t.teardown(b.close)
  const page = await b.page()
  const errors: string[] = []
  page.on('pageerror', e => errors.push(String(e)))
  await page.evaluateOnNewDocument(`sessionStorage.setItem('fogmesh.apiToken', ${JSON.stringify(TOKEN)})`)
  await page.goto(`${edge.http}/#edge`)
  await page.waitForFunction('window.fogmeshConsole?.ready === true', { timeout: 15_000 })
  t.equal(await page.evaluate(`document.querySelector('nav a[data-view="edge"]').hidden`), false, 'the edge view is in the navigation')
  await page.waitForFunction(`document.querySelectorAll('#client-table tbody tr:not(.gone)').length === 2`, { timeout: 10_000 })
  const rows = await page.evaluate(`[...document.querySelectorAll('#client-table tbody tr')].map(tr => [...tr.children].map(td => td.textContent))`) as string[][]
  t.same(rows.map(r => [r[0], r[1], r[4], r[5], r[6]]), [['thermo-1', 'sensor', '3', '0', '0'], ['thermo-2', 'lab', '3', '1', '0']], 'the clients table: ids, users, messages, rejected, denied')
  t.match(rows[0][2], /^127\.0\.0\.1:\d+$/, 'with their address')
  const reasons = await page.evaluate(`Object.fromEntries([...document.querySelectorAll('#reject-table tbody tr')].map(tr => [tr.dataset.key, tr.children[1].textContent]))`) as Record<string, string>
  t.equal(reasons.parse, '1', 'the wrong payload in the rejected reasons')
  t.match(await page.evaluate(`document.getElementById('broker-summary').textContent`) as string, /connected 2.*denied connect 1/, 'the summary: connected, refusals')
  t.equal(await page.evaluate('document.querySelector(\'#view-edge\').hidden'), false, 'the view is shown')

  // A client that leaves: listed as gone, with what it sent.
  await one.endAsync()
  await page.waitForFunction(`document.querySelectorAll('#client-table tbody tr.gone').length === 1`, { timeout: 10_000 })
  const gone = await page.evaluate(`[...document.querySelector('#client-table tbody tr.gone').children].map(td => td.textContent)`) as string[]
  t.same([gone[0], gone[4]], ['thermo-1', '3'], 'thermo-1 gone, its messages kept')
  t.match(gone[3], /^gone \d+ s ago$/)
  const after = (await fetchJson(`${edge.http}/v1/broker`, auth)).body as BrokerJson
  t.same(after.clients.map(c => c.id), ['thermo-2'])
  t.same(after.disconnected.map(c => c.id), ['thermo-1'])
  t.ok(after.disconnected[0].disconnectedAt !== undefined)
  t.same(errors, [], 'no script errors')
})

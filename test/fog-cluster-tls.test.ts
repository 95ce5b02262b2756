/**
 * A fog cluster whose link to etcd is TLS with client certificates: a real three-member etcd cluster
 * started with --cert-file/--key-file/--trusted-ca-file/--client-cert-auth, and `fogmesh fog --etcd
 * https://…` coordinators with their site certificates. Two of them form one cluster; one whose
 * certificate another CA signed cannot join, and etcd's data stays as it was.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { getCACertificates, setDefaultCACertificates } from 'node:tls'
import { Etcd3 } from 'etcd3'
import t from 'tap'
import type { Watermark, WindowEntry } from '../core/upstream/batch.ts'
import { shardOf } from '../core/upstream/shards.ts'
import type { ShardMapView } from '../core/upstream/shards.ts'
import { startEtcdCluster } from '../simulators/etcd-cluster.ts'
import { makeSite } from './helpers/certs.ts'
import type { NodeFiles } from './helpers/certs.ts'
import { fetchResults } from './helpers/ground-truth.ts'
import { fetchJson, freePort, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import type { JsonResponse, RunningProcess } from './helpers/process.ts'
import { COUNT_SUM_DEF, countSumContribution } from './helpers/specs.ts'
import { postBatch } from './helpers/partials.ts'

const START = Date.UTC(2026, 0, 1)
const SIZE = 10_000
const DEF = COUNT_SUM_DEF

function windowOf (key: string, edge: string, values: number[]): WindowEntry {
  return { pipeline: DEF.name, key, start: START, end: START + SIZE, contributions: [countSumContribution(edge, values, START)] }
}

let seq = 0
async function post (base: string, sender: string, windows: WindowEntry[], watermarks: Watermark[] = []): Promise<JsonResponse> {
  return await postBatch(base, { seq: ++seq, sender, role: 'edge', pipelines: [DEF], watermarks, windows })
}

t.test('etcd on TLS with client-certificate auth: site coordinators form one cluster, another CA\'s cannot join', { timeout: 90_000 }, async t => {
  const dir = await tmpDir('fogmesh-cluster-tls-')
  const site = await makeSite(join(dir.path, 'site'))
  // This process reads the coordinators' APIs over https: it trusts the site CA.
  setDefaultCACertificates([...getCACertificates('default'), await readFile(site.caCert, 'utf8')])
  const server = await site.node('fog', 'etcd')
  const etcd = await startEtcdCluster({ members: 3, dir: join(dir.path, 'etcd'), tls: { cert: server.cert, key: server.key, ca: site.caCert } })
  const fogs: RunningProcess[] = []
  t.teardown(async () => {
    await Promise.all(fogs.map(p => p.stop(5_000).catch(() => p.kill('SIGKILL'))))
    await etcd.stop()
    await dir.cleanup()
  })
  t.ok(etcd.endpoints.every(e => e.startsWith('https://127.0.0.1:')), `https endpoints: ${etcd.endpoints.join(',')}`)

  const start = async (id: string, files: NodeFiles, timeoutMs?: number): Promise<RunningProcess> => {
    const p = await startFogmesh(['fog', '--id', id, '--http-port', String(await freePort()), '--data-dir', join(dir.path, id),
      '--etcd', etcd.endpoints.join(','), '--tls-cert', files.cert, '--tls-key', files.key, '--tls-ca', files.caCert,
      '--lease-ttl', '2s', '--etcd-timeout', '1s', '--tick', '100ms', '--finalize-after', '30s'], { timeoutMs })
    fogs.push(p)
    return p
  }
  const [f1, f2] = await Promise.all([start('f1', await site.node('fog', 'f1')), start('f2', await site.node('fog', 'f2'))])
  t.match(f1.http, /^https:/, 'the coordinators serve https')
  const mapOf = async (p: RunningProcess) => (await fetchJson(`${p.http}/v1/shards`)).body as ShardMapView
  const map = await waitFor(async () => {
    const [a, b] = await Promise.all([mapOf(f1), mapOf(f2)])
    return a.members.length === 2 && a.status === 'ok' && b.status === 'ok' && a.version === b.version ? a : undefined
  }, { timeoutMs: 15_000, message: 'both coordinators holding one map of two members' })
  t.same(map.owners, (await mapOf(f2)).owners, 'the same shard map at both')

  // A window at its owner, watermarks to both: both answer the final window (replicated through etcd).
  let key = ''
  for (let i = 0; key === ''; i++) if (map.owners[shardOf(DEF.name, `k${i}`, map.shards)] === 'f2') key = `k${i}`
  const past: Watermark[] = [{ pipeline: DEF.name, edge: 'e1', watermark: START + SIZE }]
  t.equal((await post(f2.http, 'e1', [windowOf(key, 'e1', [1, 2, 3])])).status, 200, 'the owner takes the window')
  for (const p of [f1, f2]) t.equal((await post(p.http, 'e1', [], past)).status, 200, `the watermark to ${p.id}`)
  for (const p of [f1, f2]) {
    const r = await waitFor(async () => (await fetchResults(p.http, DEF.name)).find(x => x.key === key && x.final),
      { timeoutMs: 10_000, message: `the final window at ${p.id}` })
    t.same(r.values, { n: 3, total: 6 }, `${p.id} serves the merged window`)
  }

  const client = new Etcd3({ hosts: etcd.members.map(m => m.clientUrl), credentials: etcd.credentials })
  t.teardown(() => client.close())
  const snapshot = async () => Object.entries(await client.getAll().prefix('/fogmesh/').strings()).sort(([a], [b]) => a.localeCompare(b))
  const before = await snapshot()
  t.ok(before.some(([k]) => k.startsWith('/fogmesh/w/')), 'the window is in etcd')

  // Trusts etcd (the site CA), but presents a certificate of another CA: etcd refuses the handshake.
  const intruder = await site.foreign('fog', 'f3')
  const refused = await start('f3', intruder, 6_000).then(() => undefined, (err: Error) => err)
  t.ok(refused !== undefined, 'the coordinator with another CA\'s certificate never becomes ready')
  t.match(refused?.message ?? '', /cluster\.etcd_unavailable[\s\S]*over TLS/, 'it logs that etcd is not usable over TLS, and why to look at certificates')
  t.match(refused?.message ?? '', /bad certificate/, 'etcd refused its certificate')
  t.same(await snapshot(), before, 'etcd\'s data is unchanged')
  const after = await mapOf(f1)
  t.same(after.members.map(m => m.id).sort(), ['f1', 'f2'], 'the cluster still has its two members')
  t.equal(after.version, map.version, 'and the same map')
})

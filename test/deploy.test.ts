/**
 * Pipelines deployed once at the fog and run by every edge, in real processes on loopback: a fog (with
 * an admin token), a cloud and two edges in one mesh, each edge also running the pipelines of its
 * local file. A pipeline PUT at the fog reaches both edges through the mesh; a new version replaces it
 * while readings flow, keeping its window state; the local pipelines go on undisturbed: every tier
 * equals the ground truth for all of them, values and revisions. An edge that joins later gets the
 * current set, keeps it across a restart without the mesh, and a DELETE stops it everywhere. In a fog
 * cluster, any coordinator takes a deployment and all of them serve the one set kept in etcd.
 */
import { join } from 'node:path'
import { Etcd3 } from 'etcd3'
import t from 'tap'
import { loadPipelinesFile, parseSinglePipeline } from '../core/pipeline/parse.ts'
import { expectEdgesExact, expectMergedExact, MESH, simulate, startMesh } from './helpers/mesh-scenario.ts'
import type { Mesh } from './helpers/mesh-scenario.ts'
import { startCluster } from './helpers/fog-cluster.ts'
import { fetchJson, startFogmesh, waitFor } from './helpers/process.ts'
import type { JsonResponse, RunningProcess } from './helpers/process.ts'

const TOKEN = 'deploy-test-token-0123456789'
const AUTH = { authorization: `Bearer ${TOKEN}` }
/** Short heartbeats: the roll-out is gossip news, then a fetch. */
const MESH_ARGS = ['--mesh-port', '0', '--mesh-heartbeat', '300ms', '--mesh-expiry', '1500ms']
/** Room for a heartbeat, a fetch and a loaded machine: "within seconds". */
const ROLLOUT_WITHIN = 10_000
/** Event time per wall-clock time of the main run: publishing takes about 9 s, long enough to deploy v2 in the middle. */
const SPEED = 4

const V1 = `name: dep-temp
from: sensors/+room/temperature
timestamp: ts
key: room
window: { tumbling: 5s }
lateness: 2s
idle: 1s
select:
  n: count()
  total: sum(value)
  high: max(humidity)
  p50: percentile(value, 0.5)
  devices: distinct(device)
`
/** A new `where` that every reading of the run passes: the truth of v1 holds across the switch. */
const V2 = V1.replace('key: room', 'where: value > -1000.0\nkey: room')

async function put (fog: string, name: string, yaml: string, headers: Record<string, string> = AUTH): Promise<JsonResponse> {
  return await fetchJson(`${fog}/v1/pipelines/${name}`, { method: 'PUT', headers: { ...headers, 'content-type': 'application/yaml' }, body: yaml })
}

async function pipelinesOf (p: RunningProcess): Promise<Map<string, number>> {
  const list = (await fetchJson(`${p.http}/v1/pipelines`)).body.pipelines as Array<{ name: string, version: number }>
  return new Map(list.map(x => [x.name, x.version]))
}

/** Whether each edge runs `version` of dep-temp (undefined: does not run it) and says so in its heartbeat. */
async function everyEdgeRuns (mesh: Mesh, edges: RunningProcess[], version: number | undefined): Promise<boolean> {
  const peers = (await fetchJson(`${mesh.fog.http}/v1/mesh`)).body.peers as Array<{ id: string, pipelines: Array<{ name: string, version: number }> }>
  for (const e of edges) {
    if ((await pipelinesOf(e)).get('dep-temp') !== version) return false
    const gossiped = peers.find(p => p.id === e.id)?.pipelines.find(p => p.name === 'dep-temp')?.version
    if (gossiped !== version) return false
  }
  return true
}

t.test('a pipeline deployed at the fog runs on every edge; a new version and a delete follow through the mesh', { timeout: 100_000 }, async t => {
  const local = await loadPipelinesFile(MESH)
  let rolledOut = 0
  const mesh = await startMesh(t, {
    mesh: MESH_ARGS,
    fog: ['--admin-token', TOKEN],
    // Before the warm-up, so that the fog knows both edges in the deployed pipeline too before the main run.
    beforeWarmUp: async mesh => {
      t.equal((await put(mesh.fog.http, 'dep-temp', V1, { authorization: 'Bearer not-the-token' })).status, 401, 'a wrong token is refused')
      const began = Date.now()
      const res = await put(mesh.fog.http, 'dep-temp', V1)
      t.equal(res.status, 201, 'deployed')
      t.same({ version: res.body.pipeline.version, revision: res.body.revision }, { version: 1, revision: 1 })
      await waitFor(() => everyEdgeRuns(mesh, mesh.edges, 1), { timeoutMs: ROLLOUT_WITHIN, message: 'both edges running dep-temp v1' })
      rolledOut = Date.now() - began
    }
  })
  t.pass(`both edges ran v1 and gossiped it ${rolledOut} ms after the PUT`)
  for (const e of mesh.edges) t.same([...(await pipelinesOf(e)).keys()].sort(), ['dep-temp', ...local.map(s => s.name)].sort(), `${e.id} runs its local pipelines and the deployed one`)

  const specs = [...local, parseSinglePipeline(V1)]
  let published = false
  const done = simulate(mesh, specs, { speed: SPEED }).finally(() => { published = true })
  done.catch(() => {})
  // Some windows of the main run open at the edges, then the new version.
  await waitFor(async () => ((await fetchJson(`${mesh.edges[0].http}/v1/aggregates/dep-temp?from=2026-01-01T00:00:00Z`)).body.results as unknown[]).length > 0,
    { timeoutMs: 10_000, intervalMs: 50, message: 'dep-temp windows of the main run at e1' })
  const began = Date.now()
  const res = await put(mesh.fog.http, 'dep-temp', V2)
  t.same({ status: res.status, version: res.body.pipeline.version, revision: res.body.revision }, { status: 200, version: 2, revision: 2 }, 'v2 deployed')
  await waitFor(() => everyEdgeRuns(mesh, mesh.edges, 2), { timeoutMs: ROLLOUT_WITHIN, intervalMs: 50, message: 'both edges running dep-temp v2' })
  t.notOk(published, `both edges ran v2 ${Date.now() - began} ms after the PUT, while readings still flowed`)
  const sim = await done

  // v2 took over v1's open windows and the local pipelines never noticed: every tier is exact.
  await expectEdgesExact(t, mesh, specs, sim)
  await expectMergedExact(t, 'fog', mesh.fog.http, specs, sim)
  await expectMergedExact(t, 'cloud', mesh.cloud.http, specs, sim)

  // An edge that joins now gets the current set from the first fog heartbeat it hears.
  const e3Args = ['edge', '--id', 'e3', '--pipelines', MESH, '--mqtt-port', '0', '--http-port', '0', '--data-dir', join(mesh.dir, 'e3')]
  let e3 = await startFogmesh([...e3Args, ...MESH_ARGS, '--bootstrap', mesh.fog.mesh!])
  t.teardown(async () => { await e3.stop().catch(() => { e3.kill('SIGKILL') }) })
  await waitFor(() => everyEdgeRuns(mesh, [e3], 2), { timeoutMs: ROLLOUT_WITHIN, message: 'e3 running dep-temp v2' })
  t.pass('an edge that joined later runs the current version')
  // It keeps the set in its data dir: started again outside the mesh, it runs it from the start.
  t.equal(await e3.stop(), 0)
  e3 = await startFogmesh(e3Args)
  t.equal((await pipelinesOf(e3)).get('dep-temp'), 2, 'restarted without the mesh, e3 still runs dep-temp v2')
  t.equal(await e3.stop(), 0)

  const deleted = await fetchJson(`${mesh.fog.http}/v1/pipelines/dep-temp`, { method: 'DELETE', headers: AUTH })
  t.same({ status: deleted.status, revision: deleted.body.revision }, { status: 200, revision: 3 }, 'deleted')
  await waitFor(() => everyEdgeRuns(mesh, mesh.edges, undefined), { timeoutMs: ROLLOUT_WITHIN, message: 'no edge running dep-temp' })
  for (const e of mesh.edges) t.same([...(await pipelinesOf(e)).keys()].sort(), local.map(s => s.name).sort(), `${e.id} runs its local pipelines only`)
  t.same((await fetchJson(`${mesh.fog.http}/v1/deployments`)).body, { revision: 3, pipelines: [] }, 'the fog serves the empty set')
})

t.test('pipelines deployed at any coordinator: one set in etcd, served by every coordinator, also after a restart', { timeout: 60_000 }, async t => {
  const token = 'cluster-test-token-0123456789'
  const c = await startCluster(t, { fog: ['--admin-token', token] })
  const yaml = (where: string) => `name: deployed\nfrom: sensors/+room/temperature\n${where}window: { tumbling: 10s }\nselect:\n  n: count()\n`
  const at = (id: string) => c.fogs.get(id)!.http
  const change = async (id: string, method: 'PUT' | 'DELETE', body?: string) =>
    await fetchJson(`${at(id)}/v1/pipelines/deployed`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/yaml' }, body })
  const version = async (id: string) => ((await fetchJson(`${at(id)}/v1/pipelines`)).body.pipelines as Array<{ name: string, version: number }>).find(p => p.name === 'deployed')?.version
  const revision = async (id: string) => (await fetchJson(`${at(id)}/v1/deployments`)).body.revision as number

  t.equal((await change('f1', 'PUT', yaml(''))).status, 201, 'deployed at f1')
  for (const id of ['f2', 'f3']) await waitFor(async () => (await version(id)) === 1, { timeoutMs: 5_000, message: `${id} serving v1` })
  const v2 = await change('f2', 'PUT', yaml('where: value > 0.0\n'))
  t.same({ status: v2.status, version: v2.body.pipeline.version, revision: v2.body.revision }, { status: 200, version: 2, revision: 2 }, 'v2 deployed at f2, from the set f1 stored')
  for (const id of ['f1', 'f3']) await waitFor(async () => (await version(id)) === 2, { timeoutMs: 5_000, message: `${id} serving v2` })

  const client = new Etcd3({ hosts: c.etcd.members.map(m => m.clientUrl) })
  t.teardown(() => client.close())
  const stored = JSON.parse((await client.get('/fogmesh/deployed').string())!) as { revision: number, pipelines: Array<{ name: string, version: number }> }
  t.same({ revision: stored.revision, pipelines: stored.pipelines.map(p => [p.name, p.version]) }, { revision: 2, pipelines: [['deployed', 2]] }, 'one set in etcd')

  t.equal(await c.fogs.get('f3')!.stop(), 0)
  await c.start('f3')
  t.same({ version: await version('f3'), revision: await revision('f3') }, { version: 2, revision: 2 }, 'f3 restarted serves the set from its start')

  t.equal((await change('f3', 'DELETE')).status, 200, 'deleted at f3')
  for (const id of ['f1', 'f2']) await waitFor(async () => (await revision(id)) === 3, { timeoutMs: 5_000, message: `${id} at revision 3` })
  t.same((await fetchJson(`${at('f1')}/v1/deployments`)).body, { revision: 3, pipelines: [] }, 'the set is empty everywhere')
})

/**
 * `fogmesh demo` as users run it: the whole mesh (cloud, fog, two edges, the simulator) comes up, a
 * window reaches the cloud final, and Ctrl-C (SIGINT) stops every node with no process left behind;
 * a node that dies takes the demo down with exit 1; nodes of a demo killed outright stop by
 * themselves; a taken port is reported before anything starts.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { startDemo } from './helpers/demo.ts'
import type { Demo } from './helpers/demo.ts'
import { fetchJson, repoRoot, tmpDir, waitFor } from './helpers/process.ts'

/** The processes whose parent is `pid`, with their command lines. */
function childrenOf (pid: number): Array<{ pid: number, cmd: string }> {
  const out: Array<{ pid: number, cmd: string }> = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      // Fields after the command name (which may hold spaces): state, ppid, …
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) out.push({ pid: Number(entry), cmd: readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ') })
    } catch {}
  }
  return out
}

function isRunning (pid: number): boolean {
  try {
    // A zombie still answers kill(0); it has exited all the same.
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

/** Safety net for a failing test: nodes must not outlive it. */
function killAll (pids: number[]): void {
  for (const pid of pids) {
    try { process.kill(pid, 'SIGKILL') } catch {}
  }
}

/** The demo's four nodes, by role; fails unless each role is there. */
function nodesOf (demo: Demo): Record<'cloud' | 'fog' | 'edge', number[]> {
  const nodes = { cloud: [] as number[], fog: [] as number[], edge: [] as number[] }
  for (const c of childrenOf(demo.pid)) {
    const role = /\/bin\/fogmesh\.js (cloud|fog|edge) /.exec(c.cmd)?.[1] as keyof typeof nodes | undefined
    if (role !== undefined) nodes[role].push(c.pid)
  }
  return nodes
}

t.test('the demo runs the mesh until a window is final at the cloud, and SIGINT stops it all', async t => {
  const dir = await tmpDir('fogmesh-demo-')
  t.teardown(dir.cleanup)
  const demo = startDemo(['--base-port', '0', '--data-dir', dir.path, '--devices', '10'])
  t.teardown(() => demo.signal('SIGKILL'))
  const ready = await demo.line(/^ready demo cloud=(\S+) fog=(\S+)/, 15_000)
  const [cloud, fog] = [ready[1], ready[2]]
  const nodes = nodesOf(demo)
  t.teardown(() => killAll(Object.values(nodes).flat()))
  t.same({ cloud: nodes.cloud.length, fog: nodes.fog.length, edge: nodes.edge.length }, { cloud: 1, fog: 1, edge: 2 }, 'one cloud, one fog and two edges run as children')
  t.ok(demo.output.some(l => l.includes(`npx fogmesh query ${cloud} room-temp`)), 'it prints how to query the cloud')

  // The first window may be a sliver that only one edge's devices published in: wait for a whole one.
  const final = await waitFor(async () => {
    const res = await fetchJson(`${cloud}/v1/aggregates/room-temp`, { timeoutMs: 2_000 })
    return res.status === 200 && (res.body.results as Array<{ final: boolean, sources: number }>).find(r => r.final && r.sources === 2)
  }, { timeoutMs: 25_000, intervalMs: 250, message: `a final room-temp window from both edges at the cloud ${cloud}\n${demo.output.join('\n')}` })
  t.ok(final, 'the cloud has a final window merged from both edges')
  const atFog = await fetchJson(`${fog}/v1/aggregates/room-temp`)
  t.ok((atFog.body.results as Array<{ final: boolean }>).some(r => r.final), 'the fog has it final too')
  const others = await waitFor(async () => {
    const peers = (await fetchJson(`${cloud}/v1/mesh`)).body.peers as Array<{ id: string, state: string }>
    const alive = peers.filter(p => p.state === 'alive').map(p => p.id).sort()
    return alive.length === 3 ? alive : undefined
  }, { timeoutMs: 15_000, message: 'every other node alive in the cloud\'s mesh view' })
  t.same(others, ['demo-edge-1', 'demo-edge-2', 'demo-fog'], 'the nodes run as one mesh')

  // The deployment the banner suggests: the token from the data dir, the example pipeline, both edges.
  const token = readFileSync(join(dir.path, 'admin.token'), 'utf8').trim()
  const yaml = readFileSync(join(repoRoot, 'examples', 'device-temp.yaml'), 'utf8')
  t.ok(demo.output.some(l => l.includes(`${fog}/v1/pipelines/device-temp`)), 'it prints how to deploy a pipeline')
  const deployed = await fetchJson(`${fog}/v1/pipelines/device-temp`, { method: 'PUT', headers: { authorization: `Bearer ${token}` }, body: yaml })
  t.equal(deployed.status, 201, 'the example pipeline deploys with the demo\'s token')
  const edges = (await fetchJson(`${fog}/v1/mesh`)).body.peers.filter((p: { role: string }) => p.role === 'edge') as Array<{ http: string }>
  await waitFor(async () => {
    for (const e of edges) {
      const names = ((await fetchJson(`${e.http}/v1/pipelines`)).body.pipelines as Array<{ name: string }>).map(p => p.name)
      if (!names.includes('device-temp')) return false
    }
    return edges.length === 2
  }, { timeoutMs: 10_000, message: 'both edges running device-temp' })
  t.pass('both edges run the deployed pipeline')

  const pids = Object.values(nodes).flat()
  demo.signal('SIGINT')
  let timer: NodeJS.Timeout | undefined
  const status = await Promise.race([demo.exited, new Promise<string>(resolve => { timer = setTimeout(() => resolve('still running'), 15_000) })])
  clearTimeout(timer)
  t.equal(status, 0, 'exit 0 after SIGINT')
  if (status !== 0) t.comment(demo.output.slice(-20).join('\n'))
  const stops = ['demo: stopped edge-1, edge-2', 'demo: stopped fog', 'demo: stopped cloud'].map(l => demo.output.indexOf(l))
  t.ok(stops.every((at, i) => at >= 0 && (i === 0 || at > stops[i - 1])), 'edges, then the fog, then the cloud stop')
  await waitFor(() => pids.every(pid => !isRunning(pid)), { timeoutMs: 2_000, message: 'every node gone' })
  t.pass('no node outlives the demo')
})

t.test('a node that dies stops the demo with exit 1, and the rest with it', async t => {
  const dir = await tmpDir('fogmesh-demo-')
  t.teardown(dir.cleanup)
  const demo = startDemo(['--base-port', '0', '--data-dir', dir.path, '--devices', '4'])
  t.teardown(() => demo.signal('SIGKILL'))
  await demo.line(/^ready demo /, 15_000)
  const nodes = nodesOf(demo)
  t.teardown(() => killAll(Object.values(nodes).flat()))
  t.equal(nodes.fog.length, 1, 'a fog runs')
  process.kill(nodes.fog[0], 'SIGKILL')
  let timer: NodeJS.Timeout | undefined
  const status = await Promise.race([demo.exited, new Promise<string>(resolve => { timer = setTimeout(() => resolve('still running'), 15_000) })])
  clearTimeout(timer)
  t.equal(status, 1, 'exit 1')
  t.ok(demo.output.some(l => /^demo: fog exited unexpectedly \(killed by SIGKILL\)/.test(l)), 'says which node died and how')
  const pids = Object.values(nodes).flat()
  await waitFor(() => pids.every(pid => !isRunning(pid)), { timeoutMs: 2_000, message: 'every node gone' })
  t.pass('no node outlives the demo')
})

t.test('nodes stop on their own when the demo is killed outright', async t => {
  const dir = await tmpDir('fogmesh-demo-')
  t.teardown(dir.cleanup)
  const demo = startDemo(['--base-port', '0', '--data-dir', dir.path, '--devices', '4'])
  t.teardown(() => demo.signal('SIGKILL'))
  await demo.line(/^ready demo /, 15_000)
  const pids = Object.values(nodesOf(demo)).flat()
  t.teardown(() => killAll(pids))
  t.equal(pids.length, 4, 'four nodes run')
  demo.signal('SIGKILL')
  await demo.exited
  await waitFor(() => pids.every(pid => !isRunning(pid)), { timeoutMs: 10_000, message: 'every node gone' })
  t.pass('no node outlives a killed demo')
})

t.test('a taken port is reported before anything starts', async t => {
  const dir = await tmpDir('fogmesh-demo-')
  t.teardown(dir.cleanup)
  const blocker = createServer()
  await new Promise<void>(resolve => blocker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { blocker.close() })
  const port = (blocker.address() as AddressInfo).port
  const demo = startDemo(['--base-port', String(port), '--data-dir', dir.path])
  t.teardown(() => demo.signal('SIGKILL'))
  let timer: NodeJS.Timeout | undefined
  const status = await Promise.race([demo.exited, new Promise<string>(resolve => { timer = setTimeout(() => resolve('still running'), 10_000) })])
  clearTimeout(timer)
  t.equal(status, 1, 'exit 1')
  const message = demo.output.join('\n')
  t.match(message, `${port} (edge-1 HTTP)`, 'names the port and the node that wanted it')
  t.match(message, '--base-port 0', 'tells how to get other ports')
  t.notOk(message.includes('ready '), 'no node was started')
})

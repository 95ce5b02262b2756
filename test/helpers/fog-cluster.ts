/**
 * A fog cluster for tests: a real three-member etcd cluster on loopback and three `fogmesh fog --etcd …`
 * coordinators f1..f3 (optionally each behind its own TCP proxies to etcd, to cut it off), with a cloud
 * if asked for. Everything is stopped at teardown.
 */
import { join } from 'node:path'
import type { Test } from 'tap'
import type { ShardMapView } from '../../core/upstream/shards.ts'
import { startEtcdCluster } from '../../simulators/etcd-cluster.ts'
import type { EtcdCluster } from '../../simulators/etcd-cluster.ts'
import { startTcpProxy } from '../../simulators/tcp-proxy.ts'
import type { TcpProxy } from '../../simulators/tcp-proxy.ts'
import { fetchJson, freePort, startFogmesh, tmpDir, waitFor } from './process.ts'
import type { RunningProcess } from './process.ts'

/** The coordinators' --lease-ttl: failovers in seconds. */
export const LEASE_TTL = 2_000

export interface Cluster {
  etcd: EtcdCluster
  fogs: Map<string, RunningProcess>
  /** Each coordinator's proxies to the etcd members, when asked for. */
  proxies: Map<string, TcpProxy[]>
  start: (id: string) => Promise<RunningProcess>
  map: (id?: string) => Promise<ShardMapView>
  cloud?: RunningProcess
}

/** Three etcd members and three coordinators f1..f3; `proxied` coordinators reach etcd through proxies. */
export async function startCluster (t: Test, opts: { proxied?: string[], fog?: string[], cloud?: boolean } = {}): Promise<Cluster> {
  const dir = await tmpDir('fogmesh-cluster-')
  const etcd = await startEtcdCluster({ members: 3, dir: join(dir.path, 'etcd') })
  const fogs = new Map<string, RunningProcess>()
  const proxies = new Map<string, TcpProxy[]>()
  const cloud = opts.cloud === true
    ? await startFogmesh(['cloud', '--id', 'c1', '--http-port', '0', '--data-dir', join(dir.path, 'cloud'), '--tick', '100ms', '--finalize-after', '30s'])
    : undefined
  t.teardown(async () => {
    await Promise.all([...fogs.values(), ...cloud === undefined ? [] : [cloud]].map(p => p.stop(5_000).catch(() => p.kill('SIGKILL'))))
    for (const list of proxies.values()) for (const p of list) await p.close()
    await etcd.stop()
    await dir.cleanup()
  })
  const ports = new Map<string, number>()
  for (const id of ['f1', 'f2', 'f3']) ports.set(id, await freePort())
  for (const id of opts.proxied ?? []) {
    proxies.set(id, await Promise.all(etcd.members.map(m => {
      const [host, port] = m.endpoint.split(':')
      return startTcpProxy({ host, port: Number(port) })
    })))
  }
  const cluster: Cluster = {
    cloud,
    etcd,
    fogs,
    proxies,
    start: async id => {
      const endpoints = proxies.get(id)?.map(p => p.address) ?? etcd.endpoints
      const p = await startFogmesh(['fog', '--id', id, '--http-port', String(ports.get(id)), '--data-dir', join(dir.path, id),
        '--etcd', endpoints.join(','), '--lease-ttl', `${LEASE_TTL}ms`, '--etcd-timeout', '1s', '--tick', '100ms', '--finalize-after', '30s',
        ...cloud === undefined ? [] : ['--cloud', cloud.http, '--uplink-retry-max', '500ms'], ...opts.fog ?? []])
      fogs.set(id, p)
      return p
    },
    map: async id => (await fetchJson(`${fogs.get(id ?? [...fogs.keys()][0])!.http}/v1/shards`)).body as ShardMapView
  }
  await Promise.all(['f1', 'f2', 'f3'].map(id => cluster.start(id)))
  await waitFor(async () => {
    const maps = await Promise.all([...fogs.keys()].map(id => cluster.map(id)))
    return maps.every(m => m.members.length === 3 && m.version === maps[0].version && m.status === 'ok')
  }, { timeoutMs: 15_000, message: 'every coordinator holding one map of three members' })
  return cluster
}


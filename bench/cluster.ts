/**
 * The fog cluster part of `npm run bench` (`--only cluster`): one 3-member etcd cluster on loopback
 * (simulators/etcd-cluster.ts) and three `fogmesh fog --etcd …` coordinators (real processes, lease TTL
 * 2 s, tick 100 ms). In one run it measures
 *
 * (a) committed partial batches per second and commit latency: senders posting batches the way edges
 *     do after routing (W windows of keys whose shard the target coordinator owns, each with one
 *     edge's count/sum/avg/max), a fixed number in flight per coordinator for a fixed time, counted
 *     when acked (200). A sender posts the same windows again at a higher revision (an edge's late
 *     update): each batch writes W window records as a batch of new windows would, while what the
 *     coordinators hold stays the same size over the rounds (new windows would pile up, unfinalized,
 *     and make later rounds slower than earlier ones).
 * (b) the baseline, in alternating rounds: the same etcd cluster written directly through etcd3
 *     clients, one per coordinator with the same number in flight: a put of one value as large as the
 *     window records one batch makes a coordinator write, and a transaction of the same puts (the
 *     same keys under another prefix, the same values, two compares like the coordinator's fence).
 *     The cluster and the transaction also with one request in flight per coordinator (a coordinator
 *     commits its batches one at a time, MergeNode runs them serially, so that is the concurrency etcd
 *     sees from it), and with one in flight in all, next to a batch without windows (HTTP, decoding and
 *     the local write, no etcd commit): where the time of one commit goes. CPU time per batch of the
 *     coordinators, the etcd members and this process comes with each (with one in flight in all, every
 *     batch goes to one coordinator: its CPU is the owner's part, the others' is mirroring the commit).
 * (c) failover: a follower SIGKILLed, the leader SIGKILLed, a coordinator cut off from etcd (its etcd
 *     connections go through TCP proxies that are cut): from the fault until every surviving
 *     coordinator's GET /v1/shards shows a map without it (polled every 25 ms), and from its restart (or
 *     the heal) until it owns shards again.
 *
 * `--only cluster-long` runs (d) alone: a steady load of windows of "now", finalized by the edges'
 * watermarks, on coordinators with a 30 s retention and maintenance every 10 s, sampling etcd's
 * database size every 10 s for `--long` (default 2m): whether etcd's state stays bounded.
 */
import { mkdirSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Etcd3 } from 'etcd3'
import type { ShardMapView } from '../core/upstream/shards.ts'
import { startEtcdCluster } from '../simulators/etcd-cluster.ts'
import type { EtcdCluster } from '../simulators/etcd-cluster.ts'
import { startTcpProxy } from '../simulators/tcp-proxy.ts'
import type { TcpProxy } from '../simulators/tcp-proxy.ts'
import { batchRequest, closedLoop, distribution, keysOwnedBy, PIPELINE, windowEntries, windowRecords } from './cluster-workload.ts'
import type { Distribution, LoopResult, Request } from './cluster-workload.ts'
import { cpuTimes, getText, median, metricValue, REPO_DIR, spawnNode, stopChild } from './lib.ts'
import type { Child } from './lib.ts'

const LEASE_TTL_MS = 2_000
const COORDINATORS = ['f1', 'f2', 'f3']
/** Windows per batch. */
const WINDOWS = 20
/** Requests in flight per coordinator (senders per coordinator). */
const IN_FLIGHT = 4
const WINDOW_MS = 10_000
/** The windows every batch holds (again), near the wall clock so that none is past retention. */
const WINDOW_START = Math.floor(Date.now() / WINDOW_MS) * WINDOW_MS
const POLL_MS = 25
/** Where the baseline writes: outside the coordinators' prefix, so that their watches do not see it. */
const RAW_PREFIX = '/rawbench/'
const FOG_PREFIX = '/fogmesh/'

export interface ClusterOptions {
  workDir: string
  quick: boolean
  log: (line: string) => void
  rounds?: number
  /** Measured time of each kind in each round, ms. */
  roundMs?: number
  /** Repetitions of each failover scenario. */
  failovers?: number
}

// ---------------------------------------------------------------------------------------------
// The cluster: etcd and the coordinators

interface Fog {
  id: string
  child: Child
  http: string
  /** Set when this coordinator reaches etcd through proxies (one per etcd member). */
  proxies?: TcpProxy[]
}

interface Mesh {
  etcd: EtcdCluster
  fogs: Map<string, Fog>
  /** Starts coordinator `id` (again), through proxies to etcd when asked. */
  start: (id: string, proxied?: boolean) => Promise<Fog>
  close: () => Promise<void>
}

async function startMesh (dir: string, fogArgs: string[] = []): Promise<Mesh> {
  mkdirSync(dir, { recursive: true })
  const etcd = await startEtcdCluster({ members: 3, dir: join(dir, 'etcd') })
  const fogs = new Map<string, Fog>()
  const proxies: TcpProxy[] = []
  let seq = 0
  const mesh: Mesh = {
    etcd,
    fogs,
    start: async (id, proxied = false) => {
      let own: TcpProxy[] | undefined
      if (proxied) {
        own = await Promise.all(etcd.members.map(m => {
          const [host, port] = m.endpoint.split(':')
          return startTcpProxy({ host, port: Number(port) })
        }))
        proxies.push(...own)
      }
      const endpoints = own?.map(p => p.address) ?? etcd.endpoints
      const child = spawnNode(id, join(REPO_DIR, 'bin', 'fogmesh.js'), [
        'fog', '--id', id, '--http-port', '0', '--data-dir', join(dir, `${id}-${++seq}`), '--etcd', endpoints.join(','),
        '--lease-ttl', `${LEASE_TTL_MS}ms`, '--tick', '100ms', ...fogArgs
      ])
      const m = await child.line(/^ready fog \S+ http=(\S+)/, 30_000)
      const fog: Fog = { id, child, http: m[1], proxies: own }
      fogs.set(id, fog)
      return fog
    },
    close: async () => {
      // The coordinators first, while etcd can still take their leases back.
      for (const p of proxies) p.heal()
      await Promise.all([...fogs.values()].map(async f => await stopChild(f.child)))
      await Promise.all(proxies.map(async p => await p.close()))
      await etcd.stop()
    }
  }
  try {
    await Promise.all(COORDINATORS.map(async id => await mesh.start(id)))
    await waitStable(mesh, 20_000)
  } catch (err) {
    await mesh.close()
    throw err
  }
  return mesh
}

async function shardMap (fog: Fog): Promise<ShardMapView> {
  return JSON.parse(await getText(`${fog.http}/v1/shards`, 2_000)) as ShardMapView
}

/** Every coordinator holding one map with every coordinator in it, owning shards, status ok. */
async function waitStable (mesh: Mesh, timeoutMs: number): Promise<ShardMapView> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    try {
      const maps = await Promise.all([...mesh.fogs.values()].map(shardMap))
      if (maps.every(m => m.status === 'ok' && m.version === maps[0].version && m.members.length === mesh.fogs.size &&
        [...mesh.fogs.keys()].every(id => m.owners.includes(id)))) return maps[0]
    } catch {}
    if (performance.now() > deadline) throw new Error(`the fog cluster did not settle on one map within ${timeoutMs} ms`)
    await sleep(50)
  }
}

/**
 * Polls each of `fogs` every POLL_MS until its map satisfies `done`; resolves with the ms from `since`
 * until the last of them did (each at the middle of its first satisfying poll).
 */
async function untilMaps (fogs: Fog[], done: (m: ShardMapView) => boolean, since: number, timeoutMs: number, what: string): Promise<number> {
  const at = await Promise.all(fogs.map(async fog => {
    let next = performance.now()
    for (;;) {
      const t0 = performance.now()
      try {
        if (done(await shardMap(fog))) return (t0 + performance.now()) / 2
      } catch {}
      if (t0 - since > timeoutMs) throw new Error(`${what}: not seen at ${fog.id} within ${timeoutMs} ms`)
      next += POLL_MS
      await sleep(Math.max(0, next - performance.now()))
    }
  }))
  return Math.max(...at) - since
}

/** Pids of the etcd members, from their data dirs (the cluster does not expose them). */
function etcdPids (etcd: EtcdCluster): number[] {
  const wanted = etcd.members.map(m => join(m.dir, 'data'))
  const pids: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0')
      const i = args.indexOf('--data-dir')
      if (i >= 0 && wanted.includes(args[i + 1])) pids.push(Number(entry))
    } catch {}
  }
  if (pids.length !== wanted.length) throw new Error(`found ${pids.length} of ${wanted.length} etcd members in /proc`)
  return pids
}

function cpuMs (pids: number[]): number {
  return pids.reduce((sum, pid) => sum + cpuTimes(pid).process, 0)
}

function ownCpuMs (): number {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}

async function post (url: string, req: Request): Promise<string> {
  const res = await fetch(url, { method: 'POST', headers: req.headers, body: req.body, signal: AbortSignal.timeout(10_000) })
  const text = await res.text()
  if (res.status === 200) return 'ok'
  let code = ''
  try { code = (JSON.parse(text) as { error: { code: string } }).error.code } catch {}
  return `HTTP ${res.status} ${code}`.trim()
}

// ---------------------------------------------------------------------------------------------
// (a) and (b): commits through the cluster against raw etcd writes

interface Sender {
  fog: Fog
  edge: string
  keys: string[]
  revision: number
  /** The same windows' records, for the baseline: one value of all of them, and each under RAW_PREFIX. */
  value: Buffer
  records: Array<[string, Buffer]>
  putKey: string
}

type Op = () => Promise<string>

interface Kind {
  name: string
  label: string
  /** Requests in flight, all coordinators together. */
  inFlight: number
  /** Acked requests commit batches (the cluster's kinds): their etcd commits are counted. */
  cluster: boolean
  ops: Op[]
}

/** The kinds measured in every round, from the senders (IN_FLIGHT per coordinator) and one etcd3 client per coordinator. */
function kindsOf (senders: Sender[], clients: Map<string, Etcd3>, fence: (c: Etcd3) => Etcd3Txn): Kind[] {
  const commit = (s: Sender): Op => async () => {
    const rev = ++s.revision
    return await post(`${s.fog.http}/v1/partials`, batchRequest(s.edge, rev, windowEntries(s.edge, rev, s.keys, WINDOW_START, WINDOW_START + WINDOW_MS)))
  }
  const put = (s: Sender): Op => async () => {
    await clients.get(s.fog.id)!.put(s.putKey).value(s.value)
    return 'ok'
  }
  const txn = (s: Sender): Op => async () => {
    const c = clients.get(s.fog.id)!
    const res = await fence(c).then(...s.records.map(([k, v]) => c.put(k).value(v))).commit()
    return res.succeeded ? 'ok' : 'fenced'
  }
  // The floor of any batch: HTTP, decoding and the local write, without an etcd commit. Its watermark
  // stays before the windows' end, so that it makes none of them due.
  let seq = 0
  const http = (s: Sender): Op => async () => await post(`${s.fog.http}/v1/partials`,
    batchRequest('edge-watermarks', ++seq, [], [{ pipeline: PIPELINE.name, edge: 'edge-watermarks', watermark: WINDOW_START - WINDOW_MS }]))
  const firstPerFog = senders.filter((_, i) => i % IN_FLIGHT === 0)
  const solo = senders[0]
  const kind = (name: string, label: string, cluster: boolean, ops: Op[]): Kind => ({ name, label, inFlight: ops.length, cluster, ops })
  return [
    kind('cluster', `cluster x${IN_FLIGHT}`, true, senders.map(commit)),
    kind('put', `etcd put x${IN_FLIGHT}`, false, senders.map(put)),
    kind('txn', `etcd txn x${IN_FLIGHT}`, false, senders.map(txn)),
    kind('cluster-1', 'cluster x1', true, firstPerFog.map(commit)),
    kind('txn-1', 'etcd txn x1', false, firstPerFog.map(txn)),
    kind('cluster-solo', 'cluster solo', true, [commit(solo)]),
    kind('txn-solo', 'etcd txn solo', false, [txn(solo)]),
    kind('http-solo', 'no-commit solo', false, [http(solo)])
  ]
}

interface KindRound {
  batchesPerSecond: number
  latencyMs: Distribution
  /** Acked, including those that ended after the round (they were committed too). */
  acked: number
  cpuUsPerBatch: CpuPerBatch
  failed: Record<string, number>
}

/** CPU time per acked batch, µs (idle background included). */
interface CpuPerBatch {
  /** The coordinators together, and each (in the order of the mesh: the solo kinds' owner first). */
  coordinators: number
  perCoordinator: number[]
  /** The etcd members together. */
  etcd: number
  /** This process: the senders or the etcd3 clients. */
  bench: number
}

/** CPU time used so far, ms. */
interface CpuUse {
  coordinators: number[]
  etcd: number
  bench: number
}

interface Pids {
  fogs: Fog[]
  etcd: number[]
}

function cpuNow (pids: Pids): CpuUse {
  const dead = pids.fogs.find(f => !f.child.isAlive())
  if (dead !== undefined) throw new Error(`coordinator ${dead.id} exited during the rounds\n${dead.child.stderrTail()}`)
  return { coordinators: pids.fogs.map(f => cpuMs([f.child.pid])), etcd: cpuMs(pids.etcd), bench: ownCpuMs() }
}

async function measure (kind: Kind, ms: number, pids: Pids): Promise<KindRound> {
  const before = cpuNow(pids)
  const r: LoopResult = await closedLoop(kind.ops, ms)
  const after = cpuNow(pids)
  const acked = r.ok + r.okAfterEnd
  const per = (a: number, b: number) => Math.round((b - a) * 1000 / Math.max(1, acked))
  const perCoordinator = after.coordinators.map((ms, i) => per(before.coordinators[i], ms))
  return {
    batchesPerSecond: r.ok / r.durationMs * 1000,
    latencyMs: distribution(r.latencies),
    acked,
    cpuUsPerBatch: { coordinators: perCoordinator.reduce((a, b) => a + b, 0), perCoordinator, etcd: per(before.etcd, after.etcd), bench: per(before.bench, after.bench) },
    failed: r.failed
  }
}

type Etcd3Txn = ReturnType<Etcd3['if']>

export interface KindSummary {
  label: string
  inFlight: number
  batchesPerSecond: number
  latencyMs: { median: number, p99: number }
  cpuUsPerBatch: CpuPerBatch
  perRound: Array<{ batchesPerSecond: number, median: number, p99: number }>
}

export interface ThroughputResults {
  /** What one batch makes a coordinator write to etcd, as read back from etcd. */
  batchWrite: { records: number, valueBytes: number, keyBytes: number, bodyBytes: number }
  /** CPU the processes use with no load, ms per second (included in the figures per batch). */
  idleCpuMsPerSecond: { coordinators: number, etcd: number, bench: number }
  kinds: Record<string, KindSummary>
  /** Medians over the rounds of the per-round ratios of batches per second. */
  ratios: { clusterOverPut: number, clusterOverTxn: number, clusterOverTxnOneInFlight: number, clusterOverTxnSolo: number }
  /** Fenced etcd commits per acked batch of the cluster's kinds (1: every batch took one transaction). */
  commitsPerBatch: number
}

export interface FailoverSummary {
  scenario: string
  runs: number
  /** From the fault until every survivor's map is without the coordinator, ms. */
  goneMs: number
  /** The same minus the lease TTL. */
  afterLeaseMs: number
  /** From the restart (or the heal) until it owns shards again, everywhere. */
  backMs: number
  samples: Array<{ goneMs: number, backMs: number }>
}

export interface ClusterResults extends ThroughputResults {
  date: string
  durationSeconds: number
  coordinators: number
  etcdMembers: number
  leaseTtlMs: number
  windowsPerBatch: number
  inFlightPerCoordinator: number
  rounds: number
  roundSeconds: number
  failovers: FailoverSummary[]
  warnings: string[]
}

async function throughput (mesh: Mesh, o: Required<ClusterOptions>, warnings: string[]): Promise<ThroughputResults> {
  const map = await waitStable(mesh, 10_000)
  const senders: Sender[] = []
  for (const fog of mesh.fogs.values()) {
    for (let i = 0; i < IN_FLIGHT; i++) {
      const edge = `edge-${fog.id}-${i}`
      const keys = keysOwnedBy(map, fog.id, `k-${fog.id}-${i}`, WINDOWS)
      const records = windowRecords(windowEntries(edge, 1, keys, WINDOW_START, WINDOW_START + WINDOW_MS), RAW_PREFIX)
      senders.push({ fog, edge, keys, revision: 0, records, value: Buffer.concat(records.map(r => r[1])), putKey: `${RAW_PREFIX}put/${edge}` })
    }
  }
  const hosts = mesh.etcd.members.map(m => m.clientUrl)
  // One client per coordinator, as each coordinator has its own.
  const clients = new Map(COORDINATORS.map(id => [id, new Etcd3({ hosts })]))
  try {
    const first = clients.get(COORDINATORS[0])!
    const fenceRevs = await Promise.all(['a', 'b'].map(async k => Number((await first.put(`${RAW_PREFIX}fence/${k}`).value(k)).header.revision)))
    const fence = (c: Etcd3) => c.if(`${RAW_PREFIX}fence/a`, 'Mod', '==', fenceRevs[0]).and(`${RAW_PREFIX}fence/b`, 'Mod', '==', fenceRevs[1])
    const pids = { fogs: [...mesh.fogs.values()], etcd: etcdPids(mesh.etcd) }
    const kinds = kindsOf(senders, clients, fence)

    o.log(`  warm-up: ${kinds.map(k => k.label).join(', ')}`)
    for (const kind of kinds) await measure(kind, o.quick ? 500 : 1_500, pids)
    // What the processes use with nothing to do (leases, probes, ticks, raft heartbeats), after the
    // warm-up's tail has settled.
    await sleep(1_000)
    const idleMs = o.quick ? 2_000 : 4_000
    const idleBefore = cpuNow(pids)
    await sleep(idleMs)
    const idleAfter = cpuNow(pids)
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0)
    const rate = (a: number, b: number) => round2((b - a) / idleMs * 1000)
    const idle = { coordinators: rate(sum(idleBefore.coordinators), sum(idleAfter.coordinators)), etcd: rate(idleBefore.etcd, idleAfter.etcd), bench: rate(idleBefore.bench, idleAfter.bench) }

    // What one batch made a coordinator write, read back from etcd.
    const s0 = senders[0]
    const written = await Promise.all(s0.keys.map(async key => {
      const k = windowRecords(windowEntries(s0.edge, 1, [key], WINDOW_START, WINDOW_START + WINDOW_MS), FOG_PREFIX)[0][0]
      const v = await first.get(k).buffer()
      if (v === null) throw new Error(`no window record at ${k} after the warm-up`)
      return { key: Buffer.byteLength(k), value: v.length }
    }))
    const batchWrite = {
      records: written.length,
      valueBytes: written.reduce((a, w) => a + w.value, 0),
      keyBytes: written.reduce((a, w) => a + w.key, 0),
      bodyBytes: batchRequest(s0.edge, 1, windowEntries(s0.edge, 1, s0.keys, WINDOW_START, WINDOW_START + WINDOW_MS)).body.length
    }
    if (Math.abs(batchWrite.valueBytes - s0.value.length) > WINDOWS * 4) {
      warnings.push(`cluster: the baseline writes ${s0.value.length} B per batch, the coordinator wrote ${batchWrite.valueBytes} B`)
    }
    o.log(`  one batch: ${WINDOWS} windows, ${batchWrite.bodyBytes} B body; the coordinator writes ${batchWrite.records} records, ` +
      `${batchWrite.valueBytes} B of values (read back from etcd) and ${batchWrite.keyBytes} B of keys; the baseline put carries ${s0.value.length} B`)
    o.log(`  idle cpu, ms per second: coordinators ${idle.coordinators}, etcd ${idle.etcd}, bench ${idle.bench}`)

    const commitsBefore = await commitsTotal(mesh)
    let clusterAcked = 0
    const rounds = new Map<string, KindRound[]>(kinds.map(k => [k.name, []]))
    for (let round = 0; round < o.rounds; round++) {
      // Each round starts with another kind, so that none always runs first or after the same other.
      const order = kinds.map((_, i) => kinds[(i + round) % kinds.length])
      for (const kind of order) {
        const r = await measure(kind, o.roundMs, pids)
        rounds.get(kind.name)!.push(r)
        if (kind.cluster) clusterAcked += r.acked
        const failed = Object.entries(r.failed).map(([why, n]) => `${n} x ${why}`).join(', ')
        if (failed !== '') warnings.push(`cluster round ${round + 1} ${kind.label}: failed ${failed}`)
        o.log(`  round ${round + 1} ${kind.label.padEnd(14)} ${r.batchesPerSecond.toFixed(0).padStart(5)}/s, latency median ${r.latencyMs.median} ms, p99 ${r.latencyMs.p99} ms; ` +
          `cpu µs per batch: coordinators ${r.cpuUsPerBatch.coordinators} (${r.cpuUsPerBatch.perCoordinator.join('+')}), etcd ${r.cpuUsPerBatch.etcd}, bench ${r.cpuUsPerBatch.bench}${failed !== '' ? `; failed ${failed}` : ''}`)
      }
    }
    // Nothing else commits meanwhile: no window is due, and the no-commit batches commit nothing.
    const commitsPerBatch = (await commitsTotal(mesh) - commitsBefore) / Math.max(1, clusterAcked)

    const summaries = Object.fromEntries(kinds.map(kind => {
      const rs = rounds.get(kind.name)!
      const m = (f: (r: KindRound) => number) => median(rs.map(f))
      const summary: KindSummary = {
        label: kind.label,
        inFlight: kind.inFlight,
        batchesPerSecond: Math.round(m(r => r.batchesPerSecond)),
        latencyMs: { median: round2(m(r => r.latencyMs.median)), p99: round2(m(r => r.latencyMs.p99)) },
        cpuUsPerBatch: {
          coordinators: Math.round(m(r => r.cpuUsPerBatch.coordinators)),
          perCoordinator: rs[0].cpuUsPerBatch.perCoordinator.map((_, i) => Math.round(m(r => r.cpuUsPerBatch.perCoordinator[i]))),
          etcd: Math.round(m(r => r.cpuUsPerBatch.etcd)),
          bench: Math.round(m(r => r.cpuUsPerBatch.bench))
        },
        perRound: rs.map(r => ({ batchesPerSecond: Math.round(r.batchesPerSecond), median: r.latencyMs.median, p99: r.latencyMs.p99 }))
      }
      return [kind.name, summary]
    }))
    const ratio = (a: string, b: string) => round3(median(rounds.get(a)!.map((r, i) => r.batchesPerSecond / rounds.get(b)![i].batchesPerSecond)))
    return {
      batchWrite,
      idleCpuMsPerSecond: idle,
      kinds: summaries,
      ratios: { clusterOverPut: ratio('cluster', 'put'), clusterOverTxn: ratio('cluster', 'txn'), clusterOverTxnOneInFlight: ratio('cluster-1', 'txn-1'), clusterOverTxnSolo: ratio('cluster-solo', 'txn-solo') },
      commitsPerBatch: round2(commitsPerBatch)
    }
  } finally {
    for (const c of clients.values()) c.close()
  }
}

async function commitsTotal (mesh: Mesh): Promise<number> {
  const texts = await Promise.all([...mesh.fogs.values()].map(async f => await getText(`${f.http}/metrics`)))
  return texts.reduce((sum, t) => sum + (metricValue(t, 'fogmesh_cluster_commits_total') ?? 0), 0)
}

// ---------------------------------------------------------------------------------------------
// (c) failover

const without = (id: string) => (m: ShardMapView) =>
  m.status === 'ok' && !m.members.some(x => x.id === id) && !m.owners.includes(id) && m.owners.every(x => x !== null)
const owning = (id: string) => (m: ShardMapView) => m.status === 'ok' && m.owners.includes(id)
/** Bound on each wait: far above what the lease allows, so that a stuck failover shows as an error. */
const FAILOVER_TIMEOUT = LEASE_TTL_MS + 15_000

async function failovers (mesh: Mesh, o: Required<ClusterOptions>): Promise<FailoverSummary[]> {
  const out: FailoverSummary[] = []
  const others = (id: string) => [...mesh.fogs.values()].filter(f => f.id !== id)
  const follower = (map: ShardMapView) => COORDINATORS.find(id => id !== map.leader)!

  const scenario = async (name: string, pick: (map: ShardMapView) => Promise<Fog>, fault: (fog: Fog) => void, recover: (fog: Fog) => Promise<void>) => {
    const samples: Array<{ goneMs: number, backMs: number }> = []
    for (let i = 0; i < o.failovers; i++) {
      const victim = await pick(await waitStable(mesh, 20_000))
      const survivors = others(victim.id)
      const t0 = performance.now()
      fault(victim)
      const goneMs = await untilMaps(survivors, without(victim.id), t0, FAILOVER_TIMEOUT, `${name}: the map without ${victim.id}`)
      const t1 = performance.now()
      await recover(victim)
      const backMs = await untilMaps([...mesh.fogs.values()], owning(victim.id), t1, FAILOVER_TIMEOUT + 30_000, `${name}: ${victim.id} owning shards again`)
      samples.push({ goneMs: Math.round(goneMs), backMs: Math.round(backMs) })
      o.log(`  ${name} (${victim.id}): gone from the map after ${Math.round(goneMs)} ms (lease TTL ${LEASE_TTL_MS} ms), owns shards again ${Math.round(backMs)} ms after the ${name.startsWith('cut') ? 'heal' : 'restart'}`)
    }
    const gone = median(samples.map(s => s.goneMs))
    out.push({ scenario: name, runs: samples.length, goneMs: gone, afterLeaseMs: gone - LEASE_TTL_MS, backMs: median(samples.map(s => s.backMs)), samples })
  }

  const kill = (fog: Fog) => { fog.child.proc.kill('SIGKILL') }
  const restart = async (fog: Fog) => {
    await fog.child.exited
    await mesh.start(fog.id)
  }
  await scenario('SIGKILL follower', async map => mesh.fogs.get(follower(map))!, kill, restart)
  await scenario('SIGKILL leader', async map => mesh.fogs.get(map.leader!)!, kill, restart)
  // A follower again, started anew through proxies to the etcd members (and left that way).
  await scenario('cut from etcd', async map => {
    const id = follower(map)
    const fog = mesh.fogs.get(id)!
    if (fog.proxies !== undefined) return fog
    await stopChild(fog.child)
    const proxied = await mesh.start(id, true)
    await waitStable(mesh, 20_000)
    return proxied
  }, fog => { for (const p of fog.proxies!) p.cut() }, async fog => { for (const p of fog.proxies!) p.heal() })
  return out
}

// ---------------------------------------------------------------------------------------------

export async function runClusterBench (options: ClusterOptions): Promise<ClusterResults> {
  const o: Required<ClusterOptions> = {
    ...options,
    rounds: options.rounds ?? (options.quick ? 3 : 5),
    roundMs: options.roundMs ?? (options.quick ? 2_000 : 4_000),
    failovers: options.failovers ?? (options.quick ? 1 : 3)
  }
  const began = performance.now()
  o.log(`cluster: 3 etcd members, ${COORDINATORS.length} fog coordinators (lease TTL ${LEASE_TTL_MS / 1000} s, tick 100 ms); ${o.rounds} rounds of ` +
    `every kind for ${o.roundMs / 1000} s (x${IN_FLIGHT}, x1: in flight per coordinator; solo: one in flight in all), ${WINDOWS} windows per batch`)
  const warnings: string[] = []
  // Nothing is finalized during the rounds (no watermarks, and no window waits an hour): the figures
  // are the commits of partials alone, not mixed with finalization's.
  const mesh = await startMesh(join(o.workDir, 'cluster'), ['--finalize-after', '1h'])
  try {
    const t = await throughput(mesh, o, warnings)
    o.log(`  failover, ${o.failovers} run(s) per scenario, maps polled every ${POLL_MS} ms`)
    const f = await failovers(mesh, o)
    return {
      date: new Date().toISOString(),
      durationSeconds: Math.round((performance.now() - began) / 100) / 10,
      coordinators: COORDINATORS.length,
      etcdMembers: mesh.etcd.members.length,
      leaseTtlMs: LEASE_TTL_MS,
      windowsPerBatch: WINDOWS,
      inFlightPerCoordinator: IN_FLIGHT,
      rounds: o.rounds,
      roundSeconds: o.roundMs / 1000,
      ...t,
      failovers: f,
      warnings
    }
  } finally {
    await mesh.close()
  }
}

/** Rows for the bench's results table. */
export function clusterRows (c: ClusterResults): Array<[string, string]> {
  const k = c.kinds
  const cell = (s: KindSummary) => `${s.batchesPerSecond}/s, ${s.latencyMs.median}/${s.latencyMs.p99} ms`
  const cpu = (s: KindSummary) => `${s.label} ${s.cpuUsPerBatch.coordinators}/${s.cpuUsPerBatch.etcd}/${s.cpuUsPerBatch.bench}`
  const solo = k['cluster-solo'].cpuUsPerBatch.perCoordinator
  return [
    ['cluster', `${c.coordinators} coordinators on ${c.etcdMembers} etcd members, ${c.windowsPerBatch} windows per batch ` +
      `(${c.batchWrite.valueBytes} B of window records), ${c.rounds} rounds x ${c.roundSeconds} s, medians; batches/s, latency median/p99`],
    [`${c.inFlightPerCoordinator} in flight per coord.`, `cluster ${cell(k.cluster)} | etcd put ${cell(k.put)} | etcd txn of ${c.windowsPerBatch} puts ${cell(k.txn)}; ` +
      `cluster/put ${pct(c.ratios.clusterOverPut)}, cluster/txn ${pct(c.ratios.clusterOverTxn)}`],
    ['1 in flight per coord.', `cluster ${cell(k['cluster-1'])} | etcd txn ${cell(k['txn-1'])}; cluster/txn ${pct(c.ratios.clusterOverTxnOneInFlight)}`],
    ['1 in flight in all', `cluster ${cell(k['cluster-solo'])} | etcd txn ${cell(k['txn-solo'])} | a batch without windows (no commit) ${cell(k['http-solo'])}; ` +
      `cluster/txn ${pct(c.ratios.clusterOverTxnSolo)}`],
    ['cpu µs per batch', `coordinators/etcd/bench: ${Object.values(k).map(cpu).join(', ')}; idle, ms/s: ${c.idleCpuMsPerSecond.coordinators}/` +
      `${c.idleCpuMsPerSecond.etcd}/${c.idleCpuMsPerSecond.bench}; ${c.commitsPerBatch} etcd commits per acked batch`],
    ['one commit, cpu µs', `the owner ${solo[0]}, each other coordinator (mirroring it) ${solo.slice(1).join(' and ')}, etcd ${k['cluster-solo'].cpuUsPerBatch.etcd} ` +
      `(a txn alone: ${k['txn-solo'].cpuUsPerBatch.etcd}); a batch without commit: ${k['http-solo'].cpuUsPerBatch.perCoordinator[0]} at its coordinator`],
    ...c.failovers.map((f): [string, string] => [`failover, ${f.scenario}`,
      `gone from the map after ${f.goneMs} ms (lease TTL ${c.leaseTtlMs} ms, ${signed(f.afterLeaseMs)} ms after it), owns shards again after ${f.backMs} ms; ` +
      `median of ${f.runs} (${f.samples.map(s => `${s.goneMs}/${s.backMs}`).join(', ')})`])
  ]
}

// ---------------------------------------------------------------------------------------------
// (d) etcd's size over a long run

const LONG_WINDOW_MS = 1_000
const SAMPLE_EVERY = 10_000
/** Edges per coordinator in the long run; each sends one batch per window. */
const LONG_EDGES = 4

export interface LongOptions {
  workDir: string
  durationMs: number
  log: (line: string) => void
}

interface SizeSample {
  seconds: number
  /** Largest physical size of the members' databases. */
  dbBytes: number
  /** Logically in use, as the member asked reports it. */
  dbInUseBytes: number
  /** The leader's fogmesh_etcd_db_bytes (as of its last maintenance). */
  leaderMetricBytes: number | null
  windowKeys: number
  windowsAcked: number
}

export interface ClusterLongResults {
  date: string
  durationSeconds: number
  retentionSeconds: number
  maintainEverySeconds: number
  load: string
  samples: SizeSample[]
  dbBytes: { start: number, max: number, end: number }
  windowKeysAtEnd: number
  windowKeysMax: number
  /** Windows acked (each written once as a partial and once as final). */
  windowsWritten: number
  batchesAcked: number
  etcdCommits: number
  /** Windows finalized (each written a second time, as final). */
  windowsFinalized: number
  windowsRemoved: number
  compactions: number
  warnings: string[]
}

export async function runClusterLongBench (o: LongOptions): Promise<ClusterLongResults> {
  const began = performance.now()
  const edges = LONG_EDGES * COORDINATORS.length
  const load = `${edges} edges, each one batch of ${WINDOWS} new ${LONG_WINDOW_MS / 1000} s windows with its watermark per window ` +
    `(${edges} batches/s, ${edges * WINDOWS} windows/s)`
  o.log(`cluster-long: ${Math.round(o.durationMs / 1000)} s of ${load}; coordinators with --etcd-retention 30s --etcd-maintain-every 10s --retention 30s; ` +
    `etcd's size sampled every ${SAMPLE_EVERY / 1000} s`)
  const mesh = await startMesh(join(o.workDir, 'cluster-long'), ['--etcd-retention', '30s', '--etcd-maintain-every', '10s', '--retention', '30s'])
  const client = new Etcd3({ hosts: mesh.etcd.members.map(m => m.clientUrl) })
  const warnings: string[] = []
  const failed: Record<string, number> = {}
  let batches = 0
  let stopping = false
  try {
    const map = await waitStable(mesh, 10_000)
    const sample = async (seconds: number): Promise<SizeSample> => {
      const leader = mesh.fogs.get((await shardMap([...mesh.fogs.values()][0])).leader ?? '')
      const status = await client.maintenance.status({})
      return {
        seconds,
        dbBytes: await mesh.etcd.dbSize(),
        dbInUseBytes: Number(status.dbSizeInUse),
        leaderMetricBytes: leader === undefined ? null : metricValue(await getText(`${leader.http}/metrics`), 'fogmesh_etcd_db_bytes') ?? null,
        windowKeys: await client.getAll().prefix(`${FOG_PREFIX}w/`).count(),
        windowsAcked: batches * WINDOWS
      }
    }
    const show = (s: SizeSample) => o.log(`  ${String(s.seconds).padStart(4)} s: etcd db ${mib(s.dbBytes)} MiB (in use ${mib(s.dbInUseBytes)}, ` +
      `leader's metric ${s.leaderMetricBytes === null ? 'n/a' : mib(s.leaderMetricBytes)}), ${s.windowKeys} window keys, ${s.windowsAcked} windows acked`)
    const samples = [await sample(0)]
    show(samples[0])

    const t0 = performance.now()
    const senders = [...mesh.fogs.values()].flatMap(fog => Array.from({ length: LONG_EDGES }, (_, i) => ({
      fog, edge: `edge-${fog.id}-${i}`, keys: keysOwnedBy(map, fog.id, `k-${fog.id}-${i}`, WINDOWS), seq: 0
    })))
    const loops = senders.map(async (s, i) => {
      // Spread over the window, as edges flush closed windows on their own clocks.
      const offset = Math.round(i * LONG_WINDOW_MS / senders.length)
      while (!stopping) {
        const now = Date.now()
        const next = Math.ceil((now - offset) / LONG_WINDOW_MS) * LONG_WINDOW_MS + offset
        await sleep(next - now)
        if (stopping) break
        const end = next - offset
        const seq = ++s.seq
        const req = batchRequest(s.edge, seq, windowEntries(s.edge, 0, s.keys, end - LONG_WINDOW_MS, end),
          [{ pipeline: PIPELINE.name, edge: s.edge, watermark: end }])
        let outcome: string
        try {
          outcome = await post(`${s.fog.http}/v1/partials`, req)
        } catch (err) {
          outcome = (err as Error).message.slice(0, 80)
        }
        if (outcome === 'ok') batches++
        else failed[outcome] = (failed[outcome] ?? 0) + 1
      }
    })
    try {
      while (performance.now() - t0 < o.durationMs) {
        await sleep(Math.min(SAMPLE_EVERY, o.durationMs - (performance.now() - t0)))
        const s = await sample(Math.round((performance.now() - t0) / 1000))
        samples.push(s)
        show(s)
      }
    } finally {
      stopping = true
      await Promise.all(loops)
    }
    const failures = Object.entries(failed).map(([why, n]) => `${n} x ${why}`).join(', ')
    if (failures !== '') warnings.push(`cluster-long: batches failed: ${failures}`)
    const texts = await Promise.all([...mesh.fogs.values()].map(async f => await getText(`${f.http}/metrics`)))
    const sum = (name: string) => texts.reduce((a, t) => a + (metricValue(t, name) ?? 0), 0)
    const sizes = samples.map(s => s.dbBytes)
    return {
      date: new Date().toISOString(),
      durationSeconds: Math.round((performance.now() - began) / 100) / 10,
      retentionSeconds: 30,
      maintainEverySeconds: 10,
      load,
      samples,
      dbBytes: { start: sizes[0], max: Math.max(...sizes), end: sizes[sizes.length - 1] },
      windowKeysAtEnd: samples[samples.length - 1].windowKeys,
      windowKeysMax: Math.max(...samples.map(s => s.windowKeys)),
      windowsWritten: batches * WINDOWS,
      batchesAcked: batches,
      etcdCommits: sum('fogmesh_cluster_commits_total'),
      windowsFinalized: sum('fogmesh_windows_finalized_total'),
      windowsRemoved: sum('fogmesh_cluster_windows_removed_total'),
      compactions: sum('fogmesh_cluster_compactions_total'),
      warnings
    }
  } finally {
    stopping = true
    client.close()
    await mesh.close()
  }
}

export function clusterLongRows (c: ClusterLongResults): Array<[string, string]> {
  const curve = c.samples.map(s => mib(s.dbBytes)).join(' ')
  return [
    ['cluster-long', `${Math.round(c.samples[c.samples.length - 1].seconds)} s of ${c.load}; retention ${c.retentionSeconds} s, maintenance every ${c.maintainEverySeconds} s`],
    ['etcd db size', `start ${mib(c.dbBytes.start)} MiB, max ${mib(c.dbBytes.max)}, end ${mib(c.dbBytes.end)} (every 10 s: ${curve})`],
    ['etcd window keys', `${c.windowKeysAtEnd} at the end (max ${c.windowKeysMax}); ${c.windowsWritten} windows written in ${c.batchesAcked} batches ` +
      `(${c.windowsFinalized} written again as final), ${c.windowsRemoved} removed past retention, ${c.compactions} compactions, ${c.etcdCommits} etcd commits`]
  ]
}

function mib (bytes: number): string {
  return (bytes / 1048576).toFixed(2)
}

function pct (x: number): string {
  return `${(x * 100).toFixed(1)}%`
}

function signed (x: number): string {
  return x >= 0 ? `+${x}` : String(x)
}

function round2 (x: number): number {
  return Math.round(x * 100) / 100
}

function round3 (x: number): number {
  return Math.round(x * 1000) / 1000
}

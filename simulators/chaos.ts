/**
 * The chaos scenario (`fogmesh chaos`, `runChaos`): a replicated fog cluster on loopback, faults
 * injected on a script while readings flow, and every tier compared with the simulator's ground truth
 * at the end.
 *
 * The mesh: 3 etcd members; 3 fog coordinators, each reaching etcd only through TCP proxies of its own
 * (one per member), so that it alone can be cut off; a cloud sink; N edge agents with embedded brokers
 * that know every coordinator and fail over to the cloud. Every node is a real `fogmesh` process,
 * started as a user starts it (cli/node-process.ts); the simulator and the proxies run in here.
 *
 * The script, each step logged and timed: warm-up → kill -9 the leader, measure until the survivors'
 * shard map drops it, restart it → the same with a follower → cut one coordinator off from etcd for 3
 * lease TTLs, measure likewise, heal → kill 2 of the 3 etcd members (no quorum): every coordinator must
 * refuse partials (503 no_quorum) and the edges fail over to the cloud; restart them, wait until every
 * coordinator takes partials again → the rest of the run and the tail → every coordinator and the cloud
 * must equal the merged ground truth (and every edge its own). The main run publishes slowly enough
 * for the faults to happen while its readings flow.
 *
 * Every wait is bounded; everything started is stopped at the end, also on an error or an abort.
 */
import { createWriteStream } from 'node:fs'
import type { WriteStream } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { NodeProcess, exitStatus } from '../cli/node-process.ts'
import { ConfigError, FogmeshError } from '../core/errors.ts'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { encodeBatch } from '../core/upstream/batch.ts'
import type { ShardMapView } from '../core/upstream/shards.ts'
import { startEtcdCluster } from './etcd-cluster.ts'
import type { EtcdCluster } from './etcd-cluster.ts'
import type { SimInput } from './options.ts'
import { createRng } from './random.ts'
import type { Rng } from './random.ts'
import { holdActive } from './hold.ts'
import type { Hold } from './hold.ts'
import { runSimulator } from './sim.ts'
import type { SimSummary } from './sim.ts'
import { startTcpProxy } from './tcp-proxy.ts'
import type { TcpProxy } from './tcp-proxy.ts'
import type { WindowResult as TruthResult } from './truth.ts'
import type { ChaosReport, FailoverTiming, QuorumLossReport } from './chaos-report.ts'
import { compareResults, fetchMetric, fetchResults } from './verify.ts'
import type { ServedResult } from './verify.ts'
import { freePorts } from './ports.ts'

export { formatReport } from './chaos-report.ts'
export type { ChaosReport, FailoverTiming, QuorumLossReport, StepReport } from './chaos-report.ts'

export const PIPELINES = fileURLToPath(new URL('chaos-pipelines.yaml', import.meta.url))

export interface ChaosOptions {
  /** Seeds the readings and the choice of victims (which follower, which coordinator, which etcd members). Default 1. */
  seed?: number
  /** Run in this directory and keep it (data dirs, logs, report.json). Default: a temp dir, removed at the end. */
  dir?: string
  /**
   * The coordinators' --lease-ttl, ms, rounded up to whole seconds (etcd counts seconds). Default 2 000.
   * etcd grants no less than 1.5 election timeouts, rounded up: 2 s with the members' 1 s here.
   */
  leaseTtl?: number
  /** Edge agents, each with its own broker and a share of the devices. Default 3. */
  edges?: number
  /** Wall-clock time the main run publishes for, ms: the faults happen meanwhile. Default 40 000. */
  publishFor?: number
  /** How long one coordinator is cut off from etcd, ms. Default 3 × leaseTtl. */
  cutFor?: number
  /** Longest any one wait of the script may take, ms. Default 20 000. */
  stepTimeout?: number
  /** Longest the tiers may take to equal the truth once the run is published, ms. Default 20 000. */
  exactWithin?: number
  /** The faults to inject, in the script's order whatever the order here. Default: all of FAULTS. */
  faults?: Fault[]
  /** Progress lines, each with a timestamp. Default: none. */
  log?: (line: string) => void
  /** Every output line of every node. Default: only the node's log file in the run dir. */
  nodeOutput?: (node: string, line: string) => void
  /** Stops the run early: everything is stopped and the report says it was aborted. */
  signal?: AbortSignal
}

export const FAULTS = ['kill-leader', 'kill-follower', 'partition', 'quorum-loss'] as const
export type Fault = typeof FAULTS[number]

export const CHAOS_DEFAULTS = {
  seed: 1,
  leaseTtl: 2_000,
  edges: 3,
  publishFor: 40_000,
  stepTimeout: 20_000,
  exactWithin: 20_000
}

/** A step of the chaos scenario did not do what it should in time, or the run was stopped (codes: chaos_timeout, chaos_aborted, chaos_failed). */
export class ChaosError extends FogmeshError {}

const HOST = '127.0.0.1'
const COORDINATORS = ['f1', 'f2', 'f3']
const START = Date.UTC(2026, 0, 1)
/** Polling period while a failover is measured. */
const MEASURE_EVERY = 50
/** Longest one status request may take while polling. */
const POLL_REQUEST_TIMEOUT = 1_000
/** Lines of differences kept per tier in the report. */
const DIFF_LINES = 20

/**
 * Runs before and after the main run, an hour of event time away: the warm-up makes every tier know
 * every edge before windows are final anywhere (a merge tier waits only for edges it has heard from),
 * and the tail moves every edge's watermark past the main run, so that its last windows are final by
 * watermarks rather than after --finalize-after. Their windows are left out of the comparisons.
 */
const WARM_UP: SimInput = { start: START - 3_600_000, rate: 2, duration: 6_000, seed: 99 }
const TAIL: SimInput = { start: START + 3_600_000, rate: 2, duration: 2_000, seed: 98 }
/** Keeps the edges active from the warm-up to the main run (see hold.ts). */
const HOLD: SimInput = { start: WARM_UP.start! + WARM_UP.duration!, rate: 2, seed: 97 }
/**
 * Longer than the whole scenario: every window must be final by watermarks, so that a window finalized
 * before all its partials arrived shows up as a wrong revision instead of hiding behind a timeout.
 */
const FINALIZE_AFTER = '300s'
/** Event time of the main run; the speed makes it last `publishFor` of wall-clock time. */
const MAIN_DURATION = 240_000
/** Results of the main run start in [MAIN_FROM, MAIN_TO) (late readings go back 20 s at most). */
const MAIN_FROM = START - 600_000
const MAIN_TO = START + 1_800_000

interface Coordinator {
  id: string
  port: number
  url: string
  dir: string
  proxies: TcpProxy[]
  node?: NodeProcess
}

interface Edge {
  id: string
  node: NodeProcess
  http: string
  mqtt: string
}

function sleep (ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) return reject(aborted())
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = () => {
      clearTimeout(timer)
      reject(aborted())
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/** `promise`, unless `ms` pass first (chaos_timeout) or `signal` aborts (chaos_aborted); leaves no timer behind. */
async function within<T> (promise: Promise<T>, ms: number, what: string, signal?: AbortSignal): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  let onAbort = () => {}
  try {
    return await Promise.race([promise, new Promise<never>((resolve, reject) => {
      timer = setTimeout(() => reject(new ChaosError('chaos_timeout', `timed out after ${ms} ms waiting for ${what}`)), ms)
      onAbort = () => reject(aborted())
      if (signal?.aborted === true) onAbort()
      signal?.addEventListener('abort', onAbort, { once: true })
    })])
  } finally {
    clearTimeout(timer)
    signal?.removeEventListener('abort', onAbort)
  }
}

function aborted (): ChaosError {
  return new ChaosError('chaos_aborted', 'the chaos run was aborted')
}

async function getJson (url: string, timeoutMs = POLL_REQUEST_TIMEOUT): Promise<{ status: number, body: unknown }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) })
  const text = await res.text()
  let body: unknown = text
  try { body = JSON.parse(text) } catch {}
  return { status: res.status, body }
}

/** A coordinator's GET /v1/shards, or undefined when it does not answer. */
async function shardsOf (url: string): Promise<ShardMapView | undefined> {
  try {
    const res = await getJson(`${url}/v1/shards`)
    return res.status === 200 ? res.body as ShardMapView : undefined
  } catch {
    return undefined
  }
}

async function metric (base: string, name: string, labels = ''): Promise<number> {
  return (await fetchMetric(base, name)).get(labels) ?? 0
}

function pickN<T> (rng: Rng, items: readonly T[], n: number): T[] {
  const rest = [...items]
  const out: T[] = []
  while (out.length < n && rest.length > 0) out.push(rest.splice(rng.int(rest.length), 1)[0])
  return out
}

/** The survivors all hold one map without `victim`, newer than `before`. */
function withoutVictim (views: Array<ShardMapView | undefined>, victim: string, before: number): ShardMapView | undefined {
  const first = views[0]
  if (first === undefined) return undefined
  for (const v of views) {
    if (v === undefined || v.version <= before || v.version !== first.version) return undefined
    if (v.members.some(m => m.id === victim) || v.owners.includes(victim) || v.owners.includes(null)) return undefined
  }
  return first
}

/** Every coordinator serves one map, status ok, with all of them owning shards. */
function whole (views: Array<ShardMapView | undefined>, ids: readonly string[]): ShardMapView | undefined {
  const first = views[0]
  if (first === undefined) return undefined
  for (const v of views) {
    if (v === undefined || v.status !== 'ok' || v.version !== first.version || v.leader === null) return undefined
    if (ids.some(id => !v.members.some(m => m.id === id) || !v.owners.includes(id)) || v.owners.includes(null)) return undefined
  }
  return first
}

export async function runChaos (options: ChaosOptions = {}): Promise<ChaosReport> {
  const seed = options.seed ?? CHAOS_DEFAULTS.seed
  const leaseTtl = Math.max(1_000, Math.ceil((options.leaseTtl ?? CHAOS_DEFAULTS.leaseTtl) / 1_000) * 1_000)
  const edgeCount = options.edges ?? CHAOS_DEFAULTS.edges
  if (!Number.isInteger(edgeCount) || edgeCount < 1 || edgeCount > 20) throw new ConfigError(`edges: expected 1 to 20, not ${edgeCount}`)
  const publishFor = options.publishFor ?? CHAOS_DEFAULTS.publishFor
  const cutFor = options.cutFor ?? 3 * leaseTtl
  const stepTimeout = options.stepTimeout ?? CHAOS_DEFAULTS.stepTimeout
  const exactWithin = options.exactWithin ?? CHAOS_DEFAULTS.exactWithin
  const signal = options.signal
  const keep = options.dir !== undefined
  const began = Date.now()
  const say = options.log ?? (() => {})
  const log = (line: string) => {
    const now = Date.now()
    say(`${new Date(now).toISOString().slice(11, 23)} +${((now - began) / 1000).toFixed(1).padStart(5)}s ${line}`)
  }
  const rng = createRng(seed, 7)
  const specs: PipelineSpec[] = await loadPipelinesFile(PIPELINES)

  const dir = options.dir ?? await mkdtemp(join(tmpdir(), 'fogmesh-chaos-'))
  await mkdir(join(dir, 'logs'), { recursive: true })

  const report: ChaosReport = {
    verdict: 'fail',
    aborted: false,
    seed,
    leaseTtlMs: leaseTtl,
    coordinators: [...COORDINATORS],
    edges: Array.from({ length: edgeCount }, (_, i) => `e${i + 1}`),
    durationMs: 0,
    dir: keep ? dir : undefined,
    steps: [],
    failovers: {},
    differences: {},
    readings: { perEdge: {}, messages: 0, readings: 0, late: 0, duplicates: 0, malformed: 0, windows: 0 },
    etcdDbBytes: null,
    counters: {},
    problems: []
  }
  const problem = (what: string) => {
    report.problems.push(what)
    log(`PROBLEM: ${what}`)
  }

  // Everything started, for the cleanup.
  const nodes = new Set<NodeProcess>()
  /** Nodes the script ends on purpose: their exit is no problem. */
  const expected = new Set<NodeProcess>()
  const logFiles = new Map<string, WriteStream>()
  let stopping = false
  let etcd: EtcdCluster | undefined
  const proxies: TcpProxy[] = []
  const simAbort = new AbortController()
  const simSignal = signal === undefined ? simAbort.signal : AbortSignal.any([signal, simAbort.signal])

  const logFile = (name: string): WriteStream => {
    let f = logFiles.get(name)
    if (f === undefined) {
      f = createWriteStream(join(dir, 'logs', `${name}.log`), { flags: 'a' })
      // A failed log write (disk full, dir removed) must not crash the run.
      f.on('error', () => {})
      logFiles.set(name, f)
    }
    return f
  }

  const launch = (name: string, role: string, args: string[]): NodeProcess => {
    const file = logFile(name)
    const node = new NodeProcess({
      name,
      role,
      args,
      readyTimeout: stepTimeout,
      stopTimeout: 5_000,
      output: line => {
        file.write(line + '\n')
        options.nodeOutput?.(name, line)
      },
      log
    })
    nodes.add(node)
    // Before its ready line, a node's failure is told by `ready` rejecting, to whoever waits for it.
    let ready = false
    node.ready.then(() => { ready = true }, () => {})
    void node.exited.then(e => {
      file.write(`-- ${name} ${exitStatus(e)}\n`)
      if (ready && !stopping && !expected.has(node)) problem(`${name} exited unexpectedly (${exitStatus(e)}); its last lines: ${node.stderrTail.slice(-5).join(' | ')}`)
    })
    return node
  }

  /** Polls `check` until it returns something, at most `timeoutMs`; throws chaos_timeout with `what`. */
  const until = async <T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = stepTimeout, every = MEASURE_EVERY): Promise<T> => {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      if (signal?.aborted === true) throw aborted()
      const v = await check().catch(() => undefined)
      if (v !== undefined && v !== false) return v
      if (Date.now() >= deadline) throw new ChaosError('chaos_timeout', `timed out after ${timeoutMs} ms waiting for ${what}`)
      await sleep(Math.min(every, Math.max(0, deadline - Date.now())), signal)
    }
  }

  let mainStarted = false
  let published = false
  const step = async <T>(name: string, run: () => Promise<{ detail: string, value: T }>): Promise<T> => {
    const at = Date.now()
    const flowing = mainStarted && !published
    log(`step: ${name}`)
    try {
      const { detail, value } = await run()
      report.steps.push({ name, at: at - began, tookMs: Date.now() - at, ok: true, detail, readingsFlowing: flowing })
      log(`done: ${name} (${Date.now() - at} ms): ${detail}`)
      return value
    } catch (err) {
      report.steps.push({ name, at: at - began, tookMs: Date.now() - at, ok: false, detail: (err as Error).message, readingsFlowing: flowing })
      throw err
    }
  }

  const coordinators: Coordinator[] = []
  const edges: Edge[] = []
  let cloudUrl = ''
  const views = async (cs: readonly Coordinator[]) => await Promise.all(cs.map(c => shardsOf(c.url)))
  const byId = (id: string) => coordinators.find(c => c.id === id)!

  const startCoordinator = async (c: Coordinator): Promise<void> => {
    for (let attempt = 1; ; attempt++) {
      c.node = launch(c.id, 'fog', [
        '--id', c.id, '--http-port', String(c.port), '--data-dir', c.dir, '--pipelines', PIPELINES,
        '--etcd', c.proxies.map(p => p.address).join(','), '--lease-ttl', `${leaseTtl / 1000}s`,
        '--tick', '100ms', '--finalize-after', FINALIZE_AFTER, '--cloud', cloudUrl, '--uplink-retry-max', '500ms'
      ])
      try {
        await c.node.ready
        return
      } catch (err) {
        // Its port, free while it was down, may have become some connection's local port meanwhile.
        if (attempt >= 3 || !c.node.stderrTail.some(l => l.includes('EADDRINUSE'))) throw err
        log(`${c.id}: port ${c.port} is taken; starting it again`)
        await sleep(500, signal)
      }
    }
  }

  /** Kills (or cuts off) `victim`, measures until the others' map drops it, then restarts (or heals) it. */
  const failover = async (victim: Coordinator, fault: 'kill' | 'cut'): Promise<FailoverTiming> => {
    const all = await until('every coordinator serving one map', async () => whole(await views(coordinators), COORDINATORS))
    const survivors = coordinators.filter(c => c !== victim)
    const t0 = Date.now()
    const statuses = new Set<string>()
    if (fault === 'kill') {
      expected.add(victim.node!)
      victim.node!.kill('SIGKILL')
    } else {
      for (const p of victim.proxies) p.cut()
    }
    const after = await until(`the map without ${victim.id} at ${survivors.map(c => c.id).join(', ')}`, async () => {
      if (fault === 'cut') {
        const v = await shardsOf(victim.url)
        if (v !== undefined) statuses.add(v.status)
      }
      return withoutVictim(await views(survivors), victim.id, all.version)
    })
    const failoverMs = Date.now() - t0
    log(`${survivors.map(c => c.id).join(', ')} hold map v${after.version} without ${victim.id} ${failoverMs} ms after the ${fault}, ` +
      `${failoverMs - leaseTtl} ms after its lease could expire; leader ${after.leader}`)
    let t1: number
    if (fault === 'kill') {
      await within(victim.node!.exited, stepTimeout, `${victim.id} to exit after SIGKILL`, signal)
      t1 = Date.now()
      await startCoordinator(victim)
    } else {
      // The rest of the cut: the victim must keep refusing while it cannot reach etcd.
      while (Date.now() < t0 + cutFor) {
        const v = await shardsOf(victim.url)
        if (v !== undefined) statuses.add(v.status)
        await sleep(Math.min(250, Math.max(0, t0 + cutFor - Date.now())), signal)
      }
      t1 = Date.now()
      for (const p of victim.proxies) p.heal()
    }
    const back = await until(`${victim.id} back in the map of every coordinator`, async () => whole(await views(coordinators), COORDINATORS))
    const rejoinMs = Date.now() - t1
    return {
      victim: victim.id,
      wasLeader: all.leader === victim.id,
      leaderBefore: all.leader,
      leaderAfter: after.leader,
      versionBefore: all.version,
      versionAfter: after.version,
      failoverMs,
      afterLeaseMs: failoverMs - leaseTtl,
      rejoinMs,
      versionRejoined: back.version,
      ...(fault === 'cut' ? { victimStatuses: [...statuses] } : {})
    }
  }

  let main: Promise<SimSummary> | undefined
  try {
    // ---- the mesh
    await step('start the mesh', async () => {
      const cloud = launch('cloud', 'cloud', ['--id', 'c1', '--http-port', '0', '--data-dir', join(dir, 'cloud'), '--tick', '100ms', '--finalize-after', FINALIZE_AFTER])
      const [cluster, cloudAddress, ports] = await Promise.all([
        startEtcdCluster({ members: 3, dir: join(dir, 'etcd'), timeoutMs: stepTimeout }),
        cloud.ready,
        freePorts(COORDINATORS.length)
      ])
      etcd = cluster
      cloudUrl = cloudAddress.http
      for (const [i, id] of COORDINATORS.entries()) {
        const ps: TcpProxy[] = []
        for (const m of cluster.members) {
          const [host, port] = m.endpoint.split(':')
          const p = await startTcpProxy({ host, port: Number(port) })
          ps.push(p)
          proxies.push(p)
        }
        coordinators.push({ id, port: ports[i], url: `http://${HOST}:${ports[i]}`, dir: join(dir, id), proxies: ps })
      }
      // The edges need only the coordinators' URLs: they find the shard map once it is there.
      const fogs = coordinators.flatMap(c => ['--fog', c.url])
      await Promise.all([
        ...coordinators.map(startCoordinator),
        ...report.edges.map(async id => {
          const node = launch(id, 'edge', ['--id', id, '--pipelines', PIPELINES, '--mqtt-port', '0', '--http-port', '0', '--data-dir', join(dir, id),
            ...fogs, '--cloud', cloudUrl, '--failover-after', '2s', '--uplink-retry-max', '500ms'])
          const a = await node.ready
          edges.push({ id, node, http: a.http, mqtt: a.mqtt! })
        })
      ])
      edges.sort((a, b) => a.id < b.id ? -1 : 1)
      const map = await until('every coordinator serving one map', async () => whole(await views(coordinators), COORDINATORS))
      return { detail: `etcd ×3, coordinators ${COORDINATORS.join(', ')} (map v${map.version}, leader ${map.leader}), cloud, edges ${report.edges.join(', ')}`, value: undefined }
    })
    const brokers = edges.map(e => e.mqtt)
    // Rooms coprime with the edges, so that every room has devices on every edge (windows to merge).
    const devices = edgeCount * (edgeCount + 1)
    const rooms = edgeCount + 1
    const population = { devices, rooms, mqtt: brokers }

    let hold: Hold | undefined
    await step('warm-up', async () => {
      await within(runSimulator({ ...WARM_UP, ...population, signal: simSignal }), stepTimeout, 'the warm-up to be published', signal)
      // From the warm-up's last reading on, so that no edge is idle when the main run starts.
      hold = holdActive({ ...HOLD, ...population, signal: simSignal })
      const knows = async (base: string, ids: string[]) => {
        const body = (await getJson(`${base}/v1/mesh`)).body as { edges: Array<{ id: string, watermarks: Record<string, string> }> }
        return ids.every(id => Object.keys(body.edges.find(e => e.id === id)?.watermarks ?? {}).length === specs.length)
      }
      for (const c of coordinators) await until(`${c.id} hearing from every edge in every pipeline`, () => knows(c.url, report.edges), stepTimeout, 100)
      await until('the cloud hearing from every coordinator in every pipeline', () => knows(cloudUrl, COORDINATORS), stepTimeout, 100)
      return { detail: 'every coordinator knows every edge, the cloud every coordinator', value: undefined }
    })

    const input: SimInput = {
      ...population,
      start: START,
      rate: 1,
      duration: MAIN_DURATION,
      speed: MAIN_DURATION / publishFor,
      seed,
      jitter: 1_500, // within the pipelines' 2 s lateness: out of order, never late
      lateShare: 0.02,
      lateBy: 20_000,
      duplicateShare: 0.01,
      malformedShare: 0.01,
      pipelines: specs,
      signal: simSignal
    }
    log(`main run: ${devices} devices in ${rooms} rooms, ${MAIN_DURATION / 1000} s of event time published over ${publishFor / 1000} s`)
    await hold?.release()
    mainStarted = true
    main = runSimulator(input)
    main.catch(() => {})
    void main.then(() => { published = true }, () => { published = true })

    // ---- the faults
    const faults = new Set<Fault>(options.faults ?? FAULTS)
    if (faults.has('kill-leader')) report.failovers.leader = await step('kill -9 the leader', async () => {
      const map = await until('a leader', async () => whole(await views(coordinators), COORDINATORS))
      const f = await failover(byId(map.leader!), 'kill')
      return { detail: `${f.victim}: map v${f.versionBefore} → v${f.versionAfter} after ${f.failoverMs} ms (${f.afterLeaseMs} ms after the lease), new leader ${f.leaderAfter}; back in ${f.rejoinMs} ms (v${f.versionRejoined})`, value: f }
    })
    if (faults.has('kill-follower')) report.failovers.follower = await step('kill -9 a follower', async () => {
      const map = await until('a leader', async () => whole(await views(coordinators), COORDINATORS))
      const victim = rng.pick(COORDINATORS.filter(id => id !== map.leader))
      const f = await failover(byId(victim), 'kill')
      return { detail: `${f.victim}: map v${f.versionBefore} → v${f.versionAfter} after ${f.failoverMs} ms (${f.afterLeaseMs} ms after the lease); back in ${f.rejoinMs} ms (v${f.versionRejoined})`, value: f }
    })
    if (faults.has('partition')) report.failovers.partition = await step('cut a coordinator off from etcd', async () => {
      const f = await failover(byId(rng.pick(COORDINATORS)), 'cut')
      return { detail: `${f.victim}${f.wasLeader ? ' (the leader)' : ''} for ${cutFor} ms: map v${f.versionBefore} → v${f.versionAfter} after ${f.failoverMs} ms (${f.afterLeaseMs} ms after the lease); it said ${f.victimStatuses!.join(', ')} while cut; back ${f.rejoinMs} ms after the heal (v${f.versionRejoined})`, value: f }
    })
    if (faults.has('quorum-loss')) report.quorumLoss = await step('take etcd\'s quorum away', async () => {
      const cluster = etcd!
      await until('every coordinator serving one map', async () => whole(await views(coordinators), COORDINATORS))
      const failoversBefore = await Promise.all(edges.map(e => metric(e.http, 'fogmesh_failovers_total')))
      const cloudBefore = await metric(cloudUrl, 'fogmesh_batches_received_total', '{role="edge"}')
      const killed = pickN(rng, cluster.members.map(m => m.name), 2).sort()
      const t0 = Date.now()
      await Promise.all(killed.map(name => cluster.kill(name)))
      log(`killed etcd members ${killed.join(', ')}`)
      await until('every coordinator saying no_quorum', async () => (await views(coordinators)).every(v => v?.status === 'no_quorum'))
      const noQuorumMs = Date.now() - t0
      const partials: Record<string, string> = {}
      for (const c of coordinators) partials[c.id] = await probePartials(c.url)
      log(`no_quorum everywhere after ${noQuorumMs} ms; POST /v1/partials: ${Object.entries(partials).map(([id, s]) => `${id} ${s}`).join(', ')}`)
      const failedOver = await until('every edge failing over to the cloud', async () => {
        const now = await Promise.all(edges.map(e => metric(e.http, 'fogmesh_failovers_total')))
        return now.every((n, i) => n > failoversBefore[i]) ? now : undefined
      }, stepTimeout, 100)
      const failedOverMs = Date.now() - t0
      const cloudEdgeBatches = await until('edge batches at the cloud', async () => {
        const n = await metric(cloudUrl, 'fogmesh_batches_received_total', '{role="edge"}')
        return n > cloudBefore ? n - cloudBefore : undefined
      }, stepTimeout, 100)
      const t1 = Date.now()
      // Concurrently: a member serves only once it has rejoined, which needs the other.
      await Promise.all(killed.map(name => cluster.restart(name)))
      await until('every coordinator taking partials again', async () => whole(await views(coordinators), COORDINATORS))
      const recoveredMs = Date.now() - t1
      const t2 = Date.now()
      await until('every edge sending to the fog again', async () => {
        const targets = await Promise.all(edges.map(async e => ((await getJson(`${e.http}/v1/mesh`)).body as { uplink?: { target?: string } }).uplink?.target))
        return targets.every(t => t === 'fog')
      }, stepTimeout, 100)
      const q: QuorumLossReport = {
        killed,
        noQuorumMs,
        partials,
        failedOverMs,
        failovers: Object.fromEntries(edges.map((e, i) => [e.id, failedOver[i] - failoversBefore[i]])),
        cloudEdgeBatches,
        recoveredMs,
        backOnFogMs: Date.now() - t2
      }
      return {
        detail: `killed ${killed.join(', ')}: no_quorum everywhere after ${q.noQuorumMs} ms, edges failed over after ${q.failedOverMs} ms ` +
          `(${cloudEdgeBatches} edge batches at the cloud); quorum back, every coordinator ok ${q.recoveredMs} ms after the restart, edges on the fog ${q.backOnFogMs} ms later`,
        value: q
      }
    })

    // ---- the end of the run, and the verdict
    const sim = await step('the rest of the run and the tail', async () => {
      const summary = await within(main!, publishFor + stepTimeout, 'the main run to finish publishing', signal)
      await within(runSimulator({ ...TAIL, ...population, signal: simSignal }), stepTimeout, 'the tail to be published', signal)
      return { detail: `main run published in ${summary.elapsedMs} ms`, value: summary }
    })
    const truth = sim.truth!
    report.readings = {
      perEdge: Object.fromEntries(edges.map(e => [e.id, sim.published[e.mqtt] ?? 0])),
      messages: sim.stats.messages,
      readings: sim.stats.readings,
      late: sim.stats.late,
      duplicates: sim.stats.duplicates,
      malformed: Object.values(sim.stats.malformed).reduce((a, b) => a + (b ?? 0), 0),
      windows: specs.reduce((n, s) => n + (truth.pipelines[s.name].merged?.results.length ?? 0), 0)
    }
    const runEnd = Date.now()
    const tiers: Array<{ name: string, url: string, want: (p: string) => TruthResult[], sources?: number }> = [
      ...coordinators.map(c => ({ name: `fog ${c.id}`, url: c.url, want: (p: string) => truth.pipelines[p].merged!.results })),
      { name: 'cloud', url: cloudUrl, want: (p: string) => truth.pipelines[p].merged!.results },
      ...edges.map(e => ({ name: `edge ${e.id}`, url: e.http, want: (p: string) => truth.pipelines[p].edges[e.mqtt].results, sources: 1 }))
    ]
    await step('compare every tier with the ground truth', async () => {
      /** A tier's differences from the truth, and its final results of the main run (canonical JSON, to compare tiers). */
      const check = async (tier: typeof tiers[number]): Promise<{ differences: string[], served: string }> => {
        const differences: string[] = []
        const served: ServedResult[][] = []
        try {
          for (const spec of specs) {
            const results = (await fetchResults(tier.url, spec.name)).filter(r => Date.parse(r.start) >= MAIN_FROM && Date.parse(r.start) < MAIN_TO)
            differences.push(...compareResults(spec, results, tier.want(spec.name), tier.sources === undefined ? {} : { sources: tier.sources }))
            served.push(results.filter(r => r.final).sort((a, b) => a.start < b.start ? -1 : a.start > b.start ? 1 : a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
          }
        } catch (err) {
          differences.push(`cannot read the results: ${(err as Error).message}`)
        }
        return { differences, served: JSON.stringify(served) }
      }
      let exact: boolean
      let agree: boolean
      const deadline = Date.now() + exactWithin
      for (;;) {
        const all = await Promise.all(tiers.map(check))
        for (const [i, t] of tiers.entries()) {
          const d = all[i].differences
          report.differences[t.name] = d.length > DIFF_LINES ? [...d.slice(0, DIFF_LINES), `… and ${d.length - DIFF_LINES} more`] : d
        }
        // Queries answer the same from every coordinator (each holds the whole replicated state).
        const fogs = all.slice(0, coordinators.length)
        const disagree = coordinators.filter((_, i) => fogs[i].served !== fogs[0].served).map(c => c.id)
        report.coordinatorsAgree = disagree.length === 0
        agree = report.coordinatorsAgree
        exact = all.every(r => r.differences.length === 0)
        if ((exact && agree) || Date.now() >= deadline) {
          if (!agree) problem(`the coordinators answer differently: ${disagree.join(', ')} differ from ${coordinators[0].id}`)
          break
        }
        await sleep(250, signal)
      }
      if (!exact) {
        const off = tiers.filter(t => report.differences[t.name].length > 0).map(t => t.name)
        throw new ChaosError('chaos_failed', `not equal to the ground truth within ${exactWithin / 1000} s: ${off.join(', ')}`)
      }
      report.exactAfterMs = Date.now() - runEnd
      return { detail: `every coordinator, the cloud and every edge equal the ground truth (${report.readings.windows} merged windows), ${report.exactAfterMs} ms after the run`, value: undefined }
    })
  } catch (err) {
    if (err instanceof ChaosError && err.code === 'chaos_aborted') report.aborted = true
    problem((err as Error).message)
  } finally {
    stopping = true
    simAbort.abort()
    if (main !== undefined) await within(main, 5_000, 'the simulator to stop').catch(() => {})
    try {
      if (etcd !== undefined) report.etcdDbBytes = await etcd.dbSize()
    } catch {}
    await collectCounters(report, coordinators, edges, cloudUrl).catch(() => {})
    // Edges first (they commit their windows), then the coordinators, the cloud, the proxies, etcd.
    const stopAll = async (what: string, list: Array<NodeProcess | undefined>) => {
      const running = list.filter((n): n is NodeProcess => n !== undefined && n.alive)
      if (running.length === 0) return
      const clean = await Promise.all(running.map(n => n.stop()))
      log(`stopped ${what}${clean.every(Boolean) ? '' : ` (not cleanly: ${running.filter((_, i) => !clean[i]).map(n => n.name).join(', ')})`}`)
    }
    await stopAll('the edges', edges.map(e => e.node))
    await stopAll('the coordinators', coordinators.map(c => c.node))
    await stopAll('the cloud', [...nodes])
    await Promise.all(proxies.map(p => p.close()))
    // SIGKILL first: members stopped together keep campaigning for lost peers until stop()'s grace
    // period ends (5 s), and nothing of theirs is needed any more (what is kept is on disk already).
    if (etcd !== undefined) {
      const cluster = etcd
      await Promise.all(cluster.members.map(m => cluster.kill(m.name).catch(() => {})))
      await cluster.stop().catch(() => {})
    }
    report.durationMs = Date.now() - began
    report.verdict = report.problems.length === 0 ? 'pass' : 'fail'
    await Promise.all([...logFiles.values()].map(f => new Promise<void>(resolve => f.end(resolve))))
    if (keep) await writeFile(join(dir, 'report.json'), JSON.stringify(report, null, 2) + '\n').catch(() => {})
    else await rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => {})
    log(`verdict: ${report.verdict} in ${(report.durationMs / 1000).toFixed(1)} s`)
  }
  return report
}

/** A POST /v1/partials that only a coordinator taking partials would accept: its status and error code. */
async function probePartials (url: string): Promise<string> {
  // No windows and no watermarks: even if it were taken, it would change nothing the run checks.
  const { body } = encodeBatch({ sender: 'chaos-probe', role: 'edge', seq: 1, pipelines: [], watermarks: [], windows: [] })
  try {
    const res = await fetch(`${url}/v1/partials`, { method: 'POST', headers: { 'content-type': 'application/cbor' }, body, signal: AbortSignal.timeout(POLL_REQUEST_TIMEOUT) })
    const text = await res.text()
    let code = ''
    try { code = (JSON.parse(text) as { error?: { code?: string } }).error?.code ?? '' } catch {}
    return `${res.status}${code === '' ? '' : ` ${code}`}`
  } catch (err) {
    return `unreachable (${(err as Error).message})`
  }
}

/** A few counters of every node at the end, for the report. */
async function collectCounters (report: ChaosReport, coordinators: Coordinator[], edges: Edge[], cloud: string): Promise<void> {
  const read = async (base: string, names: Record<string, [string, string?]>) => {
    const out: Record<string, number> = {}
    for (const [key, [name, labels]] of Object.entries(names)) {
      try { out[key] = await metric(base, name, labels ?? '') } catch {}
    }
    return out
  }
  for (const c of coordinators) {
    if (c.node?.alive !== true) continue
    report.counters[c.id] = await read(c.url, {
      shardMapVersion: ['fogmesh_cluster_shard_map_version'],
      commits: ['fogmesh_cluster_commits_total'],
      fenced: ['fogmesh_cluster_fenced_total'],
      unavailable: ['fogmesh_cluster_unavailable_total']
    })
  }
  for (const e of edges) {
    if (!e.node.alive) continue
    report.counters[e.id] = await read(e.http, {
      failovers: ['fogmesh_failovers_total'],
      misrouted: ['fogmesh_batches_failed_total', '{target="fog",reason="misrouted"}'],
      outboxItems: ['fogmesh_outbox_items']
    })
  }
  if (cloud !== '') report.counters.cloud = await read(cloud, { edgeBatches: ['fogmesh_batches_received_total', '{role="edge"}'], fogBatches: ['fogmesh_batches_received_total', '{role="fog"}'] })
}

/**
 * The upstream bench's TLS run: what mutual TLS on every link costs. The same mesh as the upstream
 * part (two `fogmesh edge`s → `fogmesh fog --cloud` → `fogmesh cloud`, fed over MQTT by this process,
 * 1 s windows closing every 1.1545 s), once in plain HTTP and once on mutual TLS (each node with its
 * own certificate of a site CA made for the run with server/shell/certs.ts, the fog and the cloud asking for
 * client certificates), in interleaved rounds (plain then TLS, TLS then plain, …) so that a machine
 * getting busier or quieter weighs on both alike. No recording proxy here: it would end the TLS links.
 *
 * Each round publishes LATENCY_WINDOWS + CPU_WINDOWS windows:
 * - close-to-final latency of the first LATENCY_WINDOWS at the fog and at the cloud, polling both APIs
 *   as the upstream part does (over https in the TLS rounds, one kept-alive connection per tier);
 * - then, polling stopped, CPU time per partial batch over the rest: CPU (user + system, all threads)
 *   of the four node processes from when the polls stopped until the last window closed plus a drain,
 *   divided by the batches the fog and the cloud accepted meanwhile (fogmesh_batches_received_total).
 *   Without the polls, so that the figure is the cost of the links, not of serving the bench's polls.
 *
 * Reported: per mode, the medians over rounds of each round's median latency and of its CPU per batch;
 * and the ratios TLS/plain of those medians.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { Agent as HttpAgent, get as httpGet } from 'node:http'
import type { IncomingMessage } from 'node:http'
import { Agent as HttpsAgent, get as httpsGet } from 'node:https'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { connectAsync } from 'mqtt'
import type { MqttClient } from 'mqtt'
import { createCa, issueNodeCert } from '../server/shell/certs.ts'
import type { Role } from '../server/shell/certs.ts'
import { cpuTimes, median, metricValue, REPO_DIR, spawnNode, stopChild } from './lib.ts'
import type { Child } from './lib.ts'
import { CLOSE_EVERY, distribution, EDGES, LATENESS, pipelinesYaml, publishPaced, watchFinals } from './upstream.ts'
import type { Distribution } from './upstream.ts'
import { makeReadings } from './upstream-workload.ts'

const WINDOW_SECONDS = 1
const LATENCY_WINDOWS = 8
const CPU_WINDOWS = 8
/** After the last close, how long the CPU phase goes on: the last windows travel up and are acked. */
const DRAIN_MS = 1_500

export type Mode = 'plain' | 'tls'

export interface TlsRound {
  mode: Mode
  /** Median close-to-final latency of the round's windows, ms. */
  latencyMs: { fog: number | null, cloud: number | null }
  /** CPU time of the node processes per accepted batch, µs: all four, and per tier (summing to all). */
  cpuUsPerBatch: { all: number, edges: number, fog: number, cloud: number }
  /** Batches the fog and the cloud accepted during the CPU phase, and its length. */
  batches: number
  cpuPhaseSeconds: number
  warnings: string[]
}

export interface ModeSummary {
  /** Medians over rounds. */
  latencyMs: { fog: number | null, cloud: number | null }
  cpuUsPerBatch: { all: number, edges: number, fog: number, cloud: number }
  batchesPerSecond: number
  /** Every window of every round, pooled. */
  fog: Distribution | null
  cloud: Distribution | null
}

export interface UpstreamTlsResults {
  windowSeconds: number
  latencyWindows: number
  cpuWindows: number
  rounds: TlsRound[]
  plain: ModeSummary
  tls: ModeSummary
  /** TLS / plain of the medians above. */
  ratio: { latencyFog: number | null, latencyCloud: number | null, cpuPerBatch: number }
  warnings: string[]
}

interface Site {
  ca: string
  node: (name: string) => { cert: string, key: string }
}

async function makeSite (dir: string): Promise<Site> {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const ca = await createCa({ name: 'fogmesh bench CA' })
  writeFileSync(join(dir, 'ca.crt'), ca.cert)
  const files = new Map<string, { cert: string, key: string }>()
  const roles: Array<[string, Role]> = [['bench-cloud', 'cloud'], ['bench-fog', 'fog'], ...Array.from({ length: EDGES }, (_, i): [string, Role] => [`bench-edge-${i + 1}`, 'edge'])]
  for (const [id, role] of roles) {
    const issued = await issueNodeCert(ca, { role, id })
    const f = { cert: join(dir, `${id}.crt`), key: join(dir, `${id}.key`) }
    writeFileSync(f.key, issued.key, { mode: 0o600 })
    writeFileSync(f.cert, issued.cert)
    files.set(id, f)
  }
  return { ca: join(dir, 'ca.crt'), node: id => files.get(id)! }
}

/** GETs over one kept-alive connection per tier, https verified by the site CA or plain http. */
function getter (mode: Mode, ca: Buffer): { get: (url: string) => Promise<string>, close: () => void } {
  const agent = mode === 'tls' ? new HttpsAgent({ keepAlive: true, maxSockets: 1, ca }) : new HttpAgent({ keepAlive: true, maxSockets: 1 })
  const get = async (url: string): Promise<string> => await new Promise((resolve, reject) => {
    const done = (res: IncomingMessage): void => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { body += d })
      res.on('end', () => res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${url}: HTTP ${res.statusCode}`)))
      res.on('error', reject)
    }
    const req = mode === 'tls' ? httpsGet(url, { agent: agent as HttpsAgent }, done) : httpGet(url, { agent }, done)
    req.setTimeout(5_000, () => req.destroy(new Error(`GET ${url}: timeout`)))
    req.on('error', reject)
  })
  return { get, close: () => agent.destroy() }
}

async function startMesh (dir: string, mode: Mode, site: Site): Promise<{ children: Child[], fog: string, cloud: string, mqtt: string[] }> {
  const pipelines = join(dir, 'pipelines.yaml')
  const bin = join(REPO_DIR, 'bin', 'fogmesh.js')
  const common = (id: string, merge: boolean) => {
    const f = site.node(id)
    const tls = mode === 'plain' ? [] : ['--tls-cert', f.cert, '--tls-key', f.key, '--tls-ca', site.ca, ...merge ? ['--tls-client-ca', site.ca] : []]
    return ['--id', id, '--http-port', '0', '--data-dir', join(dir, id), '--pipelines', pipelines, ...tls]
  }
  const ready = /^ready \w+ \S+ http=(\S+)(?: mqtt=(\S+))?/
  const children: Child[] = []
  // Each tier needs the URL of the one above it: the cloud first, then the fog, then the edges.
  const cloud = spawnNode('cloud', bin, ['cloud', ...common('bench-cloud', true)])
  children.push(cloud)
  const c = await cloud.line(ready, 30_000)
  const fog = spawnNode('fog', bin, ['fog', ...common('bench-fog', true), '--cloud', c[1]])
  children.push(fog)
  const f = await fog.line(ready, 30_000)
  const edges = Array.from({ length: EDGES }, (_, i) => spawnNode(`edge-${i + 1}`, bin, ['edge', ...common(`bench-edge-${i + 1}`, false), '--mqtt-port', '0', '--fog', f[1]]))
  children.push(...edges)
  const e = await Promise.all(edges.map(async child => await child.line(ready, 30_000)))
  return { children, fog: f[1], cloud: c[1], mqtt: e.map(m => m[2]) }
}

interface Samples {
  fog: number[]
  cloud: number[]
}

async function runRound (workDir: string, round: number, mode: Mode, site: Site, ca: Buffer, keys: number, pollMs: number): Promise<{ round: TlsRound, samples: Samples }> {
  const windowMs = WINDOW_SECONDS * 1000
  const windows = LATENCY_WINDOWS + CPU_WINDOWS
  const speed = windowMs / CLOSE_EVERY
  const dir = join(workDir, `round-${round}-${mode}`)
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'pipelines.yaml'), pipelinesYaml(WINDOW_SECONDS))
  const origin = Math.ceil(Date.now() / 60_000) * 60_000
  const readings = makeReadings({ keys, edges: EDGES, windowMs, windows, lateness: LATENESS, origin, seed: round })
  const starts = Array.from({ length: windows }, (_, j) => origin + j * windowMs)
  const ends = starts.map(s => s + windowMs)
  const measuredStarts = starts.slice(0, LATENCY_WINDOWS)
  const warnings: string[] = []
  const clients: MqttClient[] = []
  const http = getter(mode, ca)
  let mesh: Awaited<ReturnType<typeof startMesh>> | undefined
  try {
    mesh = await startMesh(dir, mode, site)
    for (const [i, url] of mesh.mqtt.entries()) {
      const client = await connectAsync(url, { clientId: `bench-tls-${i}-${process.pid}`, clean: true, reconnectPeriod: 0, connectTimeout: 10_000 })
      client.on('error', err => warnings.push(`${mode} round ${round}: MQTT ${url}: ${err.message}`))
      clients.push(client)
    }
    await sleep(300)
    const pids = mesh.children.map(c => c.pid)
    const cpu = () => pids.map(pid => cpuTimes(pid).process)
    const batches = async () => {
      let n = 0
      for (const tier of [mesh!.fog, mesh!.cloud]) n += metricValue(await http.get(`${tier}/metrics`), 'fogmesh_batches_received_total') ?? 0
      return n
    }

    const began = performance.now()
    const deadline = () => began + (LATENCY_WINDOWS + 2) * CLOSE_EVERY + 15_000
    const publishing = publishPaced(clients, readings, origin, speed, ends)
    let published = false
    void publishing.then(() => { published = true }, () => {})
    const lastMeasured = ends[LATENCY_WINDOWS - 1]
    const [fogFinal, cloudFinal] = await Promise.all([mesh.fog, mesh.cloud].map(async tier => await watchFinals(tier, measuredStarts, keys, lastMeasured, pollMs, deadline, http.get)))
    // The CPU phase: from the end of the polls to the last close plus the drain.
    const batchesBefore = await batches()
    const cpuBefore = cpu()
    const phaseBegan = performance.now()
    if (published) warnings.push(`${mode} round ${round}: the latency windows took the whole run; no CPU phase`)
    const closedAt = await publishing
    await sleep(DRAIN_MS)
    const cpuAfter = cpu()
    const phaseSeconds = (performance.now() - phaseBegan) / 1000
    const batchesAfter = await batches()

    const since = (at: number | undefined, j: number) => at === undefined ? null : at - closedAt[j]
    const fogSamples = measuredStarts.map((start, j) => since(fogFinal.get(start), j)).filter(x => x !== null)
    const cloudSamples = measuredStarts.map((start, j) => since(cloudFinal.get(start), j)).filter(x => x !== null)
    if (fogSamples.length < LATENCY_WINDOWS) warnings.push(`${mode} round ${round}: ${fogSamples.length} of ${LATENCY_WINDOWS} windows final at the fog in time`)
    if (cloudSamples.length < LATENCY_WINDOWS) warnings.push(`${mode} round ${round}: ${cloudSamples.length} of ${LATENCY_WINDOWS} windows final at the cloud in time`)
    const n = batchesAfter - batchesBefore
    const used = cpuAfter.map((ms, i) => ms - cpuBefore[i])
    const us = (ms: number) => n > 0 ? Math.round(ms * 1000 / n) : NaN
    const [cloudMs, fogMs, ...edgeMs] = used
    const latency = (xs: number[]) => xs.length > 0 ? r1(median(xs)) : null
    return {
      round: {
        mode,
        latencyMs: { fog: latency(fogSamples), cloud: latency(cloudSamples) },
        cpuUsPerBatch: { all: us(used.reduce((a, b) => a + b, 0)), edges: us(edgeMs.reduce((a, b) => a + b, 0)), fog: us(fogMs), cloud: us(cloudMs) },
        batches: n,
        cpuPhaseSeconds: r1(phaseSeconds),
        warnings
      },
      samples: { fog: fogSamples, cloud: cloudSamples }
    }
  } finally {
    http.close()
    await Promise.all(clients.map(async c => { try { await c.endAsync(true) } catch {} }))
    if (mesh !== undefined) {
      await Promise.all(mesh.children.slice(2).map(async c => await stopChild(c)))
      await stopChild(mesh.children[1])
      await stopChild(mesh.children[0])
    }
  }
}

const r1 = (x: number) => Math.round(x * 10) / 10
const r2 = (x: number) => Math.round(x * 100) / 100

function summarize (rounds: TlsRound[], samples: Samples[]): ModeSummary {
  const med = (xs: Array<number | null>) => {
    const known = xs.filter(x => x !== null && Number.isFinite(x)) as number[]
    return known.length === 0 ? null : median(known)
  }
  const cpu = (k: keyof TlsRound['cpuUsPerBatch']) => Math.round(med(rounds.map(r => r.cpuUsPerBatch[k])) ?? NaN)
  const latency = (tier: 'fog' | 'cloud') => { const m = med(rounds.map(r => r.latencyMs[tier])); return m === null ? null : r1(m) }
  return {
    latencyMs: { fog: latency('fog'), cloud: latency('cloud') },
    cpuUsPerBatch: { all: cpu('all'), edges: cpu('edges'), fog: cpu('fog'), cloud: cpu('cloud') },
    batchesPerSecond: r1(med(rounds.map(r => r.batches / r.cpuPhaseSeconds)) ?? NaN),
    fog: distribution(samples.flatMap(s => s.fog)),
    cloud: distribution(samples.flatMap(s => s.cloud))
  }
}

export interface UpstreamTlsOptions {
  workDir: string
  /** Pairs of rounds (one plain, one TLS). */
  pairs: number
  keys: number
  pollMs: number
  log: (line: string) => void
}

export async function runUpstreamTlsBench (o: UpstreamTlsOptions): Promise<UpstreamTlsResults> {
  const workDir = join(o.workDir, 'upstream-tls')
  const site = await makeSite(join(workDir, 'site'))
  const ca = readFileSync(site.ca)
  o.log(`upstream, TLS against plain: the same mesh without proxies, ${o.pairs} pairs of interleaved rounds; each ${LATENCY_WINDOWS} windows ` +
    `for close-to-final latency (polled), then ${CPU_WINDOWS} for CPU per batch (not polled); ${WINDOW_SECONDS} s windows, ${o.keys} keys`)
  const rounds: TlsRound[] = []
  const samples: Samples[] = []
  for (let pair = 0; pair < o.pairs; pair++) {
    const order: Mode[] = pair % 2 === 0 ? ['plain', 'tls'] : ['tls', 'plain']
    for (const mode of order) {
      const { round: r, samples: s } = await runRound(workDir, rounds.length, mode, site, ca, o.keys, o.pollMs)
      rounds.push(r)
      samples.push(s)
      o.log(`  round ${rounds.length} ${mode.padEnd(5)}: close-to-final median fog ${fmt(r.latencyMs.fog)} ms, cloud ${fmt(r.latencyMs.cloud)} ms; ` +
        `cpu per batch ${r.cpuUsPerBatch.all} µs (edges ${r.cpuUsPerBatch.edges}, fog ${r.cpuUsPerBatch.fog}, cloud ${r.cpuUsPerBatch.cloud}) over ${r.batches} batches in ${r.cpuPhaseSeconds} s`)
      for (const w of r.warnings) o.log(`  warning: ${w}`)
    }
  }
  const of = (mode: Mode) => summarize(rounds.filter(r => r.mode === mode), samples.filter((_, i) => rounds[i].mode === mode))
  const plain = of('plain')
  const tls = of('tls')
  const ratio = (a: number | null, b: number | null) => a === null || b === null || b === 0 ? null : r2(a / b)
  return {
    windowSeconds: WINDOW_SECONDS,
    latencyWindows: LATENCY_WINDOWS,
    cpuWindows: CPU_WINDOWS,
    rounds,
    plain,
    tls,
    ratio: {
      latencyFog: ratio(tls.latencyMs.fog, plain.latencyMs.fog),
      latencyCloud: ratio(tls.latencyMs.cloud, plain.latencyMs.cloud),
      cpuPerBatch: ratio(tls.cpuUsPerBatch.all, plain.cpuUsPerBatch.all) ?? NaN
    },
    warnings: rounds.flatMap(r => r.warnings)
  }
}

function fmt (x: number | null): string {
  return x === null ? 'n/a' : String(r1(x))
}

/** Rows for the bench's results table. */
export function upstreamTlsRows (u: UpstreamTlsResults): Array<[string, string]> {
  const mode = (m: ModeSummary) => `close-to-final fog ${fmt(m.latencyMs.fog)} ms, cloud ${fmt(m.latencyMs.cloud)} ms; cpu per batch ${m.cpuUsPerBatch.all} µs ` +
    `(edges ${m.cpuUsPerBatch.edges}, fog ${m.cpuUsPerBatch.fog}, cloud ${m.cpuUsPerBatch.cloud}), ${m.batchesPerSecond} batches/s`
  const pairs = u.rounds.length / 2
  return [
    ['upstream, plain', `${mode(u.plain)} (medians of ${pairs} rounds)`],
    ['upstream, mutual TLS', `${mode(u.tls)} (medians of ${pairs} rounds)`],
    ['upstream, TLS/plain', `close-to-final fog x${u.ratio.latencyFog ?? 'n/a'}, cloud x${u.ratio.latencyCloud ?? 'n/a'}; cpu per batch x${u.ratio.cpuPerBatch}`]
  ]
}

/**
 * The upstream part of `npm run bench` (`--only upstream` runs it alone): a real mesh of processes,
 * two `fogmesh edge`s → `fogmesh fog --cloud` → `fogmesh cloud`, with a recording proxy on each link
 * (bench/proxy.ts), fed over MQTT by this process. For a few window sizes it measures
 *
 * (a) bytes sent upstream per reading: the partial batches' bodies from the edges to the fog (and from
 *     the fog to the cloud), divided by the readings, next to what forwarding the same readings raw
 *     would take (their MQTT payloads and packets, and per edge and window a JSON or CBOR array of them);
 * (b) close-to-final latency: for each window, from its close at the edges (the moment the reading
 *     that took the last edge's watermark past the window's end was published) to its result being
 *     final at the fog and at the cloud, polling both APIs.
 *
 * Event time runs faster than the wall clock, so that each run closes a window about every second
 * whatever its size. The window batches are the same as in real time (one per edge and window close),
 * but not the watermark-only batches: a shipper sends one whenever the watermark moved since the last
 * acknowledged one (after an ack at once, else at its 1 s idle pace), so their number follows the
 * readings' wall-clock pace, not the windows. Bytes are therefore reported as measured, and as in real
 * time: the window batches plus the watermark batches per reading of the run closest to real time
 * (the 1 s windows, at x0.87).
 *
 * The close period is 1.1545 s, not 1 s: the edges flush closed windows every 250 ms, and a period in
 * step with that would give every window the same wait for the flush; this one spreads the closes over
 * every phase of the tick.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { connectAsync } from 'mqtt'
import type { MqttClient } from 'mqtt'
import { getText, median, REPO_DIR, spawnNode, stopChild } from './lib.ts'
import type { Child } from './lib.ts'
import { startRecordingProxy } from './proxy.ts'
import type { Crossing, RecordingProxy } from './proxy.ts'
import { makeReadings, rawSizes } from './upstream-workload.ts'
import type { RawSizes, Reading } from './upstream-workload.ts'

export const PIPELINE = 'up'
export const EDGES = 2
export const LATENESS = 1_000
/** Wall-clock time between window closes, ms (see above). */
export const CLOSE_EVERY = 1_154.5

export interface UpstreamOptions {
  workDir: string
  quick: boolean
  log: (line: string) => void
  /** Window sizes to run, seconds. */
  windowSeconds?: number[]
  keys?: number
  /** Windows measured per size. */
  windows?: number
  /** How often the fog and the cloud are polled, ms. */
  pollMs?: number
}

export function pipelinesYaml (windowSeconds: number): string {
  return `pipelines:
  - name: ${PIPELINE}
    from: sensors/+room/temperature
    timestamp: ts
    key: device
    window: { tumbling: ${windowSeconds}s }
    lateness: ${LATENESS / 1000}s
    # The window after the last measured one must not close on its own while the bench looks.
    idle: 1m
    # Event time runs up to 52 times the wall clock, so the last windows are 12 minutes ahead of it.
    max-future: 1h
    select:
      n: count()
      mean: avg(value)
      low: min(value)
      high: max(value)
      p95: percentile(value, 0.95)
      rooms: distinct(room)
`
}

export interface Distribution {
  n: number
  median: number
  p99: number
  max: number
}

/** Nearest-rank percentiles, ms (one decimal). */
export function distribution (xs: number[]): Distribution | null {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  const rank = (q: number) => s[Math.max(0, Math.ceil(q * s.length) - 1)]
  const r = (x: number) => Math.round(x * 10) / 10
  return { n: s.length, median: r(median(s)), p99: r(rank(0.99)), max: r(s[s.length - 1]) }
}

function round2 (x: number): number {
  return Math.round(x * 100) / 100
}

function known (xs: Array<number | null>): number[] {
  return xs.filter(x => x !== null)
}

interface Link {
  bytes: number
  headerBytes: number
  batches: number
  windowBatches: number
  watermarkBatches: number
  windowBatchBytes: number
  watermarkBatchBytes: number
  refused: number
}

/** Bytes per reading on one link. */
export interface LinkPerReading {
  /** Batches carrying windows. */
  windowBatches: number
  /** Watermark-only batches, measured at this run's pace. */
  watermarkBatches: number
  /** Watermark-only batches at the real-time pace (estimated, see the top of this file). */
  watermarkBatchesRealTime: number
  /** The two above: what the link carries per reading in real time. */
  realTime: number
  /** Everything measured, at this run's pace. */
  measured: number
  /** Request lines and headers, measured (not in the figures above). */
  httpHeaders: number
}

function linkTotals (crossings: Crossing[]): Link {
  const l: Link = { bytes: 0, headerBytes: 0, batches: 0, windowBatches: 0, watermarkBatches: 0, windowBatchBytes: 0, watermarkBatchBytes: 0, refused: 0 }
  for (const c of crossings) {
    l.bytes += c.bytes
    l.headerBytes += c.headerBytes
    l.batches++
    if (c.status !== 200) l.refused++
    if (c.windows > 0) {
      l.windowBatches++
      l.windowBatchBytes += c.bytes
    } else {
      l.watermarkBatches++
      l.watermarkBatchBytes += c.bytes
    }
  }
  return l
}

export interface UpstreamRun {
  windowSeconds: number
  /** Event time per wall-clock time. */
  speed: number
  keys: number
  edges: number
  windows: number
  readings: number
  readingsPerWindowPerKey: number
  /** Bytes per reading. */
  perReading: {
    /** Edges to the fog: the partials. */
    partials: LinkPerReading
    fogToCloud: LinkPerReading
    /** The same readings forwarded raw. */
    raw: RawSizes
  }
  edgeToFog: Link
  fogToCloud: Link
  latencyMs: { fog: Distribution | null, cloud: Distribution | null, batchAtFog: Distribution | null }
  /** Per window, ms; null where the window was not seen final. */
  samplesMs: { fog: Array<number | null>, cloud: Array<number | null>, batchAtFog: Array<number | null> }
  warnings: string[]
}

async function startMesh (dir: string, edgeFog: RecordingProxy, fogCloud: RecordingProxy): Promise<{ children: Child[], fog: string, cloud: string, mqtt: string[] }> {
  const pipelines = join(dir, 'pipelines.yaml')
  const bin = join(REPO_DIR, 'bin', 'fogmesh.js')
  const common = (id: string) => ['--id', id, '--http-port', '0', '--data-dir', join(dir, id), '--pipelines', pipelines]
  const cloud = spawnNode('cloud', bin, ['cloud', ...common('bench-cloud')])
  const fog = spawnNode('fog', bin, ['fog', ...common('bench-fog'), '--cloud', fogCloud.url])
  const edges = Array.from({ length: EDGES }, (_, i) => spawnNode(`edge-${i + 1}`, bin, ['edge', ...common(`bench-edge-${i + 1}`), '--mqtt-port', '0', '--fog', edgeFog.url]))
  const children = [cloud, fog, ...edges]
  const ready = /^ready \w+ \S+ http=(\S+)(?: mqtt=(\S+))?/
  const [c, f, ...e] = await Promise.all(children.map(async child => await child.line(ready, 30_000)))
  fogCloud.setTarget(c[1])
  edgeFog.setTarget(f[1])
  return { children, fog: f[1], cloud: c[1], mqtt: e.map(m => m[2]) }
}

/**
 * Publishes the readings on the event-time schedule (origin at `t0`, `speed` event ms per wall ms) and
 * notes, per window end, when each edge got its first reading at or past end + lateness.
 */
export async function publishPaced (clients: MqttClient[], readings: Reading[], origin: number, speed: number, ends: number[]): Promise<number[]> {
  const closedAt = ends.map(() => new Array<number>(clients.length).fill(NaN))
  const next = new Array<number>(clients.length).fill(0)
  const t0 = performance.now()
  let i = 0
  while (i < readings.length) {
    const due = origin + (performance.now() - t0) * speed
    while (i < readings.length && readings[i].ts <= due) {
      const r = readings[i++]
      clients[r.edge].publish(r.topic, r.payload, { qos: 0 })
      const now = performance.now()
      while (next[r.edge] < ends.length && r.ts >= ends[next[r.edge]] + LATENESS) closedAt[next[r.edge]++][r.edge] = now
    }
    await sleep(2)
  }
  return closedAt.map(perEdge => Math.max(...perEdge))
}

/**
 * Polls a tier's results until every window (all keys final) is seen final or the deadline passes;
 * a window's time is the middle between the poll that first saw it and the one before.
 */
export async function watchFinals (url: string, starts: number[], keys: number, end: number, pollMs: number, deadline: () => number,
  get: (url: string) => Promise<string> = getText): Promise<Map<number, number>> {
  const seen = new Map<number, number>()
  let before = performance.now()
  while (seen.size < starts.length && performance.now() < deadline()) {
    const from = starts.find(s => !seen.has(s))!
    const asked = performance.now()
    let text: string
    try {
      text = await get(`${url}/v1/aggregates/${PIPELINE}?from=${from}&to=${end}&limit=10000`)
    } catch {
      await sleep(pollMs)
      continue
    }
    const finals = new Map<number, number>()
    for (const r of (JSON.parse(text) as { results: Array<{ start: string, final: boolean }> }).results) {
      if (!r.final) continue
      const start = Date.parse(r.start)
      finals.set(start, (finals.get(start) ?? 0) + 1)
    }
    for (const [start, n] of finals) if (n >= keys && !seen.has(start)) seen.set(start, (before + asked) / 2)
    before = asked
    const wait = asked + pollMs - performance.now()
    if (wait > 0) await sleep(wait)
  }
  return seen
}

async function runOne (o: Required<UpstreamOptions>, windowSeconds: number): Promise<UpstreamRun> {
  const windowMs = windowSeconds * 1000
  const speed = windowMs / CLOSE_EVERY
  const dir = join(o.workDir, `upstream-${windowSeconds}s`)
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'pipelines.yaml'), pipelinesYaml(windowSeconds))
  // Event time near the wall clock (results far in the past would fall to retention), on a boundary.
  const origin = Math.ceil(Date.now() / 60_000) * 60_000
  const readings = makeReadings({ keys: o.keys, edges: EDGES, windowMs, windows: o.windows, lateness: LATENESS, origin, seed: windowSeconds })
  const measured = readings.filter(r => r.measured).length
  const starts = Array.from({ length: o.windows }, (_, j) => origin + j * windowMs)
  const ends = starts.map(s => s + windowMs)
  const end = ends[ends.length - 1]

  const edgeFog = await startRecordingProxy()
  const fogCloud = await startRecordingProxy()
  const clients: MqttClient[] = []
  let mesh: Awaited<ReturnType<typeof startMesh>> | undefined
  const warnings: string[] = []
  try {
    mesh = await startMesh(dir, edgeFog, fogCloud)
    for (const [i, url] of mesh.mqtt.entries()) {
      const client = await connectAsync(url, { clientId: `bench-up-${i}-${process.pid}`, clean: true, reconnectPeriod: 0, connectTimeout: 10_000 })
      // A lost connection shows as windows that never become final (warned about below), not as a crash.
      client.on('error', err => warnings.push(`${windowSeconds}s windows: MQTT ${url}: ${err.message}`))
      clients.push(client)
    }
    // Let start-up traffic (the first heartbeats) pass, then count from a clean slate.
    await sleep(300)
    edgeFog.crossings.length = 0
    fogCloud.crossings.length = 0

    let lastClose = Infinity
    const deadline = () => lastClose + 15_000
    const fogWatch = watchFinals(mesh.fog, starts, o.keys, end, o.pollMs, deadline)
    const cloudWatch = watchFinals(mesh.cloud, starts, o.keys, end, o.pollMs, deadline)
    const closedAt = await publishPaced(clients, readings, origin, speed, ends)
    lastClose = Math.max(...closedAt)
    const [fogFinal, cloudFinal] = await Promise.all([fogWatch, cloudWatch])
    // Whatever the edges send right after their last window (a watermark) belongs to the run too.
    await sleep(300)
    const ef = edgeFog.crossings.slice()
    const fc = fogCloud.crossings.slice()

    const since = (at: number | undefined, j: number) => at === undefined ? null : Math.round((at - closedAt[j]) * 10) / 10
    const fogSamples = starts.map((start, j) => since(fogFinal.get(start), j))
    const cloudSamples = starts.map((start, j) => since(cloudFinal.get(start), j))
    // When the last edge's batch with the window reached the fog (its proxy): the part of the fog's latency spent at the edges.
    const batchSamples = starts.map((start, j) => {
      const arrivals = new Map<string, number>()
      for (const x of ef) if (x.starts.includes(start) && !arrivals.has(x.sender)) arrivals.set(x.sender, x.at)
      return arrivals.size === EDGES ? since(Math.max(...arrivals.values()), j) : null
    })
    if (fogFinal.size < starts.length) warnings.push(`${windowSeconds}s windows: ${fogFinal.size} of ${starts.length} final at the fog within 15 s of the last close`)
    if (cloudFinal.size < starts.length) warnings.push(`${windowSeconds}s windows: ${cloudFinal.size} of ${starts.length} final at the cloud within 15 s of the last close`)

    const edgeFogLink = linkTotals(ef)
    const fogCloudLink = linkTotals(fc)
    if (edgeFogLink.refused + fogCloudLink.refused > 0) warnings.push(`${windowSeconds}s windows: ${edgeFogLink.refused + fogCloudLink.refused} batches refused upstream`)
    const per = (bytes: number) => round2(bytes / measured)
    // The real-time figures are filled in once every run is done (see the top of this file).
    const perLink = (l: Link): LinkPerReading => ({
      windowBatches: per(l.windowBatchBytes),
      watermarkBatches: per(l.watermarkBatchBytes),
      watermarkBatchesRealTime: NaN,
      realTime: NaN,
      measured: per(l.bytes),
      httpHeaders: per(l.headerBytes)
    })
    const raw = rawSizes(readings, windowMs)
    return {
      windowSeconds,
      speed: Math.round(speed * 100) / 100,
      keys: o.keys,
      edges: EDGES,
      windows: o.windows,
      readings: measured,
      readingsPerWindowPerKey: windowSeconds,
      perReading: {
        partials: perLink(edgeFogLink),
        fogToCloud: perLink(fogCloudLink),
        raw: {
          mqttPayload: per(raw.mqttPayload),
          mqttPacket: per(raw.mqttPacket),
          json: per(raw.json),
          cbor: per(raw.cbor),
          cborDeflated: per(raw.cborDeflated)
        }
      },
      edgeToFog: edgeFogLink,
      fogToCloud: fogCloudLink,
      latencyMs: { fog: distribution(known(fogSamples)), cloud: distribution(known(cloudSamples)), batchAtFog: distribution(known(batchSamples)) },
      samplesMs: { fog: fogSamples, cloud: cloudSamples, batchAtFog: batchSamples },
      warnings
    }
  } finally {
    await Promise.all(clients.map(async c => { try { await c.endAsync(true) } catch {} }))
    if (mesh !== undefined) {
      // Edges first, as in a real stop; then the tiers above them.
      await Promise.all(mesh.children.slice(2).map(async c => await stopChild(c)))
      await Promise.all(mesh.children.slice(0, 2).reverse().map(async c => await stopChild(c)))
    }
    await edgeFog.close()
    await fogCloud.close()
  }
}

export interface UpstreamResults {
  date: string
  durationSeconds: number
  keys: number
  edges: number
  windows: number
  pollMs: number
  lateness: number
  /** The run whose watermark batches per reading stand for real time. */
  realTimeWatermarksFrom: string
  runs: UpstreamRun[]
  /** Over every run's windows. */
  latencyMs: { fog: Distribution | null, cloud: Distribution | null, batchAtFog: Distribution | null }
  warnings: string[]
}

export async function runUpstreamBench (options: UpstreamOptions): Promise<UpstreamResults> {
  const o: Required<UpstreamOptions> = {
    windowSeconds: [1, 10, 60],
    keys: 100,
    windows: options.quick ? 6 : 12,
    pollMs: 20,
    ...options
  }
  const began = performance.now()
  o.log(`upstream: ${EDGES} edges -> fog -> cloud (real processes, a recording proxy on each link), ${o.keys} keys reading once per second of event time, ` +
    `${o.windows} windows per size, one closing every ${CLOSE_EVERY / 1000} s; fog and cloud polled every ${o.pollMs} ms`)
  const runs: UpstreamRun[] = []
  for (const w of o.windowSeconds) {
    const r = await runOne(o, w)
    runs.push(r)
    const p = r.perReading
    o.log(`  ${String(w).padStart(2)} s windows, event time x${r.speed}: ${r.readings.toLocaleString('en-US')} readings; edges -> fog ${r.edgeToFog.windowBatches} window and ` +
      `${r.edgeToFog.watermarkBatches} watermark batches, ${p.partials.windowBatches} + ${p.partials.watermarkBatches} B/reading; ` +
      `close-to-final fog ${latency(r.latencyMs.fog)}, cloud ${latency(r.latencyMs.cloud)}`)
    for (const w of r.warnings) o.log(`  warning: ${w}`)
  }
  const paced = runs.reduce((a, b) => Math.abs(Math.log(a.speed)) <= Math.abs(Math.log(b.speed)) ? a : b)
  for (const r of runs) {
    for (const link of ['partials', 'fogToCloud'] as const) {
      const l = r.perReading[link]
      l.watermarkBatchesRealTime = paced.perReading[link].watermarkBatches
      l.realTime = round2(l.windowBatches + l.watermarkBatchesRealTime)
    }
  }
  const pooled = (tier: 'fog' | 'cloud' | 'batchAtFog') => distribution(runs.flatMap(r => known(r.samplesMs[tier])))
  return {
    date: new Date().toISOString(),
    durationSeconds: Math.round((performance.now() - began) / 100) / 10,
    keys: o.keys,
    edges: EDGES,
    windows: o.windows,
    pollMs: o.pollMs,
    lateness: LATENESS,
    realTimeWatermarksFrom: `${paced.windowSeconds} s windows, x${paced.speed}`,
    runs,
    latencyMs: { fog: pooled('fog'), cloud: pooled('cloud'), batchAtFog: pooled('batchAtFog') },
    warnings: runs.flatMap(r => r.warnings)
  }
}

function latency (d: Distribution | null): string {
  return d === null ? 'n/a' : `median ${d.median} ms, p99 ${d.p99} ms`
}

/** Rows for the bench's results table. */
export function upstreamRows (u: UpstreamResults): Array<[string, string]> {
  const perSize = (tier: 'fog' | 'cloud') => u.runs.map(r => `${r.windowSeconds} s ${r.latencyMs[tier]?.median ?? 'n/a'}/${r.latencyMs[tier]?.p99 ?? 'n/a'}`).join(', ')
  return [
    ['upstream', `${u.edges} edges -> fog -> cloud, ${u.keys} keys at 1 reading/s, ${u.windows} windows per size; bytes per reading`],
    ...u.runs.flatMap((r): Array<[string, string]> => {
      const { partials: p, fogToCloud: f, raw } = r.perReading
      return [
        [`${r.windowSeconds} s windows, upstream`, `partials ${p.windowBatches} + watermarks ~${p.watermarkBatchesRealTime} = ~${p.realTime} in real time ` +
          `(measured at x${r.speed}: ${p.measured}); fog -> cloud ~${f.realTime} (${f.measured})`],
        [`${r.windowSeconds} s windows, raw`, `MQTT payload ${raw.mqttPayload} (packet ${raw.mqttPacket}), JSON ${raw.json}, CBOR ${raw.cbor}, CBOR deflated ${raw.cborDeflated}`]
      ]
    }),
    ['close-to-final, fog', `${latency(u.latencyMs.fog)} (n=${u.latencyMs.fog?.n ?? 0}; median/p99 by window size: ${perSize('fog')}; ` +
      `the last edge's batch reached the fog after a median ${u.latencyMs.batchAtFog?.median ?? 'n/a'} ms)`],
    ['close-to-final, cloud', `${latency(u.latencyMs.cloud)} (n=${u.latencyMs.cloud?.n ?? 0}; median/p99 by window size: ${perSize('cloud')})`]
  ]
}

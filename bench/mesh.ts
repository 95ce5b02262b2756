/**
 * The mesh part of `npm run bench` (`--only mesh` runs it alone), and the process it measures.
 *
 *   node --expose-gc bench/mesh.ts [nodes] [seconds]
 *
 * starts N mesh nodes in this process on loopback, joined through one bootstrap peer, and prints as
 * JSON: the time until every node's view holds every other node alive; once the connections have
 * settled, the gossip bytes per node per second over `seconds` at the default heartbeat interval,
 * next to the floor (every other node's heartbeat received once, each in an RPC of its own: what any
 * way of spreading them costs at least); the longest a node went without a heartbeat from a peer;
 * and the memory the nodes add to the process.
 *
 * The bench runs that in a child process, then, in each round, measures the RSS of three more: this
 * script doing nothing (`--bare`), with the mesh code loaded (`--loaded`), and running one node joined
 * to the mesh (`--join`), so the memory a node adds is a difference of processes measured the same way
 * in the same run, not of one process's RSS over time.
 */
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import type { Message } from '@libp2p/gossipsub'
import type { MeshNode as MeshNodeType } from '../server/mesh/mesh-node.ts'
import { median, rssMiB, scriptPath, spawnNode, stopChild } from './lib.ts'
import type { Child } from './lib.ts'

const NODES = 20
/**
 * Measured this long after every view is complete: nodes go on dialling peers they learnt of until
 * they have `minPeers` connections, and each new connection sends an extra heartbeat each way.
 */
const SETTLE_MS = 6_000
const CONVERGE_TIMEOUT_MS = 60_000
/** The memory subjects run with the young generation the fogmesh launcher gives Node (bin/fogmesh.js). */
const SUBJECT_NODE_ARGS = ['--expose-gc', '--max-semi-space-size=4']

const mib = (n: number): number => Math.round(n / 1048576 * 10) / 10
const avg = (xs: number[]): number => xs.reduce((s, x) => s + x, 0) / xs.length

const heartbeat = () => ({
  http: 'http://127.0.0.1:8080',
  sw: '0.1.0',
  uptime: 1000,
  rate: 120.5,
  outbox: 0,
  pipelines: [{ name: 'room-temp', version: 3, watermark: Date.now() }, { name: 'humidity', version: 1, watermark: Date.now() }]
})

/** The mesh code, loaded only by the processes that run it, and the mesh key: a new one, or the one the mesh printed. */
async function meshModules (keyText?: string) {
  const [{ generateSwarmKey, parseSwarmKey }, { GOSSIP_TUNING, MESH_DEFAULTS, MeshNode }] = await Promise.all([
    import('../core/mesh/swarm-key.ts'),
    import('../server/mesh/mesh-node.ts')
  ])
  const text = keyText ?? generateSwarmKey()
  return { key: parseSwarmKey(text, 'bench key'), keyHex: text.trim().split('\n').at(-1)!, GOSSIP_TUNING, MESH_DEFAULTS, MeshNode }
}

/** Bytes of one RPC carrying this message alone (protobuf: a 1-byte tag and a length before each field). */
function rpcBytes (msg: Message): number {
  const field = (n: number): number => 1 + varintBytes(n) + n
  if (msg.type !== 'signed') return 0 // the mesh takes signed heartbeats only
  const message = field(msg.from.toMultihash().bytes.length) + field(msg.data.length) + field(8) +
    field(Buffer.byteLength(msg.topic)) + field(msg.signature.length)
  return field(message)
}

function varintBytes (n: number): number {
  let bytes = 1
  while (n >= 128) {
    n = Math.floor(n / 128)
    bytes++
  }
  return bytes
}

export interface MeshRun {
  nodes: number
  seconds: number
  heartbeatIntervalMs: number
  /** The gossipsub options the nodes ran with, beside gossipsub's defaults. */
  gossipTuning: Record<string, unknown>
  startAllMs: number
  convergeMs: number
  bytesPerNodePerSecond: {
    sentAvg: number
    receivedAvg: number
    /** Every other node's heartbeat received once, each in an RPC of its own. */
    floorAvg: number
    bootstrapSent: number
    bootstrapReceived: number
    edgeSentMax: number
  }
  /** Heartbeats each node received, new ones only, per second. */
  heartbeatsPerNodePerSecond: number
  /** The longest any node went without a new heartbeat from any peer during the window, ms. */
  longestGapMs: number
  connectionsAvg: number
  meshPeersAvg: number
  rssMiB: { bare: number, oneNode: number, firstNodeAdds: number, allNodes: number, perExtraNode: number }
}

/** Starts `count` nodes, waits for every view to be complete, and measures `seconds` of gossip. */
async function runMesh (count: number, seconds: number): Promise<{ run: MeshRun, nodes: MeshNodeType[], keyHex: string }> {
  const { key, keyHex, GOSSIP_TUNING, MESH_DEFAULTS, MeshNode } = await meshModules()
  const topic = MESH_DEFAULTS.topic
  global.gc?.()
  const rss0 = process.memoryUsage().rss
  const first = new MeshNode({ id: 'n0', role: 'fog', meshKey: key, heartbeat: () => ({ ...heartbeat(), fog: { leader: 'n0', shardMapVersion: 4, endpoints: ['http://127.0.0.1:8081'] } }) })
  await first.start()
  await sleep(500)
  global.gc?.()
  const rss1 = process.memoryUsage().rss
  const nodes = [first]
  const start = Date.now()
  for (let i = 1; i < count; i++) {
    const n = new MeshNode({ id: `n${i}`, role: 'edge', meshKey: key, bootstrap: [first.multiaddr()], heartbeat })
    await n.start()
    nodes.push(n)
  }
  const started = Date.now() - start
  await untilComplete(nodes, count - 1, start)
  const converged = Date.now() - start
  global.gc?.()
  const rssN = process.memoryUsage().rss
  await sleep(SETTLE_MS)

  // What each node must receive at least, and how long each pair goes between heartbeats, from the
  // messages gossipsub hands each node (one per message, duplicates left out).
  let measuring = false
  const floor = nodes.map(() => 0)
  const heard = nodes.map(() => new Map<string, number>())
  let longestGap = 0
  nodes.forEach((n, i) => {
    n.libp2p!.services.pubsub.addEventListener('message', evt => {
      if (!measuring || evt.detail.topic !== topic) return
      const now = Date.now()
      floor[i] += rpcBytes(evt.detail)
      const from = evt.detail.type === 'signed' ? evt.detail.from.toString() : ''
      const last = heard[i].get(from)
      if (last !== undefined) longestGap = Math.max(longestGap, now - last)
      heard[i].set(from, now)
    })
  })
  const before = nodes.map(n => ({ sent: n.stats.bytesSent, received: n.stats.bytesReceived, heartbeats: n.stats.heartbeatsReceived }))
  const windowStart = Date.now()
  measuring = true
  await sleep(seconds * 1000)
  measuring = false
  const end = Date.now()
  // A peer not heard from since the window began, or for the window's last stretch, counts too.
  heard.forEach((h, i) => {
    for (const n of nodes) if (n !== nodes[i]) longestGap = Math.max(longestGap, end - (h.get(n.peerId) ?? windowStart))
  })
  const per = nodes.map((n, i) => ({
    sent: (n.stats.bytesSent - before[i].sent) / seconds,
    received: (n.stats.bytesReceived - before[i].received) / seconds,
    heartbeats: (n.stats.heartbeatsReceived - before[i].heartbeats) / seconds
  }))
  // getMeshPeers is on gossipsub's class, not on the interface the package exports.
  const meshPeers = (n: MeshNodeType): number => (n.libp2p!.services.pubsub as unknown as { getMeshPeers: (t: string) => string[] }).getMeshPeers(topic).length
  const run: MeshRun = {
    nodes: count,
    seconds,
    heartbeatIntervalMs: first.options.heartbeatInterval,
    gossipTuning: { ...GOSSIP_TUNING },
    startAllMs: started,
    convergeMs: converged,
    bytesPerNodePerSecond: {
      sentAvg: Math.round(avg(per.map(p => p.sent))),
      receivedAvg: Math.round(avg(per.map(p => p.received))),
      floorAvg: Math.round(avg(floor) / seconds),
      bootstrapSent: Math.round(per[0].sent),
      bootstrapReceived: Math.round(per[0].received),
      edgeSentMax: Math.round(Math.max(...per.slice(1).map(p => p.sent)))
    },
    heartbeatsPerNodePerSecond: Math.round(avg(per.map(p => p.heartbeats)) * 10) / 10,
    longestGapMs: longestGap,
    connectionsAvg: Math.round(avg(nodes.map(n => n.libp2p!.getConnections().length)) * 10) / 10,
    meshPeersAvg: Math.round(avg(nodes.map(meshPeers)) * 10) / 10,
    rssMiB: { bare: mib(rss0), oneNode: mib(rss1), firstNodeAdds: mib(rss1 - rss0), allNodes: mib(rssN), perExtraNode: mib((rssN - rss1) / (count - 1)) }
  }
  return { run, nodes, keyHex }
}

async function untilComplete (nodes: MeshNodeType[], peers: number, since: number): Promise<void> {
  while (!nodes.every(n => n.view().peers.filter(p => p.state === 'alive').length >= peers)) {
    if (Date.now() - since > CONVERGE_TIMEOUT_MS) throw new Error(`no convergence in ${CONVERGE_TIMEOUT_MS / 1000} s`)
    await sleep(20)
  }
}

/** Resolves on `stop` or when stdin closes: the bench reads this process's RSS in between. */
async function untilStop (): Promise<void> {
  for await (const line of createInterface({ input: process.stdin })) if (line.trim() === 'stop') return
}

/**
 * This file as a process: the measurement above (`--serve` keeps the mesh up after it, printing one
 * `result` line and the bootstrap peer's address), or one of the memory subjects, which print `ready`
 * once they hold still.
 */
async function main (): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      serve: { type: 'boolean' },
      bare: { type: 'boolean' },
      loaded: { type: 'boolean' },
      join: { type: 'string' },
      key: { type: 'string' },
      peers: { type: 'string' }
    }
  })
  if (values.bare === true || values.loaded === true) {
    if (values.loaded === true) await meshModules()
    global.gc?.()
    process.stdout.write('ready\n')
    await untilStop()
    return
  }
  if (values.join !== undefined) {
    const { key, MeshNode } = await meshModules(`/key/swarm/psk/1.0.0/\n/base16/\n${values.key ?? ''}`)
    const node = new MeshNode({ id: 'joined', role: 'edge', meshKey: key, bootstrap: [values.join], heartbeat })
    const start = Date.now()
    await node.start()
    await untilComplete([node], Number(values.peers ?? NODES), start)
    const converged = Date.now() - start
    await sleep(SETTLE_MS)
    global.gc?.()
    process.stdout.write(`ready converged=${converged}\n`)
    await untilStop()
    await node.stop()
    return
  }
  const { run, nodes, keyHex } = await runMesh(Number(positionals[0] ?? NODES), Number(positionals[1] ?? 20))
  if (values.serve === true) {
    process.stdout.write(`result ${JSON.stringify(run)}\nmesh ${nodes[0].multiaddr()} key=${keyHex}\n`)
    await untilStop()
  } else {
    process.stdout.write(JSON.stringify(run, null, 1) + '\n')
  }
  for (const n of nodes) await n.stop()
}

// ---------------------------------------------------------------------------------------------
// The bench part

export interface MeshOptions {
  quick: boolean
  log: (line: string) => void
  rounds?: number
}

type Subject = 'bare' | 'loaded' | 'node'

export interface MeshResults {
  date: string
  durationSeconds: number
  nodes: number
  rounds: number
  secondsPerRound: number
  heartbeatIntervalMs: number
  gossipTuning: Record<string, unknown>
  convergeMs: { median: number, perRound: number[] }
  gossipBytesPerNodePerSecond: { sent: number, received: number, floor: number, receivedOverFloor: number, bootstrapSent: number, edgeSentMax: number, perRound: number[] }
  heartbeatsPerNodePerSecond: number
  /** The longest any node went without a heartbeat from a peer, over every round, ms. */
  longestGapMs: number
  connectionsAvg: number
  meshPeersAvg: number
  memoryMiB: {
    /** RSS of each process, medians of the rounds. */
    bare: number
    loaded: number
    node: number
    /** What the mesh code adds to a process, what one running node adds to that, and both. */
    code: number
    nodeState: number
    nodeAdds: number
    nodeOverBare: number
    /** In the measured process, what each node beyond the first added (median of the rounds). */
    perExtraNodeInProcess: number
    joinConvergeMs: number
    perRound: Array<Record<Subject, number>>
  }
  warnings: string[]
}

export async function runMeshBench (options: MeshOptions): Promise<MeshResults> {
  const rounds = options.rounds ?? (options.quick ? 3 : 5)
  const seconds = options.quick ? 10 : 20
  const began = performance.now()
  options.log(`mesh: ${NODES} nodes in one process on loopback, joined through one bootstrap peer; ${rounds} rounds of: convergence, ${seconds} s of gossip, ` +
    'then the RSS of a bare process, one with the mesh code loaded and one running a node joined to the mesh')
  const runs: MeshRun[] = []
  const memory: Array<Record<Subject, number>> = []
  const joins: number[] = []
  const warnings: string[] = []
  for (let round = 1; round <= rounds; round++) {
    const mesh = spawnNode('mesh', scriptPath('mesh.ts'), ['--serve', String(NODES), String(seconds)], ['--expose-gc'])
    try {
      const m = await mesh.line(/^result (.*)$/, (CONVERGE_TIMEOUT_MS + seconds * 1000) * 2)
      const run = JSON.parse(m[1]) as MeshRun
      runs.push(run)
      const [, addr, key] = await mesh.line(/^mesh (\S+) key=(\S+)/, 5_000)
      const rss = {} as Record<Subject, number>
      for (const subject of ['bare', 'loaded', 'node'] as const) {
        const args = subject === 'node' ? ['--join', addr, '--key', key, '--peers', String(NODES)] : [`--${subject}`]
        const { mib: size, converged } = await subjectRss(spawnNode(`mesh ${subject}`, scriptPath('mesh.ts'), args, SUBJECT_NODE_ARGS))
        rss[subject] = size
        if (converged !== undefined) joins.push(converged)
      }
      memory.push(rss)
      const b = run.bytesPerNodePerSecond
      options.log(`  round ${round}: converged in ${run.convergeMs} ms; gossip per node ${b.sentAvg} B/s sent, ${b.receivedAvg} received (floor ${b.floorAvg}), ` +
        `bootstrap peer ${b.bootstrapSent} sent; longest gap ${run.longestGapMs} ms; RSS bare ${rss.bare.toFixed(1)}, loaded ${rss.loaded.toFixed(1)}, ` +
        `one node ${rss.node.toFixed(1)} MiB (joined in ${joins.at(-1)} ms)`)
      // Expiry is 3 intervals and 4 s: a gap past 2 intervals already means heartbeats were lost.
      if (run.longestGapMs > 2 * run.heartbeatIntervalMs) warnings.push(`mesh round ${round}: a node went ${run.longestGapMs} ms without a heartbeat from a peer`)
    } finally {
      mesh.send('stop\n')
      await stopChild(mesh)
    }
  }
  const med = (f: (r: MeshRun) => number): number => median(runs.map(f))
  const memMed = (s: Subject): number => round1(median(memory.map(r => r[s])))
  const sent = med(r => r.bytesPerNodePerSecond.sentAvg)
  const received = med(r => r.bytesPerNodePerSecond.receivedAvg)
  const floor = med(r => r.bytesPerNodePerSecond.floorAvg)
  const [bare, loaded, node] = [memMed('bare'), memMed('loaded'), memMed('node')]
  return {
    date: new Date().toISOString(),
    durationSeconds: Math.round((performance.now() - began) / 100) / 10,
    nodes: NODES,
    rounds,
    secondsPerRound: seconds,
    heartbeatIntervalMs: runs[0].heartbeatIntervalMs,
    gossipTuning: runs[0].gossipTuning,
    convergeMs: { median: med(r => r.convergeMs), perRound: runs.map(r => r.convergeMs) },
    gossipBytesPerNodePerSecond: {
      sent,
      received,
      floor,
      receivedOverFloor: Math.round(received / floor * 100) / 100,
      bootstrapSent: med(r => r.bytesPerNodePerSecond.bootstrapSent),
      edgeSentMax: med(r => r.bytesPerNodePerSecond.edgeSentMax),
      perRound: runs.map(r => r.bytesPerNodePerSecond.sentAvg)
    },
    heartbeatsPerNodePerSecond: med(r => r.heartbeatsPerNodePerSecond),
    longestGapMs: Math.max(...runs.map(r => r.longestGapMs)),
    connectionsAvg: med(r => r.connectionsAvg),
    meshPeersAvg: med(r => r.meshPeersAvg),
    memoryMiB: {
      bare,
      loaded,
      node,
      code: round1(loaded - bare),
      nodeState: round1(node - loaded),
      nodeAdds: round1(node - bare),
      nodeOverBare: Math.round(node / bare * 1000) / 1000,
      perExtraNodeInProcess: med(r => r.rssMiB.perExtraNode),
      joinConvergeMs: median(joins),
      perRound: memory.map(r => ({ bare: round1(r.bare), loaded: round1(r.loaded), node: round1(r.node) }))
    },
    warnings
  }
}

/** Waits for a memory subject to hold still, reads its RSS and stops it. */
async function subjectRss (child: Child): Promise<{ mib: number, converged: number | undefined }> {
  try {
    const m = await child.line(/^ready(?: converged=(\d+))?/, CONVERGE_TIMEOUT_MS + SETTLE_MS)
    return { mib: rssMiB(child.pid), converged: m[1] === undefined ? undefined : Number(m[1]) }
  } finally {
    child.send('stop\n')
    await stopChild(child)
  }
}

function round1 (x: number): number {
  return Math.round(x * 10) / 10
}

/** Rows for the bench's results table. */
export function meshRows (m: MeshResults): Array<[string, string]> {
  const g = m.gossipBytesPerNodePerSecond
  const mem = m.memoryMiB
  return [
    ['mesh', `${m.nodes} nodes in one process on loopback, a heartbeat every ${m.heartbeatIntervalMs / 1000} s, ${m.rounds} rounds x ${m.secondsPerRound} s, medians`],
    ['mesh convergence', `${m.convergeMs.median} ms until every view is complete (rounds ${m.convergeMs.perRound.join(' ')})`],
    ['mesh gossip per node', `${g.sent} B/s sent, ${g.received} received; floor ${g.floor} (each other heartbeat once): ${g.receivedOverFloor}x; ` +
      `bootstrap peer ${g.bootstrapSent} sent, busiest other ${g.edgeSentMax}; ${m.meshPeersAvg} mesh peers of ${m.connectionsAvg} connections; rounds ${g.perRound.join(' ')}`],
    ['mesh delivery', `${m.heartbeatsPerNodePerSecond} heartbeats/s per node, longest gap between two from one peer ${m.longestGapMs} ms`],
    ['mesh memory, RSS', `one node joined to the mesh ${mem.node} MiB | mesh code loaded ${mem.loaded} | bare ${mem.bare}: a node adds ${mem.nodeAdds} MiB ` +
      `(code ${mem.code}, the node ${mem.nodeState}), node/bare ${(mem.nodeOverBare * 100).toFixed(1)}%; each node beyond the first in the 20-node process ${mem.perExtraNodeInProcess}`]
  ]
}

if (import.meta.main) await main()

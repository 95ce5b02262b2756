/**
 * Quick mesh figures on loopback: time for N nodes joined through one bootstrap peer to see each other
 * (every view complete), gossip bytes per node per second at the default heartbeat interval, and the
 * memory one libp2p node adds to a bare Node process. `node bench/mesh.ts [nodes] [seconds]`
 */
import { generateSwarmKey, parseSwarmKey } from '../core/mesh/swarm-key.ts'
import { MeshNode } from '../server/mesh/mesh-node.ts'

const count = Number(process.argv[2] ?? 20)
const seconds = Number(process.argv[3] ?? 20)
const key = parseSwarmKey(generateSwarmKey(), 'bench key')
const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms))
const mib = (n: number) => (n / 1048576).toFixed(1)
const heartbeat = () => ({ http: 'http://127.0.0.1:8080', sw: '0.1.0', uptime: 1000, rate: 120.5, outbox: 0, pipelines: [{ name: 'room-temp', version: 3, watermark: Date.now() }, { name: 'humidity', version: 1, watermark: Date.now() }] })

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
while (!nodes.every(n => n.view().peers.filter(p => p.state === 'alive').length === count - 1)) {
  if (Date.now() - start > 60_000) throw new Error('no convergence in 60 s')
  await sleep(20)
}
const converged = Date.now() - start
global.gc?.()
const rssN = process.memoryUsage().rss
const before = nodes.map(n => ({ sent: n.stats.bytesSent, received: n.stats.bytesReceived }))
await sleep(seconds * 1000)
const per = nodes.map((n, i) => ({ sent: (n.stats.bytesSent - before[i].sent) / seconds, received: (n.stats.bytesReceived - before[i].received) / seconds }))
const avg = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length
const edges = per.slice(1)
console.log(JSON.stringify({
  nodes: count,
  startAllMs: started,
  convergeMs: converged,
  bytesPerNodePerSecond: { sentAvg: Math.round(avg(per.map(p => p.sent))), receivedAvg: Math.round(avg(per.map(p => p.received))), bootstrapSent: Math.round(per[0].sent), bootstrapReceived: Math.round(per[0].received), edgeSentMax: Math.round(Math.max(...edges.map(p => p.sent))) },
  connections: nodes.map(n => n.libp2p!.getConnections().length),
  rssMiB: { bare: mib(rss0), oneNode: mib(rss1), firstNodeAdds: mib(rss1 - rss0), allNodes: mib(rssN), perExtraNode: mib((rssN - rss1) / (count - 1)) }
}, null, 1))
for (const n of nodes) await n.stop()

/**
 * A fog coordinator whose commit of a final window etcd took but never answered, in-process against a
 * real etcd reached through a proxy that can hold etcd's answers back: the pass fails at the deadline
 * (503 no_quorum), the retries are refused (the shard map moved meanwhile), and the window becomes
 * final at the coordinator only when the watch brings that first commit. The cloud must get the window
 * all the same, and the "to forward" mark must go once it has.
 */
import { connect, createServer } from 'node:net'
import type { Socket } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Etcd3 } from 'etcd3'
import t from 'tap'
import type { Batch } from '../core/upstream/batch.ts'
import { fogOptions } from '../fog-coordinator/config.ts'
import { FogCoordinator } from '../fog-coordinator/fog.ts'
import { silentLogger } from '../server/shell/log.ts'
import { startEtcdCluster } from '../simulators/etcd-cluster.ts'
import { fetchMetric, fetchResults } from './helpers/ground-truth.ts'
import { postAccepted } from './helpers/partials.ts'
import { tmpDir, waitFor } from './helpers/process.ts'
import { startReceiver } from './helpers/receiver.ts'
import { COUNT_SUM_DEF, countSumContribution } from './helpers/specs.ts'

const DEF = COUNT_SUM_DEF
const START = Date.UTC(2026, 0, 1)
/** A session window: its bounds are those of its readings, not a multiple of a size. */
const WINDOW = { pipeline: DEF.name, key: 'd7', start: START + 1_234, end: START + 4_321 }

/** A proxy to `target` that can hold what comes back from it (and let it through later, in order). */
async function holdingProxy (target: string): Promise<{ address: string, hold: () => void, release: () => void, close: () => Promise<void> }> {
  const [host, port] = target.split(':')
  const sockets = new Set<Socket>()
  let held: Array<() => void> | undefined
  const server = createServer(client => {
    const upstream = connect({ host, port: Number(port) })
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('error', () => {})
      s.on('close', () => { sockets.delete(s); client.destroy(); upstream.destroy() })
    }
    client.on('data', d => upstream.write(d))
    upstream.on('data', d => {
      if (held === undefined) client.write(d)
      else held.push(() => client.write(d))
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port: local } = server.address() as { port: number }
  return {
    address: `127.0.0.1:${local}`,
    hold: () => { held = [] },
    release: () => {
      const writes = held ?? []
      held = undefined
      for (const w of writes) w()
    },
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}

let seq = 0
function batch (windows: Batch['windows'], watermark: number): Batch {
  return { sender: 'e1', role: 'edge', seq: ++seq, pipelines: [DEF], watermarks: [{ pipeline: DEF.name, edge: 'e1', watermark }], windows }
}

t.test('a final commit etcd took but did not answer: the window still reaches the cloud, once, and its mark goes', { timeout: 60_000 }, async t => {
  const dir = await tmpDir('fogmesh-unanswered-')
  const etcd = await startEtcdCluster({ members: 1, dir: join(dir.path, 'etcd') })
  const proxy = await holdingProxy(etcd.endpoints[0])
  const cloud = await startReceiver()
  const client = new Etcd3({ hosts: etcd.members.map(m => m.clientUrl) })
  const fog = new FogCoordinator(fogOptions([
    '--id', 'f1', '--http-port', '0', '--data-dir', join(dir.path, 'f1'), '--etcd', proxy.address,
    // A long lease: holding etcd's answers back for a few seconds must not cost f1 its shards.
    '--lease-ttl', '10s', '--etcd-timeout', '1s', '--tick', '100ms', '--finalize-after', '60s',
    '--cloud', cloud.url, '--uplink-retry-max', '500ms'
  ]), [], silentLogger)
  t.teardown(async () => {
    proxy.release()
    await fog.stop().catch(() => {})
    client.close()
    await proxy.close()
    await cloud.close()
    await etcd.stop()
    await dir.cleanup()
  })
  await fog.start()
  const base = fog.node.httpUrl
  await waitFor(async () => fog.node.shards().status === 'ok' && fog.node.shards().owners.every(o => o === 'f1'), { timeoutMs: 15_000, message: 'f1 owning every shard' })
  // A coordinator finalizes nothing in its first 3 s (JOIN_GRACE in cluster-session.ts).
  await sleep(3_500)
  // The window, open: e1's watermark is not past its end.
  await postAccepted(base, batch([{ ...WINDOW, contributions: [countSumContribution('e1', [1, 2, 3], START + 2_000)] }], WINDOW.start))

  // Past its end, while etcd's answers are held: the pass commits it final (etcd takes it), and waits.
  proxy.hold()
  await postAccepted(base, batch([], WINDOW.end))
  const mark = `/fogmesh/f/${encodeURIComponent(DEF.name)}/`
  await waitFor(async () => (await client.getAll().prefix(mark).count()) === 1, { timeoutMs: 20_000, message: 'the final window and its mark in etcd' })
  // The map moves (same owners, a new revision): every commit from now on is fenced off, the retries too.
  const map = await client.get('/fogmesh/shardmap').string()
  await client.put('/fogmesh/shardmap').value(map!)
  // The deadline of the first commit passes: its pass failed, f1 knows nothing of its outcome.
  await waitFor(async () => ((await fetchMetric(base, 'fogmesh_cluster_unavailable_total')).get('') ?? 0) >= 1, { timeoutMs: 10_000, message: 'a commit without an answer' })
  // The cloud acknowledges a little later: clearing the mark needs etcd to take requests again (the
  // client sends nothing for a second after three failures in a row).
  cloud.delay = 2_000
  proxy.release()

  const forwarded = () => cloud.requests.flatMap(r => r.batch.windows).filter(w => w.key === WINDOW.key && w.final === 0)
  await waitFor(async () => forwarded().length > 0 ? true : undefined, { timeoutMs: 10_000, message: 'the window at the cloud' })
  await sleep(500)
  t.equal(forwarded().length, 1, 'once')
  const [w] = forwarded()
  t.same({ start: w.start, end: w.end, edges: w.contributions.map(c => c.edge) }, { start: WINDOW.start, end: WINDOW.end, edges: ['e1'] }, 'the window, final, with its contribution')
  await waitFor(async () => (await client.getAll().prefix(mark).count()) === 0, { timeoutMs: 10_000, message: 'the mark cleared once the cloud has it' })
  t.pass('the mark went once the cloud had the window')
  const final = (await fetchResults(base, DEF.name)).find(r => r.key === WINDOW.key)
  t.same(final && { final: final.final, values: final.values }, { final: true, values: { n: 3, total: 6 } }, 'final at the coordinator')
})

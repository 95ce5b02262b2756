// The etcd cluster and TCP proxy simulators against a real etcd: quorum loss and recovery, and a
// partition of one client through a cut proxy.
import t from 'tap'
import { Etcd3, GRPCDeadlineExceededError, GRPCUnavailableError } from 'etcd3'
import { startEtcdCluster } from '../simulators/etcd-cluster.ts'
import { startTcpProxy } from '../simulators/tcp-proxy.ts'

/** Short enough to keep the test quick, long enough for a put that has a quorum on a loaded CI box. */
const SHORT_DEADLINE_MS = 1500

async function put (client: Etcd3, key: string, value: string, deadlineMs = 5000): Promise<void> {
  await client.put(key).value(value).options({ deadline: Date.now() + deadlineMs })
}

// How a multi-host client reports a lost quorum depends on which host it tried last: the deadline
// on a live member without quorum, a refused connection to a dead one, or (after three failures on
// every host) cockatiel's BrokenCircuitError, which etcd3 does not export.
function isNoQuorumError (err: unknown): boolean {
  return err instanceof GRPCDeadlineExceededError || err instanceof GRPCUnavailableError ||
    (err instanceof Error && (err as { isBrokenCircuitError?: boolean }).isBrokenCircuitError === true)
}

// Right after a quorum comes back the client may still have a host circuit open or a channel
// reconnecting, so a write is retried for a while rather than expected to succeed first time.
async function putEventually (client: Etcd3, key: string, value: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      await put(client, key, value, 2000)
      return
    } catch (err) {
      if (Date.now() >= deadline) throw err
      await new Promise(resolve => setTimeout(resolve, 200))
    }
  }
}

t.test('a 3-member cluster survives one member down, loses quorum with two, recovers on restart', { timeout: 90_000 }, async t => {
  const cluster = await startEtcdCluster()
  t.teardown(() => cluster.stop())
  t.equal(cluster.members.length, 3)
  t.same(cluster.endpoints, cluster.members.map(m => m.endpoint))
  for (const m of cluster.members) {
    t.match(m.clientUrl, /^http:\/\/127\.0\.0\.1:\d+$/)
    t.equal(m.clientUrl, `http://${m.endpoint}`)
    t.ok(m.running, `${m.name} running`)
  }

  const client = new Etcd3({ hosts: cluster.members.map(m => m.clientUrl) })
  t.teardown(() => client.close())

  await put(client, 'k1', 'v1')
  t.equal(await client.get('k1').string(), 'v1')

  const [a, b] = cluster.members
  await cluster.kill(a.name)
  t.notOk(a.running, 'killed member is not running')
  await putEventually(client, 'k2', 'v2')
  t.equal(await client.get('k2').string(), 'v2', 'a put works with one member of three down')

  await cluster.kill(b.name)
  const err = await put(client, 'k3', 'v3', SHORT_DEADLINE_MS).then(() => undefined, (e: unknown) => e)
  t.ok(isNoQuorumError(err), `a put fails without a quorum (got ${String(err)})`)
  // The surviving member still answers, so through it alone the put can only run into its deadline.
  const survivor = new Etcd3({ hosts: cluster.members[2].clientUrl })
  t.teardown(() => survivor.close())
  const started = Date.now()
  const survivorErr = await put(survivor, 'k3', 'v3', SHORT_DEADLINE_MS).then(() => undefined, (e: unknown) => e)
  t.ok(survivorErr instanceof GRPCDeadlineExceededError, `the survivor's put runs into its deadline (got ${String(survivorErr)})`)
  t.ok(Date.now() - started < SHORT_DEADLINE_MS + 3000, 'and does not hang past it')
  survivor.close()
  await t.rejects(cluster.waitHealthy(1500), /no quorum/)

  // Concurrently: a restarted member only serves clients once it has rejoined, which needs the other.
  await Promise.all([cluster.restart(a.name), cluster.restart(b.name)])
  t.ok(a.running && b.running, 'restarted members are running')
  await cluster.waitHealthy()
  await putEventually(client, 'k4', 'v4')
  t.equal(await client.get('k1').string(), 'v1', 'data written before the outage is still there')
  t.equal(await client.get('k4').string(), 'v4')

  t.ok(await cluster.dbSize() > 0, 'dbSize reports a non-empty backend')

  client.close()
  await cluster.stop()
  await cluster.stop()
  t.ok(cluster.members.every(m => !m.running), 'stop() ends every member and is safe twice')
})

t.test('a cut TCP proxy partitions a client from etcd until healed', { timeout: 60_000 }, async t => {
  const cluster = await startEtcdCluster({ members: 1 })
  t.teardown(() => cluster.stop())
  const [host, port] = cluster.members[0].endpoint.split(':')
  const proxy = await startTcpProxy({ host, port: Number(port) })
  t.teardown(() => proxy.close())
  t.equal(proxy.address, `127.0.0.1:${proxy.port}`)

  const client = new Etcd3({ hosts: `http://${proxy.address}` })
  t.teardown(() => client.close())

  await put(client, 'p1', 'v1')
  t.equal(await client.get('p1').string(), 'v1', 'works through the proxy')

  proxy.cut()
  t.ok(proxy.isCut)
  await t.rejects(put(client, 'p2', 'v2', SHORT_DEADLINE_MS), 'a put fails while the proxy is cut')

  proxy.heal()
  t.notOk(proxy.isCut)
  await putEventually(client, 'p3', 'v3')
  t.equal(await client.get('p3').string(), 'v3', 'works again after heal')

  client.close()
  await proxy.close()
  await proxy.close()
})

/**
 * A fog coordinator of a cluster whose etcd is not reachable yet waits for it at start; a stop signal
 * meanwhile ends the wait: exit 0, the stop logged, no ready line, and nothing joined.
 */
import { join } from 'node:path'
import t from 'tap'
import { stopWhileStarting } from './helpers/stop-signal.ts'
import { freePort, tmpDir } from './helpers/process.ts'

t.setTimeout(60_000)

t.test('a stop signal while the fog waits for etcd: the start ends, exit 0 with a log line', async t => {
  const dir = await tmpDir('fogmesh-fog-start-')
  t.teardown(() => dir.cleanup())
  // A free port nobody listens on: etcd "down".
  const etcd = `127.0.0.1:${await freePort()}`
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    await stopWhileStarting(t, ['fog', '--id', `f-${signal}`, '--data-dir', join(dir.path, signal), '--etcd', etcd], 'cluster.etcd_unavailable', signal)
  }
})

/**
 * The mqtt sink of a fog, against a real Mosquitto: every final window of a run (edge fed by the
 * simulator, fog merging) is published as the HTTP API's result JSON, QoS 1, to results/{pipeline}/{key}
 * with the key made safe for one topic level, equal to the ground truth, also when the broker was down
 * while the windows were finalized (the fog queues them and catches up).
 */
import mqtt from 'mqtt'
import t from 'tap'
import type { ServedResult } from './helpers/ground-truth.ts'
import { startMosquitto } from './helpers/mosquitto.ts'
import type { Mosquitto } from './helpers/mosquitto.ts'
import { tmpDir, waitFor } from './helpers/process.ts'
import { compareTier, drained, feed, latest, servesTruth, sinkMetric, startEdgeWithSinks, startFogWithSinks, truthOf } from './helpers/sinks.ts'

t.test('a fog publishes every final window, also after the broker was down', async t => {
  // A persistent broker session keeps the watcher's QoS 1 messages across the broker's restart.
  const store = await tmpDir('fogmesh-mosquitto-store-')
  t.teardown(() => store.cleanup())
  const persistent = ['persistence true', `persistence_location ${store.path}/`]
  let broker: Mosquitto = await startMosquitto({ extraConfig: persistent })
  t.teardown(() => broker.stop())
  const port = broker.port

  const got: Array<{ topic: string, body: ServedResult & { pipeline: string } }> = []
  const watcher = await mqtt.connectAsync(broker.url, { clientId: 'sink-watcher', clean: false, reconnectPeriod: 200 })
  t.teardown(() => watcher.endAsync(true))
  watcher.on('message', (topic, payload) => got.push({ topic, body: JSON.parse(payload.toString()) }))
  await watcher.subscribeAsync('results/#', { qos: 1 })

  const fog = await startFogWithSinks(t, [{ name: 'bus', type: 'mqtt', url: `mqtt://127.0.0.1:${port}`, 'retry-max': '2s' }])
  const run = await startEdgeWithSinks(t, [], {}, ['--fog', fog.http])
  await broker.stop()
  const truth = await feed(t, run)
  await servesTruth(t, fog.http, run.specs, truth)
  t.ok(await sinkMetric(fog.http, 'pending', 'bus') > 0, 'final windows wait while the broker is down')

  broker = await startMosquitto({ port, extraConfig: persistent })
  const total = run.specs.reduce((n, s) => n + truthOf(truth, s.name).length, 0)
  await drained(fog.http, 'bus', total)
  await waitFor(() => latest(got.map(g => ({ ...g.body, key: `${g.body.pipeline}\0${g.body.key}` }))).length >= total, { timeoutMs: 20_000, message: `${total} windows at the watcher` })
  for (const spec of run.specs) {
    const mine = got.filter(g => g.body.pipeline === spec.name)
    t.same(compareTier(spec, latest(mine.map(g => g.body)), truthOf(truth, spec.name)), [], `${spec.name}: the published results equal the ground truth`)
    const wrongTopic = mine.filter(g => g.topic !== `results/${spec.name}/${g.body.key.replaceAll('/', '%2F')}`)
    t.same(wrongTopic.map(g => g.topic), [], `${spec.name}: one topic level per key`)
  }
  t.ok(got.some(g => g.topic.includes('%2F')), 'a key with a / stays one level (device-hopping keys are room/device)')
  t.equal(await sinkMetric(fog.http, 'errors_total', 'bus'), 0)
})

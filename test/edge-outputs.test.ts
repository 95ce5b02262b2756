/**
 * The registry of edge outputs: one entry per `emit:` kind and `sinks`, in commit order (the sinks'
 * queues before the outbox); the outputs one agent runs take windows and commit in that order, stop in
 * the reverse, and an output that commits on its own has the others commit after it, never itself again.
 * End to end (the store never ahead of the queues, across restarts) is in checkpoint*.test.ts and
 * sinks-*.test.ts.
 */
import t from 'tap'
import type { WindowOperator } from '../core/windows/operator.ts'
import type { WindowState } from '../core/windows/window.ts'
import type { EdgeOptions } from '../edge-agent/config.ts'
import type { EdgeOutput, OutputDefinition, OutputKind, OutputParts } from '../edge-agent/output.ts'
import { EdgeOutputs, OUTPUTS } from '../edge-agent/outputs.ts'
import { silentLogger } from '../server/shell/log.ts'
import { Metrics } from '../server/shell/metrics.ts'
import { PeerClient } from '../server/shell/peer-client.ts'
import type { WindowResult } from '../server/shell/results.ts'

t.setTimeout(10_000)

t.test('the registry lists every kind once, in commit order', async t => {
  t.same([...OUTPUTS.keys()], ['sinks', 'mqtt', 'sparkplug', 'upstream'])
})

t.test('outputs take windows and commit in list order, stop in the reverse; committed() commits the others', async t => {
  const calls: string[] = []
  const own = new Map<string, OutputParts>()
  const recording = (kind: OutputKind, made = true): OutputDefinition<EdgeOutput & { kind: string }> => ({
    kind,
    create (parts) {
      if (!made) return undefined
      own.set(kind, parts)
      return {
        kind,
        window: () => { calls.push(`window ${kind}`) },
        commit: () => { calls.push(`commit ${kind}`) },
        start: () => { calls.push(`start ${kind}`) },
        stop: async () => { calls.push(`stop ${kind}`) }
      }
    }
  })
  const sinks = recording('sinks')
  const upstream = recording('upstream')
  const client = new PeerClient()
  t.teardown(() => client.close())
  let storeCommits = 0
  const outputs = new EdgeOutputs({
    options: {} as unknown as EdgeOptions,
    discoverFog: false,
    log: silentLogger,
    metrics: new Metrics(),
    security: { client, clientTls: {} },
    source: { url: 'mqtt://127.0.0.1:1', start: async () => {}, publish: async () => {}, stop: async () => {} },
    operators: new Map(),
    committed: by => {
      outputs.commit(by)
      storeCommits++
    }
  }, [sinks, recording('mqtt', false), upstream])
  t.equal(outputs.get(upstream)?.kind, 'upstream', 'each definition\'s output, typed as it made it')
  t.equal(outputs.get(OUTPUTS.get('mqtt')!), undefined, 'none for a definition not in the set')

  outputs.start()
  outputs.window({} as WindowOperator, {} as WindowState, {} as WindowResult)
  outputs.commit()
  t.same(calls.splice(0), ['start sinks', 'start upstream', 'window sinks', 'window upstream', 'commit sinks', 'commit upstream'])

  // The shipper appended: the uplink says so, and everything else commits, the store last.
  own.get('upstream')!.committed()
  t.same(calls.splice(0), ['commit sinks'], 'the others commit, not the one that did')
  t.equal(storeCommits, 1)

  await outputs.stop()
  t.same(calls, ['stop upstream', 'stop sinks'])
})

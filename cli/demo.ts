/**
 * `fogmesh demo` (npm start): a local mesh in one command. For now an edge agent with its embedded
 * broker, fed in real time by the sensor simulator; Ctrl-C stops everything cleanly.
 */
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import { EdgeAgent } from '../edge-agent/agent.ts'
import { edgeOptions } from '../edge-agent/config.ts'
import { runSimulator } from '../simulators/sim.ts'

const EXAMPLE = fileURLToPath(new URL('../examples/pipelines.yaml', import.meta.url))

export async function demoCommand (argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'http-port': { type: 'string', default: '8081' },
      'mqtt-port': { type: 'string', default: '1883' },
      'data-dir': { type: 'string', default: join('data', 'demo') },
      pipelines: { type: 'string', default: EXAMPLE },
      devices: { type: 'string', default: '20' },
      help: { type: 'boolean', short: 'h' }
    }
  })
  if (values.help === true) {
    process.stdout.write('usage: fogmesh demo [--http-port N] [--mqtt-port N] [--data-dir DIR] [--pipelines FILE] [--devices N]\n')
    return 0
  }
  const specs = await loadPipelinesFile(values.pipelines)
  const options = edgeOptions(['--id', 'demo-edge-1', '--http-port', values['http-port'], '--mqtt-port', values['mqtt-port'], '--data-dir', join(values['data-dir'], 'edge-1')])
  const edge = new EdgeAgent(options, specs)
  try {
    await edge.start()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
    process.stderr.write('demo: a port is taken (another fogmesh or MQTT broker?); try --http-port 0 --mqtt-port 0\n')
    return 1
  }
  const stop = new AbortController()
  const sim = runSimulator({
    mqtt: [edge.mqttUrl],
    devices: Number(values.devices),
    rooms: 4,
    rate: 2,
    duration: 24 * 3_600_000,
    jitter: 1_000,
    speed: 1,
    seed: Date.now() % 100_000,
    signal: stop.signal
  }).catch((err: Error) => { if (!stop.signal.aborted) process.stderr.write(`demo: simulator stopped: ${err.message}\n`) })

  const http = edge.httpUrl
  process.stdout.write([
    edge.readyLine(),
    '',
    `fogmesh demo: an edge agent (${edge.mqttUrl}) with ${values.devices} simulated sensors publishing in real time.`,
    'Windows close every 10 seconds; then try:',
    '',
    `  npx fogmesh query ${http} room-temp`,
    `  curl '${http}/v1/aggregates/building-humidity?limit=5'`,
    `  curl ${http}/v1/pipelines`,
    `  curl ${http}/metrics`,
    '',
    'Ctrl-C stops it.',
    ''
  ].join('\n'))

  await new Promise<void>(resolve => {
    const onSignal = () => resolve()
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
  })
  process.stdout.write('\nstopping...\n')
  stop.abort()
  await sim
  await edge.stop()
  return 0
}

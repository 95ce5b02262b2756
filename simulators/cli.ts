/**
 * `fogmesh sim`: the seeded sensor simulator on the command line.
 */
import { parseArgs } from 'node:util'
import { parseDuration } from '../core/duration.ts'
import { ConfigError, FogmeshError } from '../core/errors.ts'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PayloadFormat } from '../core/pipeline/spec.ts'
import { SIM_DEFAULTS, SIM_FORMATS, SIM_SCENARIOS } from './options.ts'
import type { SimInput, SimScenario } from './options.ts'
import { runSimulator } from './sim.ts'

export const SIM_HELP = `usage: fogmesh sim [options]

Publishes seeded, simulated sensor readings over MQTT and can write the exact results the pipelines
must produce from them (the ground truth).

Devices and readings:
  --devices N            number of devices; device i is d<i> (default ${SIM_DEFAULTS.devices})
  --rooms N              number of rooms; device i is in room r<i % rooms> (default ${SIM_DEFAULTS.rooms})
  --rate R[,R…]          readings per second of event time per device, e.g. 0.1 for one every 10 s
                         and 0.0166667 for one a minute; with a list, device i reads at R[i % n]
                         (default ${SIM_DEFAULTS.rate})
  --duration D           event time covered, e.g. 30s, 5m (default 30s)
  --topic T              topic template, {room} and {device} substituted
                         (default ${SIM_DEFAULTS.topic})
  --format F             json | cbor | text | senml | sparkplug (default json)
                           json, cbor: {device, room, value, humidity, ts} with ts in epoch ms
                           text: just the value; no event time, room or device in the payload
                           senml: [{"bn":"<device>:","bt":<seconds>,"n":"temp","u":"Cel","v":<value>}];
                                  the room comes from the topic
                           sparkplug: Sparkplug B, group "sim", one Edge Node per room, one device
                                  per device: NBIRTH and DBIRTHs first, then alias-only DDATA on
                                  spBv1.0/sim/DDATA/<room>/<device> (metrics temperature, humidity);
                                  --topic is not used
  --seed N               seed; the same options and seed give the same messages (default ${SIM_DEFAULTS.seed})
  --scenario S           a realistic preset; options given explicitly override it:
                           slow: one reading per 10 s or per minute (alternate devices), 10m
                           pause: 2 readings/s, every sensor silent 30 s after each minute, 5m
                           mixed: keys at 2/s, 1 per 10 s and 1 per minute on one pipeline, 5m
                           clock: 1% of readings dated 1h ahead (rejected as future_timestamp), 2m

Time:
  --start T              event-time origin, ISO-8601 or epoch ms; default: now
  --speed X              event time per wall-clock time; 0 = as fast as the brokers ack
                         (default 0 with --start, else 1: real time)

Trouble:
  --jitter D             shift each event time back by U(0, D): out of order (default 0)
  --late-share P         share of readings whose event time is pushed back by --late-by (default 0)
  --late-by D            how far late readings are pushed back (default 60s)
  --duplicate-share P    share of messages published twice (default 0)
  --malformed-share P    share of readings replaced by a malformed payload (default 0)
  --pause-share P        share of devices that pause (default 0); they pause together
  --pause-after D        a pausing device publishes for D (default 1m) ...
  --pause-for D          ... then is silent for D (default 30s), and so on; its event times stay
                         real time, nothing is sent during a pause
  --future-share P       share of readings dated --future-by ahead: a device with a bad clock (default 0)
  --future-by D          how far ahead (default 1h); beyond a pipeline's max-future they are rejected

MQTT:
  --mqtt URL             a broker; repeat for several. Device i publishes to broker i % brokers
                         over one connection per broker (default ${SIM_DEFAULTS.mqtt[0]})
  --qos N                0, 1 or 2 (default ${SIM_DEFAULTS.qos})

Ground truth:
  --pipelines FILE       the pipelines to compute the truth for
  --truth FILE           write the truth JSON there (needs --pipelines)
  --dry-run              generate and write the truth, publish nothing
  --tolerance D          how far a real arrival may stray from the schedule (default 1s); readings
                         whose fate (idle, late, max-future) would change within it are listed in
                         the truth's warnings

  -h, --help             this help
`

function number (flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  const v = Number(text)
  if (text.trim() === '' || !Number.isFinite(v)) throw new ConfigError(`--${flag} must be a number, not "${text}"`)
  return v
}

function numbers (flag: string, text: string | undefined): number[] | undefined {
  if (text === undefined) return undefined
  return text.split(',').map(part => number(flag, part) as number)
}

function duration (flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  try {
    return parseDuration(text)
  } catch (err) {
    throw new ConfigError(`--${flag}: ${(err as Error).message}`)
  }
}

/** ISO-8601 or epoch milliseconds. */
export function parseStart (text: string): number {
  const ms = /^\d+$/.test(text.trim()) ? Number(text) : Date.parse(text)
  if (!Number.isFinite(ms)) throw new ConfigError(`--start must be an ISO-8601 time or epoch milliseconds, not "${text}"`)
  return ms
}

/** Turns command-line arguments into simulator input (pipelines not loaded yet). */
export function parseSimArgs (argv: string[]): { help: boolean, input: SimInput, pipelinesFile?: string } {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      devices: { type: 'string' },
      rooms: { type: 'string' },
      rate: { type: 'string' },
      duration: { type: 'string' },
      topic: { type: 'string' },
      format: { type: 'string' },
      start: { type: 'string' },
      speed: { type: 'string' },
      seed: { type: 'string' },
      jitter: { type: 'string' },
      'late-share': { type: 'string' },
      'late-by': { type: 'string' },
      'duplicate-share': { type: 'string' },
      'malformed-share': { type: 'string' },
      'pause-share': { type: 'string' },
      'pause-after': { type: 'string' },
      'pause-for': { type: 'string' },
      'future-share': { type: 'string' },
      'future-by': { type: 'string' },
      scenario: { type: 'string' },
      tolerance: { type: 'string' },
      mqtt: { type: 'string', multiple: true },
      qos: { type: 'string' },
      pipelines: { type: 'string' },
      truth: { type: 'string' },
      'dry-run': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' }
    }
  })
  if (values.format !== undefined && !SIM_FORMATS.includes(values.format as PayloadFormat)) {
    throw new ConfigError(`--format must be one of ${SIM_FORMATS.join(', ')}, not "${values.format}"`)
  }
  if (values.scenario !== undefined && !Object.hasOwn(SIM_SCENARIOS, values.scenario)) {
    throw new ConfigError(`--scenario must be one of ${Object.keys(SIM_SCENARIOS).join(', ')}, not "${values.scenario}"`)
  }
  const qos = number('qos', values.qos)
  if (qos !== undefined && qos !== 0 && qos !== 1 && qos !== 2) throw new ConfigError(`--qos must be 0, 1 or 2, not ${qos}`)
  const input: SimInput = {
    devices: number('devices', values.devices),
    rooms: number('rooms', values.rooms),
    rate: numbers('rate', values.rate),
    duration: duration('duration', values.duration),
    topic: values.topic,
    format: values.format as PayloadFormat | undefined,
    start: values.start === undefined ? undefined : parseStart(values.start),
    speed: number('speed', values.speed),
    seed: number('seed', values.seed),
    jitter: duration('jitter', values.jitter),
    lateShare: number('late-share', values['late-share']),
    lateBy: duration('late-by', values['late-by']),
    duplicateShare: number('duplicate-share', values['duplicate-share']),
    malformedShare: number('malformed-share', values['malformed-share']),
    pauseShare: number('pause-share', values['pause-share']),
    pauseAfter: duration('pause-after', values['pause-after']),
    pauseFor: duration('pause-for', values['pause-for']),
    futureShare: number('future-share', values['future-share']),
    futureBy: duration('future-by', values['future-by']),
    scenario: values.scenario as SimScenario | undefined,
    tolerance: duration('tolerance', values.tolerance),
    mqtt: values.mqtt,
    qos: qos as 0 | 1 | 2 | undefined,
    truth: values.truth,
    dryRun: values['dry-run'] ?? false
  }
  if (values.truth !== undefined && values.pipelines === undefined) throw new ConfigError('--truth needs --pipelines')
  return { help: values.help ?? false, input, pipelinesFile: values.pipelines }
}

/** Runs `fogmesh sim`; returns the exit code (2 for usage errors). */
export async function simCommand (argv: string[]): Promise<number> {
  let parsed
  try {
    parsed = parseSimArgs(argv)
  } catch (err) {
    process.stderr.write(`fogmesh sim: ${(err as Error).message}\nTry fogmesh sim --help.\n`)
    return 2
  }
  if (parsed.help) {
    process.stdout.write(SIM_HELP)
    return 0
  }
  const abort = new AbortController()
  const onSignal = (): void => abort.abort(new FogmeshError('ERR_ABORTED', 'interrupted'))
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    const pipelines = parsed.pipelinesFile === undefined ? undefined : await loadPipelinesFile(parsed.pipelinesFile)
    // Nothing keeps the messages, and final results go to disk: memory stays bounded however long the run.
    await runSimulator({ ...parsed.input, pipelines, collect: false, signal: abort.signal, log: line => process.stdout.write(line + '\n') })
    return 0
  } catch (err) {
    if (abort.signal.aborted) {
      process.stderr.write('fogmesh sim: interrupted\n')
      return 130
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`fogmesh sim: ${err.message}\n`)
      return 2
    }
    // Anything else is a failure too: say what it was and exit non-zero, never leave it to the caller.
    process.stderr.write(`fogmesh sim: ${err instanceof FogmeshError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
    return 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

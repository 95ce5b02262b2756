/**
 * The simulator's options, their defaults and their checks, in one place: the CLI (`fogmesh sim`) and
 * programmatic callers (tests of the edge agent) go through `resolveSimOptions`. A scenario preset only
 * fills in options the caller left out, so an explicit option always wins.
 */
import { ConfigError } from '../core/errors.ts'
import { FORMAT_NAMES } from '../core/formats/index.ts'
import type { PayloadFormat, PipelineSpec } from '../core/pipeline/spec.ts'

/** Every payload format: the simulator can send each (see payloads.ts). */
export const SIM_FORMATS: readonly PayloadFormat[] = FORMAT_NAMES

/** What callers may pass; everything left out takes the default in SIM_DEFAULTS. */
export interface SimInput {
  /** Number of devices; device i is `d<i>`. */
  devices?: number
  /** Number of rooms; device i is in room `r<i % rooms>`. */
  rooms?: number
  /**
   * Readings per second of event time, per device (> 0, e.g. 0.1 for one every 10 s). A list is handed
   * out round robin: device i reads at rate[i % rate.length], a mix of fast and slow keys.
   */
  rate?: number | number[]
  /** How much event time the run covers, ms. */
  duration?: number
  /** Topic template; `{room}` and `{device}` are substituted. Not used by sparkplug (spBv1.0/sim/DDATA/<room>/<device>). */
  topic?: string
  format?: PayloadFormat
  /** Event-time origin, epoch ms. Undefined: the wall clock when the run starts. */
  start?: number
  /**
   * Event time per wall-clock time. 0 publishes as fast as the brokers ack. Default: 0 with `start`,
   * 1 (real time) without.
   */
  speed?: number
  seed?: number
  /** Every reading's event time is shifted back by U(0, jitter) ms. */
  jitter?: number
  /** Share of readings whose event time is pushed back by `lateBy`. */
  lateShare?: number
  lateBy?: number
  /** Share of messages published twice in a row. */
  duplicateShare?: number
  /** Share of readings replaced by a malformed message. */
  malformedShare?: number
  /**
   * Share of devices that pause: such a device publishes for `pauseAfter`, is silent for `pauseFor`,
   * and so on from the origin (pausing devices pause together). Its readings keep real-time event
   * times; none are sent during a pause.
   */
  pauseShare?: number
  pauseAfter?: number
  pauseFor?: number
  /** Share of readings dated `futureBy` ahead of their time (a device whose clock is wrong). */
  futureShare?: number
  futureBy?: number
  /** A named realistic scenario (see SIM_SCENARIOS); options given explicitly override it. */
  scenario?: SimScenario
  /**
   * How far (ms) a reading's wall-clock arrival may stray from the schedule before a decision of the
   * truth (idle, late, max-future) could change; such readings are reported in the truth's warnings.
   */
  tolerance?: number
  /**
   * Keep every message in the summary's `streams` and the truth in its `truth` (default true). Memory
   * then grows with the run: long runs pass false (the CLI does) and need memory only for the open
   * windows of the truth, whose final results go to disk on their way to the `truth` file.
   */
  collect?: boolean
  /** Broker URLs; device i publishes to broker i % brokers.length over one connection per broker. */
  mqtt?: string[]
  qos?: 0 | 1 | 2
  /** Pipelines to compute the ground truth for. */
  pipelines?: PipelineSpec[]
  /** Where to write the ground truth JSON (needs `pipelines`). */
  truth?: string
  /** Generate (and write the truth) without publishing. */
  dryRun?: boolean
  /** Stops publishing early; runSimulator then rejects with the signal's reason. */
  signal?: AbortSignal
  /** Progress and summary lines; default: none (the CLI passes stdout). */
  log?: (line: string) => void
}

export interface SimOptions {
  devices: number
  rooms: number
  /** One rate per device class, handed out round robin (one entry when uniform). */
  rate: number[]
  duration: number
  topic: string
  format: PayloadFormat
  start: number | undefined
  speed: number
  seed: number
  jitter: number
  lateShare: number
  lateBy: number
  duplicateShare: number
  malformedShare: number
  pauseShare: number
  pauseAfter: number
  pauseFor: number
  futureShare: number
  futureBy: number
  scenario: SimScenario | undefined
  tolerance: number
  collect: boolean
  mqtt: string[]
  qos: 0 | 1 | 2
  pipelines: PipelineSpec[] | undefined
  truth: string | undefined
  dryRun: boolean
  signal: AbortSignal | undefined
  log: (line: string) => void
}

export const SIM_DEFAULTS = {
  devices: 10,
  rooms: 4,
  rate: 1,
  duration: 30_000,
  topic: 'sensors/{room}/temperature',
  format: 'json' as PayloadFormat,
  seed: 1,
  jitter: 0,
  lateShare: 0,
  lateBy: 60_000,
  duplicateShare: 0,
  malformedShare: 0,
  pauseShare: 0,
  pauseAfter: 60_000,
  pauseFor: 30_000,
  futureShare: 0,
  futureBy: 3_600_000,
  tolerance: 1_000,
  mqtt: ['mqtt://127.0.0.1:1883'],
  qos: 1 as 0 | 1 | 2
}

export type SimScenario = 'slow' | 'pause' | 'mixed' | 'clock'

/**
 * Realistic presets. Each sets the options below unless the caller gave them; the durations are long
 * enough for the scenario to show (several pauses, several readings of the slowest device).
 * - slow: sensors reporting once every 10 s or once a minute (alternately), slower than the default
 *   idle (5 s), so that windows must close by the wall clock without losing the slow readings;
 * - pause: every sensor reports twice a second for a minute, then pauses 30 s, and resumes;
 * - mixed: fast keys (2/s) next to keys reporting every 10 s and every minute, on one pipeline;
 * - clock: 1% of readings dated an hour ahead (beyond the default max-future of 5 min).
 */
export const SIM_SCENARIOS: Record<SimScenario, SimInput> = {
  slow: { rate: [0.1, 1 / 60], duration: 600_000 },
  pause: { rate: [2], pauseShare: 1, pauseAfter: 60_000, pauseFor: 30_000, duration: 300_000 },
  mixed: { rate: [2, 0.1, 1 / 60], duration: 300_000 },
  clock: { futureShare: 0.01, futureBy: 3_600_000, duration: 120_000 }
}

/**
 * The earliest accepted event-time origin. Numeric timestamps below 1e11 are read as seconds by the
 * agent and SenML times below 2^28 s are relative, so earlier origins would not mean what they say.
 */
export const MIN_START = Date.UTC(1980, 0, 1)
/**
 * toEventTime refuses anything after 2200; keep clear of it (late and jittered times go back; readings
 * dated ahead by --future-by past 2200 are rejected as bad timestamps, which the oracle knows too).
 */
export const MAX_START = Date.UTC(2100, 0, 1)

function integer (name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) throw new ConfigError(`${name} must be an integer >= ${min}, not ${v}`)
  return v
}

function share (name: string, v: number): number {
  if (!(v >= 0 && v <= 1)) throw new ConfigError(`${name} must be between 0 and 1, not ${v}`)
  return v
}

function nonNegative (name: string, v: number): number {
  if (!(Number.isFinite(v) && v >= 0)) throw new ConfigError(`${name} must be a non-negative number, not ${v}`)
  return v
}

function rates (input: number | number[]): number[] {
  const list = typeof input === 'number' ? [input] : [...input]
  if (list.length === 0) throw new ConfigError('rate needs at least one value')
  for (const rate of list) {
    if (!(Number.isFinite(rate) && rate > 0 && rate <= 1000)) throw new ConfigError(`rate must be > 0 and <= 1000 readings per second, not ${rate}`)
  }
  return list
}

function positive (name: string, v: number): number {
  if (!(Number.isFinite(v) && v > 0)) throw new ConfigError(`${name} must be a positive number, not ${v}`)
  return v
}

export function resolveSimOptions (given: SimInput = {}): SimOptions {
  const d = SIM_DEFAULTS
  if (given.scenario !== undefined && !Object.hasOwn(SIM_SCENARIOS, given.scenario)) {
    throw new ConfigError(`scenario must be one of ${Object.keys(SIM_SCENARIOS).join(', ')}, not "${String(given.scenario)}"`)
  }
  const preset = given.scenario === undefined ? {} : SIM_SCENARIOS[given.scenario]
  const input: SimInput = { ...preset }
  for (const [name, value] of Object.entries(given)) if (value !== undefined) (input as Record<string, unknown>)[name] = value
  const format = input.format ?? d.format
  if (!SIM_FORMATS.includes(format)) throw new ConfigError(`format must be one of ${SIM_FORMATS.join(', ')}, not "${String(format)}"`)
  const start = input.start
  if (start !== undefined && !(Number.isInteger(start) && start >= MIN_START && start <= MAX_START)) {
    throw new ConfigError(`start must be an epoch-ms time between 1980 and 2100, not ${start}`)
  }
  const rate = rates(input.rate ?? d.rate)
  const qos = input.qos ?? d.qos
  if (qos !== 0 && qos !== 1 && qos !== 2) throw new ConfigError(`qos must be 0, 1 or 2, not ${String(qos)}`)
  const mqtt = input.mqtt !== undefined && input.mqtt.length > 0 ? [...input.mqtt] : [...d.mqtt]
  if (new Set(mqtt).size !== mqtt.length) throw new ConfigError('each --mqtt broker may be given once')
  const topic = input.topic ?? d.topic
  if (topic === '' || topic.includes('+') || topic.includes('#')) throw new ConfigError(`topic template "${topic}" must be a non-empty topic without wildcards`)
  if (input.truth !== undefined && input.pipelines === undefined) throw new ConfigError('writing the truth needs the pipelines (--pipelines)')
  return {
    devices: integer('devices', input.devices ?? d.devices, 1),
    rooms: integer('rooms', input.rooms ?? d.rooms, 1),
    rate,
    duration: nonNegative('duration', input.duration ?? d.duration),
    topic,
    format,
    start,
    speed: nonNegative('speed', input.speed ?? (start !== undefined ? 0 : 1)),
    seed: integer('seed', input.seed ?? d.seed, 0),
    jitter: nonNegative('jitter', input.jitter ?? d.jitter),
    lateShare: share('late share', input.lateShare ?? d.lateShare),
    lateBy: nonNegative('late-by', input.lateBy ?? d.lateBy),
    duplicateShare: share('duplicate share', input.duplicateShare ?? d.duplicateShare),
    malformedShare: share('malformed share', input.malformedShare ?? d.malformedShare),
    pauseShare: share('pause share', input.pauseShare ?? d.pauseShare),
    pauseAfter: positive('pause-after', input.pauseAfter ?? d.pauseAfter),
    pauseFor: nonNegative('pause-for', input.pauseFor ?? d.pauseFor),
    futureShare: share('future share', input.futureShare ?? d.futureShare),
    futureBy: nonNegative('future-by', input.futureBy ?? d.futureBy),
    scenario: input.scenario,
    tolerance: nonNegative('tolerance', input.tolerance ?? d.tolerance),
    collect: input.collect ?? true,
    mqtt,
    qos,
    pipelines: input.pipelines,
    truth: input.truth,
    dryRun: input.dryRun ?? false,
    signal: input.signal,
    log: input.log ?? (() => {})
  }
}

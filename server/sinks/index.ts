/**
 * The registry of sink types, by the `type:` a node's config file gives. Adding a sink type is one file
 * in this folder (exporting a SinkDefinition as a named const), imported and listed below.
 *
 * parseSinks reads the `sinks:` list of a config file; a wrong entry (an unknown type, a missing url, a
 * bad table name, an unknown field) is a ConfigError that names the field, so the node refuses to start.
 */
import { ConfigError } from '../../core/errors.ts'
import { influxdb } from './influxdb.ts'
import { mqtt } from './mqtt.ts'
import { postgres } from './postgres.ts'
import { COMMON_FIELDS, SinkFields } from './sink.ts'
import type { SinkDefinition } from './sink.ts'
import { webhook } from './webhook.ts'

export type { Sink, SinkDefinition, SinkParts } from './sink.ts'
export { SinkRejected } from './sink.ts'

// The config type is private to each sink; the registry hands each its own back.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnySinkDefinition = SinkDefinition<any>

const LIST: readonly AnySinkDefinition[] = [postgres, influxdb, mqtt, webhook]

export const SINKS: ReadonlyMap<string, AnySinkDefinition> = new Map(LIST.map(s => [s.type, s]))

if (SINKS.size !== LIST.length) throw new Error('two sink types have the same name')

/** One entry of `sinks:`, checked. */
export interface SinkConfig {
  name: string
  type: string
  /** Pipelines whose results go to the sink; undefined: every pipeline. */
  pipelines?: string[]
  /** Bound of the sink's queue, bytes: when full the oldest results are dropped (and counted). */
  maxPending: number
  /** Longest wait between retries, ms (exponential backoff with jitter from 200 ms). */
  retryMax: number
  /** Longest one delivery may take, ms. */
  timeout: number
  /** The type's own settings, as its definition parsed them. */
  settings: unknown
}

export const SINK_DEFAULTS = {
  maxPending: 64 * 1024 * 1024,
  retryMax: 30_000,
  timeout: 10_000
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/

/** Reads a config file's `sinks:` (undefined: none). `env` supplies `${NAME}` references. */
export function parseSinks (raw: unknown, env: NodeJS.ProcessEnv = process.env): SinkConfig[] {
  if (raw === undefined || raw === null) return []
  if (!Array.isArray(raw)) throw new ConfigError('sinks: expected a list of { name, type, url, … }')
  const names = new Set<string>()
  return raw.map((entry: unknown, i) => {
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new ConfigError(`sinks[${i}]: expected a mapping { name, type, url, … }`)
    const rawName = (entry as Record<string, unknown>).name
    const where = typeof rawName === 'string' ? `sinks[${i}] (${rawName})` : `sinks[${i}]`
    const f = new SinkFields(entry as Record<string, unknown>, where, env)
    const name = f.string('name', true)
    if (!NAME.test(name)) f.fail('name', 'letters, digits, _ . - (up to 64, starting with a letter or digit)')
    if (names.has(name)) f.fail('name', `two sinks are called ${name}`)
    names.add(name)
    const type = f.string('type', true)
    const def = SINKS.get(type)
    if (def === undefined) return f.fail('type', `unknown sink type ${JSON.stringify(type)} (known: ${[...SINKS.keys()].join(', ')})`)
    for (const k of COMMON_FIELDS) f.has(k)
    const config: SinkConfig = {
      name,
      type,
      pipelines: f.strings('pipelines'),
      maxPending: f.bytes('max-pending', SINK_DEFAULTS.maxPending),
      retryMax: f.duration('retry-max', SINK_DEFAULTS.retryMax),
      timeout: f.duration('timeout', SINK_DEFAULTS.timeout),
      settings: def.parse(f)
    }
    f.checkUnknown()
    return config
  })
}

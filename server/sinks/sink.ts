/**
 * What a sink type is: a definition (its config check and a factory) that the registry in index.ts
 * lists. A sink delivers results (closed windows at an edge, final windows and their revisions at a
 * fog or the cloud) into a system users already run; the delivery itself (durable queue, retries,
 * backoff, metrics) is the same for every type and lives in delivery.ts.
 */
import { readFileSync } from 'node:fs'
import { parseDuration } from '../../core/duration.ts'
import { ConfigError, FogmeshError } from '../../core/errors.ts'
import type { Logger } from '../shell/log.ts'
import type { PeerClient } from '../shell/peer-client.ts'
import type { WindowResult } from '../shell/results.ts'
import type { ClientTls } from '../shell/tls.ts'

/** The parts a sink is made with (passed in; nothing is assigned later). */
export interface SinkParts {
  /** The sink's name, for logs. */
  name: string
  /** Lines carry the sink's name and type. */
  log: Logger
  /** Longest one delivery may take, ms. */
  timeout: number
  /**
   * How http(s) targets are called: verified against the node's --tls-ca (the system's CAs without
   * it), never unverified; the node's certificate is its client certificate.
   */
  client: PeerClient
  /** The same trust for other TLS connections (mqtts://, wss://). */
  tls: ClientTls
}

/** A sink as the delivery loop uses it. */
export interface Sink {
  /**
   * Delivers the results, in order. Resolves when the target has all of them; throws SinkRejected when
   * the target refused them for good (a 4xx: retrying cannot help), anything else to be retried.
   */
  send: (results: readonly WindowResult[], signal: AbortSignal) => Promise<void>
  /** Releases connections. */
  close: () => Promise<void>
}

/** A sink type: adding one is one file exporting this, listed in index.ts. */
export interface SinkDefinition<C = unknown> {
  /** The `type:` of the config. */
  type: string
  /** Most results one send takes. */
  batch: number
  /** The type's own fields, checked; errors name the field (through `fields`). */
  parse: (fields: SinkFields) => C
  create: (config: C, parts: SinkParts) => Sink
}

/** The target refused these results for good; they are set aside and counted, not retried. */
export class SinkRejected extends FogmeshError {
  constructor (message: string) {
    super('sink_rejected', message)
  }
}

/** Fields every sink has, read by the registry. */
export const COMMON_FIELDS = ['name', 'type', 'pipelines', 'max-pending', 'retry-max', 'timeout'] as const

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g

/**
 * The fields of one `sinks:` entry, read with checks whose errors name the field
 * (`sinks[1] (tsdb).database: …`). Every field read is recorded, so that a field nobody read (a typo)
 * is refused too. String values may refer to the environment as `${NAME}`.
 */
export class SinkFields {
  readonly #raw: Record<string, unknown>
  readonly #where: string
  readonly #read = new Set<string>()
  readonly #env: NodeJS.ProcessEnv

  constructor (raw: Record<string, unknown>, where: string, env: NodeJS.ProcessEnv = process.env) {
    this.#raw = raw
    this.#where = where
    this.#env = env
  }

  /** A ConfigError about `field`. */
  fail (field: string, what: string): never {
    throw new ConfigError(`${this.#where}.${field}: ${what}`)
  }

  has (field: string): boolean {
    this.#read.add(field)
    return this.#raw[field] !== undefined && this.#raw[field] !== null
  }

  /** A string, with `${NAME}` replaced from the environment. */
  string (field: string, required: true): string
  string (field: string, required?: boolean): string | undefined
  string (field: string, required = false): string | undefined {
    this.#read.add(field)
    const v = this.#raw[field]
    if (v === undefined || v === null) {
      if (required) this.fail(field, 'required')
      return undefined
    }
    if (typeof v !== 'string' && typeof v !== 'number') this.fail(field, `expected a string, got ${typeof v}`)
    const s = String(v).replace(ENV_REF, (_, name: string) => {
      const value = this.#env[name]
      if (value === undefined) this.fail(field, `refers to \${${name}}, which is not set in the environment`)
      return value
    })
    if (required && s === '') this.fail(field, 'must not be empty')
    return s
  }

  /** A URL with one of `protocols` (e.g. ['http:', 'https:']). */
  url (field: string, protocols: readonly string[]): URL {
    const s = this.string(field, true)
    let url: URL
    try {
      url = new URL(s)
    } catch {
      // The value may hold a password: it is not repeated.
      return this.fail(field, `not a valid URL (expected ${protocols.map(p => p + '//…').join(' or ')})`)
    }
    if (!protocols.includes(url.protocol)) this.fail(field, `expected a ${protocols.map(p => p + '//').join(' or ')} URL, got ${url.protocol}//`)
    return url
  }

  /**
   * A secret: `field` itself (a literal, or `${NAME}`), `field-file` (its first line) or `field-env`
   * (the name of an environment variable). Never from the command line.
   */
  secret (field: string): string | undefined {
    const literal = this.string(field)
    const file = this.string(`${field}-file`)
    const envName = this.string(`${field}-env`)
    const given = [literal, file, envName].filter(v => v !== undefined).length
    if (given > 1) this.fail(field, `give one of ${field}, ${field}-file and ${field}-env`)
    if (file !== undefined) {
      let text: string
      try {
        text = readFileSync(file, 'utf8')
      } catch (err) {
        return this.fail(`${field}-file`, `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
      }
      const value = text.split(/\r?\n/)[0].trim()
      if (value === '') this.fail(`${field}-file`, `${file} is empty`)
      return value
    }
    if (envName !== undefined) {
      const value = this.#env[envName]
      if (value === undefined || value === '') this.fail(`${field}-env`, `the environment variable ${envName} is not set`)
      return value
    }
    return literal
  }

  /** A list of strings (a single string is a list of one). */
  strings (field: string): string[] | undefined {
    this.#read.add(field)
    const v = this.#raw[field]
    if (v === undefined || v === null) return undefined
    const list = Array.isArray(v) ? v : [v]
    if (list.some(s => typeof s !== 'string' || s === '')) this.fail(field, 'expected a list of names')
    return list as string[]
  }

  duration (field: string, fallback: number): number {
    const s = this.string(field)
    if (s === undefined) return fallback
    try {
      const ms = parseDuration(s)
      if (!(ms > 0)) this.fail(field, 'must be positive')
      return ms
    } catch (err) {
      if (err instanceof ConfigError) throw err
      return this.fail(field, (err as Error).message)
    }
  }

  bytes (field: string, fallback: number): number {
    const s = this.string(field)
    if (s === undefined) return fallback
    const m = /^(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?$/i.exec(s.trim())
    if (m === null) return this.fail(field, `expected a size like 65536, 64kib or 10mb, got ${JSON.stringify(s)}`)
    const n = Number(m[1]) * SIZE_UNITS[(m[2] ?? 'b').toLowerCase()]
    if (!(n > 0)) this.fail(field, 'must be positive')
    return n
  }

  int (field: string, fallback: number, min: number, max: number): number {
    this.#read.add(field)
    const v = this.#raw[field]
    if (v === undefined || v === null) return fallback
    const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN
    if (!Number.isInteger(n) || n < min || n > max) this.fail(field, `expected a whole number from ${min} to ${max}`)
    return n
  }

  bool (field: string, fallback: boolean): boolean {
    this.#read.add(field)
    const v = this.#raw[field]
    if (v === undefined || v === null) return fallback
    if (typeof v === 'boolean') return v
    if (v === 'true' || v === 'false') return v === 'true'
    return this.fail(field, 'expected true or false')
  }

  /** Fails on the first field nobody read. */
  checkUnknown (): void {
    for (const k of Object.keys(this.#raw)) {
      if (!this.#read.has(k)) this.fail(k, `unknown field (known here: ${[...this.#read].join(', ')})`)
    }
  }
}

const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1000, kib: 1024, mb: 1e6, mib: 1048576, gb: 1e9, gib: 1073741824 }

/** An HTTP status for a result: ok, refused for good (set aside), or worth retrying. */
export function httpVerdict (status: number, detail: string): void {
  if (status >= 200 && status < 300) return
  // A timeout or throttling says nothing about the result.
  if (status >= 400 && status < 500 && status !== 408 && status !== 429) throw new SinkRejected(`${status} ${detail}`)
  throw new Error(`${status} ${detail}`)
}

/** The start of a response body, on one line, for a log. */
export function bodySummary (text: string): string {
  return text.replace(/\s+/g, ' ').trim().slice(0, 200)
}

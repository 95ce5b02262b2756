/**
 * The logs of the server roles: one line per event on stderr (stdout carries only the `ready …` line).
 * Written with pino as JSON objects — `time` (ISO-8601), `level` (its name), `role` and `id` of the
 * node, a stable `event` name (`<area>.<what>`, e.g. `http.request_aborted`), the fields of the event,
 * and `msg` for people — or, on a terminal, as one readable line each (`--log-format`).
 *
 * Parts get a Logger from whoever builds them; nothing here is global or set after the fact.
 *
 * Secrets stay out: the userinfo of any URL in a message, a field or an error (`mqtt://user:pass@host`)
 * is masked, and fields named like credentials (password, token, authorization…) are replaced.
 */
import { pino } from 'pino'
import type { Logger as Pino } from 'pino'

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const
export type LogLevel = typeof LOG_LEVELS[number]
export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const
export type LogFormat = typeof LOG_FORMATS[number]

/** The fields of one event. `err` (an Error) is written with its type, message and stack. */
export type LogFields = Record<string, unknown>

type Method = (event: string, msg: string, fields?: LogFields) => void

export interface Logger {
  trace: Method
  debug: Method
  info: Method
  warn: Method
  error: Method
  fatal: Method
  /** Whether a line at this level is written. */
  enabled: (level: Exclude<LogLevel, 'silent'>) => boolean
  /** A logger whose lines carry `fields` too. */
  child: (fields: LogFields) => Logger
}

export interface LoggerOptions {
  /** Least severe level written. Default `info`. */
  level?: LogLevel
  /** `json`, `pretty`, or `auto` (default): pretty when stderr is a terminal. */
  format?: LogFormat
  /** Fields on every line (a node's `role` and `id`). */
  bindings?: LogFields
  /** Where lines go, each ending in a newline. Default: stderr. */
  write?: (line: string) => void
}

/** The values that numeric pino levels stand for (pino's defaults). */
const LEVEL_VALUES: Record<Exclude<LogLevel, 'silent'>, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 }

/** Field names whose values are never written. */
const SECRET_FIELD = /^(password|passwd|secret|token|api[-_]?token|admin[-_]?token|authorization|cookie|private[-_]?key)$/i
const REDACTED = '[redacted]'

/** scheme://user:password@ or scheme://user@ (a bare user may be a token too). */
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)([^\s/?#@]*)@/gi

/** `text` with the userinfo of every URL in it masked: `mqtt://user:***@host`, `https://***@host`. */
export function redactUrls (text: string): string {
  if (!text.includes('@')) return text
  return text.replace(URL_USERINFO, (_, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':')
    return colon >= 0 ? `${scheme}${userinfo.slice(0, colon)}:***@` : `${scheme}***@`
  })
}

/** A field value with URL userinfo masked and secret-named fields replaced (plain objects and arrays, a few levels down). */
function scrub (value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redactUrls(value)
  if (depth > 3 || value === null || typeof value !== 'object' || value instanceof Error) return value
  if (Array.isArray(value)) return value.map(v => scrub(v, depth + 1))
  if (Object.getPrototypeOf(value) !== Object.prototype) return value
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) out[k] = SECRET_FIELD.test(k) ? REDACTED : scrub(v, depth + 1)
  return out
}

function serializeError (err: unknown): unknown {
  if (!(err instanceof Error)) return typeof err === 'string' ? redactUrls(err) : err
  const out = pino.stdSerializers.err(err) as unknown as Record<string, unknown>
  if (typeof out.message === 'string') out.message = redactUrls(out.message)
  if (typeof out.stack === 'string') out.stack = redactUrls(out.stack)
  return out
}

class PinoLogger implements Logger {
  readonly #p: Pino

  constructor (p: Pino) {
    this.#p = p
  }

  trace: Method = (event, msg, fields) => { this.#log('trace', event, msg, fields) }
  debug: Method = (event, msg, fields) => { this.#log('debug', event, msg, fields) }
  info: Method = (event, msg, fields) => { this.#log('info', event, msg, fields) }
  warn: Method = (event, msg, fields) => { this.#log('warn', event, msg, fields) }
  error: Method = (event, msg, fields) => { this.#log('error', event, msg, fields) }
  fatal: Method = (event, msg, fields) => { this.#log('fatal', event, msg, fields) }

  enabled (level: Exclude<LogLevel, 'silent'>): boolean {
    return LEVEL_VALUES[level] >= this.#p.levelVal
  }

  child (fields: LogFields): Logger {
    return new PinoLogger(this.#p.child(scrub(fields) as LogFields))
  }

  #log (level: Exclude<LogLevel, 'silent'>, event: string, msg: string, fields: LogFields | undefined): void {
    if (LEVEL_VALUES[level] < this.#p.levelVal) return
    const record: LogFields = { event }
    if (fields !== undefined) {
      for (const [k, v] of Object.entries(fields)) record[k] = SECRET_FIELD.test(k) ? REDACTED : scrub(v)
    }
    this.#p[level](record, redactUrls(msg))
  }
}

// ---------------------------------------------------------------------------------------------
// Readable lines (--log-format pretty): `12:00:01.234 WARN  uplink.batch_refused message key=value`,
// the stack of an error indented below. Written here rather than with pino-pretty, which would
// start a worker thread (and its memory) in every node.

const COLORS: Record<string, string> = { trace: '90', debug: '36', info: '32', warn: '33', error: '31', fatal: '35' }
/** Fields a readable line leaves out: on every line of a node, or shown otherwise. */
const PRETTY_SKIP = new Set(['time', 'level', 'event', 'msg', 'role', 'id', 'err'])

function prettyValue (v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v)
  return JSON.stringify(v) ?? String(v)
}

/** One JSON line from pino as a readable line (or lines, with a stack). */
export function prettyLine (json: string, color = false): string {
  let o: Record<string, unknown>
  try {
    o = JSON.parse(json) as Record<string, unknown>
  } catch {
    return json
  }
  const time = typeof o.time === 'string' ? o.time.slice(11, 23) : ''
  const level = String(o.level ?? '')
  const tag = level.toUpperCase().padEnd(5)
  const parts = [time, color && COLORS[level] !== undefined ? `\x1b[${COLORS[level]}m${tag}\x1b[0m` : tag, String(o.event ?? '-'), String(o.msg ?? '')]
  for (const [k, v] of Object.entries(o)) if (!PRETTY_SKIP.has(k)) parts.push(`${k}=${prettyValue(v)}`)
  let line = parts.join(' ')
  const err = o.err as { message?: string, stack?: string } | undefined
  if (err !== undefined && err !== null) {
    const text = typeof err === 'object' ? (err.stack ?? err.message ?? JSON.stringify(err)) : String(err)
    line += '\n' + text.split('\n').map(l => '    ' + l).join('\n')
  }
  return line + '\n'
}

/** A logger for these options: pino to stderr (or `write`), JSON or readable. */
export function createLogger (options: LoggerOptions = {}): Logger {
  const write = options.write ?? (line => { process.stderr.write(line) })
  const format = options.format ?? 'auto'
  const pretty = format === 'pretty' || (format === 'auto' && options.write === undefined && process.stderr.isTTY)
  const color = pretty && options.write === undefined && process.stderr.isTTY && process.env.NO_COLOR === undefined
  const p = pino({
    level: options.level ?? 'info',
    base: options.bindings === undefined ? null : scrub(options.bindings) as LogFields,
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: label => ({ level: label }) },
    serializers: { err: serializeError }
  }, { write: pretty ? (line: string) => { write(prettyLine(line, color)) } : write })
  return new PinoLogger(p)
}

/** The logger of a server role, from its options (`--log-level`, `--log-format`). */
export function roleLogger (role: string, options: { id: string, logLevel?: LogLevel, logFormat?: LogFormat }): Logger {
  return createLogger({ level: options.logLevel, format: options.logFormat, bindings: { role, id: options.id } })
}

/** Writes nothing (tests, and parts whose lines nobody wants). */
export const silentLogger: Logger = createLogger({ level: 'silent', write: () => {} })

/**
 * Options of the server roles, declared once per role as a table: name, type, default and help. The
 * same table reads the YAML config file (`--config FILE`, keys are the long flag names) and the command
 * line (flags override the file), and prints `--help`.
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { parse as parseYaml } from 'yaml'
import { formatDuration, parseDuration } from '../../core/duration.ts'
import { ConfigError } from '../../core/errors.ts'
import { LOG_FORMATS, LOG_LEVELS } from './log.ts'
import type { LogFormat, LogLevel } from './log.ts'
import type { SinkConfig } from '../sinks/index.ts'
import type { TlsOptions } from './tls.ts'

export type OptionType = 'string' | 'strings' | 'url' | 'urls' | 'int' | 'port' | 'duration' | 'bool' | 'bytes'

export interface OptionSpec {
  type: OptionType
  help: string
  /** Undefined means the option is unset unless given. */
  default?: string | number | boolean | string[]
  /** Only from the config file (structured values such as broker users). */
  fileOnly?: boolean
  /** The values a `string` option may take. */
  choices?: readonly string[]
}

export type OptionTable = Record<string, OptionSpec>

const SIZE = /^(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?$/i
const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1000, kib: 1024, mb: 1e6, mib: 1048576, gb: 1e9, gib: 1073741824 }

/** An http(s) URL, checked up front so a typo fails at start-up rather than at the first delivery. */
function httpUrl (name: string, raw: unknown): string {
  let url: URL | undefined
  try {
    url = new URL(String(raw))
  } catch {}
  if (typeof raw !== 'string' || url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    throw new ConfigError(`--${name}: expected an http:// or https:// URL, got ${JSON.stringify(raw)}`)
  }
  return raw
}

function convert (name: string, spec: OptionSpec, raw: unknown): unknown {
  const fail = (what: string): never => { throw new ConfigError(`--${name}: ${what}, got ${JSON.stringify(raw)}`) }
  switch (spec.type) {
    case 'url':
      return httpUrl(name, raw)
    case 'urls':
      return (Array.isArray(raw) ? raw : [raw]).map(u => httpUrl(name, u))
    case 'string':
      if (typeof raw !== 'string' && typeof raw !== 'number') fail('expected a string')
      if (spec.choices !== undefined && !spec.choices.includes(String(raw))) fail(`expected one of ${spec.choices.join(', ')}`)
      return String(raw)
    case 'strings':
      if (Array.isArray(raw)) return raw.map(String)
      if (typeof raw === 'string') return [raw]
      return fail('expected a list of strings')
    case 'bool':
      if (typeof raw === 'boolean') return raw
      if (raw === 'true' || raw === 'false') return raw === 'true'
      return fail('expected true or false')
    case 'int':
    case 'port': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^\d+$/.test(raw.trim()) ? Number(raw) : NaN
      if (!Number.isInteger(n) || n < 0) fail('expected a whole number')
      if (spec.type === 'port' && n > 65535) fail('expected a port number from 0 to 65535')
      return n
    }
    case 'duration':
      if (typeof raw !== 'string' && typeof raw !== 'number') fail('expected a duration like 500ms, 10s or 5m')
      try {
        return parseDuration(raw as string | number)
      } catch (err) {
        throw new ConfigError(`--${name}: ${(err as Error).message}`)
      }
    case 'bytes': {
      if (typeof raw === 'number' && Number.isInteger(raw) && raw >= 0) return raw
      const m = typeof raw === 'string' ? SIZE.exec(raw.trim()) : null
      if (m == null) return fail('expected a size like 65536, 64kib or 10mb')
      return Number(m[1]) * SIZE_UNITS[(m[2] ?? 'b').toLowerCase()]
    }
  }
}

function camel (name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())
}

/**
 * Reads options: defaults, then the config file, then flags. Returns camelCase keys; `extra` holds
 * file-only structured values under their camelCase names.
 */
export function readOptions (table: OptionTable, argv: string[]): Record<string, unknown> {
  const flagOptions: Record<string, { type: 'string' | 'boolean', multiple?: boolean, short?: string }> = {
    config: { type: 'string' },
    help: { type: 'boolean', short: 'h' }
  }
  for (const [name, spec] of Object.entries(table)) {
    if (spec.fileOnly === true) continue
    flagOptions[name] = { type: spec.type === 'bool' ? 'boolean' : 'string', multiple: spec.type === 'strings' || spec.type === 'urls' }
  }
  let parsed
  try {
    parsed = parseArgs({ args: argv, options: flagOptions, strict: true, allowPositionals: false })
  } catch (err) {
    throw new ConfigError((err as Error).message)
  }
  const values = parsed.values as Record<string, unknown>
  const out: Record<string, unknown> = { help: values.help === true }
  for (const [name, spec] of Object.entries(table)) {
    if (spec.default !== undefined) out[camel(name)] = convert(name, spec, spec.default)
  }
  if (typeof values.config === 'string') {
    let file: unknown
    try {
      file = parseYaml(readFileSync(values.config, 'utf8'))
    } catch (err) {
      throw new ConfigError(`cannot read config file ${values.config}: ${(err as Error).message}`)
    }
    if (file !== null && file !== undefined) {
      if (typeof file !== 'object' || Array.isArray(file)) throw new ConfigError(`${values.config}: a config file is a mapping of option names to values`)
      for (const [name, raw] of Object.entries(file as Record<string, unknown>)) {
        const spec = table[name]
        if (spec === undefined) throw new ConfigError(`${values.config}: unknown option "${name}" (known: ${Object.keys(table).join(', ')})`)
        out[camel(name)] = spec.fileOnly === true ? raw : convert(name, spec, raw)
      }
    }
  }
  for (const [name, spec] of Object.entries(table)) {
    if (spec.fileOnly !== true && values[name] !== undefined) out[camel(name)] = convert(name, spec, values[name])
  }
  return out
}

/** `--help` text for a role. */
export function optionsHelp (usage: string, table: OptionTable): string {
  const lines = [usage, '', 'Options (flags override the config file, whose keys are the flag names):', '  --config FILE              YAML config file']
  for (const [name, spec] of Object.entries(table)) {
    const shown = spec.default === undefined
      ? ''
      : ` (default: ${spec.type === 'duration' ? formatDuration(convert(name, spec, spec.default) as number) : String(spec.default)})`
    const value = spec.choices !== undefined ? spec.choices.join('|') : spec.type.toUpperCase()
    const flag = spec.fileOnly === true ? `${name} (config file only)` : `--${name}${spec.type === 'bool' ? '' : ' ' + value}`
    lines.push(`  ${flag.padEnd(26)} ${spec.help}${shown}`)
  }
  return lines.join('\n')
}

/** Options every server role takes. */
export const COMMON_OPTIONS: OptionTable = {
  id: { type: 'string', help: 'name of this node in results, metrics and the mesh (default: <role>-<hostname>)' },
  host: { type: 'string', default: '127.0.0.1', help: 'address the HTTP API (and the mesh) listens on (0.0.0.0 for every interface)' },
  'advertise-url': { type: 'url', help: 'HTTP URL other nodes reach this one at (default: the listen URL; with --host 0.0.0.0 or ::, this machine\'s first external address)' },
  'http-port': { type: 'port', default: 0, help: 'HTTP API port; 0 picks any free port' },
  'http-headers-timeout': { type: 'duration', default: '10s', help: 'a client must send a request\'s headers within this long, else it gets 408 and is disconnected; 0 = no limit' },
  'http-request-timeout': { type: 'duration', default: '30s', help: 'a client must send a whole request (headers and body) within this long, else it gets 408 and is disconnected; 0 = no limit' },
  'http-keep-alive-timeout': { type: 'duration', default: '5s', help: 'an idle keep-alive HTTP connection is closed after this long' },
  'http-max-connections': { type: 'int', default: 1024, help: 'most open HTTP connections; further ones are closed as they are accepted' },
  'data-dir': { type: 'string', help: 'directory for durable state (default: ./data/<id>)' },
  pipelines: { type: 'string', help: 'pipelines file (YAML)' },
  retention: { type: 'duration', default: '7d', help: 'how long results are kept' },
  'max-results': { type: 'int', default: 1_000_000, help: 'most results kept per pipeline; the oldest windows go first' },
  'mesh-port': { type: 'port', help: 'join the mesh, listening on this libp2p port (0 picks any free port); the mesh is off without --mesh-port and --bootstrap' },
  bootstrap: { type: 'strings', help: 'mesh peer to join through, <multiaddr>/p2p/<peer id> as its ready line prints it (repeatable; turns the mesh on)' },
  'mesh-key': { type: 'string', help: 'mesh key file (fogmesh keygen): only nodes with the same key can join; without one the mesh is open to anyone who can connect' },
  'mesh-heartbeat': { type: 'duration', help: 'time between mesh heartbeats (default: 2s)' },
  'mesh-expiry': { type: 'duration', help: 'a mesh peer not heard from for this long is expired (default: 3 heartbeats + 4s)' },
  'tls-cert': { type: 'string', help: 'this node\'s certificate (PEM, from fogmesh cert issue): the HTTP API is served over HTTPS only, and the node presents it as its client certificate to fogs and the cloud (default: plain HTTP); SIGHUP re-reads it' },
  'tls-key': { type: 'string', help: 'the private key of --tls-cert (PEM)' },
  'tls-ca': { type: 'string', help: 'CA certificates (PEM) that verify the fogs, clouds and mqtts:// broker this node calls (default: the system\'s CAs)' },
  'api-token-file': { type: 'string', help: 'file holding a bearer token (16 characters or more) that every GET /v1/... and /metrics needs; a client certificate verified by --tls-client-ca also passes; /healthz stays open (default: no token)' },
  insecure: { type: 'bool', default: false, help: 'serve plain HTTP (and MQTT) on a --host (or --mqtt-host) that is not a loopback address; without it such a node refuses to start without --tls-cert and --tls-key' },
  mdns: { type: 'bool', default: false, help: 'also find mesh peers on the LAN by mDNS (multicast on every interface; turns the mesh on)' },
  'log-level': { type: 'string', choices: LOG_LEVELS, default: 'info', help: 'least severe log lines written to stderr' },
  sinks: { type: 'strings', fileOnly: true, help: 'where results also go: a list of { name, type: postgres|influxdb|mqtt|webhook, url, … } (see README, Sinks); an edge\'s get its closed windows, a fog\'s and the cloud\'s final windows and every later revision' },
  'log-format': { type: 'string', choices: LOG_FORMATS, default: 'auto', help: 'log lines as json (one object per line), pretty (for people), or auto: pretty when stderr is a terminal, else json' }
}

export interface CommonOptions extends TlsOptions {
  id: string
  host: string
  advertiseUrl?: string
  httpPort: number
  httpHeadersTimeout?: number
  httpRequestTimeout?: number
  httpKeepAliveTimeout?: number
  httpMaxConnections?: number
  dataDir: string
  pipelines?: string
  retention: number
  maxResults: number
  meshPort?: number
  bootstrap?: string[]
  meshKey?: string
  meshHeartbeat?: number
  meshExpiry?: number
  mdns?: boolean
  /** File of the bearer token GET /v1/… and /metrics need. */
  apiTokenFile?: string
  /** Least severe log level written; default info. */
  logLevel?: LogLevel
  /** Default auto: readable on a terminal, JSON lines otherwise. */
  logFormat?: LogFormat
  /** `sinks:` of the config file, checked (parseSinks). */
  sinks?: SinkConfig[]
}

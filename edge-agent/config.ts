/** Options of the edge agent (`fogmesh edge`), with their defaults. */
import { hostname } from 'node:os'
import { join } from 'node:path'
import { ConfigError } from '../core/errors.ts'
import { COMMON_OPTIONS, readOptions } from '../server/shell/options.ts'
import type { CommonOptions, OptionTable } from '../server/shell/options.ts'
import { parseSinks } from '../server/sinks/index.ts'

export const EDGE_OPTIONS: OptionTable = {
  ...COMMON_OPTIONS,
  'mqtt-port': { type: 'port', default: 1883, help: 'port of the embedded MQTT broker; 0 picks any free port' },
  'mqtt-host': { type: 'string', default: '127.0.0.1', help: 'address the embedded broker listens on (0.0.0.0 for sensors on the LAN)' },
  'mqtt-tls-port': { type: 'port', help: 'embedded broker: also listen for MQTT over TLS on this port of --mqtt-host, with the --tls-cert certificate; users and their topic rules apply there too; 0 picks any free port (default: no TLS listener)' },
  'mqtt-url': { type: 'string', help: 'use an existing broker (mqtt://user:pass@host:1883) instead of the embedded one' },
  'mqtt-client-id': { type: 'string', help: 'client id at an existing broker; its persistent session keeps readings while the agent is away (default: fogmesh-<id>)' },
  users: { type: 'strings', fileOnly: true, help: 'embedded broker users: a list of { username, password, publish: [filters], subscribe: [filters] }; none = anonymous access' },
  'max-payload': { type: 'bytes', default: '64kib', help: 'largest reading payload processed; larger ones are rejected as too_large' },
  'mqtt-max-packet': { type: 'bytes', default: '256kib', help: 'embedded broker: a client whose packet announces more than this (or --max-payload + 64 KiB, if larger) is disconnected before the packet is read; smaller packets with a payload over --max-payload are counted as too_large' },
  'mqtt-max-inflight': { type: 'int', default: 512, help: 'embedded broker: most QoS 2 publishes of one client awaiting PUBREL; a client sending more is disconnected' },
  'mqtt-max-queued': { type: 'int', default: 32, help: 'embedded broker: most packets of one client held before its session is established; a client sending more is disconnected' },
  'mqtt-max-connections': { type: 'int', default: 1024, help: 'embedded broker: most open client connections; further ones are closed at once' },
  'sparkplug-max-queued': { type: 'int', default: 1000, help: 'emit: sparkplug: closed windows (one key\'s window each) kept per pipeline while the broker is unreachable, sent after the next births as historical DDATA; past it the oldest are dropped and counted (fogmesh_sparkplug_dropped_total)' },
  tick: { type: 'duration', default: '250ms', help: 'how often idle pipelines and arrival-time windows are checked' },
  fog: { type: 'urls', help: 'fog coordinator URL (repeatable)' },
  cloud: { type: 'urls', help: 'cloud sink URL: used on failover, or always without --fog (repeatable: several processes of one cloud tier, tried in turn)' },
  'failover-after': { type: 'duration', default: '30s', help: 'how long no fog may answer before partials go to the cloud' },
  'outbox-max': { type: 'bytes', default: '256mib', help: 'most partials kept for the fog/cloud while they cannot take them; when full the oldest are dropped (and counted)' },
  'uplink-timeout': { type: 'duration', default: '10s', help: 'longest a request to a fog or the cloud may take' },
  'uplink-retry-max': { type: 'duration', default: '10s', help: 'longest wait between retries to the fog/cloud (exponential backoff with jitter from 200ms)' },
  'checkpoint-every': { type: 'duration', default: '5s', help: 'how often the open windows are checkpointed to the data dir: a crash loses at most this much of their readings; 0 turns checkpoints off' }
}

/** A user of the embedded broker and the topics it may use. */
export interface BrokerUser {
  username: string
  password: string
  /** Topic filters the user may publish to; default: everything. */
  publish: string[]
  /** Topic filters the user may subscribe to; default: everything. */
  subscribe: string[]
}

export interface EdgeOptions extends CommonOptions {
  mqttPort: number
  mqttHost: string
  mqttTlsPort?: number
  mqttUrl?: string
  mqttClientId: string
  users: BrokerUser[]
  maxPayload: number
  mqttMaxPacket: number
  mqttMaxInflight: number
  mqttMaxQueued: number
  mqttMaxConnections: number
  sparkplugMaxQueued: number
  tick: number
  fog: string[]
  cloud?: string[]
  failoverAfter: number
  outboxMax: number
  uplinkTimeout: number
  uplinkRetryMax: number
  /** ms between checkpoints of the open windows; 0 = none. */
  checkpointEvery: number
}

function parseUsers (raw: unknown): BrokerUser[] {
  if (raw === undefined) return []
  if (!Array.isArray(raw)) throw new ConfigError('users: expected a list of { username, password, publish, subscribe }')
  return raw.map((u: unknown, i) => {
    const o = u as Record<string, unknown>
    if (typeof o !== 'object' || o === null || typeof o.username !== 'string' || typeof o.password !== 'string') {
      throw new ConfigError(`users[${i}]: needs a username and a password (strings)`)
    }
    const filters = (k: string): string[] => {
      const v = o[k]
      if (v === undefined) return ['#']
      if (!Array.isArray(v) || v.some(f => typeof f !== 'string')) throw new ConfigError(`users[${i}].${k}: expected a list of topic filters`)
      return v as string[]
    }
    return { username: o.username, password: o.password, publish: filters('publish'), subscribe: filters('subscribe') }
  })
}

export function edgeOptions (argv: string[]): EdgeOptions & { help: boolean } {
  const o = readOptions(EDGE_OPTIONS, argv) as Record<string, unknown>
  const id = (o.id as string | undefined) ?? `edge-${hostname()}`
  return {
    ...(o as unknown as EdgeOptions & { help: boolean }),
    id,
    dataDir: (o.dataDir as string | undefined) ?? join('data', id),
    mqttClientId: (o.mqttClientId as string | undefined) ?? `fogmesh-${id}`,
    users: parseUsers(o.users),
    sinks: parseSinks(o.sinks),
    fog: (o.fog as string[] | undefined) ?? []
  }
}

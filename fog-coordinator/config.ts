/** Options of the fog coordinator (`fogmesh fog`), with their defaults. */
import { MERGE_OPTIONS, readMergeOptions } from '../server/merge-options.ts'
import type { MergeOptions } from '../server/merge-options.ts'
import { COMMON_OPTIONS } from '../server/options.ts'
import type { OptionTable } from '../server/options.ts'

export const FOG_OPTIONS: OptionTable = {
  ...COMMON_OPTIONS,
  ...MERGE_OPTIONS,
  cloud: { type: 'url', help: 'cloud sink URL: every final window goes there, through a durable outbox in the data dir' },
  'outbox-max': { type: 'bytes', default: '256mib', help: 'most final windows kept for the cloud while it cannot take them; when full the oldest are dropped (and counted)' },
  'uplink-timeout': { type: 'duration', default: '10s', help: 'longest a request to the cloud may take' },
  'uplink-retry-max': { type: 'duration', default: '10s', help: 'longest wait between retries to the cloud (exponential backoff with jitter from 200ms)' },
  etcd: { type: 'string', help: 'etcd endpoints HOST:PORT[,…] of a replicated fog cluster (not supported yet)' },
  'admin-token': { type: 'string', help: 'token that pipeline deployment requires (accepted; deployment comes later)' }
}

export interface FogOptions extends MergeOptions {
  cloud?: string
  outboxMax: number
  uplinkTimeout: number
  uplinkRetryMax: number
  etcd?: string[]
  adminToken?: string
}

export function fogOptions (argv: string[]): FogOptions & { help: boolean } {
  const o = readMergeOptions('fog', FOG_OPTIONS, argv)
  const etcd = o.etcd as string | undefined
  return {
    ...o,
    outboxMax: o.outboxMax as number,
    uplinkTimeout: o.uplinkTimeout as number,
    uplinkRetryMax: o.uplinkRetryMax as number,
    etcd: etcd?.split(',').map(s => s.trim()).filter(s => s !== '')
  }
}

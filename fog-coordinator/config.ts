/** Options of the fog coordinator (`fogmesh fog`), with their defaults. */
import { readTokenFile, strongToken } from '../server/shell/bearer.ts'
import { MERGE_OPTIONS, readMergeOptions } from '../server/merge/merge-options.ts'
import type { MergeOptions } from '../server/merge/merge-options.ts'
import { COMMON_OPTIONS } from '../server/shell/options.ts'
import { CLUSTER_DEFAULTS } from './cluster.ts'
import type { OptionTable } from '../server/shell/options.ts'

export const FOG_OPTIONS: OptionTable = {
  ...COMMON_OPTIONS,
  ...MERGE_OPTIONS,
  cloud: { type: 'urls', help: 'cloud sink URL: every final window goes there, through a durable outbox in the data dir (repeatable: several processes of one cloud tier, tried in turn)' },
  'outbox-max': { type: 'bytes', default: '256mib', help: 'most final windows kept for the cloud while it cannot take them; when full the oldest are dropped (and counted)' },
  'uplink-timeout': { type: 'duration', default: '10s', help: 'longest a request to the cloud may take' },
  'uplink-retry-max': { type: 'duration', default: '10s', help: 'longest wait between retries to the cloud (exponential backoff with jitter from 200ms)' },
  etcd: { type: 'string', help: 'etcd endpoints HOST:PORT[,…], or https://HOST:PORT[,…] for TLS (verified with --tls-ca, presenting --tls-cert as client certificate): run as one coordinator of a replicated fog cluster (default: a single fog with its own store)' },
  'etcd-prefix': { type: 'string', default: CLUSTER_DEFAULTS.prefix, help: 'key prefix of this cluster in etcd (several clusters can share one etcd)' },
  'etcd-timeout': { type: 'duration', default: `${CLUSTER_DEFAULTS.etcdTimeout}ms`, help: 'longest an etcd request may take; beyond it the coordinator takes no partials (503 no_quorum) until etcd answers' },
  'etcd-retention': { type: 'duration', default: '6h', help: 'cluster only: how long windows and results stay in etcd (the cloud sink keeps them for longer)' },
  'lease-ttl': { type: 'duration', default: `${CLUSTER_DEFAULTS.leaseTtl / 1000}s`, help: 'cluster only: a coordinator that stops renewing its etcd lease for this long loses its shards (whole seconds)' },
  'etcd-maintain-every': { type: 'duration', default: `${CLUSTER_DEFAULTS.maintainEvery / 1000}s`, help: 'cluster only: how often the leader removes windows past --etcd-retention and compacts etcd\'s history' },
  shards: { type: 'int', default: CLUSTER_DEFAULTS.shards, help: 'cluster only: virtual shards of a new cluster (an existing cluster keeps its count)' },
  'admin-token': { type: 'string', help: 'bearer token that PUT and DELETE /v1/pipelines/{name} require (default: the environment variable FOGMESH_ADMIN_TOKEN; none: deployment is off)' },
  'admin-token-file': { type: 'string', help: 'read the admin token from this file instead (unlike a flag, ps does not show it)' }
}

export interface FogOptions extends MergeOptions {
  cloud?: string[]
  outboxMax: number
  uplinkTimeout: number
  uplinkRetryMax: number
  etcd?: string[]
  etcdPrefix: string
  etcdTimeout: number
  etcdRetention: number
  leaseTtl: number
  etcdMaintainEvery: number
  shards: number
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
    etcd: etcd?.split(',').map(s => s.trim()).filter(s => s !== ''),
    etcdPrefix: o.etcdPrefix as string,
    etcdTimeout: o.etcdTimeout as number,
    etcdRetention: o.etcdRetention as number,
    leaseTtl: o.leaseTtl as number,
    etcdMaintainEvery: o.etcdMaintainEvery as number,
    shards: o.shards as number,
    adminToken: adminToken((o.adminToken as string | undefined) ?? tokenFile(o.adminTokenFile as string | undefined) ?? nonEmpty(process.env.FOGMESH_ADMIN_TOKEN))
  }
}

function adminToken (token: string | undefined): string | undefined {
  return token === undefined ? undefined : strongToken('--admin-token', token)
}

function tokenFile (path: string | undefined): string | undefined {
  return path === undefined ? undefined : readTokenFile('--admin-token-file', path)
}

function nonEmpty (s: string | undefined): string | undefined {
  return s === undefined || s === '' ? undefined : s
}

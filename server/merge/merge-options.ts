/** Options the merge tiers (fog coordinator, cloud sink) share, with their defaults. */
import { hostname } from 'node:os'
import { join } from 'node:path'
import { readOptions } from '../shell/options.ts'
import { parseSinks } from '../sinks/index.ts'
import type { CommonOptions, OptionTable } from '../shell/options.ts'

export const MERGE_OPTIONS: OptionTable = {
  'finalize-after': { type: 'duration', default: '60s', help: 'longest wait for a silent edge before a window is finalized without it' },
  'max-batch': { type: 'bytes', default: '16mib', help: 'largest partial batch body accepted (POST /v1/partials); larger ones get 413 batch_too_large' },
  'batch-memory': { type: 'bytes', default: '64mib', help: 'partial batch bodies handled at once (being read, decoded or committed), by their declared size (--max-batch when undeclared); a batch that would go over gets 503 busy and its sender retries; one batch is always taken' },
  tick: { type: 'duration', default: '250ms', help: 'how often windows are checked for finalization' },
  'tls-client-ca': { type: 'string', help: 'CA certificates (PEM) of the site: POST /v1/partials then needs a client certificate they signed, and takes from it only what its role may send (see README, Securing a site); needs --tls-cert (default: anyone who reaches the port may send partials)' }
}

export interface MergeOptions extends CommonOptions {
  finalizeAfter: number
  maxBatch: number
  batchMemory: number
  tick: number
}

/** Reads a merge tier's options; `id` defaults to `<role>-<hostname>`, `data-dir` to `data/<id>`. */
export function readMergeOptions (role: 'fog' | 'cloud', table: OptionTable, argv: string[]): Record<string, unknown> & MergeOptions & { help: boolean } {
  const o = readOptions(table, argv)
  const id = (o.id as string | undefined) ?? `${role}-${hostname()}`
  return {
    ...(o as unknown as MergeOptions & { help: boolean }),
    id,
    dataDir: (o.dataDir as string | undefined) ?? join('data', id),
    sinks: parseSinks(o.sinks)
  }
}

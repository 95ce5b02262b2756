/**
 * Options of the cloud sink (`fogmesh cloud`), with their defaults.
 *
 * Invariants: the PostgreSQL store's password never has to be on the command line (where `ps` shows
 * it): the URL can come from a file (`--store-file`), refer to the environment (`${NAME}`), or leave
 * the password out for PGPASSWORD; and the URL is only ever shown with its password masked.
 */
import { readFileSync } from 'node:fs'
import { ConfigError } from '../core/errors.ts'
import { MERGE_OPTIONS, readMergeOptions } from '../server/merge/merge-options.ts'
import type { MergeOptions } from '../server/merge/merge-options.ts'
import { redactUrls } from '../server/shell/log.ts'
import { COMMON_OPTIONS } from '../server/shell/options.ts'
import type { OptionTable } from '../server/shell/options.ts'
import { SinkFields } from '../server/sinks/sink.ts'

export const CLOUD_OPTIONS: OptionTable = {
  ...COMMON_OPTIONS,
  ...MERGE_OPTIONS,
  store: {
    type: 'string',
    help: 'postgres://USER:PASS@HOST:PORT/DB: keep contributions, results and definitions in PostgreSQL (any number of cloud processes on one store form one tier); ${NAME} takes a part from the environment, and without a password PGPASSWORD applies (default: SQLite in the data dir)'
  },
  'store-file': { type: 'string', help: 'file whose first line is the --store URL (keeps the password out of the command line)' },
  'store-pool': { type: 'int', default: 4, help: 'most connections to the --store PostgreSQL per cloud process: two for finalization and queries, the others commit batches concurrently' }
}

/** Where a cloud process keeps its state in PostgreSQL. */
export interface StoreConfig {
  /** The connection URL, with `${NAME}` references resolved; may hold a password. */
  url: string
  /** The URL with its password masked, for logs and errors. */
  shown: string
  /** Most pooled connections. */
  pool: number
}

export interface CloudOptions extends MergeOptions {
  /** Undefined: the SQLite cloud (server/merge/merge-node.ts). */
  store?: StoreConfig
}

export function cloudOptions (argv: string[], env: NodeJS.ProcessEnv = process.env): CloudOptions & { help: boolean } {
  const o = readMergeOptions('cloud', CLOUD_OPTIONS, argv)
  const { store: raw, storeFile, storePool, ...rest } = o as typeof o & { store?: string, storeFile?: string, storePool: number }
  return { ...rest, store: storeConfig(raw, storeFile, storePool, env) }
}

function storeConfig (raw: string | undefined, file: string | undefined, pool: number, env: NodeJS.ProcessEnv): StoreConfig | undefined {
  if (raw !== undefined && file !== undefined) throw new ConfigError('give one of --store and --store-file')
  let text = raw
  if (file !== undefined) {
    try {
      text = readFileSync(file, 'utf8').split(/\r?\n/)[0].trim()
    } catch (err) {
      throw new ConfigError(`--store-file: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
    }
    if (text === '') throw new ConfigError(`--store-file: ${file} is empty`)
  }
  if (text === undefined) return undefined
  if (pool < 3) throw new ConfigError('--store-pool: at least 3 (batches, finalization and queries each need a connection)')
  // The sinks' reading of `url:` fields: ${NAME} from the environment, errors that never repeat the value.
  const url = new SinkFields({ store: text }, 'cloud', env).url('store', ['postgres:', 'postgresql:'])
  return { url: url.href, shown: redactUrls(url.href), pool }
}

/**
 * Where a node keeps the deployed pipeline set it runs: `deployed.json` in its data dir, replaced
 * atomically, so that a crash leaves the old set or the new one, never half of one. A single fog keeps the set it serves here; an edge the set it last applied, so that it runs
 * the deployed pipelines from its start, before it has heard from any fog. (A fog cluster keeps its
 * set in etcd instead.)
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { EMPTY_DEPLOYMENT, readDeployedSet } from '../../core/pipeline/deployment.ts'
import type { DeployedSet } from '../../core/pipeline/deployment.ts'
import { ConfigError, HttpError } from '../../core/errors.ts'
import { writeFileAtomic } from './atomic-file.ts'
import type { Logger } from './log.ts'

/** The deployed set of a node, and how it changes. */
export interface DeploymentStore {
  current: () => DeployedSet
  /**
   * Stores `next` if the stored set is still at revision `expected`; otherwise throws HttpError 409
   * `deployment_conflict` (another deployment came first). May throw 503 when the store is unavailable.
   */
  replace: (next: DeployedSet, expected: number) => Promise<void>
}

const FILE = 'deployed.json'

export class FileDeploymentStore implements DeploymentStore {
  readonly #path: string | undefined
  #set: DeployedSet

  /** Without a data dir the set is kept in memory (tests). */
  constructor (dataDir: string | undefined, log: Logger) {
    this.#path = dataDir === undefined ? undefined : join(dataDir, FILE)
    this.#set = EMPTY_DEPLOYMENT
    if (this.#path === undefined) return
    let text: string | undefined
    try {
      text = readFileSync(this.#path, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new ConfigError(`cannot read ${this.#path}: ${(err as Error).message}`, { cause: err })
    }
    if (text === undefined) return
    try {
      this.#set = readDeployedSet(JSON.parse(text))
    } catch (err) {
      // Only this node writes the file: unreadable means a damaged disk or a hand edit. Starting without
      // the deployed pipelines is recoverable (the mesh sends the set again); refusing to start is not.
      log.warn('deploy.store_unreadable', `cannot read ${this.#path} (${(err as Error).message}); starting without deployed pipelines`, { file: this.#path })
    }
  }

  current (): DeployedSet {
    return this.#set
  }

  async replace (next: DeployedSet, expected: number): Promise<void> {
    if (this.#set.revision !== expected) {
      throw new HttpError(409, 'deployment_conflict', `the deployed set changed meanwhile (revision ${this.#set.revision}, expected ${expected}); send the request again`)
    }
    if (this.#path !== undefined) await writeFileAtomic(this.#path, JSON.stringify(next, null, 2) + '\n')
    this.#set = next
  }
}

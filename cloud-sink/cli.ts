/**
 * `fogmesh cloud`: runs the cloud sink until a signal. With --store (or --store-file) it is one
 * process of the cloud tier on PostgreSQL (cloud-sink/pg-cloud.ts); without, the SQLite merge node in
 * the data dir, as before.
 */
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { runUntilSignal } from '../server/shell/lifecycle.ts'
import { roleLogger } from '../server/shell/log.ts'
import { MergeNode } from '../server/merge/merge-node.ts'
import { optionsHelp } from '../server/shell/options.ts'
import { CLOUD_OPTIONS, cloudOptions } from './config.ts'
import { PgCloud } from './pg-cloud.ts'

export async function cloudCommand (argv: string[]): Promise<number> {
  const options = cloudOptions(argv)
  if (options.help) {
    process.stdout.write(optionsHelp('usage: fogmesh cloud [--config FILE] [options]', CLOUD_OPTIONS) + '\n')
    return 0
  }
  const specs: PipelineSpec[] = options.pipelines === undefined ? [] : await loadPipelinesFile(options.pipelines)
  const log = roleLogger('cloud', options)
  const { store } = options
  const node = store === undefined
    ? new MergeNode('cloud', options, specs, { log })
    : new PgCloud({ ...options, store }, specs, log)
  return await runUntilSignal(node, log)
}

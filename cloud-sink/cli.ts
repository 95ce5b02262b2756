/** `fogmesh cloud`: runs the cloud sink until a signal. */
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { runUntilSignal } from '../server/shell/lifecycle.ts'
import { roleLogger } from '../server/shell/log.ts'
import { MergeNode } from '../server/merge/merge-node.ts'
import { optionsHelp } from '../server/shell/options.ts'
import { CLOUD_OPTIONS, cloudOptions } from './config.ts'

export async function cloudCommand (argv: string[]): Promise<number> {
  const options = cloudOptions(argv)
  if (options.help) {
    process.stdout.write(optionsHelp('usage: fogmesh cloud [--config FILE] [options]', CLOUD_OPTIONS) + '\n')
    return 0
  }
  const specs: PipelineSpec[] = options.pipelines === undefined ? [] : await loadPipelinesFile(options.pipelines)
  const log = roleLogger('cloud', options)
  return await runUntilSignal(new MergeNode('cloud', options, specs, undefined, [], log), log)
}

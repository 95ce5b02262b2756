/** `fogmesh fog`: runs a fog coordinator until a signal. */
import { ConfigError } from '../core/errors.ts'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { runUntilSignal } from '../server/lifecycle.ts'
import { MergeNode } from '../server/merge-node.ts'
import { optionsHelp } from '../server/options.ts'
import { FOG_OPTIONS, fogOptions } from './config.ts'

export async function fogCommand (argv: string[]): Promise<number> {
  const options = fogOptions(argv)
  if (options.help) {
    process.stdout.write(optionsHelp('usage: fogmesh fog [--config FILE] [options]', FOG_OPTIONS) + '\n')
    return 0
  }
  if (options.etcd !== undefined) {
    throw new ConfigError('--etcd: a replicated fog cluster (etcd) is not supported yet; run a single fog coordinator without --etcd')
  }
  const specs: PipelineSpec[] = options.pipelines === undefined ? [] : await loadPipelinesFile(options.pipelines)
  if (options.cloud !== undefined) {
    process.stderr.write('fog: --cloud given, but this build keeps final windows here (forwarding comes with the fog release)\n')
  }
  return await runUntilSignal(new MergeNode('fog', options, specs))
}

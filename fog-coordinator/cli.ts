/** `fogmesh fog`: runs a fog coordinator until a signal. */
import { ConfigError } from '../core/errors.ts'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { runUntilSignal } from '../server/shell/lifecycle.ts'
import { roleLogger } from '../server/shell/log.ts'
import { optionsHelp } from '../server/shell/options.ts'
import { FOG_OPTIONS, fogOptions } from './config.ts'
import { FogCoordinator } from './fog.ts'

export async function fogCommand (argv: string[]): Promise<number> {
  const options = fogOptions(argv)
  if (options.help) {
    process.stdout.write(optionsHelp('usage: fogmesh fog [--config FILE] [options]', FOG_OPTIONS) + '\n')
    return 0
  }
  if (options.etcd !== undefined && options.etcd.length === 0) throw new ConfigError('--etcd: give at least one HOST:PORT')
  const specs: PipelineSpec[] = options.pipelines === undefined ? [] : await loadPipelinesFile(options.pipelines)
  const log = roleLogger('fog', options)
  return await runUntilSignal(new FogCoordinator(options, specs, log), log)
}

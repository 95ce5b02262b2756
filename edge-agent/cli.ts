/** `fogmesh edge`: runs an edge agent until a signal. */
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { runUntilSignal } from '../server/shell/lifecycle.ts'
import { roleLogger } from '../server/shell/log.ts'
import { optionsHelp } from '../server/shell/options.ts'
import { EdgeAgent } from './agent.ts'
import { EDGE_OPTIONS, edgeOptions } from './config.ts'

export async function edgeCommand (argv: string[]): Promise<number> {
  const options = edgeOptions(argv)
  if (options.help) {
    process.stdout.write(optionsHelp('usage: fogmesh edge [--config FILE] [options]', EDGE_OPTIONS) + '\n')
    return 0
  }
  const log = roleLogger('edge', options)
  const specs: PipelineSpec[] = options.pipelines === undefined ? [] : await loadPipelinesFile(options.pipelines)
  if (specs.length === 0) log.warn('edge.no_pipelines', 'no pipelines (--pipelines FILE): readings will be counted as unmatched')
  return await runUntilSignal(new EdgeAgent(options, specs, log), log)
}

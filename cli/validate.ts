/** `fogmesh validate FILE`: prints every problem as file:line:col: message; exit 1 when there is one. */
import { readFile } from 'node:fs/promises'
import { PipelineError } from '../core/errors.ts'
import { parsePipelines } from '../core/pipeline/parse.ts'

export async function validateCommand (argv: string[]): Promise<number> {
  if (argv.length !== 1 || argv[0].startsWith('-')) {
    process.stderr.write('usage: fogmesh validate FILE\n')
    return 2
  }
  const file = argv[0]
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    process.stderr.write(`${file}: cannot read: ${(err as Error).message}\n`)
    return 1
  }
  try {
    const specs = parsePipelines(text, file)
    process.stdout.write(`${file}: ${specs.length} pipeline${specs.length === 1 ? '' : 's'} valid (${specs.map(s => s.name).join(', ')})\n`)
    return 0
  } catch (err) {
    if (!(err instanceof PipelineError)) throw err
    process.stdout.write(err.message + '\n')
    return 1
  }
}

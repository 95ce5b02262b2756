/** `fogmesh keygen FILE`: writes a new mesh key (a libp2p swarm key) for `--mesh-key FILE`. */
import { writeFile } from 'node:fs/promises'
import { generateSwarmKey } from '../core/mesh/swarm-key.ts'

export async function keygenCommand (argv: string[]): Promise<number> {
  if (argv.length !== 1 || argv[0].startsWith('-')) {
    process.stderr.write('usage: fogmesh keygen FILE   (writes a new mesh key; copy it to every node of the mesh)\n')
    return 2
  }
  const file = argv[0]
  try {
    // 'wx': never overwrite, since replacing a mesh key cuts this node off from the rest of the mesh.
    await writeFile(file, generateSwarmKey(), { mode: 0o600, flag: 'wx' })
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    process.stderr.write(code === 'EEXIST'
      ? `fogmesh keygen: ${file} exists; not overwriting a mesh key (remove it first to replace it)\n`
      : `fogmesh keygen: cannot write ${file}: ${(err as Error).message}\n`)
    return 1
  }
  process.stdout.write(`${file}: new mesh key written; start every node with --mesh-key ${file}\n`)
  return 0
}

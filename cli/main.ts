/** The `fogmesh` command: one executable, one sub-command per role or tool. */
import { ConfigError, FogmeshError } from '../core/errors.ts'

const COMMANDS: Record<string, { help: string, run: () => Promise<(argv: string[]) => Promise<number>> }> = {
  demo: { help: 'a whole local mesh in one command (npm start)', run: async () => (await import('./demo.ts')).demoCommand },
  edge: { help: 'an edge agent', run: async () => (await import('../edge-agent/cli.ts')).edgeCommand },
  fog: { help: 'a fog coordinator: merges partials from edges', run: async () => (await import('../fog-coordinator/cli.ts')).fogCommand },
  cloud: { help: 'the cloud sink: merges partials from fogs (and edges on failover)', run: async () => (await import('../cloud-sink/cli.ts')).cloudCommand },
  sim: { help: 'sensor simulator; writes the ground truth', run: async () => (await import('../simulators/cli.ts')).simCommand },
  chaos: { help: 'a fog cluster under injected faults, checked against the ground truth', run: async () => (await import('../simulators/chaos-cli.ts')).chaosCommand },
  validate: { help: 'check a pipelines file', run: async () => (await import('./validate.ts')).validateCommand },
  keygen: { help: 'write a new mesh key file (--mesh-key)', run: async () => (await import('./keygen.ts')).keygenCommand },
  cert: { help: 'make a site CA and node certificates (--tls-cert)', run: async () => (await import('./cert.ts')).certCommand },
  query: { help: 'print results from any tier', run: async () => (await import('./query.ts')).queryCommand }
}

function usage (): string {
  return ['usage: fogmesh <command> [options]   (fogmesh <command> --help for its options)', '', 'commands:',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.help}`)].join('\n') + '\n'
}

export async function main (argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(usage())
    return command === undefined ? 2 : 0
  }
  if (command === '--version' || command === 'version') {
    const { version } = (await import('../package.json', { with: { type: 'json' } })).default
    process.stdout.write(`fogmesh ${version} (node ${process.version})\n`)
    return 0
  }
  const entry = COMMANDS[command]
  if (entry === undefined) {
    process.stderr.write(`fogmesh: unknown command "${command}"\n${usage()}`)
    return 2
  }
  try {
    return await (await entry.run())(rest)
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`fogmesh ${command}: ${err.message}\n`)
      return 2
    }
    if (err instanceof FogmeshError) {
      process.stderr.write(`fogmesh ${command}: ${err.message}\n`)
      return 1
    }
    throw err
  }
}

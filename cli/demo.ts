/** `fogmesh demo` (npm start): an edge agent with its embedded broker, fed by the simulator. */
export async function demoCommand (_argv: string[]): Promise<number> {
  process.stderr.write('demo: not built yet\n')
  return 1
}

/**
 * Runs a server role until SIGTERM or SIGINT: starts it, prints the `ready …` line on stdout, and on a
 * signal stops it cleanly (state flushed) and exits 0. A second signal exits at once.
 */
export interface Runnable {
  start: () => Promise<void>
  stop: () => Promise<void>
  readyLine: () => string
}

export async function runUntilSignal (node: Runnable): Promise<number> {
  await node.start()
  process.stdout.write(node.readyLine() + '\n')
  return await new Promise<number>((resolve) => {
    let stoppingSince = 0
    const onSignal = (signal: NodeJS.Signals) => {
      // Ctrl-C reaches us twice when a launcher re-executed us (once from the terminal, once forwarded):
      // only a signal well after the first means "stop now".
      if (stoppingSince > 0 && Date.now() - stoppingSince < 2_000) return
      if (stoppingSince > 0) {
        process.stderr.write(`${signal} again: exiting without a clean stop\n`)
        process.exit(1)
      }
      stoppingSince = Date.now()
      node.stop().then(() => resolve(0), (err: unknown) => {
        process.stderr.write(`error while stopping: ${(err as Error).message}\n`)
        resolve(1)
      })
    }
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
  })
}

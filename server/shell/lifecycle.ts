/**
 * Runs a server role until SIGTERM or SIGINT: starts it, prints the `ready …` line on stdout, and on a
 * signal stops it cleanly (state flushed) and exits 0. A second signal exits at once. SIGHUP asks the
 * node to read its certificate files again (a rotation), without stopping anything; a reload that
 * fails is logged and changes nothing.
 */
import type { Logger } from './log.ts'

export interface Runnable {
  start: () => Promise<void>
  stop: () => Promise<void>
  readyLine: () => string
  /** Reads the node's certificate files again (SIGHUP); throws, changing nothing, if one is bad. */
  reload?: () => void
}

export async function runUntilSignal (node: Runnable, log: Logger): Promise<number> {
  await node.start()
  const ready = node.readyLine()
  process.stdout.write(ready + '\n')
  log.info('node.ready', ready)
  return await new Promise<number>((resolve) => {
    let stoppingSince = 0
    const onSignal = (signal: NodeJS.Signals) => {
      // Ctrl-C reaches us twice when a launcher re-executed us (once from the terminal, once forwarded):
      // only a signal well after the first means "stop now".
      if (stoppingSince > 0 && Date.now() - stoppingSince < 2_000) return
      if (stoppingSince > 0) {
        log.warn('node.stop_forced', `${signal} again: exiting without a clean stop`, { signal })
        process.exit(1)
      }
      stoppingSince = Date.now()
      log.info('node.stopping', 'stopping', { signal })
      node.stop().then(() => {
        log.info('node.stopped', 'stopped cleanly', { durationMs: Date.now() - stoppingSince })
        resolve(0)
      }, (err: unknown) => {
        log.error('node.stop_failed', 'error while stopping', { err })
        resolve(1)
      })
    }
    process.on('SIGHUP', () => {
      try {
        node.reload?.()
      } catch (err) {
        log.error('tls.reload_failed', `SIGHUP: keeping the certificates in use (${(err as Error).message})`, { reason: (err as Error).message })
      }
    })
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
  })
}

/**
 * Runs a server role until SIGTERM or SIGINT: starts it, prints the `ready …` line on stdout, and on a
 * signal stops it cleanly (state flushed) and exits 0. A second signal exits at once. SIGHUP asks the
 * node to read its certificate and API token files again (a rotation), without stopping anything; a
 * reload that fails is logged and changes nothing.
 *
 * A signal while the node is still starting (a start that waits, e.g. for its store) aborts the start
 * (the AbortSignal start is given), then stops the node cleanly and exits 0 without a `ready` line:
 * stop() is only ever called after start() has settled, so a role need not make the two safe to run
 * at once. A start that ignores the abort and does not end within START_ABORT_GRACE exits 1 with a
 * line saying so: a signal never leaves a process waiting.
 */
import type { Logger } from './log.ts'

export interface Runnable {
  /** `abort` fires on a stop signal during the start: a start that waits should then return early. */
  start: (abort?: AbortSignal) => Promise<void>
  stop: () => Promise<void>
  readyLine: () => string
  /** Reads the node's certificate files again (SIGHUP); throws, changing nothing, if one is bad. */
  reload?: () => void
}

/** How long a start that ignores its abort may go on after a stop signal, ms. */
const START_ABORT_GRACE = 10_000

export async function runUntilSignal (node: Runnable, log: Logger): Promise<number> {
  const aborted = new AbortController()
  let started = false
  let stoppingSince = 0
  let stopNow: (() => void) | undefined
  /** Set by a signal during start; cleared once start has settled (a clean stop then takes the time it needs). */
  let startGrace: NodeJS.Timeout | undefined
  const onSignal = (signal: NodeJS.Signals) => {
    // Ctrl-C reaches us twice when a launcher re-executed us (once from the terminal, once forwarded):
    // only a signal well after the first means "stop now".
    if (stoppingSince > 0 && Date.now() - stoppingSince < 2_000) return
    if (stoppingSince > 0) {
      log.warn('node.stop_forced', `${signal} again: exiting without a clean stop`, { signal })
      process.exit(1)
    }
    stoppingSince = Date.now()
    if (started) {
      log.info('node.stopping', 'stopping', { signal })
      stopNow?.()
    } else {
      log.info('node.stopping', 'stopping while starting: the start is abandoned', { signal, starting: true })
      aborted.abort()
      startGrace = setTimeout(() => {
        log.warn('node.stop_forced', `the start did not end within ${START_ABORT_GRACE / 1000}s of ${signal}: exiting without a clean stop`, { signal })
        process.exit(1)
      }, START_ABORT_GRACE).unref()
    }
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  const stop = async (): Promise<number> => {
    try {
      await node.stop()
      log.info('node.stopped', 'stopped cleanly', { durationMs: Date.now() - stoppingSince })
      return 0
    } catch (err) {
      log.error('node.stop_failed', 'error while stopping', { err })
      return 1
    }
  }

  try {
    await node.start(aborted.signal)
  } finally {
    clearTimeout(startGrace)
  }
  if (aborted.signal.aborted) return await stop()
  started = true
  const ready = node.readyLine()
  process.stdout.write(ready + '\n')
  log.info('node.ready', ready)
  process.on('SIGHUP', () => {
    try {
      node.reload?.()
    } catch (err) {
      log.error('tls.reload_failed', `SIGHUP: keeping the certificates and token in use (${(err as Error).message})`, { reason: (err as Error).message })
    }
  })
  return await new Promise<number>((resolve) => {
    stopNow = () => { void stop().then(resolve) }
  })
}

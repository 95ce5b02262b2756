/** `fogmesh chaos`: runs the chaos scenario (simulators/chaos.ts) and prints its report. */
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { parseDuration } from '../core/duration.ts'
import { ConfigError } from '../core/errors.ts'
import { CHAOS_DEFAULTS, formatReport, runChaos } from './chaos.ts'

const USAGE = `usage: fogmesh chaos [options]

Runs a replicated fog cluster on this machine (127.0.0.1 only): 3 etcd members, 3 fog coordinators,
a cloud sink, edge agents fed by the sensor simulator. While readings flow it kills the leader, then a
follower (kill -9, then restarts them), cuts one coordinator off from etcd, and takes etcd's quorum
away; it measures how long each failover takes, then checks every coordinator, the cloud and every
edge against the simulator's ground truth. Needs etcd (apt-get install etcd-server). About a minute.

  --seed N           seeds the readings and the choice of victims (default ${CHAOS_DEFAULTS.seed})
  --keep DIR         run in DIR and keep it: logs/, report.json, data dirs (default: a temp dir, removed)
  --json             print the report as JSON on stdout (the summary then goes to stderr)
  --lease-ttl D      the coordinators' --lease-ttl, whole seconds (default ${CHAOS_DEFAULTS.leaseTtl / 1000}s; etcd grants
                     at least 2s with the 1s election timeout of its members here)
  --edges N          edge agents, 1 to 20 (default ${CHAOS_DEFAULTS.edges})
  -h, --help         this help

Exit status: 0 when every step did what it should and every tier equals the ground truth, 1 when not,
130 when interrupted (everything it started is stopped first).
`

export async function chaosCommand (argv: string[]): Promise<number> {
  let values
  try {
    values = parseArgs({
      args: argv,
      options: {
        seed: { type: 'string' },
        keep: { type: 'string' },
        json: { type: 'boolean' },
        'lease-ttl': { type: 'string' },
        edges: { type: 'string' },
        help: { type: 'boolean', short: 'h' }
      }
    }).values
  } catch (err) {
    throw new ConfigError(`${(err as Error).message} (fogmesh chaos --help lists the options)`)
  }
  if (values.help === true) {
    process.stdout.write(USAGE)
    return 0
  }
  const int = (name: string, text: string | undefined, min: number, max: number): number | undefined => {
    if (text === undefined) return undefined
    const n = Number(text)
    if (!/^\d+$/.test(text.trim()) || n < min || n > max) throw new ConfigError(`--${name}: expected a whole number from ${min} to ${max}, got ${JSON.stringify(text)}`)
    return n
  }
  let leaseTtl: number | undefined
  if (values['lease-ttl'] !== undefined) {
    leaseTtl = parseDuration(values['lease-ttl'])
    if (leaseTtl < 1_000 || leaseTtl % 1_000 !== 0 || leaseTtl > 60_000) {
      throw new ConfigError(`--lease-ttl: expected whole seconds from 1s to 60s (etcd leases count seconds), got ${JSON.stringify(values['lease-ttl'])}`)
    }
  }
  const json = values.json === true

  // The first signal stops the run cleanly (every node, etcd, the temp dir); a second one, well after
  // the first, exits at once (the nodes and etcd are still killed on exit).
  const abort = new AbortController()
  let firstSignalAt = 0
  const onSignal = (signal: NodeJS.Signals): void => {
    const now = Date.now()
    if (firstSignalAt === 0) {
      firstSignalAt = now
      process.stderr.write(`chaos: ${signal}: stopping everything\n`)
      abort.abort()
    } else if (now - firstSignalAt > 2_000) {
      process.stderr.write(`chaos: ${signal} again: exiting now; the nodes and etcd are killed, the run's directory may be left behind\n`)
      process.exit(130)
    }
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('SIGHUP', onSignal)
  try {
    const report = await runChaos({
      seed: int('seed', values.seed, 0, 2 ** 32 - 1),
      dir: values.keep === undefined ? undefined : resolve(values.keep),
      leaseTtl,
      edges: int('edges', values.edges, 1, 20),
      log: line => { process.stderr.write(`chaos: ${line}\n`) },
      signal: abort.signal
    })
    const summary = formatReport(report)
    if (json) {
      process.stderr.write('\n' + summary)
      process.stdout.write(JSON.stringify(report, null, 2) + '\n')
    } else {
      process.stdout.write('\n' + summary)
    }
    return report.aborted ? 130 : report.verdict === 'pass' ? 0 : 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    process.off('SIGHUP', onSignal)
  }
}

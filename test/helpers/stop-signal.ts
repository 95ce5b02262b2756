/**
 * A node stopped by a signal while its start still waits (for its store, for etcd): the start must end,
 * and the process exit 0 with the stop logged and no ready line. For the tests of every role that can
 * wait at start.
 */
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import type { Test } from 'tap'
import { exitStatus, fetchJson, fogmeshBin, freePort, track, waitFor } from './process.ts'

/**
 * Starts `fogmesh ROLE …args` (with --http-port and JSON logs added), waits for a log line with event
 * `waiting`, checks /healthz says 503, sends `signal` and asserts the clean exit.
 */
export async function stopWhileStarting (t: Test, args: string[], waiting: string, signal: NodeJS.Signals): Promise<void> {
  const port = await freePort()
  const proc = spawn(process.execPath, [fogmeshBin, ...args, '--http-port', String(port), '--log-format', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] })
  track(proc)
  const stdout: string[] = []
  const stderr: string[] = []
  createInterface({ input: proc.stdout }).on('line', l => stdout.push(l))
  createInterface({ input: proc.stderr }).on('line', l => stderr.push(l))
  const closed = new Promise<number>(resolve => proc.once('close', (code, s) => resolve(exitStatus(code, s))))
  await waitFor(() => stderr.some(l => l.includes(waiting)), { timeoutMs: 20_000, message: `${args[0]} logging ${waiting}` })
  t.equal((await fetchJson(`http://127.0.0.1:${port}/healthz`)).status, 503, `${signal}: not ready while it waits`)
  proc.kill(signal)
  t.equal(await closed, 0, `${signal}: exit 0`)
  const events = stderr.map(l => { try { return JSON.parse(l) as { event?: string, signal?: string } } catch { return {} } })
  t.ok(events.some(e => e.event === 'node.stopping' && e.signal === signal), `${signal}: a line says it stops while starting`)
  t.ok(events.some(e => e.event === 'node.stopped'), `${signal}: and that it stopped cleanly`)
  t.notOk(stdout.some(l => l.startsWith('ready ')), `${signal}: no ready line`)
}

/**
 * `fogmesh demo` started as a user starts it, for the demo tests: its output collected line by line,
 * a wait for a line, and its exit status. The process is tracked, so a test that fails leaves none
 * behind.
 */
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { exitStatus, fogmeshBin, repoRoot, track, waitFor } from './process.ts'

export interface Demo {
  pid: number
  output: string[]
  /** Resolves with the exit status once the demo has exited. */
  exited: Promise<number>
  signal: (s: NodeJS.Signals) => void
  /** Waits for an output line matching `re`. */
  line: (re: RegExp, timeoutMs: number) => Promise<RegExpMatchArray>
}

export function startDemo (args: string[]): Demo {
  const proc = spawn(process.execPath, [fogmeshBin, 'demo', ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] })
  track(proc)
  const output: string[] = []
  for (const stream of [proc.stdout, proc.stderr]) createInterface({ input: stream, crlfDelay: Infinity }).on('line', l => output.push(l))
  const exited = new Promise<number>(resolve => proc.once('close', (code, signal) => resolve(exitStatus(code, signal))))
  let done = false
  void exited.then(() => { done = true })
  return {
    pid: proc.pid!,
    output,
    exited,
    signal: s => { if (!done) proc.kill(s) },
    line: async (re, timeoutMs) => await waitFor(() => {
      for (const l of output) {
        const m = l.match(re)
        if (m !== null) return m
      }
      if (done) throw new Error(`the demo exited\n${output.join('\n')}`)
      return undefined
    }, { timeoutMs, intervalMs: 100, message: `a line matching ${re}\n${output.join('\n')}` })
  }
}

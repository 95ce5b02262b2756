// Test helpers for running fogmesh processes, ports, temp dirs, polling and HTTP.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { constants, tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { freePorts } from '../../simulators/ports.ts'

/** The repository root (where package.json is). */
export const repoRoot = fileURLToPath(new URL('../../', import.meta.url))
/** The fogmesh executable. */
export const fogmeshBin = join(repoRoot, 'bin', 'fogmesh.js')

/** Matches the line a fogmesh node prints once it serves: `ready <role> <id> http=<url> [mqtt=<url>] [mesh=<url>]`. */
export const READY_LINE = /^ready (\w+) (\S+) http=(\S+)( mqtt=(\S+))?( mesh=(\S+))?/

/** How many trailing output lines error messages quote. */
const TAIL_LINES = 40

// Child processes and temp dirs the helpers started, so a test that forgets (or crashes before)
// its teardown does not leave brokers and nodes running after the test process is gone.
const liveChildren = new Set<ChildProcess>()
process.on('exit', () => {
  for (const child of liveChildren) {
    try { child.kill('SIGKILL') } catch {}
  }
})

/** @internal Registers a child process to be SIGKILLed when the test process exits. */
export function track (child: ChildProcess): void {
  liveChildren.add(child)
  child.once('exit', () => liveChildren.delete(child))
}

/**
 * Stops a server the test started: `signal`, then SIGKILL if it has not exited within `graceMs`.
 * No-op when it is not running. `exited` resolves when it has exited.
 */
export async function stopChild (child: ChildProcess, exited: Promise<unknown>, signal: NodeJS.Signals, graceMs = 15_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  child.kill(signal)
  let timer: NodeJS.Timeout | undefined
  const late = await Promise.race([exited.then(() => false), new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(true), graceMs) })])
  clearTimeout(timer)
  if (late) {
    child.kill('SIGKILL')
    await exited
  }
}

export function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}

/** The exit status as a shell reports it: the exit code, or 128 + the number of the killing signal. */
export function exitStatus (code: number | null, signal: NodeJS.Signals | null): number {
  if (code != null) return code
  return 128 + (signal != null ? (constants.signals[signal] ?? 0) : 0)
}

function tail (lines: string[], n = TAIL_LINES): string {
  const shown = lines.slice(-n)
  return (lines.length > n ? `  … (${lines.length - n} earlier lines)\n` : '') + shown.map(l => `  ${l}`).join('\n')
}

/**
 * A port that was free on 127.0.0.1 a moment ago, below the ephemeral range (simulators/ports.ts).
 * Another process may still grab it before the caller binds it; callers that can, retry on EADDRINUSE.
 */
export async function freePort (): Promise<number> {
  return (await freePorts(1))[0]
}

export interface TmpDir {
  path: string
  /** Removes the directory and everything in it; safe to call twice. */
  cleanup (): Promise<void>
}

/** A new empty directory under the OS temp dir, named `<prefix>XXXXXX`. */
export async function tmpDir (prefix = 'fogmesh-test-'): Promise<TmpDir> {
  const path = await mkdtemp(join(tmpdir(), prefix))
  return {
    path,
    cleanup: () => rm(path, { recursive: true, force: true, maxRetries: 3 })
  }
}

/**
 * The life of a server a test starts in `dir` (PostgreSQL, InfluxDB): started once here (the dir is
 * removed if that fails), and the returned stop pauses it and removes the dir, once however often it
 * is called (teardowns may call it twice).
 */
export async function serverLifecycle (dir: TmpDir, start: () => Promise<void>, pause: () => Promise<void>): Promise<() => Promise<void>> {
  try {
    await start()
  } catch (err) {
    await dir.cleanup()
    throw err
  }
  let stopped: Promise<void> | undefined
  return () => {
    stopped ??= (async () => {
      await pause()
      await dir.cleanup()
    })()
    return stopped
  }
}

export interface WaitForOptions {
  /** Give up after this long (default 10 s). */
  timeoutMs?: number
  /** Time between attempts (default 50 ms). */
  intervalMs?: number
  /** What we were waiting for, for the timeout error. */
  message?: string
}

/**
 * Calls `fn` until it returns something other than false, null or undefined, and returns that.
 * A throwing `fn` counts as not yet; its last error is quoted if we time out.
 */
export async function waitFor<T> (fn: () => T | Promise<T>, opts: WaitForOptions = {}): Promise<Exclude<T, false | null | undefined>> {
  const { timeoutMs = 10_000, intervalMs = 50, message = 'condition' } = opts
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await fn()
      if (value !== false && value != null) return value as Exclude<T, false | null | undefined>
      lastError = undefined
    } catch (err) {
      lastError = err
    }
    if (Date.now() >= deadline) {
      const cause = lastError instanceof Error ? `: last error: ${lastError.message}` : lastError != null ? `: last error: ${String(lastError)}` : ''
      throw new Error(`timed out after ${timeoutMs}ms waiting for ${message}${cause}`, { cause: lastError })
    }
    await sleep(Math.min(intervalMs, Math.max(0, deadline - Date.now())))
  }
}

export interface FetchJsonInit extends RequestInit {
  /** Sent as the JSON request body (with content-type application/json). */
  json?: unknown
  /** Abort the request after this long (default 10 s) unless `signal` is given. */
  timeoutMs?: number
}

export interface JsonResponse {
  status: number
  headers: Headers
  /** The parsed JSON body, or the raw text when the body is not JSON (undefined when empty). */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests poke into arbitrary response shapes
  body: any
}

/** fetch() that reads the whole body and parses it as JSON when it is JSON. Never throws on HTTP error statuses. */
export async function fetchJson (url: string | URL, init: FetchJsonInit = {}): Promise<JsonResponse> {
  const { json, timeoutMs = 10_000, ...rest } = init
  const headers = new Headers(rest.headers)
  if (json !== undefined) {
    rest.body = JSON.stringify(json)
    if (!headers.has('content-type')) headers.set('content-type', 'application/json')
  }
  const res = await fetch(url, { ...rest, headers, signal: rest.signal ?? AbortSignal.timeout(timeoutMs) })
  const text = await res.text()
  let body: unknown = text === '' ? undefined : text
  if (text !== '') {
    try { body = JSON.parse(text) } catch {}
  }
  return { status: res.status, headers: res.headers, body }
}

export interface StartFogmeshOptions {
  /** Added to (and overriding) the test process's environment. */
  env?: Record<string, string | undefined>
  /** How long to wait for the ready line (default 20 s). */
  timeoutMs?: number
  /** Working directory (default: the repository root). */
  cwd?: string
  /** Copy the child's output to this process's stderr as it comes (also on with FOGMESH_TEST_ECHO=1). */
  echo?: boolean
  /**
   * What runs bin/fogmesh.js: a program and its first arguments (default: this process's Node), e.g.
   * `['qemu-aarch64', '-L', sysroot, arm64Node]`.
   */
  command?: string[]
}

export interface ExitInfo {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface RunningProcess {
  role: string
  id: string
  /** The HTTP API base URL from the ready line. */
  http: string
  mqtt?: string
  mesh?: string
  proc: ChildProcess
  /** Output lines so far (growing while the process runs). */
  stdout: string[]
  stderr: string[]
  /** Resolves when the process has exited (never rejects). */
  exited: Promise<ExitInfo>
  kill (signal?: NodeJS.Signals): void
  /**
   * SIGTERM, then waits for the exit (default 10 s) and returns the exit status (128 + signal number
   * if it died of a signal). If it does not exit in time it is SIGKILLed and stop() rejects.
   */
  stop (timeoutMs?: number): Promise<number>
  /** Waits for an output line (stdout or stderr, including lines already seen) matching `re`. */
  waitForLine (re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>
}

/**
 * Runs `node bin/fogmesh.js ...args` (or `opts.command` instead of node) and resolves once it prints its ready line. Rejects (and kills
 * the process) if it exits first or is not ready within the timeout, quoting its output.
 */
export function startFogmesh (args: string[], opts: StartFogmeshOptions = {}): Promise<RunningProcess> {
  const { timeoutMs = 20_000, cwd = repoRoot } = opts
  const echo = opts.echo ?? process.env.FOGMESH_TEST_ECHO === '1'
  const env: Record<string, string | undefined> = { ...process.env, ...opts.env }
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k]
  const [program, ...programArgs] = opts.command ?? [process.execPath]
  const proc = spawn(program, [...programArgs, fogmeshBin, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
  track(proc)
  const label = `fogmesh ${args.join(' ')}`.trim()
  const stdout: string[] = []
  const stderr: string[] = []
  const lineWaiters = new Set<(line: string) => void>()
  let exitInfo: ExitInfo | undefined

  const exited = new Promise<ExitInfo>(resolve => {
    proc.once('error', () => resolve(exitInfo ??= { code: null, signal: null }))
    proc.once('close', (code, signal) => resolve(exitInfo ??= { code, signal }))
  })

  const collect = (stream: NodeJS.ReadableStream, into: string[], name: string) => {
    createInterface({ input: stream, crlfDelay: Infinity }).on('line', line => {
      into.push(line)
      if (echo) process.stderr.write(`[${label} ${name}] ${line}\n`)
      for (const waiter of lineWaiters) waiter(line)
    })
  }
  collect(proc.stdout!, stdout, 'out')
  collect(proc.stderr!, stderr, 'err')

  const describe = () => `stdout:\n${tail(stdout) || '  (none)'}\nstderr:\n${tail(stderr) || '  (none)'}`

  const kill = (signal: NodeJS.Signals = 'SIGTERM') => {
    if (exitInfo == null) {
      try { proc.kill(signal) } catch {}
    }
  }

  const waitForLine = (re: RegExp, ms = 10_000) => new Promise<RegExpMatchArray>((resolve, reject) => {
    for (const line of [...stdout, ...stderr]) {
      const m = line.match(re)
      if (m != null) return resolve(m)
    }
    const done = () => {
      clearTimeout(timer)
      lineWaiters.delete(onLine)
    }
    const onLine = (line: string) => {
      const m = line.match(re)
      if (m != null) {
        done()
        resolve(m)
      }
    }
    const timer = setTimeout(() => {
      done()
      reject(new Error(`${label}: no line matching ${re} within ${ms}ms\n${describe()}`))
    }, ms)
    lineWaiters.add(onLine)
    void exited.then(info => {
      if (!lineWaiters.has(onLine)) return
      done()
      reject(new Error(`${label}: exited (${exitStatus(info.code, info.signal)}) before printing a line matching ${re}\n${describe()}`))
    })
  })

  const stop = async (ms = 10_000): Promise<number> => {
    if (exitInfo == null) {
      kill('SIGTERM')
      let timer: NodeJS.Timeout | undefined
      const timedOut = await Promise.race([
        exited.then(() => false),
        new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(true), ms) })
      ])
      clearTimeout(timer)
      if (timedOut) {
        kill('SIGKILL')
        await exited
        throw new Error(`${label}: did not exit within ${ms}ms of SIGTERM; killed it\n${describe()}`)
      }
    }
    const info = await exited
    return exitStatus(info.code, info.signal)
  }

  return new Promise<RunningProcess>((resolve, reject) => {
    proc.once('error', err => reject(new Error(`${label}: could not start ${program}: ${err.message}`)))
    waitForLine(READY_LINE, timeoutMs).then(m => {
      resolve({
        role: m[1],
        id: m[2],
        http: m[3],
        mqtt: m[5],
        mesh: m[7],
        proc,
        stdout,
        stderr,
        exited,
        kill,
        stop,
        waitForLine
      })
    }, err => {
      kill('SIGKILL')
      reject(err)
    })
  })
}

/**
 * One fogmesh role (`fogmesh <role> …`) run as a child process, the way a user starts it: its ready line
 * (`ready <role> <id> http=<url> [mqtt=<url>]`) tells where it serves, its exit is awaited, and it is
 * stopped with SIGTERM (SIGKILL after a grace period) or killed outright. `fogmesh demo` echoes the
 * nodes' output with a prefix; the chaos runner writes it to files.
 *
 * Children get their own process group (`detached`), so a Ctrl-C at the terminal reaches only the
 * parent, which then stops them in its own order. With `watchParent` a child whose parent disappeared
 * (killed outright, e.g. SIGKILL) stops itself cleanly rather than run on unseen, holding its ports.
 * Every node still running when this process exits is SIGKILLed.
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

const FOGMESH = fileURLToPath(new URL('../bin/fogmesh.js', import.meta.url))

/**
 * Preloaded into a watched node: its parent changed, so it stops itself. A data: URL, so that the
 * node needs no file of ours besides the fogmesh executable.
 */
const WATCH_PARENT = 'const parent = process.ppid; const timer = setInterval(() => { if (process.ppid === parent) return; ' +
  'clearInterval(timer); process.kill(process.pid, "SIGTERM") }, 1000); timer.unref()'

const READY_LINE = /^ready \S+ \S+ http=(\S+)(?: mqtt=(\S+))?(?: mesh=(\S+))?/
/** Stderr lines kept to tell why a node did not start. */
const STDERR_TAIL = 20

export interface ExitInfo {
  code: number | null
  signal: NodeJS.Signals | null
}

/** Where a node serves, from its ready line. */
export interface NodeAddress {
  http: string
  mqtt?: string
  /** Its mesh address, `<multiaddr>/p2p/<peer id>`, when it is in a mesh. */
  mesh?: string
}

export interface NodeProcessOptions {
  /** Names the node in messages (and, by default, prefixes its output). */
  name: string
  /** The fogmesh command: cloud, fog, edge, … */
  role: string
  /** Its arguments after the role. */
  args: string[]
  /**
   * Gets every output line of the node. Default: echoed to this process's stdout/stderr (as the node
   * wrote it), prefixed with the name padded to 6 characters and ` | `.
   */
  output?: (line: string, stream: 'stdout' | 'stderr') => void
  /** Longest the node may take to print its ready line, ms. Default 30 000. */
  readyTimeout?: number
  /** Longest stop() waits after SIGTERM before SIGKILL, ms. Default 10 000. */
  stopTimeout?: number
  /** Stop by itself when this process goes away (see the top). Default true. */
  watchParent?: boolean
  /**
   * Why the node stopped before its ready line, given how it exited and its last stderr lines; undefined
   * for the default message (which quotes those lines).
   */
  explainEarlyExit?: (exit: ExitInfo, stderr: readonly string[]) => string | undefined
  /** The harness's own messages (a node not stopping in time). Default: stderr. */
  log?: (line: string) => void
}

export function exitStatus (e: ExitInfo): string {
  return e.signal !== null ? `killed by ${e.signal}` : `exit code ${e.code}`
}

/** Nodes still running: SIGKILLed when this process exits whatever way (an exception, process.exit). */
const live = new Set<NodeProcess>()
let exitHook = false

export class NodeProcess {
  readonly name: string
  readonly role: string
  readonly proc: ChildProcess
  /** Resolves when the node has exited and its output is read (never rejects). */
  readonly exited: Promise<ExitInfo>
  /** Resolves with its ready line's addresses; rejects if it exits or times out first. */
  readonly ready: Promise<NodeAddress>
  readonly #stopTimeout: number
  readonly #log: (line: string) => void
  #exit: ExitInfo | undefined
  /** Recent stderr lines, to tell why a node did not start or died. */
  readonly #stderr: string[] = []

  constructor (options: NodeProcessOptions) {
    const { name, role, args } = options
    const readyTimeout = options.readyTimeout ?? 30_000
    this.name = name
    this.role = role
    this.#stopTimeout = options.stopTimeout ?? 10_000
    this.#log = options.log ?? (line => { process.stderr.write(line + '\n') })
    const label = name.padEnd(6) + ' | '
    const output = options.output ?? ((line, stream) => { (stream === 'stdout' ? process.stdout : process.stderr).write(label + line + '\n') })
    const preload = (options.watchParent ?? true) ? [`--import=data:text/javascript,${encodeURIComponent(WATCH_PARENT)}`] : []
    this.proc = spawn(process.execPath, [...preload, FOGMESH, role, ...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    if (!exitHook) {
      exitHook = true
      process.on('exit', () => {
        for (const node of live) node.kill('SIGKILL')
      })
    }
    live.add(this)
    this.exited = new Promise(resolve => {
      this.proc.once('error', () => resolve(this.#exit ??= { code: null, signal: null }))
      // 'close' comes once the output pipes are closed too: every line has been passed on by then.
      this.proc.once('close', (code, signal) => resolve(this.#exit ??= { code, signal }))
    })
    void this.exited.then(() => live.delete(this))
    let onLine: (line: string) => void = () => {}
    const lines = (stream: NodeJS.ReadableStream, each: (line: string) => void) => {
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', each)
    }
    lines(this.proc.stdout!, line => {
      output(line, 'stdout')
      onLine(line)
    })
    lines(this.proc.stderr!, line => {
      output(line, 'stderr')
      this.#stderr.push(line)
      if (this.#stderr.length > STDERR_TAIL) this.#stderr.shift()
    })
    this.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name} printed no ready line within ${readyTimeout / 1000} s`)), readyTimeout)
      onLine = line => {
        const m = READY_LINE.exec(line)
        if (m === null) return
        clearTimeout(timer)
        onLine = () => {}
        const address: NodeAddress = { http: m[1] }
        if (m[2] !== undefined) address.mqtt = m[2]
        if (m[3] !== undefined) address.mesh = m[3]
        resolve(address)
      }
      void this.exited.then(e => {
        clearTimeout(timer)
        reject(new Error(options.explainEarlyExit?.(e, this.#stderr) ?? this.#whyNotStarted(e)))
      })
    })
    this.ready.catch(() => {})
  }

  get alive (): boolean {
    return this.#exit === undefined
  }

  get pid (): number | undefined {
    return this.proc.pid
  }

  /** The last stderr lines (up to 20). */
  get stderrTail (): readonly string[] {
    return [...this.#stderr]
  }

  #whyNotStarted (e: ExitInfo): string {
    const tail = this.#stderr.slice(-5).map(l => `\n  ${l}`).join('')
    return `${this.name} stopped before it was ready (${exitStatus(e)})${tail === '' ? '' : `; its last lines:${tail}`}`
  }

  /**
   * SIGTERM, then SIGKILL after the stop timeout; true when it stopped cleanly: exit code 0, or ended
   * by our SIGTERM before it was far enough along to catch it (still starting, so nothing to commit).
   */
  async stop (): Promise<boolean> {
    if (this.alive) this.kill('SIGTERM')
    const timer = setTimeout(() => {
      this.#log(`${this.name} did not stop within ${this.#stopTimeout / 1000} s of SIGTERM; killing it`)
      this.kill('SIGKILL')
    }, this.#stopTimeout)
    const e = await this.exited
    clearTimeout(timer)
    return e.code === 0 || e.signal === 'SIGTERM'
  }

  /** Sends `signal` unless the node has exited (a pid may be reused after that). */
  kill (signal: NodeJS.Signals): void {
    if (!this.alive) return
    try { this.proc.kill(signal) } catch {}
  }
}

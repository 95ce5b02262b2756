/**
 * Shared pieces of the benchmark: child processes that are always cleaned up, bounded waits, counter
 * polling over HTTP, peak RSS from /proc, and the MQTT 3.1.1 packets the publisher pre-encodes.
 */
import { execFileSync, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

export const BENCH_DIR = dirname(fileURLToPath(import.meta.url))
export const REPO_DIR = dirname(BENCH_DIR)

// ---------------------------------------------------------------------------------------------
// Child processes

export interface Child {
  name: string
  proc: ChildProcess
  pid: number
  /** Resolves with the exit code (or signal name) once the process is gone. */
  exited: Promise<number | string>
  isAlive: () => boolean
  /** The last lines of stderr, for error messages. */
  stderrTail: () => string
  /** Resolves with the first stdout line matching `re`; rejects on timeout or exit. */
  line: (re: RegExp, timeoutMs: number) => Promise<RegExpExecArray>
  send: (text: string) => void
}

const children = new Set<Child>()

/** Kills every child still running, at once; safe from an 'exit' handler (synchronous). */
export function killAllNow (): void {
  for (const c of children) {
    if (c.isAlive()) {
      try { c.proc.kill('SIGKILL') } catch {}
    }
  }
}

let guarded = false
/** Makes sure no child outlives the orchestrator, whatever way it ends. */
export function guardChildren (): void {
  if (guarded) return
  guarded = true
  process.on('exit', killAllNow)
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      process.stderr.write(`\nbench: ${signal}, stopping children\n`)
      killAllNow()
      process.exit(130)
    })
  }
}

/** Spawns `node [nodeArgs] script [args]` from the repository root, with piped stdio. */
export function spawnNode (name: string, script: string, args: string[], nodeArgs: string[] = []): Child {
  const proc = spawn(process.execPath, [...nodeArgs, script, ...args], {
    cwd: REPO_DIR,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, NODE_NO_WARNINGS: '1' }
  })
  if (proc.pid === undefined) throw new Error(`${name}: could not spawn ${process.execPath}`)
  let alive = true
  const exited = new Promise<number | string>(resolve => {
    proc.once('exit', (code, signal) => {
      alive = false
      children.delete(child)
      resolve(code ?? signal ?? 'unknown')
    })
    proc.once('error', () => {
      alive = false
      children.delete(child)
      resolve('spawn-error')
    })
  })
  const tail: string[] = []
  createInterface({ input: proc.stderr! }).on('line', l => {
    tail.push(l)
    if (tail.length > 30) tail.shift()
  })
  const lines: string[] = []
  const waiters = new Set<(l: string) => void>()
  createInterface({ input: proc.stdout! }).on('line', l => {
    lines.push(l)
    if (lines.length > 200) lines.shift()
    for (const w of waiters) w(l)
  })
  // A child that dies early closes its stdin; writes to it must not crash the orchestrator.
  proc.stdin!.on('error', () => {})
  const child: Child = {
    name,
    proc,
    pid: proc.pid,
    exited,
    isAlive: () => alive,
    stderrTail: () => tail.join('\n'),
    line: async (re, timeoutMs) => {
      for (const l of lines) {
        const m = re.exec(l)
        if (m !== null) return m
      }
      return await new Promise<RegExpExecArray>((resolve, reject) => {
        const done = (): void => {
          clearTimeout(timer)
          waiters.delete(onLine)
        }
        const onLine = (l: string): void => {
          const m = re.exec(l)
          if (m === null) return
          done()
          resolve(m)
        }
        const timer = setTimeout(() => {
          done()
          reject(new Error(`${name}: no line matching ${re} within ${timeoutMs} ms\n${child.stderrTail()}`))
        }, timeoutMs)
        waiters.add(onLine)
        exited.then(code => {
          if (!waiters.has(onLine)) return
          done()
          reject(new Error(`${name} exited (${code}) before printing ${re}\n${child.stderrTail()}`))
        }, () => {})
      })
    },
    send: (text) => {
      if (alive && proc.stdin!.writable) proc.stdin!.write(text)
    }
  }
  children.add(child)
  return child
}

/** SIGTERM, then SIGKILL if the child is still there after `graceMs`; resolves once it is gone. */
export async function stopChild (c: Child, graceMs = 10_000): Promise<number | string> {
  if (!c.isAlive()) return await c.exited
  try { c.proc.kill('SIGTERM') } catch {}
  const timer = setTimeout(() => {
    process.stderr.write(`bench: ${c.name} ignored SIGTERM for ${graceMs} ms, killing it\n`)
    try { c.proc.kill('SIGKILL') } catch {}
  }, graceMs)
  try {
    return await c.exited
  } finally {
    clearTimeout(timer)
  }
}

export async function stopAll (): Promise<void> {
  await Promise.all([...children].map(async c => await stopChild(c, 5_000)))
}

// ---------------------------------------------------------------------------------------------
// Measuring

/** Peak resident set size (VmHWM) of a live process, in MiB. */
export function peakRssMiB (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(status)
  if (m === null) throw new Error(`no VmHWM in /proc/${pid}/status`)
  return Number(m[1]) / 1024
}

/** Current resident set size (VmRSS) of a live process, in MiB. */
export function rssMiB (pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (m === null) throw new Error(`no VmRSS in /proc/${pid}/status`)
  return Number(m[1]) / 1024
}

let clockTicks: number | undefined

export interface CpuTimes {
  /** All threads (GC and libuv helpers included), ms. */
  process: number
  /** The main (JavaScript) thread alone, ms. */
  main: number
}

function ticksToMs (statLine: string): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
    } catch {
      clockTicks = 100
    }
  }
  // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
  const fields = statLine.slice(statLine.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / clockTicks * 1000
}

/**
 * CPU time (user + system) a live process has used so far. Less sensitive to a noisy machine than wall
 * time: a stolen core delays a process but does not bill it. The main thread's share against wall time
 * tells whether a process was busy all along or waited for input.
 */
export function cpuTimes (pid: number): CpuTimes {
  return {
    process: ticksToMs(readFileSync(`/proc/${pid}/stat`, 'utf8')),
    main: ticksToMs(readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8'))
  }
}

export async function getText (url: string, timeoutMs = 5_000): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) })
  const body = await res.text()
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}: ${body.slice(0, 200)}`)
  return body
}

/**
 * Sums the samples of a Prometheus metric in exposition text, optionally only those whose labels
 * contain `labels` (e.g. `pipeline="bench"`). Undefined when the metric has no sample.
 */
export function metricValue (text: string, name: string, labels = ''): number | undefined {
  let sum: number | undefined
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue
    const rest = line.slice(name.length)
    if (rest[0] !== ' ' && rest[0] !== '{') continue
    if (labels !== '' && !rest.includes(labels)) continue
    const v = Number(rest.slice(rest.lastIndexOf(' ') + 1))
    if (Number.isFinite(v)) sum = (sum ?? 0) + v
  }
  return sum
}

export interface Sample {
  /** performance.now() halfway between sending the request and reading the answer. */
  t: number
  count: number
}

export interface CounterPoll {
  /** Waits until the counter reaches `target`; rejects on a stall, an overall timeout or a failed scrape. */
  until: (target: number) => Promise<Sample[]>
  stop: () => void
}

export interface PollOptions {
  url: string
  read: (text: string) => number | undefined
  intervalMs: number
  /** Fail when the counter has not moved for this long (after it started moving). */
  stallMs: number
  /** Fail when the target is not reached within this long in any case. */
  timeoutMs: number
  /** How long the counter may stay at zero before we give up. */
  startMs: number
}

/**
 * Polls a counter on a fixed period. The broker and the agent are read the same way, so the scrape's
 * own cost and the timing resolution are the same for both (the agent's /metrics is heavier to build
 * than the raw broker's one line; bench/run.ts measures and reports that cost).
 */
export function pollCounter (o: PollOptions): CounterPoll {
  const samples: Sample[] = []
  let stopped = false
  return {
    stop: () => { stopped = true },
    until: async (target) => {
      const begin = performance.now()
      let movedAt = begin
      let last = 0
      let next = begin
      while (!stopped) {
        const t0 = performance.now()
        const text = await getText(o.url, 5_000)
        const t1 = performance.now()
        const count = o.read(text) ?? 0
        samples.push({ t: (t0 + t1) / 2, count })
        if (count >= target) return samples
        if (count !== last) {
          last = count
          movedAt = t1
        }
        if (last === 0 && t1 - begin > o.startMs) throw new Error(`counter at ${o.url} still 0 after ${o.startMs} ms`)
        if (last > 0 && t1 - movedAt > o.stallMs) throw new Error(`counter at ${o.url} stalled at ${last} of ${target} for ${o.stallMs} ms`)
        if (t1 - begin > o.timeoutMs) throw new Error(`counter at ${o.url} at ${last} of ${target} after ${o.timeoutMs} ms`)
        next += o.intervalMs
        const wait = next - performance.now()
        if (wait > 0) await sleep(wait)
        else next = performance.now()
      }
      throw new Error('polling stopped')
    }
  }
}

export interface Rate {
  perSecond: number
  /** The span the rate was measured over. */
  spanMs: number
  readings: number
  samples: number
}

/**
 * Readings per second between two observed (time, count) points: the first sample that saw any
 * reading, and the last sample before the counter reached the target. Both ends are real
 * observations, so the polling interval does not bias the rate (a sample taken after completion
 * would add up to one interval of idle time). With too few samples in between, falls back to the
 * completion sample.
 */
export function rateOf (samples: Sample[], target: number): Rate {
  const first = samples.findIndex(s => s.count > 0)
  const done = samples.findIndex(s => s.count >= target)
  if (first < 0 || done < 0) throw new Error('rateOf: the run never started or never finished')
  let end = done - 1
  if (end <= first || samples[end].count - samples[first].count < target / 2) end = done
  if (end === first) {
    // Everything arrived between two polls: only the interval bounds the time.
    const prev = samples[Math.max(0, first - 1)]
    const span = samples[done].t - prev.t
    return { perSecond: target / span * 1000, spanMs: span, readings: target, samples: samples.length }
  }
  const a = samples[first]
  const b = samples[end]
  const readings = Math.min(b.count, target) - a.count
  return { perSecond: readings / (b.t - a.t) * 1000, spanMs: b.t - a.t, readings, samples: samples.length }
}

export function median (xs: number[]): number {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 packets (the publisher writes them directly so that it costs next to nothing per message)

/** MQTT's Remaining Length: 7 bits a byte, low bits first, the top bit saying more follow. */
export function remainingLength (n: number): number[] {
  const out: number[] = []
  do {
    let byte = n % 128
    n = Math.floor(n / 128)
    if (n > 0) byte |= 0x80
    out.push(byte)
  } while (n > 0)
  return out
}

/** CONNECT with a clean session and no keep-alive: the publisher never idles long enough to need pings. */
export function connectPacket (clientId: string): Buffer {
  const id = Buffer.from(clientId, 'utf8')
  const variable = Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00, 0x00])
  const body = Buffer.concat([variable, Buffer.from([id.length >> 8, id.length & 0xff]), id])
  return Buffer.concat([Buffer.from([0x10, ...remainingLength(body.length)]), body])
}

/** Writes a QoS 0 PUBLISH into `out` at `offset`; returns the offset after it. */
export function writePublish (out: Buffer, offset: number, topic: string, payload: string): number {
  const topicLen = Buffer.byteLength(topic)
  const payloadLen = Buffer.byteLength(payload)
  const header = [0x30, ...remainingLength(2 + topicLen + payloadLen)]
  for (const b of header) out[offset++] = b
  out[offset++] = topicLen >> 8
  out[offset++] = topicLen & 0xff
  offset += out.write(topic, offset, 'utf8')
  offset += out.write(payload, offset, 'utf8')
  return offset
}

/** Bytes a QoS 0 PUBLISH of this topic and payload takes on the wire. */
export function publishSize (topic: string, payload: string): number {
  const n = 2 + Buffer.byteLength(topic) + Buffer.byteLength(payload)
  return 1 + remainingLength(n).length + n
}

export const DISCONNECT = Buffer.from([0xe0, 0x00])

export function scriptPath (name: string): string {
  return join(BENCH_DIR, name)
}

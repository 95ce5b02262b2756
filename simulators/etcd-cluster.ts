/**
 * Runs a real etcd cluster on loopback for tests, the chaos scenario runner and the bench: N members
 * as child processes, each with its own data dir and log, that can be killed, restarted on the same
 * ports and data, and paused. Needs the `etcd` binary (Debian: `apt-get install etcd-server`); there
 * is deliberately no fallback or silent skip when it is missing.
 *
 * With `tls`, members serve clients over TLS only (https client URLs) and admit only clients whose
 * certificate the given CA signed (`--client-cert-auth --trusted-ca-file`); peers talk plain HTTP on
 * loopback. The harness's own probes present the members' certificate as their client certificate.
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { accessSync, createWriteStream, readFileSync, constants as fsConstants } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { createInterface } from 'node:readline'
import { Etcd3 } from 'etcd3'
import { FogmeshError } from '../core/errors.ts'
import { freePorts } from './ports.ts'

export interface EtcdClusterOptions {
  /** Number of members (default 3). */
  members?: number
  /** Parent dir for the members' data and logs (kept by stop()); default a new temp dir that stop() removes. */
  dir?: string
  /** How long to wait for the cluster, or a restarted member, to become healthy (default 20 s). */
  timeoutMs?: number
  /** Appended to every member's command line (also on restart). */
  extraArgs?: string[]
  /** Gets every output line of every member (prefixed with its name) and the harness's own events. */
  log?: (line: string) => void
  /** Serve clients over TLS with client-certificate auth (see the top). */
  tls?: EtcdTlsOptions
}

/** PEM files of an etcd cluster on TLS. */
export interface EtcdTlsOptions {
  /** The members' certificate (its SANs must include 127.0.0.1) and key; usable as a client certificate too. */
  cert: string
  key: string
  /** The CA that client certificates must chain to (etcd's --trusted-ca-file); it also verifies the members. */
  ca: string
}

export interface EtcdMember {
  name: string
  /** http://127.0.0.1:<port> (https:// with tls) */
  clientUrl: string
  /** 127.0.0.1:<port> (https://127.0.0.1:<port> with tls), the form `fogmesh fog --etcd` takes. */
  endpoint: string
  peerUrl: string
  /** The process is alive (also while paused). */
  running: boolean
  /** Stopped with SIGSTOP by pause() and not yet resumed. */
  paused: boolean
  /** This member's dir: `data/` and `etcd.log`. */
  dir: string
}

export interface EtcdCluster {
  members: EtcdMember[]
  /** 'host:port' of every member ('https://host:port' with tls). */
  endpoints: string[]
  /** With tls: the etcd3 client credentials that reach the members (the CA, and the members' certificate as a client's). */
  credentials?: EtcdCredentials
  /** The parent dir of the members' dirs. */
  dir: string
  /** Sends `signal` (default SIGKILL) and waits for the member to exit. No-op if it is not running. */
  kill (name: string, signal?: NodeJS.Signals): Promise<void>
  /**
   * Starts a killed member again with the same data dir and ports, and waits until it answers
   * clients. etcd serves clients only once it has rejoined the cluster, which needs a quorum: to
   * bring back a cluster that lost its quorum, restart the members concurrently. If it does not
   * answer in time the member is left running (kill() or stop() ends it).
   */
  restart (name: string): Promise<void>
  /** SIGSTOP: the process stays alive but answers nothing (a hung member, not a dead one). */
  pause (name: string): void
  /** SIGCONT after pause(). */
  resume (name: string): void
  /** Waits until a linearizable read succeeds through the running members, i.e. a quorum is present. */
  waitHealthy (timeoutMs?: number): Promise<void>
  /** The backend database size in bytes: the largest one reported by the running members. */
  dbSize (): Promise<number>
  /** SIGTERM to every member, SIGKILL after 5 s, then removes the temp dir. Safe to call twice. */
  stop (): Promise<void>
}

export interface EtcdCredentials {
  rootCertificate: Buffer
  privateKey: Buffer
  certChain: Buffer
}

/** Something went wrong running the etcd cluster (missing binary, failed start, member unknown, no quorum in time). */
export class EtcdClusterError extends FogmeshError {}

const START_ATTEMPTS = 5
const TAIL_LINES = 30
const STOP_GRACE_MS = 5000
/** Per-attempt deadline of a health probe, so one probe never eats the whole wait. */
const PROBE_DEADLINE_MS = 1000
const PROBE_INTERVAL_MS = 100

// Members that are alive, so that they are SIGKILLed when this process exits, even if the test
// (or the chaos runner) crashed before calling stop(): an orphaned etcd would hold its ports.
const liveChildren = new Set<ChildProcess>()
let exitHookInstalled = false

function track (child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.on('exit', () => {
      for (const c of liveChildren) {
        try { c.kill('SIGKILL') } catch {}
      }
    })
  }
  liveChildren.add(child)
  child.once('exit', () => liveChildren.delete(child))
}

/** The etcd executable: on PATH, in /usr/bin or in /usr/local/bin. Throws if it is not installed. */
export function findEtcd (): string {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), '/usr/bin', '/usr/local/bin']
  for (const dir of dirs) {
    const file = join(dir, 'etcd')
    try {
      accessSync(file, fsConstants.X_OK)
      return file
    } catch {}
  }
  throw new EtcdClusterError('etcd_not_installed', 'etcd is not installed (looked on PATH and in /usr/bin, /usr/local/bin): ' +
    'a real etcd cluster is needed here. On Debian/Ubuntu: apt-get install -y etcd-server')
}

function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}

function errorText (err: unknown): string {
  return err instanceof Error ? `${err.constructor.name}: ${err.message}` : String(err)
}

// A fresh client per probe: the etcd3 client's default per-host circuit breaker stays open for 5 s
// after three failures, which would delay noticing that a member came back.
async function probe<T> (hosts: string[], deadlineMs: number, fn: (client: Etcd3, deadline: number) => Promise<T>, credentials?: EtcdCredentials): Promise<T> {
  const client = new Etcd3({ hosts, dialTimeout: deadlineMs, credentials })
  try {
    return await fn(client, Date.now() + deadlineMs)
  } finally {
    client.close()
  }
}

interface Member {
  pub: EtcdMember
  clientPort: number
  peerPort: number
  dataDir: string
  logFile: string
  proc?: ChildProcess
  /** Resolves when the current process has exited and its output is flushed to the log. */
  exited?: Promise<string>
  /** Last output lines, for error messages. */
  tail: string[]
}

function describeTail (m: Member): string {
  return `${m.pub.name} log (${m.logFile}), last lines:\n${m.tail.map(l => `  ${l}`).join('\n') || '  (none)'}`
}

/** Starts an etcd cluster listening on 127.0.0.1 only, and resolves once every member serves and a quorum answers. */
export async function startEtcdCluster (opts: EtcdClusterOptions = {}): Promise<EtcdCluster> {
  const bin = findEtcd()
  const size = opts.members ?? 3
  if (!Number.isInteger(size) || size < 1) throw new EtcdClusterError('config_invalid', `members must be an integer >= 1, not ${size}`)
  const timeoutMs = opts.timeoutMs ?? 20_000
  const extraArgs = opts.extraArgs ?? []
  const log = opts.log ?? (() => {})
  const tls = opts.tls
  const credentials: EtcdCredentials | undefined = tls === undefined
    ? undefined
    : { rootCertificate: readFileSync(tls.ca), privateKey: readFileSync(tls.key), certChain: readFileSync(tls.cert) }
  const tlsArgs = tls === undefined ? [] : ['--cert-file', tls.cert, '--key-file', tls.key, '--trusted-ca-file', tls.ca, '--client-cert-auth']
  const scheme = tls === undefined ? 'http' : 'https'
  const ownDir = opts.dir == null
  const root = opts.dir ?? await mkdtemp(join(tmpdir(), 'fogmesh-etcd-'))
  if (!ownDir) await mkdir(root, { recursive: true })
  // etcd 3.4 refuses to start on arm64 (e.g. a Raspberry Pi) unless told that is deliberate.
  const env = process.arch === 'arm64' ? { ...process.env, ETCD_UNSUPPORTED_ARCH: 'arm64' } : process.env

  let members: Member[] = []
  let initialCluster = ''
  let token = ''

  const spawnMember = (m: Member, state: 'new' | 'existing'): void => {
    const args = [
      '--name', m.pub.name,
      '--data-dir', m.dataDir,
      '--listen-client-urls', m.pub.clientUrl,
      '--advertise-client-urls', m.pub.clientUrl,
      '--listen-peer-urls', m.pub.peerUrl,
      '--initial-advertise-peer-urls', m.pub.peerUrl,
      '--initial-cluster', initialCluster,
      '--initial-cluster-token', token,
      '--initial-cluster-state', state,
      '--heartbeat-interval', '100',
      '--election-timeout', '1000',
      '--logger', 'zap',
      '--log-outputs', 'stderr',
      ...tlsArgs,
      ...extraArgs
    ]
    const proc = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
    track(proc)
    m.proc = proc
    m.pub.running = true
    m.pub.paused = false
    m.tail = []
    const file = createWriteStream(m.logFile, { flags: 'a' })
    // Without a listener a failed write (disk full, dir removed) would crash the process.
    file.on('error', () => {})
    let open = 2
    const flushed = new Promise<void>(resolve => {
      for (const stream of [proc.stdout, proc.stderr]) {
        const lines = createInterface({ input: stream, crlfDelay: Infinity })
        lines.on('line', line => {
          file.write(line + '\n')
          m.tail.push(line)
          if (m.tail.length > TAIL_LINES) m.tail.shift()
          log(`${m.pub.name} ${line}`)
        })
        lines.once('close', () => { if (--open === 0) resolve() })
      }
    })
    m.exited = new Promise<string>(resolve => {
      proc.once('error', err => resolve(`could not run ${bin}: ${err.message}`))
      proc.once('exit', (code, signal) => resolve(signal != null ? `killed by ${signal}` : `exited with code ${code}`))
    }).then(async how => {
      if (m.proc === proc) {
        m.pub.running = false
        m.pub.paused = false
      }
      await flushed
      await new Promise<void>(resolve => file.end(resolve))
      log(`${m.pub.name} ${how}`)
      return how
    })
    log(`${m.pub.name} started (pid ${proc.pid}, ${state}) client ${m.pub.clientUrl} peer ${m.pub.peerUrl}`)
  }

  const signalAll = (signal: NodeJS.Signals) => {
    for (const m of members) {
      if (!m.pub.running) continue
      try {
        m.proc?.kill(signal)
        // A stopped process would only act on SIGTERM once continued.
        if (m.pub.paused && signal !== 'SIGKILL') m.proc?.kill('SIGCONT')
      } catch {}
    }
  }

  const killAll = async () => {
    signalAll('SIGKILL')
    await Promise.all(members.map(m => m.exited))
  }

  /** Waits until each of `targets` answers a status call and a linearizable read succeeds through them. */
  const waitServing = async (targets: Member[], ms: number, what: string, needQuorum: boolean): Promise<void> => {
    const deadline = Date.now() + ms
    let lastError: unknown
    const pending = new Set(targets)
    for (;;) {
      const dead = targets.find(m => !m.pub.running)
      if (dead != null) {
        const how = await dead.exited
        throw new EtcdClusterError('etcd_start_failed', `${what}: ${dead.pub.name} ${how}\n${describeTail(dead)}`)
      }
      const remaining = deadline - Date.now()
      const attempt = Math.max(100, Math.min(PROBE_DEADLINE_MS, remaining))
      try {
        for (const m of pending) {
          await probe([m.pub.clientUrl], attempt, (c, d) => c.maintenance.status({ deadline: d }), credentials)
          pending.delete(m)
        }
        if (needQuorum) {
          await probe(targets.map(m => m.pub.clientUrl), attempt, (c, d) => c.get('fogmesh/etcd-cluster/probe').options({ deadline: d }).string(), credentials)
        }
        return
      } catch (err) {
        lastError = err
      }
      if (Date.now() >= deadline) {
        const waiting = [...pending].map(m => m.pub.name).join(', ')
        throw new EtcdClusterError('etcd_unhealthy', `${what}: not healthy within ${ms}ms` +
          (waiting !== '' ? ` (not answering yet: ${waiting}; a member serves clients only once it has joined a quorum)` : ' (no quorum)') +
          `; last error: ${errorText(lastError)}\n` +
          targets.map(describeTail).join('\n'))
      }
      await sleep(Math.min(PROBE_INTERVAL_MS, Math.max(0, deadline - Date.now())))
    }
  }

  try {
    for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
      const ports = await freePorts(2 * size)
      token = `fogmesh-${randomUUID()}`
      members = []
      for (let i = 0; i < size; i++) {
        const name = `etcd-${i + 1}`
        const dir = join(root, name)
        const clientPort = ports[2 * i]
        const peerPort = ports[2 * i + 1]
        // A failed attempt may have initialised the data dir for other ports and another token.
        await rm(dir, { recursive: true, force: true })
        await mkdir(dir, { recursive: true })
        members.push({
          pub: {
            name,
            clientUrl: `${scheme}://127.0.0.1:${clientPort}`,
            endpoint: tls === undefined ? `127.0.0.1:${clientPort}` : `https://127.0.0.1:${clientPort}`,
            peerUrl: `http://127.0.0.1:${peerPort}`,
            running: false,
            paused: false,
            dir
          },
          clientPort,
          peerPort,
          dataDir: join(dir, 'data'),
          logFile: join(dir, 'etcd.log'),
          tail: []
        })
      }
      initialCluster = members.map(m => `${m.pub.name}=${m.pub.peerUrl}`).join(',')
      for (const m of members) spawnMember(m, 'new')
      try {
        await waitServing(members, timeoutMs, `etcd cluster of ${size}`, true)
        break
      } catch (err) {
        await killAll()
        // Someone took one of the ports between freePorts() and etcd's bind: try other ones.
        const portRace = members.some(m => m.tail.some(l => /address already in use/i.test(l)))
        if (!portRace || attempt === START_ATTEMPTS) throw err
        log(`port taken while starting (attempt ${attempt}), retrying with other ports`)
      }
    }
  } catch (err) {
    await killAll()
    if (ownDir) await rm(root, { recursive: true, force: true, maxRetries: 3 })
    throw err
  }

  const byName = (name: string): Member => {
    const m = members.find(x => x.pub.name === name)
    if (m == null) throw new EtcdClusterError('etcd_member_unknown', `no etcd member named "${name}" (have ${members.map(x => x.pub.name).join(', ')})`)
    return m
  }

  const kill = async (name: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    const m = byName(name)
    if (!m.pub.running) return
    const wasPaused = m.pub.paused
    m.proc?.kill(signal)
    if (wasPaused && signal !== 'SIGKILL') m.proc?.kill('SIGCONT')
    await m.exited
  }

  const restart = async (name: string): Promise<void> => {
    const m = byName(name)
    if (m.pub.running) throw new EtcdClusterError('etcd_member_running', `etcd member ${name} is still running; kill it first`)
    spawnMember(m, 'existing')
    await waitServing([m], timeoutMs, `restarting etcd member ${name}`, false)
  }

  const pause = (name: string): void => {
    const m = byName(name)
    if (!m.pub.running || m.pub.paused) return
    m.proc?.kill('SIGSTOP')
    m.pub.paused = true
  }

  const resume = (name: string): void => {
    const m = byName(name)
    if (!m.pub.running || !m.pub.paused) return
    m.proc?.kill('SIGCONT')
    m.pub.paused = false
  }

  const waitHealthy = async (ms = timeoutMs): Promise<void> => {
    const deadline = Date.now() + ms
    let lastError: unknown
    for (;;) {
      const hosts = members.filter(m => m.pub.running && !m.pub.paused).map(m => m.pub.clientUrl)
      const remaining = deadline - Date.now()
      if (hosts.length > 0) {
        try {
          await probe(hosts, Math.max(100, Math.min(PROBE_DEADLINE_MS, remaining)),
            (c, d) => c.get('fogmesh/etcd-cluster/probe').options({ deadline: d }).string(), credentials)
          return
        } catch (err) {
          lastError = err
        }
      } else {
        lastError = new Error('no member is running')
      }
      if (Date.now() >= deadline) {
        const states = members.map(m => `${m.pub.name}: ${m.pub.paused ? 'paused' : m.pub.running ? 'running' : 'stopped'}`).join(', ')
        throw new EtcdClusterError('etcd_unhealthy', `etcd cluster has no quorum after ${ms}ms (${states}); last error: ${errorText(lastError)}`)
      }
      await sleep(Math.min(PROBE_INTERVAL_MS, Math.max(0, deadline - Date.now())))
    }
  }

  const dbSize = async (): Promise<number> => {
    const live = members.filter(m => m.pub.running && !m.pub.paused)
    // Status is answered by each member itself, without a quorum.
    const sizes = await Promise.all(live.map(m =>
      probe([m.pub.clientUrl], 2000, (c, d) => c.maintenance.status({ deadline: d }), credentials).then(s => Number(s.dbSize), () => undefined)))
    const known = sizes.filter((s): s is number => s !== undefined)
    if (known.length === 0) throw new EtcdClusterError('etcd_unhealthy', 'no running etcd member answered a status request')
    return Math.max(...known)
  }

  let stopped: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      signalAll('SIGTERM')
      let timer: NodeJS.Timeout | undefined
      const graceful = await Promise.race([
        Promise.all(members.map(m => m.exited)).then(() => true),
        new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(false), STOP_GRACE_MS) })
      ])
      clearTimeout(timer)
      if (!graceful) await killAll()
      if (ownDir) await rm(root, { recursive: true, force: true, maxRetries: 3 })
    })()
    return stopped
  }

  const pubs = members.map(m => m.pub)
  return {
    members: pubs,
    endpoints: pubs.map(m => m.endpoint),
    credentials,
    dir: root,
    kill,
    restart,
    pause,
    resume,
    waitHealthy,
    dbSize,
    stop
  }
}

// Runs a real Mosquitto broker for a test, on a free loopback port, with its own config, password
// file and log in a temp dir. Needs the `mosquitto` binary (Debian: `apt-get install mosquitto`,
// which .ci/run does); there is deliberately no silent skip when it is missing.
import { execFile, spawn } from 'node:child_process'
import { accessSync, constants as fsConstants } from 'node:fs'
import { chmod, readFile, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { delimiter, join } from 'node:path'
import { promisify } from 'node:util'
import { exitStatus, freePort, sleep, tmpDir, track } from './process.ts'

const execFileP = promisify(execFile)

export interface MosquittoOptions {
  /** username -> password. When given, anonymous clients are refused. */
  users?: Record<string, string>
  /** How long to wait for the broker to accept connections (default 10 s). */
  timeoutMs?: number
  /**
   * Listen on this port instead of a free one, e.g. to bring a stopped broker back on the port its
   * clients know (no retry if it is taken).
   */
  port?: number
  /** Extra lines appended to the generated mosquitto.conf. */
  extraConfig?: string[]
  /**
   * Make the listener MQTT over TLS (`url` is then mqtts://) with this certificate and key (PEM file
   * paths). With `requireCertificate`, clients must present a certificate that `ca` verifies.
   */
  tls?: { cert: string, key: string, ca?: string, requireCertificate?: boolean }
}

export interface Mosquitto {
  /** mqtt://127.0.0.1:<port> (mqtts:// with the `tls` option) */
  url: string
  port: number
  /** The broker's temp dir (config, password file, log); removed by stop(). */
  dir: string
  /** The broker's log so far. */
  log (): Promise<string>
  /** SIGTERM, SIGKILL after 5 s, then removes the temp dir. Safe to call twice. */
  stop (): Promise<void>
}

const ATTEMPTS = 5

function findExecutable (name: string, extraDirs: string[]): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), ...extraDirs]
  for (const dir of dirs) {
    const file = join(dir, name)
    try {
      accessSync(file, fsConstants.X_OK)
      return file
    } catch {}
  }
  return undefined
}

function missing (name: string): Error {
  return new Error(`${name} is not installed (looked on PATH and in /usr/sbin, /usr/local/sbin, /usr/bin): ` +
    'the MQTT tests need a real Mosquitto broker. On Debian/Ubuntu: apt-get install -y mosquitto ' +
    '(.ci/run installs it and keeps its system service from running).')
}

function canConnect (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.setTimeout(1000)
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
    socket.once('timeout', () => done(false))
  })
}

/** The listener's TLS lines (none without `tls`). */
function tlsConfig (tls: MosquittoOptions['tls']): string[] {
  if (tls == null) return []
  if (tls.requireCertificate === true && tls.ca == null) throw new Error('startMosquitto: tls.requireCertificate needs tls.ca')
  return [
    `certfile ${tls.cert}`,
    `keyfile ${tls.key}`,
    ...(tls.ca != null ? [`cafile ${tls.ca}`] : []),
    ...(tls.requireCertificate === true ? ['require_certificate true'] : [])
  ]
}

/** Starts a Mosquitto broker listening on 127.0.0.1 only, and resolves once it accepts TCP connections. */
export async function startMosquitto (opts: MosquittoOptions = {}): Promise<Mosquitto> {
  const bin = findExecutable('mosquitto', ['/usr/sbin', '/usr/local/sbin', '/usr/bin', '/usr/local/bin'])
  if (bin == null) throw missing('mosquitto')
  const { timeoutMs = 10_000 } = opts
  const dir = await tmpDir('fogmesh-mosquitto-')
  const logFile = join(dir.path, 'mosquitto.log')
  const log = () => readFile(logFile, 'utf8').catch(() => '')

  try {
    const users = Object.entries(opts.users ?? {})
    let passwordFile: string | undefined
    if (users.length > 0) {
      const passwd = findExecutable('mosquitto_passwd', ['/usr/bin', '/usr/local/bin', '/usr/sbin', '/usr/local/sbin'])
      if (passwd == null) throw missing('mosquitto_passwd')
      passwordFile = join(dir.path, 'passwd')
      await writeFile(passwordFile, '', { mode: 0o600 })
      for (const [user, password] of users) {
        await execFileP(passwd, ['-b', passwordFile, user, password], { timeout: 10_000 })
      }
      await chmod(passwordFile, 0o600)
    }

    let lastFailure = ''
    const attempts = opts.port != null ? 1 : ATTEMPTS
    for (let attempt = 1; attempt <= attempts; attempt++) {
      const port = opts.port ?? await freePort()
      const confFile = join(dir.path, 'mosquitto.conf')
      const conf = [
        `listener ${port} 127.0.0.1`,
        ...tlsConfig(opts.tls),
        passwordFile != null ? 'allow_anonymous false' : 'allow_anonymous true',
        ...(passwordFile != null ? [`password_file ${passwordFile}`] : []),
        'persistence false',
        `log_dest file ${logFile}`,
        'log_type error',
        'log_type warning',
        'log_type notice',
        'log_type information',
        'connection_messages true',
        'log_timestamp_format %H:%M:%S',
        // Run as root (CI), mosquitto would otherwise switch to the `mosquitto` user, which cannot
        // read our temp dir or write its log there.
        ...(process.getuid?.() === 0 ? ['user root'] : []),
        ...(opts.extraConfig ?? [])
      ].join('\n') + '\n'
      await writeFile(confFile, conf)

      const proc = spawn(bin, ['-c', confFile], { stdio: ['ignore', 'pipe', 'pipe'] })
      track(proc)
      let output = ''
      proc.stdout.setEncoding('utf8').on('data', (s: string) => { output += s })
      proc.stderr.setEncoding('utf8').on('data', (s: string) => { output += s })
      let exited = false
      const exitedP = new Promise<string>(resolve => {
        proc.once('error', err => { exited = true; resolve(`could not run ${bin}: ${err.message}`) })
        proc.once('exit', (code, signal) => { exited = true; resolve(`exited with status ${exitStatus(code, signal)}`) })
      })

      const deadline = Date.now() + timeoutMs
      let ready = false
      while (!exited && Date.now() < deadline) {
        if (await canConnect(port)) {
          ready = !exited
          break
        }
        await sleep(50)
      }

      if (ready) {
        let stopped: Promise<void> | undefined
        const stop = () => {
          stopped ??= (async () => {
            if (!exited) {
              proc.kill('SIGTERM')
              let timer: NodeJS.Timeout | undefined
              const killed = await Promise.race([
                exitedP.then(() => false),
                new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(true), 5000) })
              ])
              clearTimeout(timer)
              if (killed) {
                proc.kill('SIGKILL')
                await exitedP
              }
            }
            await dir.cleanup()
          })()
          return stopped
        }
        return { url: `${opts.tls != null ? 'mqtts' : 'mqtt'}://127.0.0.1:${port}`, port, dir: dir.path, log, stop }
      }

      if (!exited) {
        proc.kill('SIGKILL')
        const how = await exitedP
        throw new Error(`mosquitto did not accept connections on 127.0.0.1:${port} within ${timeoutMs}ms (${how})\n` +
          `output: ${output.trim() || '(none)'}\nlog:\n${await log()}`)
      }
      const how = await exitedP
      const text = `${output}\n${await log()}`
      lastFailure = `mosquitto ${how} on port ${port}\noutput: ${output.trim() || '(none)'}\nlog:\n${await log()}`
      // Someone took the port between freePort() and mosquitto's bind: try another one.
      if (!/address already in use/i.test(text)) break
    }
    throw new Error(`could not start mosquitto: ${lastFailure}`)
  } catch (err) {
    await dir.cleanup()
    throw err
  }
}

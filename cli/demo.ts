/**
 * `fogmesh demo` (npm start): the whole mesh on one machine. A cloud sink; a fog coordinator that
 * merges the edges' partials and forwards final windows to the cloud; two edge agents with embedded
 * brokers that send their partials to the fog (failing over to the cloud); and the sensor simulator
 * publishing in real time, its devices split over the two brokers.
 *
 * Each node is its own `fogmesh <role>` process, started the way a user starts it: the demo then shows
 * the mesh as it is deployed (same entry points, options, logs and signals), it picks up whatever the
 * roles gain (the fog's forwarding to the cloud lives in its command), one node dying is seen as a
 * process dying, and a busy tier cannot delay another's timers through a shared event loop. The price
 * is four Node processes instead of one. The simulator is only an MQTT client, so it runs in here.
 *
 * Children get their own process group, so a Ctrl-C at the terminal reaches the demo alone and the
 * demo stops them in order: simulator, edges (which commit their windows), fog, cloud. If a node dies,
 * the demo stops the rest and exits 1; if the demo itself is killed outright, the nodes notice their
 * parent is gone and stop themselves (cli/node-process.ts).
 */
import { randomBytes, X509Certificate } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { constants } from 'node:os'
import { relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { ConfigError } from '../core/errors.ts'
import { generateSwarmKey } from '../core/mesh/swarm-key.ts'
import { loadPipelinesFile } from '../core/pipeline/parse.ts'
import { writeFileAtomic } from '../server/shell/atomic-file.ts'
import { createCa, issueNodeCert, keyMatchesCert, readCertIdentity } from '../server/shell/certs.ts'
import type { CertAndKey, Role } from '../server/shell/certs.ts'
import { LOG_LEVELS } from '../server/shell/log.ts'
import type { LogLevel } from '../server/shell/log.ts'
import { runSimulator } from '../simulators/sim.ts'
import { NodeProcess, exitStatus } from './node-process.ts'

const EXAMPLE = fileURLToPath(new URL('../examples/pipelines.yaml', import.meta.url))
const DEPLOYABLE = fileURLToPath(new URL('../examples/device-temp.yaml', import.meta.url))
const HOST = '127.0.0.1'
/** Longest a node may take to print its ready line, and to stop after SIGTERM. */
const READY_TIMEOUT = 30_000
const STOP_TIMEOUT = 10_000
/**
 * The simulator generates its whole run up front (seeded, so it can write the ground truth); a day at
 * once would be millions of messages. The demo runs it in chunks: each starts where the wall clock is,
 * with the next seed, so the readings go on (each device's values jump once per chunk).
 */
const SIM_CHUNK = 10 * 60_000

const USAGE = `usage: fogmesh demo [options]

A local mesh: cloud sink, fog coordinator, two edge agents with embedded MQTT brokers, and the sensor
simulator publishing to both brokers in real time. Ctrl-C stops everything.

  --base-port N      ports N..N+3 for the HTTP APIs of edge-1, fog, cloud, edge-2, N+4, N+5 for
                     the MQTT brokers of edge-1, edge-2 and N+6..N+9 for the mesh (libp2p) of
                     edge-1, fog, cloud, edge-2; 0 picks free ports (default: edge-1 8081, fog 8082,
                     cloud 8083, edge-2 8084, MQTT 1883 and 1884, mesh 4081-4084)
  --data-dir DIR     one directory per node below DIR (default data/demo)
  --pipelines FILE   pipelines of every node (default examples/pipelines.yaml)
  --devices N        simulated devices, split over the two brokers (default 20)
  --rooms N          rooms they are in (default 5)
  --rate N           readings per second per device (default 2)
  --log-level LEVEL  the nodes' log level: trace, debug, info, warn, error, fatal or silent (default info);
                     their log lines are shown prefixed with the node's name, readable on a terminal
  --secure           every node on HTTPS with its own certificate of a site CA made for the demo (in
                     DIR/tls, kept for the next runs); the fog and the cloud take partials only from
                     nodes with a certificate of that CA (mutual TLS). The simulator still publishes
                     plain MQTT to the edges, on loopback
  -h, --help         this help
`

type NodeName = 'cloud' | 'fog' | 'edge-1' | 'edge-2'

interface Ports {
  http: Record<NodeName, number>
  mqtt: { 'edge-1': number, 'edge-2': number }
  mesh: Record<NodeName, number>
}

const DEFAULT_PORTS: Ports = {
  http: { 'edge-1': 8081, fog: 8082, cloud: 8083, 'edge-2': 8084 },
  mqtt: { 'edge-1': 1883, 'edge-2': 1884 },
  mesh: { 'edge-1': 4081, fog: 4082, cloud: 4083, 'edge-2': 4084 }
}
/** The demo's mesh key, in its data dir: made at the first run, kept for the next ones. */
const MESH_KEY = 'mesh.key'
/** The fog's admin token (pipeline deployment), in the demo's data dir. */
const ADMIN_TOKEN = 'admin.token'
/** With --secure: the site CA and every node's certificate, in this dir of the demo's data dir. */
const TLS_DIR = 'tls'
const NODE_ROLES: Record<NodeName, Role> = { cloud: 'cloud', fog: 'fog', 'edge-1': 'edge', 'edge-2': 'edge' }

export function demoPorts (base: number | undefined): Ports {
  if (base === undefined) return DEFAULT_PORTS
  const at = (i: number) => base === 0 ? 0 : base + i
  return {
    http: { 'edge-1': at(0), fog: at(1), cloud: at(2), 'edge-2': at(3) },
    mqtt: { 'edge-1': at(4), 'edge-2': at(5) },
    mesh: { 'edge-1': at(6), fog: at(7), cloud: at(8), 'edge-2': at(9) }
  }
}

interface DemoOptions {
  ports: Ports
  dataDir: string
  pipelines: string
  devices: number
  rooms: number
  rate: number
  logLevel: LogLevel
  secure: boolean
}

function readDemoOptions (argv: string[]): DemoOptions | undefined {
  let values
  try {
    values = parseArgs({
      args: argv,
      options: {
        'base-port': { type: 'string' },
        'data-dir': { type: 'string', default: 'data/demo' },
        pipelines: { type: 'string', default: EXAMPLE },
        devices: { type: 'string', default: '20' },
        rooms: { type: 'string', default: '5' },
        rate: { type: 'string', default: '2' },
        'log-level': { type: 'string', default: 'info' },
        secure: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h' }
      }
    }).values
  } catch (err) {
    throw new ConfigError(`${(err as Error).message} (fogmesh demo --help lists the options)`)
  }
  if (values.help === true) return undefined
  const int = (name: string, text: string, min: number, max: number): number => {
    const n = Number(text)
    if (!/^\d+$/.test(text.trim()) || n < min || n > max) throw new ConfigError(`--${name}: expected a whole number from ${min} to ${max}, got ${JSON.stringify(text)}`)
    return n
  }
  const base = values['base-port'] === undefined ? undefined : int('base-port', values['base-port'], 0, 65526)
  const rate = Number(values.rate)
  if (!(rate > 0 && rate <= 1000)) throw new ConfigError(`--rate: expected readings per second from above 0 to 1000, got ${JSON.stringify(values.rate)}`)
  const logLevel = LOG_LEVELS.find(l => l === values['log-level'])
  if (logLevel === undefined) throw new ConfigError(`--log-level: expected one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(values['log-level'])}`)
  return {
    ports: demoPorts(base),
    dataDir: resolve(values['data-dir']),
    pipelines: resolve(values.pipelines),
    devices: int('devices', values.devices, 1, 100_000),
    rooms: int('rooms', values.rooms, 1, 10_000),
    rate,
    logLevel,
    secure: values.secure === true
  }
}

/** The ports of `ports` something else listens on already, each with the node that wants it. */
async function takenPorts (ports: Ports): Promise<string[]> {
  const wanted: Array<[number, string]> = [
    ...Object.entries(ports.http).map(([node, port]): [number, string] => [port, `${node} HTTP`]),
    ...Object.entries(ports.mqtt).map(([node, port]): [number, string] => [port, `${node} MQTT`]),
    ...Object.entries(ports.mesh).map(([node, port]): [number, string] => [port, `${node} mesh`])
  ].filter(([port]) => port !== 0)
  const taken = await Promise.all(wanted.map(async ([port, what]) => await new Promise<string | undefined>(done => {
    const probe = createServer()
    probe.once('error', (err: NodeJS.ErrnoException) => done(err.code === 'EADDRINUSE' || err.code === 'EACCES' ? `${port} (${what})` : undefined))
    probe.listen(port, HOST, () => probe.close(() => done(undefined)))
  })))
  return taken.filter(t => t !== undefined)
}

function portsHint (): string {
  return 'Stop what uses them (another demo, an MQTT broker such as Mosquitto on 1883?), or use other ports: ' +
    'fogmesh demo --base-port 9000 (HTTP 9000-9003, MQTT 9004-9005, mesh 9006-9009), or --base-port 0 (any free ports).'
}

// ---------------------------------------------------------------------------------------------
// Nodes as child processes (cli/node-process.ts), their output echoed with the node's name

class MeshNode extends NodeProcess {
  declare readonly name: NodeName

  constructor (name: NodeName, role: string, args: string[]) {
    super({
      name,
      role,
      args,
      readyTimeout: READY_TIMEOUT,
      stopTimeout: STOP_TIMEOUT,
      log: line => { process.stderr.write(`demo: ${line}\n`) },
      explainEarlyExit: (e, stderr) => {
        const inUse = stderr.map(l => /EADDRINUSE.*?:(\d+)\b/.exec(l)).find(m => m !== null)
        if (inUse != null) return `${name} could not listen: port ${inUse[1]} is taken. ${portsHint()}`
        return `${name} stopped before it was ready (${exitStatus(e)}); its output is above`
      }
    })
  }
}

// ---------------------------------------------------------------------------------------------

interface Stop {
  code: number
  message?: string
}

/** The path of a secret of the demo's (the mesh key, the admin token), written on the first run. */
async function demoSecret (dataDir: string, name: string, make: () => string): Promise<string> {
  const file = resolve(dataDir, name)
  await mkdir(dataDir, { recursive: true })
  try {
    await writeFile(file, make(), { mode: 0o600, flag: 'wx' })
  } catch (err) {
    // Kept from an earlier run: the nodes' peer ids are kept in their data dirs too.
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new ConfigError(`demo: cannot write ${file}: ${(err as Error).message}`, { cause: err })
  }
  return file
}

/** Paths of the demo's TLS files (--secure). */
export interface DemoTls {
  caCert: string
  nodes: Record<NodeName, { cert: string, key: string }>
}

/** The id a demo node runs as: the CN of its certificate too. */
const nodeId = (name: NodeName): string => `demo-${name}`

/** A CA that can still sign, from an earlier run; undefined when there is none (or it cannot). */
async function readDemoCa (certFile: string, keyFile: string): Promise<CertAndKey | undefined> {
  try {
    const ca = { cert: await readFile(certFile, 'utf8'), key: await readFile(keyFile, 'utf8') }
    const x = new X509Certificate(ca.cert)
    return x.ca && keyMatchesCert(ca.cert, ca.key) && x.validToDate.getTime() > Date.now() + 86_400_000 ? ca : undefined
  } catch {
    return undefined
  }
}

/** Whether the node files of an earlier run still serve: signed by `ca`, naming this node, valid a day longer, with their key. */
async function usableNodeCert (ca: CertAndKey, name: NodeName, certFile: string, keyFile: string): Promise<boolean> {
  try {
    const cert = await readFile(certFile, 'utf8')
    const x = new X509Certificate(cert)
    const who = readCertIdentity(cert)
    return x.verify(new X509Certificate(ca.cert).publicKey) && who.id === nodeId(name) && who.role === NODE_ROLES[name] &&
      x.validToDate.getTime() > Date.now() + 86_400_000 && keyMatchesCert(cert, await readFile(keyFile, 'utf8'))
  } catch {
    return false
  }
}

/**
 * The demo's site (--secure), in DIR/tls: a CA (ca.crt, ca.key) and per node NAME.crt and NAME.key
 * (CN = the node id, OU = its role, SANs localhost and 127.0.0.1), as `fogmesh cert` makes them. Made
 * at the first run and kept: a later run reuses the CA, so a client that trusts it keeps working, and
 * issues again only what is missing, expiring or not of that CA. Keys are 0600.
 */
export async function demoTls (dataDir: string): Promise<DemoTls> {
  const dir = resolve(dataDir, TLS_DIR)
  await mkdir(dir, { recursive: true, mode: 0o700 })
  const caCert = resolve(dir, 'ca.crt')
  const caKey = resolve(dir, 'ca.key')
  let ca = await readDemoCa(caCert, caKey)
  if (ca === undefined) {
    ca = await createCa({ name: 'fogmesh demo CA' })
    await writeFileAtomic(caKey, ca.key, 0o600)
    await writeFileAtomic(caCert, ca.cert, 0o644)
  }
  const nodes = {} as DemoTls['nodes']
  for (const name of Object.keys(NODE_ROLES) as NodeName[]) {
    const files = { cert: resolve(dir, `${name}.crt`), key: resolve(dir, `${name}.key`) }
    if (!await usableNodeCert(ca, name, files.cert, files.key)) {
      const issued = await issueNodeCert(ca, { role: NODE_ROLES[name], id: nodeId(name), hosts: ['localhost', '127.0.0.1'] })
      await writeFileAtomic(files.key, issued.key, 0o600)
      await writeFileAtomic(files.cert, issued.cert, 0o644)
    }
    nodes[name] = files
  }
  return { caCert, nodes }
}

export async function demoCommand (argv: string[]): Promise<number> {
  const o = readDemoOptions(argv)
  if (o === undefined) {
    process.stdout.write(USAGE)
    return 0
  }
  // Check the file here once, rather than have four nodes fail on it.
  await loadPipelinesFile(o.pipelines)
  const taken = await takenPorts(o.ports)
  if (taken.length > 0) {
    process.stderr.write(`demo: port${taken.length > 1 ? 's' : ''} ${taken.join(', ')} ${taken.length > 1 ? 'are' : 'is'} taken on ${HOST}.\n${portsHint()}\n`)
    return 1
  }

  const meshKey = await demoSecret(o.dataDir, MESH_KEY, generateSwarmKey)
  const adminToken = await demoSecret(o.dataDir, ADMIN_TOKEN, () => randomBytes(16).toString('hex') + '\n')
  const tls = o.secure ? await demoTls(o.dataDir) : undefined
  /** A node's TLS flags with --secure: its certificate, the site CA for the tiers it calls, and for a merge tier the CA its clients need. */
  const tlsFlags = (name: NodeName): string[] => tls === undefined
    ? []
    : ['--tls-cert', tls.nodes[name].cert, '--tls-key', tls.nodes[name].key, '--tls-ca', tls.caCert,
        ...NODE_ROLES[name] === 'edge' ? [] : ['--tls-client-ca', tls.caCert]]

  let requestStop: (s: Stop) => void = () => {}
  const stopRequested = new Promise<Stop>(resolve => { requestStop = resolve })
  let stopping: Stop | undefined
  const stop = (s: Stop): void => {
    if (stopping !== undefined) return
    stopping = s
    requestStop(s)
  }
  let firstSignalAt = 0
  const onSignal = (signal: NodeJS.Signals): void => {
    // Under `npm start` a Ctrl-C arrives twice (from the terminal and forwarded by npm): only a signal
    // well after the first means "stop now".
    const now = Date.now()
    if (firstSignalAt === 0) {
      firstSignalAt = now
      stop({ code: 0 })
    } else if (now - firstSignalAt > 2_000) {
      process.stderr.write(`demo: ${signal} again: killing every node without a clean stop\n`)
      process.exit(128 + (constants.signals[signal] ?? 0))
    }
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('SIGHUP', onSignal)

  const nodes: MeshNode[] = []
  const simAbort = new AbortController()
  let sim: Promise<void> | undefined
  /** Starts a node and resolves once it is ready, or undefined when the demo is stopping meanwhile. */
  const start = async (name: NodeName, role: string, args: string[]) => {
    // The nodes' stderr is a pipe to here: readable lines if they end up on a terminal, JSON lines otherwise.
    const logs = ['--log-level', o.logLevel, '--log-format', process.stderr.isTTY ? 'pretty' : 'json']
    const node = new MeshNode(name, role, [...args, '--id', nodeId(name), '--data-dir', resolve(o.dataDir, name), '--pipelines', o.pipelines, ...tlsFlags(name), ...logs])
    nodes.push(node)
    let isReady = false
    // Before its ready line, a node's failure is told by `ready` rejecting (with the reason, if known).
    void node.exited.then(e => {
      if (isReady && stopping === undefined) stop({ code: 1, message: `${name} exited unexpectedly (${exitStatus(e)}); stopping the rest` })
    })
    const ready = await Promise.race([node.ready, stopRequested.then(() => undefined)])
    isReady = ready !== undefined
    return ready
  }

  try {
    // One mesh: the cloud is up first (the fog needs its URL), so the fog joins through it and the
    // edges through the fog, as edges would in the field.
    const mesh = (name: NodeName, bootstrap?: string) => [
      '--mesh-port', String(o.ports.mesh[name]), '--mesh-key', meshKey, ...(bootstrap === undefined ? [] : ['--bootstrap', bootstrap])
    ]
    const cloud = await start('cloud', 'cloud', ['--http-port', String(o.ports.http.cloud), ...mesh('cloud')])
    const fog = cloud && await start('fog', 'fog', ['--http-port', String(o.ports.http.fog), '--cloud', cloud.http, '--admin-token-file', adminToken,
      ...mesh('fog', cloud.mesh)])
    const edges = fog && await Promise.all((['edge-1', 'edge-2'] as const).map(async name => await start(name, 'edge', [
      '--http-port', String(o.ports.http[name]), '--mqtt-port', String(o.ports.mqtt[name]), '--fog', fog.http, '--cloud', cloud.http,
      ...mesh(name, fog.mesh)
    ])))
    if (cloud !== undefined && fog !== undefined && edges !== undefined && edges[0] !== undefined && edges[1] !== undefined) {
      const [edge1, edge2] = edges as Array<{ http: string, mqtt: string }>
      sim = simulate([edge1.mqtt, edge2.mqtt], o, simAbort.signal).catch((err: Error) => {
        if (simAbort.signal.aborted) return
        // An edge that dies closes the simulator's connection first: give its exit the time to be the news.
        setTimeout(() => stop({ code: 1, message: `the simulator stopped: ${err.message}; stopping the rest` }), 1_000)
      })
      process.stdout.write(banner(o, { cloud: cloud.http, fog: fog.http, 'edge-1': edge1.http, 'edge-2': edge2.http }, [edge1.mqtt, edge2.mqtt], tls))
    }
  } catch (err) {
    stop({ code: 1, message: (err as Error).message })
  }

  const why = await stopRequested
  if (why.message !== undefined) process.stderr.write(`demo: ${why.message}\n`)
  process.stdout.write('\ndemo: stopping: simulator, edges, fog, cloud\n')
  simAbort.abort()
  if (sim !== undefined) await Promise.race([sim, new Promise(resolve => setTimeout(resolve, 5_000).unref())])
  let clean = true
  const stopNodes = async (names: NodeName[]) => {
    const results = await Promise.all(nodes.filter(n => names.includes(n.name)).map(async n => {
      const wasAlive = n.alive
      const ok = await n.stop()
      // A node that died on its own was reported already.
      if (!ok && wasAlive) process.stderr.write(`demo: ${n.name} did not stop cleanly (${exitStatus(await n.exited)})\n`)
      return ok || !wasAlive
    }))
    clean &&= results.every(ok => ok)
    process.stdout.write(`demo: stopped ${names.join(', ')}\n`)
  }
  await stopNodes(['edge-1', 'edge-2'])
  await stopNodes(['fog'])
  await stopNodes(['cloud'])
  process.off('SIGINT', onSignal)
  process.off('SIGTERM', onSignal)
  process.off('SIGHUP', onSignal)
  return why.code !== 0 ? why.code : clean ? 0 : 1
}

/** Runs the simulator until aborted, chunk after chunk (see SIM_CHUNK). */
async function simulate (brokers: string[], o: DemoOptions, signal: AbortSignal): Promise<void> {
  const seed = Date.now() % 100_000
  for (let chunk = 0; !signal.aborted; chunk++) {
    await runSimulator({
      mqtt: brokers,
      devices: o.devices,
      rooms: o.rooms,
      rate: o.rate,
      duration: SIM_CHUNK,
      jitter: 1_000,
      speed: 1,
      seed: seed + chunk,
      signal
    })
  }
}

/** A path as the user would type it from here. */
function display (path: string): string {
  const rel = relative(process.cwd(), path)
  return rel.startsWith('..') ? path : rel
}

function banner (o: DemoOptions, http: Record<NodeName, string>, mqtt: string[], tls: DemoTls | undefined): string {
  const dir = (name: NodeName) => display(resolve(o.dataDir, name))
  // With --secure, every command verifies the nodes with the demo's CA.
  const ca = tls === undefined ? '' : display(tls.caCert)
  const curl = tls === undefined ? 'curl' : `curl --cacert ${ca}`
  const query = (url: string) => `npx fogmesh query ${url} room-temp${tls === undefined ? '' : ` --ca ${ca}`}`
  const rows: Array<[string, string, string, string]> = [
    ['node', 'HTTP API', 'MQTT', 'data dir'],
    ['edge-1', http['edge-1'], mqtt[0], dir('edge-1')],
    ['edge-2', http['edge-2'], mqtt[1], dir('edge-2')],
    ['fog', http.fog, '', dir('fog')],
    ['cloud', http.cloud, '', dir('cloud')]
  ]
  const widths = [0, 1, 2].map(i => Math.max(...rows.map(r => r[i].length)))
  const table = rows.map(r => '  ' + r.map((c, i) => i < 3 ? c.padEnd(widths[i]) : c).join('   ').trimEnd())
  return [
    `ready demo cloud=${http.cloud} fog=${http.fog} edge-1=${http['edge-1']} edge-2=${http['edge-2']}`,
    '',
    `fogmesh demo: ${o.devices} simulated sensors in ${o.rooms} rooms publish in real time, half of them to each edge`,
    'agent\'s broker. The edges aggregate them in windows and send partials to the fog, which merges both',
    'edges and forwards the final windows to the cloud.',
    '',
    ...table,
    '',
    'The web console of each node (mesh, pipelines, live charts; at the fog, deploy pipelines with the admin token):',
    '',
    ...(['edge-1', 'edge-2', 'fog', 'cloud'] as const).map(name => `  ${name.padEnd(6)}   ${http[name]}/`),
    '',
    ...tls === undefined
      ? []
      : [
          `Secure: every node serves HTTPS only, with its own certificate of the demo's CA ${ca} (the nodes'`,
          'certificates and keys are beside it), and the fog and the cloud take partials only from nodes that',
          'present one. The simulator publishes plain MQTT to the edges, on loopback.',
          ''
        ],
    'room-temp windows close every 10 s at the edges (2 s lateness), and are final at the fog and then at the',
    'cloud a fraction of a second later. Try:',
    '',
    `  ${query(http['edge-1'])}    # edge-1: its own sensors (sources 1)`,
    `  ${query(http.fog)}    # the fog: both edges merged (sources 2)`,
    `  ${query(http.cloud)}    # the cloud: what the fog forwarded`,
    ...tls === undefined ? [] : [`  ${curl} '${http.fog}/v1/aggregates/room-temp?limit=5'`],
    `  ${curl} '${http.cloud}/v1/aggregates/building-humidity?limit=5'`,
    `  ${curl} ${http.fog}/v1/mesh    # every node of the mesh, and the edges' watermarks, as the fog sees them`,
    `  ${curl} ${http['edge-1']}/metrics`,
    ...tls === undefined ? [] : [`  ${curl} -X POST ${http.fog}/v1/partials    # refused (401): no client certificate`],
    '',
    'Deploy a pipeline once, at the fog, and both edges run it within seconds (then query device-temp):',
    '',
    `  ${curl} -X PUT -H "Authorization: Bearer $(cat ${display(resolve(o.dataDir, ADMIN_TOKEN))})" \\`,
    `       --data-binary @${display(DEPLOYABLE)} ${http.fog}/v1/pipelines/device-temp`,
    '',
    'Ctrl-C stops everything: the simulator, the edges, the fog, the cloud.',
    ''
  ].join('\n')
}

/**
 * `fogmesh cert ca DIR` and `fogmesh cert issue …`: a site's certificates (see server/shell/certs.ts).
 * Bad flags exit 2 (ConfigError); a CA that exists or cannot be used exits 1 (CertError).
 */
import { X509Certificate } from 'node:crypto'
import { mkdir, readFile, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import type { ParseArgsOptionsConfig } from 'node:util'
import { ConfigError } from '../core/errors.ts'
import { writeFileAtomic } from '../server/shell/atomic-file.ts'
import {
  CertError, checkDays, createCa, DEFAULT_CA_DAYS, DEFAULT_CA_NAME, DEFAULT_HOSTS, DEFAULT_NODE_DAYS,
  issueNodeCert, readCertIdentity, ROLES
} from '../server/shell/certs.ts'

/** File names in a CA dir and a node dir. */
export const CA_CERT = 'ca.crt'
export const CA_KEY = 'ca.key'
export const NODE_CERT = 'node.crt'
export const NODE_KEY = 'node.key'

const USAGE = `usage: fogmesh cert ca DIR [--days N] [--name CN] [--force]
       fogmesh cert issue --ca DIR --role ${ROLES.join('|')} --id ID [--host NAME|IP]… --out DIR [--days N]

  cert ca DIR     a new site CA: writes DIR/${CA_CERT} and DIR/${CA_KEY} (mode 0600; keep it off the nodes)
    --days N      validity in days (default: ${DEFAULT_CA_DAYS})
    --name CN     the CA's subject CN (default: ${DEFAULT_CA_NAME})
    --force       replace an existing CA (every certificate the old one issued stops being trusted)

  cert issue      one node's certificate, signed by the CA in --ca DIR: writes OUT/${NODE_CERT},
                  OUT/${NODE_KEY} (mode 0600) and OUT/${CA_CERT} (a copy of the CA certificate);
                  for servers and clients alike (subject CN = the node id, OU = its role)
    --ca DIR      the CA dir (from fogmesh cert ca)
    --role ROLE   ${ROLES.join(', ')}
    --id ID       the node id, as the node's --id
    --host H      a DNS name or IP address the node is reached at (repeatable; default: ${DEFAULT_HOSTS.join(', ')})
    --out DIR     where to write; issuing into the same dir again replaces the node's certificate
    --days N      validity in days (default: ${DEFAULT_NODE_DAYS})
`

function parse (argv: string[], options: ParseArgsOptionsConfig, positionals: number): { values: Record<string, unknown>, positionals: string[] } {
  let parsed
  try {
    parsed = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: positionals > 0 })
  } catch (err) {
    throw new ConfigError((err as Error).message)
  }
  return parsed as { values: Record<string, unknown>, positionals: string[] }
}

function days (raw: unknown): number | undefined {
  if (raw === undefined) return undefined
  if (typeof raw !== 'string' || !/^\d+$/.test(raw)) throw new ConfigError(`--days: expected a whole number of days, got ${JSON.stringify(raw)}`)
  return checkDays(Number(raw))
}

function required (values: Record<string, unknown>, name: string): string {
  const v = values[name]
  if (typeof v !== 'string' || v === '') throw new ConfigError(`--${name} is required (fogmesh cert --help)`)
  return v
}

async function exists (path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

const day = (d: Date): string => d.toISOString().slice(0, 10)

async function caCommand (argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { days: { type: 'string' }, name: { type: 'string' }, force: { type: 'boolean' } }, 1)
  if (values.help === true) {
    process.stdout.write(USAGE)
    return 0
  }
  if (positionals.length !== 1) throw new ConfigError('cert ca takes one DIR (fogmesh cert --help)')
  const dir = positionals[0]
  const nDays = days(values.days)
  const certFile = join(dir, CA_CERT)
  const keyFile = join(dir, CA_KEY)
  if (values.force !== true) {
    for (const file of [keyFile, certFile]) {
      if (await exists(file)) {
        throw new CertError('ca_exists', `${file} exists; not replacing a site CA (every certificate it issued would stop being trusted); --force replaces it`)
      }
    }
  }
  const ca = await createCa({ days: nDays, name: values.name as string | undefined })
  await mkdir(dir, { recursive: true, mode: 0o700 })
  // The key first: a crash in between leaves a key without a certificate, which the next run
  // refuses to overwrite without --force rather than pairing it with another key.
  await writeFileAtomic(keyFile, ca.key, 0o600)
  await writeFileAtomic(certFile, ca.cert, 0o644)
  const until = day(new X509Certificate(ca.cert).validToDate)
  process.stdout.write(`${certFile}: site CA, valid until ${until}; ${keyFile} signs node certificates, keep it secret and off the nodes\n` +
    `next: fogmesh cert issue --ca ${dir} --role fog|edge|cloud --id ID --host NAME|IP --out DIR\n`)
  return 0
}

async function readCa (dir: string): Promise<{ cert: string, key: string }> {
  const read = async (name: string): Promise<string> => {
    try {
      return await readFile(join(dir, name), 'utf8')
    } catch (err) {
      throw new CertError('ca_invalid', `cannot read the CA: ${(err as Error).message} (fogmesh cert ca ${dir} makes one)`, { cause: err })
    }
  }
  return { cert: await read(CA_CERT), key: await read(CA_KEY) }
}

async function issueCommand (argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    ca: { type: 'string' },
    role: { type: 'string' },
    id: { type: 'string' },
    host: { type: 'string', multiple: true },
    out: { type: 'string' },
    days: { type: 'string' }
  }, 0)
  if (values.help === true) {
    process.stdout.write(USAGE)
    return 0
  }
  if (positionals.length > 0) throw new ConfigError(`cert issue takes no positional arguments, got ${positionals.join(' ')} (fogmesh cert --help)`)
  const caDir = required(values, 'ca')
  const role = required(values, 'role')
  const id = required(values, 'id')
  const out = required(values, 'out')
  const hosts = values.host as string[] | undefined
  const nDays = days(values.days)
  const ca = await readCa(caDir)
  const issued = await issueNodeCert(ca, { role: role as typeof ROLES[number], id, hosts, days: nDays })
  const certFile = join(out, NODE_CERT)
  const keyFile = join(out, NODE_KEY)
  const caFile = join(out, CA_CERT)
  // Each file is replaced whole (never half written); a running node picks the new pair up when it
  // re-reads its files (SIGHUP), which is meant to come after this command.
  await writeFileAtomic(keyFile, issued.key, 0o600)
  await writeFileAtomic(certFile, issued.cert, 0o644)
  if (resolve(caFile) !== resolve(caDir, CA_CERT)) await writeFileAtomic(caFile, ca.cert, 0o644)
  const identity = readCertIdentity(issued.cert)
  const sans = (hosts === undefined || hosts.length === 0 ? DEFAULT_HOSTS : hosts).join(', ')
  process.stdout.write(`${certFile}: ${identity.role} ${identity.id} (hosts ${sans}), valid until ${day(identity.notAfter)}\n` +
    `use: --tls-cert ${certFile} --tls-key ${keyFile} --tls-ca ${caFile}` +
    (identity.role === 'edge' ? '\n' : ` --tls-client-ca ${caFile}\n`))
  return 0
}

export async function certCommand (argv: string[]): Promise<number> {
  const [sub, ...rest] = argv
  if (sub === '--help' || sub === '-h' || sub === 'help') {
    process.stdout.write(USAGE)
    return 0
  }
  if (sub === 'ca') return await caCommand(rest)
  if (sub === 'issue') return await issueCommand(rest)
  process.stderr.write(sub === undefined ? USAGE : `fogmesh cert: unknown sub-command ${JSON.stringify(sub)}\n${USAGE}`)
  return 2
}

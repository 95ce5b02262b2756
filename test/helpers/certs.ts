/**
 * Certificates for tests: a site CA and node certificates on demand, written as files the way
 * `fogmesh cert issue` writes them, plus the bad certificates TLS tests need.
 *
 *   const site = await makeSite(dir)        // dir/ca/ca.crt, dir/ca/ca.key: a new site CA
 *   const fog = await site.node('fog', 'fog-1')            // { dir, caCert, cert, key } (paths)
 *   const edge = await site.node('edge', 'gw-1', { hosts: ['localhost', '127.0.0.1', '::1'] })
 *   await site.expired('edge', 'gw-1')      // signed by this CA, notAfter a day ago
 *   await site.foreign('edge', 'gw-1')      // same subject, signed by another CA
 *   await site.wrongRole('gw-1')            // signed by this CA, OU 'sensor' (no fogmesh role); wrongRole(id, null): no OU
 *   await site.mismatchedKey('edge', 'gw-1') // a cert of this CA with another key: loading the pair fails
 *
 * Every call returns NodeFiles: paths of node.crt, node.key and ca.crt in a dir of its own under
 * `dir` (node.key mode 0600). `caCert` is always THIS site's CA, so a node set up from the files
 * trusts the site while presenting the odd certificate: a server refuses it as a client, a client
 * refuses it as a server. Calls with the same arguments return the same files (made once).
 * `site.ca` has the CA's PEM text for createCa/issueNodeCert callers (server/shell/certs.ts).
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createCa, issueLeafCert, issueNodeCert } from '../../server/shell/certs.ts'
import type { CertAndKey, Role } from '../../server/shell/certs.ts'

/** Paths of one node's files, as `fogmesh cert issue --out dir` writes them. */
export interface NodeFiles {
  dir: string
  /** This site's CA certificate (dir/ca.crt). */
  caCert: string
  /** dir/node.crt */
  cert: string
  /** dir/node.key, mode 0600 */
  key: string
}

export interface Site {
  dir: string
  /** Paths of the CA files (dir/ca/ca.crt, dir/ca/ca.key): `--ca` of `fogmesh cert issue` is `dir/ca`. */
  caDir: string
  caCert: string
  caKey: string
  /** The CA's certificate and key, PEM. */
  ca: CertAndKey
  /** A valid certificate for a node (CN = id, OU = role); hosts default to localhost and 127.0.0.1. */
  node (role: Role, id: string, opts?: { hosts?: string[], days?: number }): Promise<NodeFiles>
  /** Signed by this CA, expired a day ago (valid from 10 days ago). */
  expired (role: Role, id: string): Promise<NodeFiles>
  /** The same subject and hosts, signed by another CA (one per site). */
  foreign (role: Role, id: string): Promise<NodeFiles>
  /** Signed by this CA with CN = id and OU = `ou` (default 'sensor', not a fogmesh role); null: no OU. */
  wrongRole (id: string, ou?: string | null): Promise<NodeFiles>
  /** node.crt a valid certificate of this CA, node.key the key of another certificate. */
  mismatchedKey (role: Role, id: string): Promise<NodeFiles>
}

const DAY_MS = 24 * 60 * 60 * 1000

async function writeNode (dir: string, caCert: string, issued: CertAndKey): Promise<NodeFiles> {
  await mkdir(dir, { recursive: true })
  const files: NodeFiles = { dir, caCert: join(dir, 'ca.crt'), cert: join(dir, 'node.crt'), key: join(dir, 'node.key') }
  await writeFile(files.key, issued.key, { mode: 0o600 })
  await writeFile(files.cert, issued.cert)
  await writeFile(files.caCert, caCert)
  return files
}

/** A new site CA in `dir/ca` and node certificates under `dir` on demand (see the top of this file). */
export async function makeSite (dir: string): Promise<Site> {
  const ca = await createCa()
  const caDir = join(dir, 'ca')
  await mkdir(caDir, { recursive: true })
  await writeFile(join(caDir, 'ca.key'), ca.key, { mode: 0o600 })
  await writeFile(join(caDir, 'ca.crt'), ca.cert)
  let otherCa: Promise<CertAndKey> | undefined
  const made = new Map<string, Promise<NodeFiles>>()
  const once = (name: string, issue: () => Promise<CertAndKey>): Promise<NodeFiles> => {
    let files = made.get(name)
    if (files === undefined) {
      files = issue().then(issued => writeNode(join(dir, name), ca.cert, issued))
      made.set(name, files)
    }
    return files
  }
  return {
    dir,
    caDir,
    caCert: join(caDir, 'ca.crt'),
    caKey: join(caDir, 'ca.key'),
    ca,
    node: (role, id, opts = {}) => once(
      [role, id, ...(opts.hosts ?? []), ...(opts.days !== undefined ? [`${opts.days}d`] : [])].join('-'),
      () => issueNodeCert(ca, { role, id, ...opts })
    ),
    expired: (role, id) => once(`expired-${role}-${id}`, () =>
      issueNodeCert(ca, { role, id, notBefore: new Date(Date.now() - 10 * DAY_MS), notAfter: new Date(Date.now() - DAY_MS) })),
    foreign: (role, id) => once(`foreign-${role}-${id}`, async () => {
      otherCa ??= createCa({ name: 'another site CA' })
      return await issueNodeCert(await otherCa, { role, id })
    }),
    wrongRole: (id, ou = 'sensor') => once(`wrong-role-${ou ?? 'none'}-${id}`, () => issueLeafCert(ca, { cn: id, ou })),
    mismatchedKey: (role, id) => once(`mismatched-key-${role}-${id}`, async () => {
      const [a, b] = await Promise.all([issueNodeCert(ca, { role, id }), issueNodeCert(ca, { role, id })])
      return { cert: a.cert, key: b.key }
    })
  }
}

/**
 * A site's certificates without a PKI team: one site CA, and for each node one certificate that it
 * presents both as a server (HTTPS, MQTT over TLS) and as a client (mutual TLS to a fog or the cloud).
 *
 * A node certificate names the node: subject CN is the node id, OU its role (edge, fog, cloud); the
 * receiving tiers authorize writes by them. Keys are ECDSA P-256 (small, and fast on a Raspberry Pi);
 * certificates are built with @peculiar/x509 on WebCrypto and written as PEM (keys as PKCS#8).
 */
// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata API first.
import 'reflect-metadata'
import * as x509 from '@peculiar/x509'
import { createPrivateKey, randomBytes, X509Certificate as NodeX509 } from 'node:crypto'
import type { webcrypto } from 'node:crypto'
import { isIP } from 'node:net'
import { ConfigError, FogmeshError } from '../../core/errors.ts'

x509.cryptoProvider.set(globalThis.crypto)

/** The roles a node certificate can name (its OU). */
export const ROLES = ['edge', 'fog', 'cloud'] as const
export type Role = typeof ROLES[number]

/**
 * Node ids a certificate can carry: letters, digits, `.`, `_` and `-`, starting with a letter or a
 * digit, at most 64 characters (the X.509 bound of a CN). Nothing that needs escaping in a
 * distinguished name, so the id reads back the same from any tool's rendering of the subject.
 */
export const NODE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

/** The CA's subject CN unless told otherwise. */
export const DEFAULT_CA_NAME = 'fogmesh site CA'
/** SANs of a node certificate when no host is given. */
export const DEFAULT_HOSTS: readonly string[] = ['localhost', '127.0.0.1']
export const DEFAULT_CA_DAYS = 3650
export const DEFAULT_NODE_DAYS = 365
/** Longest validity `--days` takes (100 years). */
export const MAX_DAYS = 36500
/**
 * notBefore is this far in the past, so a node whose clock runs somewhat behind (a Pi without a
 * real-time clock, before NTP) still accepts a certificate issued a moment ago.
 */
export const BACKDATE_MS = 60 * 60 * 1000

const DAY_MS = 24 * 60 * 60 * 1000
const EC_KEY: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' }
const EC_SIGN: webcrypto.EcdsaParams & webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }

/** A certificate and its private key, both PEM. */
export interface CertAndKey {
  cert: string
  key: string
}

/**
 * A certificate operation failed on its input files (the CA is not usable, a certificate names no
 * node) or would destroy one (`ca_exists`). Codes: `ca_exists`, `ca_invalid`, `cert_invalid`.
 */
export class CertError extends FogmeshError {}

export interface Validity {
  /** Days from now; default DEFAULT_CA_DAYS for a CA, DEFAULT_NODE_DAYS for a node. */
  days?: number
  /** Default: now minus BACKDATE_MS. */
  notBefore?: Date
  /** Default: now plus `days`. Before `notBefore` is an error; in the past makes an expired certificate. */
  notAfter?: Date
}

export interface CaOptions extends Validity {
  /** Subject CN; default DEFAULT_CA_NAME. */
  name?: string
}

export interface NodeCertOptions extends Validity {
  role: Role
  id: string
  /** DNS names and IP addresses for the SAN; default DEFAULT_HOSTS. */
  hosts?: readonly string[]
}

/** Throws a ConfigError unless `id` is a valid node id (NODE_ID). */
export function checkNodeId (id: string): string {
  if (!NODE_ID.test(id)) {
    throw new ConfigError(`--id: ${JSON.stringify(id)} is not a node id (letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters)`)
  }
  return id
}

export function checkRole (role: string): Role {
  if (!(ROLES as readonly string[]).includes(role)) throw new ConfigError(`--role: expected one of ${ROLES.join(', ')}, got ${JSON.stringify(role)}`)
  return role as Role
}

export function checkDays (days: number): number {
  if (!Number.isInteger(days) || days < 1 || days > MAX_DAYS) throw new ConfigError(`--days: expected a whole number of days from 1 to ${MAX_DAYS}, got ${String(days)}`)
  return days
}

const DNS_NAME = /^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/

/** A `--host` as a SAN entry: an IP address (v4 or v6) or a DNS name (a leading `*.` wildcard allowed). */
export function sanEntry (host: string): x509.JsonGeneralName {
  if (isIP(host) !== 0) return { type: 'ip', value: host }
  if (host.length <= 253 && DNS_NAME.test(host)) return { type: 'dns', value: host.replace(/\.$/, '') }
  throw new ConfigError(`--host: ${JSON.stringify(host)} is neither an IP address nor a DNS name`)
}

function validity (v: Validity, defaultDays: number, now = Date.now()): { notBefore: Date, notAfter: Date } {
  const days = checkDays(v.days ?? defaultDays)
  const notBefore = v.notBefore ?? new Date(now - BACKDATE_MS)
  const notAfter = v.notAfter ?? new Date(now + days * DAY_MS)
  if (!(notAfter > notBefore)) throw new ConfigError(`notAfter (${notAfter.toISOString()}) is not after notBefore (${notBefore.toISOString()})`)
  return { notBefore, notAfter }
}

/** A random positive 128-bit serial number, hex (RFC 5280: at most 20 octets, positive, unique per CA). */
function serialNumber (): string {
  const bytes = randomBytes(16)
  bytes[0] = (bytes[0] & 0x7f) | 0x40
  return bytes.toString('hex')
}

async function pkcs8Pem (key: webcrypto.CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await globalThis.crypto.subtle.exportKey('pkcs8', key), 'PRIVATE KEY') + '\n'
}

function certPem (cert: x509.X509Certificate): string {
  return cert.toString('pem') + '\n'
}

async function generateKeys (): Promise<webcrypto.CryptoKeyPair> {
  return await globalThis.crypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify'])
}

/** A new self-signed site CA: CA:true (critical), keyCertSign + cRLSign, subject key identifier. */
export async function createCa (opts: CaOptions = {}): Promise<CertAndKey> {
  const name = opts.name ?? DEFAULT_CA_NAME
  if (name.trim() === '' || name.length > 64) throw new ConfigError(`--name: a CA name is 1 to 64 characters, got ${JSON.stringify(name)}`)
  const { notBefore, notAfter } = validity(opts, DEFAULT_CA_DAYS)
  const keys = await generateKeys()
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: [{ CN: [name] }],
    notBefore,
    notAfter,
    signingAlgorithm: EC_SIGN,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)
    ]
  })
  return { cert: certPem(cert), key: await pkcs8Pem(keys.privateKey) }
}

interface LoadedCa {
  cert: x509.X509Certificate
  key: webcrypto.CryptoKey
  signing: webcrypto.Algorithm | webcrypto.EcdsaParams
}

/** Parses and checks a CA: a CA certificate, still valid, and the key that matches it. */
async function loadCa (ca: CertAndKey): Promise<LoadedCa> {
  const bad = (what: string, cause?: unknown): never => { throw new CertError('ca_invalid', `CA: ${what}`, { cause }) }
  let cert: x509.X509Certificate
  let nodeCert: NodeX509
  try {
    cert = new x509.X509Certificate(ca.cert)
    nodeCert = new NodeX509(ca.cert)
  } catch (err) {
    return bad(`the certificate is not a PEM X.509 certificate (${(err as Error).message})`, err)
  }
  if (!nodeCert.ca) bad(`${cert.subject} is not a CA certificate (basicConstraints CA:true)`)
  if (cert.notAfter.getTime() <= Date.now()) bad(`${cert.subject} expired on ${cert.notAfter.toISOString()}`)
  let keyObject
  try {
    keyObject = createPrivateKey(ca.key)
  } catch (err) {
    return bad(`the key is not a PEM private key (${(err as Error).message})`, err)
  }
  if (!nodeCert.checkPrivateKey(keyObject)) bad(`the key does not belong to the certificate ${cert.subject}`)
  let algorithm: webcrypto.EcKeyImportParams | webcrypto.RsaHashedImportParams
  let signing: webcrypto.Algorithm | webcrypto.EcdsaParams
  const details = keyObject.asymmetricKeyDetails ?? {}
  if (keyObject.asymmetricKeyType === 'ec') {
    const curve = { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521' }[details.namedCurve ?? '']
    if (curve === undefined) bad(`unsupported EC curve ${String(details.namedCurve)}`)
    const hash = { 'P-256': 'SHA-256', 'P-384': 'SHA-384', 'P-521': 'SHA-512' }[curve as string] as string
    algorithm = { name: 'ECDSA', namedCurve: curve as string }
    signing = { name: 'ECDSA', hash } as webcrypto.EcdsaParams
  } else if (keyObject.asymmetricKeyType === 'rsa') {
    algorithm = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
    signing = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as webcrypto.Algorithm
  } else {
    return bad(`unsupported key type ${String(keyObject.asymmetricKeyType)} (EC or RSA)`)
  }
  const key = await globalThis.crypto.subtle.importKey('pkcs8', keyObject.export({ type: 'pkcs8', format: 'der' }), algorithm, false, ['sign'])
  return { cert, key, signing }
}

/** Subject and extensions of a leaf certificate, unchecked: see issueNodeCert for the checked form. */
export interface LeafOptions extends Validity {
  cn: string
  /** The OU; left out when null. */
  ou: string | null
  hosts?: readonly string[]
}

/**
 * Issues a leaf certificate with a new P-256 key, signed by `ca`, with the subject as given and no
 * checks on the names: issueNodeCert is the checked form, this one lets tests make odd certificates.
 * notAfter is cut to the CA's, since a certificate cannot outlive its issuer.
 */
export async function issueLeafCert (ca: CertAndKey, opts: LeafOptions): Promise<CertAndKey> {
  const issuer = await loadCa(ca)
  const times = validity(opts, DEFAULT_NODE_DAYS)
  const notBefore = times.notBefore
  let notAfter = times.notAfter
  if (notAfter > issuer.cert.notAfter) notAfter = issuer.cert.notAfter
  const keys = await generateKeys()
  const subject: x509.JsonName = [{ CN: [opts.cn] }]
  if (opts.ou !== null) subject.push({ OU: [opts.ou] })
  const ski = issuer.cert.getExtension(x509.SubjectKeyIdentifierExtension)
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject,
    issuer: issuer.cert.subjectName,
    notBefore,
    notAfter,
    publicKey: keys.publicKey,
    signingKey: issuer.key,
    signingAlgorithm: issuer.signing,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension((opts.hosts ?? DEFAULT_HOSTS).map(sanEntry)),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ski !== null
        ? new x509.AuthorityKeyIdentifierExtension(ski.keyId)
        : await x509.AuthorityKeyIdentifierExtension.create(issuer.cert.publicKey)
    ]
  })
  return { cert: certPem(cert), key: await pkcs8Pem(keys.privateKey) }
}

/**
 * Issues one node's certificate, signed by the site CA: CN = id, OU = role, serverAuth + clientAuth,
 * SANs `hosts` (default localhost and 127.0.0.1), 1 year by default, a random serial.
 * Bad options are ConfigErrors; a CA that cannot sign is a CertError `ca_invalid`.
 */
export async function issueNodeCert (ca: CertAndKey, opts: NodeCertOptions): Promise<CertAndKey> {
  const role = checkRole(opts.role)
  const id = checkNodeId(opts.id)
  const hosts = opts.hosts === undefined || opts.hosts.length === 0 ? DEFAULT_HOSTS : opts.hosts
  hosts.forEach(sanEntry)
  return await issueLeafCert(ca, { ...opts, cn: id, ou: role, hosts })
}

export interface CertIdentity {
  /** The subject CN: the node id. */
  id: string
  role: Role
  notAfter: Date
}

/** The node a certificate names (CN, OU), and its expiry. A certificate that names none is a CertError `cert_invalid`. */
export function readCertIdentity (pem: string | Buffer): CertIdentity {
  let cert: NodeX509
  try {
    cert = new NodeX509(pem)
  } catch (err) {
    throw new CertError('cert_invalid', `not a PEM X.509 certificate (${(err as Error).message})`, { cause: err })
  }
  const fields = new Map<string, string[]>()
  for (const line of cert.subject.split('\n')) {
    const eq = line.indexOf('=')
    if (eq > 0) fields.set(line.slice(0, eq), [...(fields.get(line.slice(0, eq)) ?? []), line.slice(eq + 1)])
  }
  const cn = fields.get('CN') ?? []
  const roles = (fields.get('OU') ?? []).filter(ou => (ROLES as readonly string[]).includes(ou))
  const subject = cert.subject.replace(/\n/g, ', ')
  if (cn.length !== 1 || !NODE_ID.test(cn[0])) throw new CertError('cert_invalid', `certificate ${subject} names no node (its CN is not one node id)`)
  if (roles.length !== 1) throw new CertError('cert_invalid', `certificate ${subject} names no role (an OU of ${ROLES.join(', ')})`)
  return { id: cn[0], role: roles[0] as Role, notAfter: cert.validToDate }
}

/** True when the PEM private key `keyPem` belongs to the PEM certificate `certPemText`. */
export function keyMatchesCert (certPemText: string, keyPem: string): boolean {
  try {
    return new NodeX509(certPemText).checkPrivateKey(createPrivateKey(keyPem))
  } catch {
    return false
  }
}

/**
 * TLS material of a node (--tls-cert, --tls-key, --tls-ca, --tls-client-ca), the identity of the peer
 * of a request, and the rule that a node exposed beyond loopback speaks TLS.
 *
 * Invariants:
 * - Material is read and checked as a whole before anything uses it: every file readable, the
 *   certificate and CA files PEM certificates, the key a PEM private key that belongs to the
 *   certificate. A bad file fails the start (ConfigError naming the flag and the file), and a reload
 *   (SIGHUP) that finds a bad file keeps the material in use.
 * - A peer has an identity only when its certificate was verified against --tls-client-ca
 *   (`socket.authorized`): its subject CN is the node id, its OU the role. A certificate that was
 *   presented but not verified (another CA, expired) names nobody.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto'
import type { KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import { ConfigError } from '../../core/errors.ts'

/** The TLS flags of a node, as options read them. */
export interface TlsOptions {
  /** This node's certificate (PEM, leaf first, maybe with intermediates): served, and presented as a client. */
  tlsCert?: string
  /** Its private key (PEM). */
  tlsKey?: string
  /** CA certificates that verify the servers this node calls; default: the system's. */
  tlsCa?: string
  /** Fog and cloud: CA certificates that verify the clients that send partials. */
  tlsClientCa?: string
  /** Serve plain HTTP (and MQTT) on a non-loopback address anyway. */
  insecure?: boolean
}

/** The files' contents, checked. */
export interface TlsMaterial {
  /** cert and key come together or not at all. */
  cert?: Buffer
  key?: Buffer
  ca?: Buffer
  clientCa?: Buffer
}

/** What a server needs: its own certificate, and the CA its clients' certificates must chain to. */
export interface ServerTls {
  cert: Buffer
  key: Buffer
  clientCa?: Buffer
}

/** What a client needs: the CA that verifies servers, and its own certificate to present. */
export interface ClientTls {
  ca?: Buffer
  cert?: Buffer
  key?: Buffer
}

function read (flag: string, path: string): Buffer {
  try {
    return readFileSync(path)
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    throw new ConfigError(`${flag} ${path}: cannot read the file (${e.code ?? e.message})`, { cause: err })
  }
}

/** The certificates of a PEM file (at least one), each parsed. */
function certificates (flag: string, path: string, pem: Buffer): X509Certificate[] {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []
  if (blocks.length === 0) throw new ConfigError(`${flag} ${path}: no PEM certificate in the file`)
  return blocks.map(b => {
    try {
      return new X509Certificate(b)
    } catch (err) {
      throw new ConfigError(`${flag} ${path}: not a valid certificate (${(err as Error).message})`, { cause: err })
    }
  })
}

function privateKey (flag: string, path: string, pem: Buffer): KeyObject {
  try {
    return createPrivateKey(pem)
  } catch (err) {
    throw new ConfigError(`${flag} ${path}: not a valid unencrypted PEM private key (${(err as Error).message})`, { cause: err })
  }
}

/** Reads and checks the TLS files the options name (see the top); none named: no material. */
export function loadTls (o: TlsOptions): TlsMaterial {
  if ((o.tlsCert === undefined) !== (o.tlsKey === undefined)) {
    throw new ConfigError(o.tlsCert === undefined ? '--tls-key needs --tls-cert too' : '--tls-cert needs --tls-key too')
  }
  const m: TlsMaterial = {}
  if (o.tlsCert !== undefined && o.tlsKey !== undefined) {
    const cert = read('--tls-cert', o.tlsCert)
    const key = read('--tls-key', o.tlsKey)
    const leaf = certificates('--tls-cert', o.tlsCert, cert)[0]
    const k = privateKey('--tls-key', o.tlsKey, key)
    if (!leaf.checkPrivateKey(k)) throw new ConfigError(`--tls-key ${o.tlsKey} does not belong to the certificate in --tls-cert ${o.tlsCert}`)
    m.cert = cert
    m.key = key
  }
  if (o.tlsCa !== undefined) {
    m.ca = read('--tls-ca', o.tlsCa)
    certificates('--tls-ca', o.tlsCa, m.ca)
  }
  if (o.tlsClientCa !== undefined) {
    m.clientCa = read('--tls-client-ca', o.tlsClientCa)
    certificates('--tls-client-ca', o.tlsClientCa, m.clientCa)
  }
  if (m.clientCa !== undefined && m.cert === undefined) throw new ConfigError('--tls-client-ca needs --tls-cert and --tls-key: client certificates are asked for over TLS only')
  return m
}

export function serverTls (m: TlsMaterial): ServerTls | undefined {
  return m.cert === undefined || m.key === undefined ? undefined : { cert: m.cert, key: m.key, clientCa: m.clientCa }
}

export function clientTls (m: TlsMaterial): ClientTls {
  return { ca: m.ca, cert: m.cert, key: m.key }
}

/** Whether `host` (a listen address) is reachable from this machine only. */
export function isLoopback (host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase()
  if (h === 'localhost' || h === '::1') return true
  return isIP(h) === 4 && h.startsWith('127.')
}

/**
 * Refuses plain HTTP/MQTT beyond loopback unless the operator said --insecure: a partial or a query
 * that crosses a network in the clear can be read, and forged. `listens` names each address the node
 * listens on by its flag.
 */
export function requireTlsBeyondLoopback (o: TlsOptions, listens: Array<{ flag: string, host: string }>): void {
  if (o.tlsCert !== undefined || o.insecure === true) return
  const exposed = listens.find(l => !isLoopback(l.host))
  if (exposed === undefined) return
  throw new ConfigError(`${exposed.flag} ${exposed.host} is not a loopback address, and without TLS anyone on the network could read ` +
    'and forge what this node serves and takes. Give it a certificate with --tls-cert FILE --tls-key FILE ' +
    '(make a site CA once with `fogmesh cert ca DIR`, then one certificate per node with ' +
    '`fogmesh cert issue --ca DIR --role edge|fog|cloud --id ID --host NAME --out DIR`), or start it with --insecure to serve plain HTTP/MQTT anyway')
}

/** Who is at the other end of a connection. */
export type Peer =
  /** A plain (non-TLS) connection. */
  | { kind: 'plain' }
  /** TLS without a client certificate. */
  | { kind: 'anonymous' }
  /** A certificate that did not verify against --tls-client-ca (another CA, expired, …). */
  | { kind: 'unverified', why: string }
  /** A verified certificate: its subject CN and OU. */
  | { kind: 'verified', id: string, role: string }

function field (v: string | string[] | undefined): string {
  return Array.isArray(v) ? (v.length === 1 ? v[0] : '') : (v ?? '')
}

/** The peer of a request's socket (see the top for when it has an identity). */
export function peerOf (socket: Socket): Peer {
  const tls = socket as Partial<TLSSocket>
  if (tls.encrypted !== true || typeof tls.getPeerCertificate !== 'function') return { kind: 'plain' }
  const cert = tls.getPeerCertificate()
  if (cert === null || cert === undefined || Object.keys(cert).length === 0) return { kind: 'anonymous' }
  if (tls.authorized !== true) return { kind: 'unverified', why: String(tls.authorizationError ?? 'not verified') }
  return { kind: 'verified', id: field(cert.subject?.CN), role: field(cert.subject?.OU) }
}

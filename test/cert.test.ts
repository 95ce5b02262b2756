/**
 * `fogmesh cert ca` and `fogmesh cert issue` end to end: the files and their modes, the certificates
 * checked with node:crypto and @peculiar/x509 (and openssl when it is installed), refusals with their
 * exit status, and real TLS handshakes on 127.0.0.1 with the issued certificates (mutual TLS against
 * the site CA succeeds; another CA's certificate and an expired one are refused, either side).
 */
import 'reflect-metadata'
import * as x509 from '@peculiar/x509'
import { spawnSync } from 'node:child_process'
import { createPrivateKey, X509Certificate } from 'node:crypto'
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { connect, createSecureContext, createServer } from 'node:tls'
import t from 'tap'
import type { Test } from 'tap'
import { ConfigError } from '../core/errors.ts'
import {
  CertError, createCa, issueLeafCert, issueNodeCert, keyMatchesCert, readCertIdentity
} from '../server/shell/certs.ts'
import { makeSite } from './helpers/certs.ts'
import type { NodeFiles } from './helpers/certs.ts'
import { fogmeshBin, repoRoot, tmpDir } from './helpers/process.ts'

const DAY_MS = 24 * 60 * 60 * 1000

async function scratch (t: Test): Promise<string> {
  const dir = await tmpDir()
  t.teardown(dir.cleanup)
  return dir.path
}

const cert = (...args: string[]) => spawnSync(process.execPath, [fogmeshBin, 'cert', ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 30_000 })
const mode = (file: string): number => statSync(file).mode & 0o777
const read = (file: string): string => readFileSync(file, 'utf8')

function hasOpenssl (): boolean {
  return spawnSync('openssl', ['version'], { encoding: 'utf8' }).status === 0
}

/** Days between notBefore and notAfter, rounded. */
function days (c: X509Certificate): number {
  return Math.round((c.validToDate.getTime() - c.validFromDate.getTime()) / DAY_MS)
}

t.test('fogmesh cert ca writes a site CA, key mode 0600, and refuses to replace it without --force', async t => {
  const dir = join(await scratch(t), 'ca')
  const first = cert('ca', dir)
  t.equal(first.status, 0, first.stderr)
  t.match(first.stdout, /ca\.crt: site CA, valid until \d{4}-\d\d-\d\d/)
  const certFile = join(dir, 'ca.crt')
  const keyFile = join(dir, 'ca.key')
  t.equal(mode(keyFile), 0o600, 'ca.key is mode 0600')
  t.equal(mode(dir), 0o700, 'a new CA dir is mode 0700')
  t.match(read(certFile), /^-----BEGIN CERTIFICATE-----\n[\s\S]+\n-----END CERTIFICATE-----\n$/)
  t.match(read(keyFile), /^-----BEGIN PRIVATE KEY-----\n[\s\S]+\n-----END PRIVATE KEY-----\n$/)
  t.same(readdir(dir), ['ca.crt', 'ca.key'], 'nothing else is left in the dir (no temp files)')

  const ca = new X509Certificate(read(certFile))
  t.equal(ca.subject, 'CN=fogmesh site CA')
  t.equal(ca.issuer, ca.subject, 'self-signed')
  t.ok(ca.ca, 'basicConstraints CA:true')
  t.ok(ca.checkIssued(ca) && ca.verify(ca.publicKey), 'signed by its own key')
  t.ok(ca.checkPrivateKey(createPrivateKey(read(keyFile))), 'ca.key is the key of ca.crt')
  t.equal(days(ca), 3650, 'valid for 10 years (from an hour ago)')
  t.equal(ca.publicKey.asymmetricKeyType, 'ec')
  t.equal(ca.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1')

  const parsed = new x509.X509Certificate(read(certFile))
  const bc = parsed.getExtension(x509.BasicConstraintsExtension)
  t.ok(bc?.ca === true && bc.critical, 'basicConstraints CA:true, critical')
  const ku = parsed.getExtension(x509.KeyUsagesExtension)
  t.equal(ku?.usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, 'keyUsage keyCertSign + cRLSign')
  t.ok(ku?.critical, 'keyUsage critical')
  t.ok(parsed.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId, 'subject key identifier')

  const before = { cert: read(certFile), key: read(keyFile) }
  const again = cert('ca', dir)
  t.equal(again.status, 1)
  t.match(again.stderr, /ca\.key exists; not replacing a site CA.*--force/)
  t.same({ cert: read(certFile), key: read(keyFile) }, before, 'the CA is untouched')

  const forced = cert('ca', dir, '--force', '--days', '30', '--name', 'plant 7 CA')
  t.equal(forced.status, 0, forced.stderr)
  t.not(read(keyFile), before.key, '--force replaces the key')
  const replaced = new X509Certificate(read(certFile))
  t.equal(replaced.subject, 'CN=plant 7 CA')
  t.equal(days(replaced), 30)
  t.equal(mode(keyFile), 0o600, 'the replaced key is mode 0600 too')
})

function readdir (dir: string): string[] {
  return readdirSync(dir).sort()
}

t.test('fogmesh cert issue writes a node certificate for server and client use, signed by the CA', async t => {
  const root = await scratch(t)
  const caDir = join(root, 'ca')
  t.equal(cert('ca', caDir).status, 0)
  const out = join(root, 'fog-1')
  const issued = cert('issue', '--ca', caDir, '--role', 'fog', '--id', 'fog-1', '--host', 'fog.plant.lan', '--host', '192.168.1.10',
    '--host', '::1', '--host', 'localhost', '--out', out)
  t.equal(issued.status, 0, issued.stderr)
  t.match(issued.stdout, /node\.crt: fog fog-1 \(hosts fog\.plant\.lan, 192\.168\.1\.10, ::1, localhost\), valid until/)
  t.match(issued.stdout, /--tls-cert \S+node\.crt --tls-key \S+node\.key --tls-ca \S+ca\.crt/)
  t.same(readdir(out), ['ca.crt', 'node.crt', 'node.key'])
  t.equal(mode(join(out, 'node.key')), 0o600, 'node.key is mode 0600')
  t.equal(read(join(out, 'ca.crt')), read(join(caDir, 'ca.crt')), 'ca.crt is a copy of the CA certificate')

  const ca = new X509Certificate(read(join(caDir, 'ca.crt')))
  const node = new X509Certificate(read(join(out, 'node.crt')))
  t.ok(node.checkIssued(ca), 'issued by the CA')
  t.ok(node.verify(ca.publicKey), 'signed with the CA key')
  t.notOk(node.ca, 'not a CA')
  t.equal(node.subject, 'CN=fog-1\nOU=fog', 'CN = node id, OU = role')
  t.equal(node.issuer, ca.subject)
  t.equal(node.subjectAltName, 'DNS:fog.plant.lan, IP Address:192.168.1.10, IP Address:0:0:0:0:0:0:0:1, DNS:localhost',
    'DNS names and IP addresses told apart')
  t.equal(days(node), 365, 'valid for a year (from an hour ago)')
  t.ok(node.validFromDate.getTime() < Date.now() - 30 * 60_000, 'backdated for clocks running behind')
  t.ok(node.checkPrivateKey(createPrivateKey(read(join(out, 'node.key')))), 'node.key is the key of node.crt')
  t.ok(node.checkHost('fog.plant.lan') !== undefined && node.checkIP('192.168.1.10') !== undefined && node.checkIP('::1') !== undefined)
  t.equal(node.checkHost('other.lan'), undefined)
  t.same(node.keyUsage.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'], 'extendedKeyUsage serverAuth and clientAuth')

  const parsed = new x509.X509Certificate(read(join(out, 'node.crt')))
  const eku = parsed.getExtension(x509.ExtendedKeyUsageExtension)
  t.same(eku?.usages, [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth])
  const ku = parsed.getExtension(x509.KeyUsagesExtension)
  t.equal(ku?.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, 'keyUsage digitalSignature + keyAgreement')
  const bc = parsed.getExtension(x509.BasicConstraintsExtension)
  t.ok(bc?.ca === false && bc.critical, 'basicConstraints CA:false, critical')
  const caSki = new x509.X509Certificate(read(join(caDir, 'ca.crt'))).getExtension(x509.SubjectKeyIdentifierExtension)?.keyId
  t.equal(parsed.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId, caSki, 'authority key identifier = the CA\'s subject key identifier')
  t.match(parsed.serialNumber, /^[0-9a-f]{32}$/i, '128-bit serial')

  t.same(readCertIdentity(read(join(out, 'node.crt'))), { id: 'fog-1', role: 'fog', notAfter: node.validToDate })

  if (hasOpenssl()) {
    const text = spawnSync('openssl', ['x509', '-in', join(out, 'node.crt'), '-noout', '-text'], { encoding: 'utf8' }).stdout
    t.match(text, /Extended Key Usage:\s*\n\s*TLS Web Server Authentication, TLS Web Client Authentication/)
    t.match(text, /Basic Constraints: critical\s*\n\s*CA:FALSE/)
    for (const purpose of ['sslserver', 'sslclient']) {
      const verify = spawnSync('openssl', ['verify', '-CAfile', join(caDir, 'ca.crt'), '-purpose', purpose, join(out, 'node.crt')], { encoding: 'utf8' })
      t.equal(verify.status, 0, `openssl verify -purpose ${purpose}: ${verify.stdout}${verify.stderr}`)
    }
  } else {
    t.comment('openssl not installed: extensions checked with @peculiar/x509 only')
  }

  // Rotation: issuing into the same dir replaces the pair with a new key and serial.
  const before = { cert: read(join(out, 'node.crt')), key: read(join(out, 'node.key')) }
  const rotated = cert('issue', '--ca', caDir, '--role', 'fog', '--id', 'fog-1', '--out', out, '--days', '90')
  t.equal(rotated.status, 0, rotated.stderr)
  const after = new X509Certificate(read(join(out, 'node.crt')))
  t.not(read(join(out, 'node.key')), before.key, 'a new key')
  t.not(after.serialNumber, node.serialNumber, 'a new serial')
  t.equal(days(after), 90)
  t.equal(after.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1', 'default hosts: localhost and 127.0.0.1')
  t.ok(keyMatchesCert(read(join(out, 'node.crt')), read(join(out, 'node.key'))))
  t.same(readdir(out), ['ca.crt', 'node.crt', 'node.key'], 'no temp files left')
})

t.test('fogmesh cert: bad flags exit 2, an unusable CA exits 1, and nothing is written', async t => {
  const root = await scratch(t)
  const caDir = join(root, 'ca')
  t.equal(cert('ca', caDir).status, 0)
  const out = join(root, 'out')
  const base = ['--ca', caDir, '--out', out]
  const cases: Array<[string, string[], number, RegExp]> = [
    ['unknown role', ['issue', ...base, '--role', 'sensor', '--id', 'gw-1'], 2, /--role: expected one of edge, fog, cloud, got "sensor"/],
    ['id with a space', ['issue', ...base, '--role', 'edge', '--id', 'gw 1'], 2, /--id: "gw 1" is not a node id/],
    ['id with a comma', ['issue', ...base, '--role', 'edge', '--id', 'gw,OU=fog'], 2, /--id: .* is not a node id/],
    ['id too long', ['issue', ...base, '--role', 'edge', '--id', 'g'.repeat(65)], 2, /is not a node id/],
    ['no --id', ['issue', ...base, '--role', 'edge'], 2, /--id is required/],
    ['no --ca', ['issue', '--out', out, '--role', 'edge', '--id', 'gw-1'], 2, /--ca is required/],
    ['bad host', ['issue', ...base, '--role', 'edge', '--id', 'gw-1', '--host', 'gw_1!'], 2, /--host: "gw_1!" is neither an IP address nor a DNS name/],
    ['bad days', ['issue', ...base, '--role', 'edge', '--id', 'gw-1', '--days', '1y'], 2, /--days: expected a whole number of days/],
    ['zero days', ['issue', ...base, '--role', 'edge', '--id', 'gw-1', '--days', '0'], 2, /--days: expected a whole number of days from 1/],
    ['unknown flag', ['issue', ...base, '--role', 'edge', '--id', 'gw-1', '--bogus'], 2, /Unknown option '--bogus'/],
    ['no CA there', ['issue', '--ca', join(root, 'nope'), '--out', out, '--role', 'edge', '--id', 'gw-1'], 1, /cannot read the CA: .*ENOENT.*fogmesh cert ca/],
    ['unknown sub-command', ['sign'], 2, /unknown sub-command "sign"/],
    ['no sub-command', [], 2, /usage: fogmesh cert ca DIR/],
    ['ca without DIR', ['ca'], 2, /cert ca takes one DIR/]
  ]
  for (const [name, args, status, message] of cases) {
    const r = cert(...args)
    t.equal(r.status, status, `${name}: exit ${status}`)
    t.match(r.stderr, message, name)
    t.notOk(existsSync(out), `${name}: nothing written`)
  }
  const help = cert('--help')
  t.equal(help.status, 0)
  t.match(help.stdout, /fogmesh cert issue --ca DIR --role edge\|fog\|cloud --id ID \[--host NAME\|IP\]… --out DIR \[--days N\]/)
  const top = spawnSync(process.execPath, [fogmeshBin, '--help'], { encoding: 'utf8' })
  t.match(top.stdout, /\n {2}cert {7}/, 'listed by fogmesh --help')

  // A node certificate and its key are no CA: issuing with them is refused.
  t.equal(cert('issue', ...base, '--role', 'edge', '--id', 'gw-1').status, 0)
  const fake = join(root, 'fake-ca')
  mkdirSync(fake)
  copyFileSync(join(out, 'node.crt'), join(fake, 'ca.crt'))
  copyFileSync(join(out, 'node.key'), join(fake, 'ca.key'))
  const notCa = cert('issue', '--ca', fake, '--out', join(root, 'x'), '--role', 'edge', '--id', 'gw-2')
  t.equal(notCa.status, 1)
  t.match(notCa.stderr, /CA: CN=gw-1, OU=edge is not a CA certificate/)
  t.notOk(existsSync(join(root, 'x')))
})

t.test('createCa and issueNodeCert: typed errors, CA checks, validity', async t => {
  const ca = await createCa()
  await t.rejects(issueNodeCert(ca, { role: 'sensor' as 'edge', id: 'gw-1' }), { name: 'ConfigError', code: 'config_invalid', message: /--role/ })
  await t.rejects(issueNodeCert(ca, { role: 'edge', id: '-gw' }), { name: 'ConfigError', code: 'config_invalid', message: /--id/ })
  await t.rejects(issueNodeCert(ca, { role: 'edge', id: 'gw-1', hosts: ['a b'] }), ConfigError)
  await t.rejects(issueNodeCert(ca, { role: 'edge', id: 'gw-1', days: 0 }), { code: 'config_invalid', message: /--days/ })
  await t.rejects(issueNodeCert(ca, { role: 'edge', id: 'gw-1', notBefore: new Date(2), notAfter: new Date(1) }), { message: /not after notBefore/ })

  const node = await issueNodeCert(ca, { role: 'edge', id: 'gw-1' })
  await t.rejects(issueNodeCert(node, { role: 'edge', id: 'gw-2' }), { name: 'CertError', code: 'ca_invalid', message: /CN=gw-1.*is not a CA certificate/ })
  const other = await createCa()
  await t.rejects(issueNodeCert({ cert: ca.cert, key: other.key }, { role: 'edge', id: 'gw-2' }), { code: 'ca_invalid', message: /the key does not belong to the certificate/ })
  await t.rejects(issueNodeCert({ cert: 'nonsense', key: ca.key }, { role: 'edge', id: 'gw-2' }), { code: 'ca_invalid', message: /not a PEM X\.509 certificate/ })
  const old = await createCa({ notBefore: new Date(Date.now() - 10 * DAY_MS), notAfter: new Date(Date.now() - DAY_MS) })
  await t.rejects(issueNodeCert(old, { role: 'edge', id: 'gw-2' }), { code: 'ca_invalid', message: /expired on/ })

  const shortCa = await createCa({ days: 10 })
  const clamped = new X509Certificate((await issueNodeCert(shortCa, { role: 'cloud', id: 'cloud-1', days: 365 })).cert)
  t.equal(clamped.validToDate.getTime(), new X509Certificate(shortCa.cert).validToDate.getTime(), 'a node certificate does not outlive its CA')

  t.throws(() => readCertIdentity(ca.cert), { name: 'CertError', code: 'cert_invalid', message: /names no node|names no role/ })
  const sensor = await issueLeafCert(ca, { cn: 'gw-1', ou: 'sensor' })
  t.throws(() => readCertIdentity(sensor.cert), CertError)
  t.throws(() => readCertIdentity('garbage'), { code: 'cert_invalid' })
  t.notOk(keyMatchesCert(node.cert, other.key))
})

interface Outcome {
  /** 'ok', or the error code (or message) the side saw. */
  server: string
  client: string
}

/**
 * A TLS connection on 127.0.0.1 between a server presenting `server`'s certificate and asking for a
 * client certificate of its caCert, and a client presenting `client`'s and verifying the server
 * against its own caCert. The server says why it refuses a client (`authorizationError`, as a server
 * checking `socket.authorized` sees it); with `strict` it leaves refusing to node:tls
 * (rejectUnauthorized), which just drops the connection. The client counts as connected only once it
 * has read the server's greeting: under TLS 1.3 the server checks the client certificate after the
 * client considers the handshake done.
 */
async function handshake (server: NodeFiles, client: NodeFiles, opts: { servername?: string, strict?: boolean } = {}): Promise<Outcome> {
  let serverOutcome: (v: string) => void = () => {}
  const serverSide = new Promise<string>(resolve => { serverOutcome = resolve })
  const strict = opts.strict === true
  const srv = createServer({ cert: read(server.cert), key: read(server.key), ca: read(server.caCert), requestCert: true, rejectUnauthorized: strict }, socket => {
    if (socket.authorized) {
      serverOutcome('ok')
      socket.end('hello\n')
    } else {
      serverOutcome(String(socket.authorizationError))
      socket.destroy()
    }
  })
  srv.on('tlsClientError', err => serverOutcome((err as NodeJS.ErrnoException).code ?? err.message))
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  const { port } = srv.address() as AddressInfo
  try {
    const clientResult = await new Promise<string>(resolve => {
      const socket = connect({ host: '127.0.0.1', port, servername: opts.servername, ca: read(client.caCert), cert: read(client.cert), key: read(client.key) })
      let data = ''
      socket.setEncoding('utf8')
      socket.on('data', chunk => { data += chunk })
      socket.on('error', err => resolve((err as NodeJS.ErrnoException).code ?? err.message))
      socket.on('close', () => resolve(data === 'hello\n' ? 'ok' : 'no greeting'))
    })
    const serverResult = await Promise.race([serverSide, new Promise<string>(resolve => setTimeout(() => resolve('no connection'), 2000))])
    return { server: serverResult, client: clientResult }
  } finally {
    await new Promise(resolve => srv.close(resolve))
  }
}

t.test('mutual TLS with issued certificates: the site CA is trusted, another CA and expired certificates are not', async t => {
  const site = await makeSite(await scratch(t))
  const fog = await site.node('fog', 'fog-1')
  const edge = await site.node('edge', 'gw-1')

  t.same(await handshake(fog, edge), { server: 'ok', client: 'ok' }, 'fog serves, edge is its client: both verify (IP SAN 127.0.0.1)')
  t.same(await handshake(fog, edge, { servername: 'localhost' }), { server: 'ok', client: 'ok' }, 'by name too (DNS SAN localhost)')
  const wrongName = await handshake(fog, edge, { servername: 'fog.elsewhere' })
  t.equal(wrongName.client, 'ERR_TLS_CERT_ALTNAME_INVALID', 'a name the certificate does not carry is refused')

  const foreign = await site.foreign('edge', 'gw-1')
  t.same(await handshake(fog, foreign), { server: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', client: 'no greeting' },
    'a client certificate of another CA is refused by the server')
  const strict = await handshake(fog, foreign, { strict: true })
  t.equal(strict.client, 'no greeting', `… and dropped by node:tls with rejectUnauthorized (server: ${strict.server})`)
  t.not(strict.server, 'ok')
  const foreignFog = await site.foreign('fog', 'fog-1')
  const byClient = await handshake(foreignFog, edge)
  t.equal(byClient.client, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'a server certificate of another CA is refused by the client')
  t.not(byClient.server, 'ok', `… which hangs up (server: ${byClient.server})`)

  const expired = await site.expired('edge', 'gw-1')
  t.same(await handshake(fog, expired), { server: 'CERT_HAS_EXPIRED', client: 'no greeting' }, 'an expired client certificate is refused by the server')
  t.equal((await handshake(fog, expired, { strict: true })).client, 'no greeting', '… and dropped with rejectUnauthorized')
  const expiredFog = await site.expired('fog', 'fog-1')
  const expiredServer = await handshake(expiredFog, edge)
  t.equal(expiredServer.client, 'CERT_HAS_EXPIRED', 'an expired server certificate is refused by the client')
  t.not(expiredServer.server, 'ok')

  const sensor = await site.wrongRole('gw-1')
  t.same(await handshake(fog, sensor), { server: 'ok', client: 'ok' }, 'a certificate of the site with no fogmesh role still connects: authorizing writes is up to the server')
  t.throws(() => readCertIdentity(read(sensor.cert)), { code: 'cert_invalid' }, '… where it names no node')
})

t.test('test/helpers/certs: made once, the odd certificates are what they say', async t => {
  const site = await makeSite(await scratch(t))
  const a = await site.node('edge', 'gw-1')
  t.equal(await site.node('edge', 'gw-1'), a, 'same arguments, same files')
  t.same(readCertIdentity(read(a.cert)), { id: 'gw-1', role: 'edge', notAfter: new X509Certificate(read(a.cert)).validToDate })
  t.equal(read(a.caCert), read(site.caCert))
  t.equal(mode(a.key), 0o600)
  const ca = new X509Certificate(read(site.caCert))

  const v6 = await site.node('edge', 'gw-1', { hosts: ['::1'] })
  t.not(v6.dir, a.dir)
  t.equal(new X509Certificate(read(v6.cert)).subjectAltName, 'IP Address:0:0:0:0:0:0:0:1')

  const expired = new X509Certificate(read((await site.expired('edge', 'gw-1')).cert))
  t.ok(expired.validToDate.getTime() < Date.now() && expired.checkIssued(ca) && expired.verify(ca.publicKey))

  const foreign = await site.foreign('edge', 'gw-1')
  const f = new X509Certificate(read(foreign.cert))
  t.equal(f.subject, 'CN=gw-1\nOU=edge')
  t.notOk(f.verify(ca.publicKey), 'not signed by this site')
  t.equal(read(foreign.caCert), read(site.caCert), 'caCert is this site\'s CA')

  const sensor = await site.wrongRole('gw-1')
  const s = new X509Certificate(read(sensor.cert))
  t.equal(s.subject, 'CN=gw-1\nOU=sensor')
  t.ok(s.verify(ca.publicKey))
  t.throws(() => readCertIdentity(read(sensor.cert)), { code: 'cert_invalid', message: /names no role/ })
  t.equal(new X509Certificate(read((await site.wrongRole('gw-1', null)).cert)).subject, 'CN=gw-1')

  const mismatched = await site.mismatchedKey('edge', 'gw-1')
  t.ok(new X509Certificate(read(mismatched.cert)).verify(ca.publicKey))
  t.notOk(keyMatchesCert(read(mismatched.cert), read(mismatched.key)))
  t.throws(() => createSecureContext({ cert: read(mismatched.cert), key: read(mismatched.key) }), /key values mismatch/)

  // The CA files work with the CLI.
  const out = join(site.dir, 'cli-node')
  const r = cert('issue', '--ca', site.caDir, '--role', 'cloud', '--id', 'cloud-1', '--out', out)
  t.equal(r.status, 0, r.stderr)
  t.ok(new X509Certificate(read(join(out, 'node.crt'))).checkIssued(ca))
})

/**
 * A node's security material as one part, built from its options at start and handed to the parts
 * that need it: the TLS its HTTP server (and the edge's broker) serves, the client (PeerClient) every
 * call to another node goes through, and the API token.
 *
 * Invariants: built only from checked files (a bad one fails the start, naming it); a node exposed
 * beyond loopback has TLS or --insecure (server/shell/tls.ts); `reload` re-reads the certificate and
 * token files and either swaps all of the material or none of it.
 */
import { BearerToken, readTokenFile, strongToken } from './bearer.ts'
import { PeerClient } from './peer-client.ts'
import { clientTls, loadTls, requireTlsBeyondLoopback, serverTls } from './tls.ts'
import type { ClientTls, ServerTls, TlsMaterial, TlsOptions } from './tls.ts'

export interface SecurityOptions extends TlsOptions {
  apiTokenFile?: string
}

export class NodeSecurity {
  /** Every call this node makes to another node's HTTP API. */
  readonly client: PeerClient
  readonly apiToken: BearerToken | undefined
  readonly #options: SecurityOptions
  #material: TlsMaterial

  /** `listens`: the addresses the node listens on, by flag (for requireTlsBeyondLoopback). */
  constructor (options: SecurityOptions, listens: Array<{ flag: string, host: string }> = []) {
    requireTlsBeyondLoopback(options, listens)
    this.#options = options
    this.#material = loadTls(options)
    this.client = new PeerClient(clientTls(this.#material))
    const token = this.#readApiToken()
    this.apiToken = token === undefined ? undefined : new BearerToken(token)
  }

  #readApiToken (): string | undefined {
    const file = this.#options.apiTokenFile
    return file === undefined ? undefined : strongToken('--api-token-file', readTokenFile('--api-token-file', file))
  }

  /** The server's certificate; undefined: plain HTTP. */
  get server (): ServerTls | undefined {
    return serverTls(this.#material)
  }

  /** What a client of other servers (an mqtts:// broker) needs. */
  get clientTls (): ClientTls {
    return clientTls(this.#material)
  }

  /** Whether partials need a client certificate (--tls-client-ca). */
  get clientCertificates (): boolean {
    return this.#material.clientCa !== undefined
  }

  /** The files the material came from, for log lines. */
  get files (): string[] {
    return [this.#options.tlsCert, this.#options.tlsKey, this.#options.tlsCa, this.#options.tlsClientCa, this.#options.apiTokenFile].filter((f): f is string => f !== undefined)
  }

  /**
   * Reads the files again (a certificate or the API token rotated on disk); the client uses the new
   * material at once. Throws a ConfigError naming the bad file, and then keeps what it had.
   */
  reload (): ServerTls | undefined {
    const next = loadTls(this.#options)
    const token = this.#readApiToken()
    if (token !== undefined) this.apiToken?.replace(token)
    this.#material = next
    this.client.reload(clientTls(next))
    return serverTls(next)
  }

  close (): void {
    this.client.close()
  }
}

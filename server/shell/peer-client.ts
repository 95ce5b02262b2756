/**
 * How a node calls other nodes' HTTP APIs (partials to fogs and the cloud, shard maps, deployed sets):
 * over https with the site's trust and this node's own certificate, or plain http, as the URL says.
 *
 * - https servers are verified against --tls-ca (the system's CAs without it), by certificate chain
 *   and host name; a node never turns verification off.
 * - With --tls-cert/--tls-key the node presents that certificate as its client certificate, which is
 *   how fogs and the cloud know who sends a batch (server/merge/partials-auth.ts).
 * - Connections are kept alive and reused; `reload` (new certificates, on SIGHUP) makes new ones use
 *   the new material while requests under way finish on theirs.
 * - Failures look like fetch's: a timeout is an error named TimeoutError, anything else an Error whose
 *   `cause` carries the system or TLS error `code` (ECONNREFUSED, CERT_HAS_EXPIRED, …).
 */
import { Agent as HttpAgent, request as httpRequest } from 'node:http'
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import type { ClientTls } from './tls.ts'

export interface PeerRequest {
  method?: string
  headers?: Record<string, string>
  body?: Uint8Array
  signal?: AbortSignal
  /** Most bytes of the answer's body read; more fail the request. Default 16 MiB. */
  maxBody?: number
}

export interface PeerResponse {
  status: number
  headers: IncomingHttpHeaders
  text: string
}

const MAX_BODY = 16 * 1024 * 1024

function httpsAgent (tls: ClientTls): HttpsAgent {
  return new HttpsAgent({ keepAlive: true, ca: tls.ca, cert: tls.cert, key: tls.key })
}

export class PeerClient {
  readonly #http = new HttpAgent({ keepAlive: true })
  #https: HttpsAgent
  /** Agents replaced by reload, closed at close() (their sockets may still serve a request). */
  readonly #retired: HttpsAgent[] = []

  constructor (tls: ClientTls = {}) {
    this.#https = httpsAgent(tls)
  }

  /** New connections use `tls` from now on. */
  reload (tls: ClientTls): void {
    this.#retired.push(this.#https)
    this.#https = httpsAgent(tls)
    // Idle connections made with the old material go at once; busy ones when their request ends.
    for (const a of this.#retired) for (const sockets of Object.values(a.freeSockets)) for (const s of sockets ?? []) s.destroy()
  }

  close (): void {
    this.#http.destroy()
    this.#https.destroy()
    for (const a of this.#retired) a.destroy()
  }

  async request (url: string | URL, init: PeerRequest = {}): Promise<PeerResponse> {
    const u = typeof url === 'string' ? new URL(url) : url
    const signal = init.signal
    signal?.throwIfAborted()
    const secure = u.protocol === 'https:'
    if (!secure && u.protocol !== 'http:') throw new Error(`not an http(s) URL: ${u.protocol}`)
    const headers: Record<string, string> = { ...init.headers }
    if (init.body !== undefined) headers['content-length'] = String(init.body.byteLength)
    const max = init.maxBody ?? MAX_BODY
    return await new Promise<PeerResponse>((resolve, reject) => {
      let settled = false
      const fail = (err: unknown): void => {
        if (settled) return
        settled = true
        signal?.removeEventListener('abort', onAbort)
        reject(err)
      }
      const options = { method: init.method ?? 'GET', headers, agent: secure ? this.#https : this.#http }
      const req = secure ? httpsRequest(u, options) : httpRequest(u, options)
      const onAbort = (): void => {
        fail(signal?.reason)
        req.destroy()
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      req.on('error', err => fail(new Error(err.message, { cause: err })))
      req.on('response', (res: IncomingMessage) => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (chunk: Buffer) => {
          size += chunk.length
          if (size > max) {
            fail(new Error(`answer over ${max} bytes`, { cause: { code: 'ANSWER_TOO_LARGE' } }))
            req.destroy()
            return
          }
          chunks.push(chunk)
        })
        res.on('error', err => fail(new Error(err.message, { cause: err })))
        res.on('end', () => {
          if (settled) return
          settled = true
          signal?.removeEventListener('abort', onAbort)
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') })
        })
      })
      req.end(init.body)
    })
  }
}

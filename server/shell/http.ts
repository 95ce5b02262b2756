/**
 * The HTTP API every tier serves (SPEC: /healthz, /v1/pipelines, /v1/aggregates, /v1/mesh, /metrics),
 * plus routes a tier adds. JSON in and out; every error is `{"error":{"code","message"}}`.
 *
 * A client cannot hold the server's resources indefinitely: its headers must arrive within
 * headersTimeout and its whole request within requestTimeout (Node answers 408 and closes), an idle
 * keep-alive connection closes after keepAliveTimeout, and connections beyond maxConnections are closed
 * as they are accepted. Bodies are read only on demand and up to maxBody. Each drop is counted.
 *
 * With `tls` the API is served over HTTPS only (a plain request to the port fails its TLS handshake
 * and is dropped, counted as tls_handshake); with a client CA it asks every client for a certificate
 * but lets the handshake succeed without one (rejectUnauthorized: false), so that a route can answer a
 * client without a valid one with a 401 of its own: each request carries its peer (server/shell/tls.ts).
 * With `apiToken` every GET under /v1/ and /metrics needs the bearer token, or a client certificate
 * verified against the client CA (nodes of the site fetch shard maps and deployed sets that way);
 * /healthz stays open for load balancers and supervisors. Every refusal is an AccessDenied, counted in
 * fogmesh_auth_denied_total by reason.
 */
import { createServer } from 'node:http'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { Server as HttpsServer } from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { ConfigError, FogmeshError, HttpError } from '../../core/errors.ts'
import type { BearerToken } from './bearer.ts'
import { consoleRoutes } from './console.ts'
import { DENY_REASONS } from '../merge/partials-auth.ts'
import type { Denial, DenyReason } from '../merge/partials-auth.ts'
import { peerOf } from './tls.ts'
import type { Peer, ServerTls } from './tls.ts'
import type { Logger } from './log.ts'
import type { Metrics } from './metrics.ts'
import { parseResultQuery } from './query.ts'
import type { ResultQuery, WindowResult } from './results.ts'
import { resultJson } from './results.ts'

/** How long close waits for requests under way before closing their connections, ms. */
const CLOSE_GRACE = 2_000

export type Role = 'edge' | 'fog' | 'cloud'

export interface PipelineInfo {
  name: string
  version: number
  /** The pipeline in the shape of the YAML language. */
  spec: Record<string, unknown>
}

/** What a tier provides to the shared API. */
export interface ServiceApi {
  readonly role: Role
  readonly id: string
  readonly metrics: Metrics
  isReady: () => boolean
  /** May answer later: a tier whose state lives in a database reads it there (cloud-sink/pg-cloud.ts). */
  pipelines: () => PipelineInfo[] | Promise<PipelineInfo[]>
  /** Results sorted by start then key, at most `q.limit`; undefined for an unknown pipeline. */
  results: (pipeline: string, q: ResultQuery) => WindowResult[] | undefined | Promise<WindowResult[] | undefined>
  mesh: () => unknown
}

export interface Request {
  method: string
  path: string
  params: Record<string, string>
  query: URLSearchParams
  headers: IncomingMessage['headers']
  /** Who sent it, as far as TLS tells (undefined from in-process callers: as a plain connection). */
  peer?: Peer
  /** The body, read on demand and bounded by `maxBody`. */
  body: () => Promise<Buffer>
}

export interface Reply {
  status?: number
  body?: unknown
  /** Sent as is, with this content type, instead of JSON. */
  raw?: { contentType: string, data: string | Buffer }
  headers?: Record<string, string>
}

export interface Route {
  method: string
  /** Path with `{name}` segments, e.g. `/v1/pipelines/{name}`. */
  path: string
  handle: (req: Request) => Promise<Reply> | Reply
}

export interface HttpOptions {
  host: string
  port: number
  /** Largest request body accepted, bytes. */
  maxBody: number
  /** Longest wait for a request's headers, and for the whole request, ms; 0 = none. */
  headersTimeout?: number
  requestTimeout?: number
  /** How long an idle keep-alive connection is kept, ms. */
  keepAliveTimeout?: number
  /** Most open connections; more are closed as they are accepted. */
  maxConnections?: number
  /** Serve HTTPS only, with this certificate (and ask clients for one signed by clientCa). */
  tls?: ServerTls
  /** Bearer token every GET under /v1/ and /metrics needs (see the top). */
  apiToken?: BearerToken
  log: Logger
}

/** A request refused for who sent it: 401 or 403, counted by reason (see the top). */
export class AccessDenied extends HttpError {
  readonly reason: DenyReason

  constructor (denial: Denial) {
    super(denial.status, denial.code, denial.message)
    this.reason = denial.reason
  }
}

/**
 * The client went away while its request was read (reset, closed the socket, stopped mid-body): an
 * everyday event on a network, not a fault of the server's.
 */
export class RequestAborted extends Error {
  constructor (cause: unknown) {
    super(`the client aborted the request (${(cause as NodeJS.ErrnoException | undefined)?.code ?? (cause as Error | undefined)?.message ?? 'closed'})`, { cause })
    this.name = 'RequestAborted'
  }
}

/** Error codes of a request stream whose client went away. */
const ABORT_CODES = new Set(['ECONNRESET', 'ECONNABORTED', 'EPIPE', 'ERR_STREAM_PREMATURE_CLOSE'])

/** Whether `err`, raised while serving `req`, says that its client went away rather than that the server failed. */
function clientAborted (req: IncomingMessage, err: unknown): boolean {
  if (err instanceof RequestAborted) return true
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  return (req.destroyed || !req.complete) && typeof code === 'string' && ABORT_CODES.has(code)
}

/** Defaults of the connection bounds (the --http-* flags of every role). */
export const HTTP_LIMITS = { headersTimeout: 10_000, requestTimeout: 30_000, keepAliveTimeout: 5_000, maxConnections: 1024 }

/** The connection bounds from a role's options (--http-headers-timeout and the others). */
export function httpLimits (o: { httpHeadersTimeout?: number, httpRequestTimeout?: number, httpKeepAliveTimeout?: number, httpMaxConnections?: number }): Partial<HttpOptions> {
  return { headersTimeout: o.httpHeadersTimeout, requestTimeout: o.httpRequestTimeout, keepAliveTimeout: o.httpKeepAliveTimeout, maxConnections: o.httpMaxConnections }
}

/** Why a connection was dropped: the `reason` label of fogmesh_http_connections_dropped_total. */
type DropReason = 'headers_timeout' | 'request_timeout' | 'max_connections' | 'malformed' | 'tls_handshake'

function compile (path: string): RegExp {
  const pattern = path.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{(\w+)\}/g, '(?<$1>[^/]+)')
  return new RegExp(`^${pattern}$`)
}

function readBody (req: IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    if (req.destroyed && !req.complete) {
      reject(new RequestAborted(undefined))
      return
    }
    const declared = Number(req.headers['content-length'] ?? 0)
    if (declared > max) {
      reject(new HttpError(413, 'body_too_large', `request body of ${declared} bytes is over the limit of ${max}`))
      req.resume()
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > max) {
        reject(new HttpError(413, 'body_too_large', `request body is over the limit of ${max} bytes`))
        // Discard the rest rather than destroy the socket, so that the client reads the 413 instead of
        // a reset; the server's requestTimeout bounds a sender that never stops.
        chunks.length = 0
        req.removeAllListeners('data')
        req.resume()
        return
      }
      chunks.push(chunk)
    })
    req.on('end', () => resolve(Buffer.concat(chunks)))
    req.on('error', err => reject(new RequestAborted(err)))
    // Closed before the end, with or without an error (a settled promise ignores the later call).
    req.on('close', () => { if (!req.complete) reject(new RequestAborted(undefined)) })
  })
}

/** The routes of the shared API. */
function standardRoutes (api: ServiceApi): Route[] {
  return [
    {
      method: 'GET',
      path: '/healthz',
      handle: () => ({ status: api.isReady() ? 200 : 503, body: { status: api.isReady() ? 'ok' : 'starting', role: api.role, id: api.id } })
    },
    { method: 'GET', path: '/v1/pipelines', handle: async () => ({ body: { pipelines: await api.pipelines() } }) },
    {
      method: 'GET',
      path: '/v1/aggregates/{pipeline}',
      handle: async (req) => {
        const q = parseResultQuery(req.query)
        const results = await api.results(req.params.pipeline, q)
        if (results === undefined) throw new HttpError(404, 'unknown_pipeline', `no pipeline named "${req.params.pipeline}"`)
        return { body: { pipeline: req.params.pipeline, results: results.map(resultJson) } }
      }
    },
    { method: 'GET', path: '/v1/mesh', handle: () => ({ body: api.mesh() }) },
    {
      method: 'GET',
      path: '/metrics',
      handle: async () => ({ raw: { contentType: api.metrics.contentType, data: await api.metrics.text() } })
    },
    // The web console (server/shell/console.ts): open, like /healthz; the data it shows comes from the routes above.
    ...consoleRoutes()
  ]
}

/** Whether a request needs the API token (see the top). */
function guarded (method: string | undefined, path: string): boolean {
  return (method === 'GET' || method === 'HEAD') && (path.startsWith('/v1/') || path === '/metrics')
}

export class HttpService {
  readonly #server: Server | HttpsServer
  readonly #routes: Array<Route & { pattern: RegExp }>
  readonly #options: HttpOptions
  #url = ''
  readonly #dropped: Record<DropReason, number> = { headers_timeout: 0, request_timeout: 0, max_connections: 0, malformed: 0, tls_handshake: 0 }
  readonly #denied = Object.fromEntries(DENY_REASONS.map(r => [r, 0])) as Record<DenyReason, number>
  /** The response to each connection's current request, once its headers are in. */
  readonly #responding = new WeakMap<Socket, ServerResponse>()

  constructor (api: ServiceApi, extra: Route[], options: HttpOptions) {
    this.#options = options
    this.#routes = [...standardRoutes(api), ...extra].map(r => ({ ...r, pattern: compile(r.path) }))
    const limits = { ...HTTP_LIMITS }
    for (const k of Object.keys(HTTP_LIMITS) as Array<keyof typeof HTTP_LIMITS>) limits[k] = options[k] ?? HTTP_LIMITS[k]
    if (limits.requestTimeout > 0 && limits.headersTimeout > limits.requestTimeout) {
      throw new ConfigError(`--http-headers-timeout (${limits.headersTimeout} ms) must not be longer than --http-request-timeout (${limits.requestTimeout} ms)`)
    }
    const shortest = Math.min(...[limits.headersTimeout, limits.requestTimeout].filter(ms => ms > 0))
    const serverOptions = {
      headersTimeout: limits.headersTimeout,
      requestTimeout: limits.requestTimeout,
      keepAliveTimeout: limits.keepAliveTimeout,
      // Node checks the two timeouts on this interval (30 s by default), so a timeout of a few seconds
      // needs a shorter one to be kept.
      connectionsCheckingInterval: Number.isFinite(shortest) ? Math.max(100, Math.min(1_000, shortest / 4)) : 30_000
    }
    const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
      this.#responding.set(req.socket, res)
      res.once('close', () => { if (this.#responding.get(req.socket) === res) this.#responding.delete(req.socket) })
      void this.#handle(req, res)
    }
    const tls = options.tls
    if (tls === undefined) {
      this.#server = createServer(serverOptions, onRequest)
    } else {
      this.#server = createHttpsServer({ ...serverOptions, ...secureContext(tls), requestCert: tls.clientCa !== undefined, rejectUnauthorized: false }, onRequest)
      // A client that is not speaking TLS (plain HTTP to this port), or whose handshake fails otherwise:
      // Node closes the connection; nothing was read as a request.
      this.#server.on('tlsClientError', () => { this.#dropped.tls_handshake++ })
    }
    this.#server.maxConnections = limits.maxConnections
    this.#server.on('drop', () => { this.#dropped.max_connections++ })
    // Node's own answer to a client error (408 for a timeout, 400 or 431 for a bad request), counted.
    this.#server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      const timedOut = err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      const res = this.#responding.get(socket as Socket)
      const reason: DropReason = timedOut ? (res !== undefined ? 'request_timeout' : 'headers_timeout') : 'malformed'
      if (err.code !== 'ECONNRESET') this.#dropped[reason]++
      // An answer already under way (a 413 while the rest of the body is discarded) is not corrupted.
      if (socket.writable && res?.headersSent !== true) {
        socket.write(timedOut
          ? 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n'
          : err.code === 'HPE_HEADER_OVERFLOW'
            ? 'HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n'
            : 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n')
      }
      socket.destroy()
    })
    api.metrics.counter('fogmesh_http_connections_dropped_total', 'HTTP connections dropped for going over a bound or a malformed request, by reason', ['reason'],
      () => Object.entries(this.#dropped).map(([reason, n]) => [{ reason }, n]))
    api.metrics.counter('fogmesh_auth_denied_total', 'Requests refused for who sent them (401, 403), by reason; nothing of a refused request is stored', ['reason'],
      () => Object.entries(this.#denied).map(([reason, n]) => [{ reason }, n]))
  }

  /** Whether the API is served over HTTPS. */
  get secure (): boolean {
    return this.#options.tls !== undefined
  }

  /**
   * New certificate material (a rotation): new connections use it; open ones keep theirs. The client
   * CA cannot be added or removed this way (whether clients are asked for a certificate is fixed).
   */
  setTls (tls: ServerTls): void {
    if (!('setSecureContext' in this.#server)) throw new ConfigError('this server was started without TLS: restart it to turn TLS on')
    this.#server.setSecureContext(secureContext(tls))
  }

  get url (): string {
    return this.#url
  }

  async listen (): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(this.#options.port, this.#options.host, () => {
        this.#server.off('error', reject)
        resolve()
      })
    })
    const { port } = this.#server.address() as AddressInfo
    const host = this.#options.host === '0.0.0.0' || this.#options.host === '::' ? '127.0.0.1' : this.#options.host
    this.#url = `${this.secure ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`
    return this.#url
  }

  async close (): Promise<void> {
    this.#server.closeIdleConnections()
    const closed = new Promise<void>(resolve => this.#server.close(() => resolve()))
    // Requests under way get CLOSE_GRACE to be answered; a client that keeps its connection (a console
    // polling) must not hold the node's stop beyond it.
    const grace = setTimeout(() => { this.#server.closeAllConnections() }, CLOSE_GRACE)
    await closed
    clearTimeout(grace)
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    let reply: Reply
    try {
      reply = await this.#dispatch(req)
    } catch (err) {
      if (clientAborted(req, err)) {
        this.#options.log.debug('http.request_aborted', 'the client went away before its request was read', {
          method: req.method, path: pathOf(req), reason: (err as Error).message
        })
        res.destroy()
        return
      }
      if (err instanceof AccessDenied) this.#denied[err.reason]++
      if (!(err instanceof FogmeshError)) {
        this.#options.log.error('http.internal_error', 'internal error serving a request', { method: req.method, path: pathOf(req), err })
      }
      reply = errorReply(err)
    }
    if (res.headersSent || res.destroyed) return
    if (reply.raw !== undefined) {
      res.writeHead(reply.status ?? 200, { ...reply.headers, 'content-type': reply.raw.contentType })
      res.end(reply.raw.data)
      return
    }
    const body = JSON.stringify(reply.body ?? {})
    res.writeHead(reply.status ?? 200, { ...reply.headers, 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  }

  async #dispatch (req: IncomingMessage): Promise<Reply> {
    let url: URL
    try {
      url = new URL(req.url ?? '/', 'http://localhost')
    } catch {
      throw new HttpError(400, 'bad_request', 'malformed request URL')
    }
    const peer = peerOf(req.socket)
    const token = this.#options.apiToken
    // A verified site certificate is as good as the token: nodes call each other's GET routes with one.
    if (token !== undefined && guarded(req.method, url.pathname) && peer.kind !== 'verified') {
      const check = token.check(req.headers.authorization)
      if (!check.ok) {
        throw new AccessDenied({
          status: 401,
          code: 'unauthenticated',
          reason: check.reason,
          message: check.reason === 'bad_token' ? 'the bearer token is not valid' : `${req.method ?? 'GET'} ${url.pathname} needs the header "Authorization: Bearer <API token>"`
        })
      }
    }
    let pathMatched = false
    for (const route of this.#routes) {
      const m = route.pattern.exec(url.pathname)
      if (m == null) continue
      pathMatched = true
      if (route.method !== req.method) continue
      const params: Record<string, string> = {}
      for (const [k, v] of Object.entries(m.groups ?? {})) {
        try {
          params[k] = decodeURIComponent(v)
        } catch {
          throw new HttpError(400, 'bad_request', `malformed path segment "${v}"`)
        }
      }
      return await route.handle({
        method: req.method,
        path: url.pathname,
        params,
        query: url.searchParams,
        headers: req.headers,
        peer,
        body: async () => await readBody(req, this.#options.maxBody)
      })
    }
    if (pathMatched) throw new HttpError(405, 'method_not_allowed', `${req.method ?? ''} is not allowed on ${url.pathname}`)
    throw new HttpError(404, 'not_found', `no such endpoint: ${url.pathname}`)
  }
}

function secureContext (tls: ServerTls): { cert: Buffer, key: Buffer, ca?: Buffer } {
  return tls.clientCa === undefined ? { cert: tls.cert, key: tls.key } : { cert: tls.cert, key: tls.key, ca: tls.clientCa }
}

/** The path of a request, without its query (which may hold anything). */
function pathOf (req: IncomingMessage): string {
  const url = req.url ?? '/'
  const q = url.indexOf('?')
  return (q < 0 ? url : url.slice(0, q)).slice(0, 200)
}

function errorReply (err: unknown): Reply {
  if (err instanceof HttpError) {
    // RFC 6750: a 401 names the scheme it wants.
    const headers = err.status === 401 ? { 'www-authenticate': 'Bearer realm="fogmesh"' } : undefined
    return { status: err.status, body: { error: { ...err.details, code: err.code, message: err.message } }, headers }
  }
  if (err instanceof FogmeshError) return { status: 400, body: { error: { code: err.code, message: err.message } } }
  return { status: 500, body: { error: { code: 'internal', message: 'internal error' } } }
}

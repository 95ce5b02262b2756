/**
 * The HTTP API every tier serves (SPEC: /healthz, /v1/pipelines, /v1/aggregates, /v1/mesh, /metrics),
 * plus routes a tier adds. JSON in and out; every error is `{"error":{"code","message"}}`.
 *
 * A client cannot hold the server's resources indefinitely: its headers must arrive within
 * headersTimeout and its whole request within requestTimeout (Node answers 408 and closes), an idle
 * keep-alive connection closes after keepAliveTimeout, and connections beyond maxConnections are closed
 * as they are accepted. Bodies are read only on demand and up to maxBody. Each drop is counted.
 */
import { createServer } from 'node:http'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { ConfigError, FogmeshError, HttpError } from '../core/errors.ts'
import type { Logger } from './log.ts'
import type { Metrics } from './metrics.ts'
import { parseResultQuery } from './query.ts'
import type { ResultQuery, WindowResult } from './results.ts'
import { resultJson } from './results.ts'

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
  pipelines: () => PipelineInfo[]
  /** Results sorted by start then key, at most `q.limit`; undefined for an unknown pipeline. */
  results: (pipeline: string, q: ResultQuery) => WindowResult[] | undefined
  mesh: () => unknown
}

export interface Request {
  method: string
  path: string
  params: Record<string, string>
  query: URLSearchParams
  headers: IncomingMessage['headers']
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
  log: Logger
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
type DropReason = 'headers_timeout' | 'request_timeout' | 'max_connections' | 'malformed'

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
    { method: 'GET', path: '/v1/pipelines', handle: () => ({ body: { pipelines: api.pipelines() } }) },
    {
      method: 'GET',
      path: '/v1/aggregates/{pipeline}',
      handle: (req) => {
        const q = parseResultQuery(req.query)
        const results = api.results(req.params.pipeline, q)
        if (results === undefined) throw new HttpError(404, 'unknown_pipeline', `no pipeline named "${req.params.pipeline}"`)
        return { body: { pipeline: req.params.pipeline, results: results.map(resultJson) } }
      }
    },
    { method: 'GET', path: '/v1/mesh', handle: () => ({ body: api.mesh() }) },
    {
      method: 'GET',
      path: '/metrics',
      handle: async () => ({ raw: { contentType: api.metrics.contentType, data: await api.metrics.text() } })
    }
  ]
}

export class HttpService {
  readonly #server: Server
  readonly #routes: Array<Route & { pattern: RegExp }>
  readonly #options: HttpOptions
  #url = ''
  readonly #dropped: Record<DropReason, number> = { headers_timeout: 0, request_timeout: 0, max_connections: 0, malformed: 0 }
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
    this.#server = createServer({
      headersTimeout: limits.headersTimeout,
      requestTimeout: limits.requestTimeout,
      keepAliveTimeout: limits.keepAliveTimeout,
      // Node checks the two timeouts on this interval (30 s by default), so a timeout of a few seconds
      // needs a shorter one to be kept.
      connectionsCheckingInterval: Number.isFinite(shortest) ? Math.max(100, Math.min(1_000, shortest / 4)) : 30_000
    }, (req, res) => {
      this.#responding.set(req.socket, res)
      res.once('close', () => { if (this.#responding.get(req.socket) === res) this.#responding.delete(req.socket) })
      void this.#handle(req, res)
    })
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
    this.#url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`
    return this.#url
  }

  async close (): Promise<void> {
    this.#server.closeIdleConnections()
    await new Promise<void>(resolve => this.#server.close(() => resolve()))
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
      if (!(err instanceof FogmeshError)) {
        this.#options.log.error('http.internal_error', 'internal error serving a request', { method: req.method, path: pathOf(req), err })
      }
      reply = errorReply(err)
    }
    if (res.headersSent || res.destroyed) return
    if (reply.raw !== undefined) {
      res.writeHead(reply.status ?? 200, { 'content-type': reply.raw.contentType })
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
        body: async () => await readBody(req, this.#options.maxBody)
      })
    }
    if (pathMatched) throw new HttpError(405, 'method_not_allowed', `${req.method ?? ''} is not allowed on ${url.pathname}`)
    throw new HttpError(404, 'not_found', `no such endpoint: ${url.pathname}`)
  }
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

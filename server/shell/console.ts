/**
 * The web console every tier serves at `GET /`: a page, its scripts and styles from the package's
 * console/ folder, and uPlot (the charts) from its npm package, all from this origin. Nothing is built:
 * the files are read once, at the first request, and kept in memory with their gzip form.
 *
 * Every answer carries a strict Content-Security-Policy (`default-src 'self'`, no inline script or
 * style, no framing), `nosniff` and no referrer; the page reads the node's API from the same origin, so
 * a read token (--api-token-file) guards the data, not the page. Assets are revalidated by ETag
 * (`no-cache`): after an upgrade a browser never runs an old script against a new API.
 */
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { gzipSync } from 'node:zlib'
import type { Reply, Request, Route } from './http.ts'

/** What a browser may load on a console page: only this origin; no inline script, no frames, no forms elsewhere. */
export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'"
].join('; ')

interface Asset {
  /** Path the browser asks for. */
  path: string
  /** Where it is read from. */
  file: URL | string
  type: string
}

const dir = new URL('../../console/', import.meta.url)
const require = createRequire(import.meta.url)

/** The console's files: the page is `/` (and `/console/`), the rest under `/console/`. */
export const CONSOLE_ASSETS: readonly Asset[] = [
  { path: '/', file: new URL('index.html', dir), type: 'text/html; charset=utf-8' },
  { path: '/console/app.js', file: new URL('app.js', dir), type: 'text/javascript; charset=utf-8' },
  { path: '/console/views.js', file: new URL('views.js', dir), type: 'text/javascript; charset=utf-8' },
  { path: '/console/data.js', file: new URL('data.js', dir), type: 'text/javascript; charset=utf-8' },
  { path: '/console/style.css', file: new URL('style.css', dir), type: 'text/css; charset=utf-8' },
  { path: '/console/favicon.svg', file: new URL('favicon.svg', dir), type: 'image/svg+xml' },
  { path: '/console/uplot.min.js', file: 'uplot/dist/uPlot.iife.min.js', type: 'text/javascript; charset=utf-8' },
  { path: '/console/uplot.min.css', file: 'uplot/dist/uPlot.min.css', type: 'text/css; charset=utf-8' }
]

interface Loaded {
  type: string
  plain: Buffer
  gzip: Buffer
  etag: string
}

let loaded: Map<string, Loaded> | undefined

function load (): Map<string, Loaded> {
  if (loaded !== undefined) return loaded
  const out = new Map<string, Loaded>()
  for (const a of CONSOLE_ASSETS) {
    const plain = readFileSync(typeof a.file === 'string' ? require.resolve(a.file) : a.file)
    const etag = `"${createHash('sha256').update(plain).digest('base64url').slice(0, 22)}"`
    out.set(a.path, { type: a.type, plain, gzip: gzipSync(plain, { level: 9 }), etag })
  }
  loaded = out
  return out
}

/** Total size of the console's files: plain and gzip-compressed (what a browser fetches), bytes. */
export function consoleSize (): { plain: number, gzip: number } {
  let plain = 0
  let gzip = 0
  for (const a of load().values()) {
    plain += a.plain.byteLength
    gzip += a.gzip.byteLength
  }
  return { plain, gzip }
}

function serve (path: string, req: Request): Reply {
  const a = load().get(path)!
  const headers: Record<string, string> = {
    'cache-control': 'no-cache',
    etag: a.etag,
    vary: 'accept-encoding',
    'content-security-policy': CONSOLE_CSP,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'x-frame-options': 'DENY',
    'cross-origin-resource-policy': 'same-origin'
  }
  const match = req.headers['if-none-match']
  if (match !== undefined && match.split(',').some(t => t.trim() === a.etag)) {
    return { status: 304, headers, raw: { contentType: a.type, data: '' } }
  }
  const gzip = /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''))
  if (gzip) headers['content-encoding'] = 'gzip'
  return { headers, raw: { contentType: a.type, data: gzip ? a.gzip : a.plain } }
}

/** `GET /`, `GET /console/` and the console's files. */
export function consoleRoutes (): Route[] {
  const paths: Array<[string, string]> = [...CONSOLE_ASSETS.map((a): [string, string] => [a.path, a.path]), ['/console/', '/']]
  // HEAD as GET: Node leaves out the body.
  return paths.flatMap(([path, asset]) => ['GET', 'HEAD'].map(method => ({ method, path, handle: (req: Request) => serve(asset, req) })))
}

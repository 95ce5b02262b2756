/**
 * A recording HTTP proxy for the upstream bench, put between two tiers (edge → fog, fog → cloud): it
 * passes every request on unchanged and records what crossed, so the bench counts the bytes a tier
 * really sends (bodies as sent, compressed or not) and sees when a window first arrived upstream.
 * Batches are decoded with the receivers' own decoder to tell windows from watermark-only batches.
 */
import { createServer } from 'node:http'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { decodeBatch } from '../core/upstream/batch.ts'

export interface Crossing {
  /** performance.now() when the whole request body had arrived. */
  at: number
  sender: string
  /** Body bytes as sent (after any compression). */
  bytes: number
  /** Request line and header bytes, roughly as on the wire. */
  headerBytes: number
  /** Windows in the batch: 0 for a watermark-only batch (or a body that is not a batch). */
  windows: number
  /** Distinct window starts in the batch. */
  starts: number[]
  status: number
}

export interface RecordingProxy {
  url: string
  /** Where requests go (set once the upstream tier has told its URL); until then they get 503. */
  setTarget: (url: string) => void
  crossings: Crossing[]
  close: () => Promise<void>
}

const HOP_HEADERS = new Set(['host', 'connection', 'keep-alive', 'content-length', 'transfer-encoding'])

async function body (req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of req) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

function headerSize (req: IncomingMessage): number {
  let n = `${req.method} ${req.url} HTTP/1.1\r\n`.length + 2
  for (let i = 0; i < req.rawHeaders.length; i += 2) n += req.rawHeaders[i].length + req.rawHeaders[i + 1].length + 4
  return n
}

export async function startRecordingProxy (): Promise<RecordingProxy> {
  let target: string | undefined
  const crossings: Crossing[] = []
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const data = await body(req)
    const at = performance.now()
    const crossing: Crossing = { at, sender: '', bytes: data.length, headerBytes: headerSize(req), windows: 0, starts: [], status: 0 }
    if (req.method === 'POST') {
      try {
        const encoding = req.headers['content-encoding']
        const batch = decodeBatch(data, typeof encoding === 'string' ? encoding : undefined)
        crossing.sender = batch.sender
        crossing.windows = batch.windows.length
        crossing.starts = [...new Set(batch.windows.map(w => w.start))]
      } catch {}
      crossings.push(crossing)
    }
    if (target === undefined) {
      crossing.status = 503
      res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":{"code":"unavailable","message":"bench proxy: no target yet"}}')
      return
    }
    const headers: Record<string, string> = {}
    for (const [k, v] of Object.entries(req.headers)) if (!HOP_HEADERS.has(k) && typeof v === 'string') headers[k] = v
    try {
      const upstream = await fetch(target + req.url, {
        method: req.method,
        headers,
        body: req.method === 'GET' || req.method === 'HEAD' ? undefined : data,
        signal: AbortSignal.timeout(10_000)
      })
      const answer = Buffer.from(await upstream.arrayBuffer())
      crossing.status = upstream.status
      res.writeHead(upstream.status, { 'content-type': upstream.headers.get('content-type') ?? 'application/octet-stream' }).end(answer)
    } catch (err) {
      crossing.status = 502
      res.writeHead(502, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'bad_gateway', message: `bench proxy: ${(err as Error).message}` } }))
    }
  }
  const server = createServer((req, res) => {
    handle(req, res).catch(() => { if (!res.headersSent) res.writeHead(500).end() })
  })
  server.keepAliveTimeout = 5_000
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    setTarget: url => { target = url.replace(/\/+$/, '') },
    crossings,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}

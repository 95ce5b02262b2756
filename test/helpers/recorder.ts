// A small recording HTTP server for the webhook sink tests: keeps every request (headers and body) and
// answers with what `answer` says for it (default 204). With `tls` (a certificate and its key, PEM) it
// serves https.
import { createServer } from 'node:http'
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'

export interface Recorded {
  method: string
  url: string
  headers: IncomingHttpHeaders
  body: string
}

export interface Recorder {
  /** http://127.0.0.1:<port>/hook (https:// with `tls`) */
  url: string
  /** Every request so far, answered or not, in order. */
  requests: Recorded[]
  /** Requests answered 2xx. */
  accepted: Recorded[]
  /** The status for a request; set by the test. */
  answer: (r: Recorded) => number
  close: () => Promise<void>
}

export async function startRecorder (opts: { tls?: { cert: string | Buffer, key: string | Buffer } } = {}): Promise<Recorder> {
  const rec: Recorder = {
    url: '',
    requests: [],
    accepted: [],
    answer: () => 204,
    close: async () => await new Promise<void>(resolve => { server.closeAllConnections(); server.close(() => resolve()) })
  }
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const r: Recorded = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') }
      rec.requests.push(r)
      const status = rec.answer(r)
      if (status >= 200 && status < 300) rec.accepted.push(r)
      res.writeHead(status, { 'content-type': 'application/json' })
      res.end(status >= 300 ? JSON.stringify({ error: 'refused by the test' }) : '')
    })
  }
  const server = opts.tls === undefined ? createServer(handle) : createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, handle)
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  rec.url = `${opts.tls === undefined ? 'http' : 'https'}://127.0.0.1:${address.port}/hook`
  return rec
}

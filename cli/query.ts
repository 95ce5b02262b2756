/**
 * `fogmesh query URL PIPELINE`: prints results from any tier as a table, or JSON with --json. A tier
 * with --api-token-file takes the token from `--token-file` (a file, so that ps does not show it); an
 * https tier of a site is verified against `--ca` (the site CA; default the system's CAs).
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { readTokenFile } from '../server/shell/bearer.ts'
import { PeerClient } from '../server/shell/peer-client.ts'
import type { PeerResponse } from '../server/shell/peer-client.ts'
import type { ResultJson } from '../server/shell/results.ts'

function cell (v: unknown): string {
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) >= 100 ? 1 : 3)
  return v === null || v === undefined ? '-' : String(v)
}

export function formatTable (results: ResultJson[]): string {
  const fields = [...new Set(results.flatMap(r => Object.keys(r.values)))]
  const header = ['key', 'start', 'end', 'final', 'rev', 'src', ...fields]
  const rows = results.map(r => [r.key, r.start, r.end, r.final ? 'yes' : 'no', String(r.revision), String(r.sources), ...fields.map(f => cell(r.values[f]))])
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(row => row[i].length)))
  return [header, ...rows].map(row => row.map((c, i) => i < 4 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join('  ').trimEnd()).join('\n')
}

export async function queryCommand (argv: string[]): Promise<number> {
  const usage = 'usage: fogmesh query URL PIPELINE [--key K] [--from T] [--to T] [--limit N] [--json] [--token-file FILE] [--ca FILE]\n'
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        key: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        limit: { type: 'string' },
        json: { type: 'boolean' },
        'token-file': { type: 'string' },
        ca: { type: 'string' },
        help: { type: 'boolean', short: 'h' }
      }
    })
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${usage}`)
    return 2
  }
  const { values, positionals } = parsed
  if (values.help === true || positionals.length !== 2) {
    process.stderr.write(usage)
    return values.help === true ? 0 : 2
  }
  const [base, pipeline] = positionals
  let url: URL
  try {
    url = new URL(`v1/aggregates/${encodeURIComponent(pipeline)}`, base.endsWith('/') ? base : base + '/')
  } catch {
    process.stderr.write(`not a URL: ${base}\n`)
    return 2
  }
  for (const k of ['key', 'from', 'to', 'limit'] as const) {
    const v = values[k]
    if (v !== undefined) url.searchParams.set(k, v)
  }
  const headers: Record<string, string> = {}
  let client: PeerClient
  try {
    if (values['token-file'] !== undefined) headers.authorization = `Bearer ${readTokenFile('--token-file', values['token-file'])}`
    client = new PeerClient(values.ca === undefined ? {} : { ca: readCa(values.ca) })
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`)
    return 2
  }
  let res: PeerResponse
  try {
    res = await client.request(url, { headers, signal: AbortSignal.timeout(30_000) })
  } catch (err) {
    process.stderr.write(`cannot reach ${url.origin}: ${(err as Error).message}\n`)
    return 1
  } finally {
    client.close()
  }
  let body: { results?: ResultJson[], error?: { code: string, message: string } } | undefined
  try {
    body = JSON.parse(res.text) as typeof body
  } catch {}
  if (res.status !== 200 || body?.results === undefined) {
    process.stderr.write(`${res.status}: ${body?.error?.message ?? 'unexpected answer'}\n`)
    return 1
  }
  process.stdout.write(values.json === true ? JSON.stringify(body, null, 2) + '\n' : formatTable(body.results) + '\n')
  return 0
}

function readCa (path: string): Buffer {
  try {
    return readFileSync(path)
  } catch (err) {
    throw new Error(`--ca ${path}: cannot read the file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err })
  }
}

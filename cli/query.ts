/** `fogmesh query URL PIPELINE`: prints results from any tier as a table, or JSON with --json. */
import { parseArgs } from 'node:util'
import type { ResultJson } from '../server/results.ts'

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
  const usage = 'usage: fogmesh query URL PIPELINE [--key K] [--from T] [--to T] [--limit N] [--json]\n'
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { key: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }
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
  let res: Response
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(30_000) })
  } catch (err) {
    process.stderr.write(`cannot reach ${url.origin}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}\n`)
    return 1
  }
  const body = await res.json().catch(() => undefined) as { results?: ResultJson[], error?: { code: string, message: string } } | undefined
  if (!res.ok || body?.results === undefined) {
    process.stderr.write(`${res.status}: ${body?.error?.message ?? 'unexpected answer'}\n`)
    return 1
  }
  process.stdout.write(values.json === true ? JSON.stringify(body, null, 2) + '\n' : formatTable(body.results) + '\n')
  return 0
}

/** Parses and checks the query parameters of `GET /v1/aggregates/{pipeline}`. */
import { HttpError } from '../../core/errors.ts'
import { QUERY_LIMITS } from './results.ts'
import type { ResultQuery } from './results.ts'

const KNOWN = new Set(['key', 'from', 'to', 'limit'])

/** ISO-8601 or epoch milliseconds. */
export function parseTime (name: string, text: string): number {
  const s = text.trim()
  if (/^-?\d+(\.\d+)?$/.test(s)) return Number(s)
  if (/^\d{4}-\d{2}-\d{2}/.test(s)) {
    const ms = Date.parse(s)
    if (!Number.isNaN(ms)) return ms
  }
  throw new HttpError(400, 'bad_parameter', `${name}="${text.slice(0, 40)}" is not an ISO-8601 time or epoch milliseconds`)
}

export function parseResultQuery (params: URLSearchParams): ResultQuery {
  for (const name of params.keys()) {
    if (!KNOWN.has(name)) throw new HttpError(400, 'bad_parameter', `unknown parameter "${name.slice(0, 40)}" (known: ${[...KNOWN].join(', ')})`)
  }
  const q: ResultQuery = { from: -Infinity, to: Infinity, limit: QUERY_LIMITS.defaultLimit }
  const key = params.get('key')
  if (key !== null) q.key = key
  const from = params.get('from')
  if (from !== null) q.from = parseTime('from', from)
  const to = params.get('to')
  if (to !== null) q.to = parseTime('to', to)
  if (q.from > q.to) throw new HttpError(400, 'bad_parameter', 'from must not be after to')
  const limit = params.get('limit')
  if (limit !== null) {
    const n = Number(limit)
    if (!/^\d+$/.test(limit.trim()) || n < 1 || n > QUERY_LIMITS.maxLimit) {
      throw new HttpError(400, 'bad_parameter', `limit must be a whole number from 1 to ${QUERY_LIMITS.maxLimit}`)
    }
    q.limit = n
  }
  return q
}

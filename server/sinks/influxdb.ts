/**
 * `type: influxdb`: one point per window in line protocol, millisecond precision: measurement = the
 * pipeline, tag `key` (left out for an empty key, which line protocol cannot hold), the values and
 * `revision` (an integer) as fields, time = the window's start; so a repeat, or a later revision,
 * overwrites the point. Numbers are floats, booleans booleans, strings strings; lists and maps are
 * written as JSON strings; nulls are left out.
 *
 * InfluxDB 1.x: `database` (optional `username`, `password`/`password-file`/`password-env`,
 * `retention-policy`), POST <url>/write. InfluxDB 2.x/3.x: `org`, `bucket`, `token`/`token-file`/
 * `token-env`, POST <url>/api/v2/write. A 4xx other than 401, 403, 404, 408 and 429 refuses the points
 * for good (a field type conflict): sent one at a time, the offending ones are set aside and counted.
 * 401/403/404 (credentials, a missing database) are retried: they are not the result's fault.
 * An https url is verified against the node's --tls-ca (the system's CAs without it), never skipped.
 */
import type { WindowResult } from '../shell/results.ts'
import { bodySummary, SinkRejected } from './sink.ts'
import type { SinkDefinition, SinkFields } from './sink.ts'

export interface InfluxConfig {
  /** The write endpoint with its query string. */
  writeUrl: string
  authorization?: string
}

/** Measurement: commas and spaces escaped. */
export function escapeMeasurement (s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/[, ]/g, c => '\\' + c)
}

/** Tag keys, tag values and field keys: commas, equals signs and spaces escaped. */
export function escapeKey (s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/[,= ]/g, c => '\\' + c)
}

/** A string field value: double quotes and backslashes escaped. */
export function escapeString (s: string): string {
  return '"' + s.replace(/[\\"]/g, c => '\\' + c) + '"'
}

function fieldValue (v: unknown): string | undefined {
  if (v === null || v === undefined) return undefined
  if (typeof v === 'number') return Number.isFinite(v) ? String(v) : undefined
  if (typeof v === 'boolean') return v ? 'true' : 'false'
  if (typeof v === 'string') return escapeString(v)
  return escapeString(JSON.stringify(v))
}

/** One point, or a SinkRejected for a result line protocol cannot hold (a newline in a name). */
export function linePoint (r: WindowResult): string {
  const names = [r.pipeline, r.key, ...Object.keys(r.values)]
  if (names.some(n => /[\n\r]/.test(n))) throw new SinkRejected('a line break in a pipeline, key or field name cannot be written in line protocol')
  let line = escapeMeasurement(r.pipeline)
  if (r.key !== '') line += `,key=${escapeKey(r.key)}`
  const fields: string[] = []
  for (const [name, v] of Object.entries(r.values)) {
    if (name === 'revision') continue
    const value = fieldValue(v)
    if (value !== undefined) fields.push(`${escapeKey(name)}=${value}`)
  }
  fields.push(`revision=${r.revision}i`)
  return `${line} ${fields.join(',')} ${r.start}`
}

export const influxdb: SinkDefinition<InfluxConfig> = {
  type: 'influxdb',
  batch: 500,
  parse (f: SinkFields): InfluxConfig {
    const url = f.url('url', ['http:', 'https:'])
    const base = url.href.replace(/\/+$/, '')
    const database = f.string('database')
    const org = f.string('org')
    const bucket = f.string('bucket')
    const token = f.secret('token')
    const username = f.string('username')
    const password = f.secret('password')
    const rp = f.string('retention-policy')
    if (database !== undefined) {
      if (org !== undefined || bucket !== undefined) f.fail('database', 'give database (InfluxDB 1.x) or org and bucket (2.x), not both')
      const q = new URLSearchParams({ db: database, precision: 'ms' })
      if (rp !== undefined) q.set('rp', rp)
      let authorization: string | undefined
      if (token !== undefined) authorization = `Token ${token}`
      else if (username !== undefined) authorization = 'Basic ' + Buffer.from(`${username}:${password ?? ''}`).toString('base64')
      return { writeUrl: `${base}/write?${q.toString()}`, authorization }
    }
    if (org === undefined && bucket === undefined) return f.fail('database', 'required (InfluxDB 1.x), or org and bucket (2.x)')
    if (org === undefined) return f.fail('org', 'required with bucket')
    if (bucket === undefined) return f.fail('bucket', 'required with org')
    if (token === undefined) return f.fail('token', 'required with org and bucket (or token-file, token-env)')
    if (rp !== undefined) f.fail('retention-policy', 'only with database (InfluxDB 1.x)')
    return { writeUrl: `${base}/api/v2/write?${new URLSearchParams({ org, bucket, precision: 'ms' }).toString()}`, authorization: `Token ${token}` }
  },
  create (config, parts) {
    return {
      async send (results, signal) {
        const body = results.map(linePoint).join('\n')
        const headers: Record<string, string> = { 'content-type': 'text/plain; charset=utf-8' }
        if (config.authorization !== undefined) headers.authorization = config.authorization
        const res = await parts.client.request(config.writeUrl, { method: 'POST', headers, body: Buffer.from(body), signal: AbortSignal.any([signal, AbortSignal.timeout(parts.timeout)]) })
        if (res.status >= 200 && res.status < 300) return
        const detail = `${res.status} ${bodySummary(res.text)}`
        if (res.status >= 400 && res.status < 500 && ![401, 403, 404, 408, 429].includes(res.status)) throw new SinkRejected(detail)
        throw new Error(detail)
      },
      async close () {}
    }
  }
}

/**
 * `type: webhook`: each result is POSTed as JSON (the HTTP API's result, with its pipeline) to `url`,
 * with an `Idempotency-Key` header `<pipeline>/<key>/<start>/<revision>` (pipeline and key
 * percent-encoded) that a receiver can use to ignore a repeat. 2xx: delivered; 408, 429, other
 * statuses and network errors: retried; any other 4xx: the result is set aside and counted.
 * Optional `token` (or `token-file`, `token-env`): sent as `Authorization: Bearer <token>`.
 * An https target is verified against the node's --tls-ca (the system's CAs without it), never skipped.
 * Redirects are not followed (a 3xx is retried, and logged as the sink's problem): the results and the
 * token go only where `url` says.
 */
import { resultJson } from '../shell/results.ts'
import type { WindowResult } from '../shell/results.ts'
import { bodySummary, httpVerdict } from './sink.ts'
import type { SinkDefinition, SinkFields } from './sink.ts'

export interface WebhookConfig {
  url: string
  token?: string
}

/** The body of every result a sink sends: the HTTP API's result, with its pipeline. */
export function resultBody (r: WindowResult): string {
  return JSON.stringify({ pipeline: r.pipeline, ...resultJson(r) })
}

export function idempotencyKey (r: WindowResult): string {
  return `${encodeURIComponent(r.pipeline)}/${encodeURIComponent(r.key)}/${new Date(r.start).toISOString()}/${r.revision}`
}

export const webhook: SinkDefinition<WebhookConfig> = {
  type: 'webhook',
  batch: 1,
  parse (f: SinkFields): WebhookConfig {
    const url = f.url('url', ['http:', 'https:'])
    return { url: url.href, token: f.secret('token') }
  },
  create (config, parts) {
    return {
      async send (results, signal) {
        for (const r of results) {
          const headers: Record<string, string> = { 'content-type': 'application/json', 'idempotency-key': idempotencyKey(r) }
          if (config.token !== undefined) headers.authorization = `Bearer ${config.token}`
          const res = await parts.client.request(config.url, {
            method: 'POST',
            headers,
            body: Buffer.from(resultBody(r)),
            signal: AbortSignal.any([signal, AbortSignal.timeout(parts.timeout)])
          })
          httpVerdict(res.status, bodySummary(res.text))
        }
      },
      async close () {}
    }
  }
}

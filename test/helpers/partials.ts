/**
 * Posting a batch of partials to a merge tier as an edge or a fog does (`POST /v1/partials`, CBOR,
 * compressed when the encoder chose to), for tests that drive fogs and clouds with batches they build.
 */
import { encodeBatch } from '../../core/upstream/batch.ts'
import type { Batch } from '../../core/upstream/batch.ts'
import { fetchJson } from './process.ts'
import type { JsonResponse } from './process.ts'

/** Posts `batch` (or raw bytes, for malformed bodies) and returns the answer, whatever its status. */
export async function postBatch (base: string, batch: Batch | Uint8Array, headers: Record<string, string> = {}): Promise<JsonResponse> {
  const h: Record<string, string> = { 'content-type': 'application/cbor', ...headers }
  let body: Uint8Array
  if (batch instanceof Uint8Array) {
    body = batch
  } else {
    const encoded = encodeBatch(batch)
    body = encoded.body
    if (encoded.encoding !== undefined) h['content-encoding'] = encoded.encoding
  }
  return await fetchJson(`${base}/v1/partials`, { method: 'POST', body, headers: h })
}

/** As postBatch, and throws unless the batch was accepted. */
export async function postAccepted (base: string, batch: Batch): Promise<JsonResponse> {
  const res = await postBatch(base, batch)
  if (res.status !== 200) throw new Error(`POST /v1/partials from ${batch.sender}: ${res.status} ${JSON.stringify(res.body)}`)
  return res
}

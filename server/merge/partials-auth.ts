/**
 * Who may write what into a merge tier (POST /v1/partials) when it asks for client certificates
 * (--tls-client-ca). Pure functions of the peer (server/shell/tls.ts) and the decoded batch; the route
 * refuses the whole batch on any denial, so nothing of a refused batch is ever stored.
 *
 * - No verified certificate: 401 unauthenticated (no_certificate, bad_certificate), decided before
 *   the body is read, so an unknown client cannot make the node decode anything.
 * - OU=edge: the batch must be an edge's batch sent by that edge (role edge, sender = CN); every
 *   contribution and every watermark must be that edge's (foreign_edge); and no window may say it is
 *   final (final_from_edge): finalizing is a fog's decision, and a `final` from an edge would let it
 *   end a window other edges still contribute to.
 * - OU=fog: anything. A fog forwards the windows of every edge it serves, finalized, and their
 *   watermarks, under its own id.
 * - OU=cloud, or any other OU: 403 (wrong_role). A cloud never sends partials, so a cloud certificate
 *   that tries is either misused or stolen.
 */
import type { Batch } from '../../core/upstream/batch.ts'
import type { Peer } from '../shell/tls.ts'

/** Why a request was refused: the `reason` label of fogmesh_auth_denied_total. */
export type DenyReason =
  | 'no_certificate' // no client certificate (or not TLS at all)
  | 'bad_certificate' // a certificate that did not verify: another CA, expired, not yet valid
  | 'wrong_role' // a verified certificate whose role may not send this (cloud, unknown OU, an edge claiming to be a fog)
  | 'foreign_edge' // an edge's batch with another edge's id in it (sender, contribution or watermark)
  | 'final_from_edge' // an edge's batch with a window marked final
  | 'no_token' // a GET without a bearer token
  | 'malformed_token' // an Authorization header that is not `Bearer <token>`
  | 'bad_token' // a wrong bearer token

export const DENY_REASONS: readonly DenyReason[] = ['no_certificate', 'bad_certificate', 'wrong_role', 'foreign_edge', 'final_from_edge', 'no_token', 'malformed_token', 'bad_token']

export interface Denial {
  status: 401 | 403
  code: 'unauthenticated' | 'forbidden'
  reason: DenyReason
  message: string
}

/** The sender's identity, or why there is none (401). */
export function authenticate (peer: Peer): { ok: true, id: string, role: string } | { ok: false, denial: Denial } {
  if (peer.kind === 'verified') return { ok: true, id: peer.id, role: peer.role }
  const unauthenticated = (reason: DenyReason, message: string) => ({ ok: false as const, denial: { status: 401 as const, code: 'unauthenticated' as const, reason, message } })
  if (peer.kind === 'unverified') return unauthenticated('bad_certificate', `the client certificate is not valid for this site (${peer.why})`)
  return unauthenticated('no_certificate', peer.kind === 'plain'
    ? 'POST /v1/partials needs TLS with a client certificate of this site'
    : 'POST /v1/partials needs a client certificate of this site (fogmesh cert issue)')
}

/** Whether the node named `id` with role `role` may send `batch`: undefined when it may. */
export function authorizeBatch (who: { id: string, role: string }, batch: Batch): Denial | undefined {
  const forbidden = (reason: DenyReason, message: string): Denial => ({ status: 403, code: 'forbidden', reason, message })
  if (who.role === 'fog') return undefined
  if (who.role !== 'edge') return forbidden('wrong_role', `a ${who.role === '' ? 'certificate without a role (OU)' : `${who.role} certificate`} may not send partials`)
  if (batch.role !== 'edge') return forbidden('wrong_role', `edge ${who.id} may not send a ${batch.role}'s batch`)
  if (batch.sender !== who.id) return forbidden('foreign_edge', `edge ${who.id} may not send a batch as ${batch.sender}`)
  for (const w of batch.windows) {
    if (w.final !== undefined) return forbidden('final_from_edge', `edge ${who.id} may not send a final window (${w.pipeline} ${w.key.slice(0, 60)}): only a fog finalizes`)
    const other = w.contributions.find(c => c.edge !== who.id)
    if (other !== undefined) return forbidden('foreign_edge', `edge ${who.id} may not send a contribution of edge ${other.edge.slice(0, 60)}`)
  }
  const other = batch.watermarks.find(w => w.edge !== who.id)
  if (other !== undefined) return forbidden('foreign_edge', `edge ${who.id} may not send a watermark of edge ${other.edge.slice(0, 60)}`)
  return undefined
}

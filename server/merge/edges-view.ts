/**
 * The `edges` part of `GET /v1/mesh` at a merge tier: every edge heard from, when last, and its
 * watermark per pipeline, sorted by id. An edge known to feed a pipeline without a watermark yet
 * (-Infinity) is left out of that pipeline; a time that is not finite is shown as null.
 */

export interface EdgeView {
  id: string
  lastSeen: string | null
  watermarks: Record<string, string>
}

export function edgesView (watermarks: Iterable<{ pipeline: string, edge: string, watermark: number, lastSeen: number }>): EdgeView[] {
  const edges = new Map<string, { id: string, lastSeen: number, watermarks: Record<string, string> }>()
  for (const w of watermarks) {
    if (!Number.isFinite(w.watermark)) continue
    let e = edges.get(w.edge)
    if (e === undefined) edges.set(w.edge, e = { id: w.edge, lastSeen: w.lastSeen, watermarks: {} })
    e.lastSeen = Math.max(e.lastSeen, w.lastSeen)
    e.watermarks[w.pipeline] = new Date(w.watermark).toISOString()
  }
  return [...edges.values()].sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
    .map(e => ({ id: e.id, lastSeen: Number.isFinite(e.lastSeen) ? new Date(e.lastSeen).toISOString() : null, watermarks: e.watermarks }))
}

/* global sessionStorage */
// The console's reads of this node's HTTP API (same origin only), the tokens it sends, and the parsing
// of what comes back: Prometheus text, results into per-key series.

const READ_TOKEN = 'fogmesh.apiToken'
const ADMIN_TOKEN = 'fogmesh.adminToken'

/** The tokens live in sessionStorage only: gone when the tab closes, never in a cookie or localStorage. */
export const tokens = {
  get read () { return sessionStorage.getItem(READ_TOKEN) ?? '' },
  set read (v) { if (v) sessionStorage.setItem(READ_TOKEN, v); else sessionStorage.removeItem(READ_TOKEN) },
  get admin () { return sessionStorage.getItem(ADMIN_TOKEN) ?? '' },
  set admin (v) { if (v) sessionStorage.setItem(ADMIN_TOKEN, v); else sessionStorage.removeItem(ADMIN_TOKEN) }
}

/** A 401 from a read: the page asks for the API token (see app.js). */
export class Unauthorized extends Error {}

/** An API error answer: `{"error":{"code","message",…}}`. */
export class ApiError extends Error {
  constructor (status, error) {
    super(error?.message ?? `HTTP ${status}`)
    this.status = status
    this.code = error?.code ?? 'http_error'
    this.details = error ?? {}
  }
}

async function call (path, { method = 'GET', body, admin = false, text = false } = {}) {
  const headers = {}
  const token = admin ? tokens.admin : tokens.read
  if (token) headers.authorization = `Bearer ${token}`
  if (body !== undefined) headers['content-type'] = 'application/yaml'
  const res = await fetch(path, { method, headers, body, cache: 'no-store', credentials: 'same-origin' })
  if (res.status === 401 && !admin) throw new Unauthorized(path)
  if (!res.ok) {
    let error
    try { error = (await res.json()).error } catch {}
    throw new ApiError(res.status, error)
  }
  return text ? await res.text() : await res.json()
}

export const api = {
  health: () => call('/healthz'),
  mesh: () => call('/v1/mesh'),
  pipelines: () => call('/v1/pipelines'),
  shards: () => call('/v1/shards'),
  broker: () => call('/v1/broker'),
  metrics: async () => parseMetrics(await call('/metrics', { text: true })),
  aggregates: (p, params) => call(`/v1/aggregates/${encodeURIComponent(p)}?${new URLSearchParams(params)}`),
  validate: (name, yaml) => call(`/v1/pipelines/${encodeURIComponent(name)}/validate`, { method: 'POST', body: yaml, admin: true }),
  deploy: (name, yaml) => call(`/v1/pipelines/${encodeURIComponent(name)}`, { method: 'PUT', body: yaml, admin: true }),
  remove: name => call(`/v1/pipelines/${encodeURIComponent(name)}`, { method: 'DELETE', admin: true })
}

/**
 * Prometheus text exposition → Map(name → [{ labels, value }]). Comments, timestamps and
 * malformed lines are skipped.
 */
export function parseMetrics (text) {
  const out = new Map()
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g
  for (const l of text.split('\n')) {
    if (l === '' || l[0] === '#') continue
    const m = line.exec(l)
    if (m === null) continue
    const labels = {}
    if (m[2] !== undefined) {
      for (const lm of m[2].matchAll(label)) labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c) => c === 'n' ? '\n' : c)
    }
    let list = out.get(m[1])
    if (list === undefined) out.set(m[1], list = [])
    list.push({ labels, value: Number(m[3]) })
  }
  return out
}

/** The value of a metric's sample whose labels include `match`; 0 without one. */
export function metricValue (metrics, name, match = {}) {
  let sum = 0
  for (const s of metrics.get(name) ?? []) {
    if (Object.entries(match).every(([k, v]) => s.labels[k] === v)) sum += s.value
  }
  return sum
}

const UNITS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** A duration of the pipeline language (`10s`, `500ms`) in ms; undefined when it is not one. */
export function durationMs (d) {
  if (typeof d === 'number') return d
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(String(d ?? '').trim())
  return m === null ? undefined : Number(m[1]) * UNITS[m[2]]
}

/** How far apart window starts are (tumbling size, hopping step); undefined for session and count windows. */
export function windowStep (spec) {
  const w = spec?.window ?? {}
  return durationMs(w.every ?? w.tumbling ?? w.hopping)
}

/**
 * The recent windows of one pipeline, merged as they come (a later revision replaces its window), and
 * the chart's view of them: one series per key for the `top` keys, by the field's value in their
 * latest window.
 */
export class ResultStore {
  constructor (keep = 60) {
    this.keep = keep
    /** key → Map(start ms → result) */
    this.byKey = new Map()
    this.newest = -Infinity
  }

  add (results) {
    let changed = false
    for (const r of results) {
      const start = Date.parse(r.start)
      let m = this.byKey.get(r.key)
      if (m === undefined) this.byKey.set(r.key, m = new Map())
      const old = m.get(start)
      if (old !== undefined && old.revision === r.revision && old.final === r.final && old.sources === r.sources) continue
      m.set(start, r)
      if (start > this.newest) this.newest = start
      changed = true
    }
    if (changed) this.#trim()
    return changed
  }

  #trim () {
    // Keep the `keep` most recent window starts over all keys.
    const starts = new Set()
    for (const m of this.byKey.values()) for (const s of m.keys()) starts.add(s)
    if (starts.size <= this.keep) return
    const cut = [...starts].sort((a, b) => b - a)[this.keep - 1]
    for (const [k, m] of this.byKey) {
      for (const s of m.keys()) if (s < cut) m.delete(s)
      if (m.size === 0) this.byKey.delete(k)
    }
  }

  /** Numeric result fields seen. */
  fields () {
    const f = new Set()
    for (const m of this.byKey.values()) {
      for (const r of m.values()) for (const [k, v] of Object.entries(r.values ?? {})) if (typeof v === 'number') f.add(k)
      if (f.size > 0) break
    }
    return [...f]
  }

  /**
   * The chart's data: x = every window start (ms), and for the top keys their value per start (null
   * where a key has no window), whether it is final and its revision.
   */
  view (field, top = 8) {
    const latest = []
    for (const [key, m] of this.byKey) {
      let last
      for (const [s, r] of m) if (last === undefined || s > last[0]) last = [s, r]
      const v = last?.[1].values?.[field]
      latest.push({ key, v: typeof v === 'number' ? v : -Infinity, s: last?.[0] ?? 0 })
    }
    latest.sort((a, b) => b.v - a.v || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    const keys = latest.slice(0, top).map(x => x.key).sort()
    const starts = new Set()
    for (const k of keys) for (const s of this.byKey.get(k).keys()) starts.add(s)
    const x = [...starts].sort((a, b) => a - b)
    const series = keys.map(key => {
      const m = this.byKey.get(key)
      const values = []
      const final = []
      const revision = []
      for (const s of x) {
        const r = m.get(s)
        const v = r?.values?.[field]
        values.push(typeof v === 'number' ? v : null)
        final.push(r === undefined ? null : r.final)
        revision.push(r === undefined ? null : r.revision)
      }
      return { key, values, final, revision }
    })
    return { field, x, series, totalKeys: this.byKey.size }
  }
}

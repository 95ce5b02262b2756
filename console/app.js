/* global window, document, location, performance, CSS */
// The fogmesh web console: polls this node's API (same origin), shows the mesh, the pipelines with
// their counters and a live chart each, the broker at an edge, and deploys pipelines at a fog.
// State the page shows is also on window.fogmeshConsole (tests and curious operators read it there).
import { api, ApiError, durationMs, metricValue, ResultStore, tokens, Unauthorized, windowStep } from './data.js'
import { ago, el, num, ranges, setText, shortTime, specText, syncRows } from './views.js'

const POLL_MS = 2000
/** Keys drawn per chart (the highest by the field's value in their latest window). */
const TOP_KEYS = 8
/** Windows kept per pipeline for its chart. */
const KEEP_WINDOWS = 60
/** The owner shown for shards that no coordinator owns (not a valid node id). */
const UNASSIGNED = '(unassigned)'
const COLORS = ['#2f6fd0', '#d0452f', '#1a8f5a', '#9b46c8', '#c98a00', '#1f9bb0', '#c2417e', '#5b6b2a', '#7a5230', '#44546a']

const $ = id => document.getElementById(id)

const state = {
  role: undefined,
  id: undefined,
  mesh: undefined,
  /** At a fog: GET /v1/shards (the cluster's shard map; none at a single fog). */
  shards: undefined,
  /** At an edge: GET /v1/broker (the embedded broker's clients). */
  broker: undefined,
  pipelines: [],
  metrics: new Map(),
  /** pipeline → { field, x, series, totalKeys } as drawn. */
  charts: {},
  polls: 0,
  ready: false,
  error: undefined,
  timing: {}
}
window.fogmeshConsole = state

// ---- navigation ------------------------------------------------------------------------------

function show (view) {
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.dataset.view !== view
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === view)
  // uPlot measures its container: size charts that were drawn while hidden.
  if (view === 'pipelines') for (const c of cards.values()) c.resize()
}
function route () {
  const v = location.hash.slice(1)
  const a = document.querySelector(`nav a[data-view="${CSS.escape(v)}"]`)
  show(a !== null && !a.hidden ? v : 'mesh')
}
window.addEventListener('hashchange', route)

// ---- read token ------------------------------------------------------------------------------

let waitingForToken
function askToken (rejected) {
  const dlg = $('token-dialog')
  setText($('token-error'), rejected ? 'That token was not accepted.' : '')
  if (!dlg.open) dlg.showModal()
  $('token-input').focus()
  waitingForToken ??= new Promise(resolve => {
    $('token-form').addEventListener('submit', () => {
      tokens.read = $('token-input').value.trim()
      $('token-input').value = ''
      waitingForToken = undefined
      resolve()
    }, { once: true })
  })
  return waitingForToken
}

// ---- mesh ------------------------------------------------------------------------------------

/** The shard map as rows: each coordinator in it (and the shards nobody owns, if any) with the shards it owns. */
function shardRows (map) {
  const held = new Map(map.members.map(m => [m.id, []]))
  map.owners.forEach((o, shard) => {
    const who = o ?? UNASSIGNED
    if (!held.has(who)) held.set(who, [])
    held.get(who).push(shard)
  })
  const http = new Map(map.members.map(m => [m.id, m.http]))
  return [...held].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0).map(([id, shards]) => ({
    key: id,
    class: id === UNASSIGNED ? 'bad' : undefined,
    cells: [id === map.leader ? `${id} (leader)` : id, { text: http.get(id) ?? '', href: http.get(id) || undefined }, { text: num(shards.length), class: 'num' }, ranges(shards)]
  }))
}

function renderMesh () {
  const m = state.mesh
  if (m === undefined) return
  const now = Date.now()
  const rows = new Map()
  const tagsOf = list => ({ tags: (list ?? []).map(p => ({ text: `${p.name} v${p.version}`, title: p.name })) })
  const wmOf = obj => ({ tags: Object.entries(obj ?? {}).filter(([, w]) => w).map(([p, w]) => ({ text: `${p} ${shortTime(w)}`, title: `${p}: ${w}` })) })
  // This node first.
  const selfWm = {}
  for (const s of state.metrics.get('fogmesh_watermark_seconds') ?? []) if (s.value > 0) selfWm[s.labels.pipeline] = new Date(s.value * 1000).toISOString()
  const outbox = state.metrics.has('fogmesh_outbox_items') ? num(metricValue(state.metrics, 'fogmesh_outbox_items')) : ''
  rows.set(m.self.id, {
    key: m.self.id,
    class: 'self',
    cells: [`${m.self.id} (this node)`, m.self.role, { text: 'self', class: 'state-alive' }, '', location.origin,
      tagsOf(state.pipelines), wmOf(selfWm), { text: outbox, class: 'num' }]
  })
  // Watermarks the merge tiers hold per edge.
  const heldWm = new Map((m.edges ?? []).map(e => [e.id, e]))
  for (const p of m.peers ?? []) {
    const wm = {}
    for (const pp of p.pipelines ?? []) if (pp.watermark) wm[pp.name] = pp.watermark
    Object.assign(wm, heldWm.get(p.id)?.watermarks)
    rows.set(p.id, {
      key: p.id,
      cells: [p.id, p.role, { text: p.state, class: `state-${p.state}` }, ago(p.lastSeen, now), { text: p.http ?? '', href: p.http || undefined },
        tagsOf(p.pipelines), wmOf(wm), { text: typeof p.outbox === 'number' ? num(p.outbox) : '', class: 'num' }]
    })
  }
  // Edges a merge tier heard from by their partials only (no gossip with them).
  for (const e of m.edges ?? []) {
    if (rows.has(e.id)) continue
    rows.set(e.id, {
      key: e.id,
      cells: [e.id, e.id === state.id ? state.role : 'edge', { text: 'sends partials', class: 'state-alive' }, ago(e.lastSeen, now), '', { tags: Object.keys(e.watermarks ?? {}) }, wmOf(e.watermarks), '']
    })
  }
  const order = { self: 0, fog: 1, cloud: 2, edge: 3 }
  const list = [...rows.values()].sort((a, b) => (a.class === 'self' ? -1 : b.class === 'self' ? 1 : 0) ||
    (order[a.cells[1]] ?? 9) - (order[b.cells[1]] ?? 9) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  syncRows($('mesh-table').tBodies[0], list)
  $('mesh-table').dataset.nodes = String(list.length)

  const fog = m.fog
  const summary = $('fog-summary')
  if (fog !== undefined && (state.role !== 'edge' || fog.leader !== null)) {
    summary.hidden = false
    summary.replaceChildren(...[
      el('span', { 'data-fog': 'leader' }, 'leader ', el('b', { text: fog.leader ?? 'none' })),
      el('span', { 'data-fog': 'version' }, 'shard map ', el('b', { text: `v${fog.shardMapVersion}` })),
      el('span', { 'data-fog': 'shards' }, 'shards ', el('b', { text: String(fog.shards) })),
      fog.status ? el('span', { 'data-fog': 'status' }, 'store ', el('b', { text: fog.status })) : null,
      m.uplink ? el('span', {}, 'uplink ', el('b', { text: `${m.uplink.target} ${m.uplink.url ?? ''}${m.uplink.failedOver ? ' (failed over)' : ''}` })) : null].filter(x => x !== null))
  } else if (m.uplink) {
    summary.hidden = false
    summary.replaceChildren(el('span', {}, 'uplink ', el('b', { text: `${m.uplink.target} ${m.uplink.url ?? ''}${m.uplink.failedOver ? ' (failed over)' : ''}` })),
      el('span', {}, 'outbox ', el('b', { text: `${m.uplink.outbox?.items ?? 0} windows, ${num(m.uplink.outbox?.bytes ?? 0)} bytes` })))
  }
  const owners = $('shard-owners')
  owners.hidden = !(state.shards?.shards > 0)
  syncRows(owners.querySelector('tbody'), owners.hidden ? [] : shardRows(state.shards))
}

// ---- pipelines -------------------------------------------------------------------------------

const cards = new Map()
const stores = new Map()

class PipelineCard {
  constructor (p) {
    this.name = p.name
    this.version = el('small')
    this.counters = el('div', { class: 'counters' })
    this.spec = el('pre')
    this.fieldSel = el('select', { 'aria-label': 'result field', onchange: () => { this.field = this.fieldSel.value; this.draw(true) } })
    this.keysNote = el('span')
    this.legend = el('div', { class: 'legend-note' })
    this.chartBox = el('div', { class: 'chart' })
    this.root = el('div', { class: 'card', 'data-pipeline': p.name },
      el('h2', {}, document.createTextNode(p.name), this.version),
      this.counters,
      el('details', {}, el('summary', { text: 'spec' }), this.spec),
      el('div', { class: 'chart-head' }, el('label', {}, 'field ', this.fieldSel), this.keysNote),
      this.chartBox, this.legend)
    this.field = undefined
    this.plot = undefined
    this.plotKeys = ''
  }

  update (p) {
    setText(this.version, `v${p.version}`)
    setText(this.spec, specText(p.spec))
    this.info = p
    const M = state.metrics
    const c = [
      ['accepted', metricValue(M, 'fogmesh_readings_total', { pipeline: p.name }), 'fogmesh_readings_total'],
      ['filtered', metricValue(M, 'fogmesh_readings_filtered_total', { pipeline: p.name }), 'fogmesh_readings_filtered_total'],
      ['late', metricValue(M, 'fogmesh_readings_late_total', { pipeline: p.name }), 'fogmesh_readings_late_total'],
      ['windows emitted', metricValue(M, 'fogmesh_windows_emitted_total', { pipeline: p.name }), 'fogmesh_windows_emitted_total'],
      ['partials received', metricValue(M, 'fogmesh_partials_received_total', { pipeline: p.name }), 'fogmesh_partials_received_total'],
      ['windows finalized', metricValue(M, 'fogmesh_windows_finalized_total', { pipeline: p.name }), 'fogmesh_windows_finalized_total'],
      ['revised', metricValue(M, 'fogmesh_windows_revised_total', { pipeline: p.name }), 'fogmesh_windows_revised_total'],
      ['open windows', metricValue(M, 'fogmesh_open_windows', { pipeline: p.name }), 'fogmesh_open_windows'],
      ['pending windows', metricValue(M, 'fogmesh_pending_windows', { pipeline: p.name }), 'fogmesh_pending_windows']
    ].filter(([, , metric]) => M.has(metric))
    // Rejected readings of this pipeline by reason, where the node counts them per pipeline.
    for (const s of M.get('fogmesh_pipeline_readings_rejected_total') ?? []) {
      if (s.labels.pipeline === p.name && s.value > 0) c.push([`rejected ${s.labels.reason}`, s.value, 'fogmesh_pipeline_readings_rejected_total'])
    }
    const spans = c.map(([label, v]) => el('span', { 'data-counter': label }, `${label} `, el('b', { text: num(v) })))
    const sig = JSON.stringify(c)
    if (this.counters.dataset.sig !== sig) {
      this.counters.dataset.sig = sig
      this.counters.replaceChildren(...spans)
    }
  }

  resize () {
    if (this.plot !== undefined && this.chartBox.clientWidth > 0) this.plot.setSize({ width: this.chartBox.clientWidth, height: 220 })
  }

  draw (force = false) {
    const store = stores.get(this.name)
    if (store === undefined) return
    const fields = store.fields()
    const opts = fields.join(',')
    if (this.fieldSel.dataset.sig !== opts) {
      this.fieldSel.dataset.sig = opts
      this.fieldSel.replaceChildren(...fields.map(f => el('option', { value: f, text: f })))
    }
    if (this.field === undefined || !fields.includes(this.field)) this.field = fields.find(f => /mean|avg/.test(f)) ?? fields[0]
    if (this.field === undefined) return
    if (this.fieldSel.value !== this.field) this.fieldSel.value = this.field
    const view = store.view(this.field, TOP_KEYS)
    state.charts[this.name] = view
    this.root.dataset.field = view.field
    this.root.dataset.windows = String(view.x.length)
    setText(this.keysNote, view.totalKeys > view.series.length ? `top ${view.series.length} of ${view.totalKeys} keys` : `${view.totalKeys} keys`)
    const keys = view.series.map(s => s.key).join('\u0000')
    // Final windows solid; open (not final) ones dashed, joined to the last final one; revised ones marked.
    const data = [view.x.map(t => t / 1000)]
    for (const s of view.series) {
      const solid = s.values.map((v, i) => s.final[i] === true ? v : null)
      const open = s.values.map((v, i) => s.final[i] === false || (s.final[i + 1] === false && s.final[i] === true) ? v : null)
      data.push(solid, open)
    }
    if (this.plot === undefined || this.plotKeys !== keys || force || this.plotField !== view.field) {
      this.plot?.destroy()
      this.plotKeys = keys
      this.plotField = view.field
      const series = [{}]
      view.series.forEach((s, i) => {
        const stroke = COLORS[i % COLORS.length]
        // Points where a window was revised, and where a window stands alone (session windows).
        const marked = (u, si) => {
          const d = u.data[si]
          const rev = view2().series[(si - 1) >> 1]?.revision ?? []
          const idx = []
          for (let j = 0; j < d.length; j++) {
            if (d[j] !== null && (rev[j] > 0 || (d[j - 1] == null && d[j + 1] == null))) idx.push(j)
          }
          return idx
        }
        series.push({ label: s.key, stroke, width: 2, spanGaps: false, points: { show: true, size: 7, filter: marked } })
        series.push({ label: `${s.key} (open)`, stroke, width: 2, dash: [6, 4], spanGaps: false, points: { show: true, size: 5, fill: '#fff' } })
      })
      const view2 = () => state.charts[this.name]
      this.plot = new window.uPlot({
        width: Math.max(300, this.chartBox.clientWidth || 800),
        height: 220,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        axes: [{}, { label: view.field, size: 60 }],
        series
      }, data, this.chartBox)
      this.legend.replaceChildren(...view.series.map(s => el('span', { class: 'tag', 'data-key': s.key, title: s.key }, `■ ${s.key}`)),
        el('span', { text: ' solid: final windows · dashed: open windows · large dot: revised' }))
      // Key colours through the CSSOM (the CSP forbids style attributes in markup, not this).
      view.series.forEach((s, i) => { this.legend.children[i].style.color = COLORS[i % COLORS.length] })
    } else {
      this.plot.setData(data)
    }
  }
}

function renderPipelines () {
  const list = $('pipeline-list')
  const names = new Set(state.pipelines.map(p => p.name))
  for (const [name, card] of cards) {
    if (!names.has(name)) {
      card.plot?.destroy()
      card.root.remove()
      cards.delete(name)
      stores.delete(name)
      delete state.charts[name]
    }
  }
  let prev = null
  for (const p of state.pipelines) {
    let card = cards.get(p.name)
    if (card === undefined) cards.set(p.name, card = new PipelineCard(p))
    card.update(p)
    const want = prev === null ? list.firstChild : prev.nextSibling
    if (want !== card.root) list.insertBefore(card.root, want)
    prev = card.root
  }
  // Rejected readings, by reason (this node's; an edge rejects, the merge tiers do not parse readings).
  const rejected = (state.metrics.get('fogmesh_readings_rejected_total') ?? []).filter(s => s.value > 0)
  const box = $('rejected')
  const sig = JSON.stringify(rejected)
  if (box.dataset.sig !== sig) {
    box.dataset.sig = sig
    box.replaceChildren(...(state.metrics.has('fogmesh_readings_rejected_total')
      ? [el('span', { text: 'rejected readings:' }), ...(rejected.length === 0 ? [el('span', { text: 'none' })] : rejected.map(s => el('span', { 'data-reason': s.labels.reason }, `${s.labels.reason} `, el('b', { text: num(s.value) }))))]
      : []))
  }
}

/** Where to start reading a pipeline's recent windows: its watermark (or newest window) less KEEP_WINDOWS steps. */
function fromFor (p, store) {
  const step = windowStep(p.spec) ?? 60_000
  let wm = -Infinity
  for (const s of state.metrics.get('fogmesh_watermark_seconds') ?? []) if (s.labels.pipeline === p.name) wm = Math.max(wm, s.value * 1000)
  for (const e of state.mesh?.edges ?? []) {
    const w = Date.parse(e.watermarks?.[p.name] ?? '')
    if (Number.isFinite(w)) wm = Math.max(wm, w)
  }
  const newest = Math.max(wm, store.newest)
  if (!Number.isFinite(newest)) return undefined
  const size = durationMs(p.spec?.window?.hopping) ?? step
  return Math.floor(newest - step * KEEP_WINDOWS - size)
}

let drawMs = 0
async function pollResults (p) {
  let store = stores.get(p.name)
  if (store === undefined) stores.set(p.name, store = new ResultStore(KEEP_WINDOWS))
  const from = fromFor(p, store)
  const params = { limit: '10000' }
  /** Main-thread ms of this pipeline's poll: merging the results and drawing (not the fetches). */
  let work = 0
  if (from !== undefined) params.from = String(from)
  let changed = false
  for (let page = 0; page < 5; page++) {
    const res = await api.aggregates(p.name, params)
    const t1 = performance.now()
    changed = store.add(res.results) || changed
    work += performance.now() - t1
    if (res.results.length < 10000) break
    params.from = String(Date.parse(res.results[res.results.length - 1].start))
  }
  const card = cards.get(p.name)
  const t2 = performance.now()
  if (card !== undefined && (changed || state.charts[p.name] === undefined)) card.draw()
  drawMs += work + performance.now() - t2
}

// ---- edge: rejected readings and the broker's clients ----------------------------------------

const rejectHistory = []
function renderEdge () {
  if (state.role !== 'edge') return
  const now = Date.now()
  const samples = state.metrics.get('fogmesh_readings_rejected_total') ?? []
  rejectHistory.push({ at: now, by: Object.fromEntries(samples.map(s => [s.labels.reason, s.value])) })
  while (rejectHistory.length > 2 && rejectHistory[1].at < now - 60_000) rejectHistory.shift()
  const base = rejectHistory[0].by
  syncRows($('reject-table').tBodies[0], [...samples].sort((a, b) => b.value - a.value).map(s => ({
    key: s.labels.reason,
    class: s.value > 0 ? 'bad' : '',
    cells: [s.labels.reason, { text: num(s.value), class: 'num' }, { text: num(s.value - (base[s.labels.reason] ?? 0)), class: 'num' }]
  })))
  renderClients(now)
  renderSparkplug()
}

/** Sparkplug B nodes and devices the edge has heard a BIRTH from, online or dead (fogmesh_sparkplug_online). */
function renderSparkplug () {
  const samples = state.metrics.get('fogmesh_sparkplug_online') ?? []
  $('sparkplug-panel').hidden = samples.length === 0
  syncRows($('sparkplug-table').tBodies[0], samples.map(s => ({
    key: `${s.labels.group}/${s.labels.node}/${s.labels.device}`,
    class: s.value > 0 ? '' : 'gone',
    cells: [s.labels.group, s.labels.node, s.labels.device === '' ? '(node)' : s.labels.device, s.value > 0 ? 'online' : 'offline']
  })))
}

function renderClients (now) {
  const b = state.broker
  const summary = $('broker-summary')
  if (b === undefined) return
  if (!b.embedded) {
    summary.replaceChildren(el('span', { text: 'readings come from an external broker: its clients are not known here' }))
    syncRows($('client-table').tBodies[0], [])
    return
  }
  const denied = Object.entries(b.denied ?? {}).map(([what, n]) => el('span', { 'data-denied': what }, `denied ${what} `, el('b', { text: num(n) })))
  const closed = Object.entries(b.closed ?? {}).filter(([, n]) => n > 0).map(([why, n]) => el('span', { 'data-closed': why }, `closed ${why.replaceAll('_', ' ')} `, el('b', { text: num(n) })))
  const sig = JSON.stringify([b.clients.length, b.denied, b.closed])
  if (summary.dataset.sig !== sig) {
    summary.dataset.sig = sig
    summary.replaceChildren(el('span', {}, 'connected ', el('b', { text: num(b.clients.length) })), ...denied, ...closed)
  }
  const row = (c, gone) => ({
    key: `${gone ? 'gone' : 'up'}:${c.id}:${c.connectedAt}`,
    class: gone ? 'gone' : c.rejected > 0 || c.denied > 0 ? 'bad' : '',
    cells: [c.id, c.user ?? '', c.address,
      gone ? `gone ${ago(c.disconnectedAt, now)}` : ago(c.connectedAt, now),
      { text: num(c.messages), class: 'num' }, { text: num(c.rejected), class: 'num' }, { text: num(c.denied), class: 'num' },
      c.lastMessageAt ? ago(c.lastMessageAt, now) : '']
  })
  syncRows($('client-table').tBodies[0], [...b.clients.map(c => row(c, false)), ...b.disconnected.map(c => row(c, true))])
}

// ---- deploy (fog) ----------------------------------------------------------------------------

function lineNumbers (problems = []) {
  const yaml = $('deploy-yaml').value
  const n = Math.max(1, yaml.split('\n').length)
  const bad = new Set(problems.map(p => p.line))
  const spans = []
  for (let i = 1; i <= n; i++) spans.push(el('span', { class: bad.has(i) ? 'error' : undefined, 'data-line': i, text: `${i}\n` }))
  $('deploy-lines').replaceChildren(...spans)
}

function selectLine (line, col) {
  const ta = $('deploy-yaml')
  const lines = ta.value.split('\n')
  let at = 0
  for (let i = 0; i < line - 1 && i < lines.length; i++) at += lines[i].length + 1
  const end = at + (lines[line - 1]?.length ?? 0)
  ta.focus()
  ta.setSelectionRange(Math.min(end, at + Math.max(0, col - 1)), end)
}

function showProblems (problems) {
  $('deploy-problems').replaceChildren(...problems.map(p => el('li', {
    'data-line': p.line, 'data-col': p.col, onclick: () => selectLine(p.line, p.col)
  }, `line ${p.line}, column ${p.col}: ${p.message}`)))
  lineNumbers(problems)
}

function result (text, ok) {
  const r = $('deploy-result')
  r.textContent = text
  r.className = `result ${ok ? 'ok' : 'bad'}`
}

function nameFromYaml (yaml) {
  return /^\s*-?\s*name:\s*["']?([a-z0-9-]+)/m.exec(yaml)?.[1] ?? ''
}

/** Validates at the fog (nothing deployed); true when valid. Shows the problems at their lines. */
async function validate () {
  const yaml = $('deploy-yaml').value
  const name = $('deploy-name').value.trim() || nameFromYaml(yaml)
  $('deploy-name').value = name
  tokens.admin = $('admin-token').value.trim()
  showProblems([])
  if (!name) { result('Name the pipeline.', false); return false }
  try {
    const r = await api.validate(name, yaml)
    result(r.changed === false ? `valid: the same as deployed ${name} v${r.pipeline.version}` : `valid: deploying makes ${name} v${r.pipeline.version}`, true)
    return true
  } catch (err) {
    failed(err)
    return false
  }
}

function failed (err) {
  if (err instanceof ApiError) {
    const problems = err.details.problems ?? []
    showProblems(problems)
    const why = err.status === 401 ? 'the admin token was not accepted' : err.message.split('\n')[0]
    result(`${err.code}: ${problems.length > 0 ? `${problems.length} problem${problems.length > 1 ? 's' : ''}` : why}`, false)
  } else result(String(err?.message ?? err), false)
}

async function deploy (ev) {
  ev.preventDefault()
  if (!await validate()) return
  const name = $('deploy-name').value.trim()
  try {
    const r = await api.deploy(name, $('deploy-yaml').value)
    result(r.changed ? `deployed ${name} v${r.pipeline.version} (set revision ${r.revision}); the mesh view shows the edges taking it up` : `unchanged: ${name} v${r.pipeline.version} is deployed`, true)
    await tick()
  } catch (err) { failed(err) }
}

async function remove () {
  const name = $('deploy-name').value.trim()
  if (!name) { result('Name the pipeline to delete.', false); return }
  if (!window.confirm(`Delete pipeline ${name} from the whole mesh?`)) return
  tokens.admin = $('admin-token').value.trim()
  try {
    const r = await api.remove(name)
    result(`deleted ${r.deleted} (set revision ${r.revision})`, true)
    await tick()
  } catch (err) { failed(err) }
}

let deployed = []
async function refreshDeployed () {
  try {
    deployed = (await fetch('/v1/deployments', { headers: tokens.read ? { authorization: `Bearer ${tokens.read}` } : {} }).then(r => r.json())).pipelines ?? []
  } catch { deployed = [] }
  const sel = $('deploy-pick')
  const sig = deployed.map(p => `${p.name}@${p.version}`).join(',')
  if (sel.dataset.sig === sig) return
  sel.dataset.sig = sig
  sel.replaceChildren(el('option', { value: '', text: 'edit a deployed pipeline…' }), ...deployed.map(p => el('option', { value: p.name, text: `${p.name} v${p.version}` })))
}

function setupDeploy () {
  $('admin-token').value = tokens.admin
  $('deploy-form').addEventListener('submit', deploy)
  $('deploy-validate').addEventListener('click', () => { void validate() })
  $('deploy-delete').addEventListener('click', () => { void remove() })
  $('deploy-yaml').addEventListener('input', () => lineNumbers())
  $('deploy-yaml').addEventListener('scroll', () => { $('deploy-lines').scrollTop = $('deploy-yaml').scrollTop })
  $('deploy-pick').addEventListener('change', () => {
    const p = deployed.find(d => d.name === $('deploy-pick').value)
    if (p === undefined) return
    $('deploy-name').value = p.name
    $('deploy-yaml').value = p.yaml
    showProblems([])
  })
  lineNumbers()
}

// ---- the poll loop ---------------------------------------------------------------------------

async function tick () {
  // At a fog, the shard map every poll, read with the mesh: the owners shown go with the summary's leader and map version.
  const [mesh, pipelines, metrics, broker, shards] = await Promise.all([api.mesh(), api.pipelines(), api.metrics(),
    state.role === 'edge' ? api.broker() : undefined, state.role === 'fog' ? api.shards().catch(() => undefined) : undefined])
  state.broker = broker
  state.shards = shards
  state.mesh = mesh
  state.pipelines = pipelines.pipelines
  state.metrics = metrics
  if (state.role === 'fog' && state.polls % 5 === 0) await refreshDeployed()
  const t0 = performance.now()
  renderMesh()
  renderPipelines()
  renderEdge()
  const rendered = performance.now() - t0
  drawMs = 0
  await Promise.all(state.pipelines.map(p => pollResults(p).catch(err => { if (err instanceof Unauthorized) throw err })))
  // What one poll cost this page: the tables (mesh, pipelines, edge) and the charts (results merged
  // and drawn), ms of main-thread work; the network waits are not in it.
  state.timing.poll = { tables: rendered, charts: drawMs }
  state.polls++
  if (!state.ready) {
    state.ready = true
    state.timing.firstData = performance.now()
    document.body.dataset.ready = 'true'
  }
  document.body.dataset.polls = String(state.polls)
}

async function loop () {
  for (;;) {
    const st = $('status')
    try {
      await tick()
      state.error = undefined
      setText(st, `updated ${new Date().toLocaleTimeString()}`)
      st.classList.remove('bad')
    } catch (err) {
      if (err instanceof Unauthorized) {
        state.needsToken = true
        setText(st, 'waiting for the API token')
        await askToken(tokens.read !== '')
        state.needsToken = false
        continue
      }
      state.error = String(err?.message ?? err)
      setText(st, `cannot reach the node: ${state.error}`)
      st.classList.add('bad')
    }
    await new Promise(resolve => setTimeout(resolve, POLL_MS))
  }
}

async function start () {
  state.timing.domContentLoaded = performance.now()
  const h = await api.health().catch(() => undefined)
  state.role = h?.role
  state.id = h?.id
  setText($('node'), h === undefined ? 'unreachable' : `${h.role} ${h.id}`)
  document.title = h === undefined ? 'fogmesh console' : `fogmesh ${h.role} ${h.id}`
  document.body.dataset.role = h?.role ?? ''
  document.querySelector('nav a[data-view="edge"]').hidden = state.role !== 'edge'
  document.querySelector('nav a[data-view="deploy"]').hidden = state.role !== 'fog'
  if (state.role === 'fog') setupDeploy()
  route()
  window.addEventListener('resize', () => { for (const c of cards.values()) c.resize() })
  await loop()
}

// uPlot is a classic script (deferred): it has run before this module (modules are deferred too, in order).
void start()

/* global document */
// DOM helpers: elements without innerHTML (nothing from the API is parsed as markup), and tables
// updated in place row by row and cell by cell, so that a poll of 50 nodes touches only what changed.

export function el (tag, attrs = {}, ...children) {
  const e = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue
    if (k === 'class') e.className = v
    else if (k === 'text') e.textContent = v
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v)
    else e.setAttribute(k, v === true ? '' : String(v))
  }
  for (const c of children) if (c !== undefined && c !== null) e.append(c)
  return e
}

/**
 * A cell's content: a string (text), or { text, class, tags: [...] , href }. Compared by its JSON form,
 * so an unchanged cell is not touched.
 */
function fill (td, cell) {
  const c = typeof cell === 'object' && cell !== null ? cell : { text: cell }
  const sig = JSON.stringify(c)
  if (td.dataset.sig === sig) return
  td.dataset.sig = sig
  td.className = c.class ?? ''
  if (c.tags !== undefined) {
    td.replaceChildren(...c.tags.map(t => el('span', { class: 'tag', title: t.title, text: t.text ?? t })))
  } else if (c.href !== undefined) {
    // A link to another node's own console: opened only when clicked, never fetched by this page.
    td.replaceChildren(el('a', { href: c.href, rel: 'noreferrer', text: c.text }))
  } else {
    td.textContent = c.text ?? ''
  }
}

/** Sets a keyed table body to `rows` ([{ key, class, cells: [...] }]) in order, reusing rows by key. */
export function syncRows (tbody, rows) {
  const existing = new Map()
  for (const tr of tbody.children) existing.set(tr.dataset.key, tr)
  let prev = null
  for (const row of rows) {
    let tr = existing.get(row.key)
    if (tr === undefined) {
      tr = el('tr')
      tr.dataset.key = row.key
    }
    existing.delete(row.key)
    if (tr.className !== (row.class ?? '')) tr.className = row.class ?? ''
    while (tr.children.length < row.cells.length) tr.append(el('td'))
    while (tr.children.length > row.cells.length) tr.lastChild.remove()
    row.cells.forEach((cell, i) => fill(tr.children[i], cell))
    const want = prev === null ? tbody.firstChild : prev.nextSibling
    if (want !== tr) tbody.insertBefore(tr, want)
    prev = tr
  }
  for (const tr of existing.values()) tr.remove()
}

export function setText (node, text) {
  if (node.textContent !== text) node.textContent = text
}

/** "3 s ago", "2 min ago" from an ISO time; '' for none. */
export function ago (iso, now = Date.now()) {
  if (!iso) return ''
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000))
  if (!Number.isFinite(s)) return ''
  if (s < 90) return `${s} s ago`
  if (s < 5400) return `${Math.round(s / 60)} min ago`
  return `${Math.round(s / 3600)} h ago`
}

/** A watermark as a short UTC time: same day → HH:MM:SS, else the date too. */
export function shortTime (iso) {
  if (!iso) return ''
  const d = new Date(iso)
  if (Number.isNaN(d.getTime())) return ''
  const t = d.toISOString()
  return Math.abs(Date.now() - d.getTime()) < 86_400_000 ? t.slice(11, 19) : `${t.slice(0, 10)} ${t.slice(11, 19)}`
}

export function num (n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return ''
  return Number.isInteger(n) ? n.toLocaleString('en') : n.toLocaleString('en', { maximumFractionDigits: 3 })
}

/** Ascending integers as ranges: [0, 1, 2, 7] → "0-2, 7". */
export function ranges (list) {
  const out = []
  for (let i = 0; i < list.length; i++) {
    let j = i
    while (j + 1 < list.length && list[j + 1] === list[j] + 1) j++
    out.push(j > i ? `${list[i]}-${list[j]}` : String(list[i]))
    i = j
  }
  return out.join(', ')
}

/** A pipeline spec as YAML-like text for display. */
export function specText (spec, indent = '') {
  const lines = []
  for (const [k, v] of Object.entries(spec ?? {})) {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      lines.push(`${indent}${k}:`, specText(v, indent + '  '))
    } else if (Array.isArray(v)) {
      lines.push(`${indent}${k}:`)
      for (const item of v) {
        if (item !== null && typeof item === 'object') {
          const inner = specText(item, indent + '    ').split('\n')
          lines.push(`${indent}  - ${inner[0].trimStart()}`, ...inner.slice(1))
        } else lines.push(`${indent}  - ${item}`)
      }
    } else {
      lines.push(`${indent}${k}: ${typeof v === 'string' && /[:#{}[\],&*?|<>=!%@`]/.test(v) ? JSON.stringify(v) : v}`)
    }
  }
  return lines.filter(l => l !== '').join('\n')
}

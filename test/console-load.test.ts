/**
 * The console under a fog's load of 50 edges and 1,000 keys, all real: a fog process takes partial
 * batches (encodeBatch, POST /v1/partials) from 50 edge ids, each key from two of them, for one
 * pipeline over a few windows, with watermarks past them so they are final; then its console in
 * headless Chromium. Asserted: every edge listed, the chart holding the top keys with the API's values.
 * Measured and printed (never asserted): the time to the mesh table with its 50 edges, the main-thread
 * work of a poll cycle's update (window.fogmeshConsole.timing.poll) and the page's JS heap.
 */
import t from 'tap'
import { getAggregate } from '../core/aggregates/index.ts'
import type { Batch, PipelineDef, WindowEntry } from '../core/upstream/batch.ts'
import { inPage, startBrowser } from './helpers/browser.ts'
import { fetchJson, startFogmesh, tmpDir, waitFor } from './helpers/process.ts'
import { postAccepted } from './helpers/partials.ts'

const EDGES = 50
const KEYS = 1000
const WINDOW = 10_000
const ORIGIN = Date.UTC(2026, 0, 1)
const PIPELINE = 'load-temp'
const DEF: PipelineDef = { name: PIPELINE, version: 1, window: 'tumbling', selects: [{ name: 'n', fn: 'count', params: [] }, { name: 'mean', fn: 'avg', params: [] }] }
const count = getAggregate('count')!
const avg = getAggregate('avg')!

const edgeId = (e: number): string => `e${String(e).padStart(2, '0')}`
const keyId = (k: number): string => `k${String(k).padStart(4, '0')}`
/** A key's readings in window w (distinct per key, so the top keys are well defined). */
const level = (k: number, w: number): number => ((k * 7919) % KEYS) / 10 + w

/** Edge e's batch of windows [from, to): each key from edges k % 50 and (k + 1) % 50, 3 readings each. */
function edgeBatch (e: number, seq: number, from: number, to: number): Batch {
  const windows: WindowEntry[] = []
  for (let w = from; w < to; w++) {
    const start = ORIGIN + w * WINDOW
    for (let k = 0; k < KEYS; k++) {
      if (k % EDGES !== e && (k + 1) % EDGES !== e) continue
      let n = count.create([])
      let m = avg.create([])
      for (let i = 0; i < 3; i++) {
        n = count.add(n, undefined, start + i)
        m = avg.add(m, level(k, w) + (i - 1) * 0.5, start + i)
      }
      windows.push({ pipeline: PIPELINE, key: keyId(k), start, end: start + WINDOW, contributions: [{ edge: edgeId(e), revision: 0, states: [count.encode(n), avg.encode(m)] }] })
    }
  }
  return { sender: edgeId(e), role: 'edge', seq, pipelines: [DEF], watermarks: [{ pipeline: PIPELINE, edge: edgeId(e), watermark: ORIGIN + to * WINDOW + 1 }], windows }
}

async function post (base: string, b: Batch): Promise<void> {
  await postAccepted(base, b)
}

/** Every edge sends windows [from, to) with its watermark past them. */
async function sendRound (base: string, seq: number, from: number, to: number): Promise<void> {
  for (let e = 0; e < EDGES; e += 10) await Promise.all(Array.from({ length: 10 }, (_, i) => post(base, edgeBatch(e + i, seq, from, to))))
}

interface ChartView { field: string, x: number[], totalKeys: number, series: Array<{ key: string, values: Array<number | null>, final: Array<boolean | null> }> }
interface Result { key: string, start: string, final: boolean, values: Record<string, number> }

t.test('a fog\'s console with 50 edges and 1,000 keys: every edge listed, the top keys charted as the API serves them', { timeout: 150_000 }, async t => {
  const dir = await tmpDir('fogmesh-console-load-')
  t.teardown(dir.cleanup)
  const fog = await startFogmesh(['fog', '--id', 'f1', '--http-port', '0', '--data-dir', `${dir.path}/fog`, '--tick', '100ms'])
  t.teardown(() => fog.stop(5_000))
  const WINDOWS = 5
  const sent = Date.now()
  await sendRound(fog.http, 1, 0, WINDOWS)
  const all = async (): Promise<Result[]> => (await fetchJson(`${fog.http}/v1/aggregates/${PIPELINE}?limit=10000`)).body.results as Result[]
  await waitFor(async () => { const r = await all(); return r.length === KEYS * WINDOWS && r.every(x => x.final) }, { timeoutMs: 30_000, message: 'every window final at the fog' })
  t.comment(`load: ${EDGES} edges, ${KEYS} keys, ${WINDOWS} windows posted and final in ${Date.now() - sent} ms`)

  const b = await startBrowser()
  t.teardown(b.close)
  const page = await b.page()
  const errors: string[] = []
  page.on('pageerror', e => errors.push(String(e)))
  const cdp = await page.createCDPSession()
  const origin = new URL(fog.http).origin
  await page.goto(`${origin}/`)
  // Time from navigation to the mesh table listing every edge, taken in the page at the DOM change.
  await page.waitForFunction(`(() => {
    if (document.querySelectorAll('#mesh-table tbody tr').length < ${EDGES + 1}) return false
    window.meshListedAt ??= performance.now()
    return true
  })()`, { polling: 'mutation', timeout: 20_000 })
  const listedAt = await inPage<number>(page, 'window.meshListedAt')
  const edgeRows = await inPage<string[]>(page, `[...document.querySelectorAll('#mesh-table tbody tr')].map(tr => tr.dataset.key).filter(k => k !== 'f1').sort()`)
  t.same(edgeRows, Array.from({ length: EDGES }, (_, e) => edgeId(e)), 'all 50 edges listed')
  t.ok(await inPage(page, `[...document.querySelectorAll('#mesh-table tbody tr:not(.self)')].every(tr => /${PIPELINE} /.test(tr.children[6].textContent))`), 'each with its watermark')

  // The chart: the top 8 of 1,000 keys, by their latest window's mean, as the API serves them.
  await page.goto(`${origin}/#pipelines`)
  await page.waitForFunction(`(window.fogmeshConsole?.charts['${PIPELINE}']?.x.length ?? 0) === ${WINDOWS}`, { timeout: 20_000 })
  const checkChart = async (windows: number): Promise<void> => {
    const view = await inPage<ChartView>(page, `window.fogmeshConsole.charts['${PIPELINE}']`)
    const served = await all()
    const latest = ORIGIN + (windows - 1) * WINDOW
    const top = served.filter(r => Date.parse(r.start) === latest).sort((a, b) => b.values.mean - a.values.mean).slice(0, 8).map(r => r.key).sort()
    t.equal(view.totalKeys, KEYS, `${windows} windows: the chart knows all 1,000 keys`)
    t.same(view.series.map(s => s.key), top, `${windows} windows: it draws the top 8 keys`)
    const byWindow = new Map(served.map(r => [`${r.key}@${Date.parse(r.start)}`, r]))
    const diffs: string[] = []
    let points = 0
    for (const s of view.series) {
      s.values.forEach((v, i) => {
        const r = byWindow.get(`${s.key}@${view.x[i]}`)
        if (r === undefined || v !== r.values.mean || s.final[i] !== r.final) diffs.push(`${s.key}@${view.x[i]}: chart ${v}, API ${r?.values.mean}`)
        points++
      })
    }
    t.same(diffs, [], `${windows} windows: its ${points} points equal the API's`)
    t.equal(points, 8 * windows)
  }
  await checkChart(WINDOWS)

  // A poll cycle with news: one more window from every edge; the page's next poll merges and draws it.
  const polls = await inPage<number>(page, 'window.fogmeshConsole.polls')
  await sendRound(fog.http, 2, WINDOWS, WINDOWS + 1)
  await waitFor(async () => (await all()).filter(r => r.final).length === KEYS * (WINDOWS + 1), { timeoutMs: 30_000, message: 'the new window final' })
  await page.waitForFunction(`(window.fogmeshConsole.charts['${PIPELINE}']?.x.length ?? 0) === ${WINDOWS + 1} && window.fogmeshConsole.charts['${PIPELINE}'].series.every(s => s.final.at(-1) === true)`, { timeout: 20_000 })
  const update = await inPage<{ tables: number, charts: number }>(page, 'window.fogmeshConsole.timing.poll')
  await checkChart(WINDOWS + 1)
  // Some quiet polls (nothing new but the "last heard" times): their cost, the worst of three.
  const now = await inPage<number>(page, 'window.fogmeshConsole.polls')
  const quiet: Array<{ tables: number, charts: number }> = []
  for (let i = 1; i <= 3; i++) {
    await page.waitForFunction(`window.fogmeshConsole.polls >= ${now + i}`, { timeout: 10_000 })
    quiet.push(await inPage(page, 'window.fogmeshConsole.timing.poll'))
  }
  const worstQuiet = quiet.reduce((a, q) => a.tables + a.charts >= q.tables + q.charts ? a : q)
  await cdp.send('HeapProfiler.collectGarbage')
  const heap = await cdp.send('Runtime.getHeapUsage')
  const domNodes = await inPage<number>(page, 'document.getElementsByTagName(\'*\').length')
  const ms = (x: number): string => x.toFixed(1)
  t.comment(`console, ${EDGES} edges and ${KEYS} keys: mesh table with every edge ${Math.round(listedAt)} ms after navigation; ` +
    `a poll with a new window: tables ${ms(update.tables)} ms + chart ${ms(update.charts)} ms; a quiet poll (worst of 3): tables ${ms(worstQuiet.tables)} ms + chart ${ms(worstQuiet.charts)} ms; ` +
    `JS heap after GC ${(heap.usedSize / 1048576).toFixed(1)} MB used of ${(heap.totalSize / 1048576).toFixed(1)} MB; ${domNodes} DOM elements; polls so far ${polls} → ${now + 3}`)
  t.same(errors, [], 'no script errors')
})

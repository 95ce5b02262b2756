/**
 * The console of a coordinator of a real fog cluster (test/helpers/fog-cluster.ts: three etcd members and
 * three `fogmesh fog --etcd …` on loopback) in headless Chromium: its mesh view shows the leader and the
 * shard map version as `GET /v1/mesh` gives them, and the shards each coordinator owns as `GET /v1/shards`
 * gives them. Then the leader is SIGKILLed: the page, open on a survivor, shows the new leader and the
 * new owners within the failover bound, at most two polls behind its API. No script error, no request to
 * any other origin.
 */
import { isDeepStrictEqual } from 'node:util'
import t from 'tap'
import type { Page } from 'puppeteer-core'
import type { ShardMapView } from '../core/upstream/shards.ts'
import { foreign, inPage, openConsole, startBrowser } from './helpers/browser.ts'
import { LEASE_TTL, startCluster } from './helpers/fog-cluster.ts'
import { fetchJson, waitFor } from './helpers/process.ts'

/** The console's poll period (console/app.js). */
const POLL_MS = 2_000
/** How far the page may trail its API: two polls, and a second for a slow one. */
const PAGE_LAG = 2 * POLL_MS + 1_000
/** The failover bound of test/fog-cluster.test.ts (shards move within it after the lease expires), and the page's lag. */
const SHOWN_WITHIN = LEASE_TTL + 5_000 + PAGE_LAG
/** How the console labels shards that no coordinator owns. */
const UNASSIGNED = '(unassigned)'

/** The cluster as the page shows it, or as the API gives it: leader, map version, shard numbers by owner. */
interface ClusterView { leader: string | null, version: string | null, status: string | null, owners: Record<string, number[]> }

/** "0-2, 7" → [0, 1, 2, 7] */
function shardList (text: string): number[] {
  return text.split(',').map(r => r.trim()).filter(r => r !== '').flatMap(r => {
    const [from, to = from] = r.split('-').map(Number)
    return Array.from({ length: to - from + 1 }, (_, i) => from + i)
  })
}

/** What the mesh view shows: the fog summary, and the shard owners table (count and shard ranges per row). */
async function shown (page: Page): Promise<ClusterView & { counts: Record<string, number>, visible: boolean }> {
  const raw = await inPage<{ fog: Record<string, string | null>, rows: Array<[string, string, string]>, visible: boolean }>(page, `(() => {
    const fog = f => document.querySelector('#fog-summary [data-fog="' + f + '"] b')?.textContent ?? null
    return {
      fog: { leader: fog('leader'), version: fog('version'), status: fog('status') },
      rows: [...document.querySelectorAll('#shard-owners tbody tr')].map(tr => [tr.dataset.key, tr.children[2].textContent, tr.children[3].textContent]),
      visible: !document.getElementById('view-mesh').hidden && !document.getElementById('fog-summary').hidden && !document.getElementById('shard-owners').hidden
    }
  })()`)
  return {
    leader: raw.fog.leader,
    version: raw.fog.version,
    status: raw.fog.status,
    owners: Object.fromEntries(raw.rows.map(([id, , shards]) => [id, shardList(shards)])),
    counts: Object.fromEntries(raw.rows.map(([id, n]) => [id, Number(n)])),
    visible: raw.visible
  }
}

/** What the coordinator at `base` answers: `fog` of GET /v1/mesh, and GET /v1/shards by owner (every member, even with none). */
async function served (base: string): Promise<ClusterView> {
  const [mesh, shards] = await Promise.all([fetchJson(`${base}/v1/mesh`), fetchJson(`${base}/v1/shards`)])
  const fog = mesh.body.fog as { leader: string | null, shardMapVersion: number, status: string }
  const map = shards.body as ShardMapView
  const owners: Record<string, number[]> = Object.fromEntries(map.members.map(m => [m.id, []]))
  map.owners.forEach((o, s) => { (owners[o ?? UNASSIGNED] ??= []).push(s) })
  return { leader: fog.leader, version: `v${fog.shardMapVersion}`, status: fog.status, owners }
}

interface Agreement {
  page: ClusterView
  api: ClusterView
  /** ms from the call until the page showed what the API answered (or gave up). */
  ms: number
  /** ms from the API first answering that to the page showing it. */
  lag: number
  counts: Record<string, number>
  visible: boolean
}

/**
 * Polls until the page shows what the API answers (and `accept` holds for that answer), within `timeoutMs`;
 * returns both as last seen, equal or not.
 */
async function agreement (page: Page, base: string, timeoutMs: number, accept: (api: ClusterView) => boolean = () => true): Promise<Agreement> {
  const since = Date.now()
  const firstServed = new Map<string, number>()
  let last: Agreement = { page: {} as ClusterView, api: {} as ClusterView, ms: 0, lag: 0, counts: {}, visible: false }
  await waitFor(async () => {
    const api = await served(base)
    const at = Date.now()
    const key = JSON.stringify(api)
    if (!firstServed.has(key)) firstServed.set(key, at)
    const { counts, visible, ...view } = await shown(page)
    last = { page: view, api, ms: at - since, lag: at - firstServed.get(key)!, counts, visible }
    return accept(api) && isDeepStrictEqual(view, api)
  }, { timeoutMs, intervalMs: 100, message: 'the page showing what the API answers' }).catch(() => {})
  return last
}

t.test('a coordinator\'s console: leader, shard map and owners as the API gives them, before and after the leader is SIGKILLed', { timeout: 90_000 }, async t => {
  const c = await startCluster(t)
  const leader = (await c.map()).leader!
  const watched = ['f1', 'f2', 'f3'].find(id => id !== leader)!
  const base = c.fogs.get(watched)!.http
  const origin = new URL(base).origin
  const b = await startBrowser()
  t.teardown(b.close)
  const { page, errors } = await openConsole(b, `${origin}/`)

  const before = await agreement(page, base, 10_000)
  t.same(before.page, before.api, `${watched}'s page shows leader, map version and owners as its API gives them`)
  t.ok(before.visible, 'on the mesh view, summary and owners table visible')
  t.equal(before.page.leader, leader, `the leader: ${leader}`)
  t.same(Object.keys(before.page.owners).sort(), ['f1', 'f2', 'f3'], 'a row per coordinator')
  t.same(Object.values(before.page.owners).flat().sort((x, y) => x - y), Array.from({ length: 64 }, (_, i) => i), 'the 64 shards, each once')
  t.same(before.counts, Object.fromEntries(Object.entries(before.page.owners).map(([id, s]) => [id, s.length])), 'each row\'s count is its number of shards')

  c.fogs.get(leader)!.kill('SIGKILL')
  c.fogs.delete(leader)
  const survivors = [...c.fogs.keys()].sort()
  const after = await agreement(page, base, SHOWN_WITHIN, api => api.leader !== leader && !(leader in api.owners) && !(UNASSIGNED in api.owners) && api.status === 'ok')
  t.same(after.page, after.api, `after the leader ${leader} was SIGKILLed, the page shows what ${watched}'s API answers`)
  t.ok(after.ms < SHOWN_WITHIN, `shown ${after.ms} ms after the kill (lease TTL ${LEASE_TTL} ms, bound ${SHOWN_WITHIN} ms)`)
  t.ok(after.lag < PAGE_LAG, `the page ${after.lag} ms behind the API (bound ${PAGE_LAG} ms)`)
  t.ok(survivors.includes(after.page.leader!), `a new leader: ${after.page.leader}`)
  t.ok(Number(after.page.version?.slice(1)) > Number(before.page.version?.slice(1)), `a new map version: ${before.page.version} → ${after.page.version}`)
  t.same(Object.keys(after.page.owners).sort(), survivors, 'rows for the survivors only')
  t.same(Object.values(after.page.owners).map(s => s.length), [32, 32], 'the shards split between them')
  t.same(after.counts, Object.fromEntries(Object.entries(after.page.owners).map(([id, s]) => [id, s.length])), 'each row\'s count is its number of shards')

  t.same(errors, [], 'no script errors')
  t.same(foreign(b.requests, origin), [], 'every request went to the coordinator itself')
  t.ok(b.requests.some(u => new URL(u).pathname === '/v1/shards'), 'the page read the shard map')
})

import t from 'tap'
import type { Contribution, PipelineDef } from '../core/upstream/batch.ts'
import { ContributionStore } from '../server/merge/contribution-store.ts'
import type { BatchWrite, MergeWindow } from '../server/merge/contribution-store.ts'
import { tmpDir } from './helpers/process.ts'

const def: PipelineDef = { name: 'p', version: 1, window: 'tumbling', selects: [{ name: 'd', fn: 'distinct', params: [] }] }

function window (key: string, start: number, contributions: Contribution[] = []): MergeWindow {
  return { pipeline: 'p', key, start, end: start + 10, firstSeen: 1, finalRevision: null, finalAt: null, dirty: false, upstreamFinal: false, contributions: new Map(contributions.map(c => [c.edge, c])) }
}

function write (w: MergeWindow, over: Partial<BatchWrite> = {}): BatchWrite {
  return { pipelines: [], windows: [w], contributions: [...w.contributions.values()].map(contribution => ({ window: w, contribution })), watermarks: [], seen: [], ...over }
}

t.test('contributions, watermarks and definitions survive a reopen; a revision never goes back', async t => {
  const dir = await tmpDir('fogmesh-contributions-')
  t.teardown(() => dir.cleanup())
  let store = new ContributionStore({ dataDir: dir.path })
  const states = [new Uint8Array([14, 1, 200]), ['a', 'b'], 1.5, null]
  const w = window('k', 0, [{ edge: 'e1', revision: 2, states }])
  store.write(write(w, { pipelines: [def], watermarks: [{ pipeline: 'p', edge: 'e1', watermark: 5, lastSeen: 100 }] }))
  store.write(write(window('k', 0, [{ edge: 'e1', revision: 1, states: ['older'] }])))
  store.write({ pipelines: [], windows: [], contributions: [], watermarks: [{ pipeline: 'p', edge: 'e1', watermark: 3, lastSeen: 200 }], seen: [{ edge: 'e1', at: 300 }] })
  store.close()

  store = new ContributionStore({ dataDir: dir.path })
  t.teardown(() => store.close())
  t.same(store.pipelines(), [def])
  t.same(store.watermarks(), [{ pipeline: 'p', edge: 'e1', watermark: 5, lastSeen: 300 }], 'a watermark never moves back')
  const got = store.window('p', 'k', 0, 10)
  t.same(got?.contributions.get('e1'), { edge: 'e1', revision: 2, states }, 'the higher revision, states as they came')
  t.same(store.pendingWindows().map(p => p.key), ['k'])
  t.equal(store.window('p', 'k', 0, 11), undefined)
})

t.test('final windows leave the pending set; pruning removes old and excess final windows only', async t => {
  const store = new ContributionStore({})
  t.teardown(() => store.close())
  const ws = [0, 10, 20, 30].map(start => window('k', start, [{ edge: 'e1', revision: 0, states: [['x']] }]))
  for (const w of ws) store.write(write(w))
  store.markFinal([{ window: ws[0], revision: 0 }, { window: ws[1], revision: 0 }], 1_000)
  store.markFinal([{ window: ws[2], revision: 3 }], 5_000)
  t.same(store.pendingWindows().map(w => w.start), [30])
  t.same(store.window('p', 'k', 20, 30)?.finalRevision, 3)

  // A final window changed since: pending again, and never pruned until finalized.
  store.write(write({ ...ws[0], dirty: true }, { contributions: [] }))
  t.same(store.pendingWindows().map(w => w.start).sort(), [0, 30])
  t.equal(store.prune(2_000, 100), 1, 'the clean window finalized before the horizon')
  t.equal(store.window('p', 'k', 10, 20), undefined)
  t.equal(store.prune(10_000, 0), 1, 'the per-pipeline bound: final, clean windows go')
  t.same([0, 10, 20, 30].map(s => store.window('p', 'k', s, s + 10) !== undefined), [true, false, false, true])
})

t.test('finalBefore lists what the retention removes (by finalization time); remove drops windows whole', async t => {
  const store = new ContributionStore({})
  t.teardown(() => store.close())
  const ws = [0, 10, 20].map(start => window('k', start, [{ edge: 'e1', revision: 0, states: [['x']] }]))
  for (const w of ws) store.write(write(w))
  store.markFinal([{ window: ws[0], revision: 0 }], 1_000)
  store.markFinal([{ window: ws[1], revision: 0 }], 5_000)
  t.same(store.finalBefore(2_000, 10), [{ pipeline: 'p', key: 'k', start: 0, end: 10 }], 'final before the horizon; not the later one, not the open one')
  t.same(store.finalBefore(9_000, 1).length, 1, 'at most limit')
  store.remove([ws[0], ws[2]])
  t.same([0, 10, 20].map(s => store.window('p', 'k', s, s + 10) !== undefined), [false, true, false])
  t.same(store.pendingWindows(), [], 'the open window went too')
})

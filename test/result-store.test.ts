import t from 'tap'
import { ResultStore } from '../server/shell/result-store.ts'
import type { WindowResult } from '../server/shell/results.ts'
import { tmpDir } from './helpers/process.ts'

const all = { from: -Infinity, to: Infinity, limit: 10_000 }

function result (key: string, start: number, revision = 0, n = 1): WindowResult {
  return { pipeline: 'p', key, start, end: start + 10, final: true, revision, sources: 1, values: { n } }
}

t.test('results come back sorted by start then key, filtered and limited', async t => {
  const store = new ResultStore({ retention: 60_000, maxResultsPerPipeline: 100 })
  t.teardown(() => store.close())
  for (const [key, start] of [['b', 20], ['a', 20], ['c', 10], ['a', 0]] as const) store.put(result(key, start))
  t.same(store.query('p', all).map(r => `${r.key}@${r.start}`), ['a@0', 'c@10', 'a@20', 'b@20'])
  t.same(store.query('p', { ...all, key: 'a' }).map(r => r.start), [0, 20])
  t.same(store.query('p', { ...all, from: 10, to: 20 }).map(r => r.key), ['c'], 'from <= start < to')
  t.same(store.query('p', { ...all, limit: 2 }).length, 2)
  t.same(store.query('other', all), [])
})

t.test('a newer revision replaces an older one, never the other way round', async t => {
  const store = new ResultStore({ retention: 60_000, maxResultsPerPipeline: 100 })
  t.teardown(() => store.close())
  store.put(result('a', 0, 1, 5))
  store.put(result('a', 0, 0, 4))
  store.flush()
  t.same(store.query('p', all).map(r => [r.revision, r.values.n]), [[1, 5]])
  store.put(result('a', 0, 2, 6))
  t.same(store.query('p', all).map(r => [r.revision, r.values.n]), [[2, 6]])
})

t.test('retention and the per-pipeline bound keep the store bounded', async t => {
  const store = new ResultStore({ retention: 1_000, maxResultsPerPipeline: 3 })
  t.teardown(() => store.close())
  for (let i = 0; i < 5; i++) store.put(result('k', i * 10))
  t.equal(store.prune(Date.now()), 2, 'the two oldest windows go beyond the bound')
  t.same(store.query('p', all).map(r => r.start), [20, 30, 40])
  t.equal(store.prune(Date.now() + 2_000), 3, 'everything stored longer ago than retention goes')
  t.same(store.query('p', all), [])
})

t.test('results are durable in the data directory', async t => {
  const dir = await tmpDir('fogmesh-store-')
  t.teardown(() => dir.cleanup())
  const first = new ResultStore({ dataDir: dir.path, retention: 60_000, maxResultsPerPipeline: 100 })
  first.put(result('a', 0))
  first.close()
  const second = new ResultStore({ dataDir: dir.path, retention: 60_000, maxResultsPerPipeline: 100 })
  t.teardown(() => second.close())
  t.same(second.query('p', all), [result('a', 0)])
})

t.test('the change log numbers what each flush committed, across restarts, and never reuses a position', async t => {
  const dir = await tmpDir('fogmesh-store-log-')
  t.teardown(() => dir.cleanup())
  const first = new ResultStore({ dataDir: dir.path, retention: 60_000, maxResultsPerPipeline: 100, changeLog: true })
  t.equal(first.lastChange, 0)
  first.put(result('a', 0))
  first.put(result('b', 0, 1))
  t.equal(first.lastChange, 0, 'queued results are not in the log')
  first.flush()
  first.put(result('b', 0, 0)) // an older revision changes nothing, so it is not logged
  first.put(result('a', 0, 1))
  first.flush()
  const changes = first.changesSince(0)
  t.same(changes.map(c => [c.seq, c.key, c.revision]), [[1, 'a', 0], [2, 'b', 1], [3, 'a', 1]])
  t.same(first.changesSince(2).map(c => c.seq), [3])
  t.equal(first.revisionOf('p', 'a', 0, 10), 1)
  t.equal(first.revisionOf('p', 'c', 0, 10), undefined)
  first.trimChanges(3)
  t.same(first.changesSince(0), [])
  first.close()
  const second = new ResultStore({ dataDir: dir.path, retention: 60_000, maxResultsPerPipeline: 100, changeLog: true })
  t.teardown(() => second.close())
  t.equal(second.lastChange, 3, 'the position survives a restart, and the trim')
  second.put(result('c', 0))
  second.flush()
  t.same(second.changesSince(0).map(c => [c.seq, c.key]), [[4, 'c']])
})

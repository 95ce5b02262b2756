/**
 * A fog cluster member's mirror of etcd (fog-coordinator/cluster-mirror.ts) fed a scripted history by a
 * fake etcd client: what it forwards and hands to the sinks when the watch brings "to forward" marks
 * and hand-offs. Above all the commit of final windows that etcd took but never answered (its deadline
 * passed): the pass failed, the window became final only through the watch, and nothing but the mirror
 * can still forward it to the cloud.
 */
import { EventEmitter } from 'node:events'
import type { Etcd3 } from 'etcd3'
import t from 'tap'
import type { Test } from 'tap'
import { shardOf } from '../core/upstream/shards.ts'
import type { ShardMap } from '../core/upstream/shards.ts'
import { ClusterLayout, encodeHandoff, encodeWindow } from '../fog-coordinator/cluster-layout.ts'
import type { WindowRef } from '../fog-coordinator/cluster-layout.ts'
import { ClusterMirror } from '../fog-coordinator/cluster-mirror.ts'
import type { Handoff } from '../fog-coordinator/cluster-mirror.ts'
import type { ClusterSink } from '../fog-coordinator/cluster.ts'
import type { ReplicatedChange } from '../server/merge/replication.ts'
import { silentLogger } from '../server/shell/log.ts'
import { waitFor } from './helpers/process.ts'

const layout = new ClusterLayout('/fogmesh/')
const SHARDS = 4
const PIPELINE = 'sessions'
const START = Date.UTC(2026, 0, 1)

type Put = [string, string | Buffer]

/**
 * A fake etcd: `kvs` for a load (the test may change them, and `rev`), then a watcher the test pushes
 * events into, or breaks as etcd does when the watch's start revision was compacted away.
 */
function fakeEtcd (state: { kvs: Put[], rev: number }): { client: Etcd3, push: (puts: Put[], rev: number) => void, compacted: () => void } {
  let watcher = Object.assign(new EventEmitter(), { cancel: async () => {} })
  const kv = ([k, v]: Put, r: number) => ({ key: Buffer.from(k), value: Buffer.from(v), mod_revision: String(r) })
  const query = { inRange: () => query, limit: () => query, revision: () => query, exec: async () => ({ header: { revision: String(state.rev) }, kvs: state.kvs.map(p => kv(p, state.rev)), more: false }) }
  const watch = {
    prefix: () => watch,
    startRevision: () => watch,
    create: async () => (watcher = Object.assign(new EventEmitter(), { cancel: async () => {} }))
  }
  const client = { getAll: () => query, watch: () => watch } as unknown as Etcd3
  return {
    client,
    push: (puts, r) => { watcher.emit('data', { events: puts.map(p => ({ type: 'Put', kv: kv(p, r) })) }) },
    compacted: () => { watcher.emit('error', new Error('etcdserver: mvcc: required revision has been compacted')) }
  }
}

/** A key of PIPELINE whose shard `owner` owns in `map`. */
function keyOf (map: ShardMap, owner: string, not = ''): string {
  for (let i = 0; ; i++) if (`d${i}` !== not && map.owners[shardOf(PIPELINE, `d${i}`, SHARDS)] === owner) return `d${i}`
}

/** What committing the final window of `key` (a session, one edge) writes: the record, its mark, a hand-off. */
function finalCommit (key: string, pass: string): { ref: WindowRef, puts: Put[] } {
  const ref = { pipeline: PIPELINE, key, start: START + 1_234, end: START + 4_321 }
  const record = encodeWindow({
    ...ref, firstSeen: START, finalRevision: 0, finalAt: START + 9_000, dirty: false, upstreamFinal: false,
    contributions: new Map([['e1', { edge: 'e1', revision: 0, states: [3] }]])
  })
  const result = { ...ref, final: true, revision: 0, sources: 1, values: { n: 3 } }
  return { ref, puts: [[layout.window(ref), record], [layout.mark(ref), '0'], [layout.handoff(shardOf(PIPELINE, key, SHARDS), pass), encodeHandoff([result])]] }
}

async function mirrorOf (t: Test, id: string, map: ShardMap): Promise<{
  mirror: ClusterMirror, push: (puts: Put[], rev: number) => void, compacted: () => void, etcd: { kvs: Put[], rev: number },
  forwarded: WindowRef[][], handed: Handoff[][], applied: ReplicatedChange[]
}> {
  const etcd = { kvs: [[layout.shardMap, JSON.stringify(map)]] as Put[], rev: 10 }
  const { client, push, compacted } = fakeEtcd(etcd)
  const forwarded: WindowRef[][] = []
  const handed: Handoff[][] = []
  const applied: ReplicatedChange[] = []
  const mirror = new ClusterMirror({
    id,
    client,
    layout,
    log: silentLogger,
    joined: () => true,
    membershipChanged: () => {},
    selfMissing: () => {},
    handedOver: h => { handed.push(h) }
  })
  const sink: ClusterSink = {
    apply: change => { applied.push(change) },
    // The window is final at the node by then: the fog reads it from there to forward it.
    toForward: windows => { t.ok(applied.length > 0, 'the final window was applied before it is forwarded'); forwarded.push(windows.map(w => w.ref)) },
    expired: () => [],
    removed: () => {},
    deployed: () => {}
  }
  mirror.sendTo(sink)
  await mirror.load()
  t.teardown(() => mirror.stop())
  return { mirror, push, compacted, etcd, forwarded, handed, applied }
}

const MAP: ShardMap = {
  version: 1,
  shards: SHARDS,
  owners: ['f1', 'f2', 'f1', 'f2'],
  members: [{ id: 'f1', http: 'http://f1' }, { id: 'f2', http: 'http://f2' }],
  leader: 'f1'
}

t.test('a final commit etcd took but did not answer: the owner forwards the window and hands its results to the sinks when the watch brings it', async t => {
  const m = await mirrorOf(t, 'f1', MAP)
  const { ref, puts } = finalCommit(keyOf(MAP, 'f1'), 'f1.1.a.1')
  // The pass committed it and etcd took it, but the answer never came: the pass failed (503
  // no_quorum), so nothing of it was recorded as committed here, and the window stays pending at the node.
  m.push(puts, 11)
  t.same(m.applied.map(c => c.windows.map(w => w.finalRevision)), [[0]], 'the window became final through the watch')
  t.same(m.forwarded, [[ref]], 'the window goes to the cloud after all')
  t.same(m.handed.map(h => h.map(x => x.key)), [[puts[2][0]]], 'and its results to the sinks')
})

t.test('the watch brings an unanswered commit before its deadline passes: taken over once the commit fails', async t => {
  const m = await mirrorOf(t, 'f1', MAP)
  const { ref, puts } = finalCommit(keyOf(MAP, 'f1'), 'f1.1.a.1')
  m.mirror.committing(puts)
  m.push(puts, 11)
  t.same(m.forwarded, [], 'not while the commit may still be answered (its pass forwards it then)')
  t.same(m.handed, [])
  m.mirror.uncommitted(puts)
  t.same(m.forwarded, [[ref]], 'forwarded once the commit failed')
  t.same(m.handed.length, 1)
  m.push(puts, 11)
  t.same(m.forwarded.length, 1, 'an event seen before changes nothing')
})

t.test('a commit answered: the pass forwards its windows, the mirror does not, whenever the watch brings it', async t => {
  const m = await mirrorOf(t, 'f1', MAP)
  const first = finalCommit(keyOf(MAP, 'f1'), 'f1.1.a.1')
  // The usual order: the answer, then the echo.
  m.mirror.committing(first.puts)
  m.mirror.committed(first.puts, 11)
  m.push(first.puts, 11)
  // The echo before the answer.
  const second = finalCommit(keyOf(MAP, 'f1', first.ref.key), 'f1.1.a.2')
  m.mirror.committing(second.puts)
  m.push(second.puts, 12)
  m.mirror.committed(second.puts, 12)
  t.same(m.forwarded, [], 'nothing forwarded twice')
  t.same(m.handed, [], 'nothing handed to the sinks twice')
})

t.test('another owner\'s final windows are its own to forward, until this coordinator takes its shard over', async t => {
  const m = await mirrorOf(t, 'f1', MAP)
  const { ref, puts } = finalCommit(keyOf(MAP, 'f2'), 'f2.1.b.1')
  m.push(puts, 11)
  t.same(m.forwarded, [], 'f2 owns the shard: f2 forwards it')
  t.same(m.handed, [])
  // f2 goes: its shards come to f1, with what f2 had not forwarded yet (once, in the same batch as its last commit too).
  m.push([[layout.shardMap, JSON.stringify({ ...MAP, version: 2, owners: ['f1', 'f1', 'f1', 'f1'], members: [MAP.members[0]] })]], 12)
  t.same(m.forwarded, [[ref]], 'taken over with the shard')
  t.equal(m.handed.length, 1)
})

t.test('an unanswered commit of a shard lost meanwhile: the new owner forwards it, not this coordinator', async t => {
  const m = await mirrorOf(t, 'f1', MAP)
  const { puts } = finalCommit(keyOf(MAP, 'f1'), 'f1.1.a.1')
  m.mirror.committing(puts)
  m.mirror.uncommitted(puts)
  // Cut off from etcd, f1 lost its shards after etcd took the commit; healed, the watch brings both at once.
  const moved: Put = [layout.shardMap, JSON.stringify({ ...MAP, version: 2, owners: ['f2', 'f2', 'f2', 'f2'], members: [MAP.members[1]] })]
  m.push([...puts, moved], 11)
  t.same(m.forwarded, [], 'f2 owns it now')
  t.same(m.handed, [])
})

t.test('the watch\'s history compacted away before it brought an unanswered commit: the reload takes it over', async t => {
  const m = await mirrorOf(t, 'f1', MAP)
  const kept = finalCommit(keyOf(MAP, 'f1'), 'f1.1.a.1')
  const answered = finalCommit(keyOf(MAP, 'f1', kept.ref.key), 'f1.1.a.2')
  m.mirror.committing(answered.puts)
  m.mirror.committed(answered.puts, 11)
  // etcd took f1's next commit, never answered it, and compacted the history the watch would resume from.
  m.etcd.kvs.push(...answered.puts, ...kept.puts)
  m.etcd.rev = 12
  m.compacted()
  await waitFor(() => m.forwarded.length > 0 ? m.forwarded : undefined, { timeoutMs: 2_000, message: 'the window forwarded after the reload' })
  t.same(m.forwarded, [[kept.ref]], 'the window of the unanswered commit, not the one its pass forwarded')
  t.same(m.handed.map(h => h.map(x => x.key)), [[kept.puts[2][0]]], 'and its results to the sinks')
})

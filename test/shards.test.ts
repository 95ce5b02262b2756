/**
 * Virtual shards (core/upstream/shards.ts): the shard of a key is part of the wire contract, the
 * assignment of shards to coordinators is balanced and moves little, and maps off the wire are checked.
 */
import t from 'tap'
import type { Test } from 'tap'
import { WireError } from '../core/errors.ts'
import { DEFAULT_SHARDS, assignShards, ownerOf, parseShardMap, shardOf } from '../core/upstream/shards.ts'

function counts (owners: ReadonlyArray<string | null>): Map<string | null, number> {
  const m = new Map<string | null, number>()
  for (const o of owners) m.set(o, (m.get(o) ?? 0) + 1)
  return m
}

function moves (before: ReadonlyArray<string | null>, after: ReadonlyArray<string | null>): number[] {
  return after.flatMap((o, s) => o === before[s] ? [] : [s])
}

/** Every member has ⌊shards/n⌋ or ⌈shards/n⌉ shards, and no shard is unowned. */
function balanced (t: Test, owners: ReadonlyArray<string | null>, members: string[], shards: number): void {
  const c = counts(owners)
  const lo = Math.floor(shards / members.length)
  const hi = Math.ceil(shards / members.length)
  t.equal(owners.length, shards)
  t.notOk(c.has(null), 'every shard has an owner')
  for (const m of members) {
    const n = c.get(m) ?? 0
    t.ok(n === lo || n === hi, `${m} has ${n} of ${shards} shards (${lo} or ${hi})`)
  }
}

t.test('shardOf is xxh32(pipeline NUL key) mod shards: fixed by the wire contract', async t => {
  // Computed with a reference XXH32 (seed 0) over the UTF-8 bytes, independently of xxhash-wasm.
  t.equal(shardOf('p', 'k', 64), 43)
  t.equal(shardOf('temps', 'sensor-1', 64), 32)
  t.equal(shardOf('p', 'ключ', 64), 51)
  t.equal(shardOf('p', 'k', 1_000_003), 124_236)
  t.equal(shardOf('p', 'k', 64), shardOf('p', 'k', 64), 'stable')
  t.not(shardOf('a', 'bc', 1_000_003), shardOf('ab', 'c', 1_000_003), 'the separator keeps pipeline and key apart')
})

t.test('shardOf spreads 10k keys evenly over 64 shards', async t => {
  const per = new Array<number>(DEFAULT_SHARDS).fill(0)
  const n = 10_000
  for (let i = 0; i < n; i++) per[shardOf('temps', `sensor-${i}`, DEFAULT_SHARDS)]++
  // 156.25 expected per shard, standard deviation about 12.4: these bounds are about 4.5 of them.
  t.ok(Math.min(...per) >= 100, `fullest and emptiest: ${Math.max(...per)}, ${Math.min(...per)}`)
  t.ok(Math.max(...per) <= 215)
  const chi2 = per.reduce((sum, c) => sum + (c - n / DEFAULT_SHARDS) ** 2 / (n / DEFAULT_SHARDS), 0)
  // 63 degrees of freedom: above 110 has a probability under 0.02 %.
  t.ok(chi2 < 110, `chi² ${chi2.toFixed(1)}`)
})

t.test('assignShards: balanced for any number of members', async t => {
  for (const shards of [1, 7, 64, 100]) {
    for (let n = 1; n <= 10; n++) {
      const members = Array.from({ length: n }, (_, i) => `m${i}`)
      const owners = assignShards([], members, shards)
      t.equal(owners.filter(o => o === null).length, 0, `${shards} shards over ${n}: none unowned`)
      const c = counts(owners)
      for (const m of members) {
        const k = c.get(m) ?? 0
        if (k !== Math.floor(shards / n) && k !== Math.ceil(shards / n)) t.fail(`${shards} shards over ${n}: ${m} has ${k}`)
      }
    }
  }
  t.same(assignShards(['a', 'b'], [], 2), [null, null], 'no member: nothing owned')
})

t.test('assignShards is deterministic, whatever the order of the members', async t => {
  const members = ['c', 'a', 'd', 'b']
  const first = assignShards([], members, 64)
  t.same(assignShards([], members, 64), first)
  t.same(assignShards([], ['a', 'b', 'c', 'd'], 64), first)
  t.same(assignShards([], [...members, 'a'], 64), first, 'a member listed twice counts once')
  t.same(assignShards(first, members, 64), first, 'a balanced map stays as it is')
})

t.test('assignShards: a member leaving moves only its shards', async t => {
  const before = assignShards([], ['a', 'b', 'c', 'd'], 64)
  const after = assignShards(before, ['a', 'b', 'd'], 64)
  balanced(t, after, ['a', 'b', 'd'], 64)
  const moved = moves(before, after)
  t.same(moved, before.flatMap((o, s) => o === 'c' ? [s] : []), 'exactly the shards of the member gone')
  t.equal(moved.length, 16)
})

t.test('assignShards: a member joining takes about shards/n, from the others\' surplus only', async t => {
  const before = assignShards([], ['a', 'b', 'c'], 64)
  const after = assignShards(before, ['a', 'b', 'c', 'd'], 64)
  balanced(t, after, ['a', 'b', 'c', 'd'], 64)
  const moved = moves(before, after)
  t.equal(moved.length, 16, '64/4 shards move')
  t.ok(moved.every(s => after[s] === 'd'), 'all of them to the new member')
  // 22, 21, 21 before: 6, 5 and 5 given up.
  const given = counts(moved.map(s => before[s]))
  t.same([...given.values()].sort(), [5, 5, 6])
})

t.test('assignShards: orphaned and unassigned shards are given out, owned ones stay', async t => {
  const previous: Array<string | null> = Array.from({ length: 8 }, (_, s) => s < 4 ? 'a' : s < 6 ? 'gone' : null)
  const after = assignShards(previous, ['a', 'b'], 8)
  balanced(t, after, ['a', 'b'], 8)
  t.same(after.slice(0, 4), ['a', 'a', 'a', 'a'], 'a keeps what it had, up to its share')
  t.same(after.slice(4), ['b', 'b', 'b', 'b'])
  const shrunk = assignShards(['a', 'a', 'a', 'a', 'a', 'a', 'b', 'b'], ['a', 'b'], 8)
  t.equal(moves(['a', 'a', 'a', 'a', 'a', 'a', 'b', 'b'], shrunk).length, 2, 'a surplus of 2 moves 2')
})

const valid = {
  version: 3,
  shards: 4,
  owners: ['a', 'b', null, 'a'],
  members: [{ id: 'a', http: 'http://10.0.0.1:7100' }, { id: 'b', http: 'https://fog-b.example' }],
  leader: 'a',
  status: 'ok'
}

t.test('parseShardMap takes a valid map', async t => {
  t.same(parseShardMap(valid), valid)
  const { status: _status, leader: _leader, ...bare } = valid
  t.match(parseShardMap(bare), { status: 'ok', leader: null }, 'status and leader default')
  t.same(parseShardMap({ version: 0, shards: 0, owners: [], members: [], leader: null, status: 'embedded' }).shards, 0)
  const map = parseShardMap(valid)
  t.equal(ownerOf(map, 'p', 'k')?.id, map.owners[shardOf('p', 'k', 4)] ?? undefined)
  t.equal(ownerOf({ ...map, shards: 0, owners: [] }, 'p', 'k'), undefined, 'no cluster: no owner')
})

t.test('parseShardMap rejects malformed maps with a WireError', async t => {
  const cases: Array<[string, unknown]> = [
    ['null', null],
    ['an array', [valid]],
    ['a string', 'v3'],
    ['a negative version', { ...valid, version: -1 }],
    ['a fractional version', { ...valid, version: 1.5 }],
    ['a version as a string', { ...valid, version: '3' }],
    ['shards missing', { ...valid, shards: undefined }],
    ['too many shards', { ...valid, shards: 70_000, owners: new Array(70_000).fill(null) }],
    ['too few owners', { ...valid, owners: ['a', 'b', null] }],
    ['owners not a list', { ...valid, owners: 'a,b' }],
    ['members not a list', { ...valid, members: { a: 'http://x' } }],
    ['a member without http', { ...valid, members: [{ id: 'a' }, { id: 'b', http: 'http://x' }] }],
    ['a member with a non-http URL', { ...valid, members: [{ id: 'a', http: 'ftp://x' }, { id: 'b', http: 'http://x' }] }],
    ['a member that is null', { ...valid, members: [null, ...valid.members] }],
    ['an owner not a member', { ...valid, owners: ['a', 'b', 'c', 'a'] }],
    ['an owner that is a number', { ...valid, owners: ['a', 'b', 1, 'a'] }],
    ['a leader that is a number', { ...valid, leader: 1 }],
    ['an unknown status', { ...valid, status: 'degraded' }],
    ['a member id twice', { ...valid, members: [...valid.members, { id: 'a', http: 'http://y' }] }],
    ['an empty member id', { ...valid, members: [...valid.members, { id: '', http: 'http://y' }] }],
    ['shards at version 0', { ...valid, version: 0 }]
  ]
  for (const [what, v] of cases) {
    t.throws(() => parseShardMap(v), { name: 'WireError', code: 'wire_malformed' }, what)
  }
  t.throws(() => parseShardMap(null), WireError)
})

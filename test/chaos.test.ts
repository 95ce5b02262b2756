/**
 * The chaos scenario (simulators/chaos.ts) end to end, in-process: a real etcd cluster, three fog
 * coordinators, a cloud and three edges as processes; the leader and a follower killed, a coordinator
 * cut off from etcd, etcd's quorum taken away, all while readings flow. It must pass, and each step
 * must have done what it says: the shard map moved after each fault, the coordinators refused partials
 * without a quorum, the edges failed over meanwhile. Needs etcd (apt-get install etcd-server).
 */
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import t from 'tap'
import { formatReport, runChaos } from '../simulators/chaos.ts'
import type { FailoverTiming } from '../simulators/chaos.ts'
import { fogmeshBin, repoRoot } from './helpers/process.ts'

/** The processes whose parent is this one, with their command lines. */
function children (): string[] {
  const out: string[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (Number(ppid) === process.pid && state !== 'Z') out.push(readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' '))
    } catch {}
  }
  return out
}

t.test('the chaos scenario passes, and every fault did what it says', { timeout: 110_000 }, async t => {
  const lines: string[] = []
  const report = await runChaos({
    seed: 7,
    // Publishing outlasts the kills and the cut; the quorum loss may end after it.
    publishFor: 30_000,
    stepTimeout: 15_000,
    exactWithin: 15_000,
    log: line => lines.push(line)
  })
  const summary = formatReport(report)
  if (report.verdict !== 'pass') t.comment(summary + '\n' + lines.join('\n'))
  t.equal(report.verdict, 'pass', 'the verdict is pass')
  t.same(report.problems, [], 'no problems')
  t.notOk(report.aborted)
  t.ok(report.durationMs < 90_000, `the scenario took ${(report.durationMs / 1000).toFixed(1)} s`)
  t.same(report.steps.map(s => s.name), [
    'start the mesh', 'warm-up', 'kill -9 the leader', 'kill -9 a follower', 'cut a coordinator off from etcd',
    'take etcd\'s quorum away', 'the rest of the run and the tail', 'compare every tier with the ground truth'
  ], 'every step ran, in order')
  t.ok(report.steps.every(s => s.ok), 'every step did what it should')
  for (const s of report.steps.slice(2, 5)) t.ok(s.readingsFlowing, `readings flowed during "${s.name}"`)
  t.ok(lines.some(l => /^\d\d:\d\d:\d\d\.\d{3} \+\s*[\d.]+s step: kill -9 the leader$/.test(l)), 'each step is logged with a timestamp')

  const moved = (what: string, f: FailoverTiming | undefined) => {
    if (f === undefined) return t.fail(`no timing for ${what}`)
    t.ok(f.failoverMs > 0 && f.rejoinMs > 0, `${what}: ${f.victim} out of the map after ${f.failoverMs} ms, back after ${f.rejoinMs} ms`)
    t.equal(f.afterLeaseMs, f.failoverMs - report.leaseTtlMs, `${what}: the time after the lease is the failover time minus the TTL`)
    // The lease was renewed at most a third of the TTL before the fault: it cannot have expired sooner.
    t.ok(f.failoverMs >= report.leaseTtlMs * 2 / 3 - 100, `${what}: not out of the map before its lease could expire`)
    t.ok(f.versionAfter > f.versionBefore, `${what}: the map moved from v${f.versionBefore} to v${f.versionAfter}`)
    t.ok(f.versionRejoined > f.versionAfter, `${what}: and again when ${f.victim} was back (v${f.versionRejoined})`)
  }
  const { leader, follower, partition } = report.failovers
  moved('leader killed', leader)
  t.ok(leader?.wasLeader, 'the leader was killed')
  t.ok(leader?.leaderAfter !== null && leader?.leaderAfter !== leader?.victim, `another coordinator leads: ${leader?.leaderAfter}`)
  moved('follower killed', follower)
  t.notOk(follower?.wasLeader, 'a follower was killed')
  t.equal(follower?.leaderAfter, follower?.leaderBefore, 'the leader stayed')
  moved('cut off', partition)
  t.ok(partition?.victimStatuses?.includes('no_quorum'), `the coordinator cut off said no_quorum (${partition?.victimStatuses?.join(', ')})`)

  const q = report.quorumLoss
  t.ok(q !== undefined, 'the quorum was taken away')
  if (q !== undefined) {
    t.equal(q.killed.length, 2, `two etcd members killed: ${q.killed.join(', ')}`)
    t.same(Object.values(q.partials), ['503 no_quorum', '503 no_quorum', '503 no_quorum'], 'every coordinator refused partials with 503 no_quorum')
    t.ok(Object.values(q.failovers).length === 3 && Object.values(q.failovers).every(n => n > 0), 'every edge failed over to the cloud')
    t.ok(q.cloudEdgeBatches > 0, `the cloud took ${q.cloudEdgeBatches} batches from edges`)
    t.ok(q.recoveredMs > 0 && q.backOnFogMs >= 0, 'the coordinators took partials again, and the edges went back to them')
  }

  t.ok(Object.values(report.readings.perEdge).every(n => n > 0), 'every edge got readings')
  t.ok(report.readings.late > 0 && report.readings.duplicates > 0 && report.readings.malformed > 0, 'late, duplicate and malformed readings among them')
  t.ok(report.readings.windows > 0, `${report.readings.windows} merged windows expected`)
  t.same(Object.keys(report.differences).sort(), ['cloud', 'edge e1', 'edge e2', 'edge e3', 'fog f1', 'fog f2', 'fog f3'], 'every tier was compared')
  for (const [tier, d] of Object.entries(report.differences)) t.same(d, [], `${tier} equals the ground truth`)
  t.ok(report.coordinatorsAgree, 'queries answer the same from every coordinator')
  t.ok((report.etcdDbBytes ?? 0) > 0, `etcd's database: ${report.etcdDbBytes} bytes`)
  t.equal(report.dir, undefined, 'the run dir was not kept')
  t.same(children().filter(c => /fogmesh\.js|etcd/.test(c)), [], 'no node and no etcd member left running')
  t.match(summary, /^fogmesh chaos: (PASS|FAIL) in /)
})

t.test('fogmesh chaos refuses bad options before starting anything', async t => {
  const run = (...args: string[]) => spawnSync(process.execPath, [fogmeshBin, 'chaos', ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 20_000 })
  const bad = run('--lease-ttl', '1500ms')
  t.equal(bad.status, 2, 'exit 2')
  t.match(bad.stderr, /--lease-ttl: expected whole seconds/)
  t.equal(run('--edges', '0').status, 2, '--edges 0: exit 2')
  const help = run('--help')
  t.equal(help.status, 0)
  t.match(help.stdout, /--keep DIR/)
})

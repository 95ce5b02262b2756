/** What `fogmesh chaos` (simulators/chaos.ts) reports: the types, and the summary printed for people. */

/** A coordinator lost (killed or cut off) and back. */
export interface FailoverTiming {
  victim: string
  wasLeader: boolean
  leaderBefore: string | null
  leaderAfter: string | null
  /** The map version every coordinator held before the fault, and the first one the survivors held without the victim. */
  versionBefore: number
  versionAfter: number
  /** ms from the fault until every survivor's GET /v1/shards showed a map without the victim. */
  failoverMs: number
  /**
   * failoverMs minus the lease TTL: how long after the victim's lease could have expired. Below 0 when
   * the lease was last renewed before the fault (the client renews it every third of the TTL).
   */
  afterLeaseMs: number
  /** ms from the restart (or heal) until every coordinator served one map with all of them, status ok. */
  rejoinMs: number
  versionRejoined: number
  /** Statuses the victim itself reported while cut off (partition only). */
  victimStatuses?: string[]
}

export interface QuorumLossReport {
  /** The etcd members killed. */
  killed: string[]
  /** ms from the kill until every coordinator's GET /v1/shards said no_quorum. */
  noQuorumMs: number
  /** What each coordinator answered to a POST /v1/partials meanwhile (`503 no_quorum` expected). */
  partials: Record<string, string>
  /** ms from the kill until every edge had failed over to the cloud. */
  failedOverMs: number
  /** Per edge, how much fogmesh_failovers_total grew during the step. */
  failovers: Record<string, number>
  /** How much the cloud's fogmesh_batches_received_total{role="edge"} grew during the step. */
  cloudEdgeBatches: number
  /** ms from restarting the members until every coordinator served status ok with every member. */
  recoveredMs: number
  /** ms from then until every edge sent to the fog again. */
  backOnFogMs: number
}

export interface StepReport {
  name: string
  /** When it began, ms since the run started. */
  at: number
  tookMs: number
  ok: boolean
  detail: string
  /** The main run was still publishing when the step began. */
  readingsFlowing: boolean
}

export interface ChaosReport {
  verdict: 'pass' | 'fail'
  aborted: boolean
  seed: number
  leaseTtlMs: number
  coordinators: string[]
  edges: string[]
  durationMs: number
  /** The run dir, when kept. */
  dir?: string
  steps: StepReport[]
  failovers: { leader?: FailoverTiming, follower?: FailoverTiming, partition?: FailoverTiming }
  quorumLoss?: QuorumLossReport
  /** Every coordinator served the same final results when checked last. */
  coordinatorsAgree?: boolean
  /** What each tier still differed from the truth in when checked last (empty: exact); at most 20 lines each. */
  differences: Record<string, string[]>
  /** ms from the end of the run until every tier was exact (when it was). */
  exactAfterMs?: number
  readings: {
    /** The main run: messages published to each edge, and the kinds of readings in it. */
    perEdge: Record<string, number>
    messages: number
    readings: number
    late: number
    duplicates: number
    malformed: number
    /** Final merged windows the truth expects, over every pipeline. */
    windows: number
  }
  /** Bytes of etcd's database at the end. */
  etcdDbBytes: number | null
  /** Counters at the end, per node. */
  counters: Record<string, Record<string, number>>
  /** Why the verdict is fail (empty on pass). */
  problems: string[]
}

function bytes (n: number): string {
  return n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`
}

/** The report for people: the verdict, what each step did and took, and what differed. */
export function formatReport (r: ChaosReport): string {
  const out: string[] = []
  const verdict = r.aborted ? 'ABORTED' : r.verdict.toUpperCase()
  out.push(`fogmesh chaos: ${verdict} in ${(r.durationMs / 1000).toFixed(1)} s (seed ${r.seed}, lease TTL ${r.leaseTtlMs / 1000} s, ` +
    `coordinators ${r.coordinators.join(', ')}, edges ${r.edges.join(', ')})`, '')
  const width = Math.max(4, ...r.steps.map(s => s.name.length))
  out.push(`  ${'step'.padEnd(width)}   at        took`)
  for (const s of r.steps) {
    out.push(`  ${s.name.padEnd(width)}  ${`+${(s.at / 1000).toFixed(1)} s`.padStart(8)}  ${`${(s.tookMs / 1000).toFixed(1)} s`.padStart(7)}  ${s.ok ? 'ok' : 'FAILED'}${s.readingsFlowing ? '' : '  (no readings flowing)'}`)
    out.push(`  ${''.padEnd(width)}  ${s.detail}`)
  }
  const f = r.failovers
  const timings: Array<[string, FailoverTiming | undefined]> = [['leader killed', f.leader], ['follower killed', f.follower], ['cut off from etcd', f.partition]]
  if (timings.some(([, t]) => t !== undefined)) {
    out.push('', '  failover: until every other coordinator served a shard map without the victim')
    for (const [what, t] of timings) {
      if (t === undefined) continue
      out.push(`    ${`${what} (${t.victim})`.padEnd(28)} ${String(t.failoverMs).padStart(6)} ms  (${t.afterLeaseMs >= 0 ? '+' : ''}${t.afterLeaseMs} ms after the lease TTL), ` +
        `map v${t.versionBefore} → v${t.versionAfter}, back in the map ${t.rejoinMs} ms after the ${what === 'cut off from etcd' ? 'heal' : 'restart'}`)
    }
  }
  const q = r.quorumLoss
  if (q !== undefined) {
    out.push('', `  quorum loss (${q.killed.join(', ')} killed): no_quorum on every coordinator after ${q.noQuorumMs} ms; ` +
      `POST /v1/partials: ${Object.entries(q.partials).map(([id, s]) => `${id} ${s}`).join(', ')}`,
    `    edges failed over after ${q.failedOverMs} ms (${q.cloudEdgeBatches} edge batches at the cloud); quorum back: every coordinator ok after ${q.recoveredMs} ms, ` +
      `edges on the fog again ${q.backOnFogMs} ms later`)
  }
  const n = r.readings
  if (n.messages > 0) {
    out.push('', `  readings: ${n.messages} messages (${n.readings} readings, ${n.late} late, ${n.duplicates} duplicated, ${n.malformed} malformed) to ` +
      `${Object.entries(n.perEdge).map(([e, c]) => `${e} ${c}`).join(', ')}; ${n.windows} merged windows expected`)
  }
  const differing = Object.entries(r.differences).filter(([, d]) => d.length > 0)
  if (r.coordinatorsAgree === false) out.push('  the coordinators answer differently (each should serve the whole replicated state)')
  if (Object.keys(r.differences).length > 0) {
    if (differing.length === 0) {
      out.push(`  results: every coordinator, the cloud and every edge equal the ground truth${r.exactAfterMs === undefined ? '' : ` (${r.exactAfterMs} ms after the run)`}`)
    } else {
      out.push('  results differing from the ground truth:')
      for (const [tier, d] of differing) {
        out.push(`    ${tier}:`)
        for (const line of d) out.push(`      ${line}`)
      }
    }
  }
  if (r.etcdDbBytes !== null) out.push(`  etcd database at the end: ${bytes(r.etcdDbBytes)}`)
  if (r.problems.length > 0) {
    out.push('', '  problems:')
    for (const p of r.problems) out.push(`    ${p}`)
  }
  if (r.dir !== undefined) out.push('', `  kept: ${r.dir} (logs/, report.json, the nodes' data dirs, etcd/)`)
  return out.join('\n') + '\n'
}

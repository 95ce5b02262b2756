/**
 * The edge part's pipeline (bench/run.ts), shared by the parts that run the same workload (soak, peers):
 * readings on sensors/<room>/temperature keyed by device, 10 s tumbling windows with 1 s of lateness,
 * and six aggregates per window. The peers' hand-written subscriber keeps exactly these.
 */

/** The pipelines file of one such pipeline, named `name`. */
export function edgePipelinesYaml (name: string): string {
  return `pipelines:
  - name: ${name}
    from: sensors/+room/temperature
    timestamp: ts
    key: device
    window: { tumbling: 10s }
    lateness: 1s
    select:
      n: count()
      mean: avg(value)
      low: min(value)
      high: max(value)
      p95: percentile(value, 0.95)
      devices: distinct(room)
`
}

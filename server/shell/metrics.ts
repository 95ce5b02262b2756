/**
 * Prometheus metrics. Hot paths count in plain fields of their own stats objects; metrics read those at
 * scrape time (collect callbacks), so the per-reading path never touches a label map.
 */
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client'

export type Sample = [labels: Record<string, string>, value: number]

export class Metrics {
  readonly registry = new Registry()

  constructor () {
    collectDefaultMetrics({ register: this.registry, prefix: 'fogmesh_' })
  }

  /** A counter whose samples are read from `read()` at scrape time. */
  counter (name: string, help: string, labelNames: string[], read: () => Iterable<Sample>): void {
    const counter = new Counter({
      name,
      help,
      labelNames,
      registers: [this.registry],
      collect () {
        counter.reset()
        for (const [labels, value] of read()) counter.inc(labels, value)
      }
    })
  }

  gauge (name: string, help: string, labelNames: string[], read: () => Iterable<Sample>): void {
    const gauge = new Gauge({
      name,
      help,
      labelNames,
      registers: [this.registry],
      collect () {
        gauge.reset()
        for (const [labels, value] of read()) gauge.set(labels, value)
      }
    })
  }

  async text (): Promise<string> {
    return await this.registry.metrics()
  }

  get contentType (): string {
    return this.registry.contentType
  }
}

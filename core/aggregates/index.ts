/**
 * The registry of aggregate functions, by the name pipelines use. Adding an aggregate is one file in
 * this folder (exporting an AggregateFunction as a named const) plus one line in the list below.
 */
import type { AggregateFunction } from './aggregate.ts'

export type { AggregateFunction } from './aggregate.ts'

// The state type is private to each aggregate; callers only pass states back to the same aggregate.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyAggregate = AggregateFunction<any>

// A dynamic import per entry keeps registering an aggregate to this one line.
const LIST: readonly AnyAggregate[] = [
  (await import('./count.ts')).count,
  (await import('./sum.ts')).sum,
  (await import('./min.ts')).min,
  (await import('./max.ts')).max,
  (await import('./avg.ts')).avg,
  (await import('./stddev.ts')).stddev,
  (await import('./percentile.ts')).percentile,
  (await import('./distinct.ts')).distinct,
  (await import('./first.ts')).first,
  (await import('./last.ts')).last
]

export const AGGREGATES: ReadonlyMap<string, AnyAggregate> = new Map(LIST.map(a => [a.name, a]))

if (AGGREGATES.size !== LIST.length) throw new Error('two aggregate functions have the same name')

/** The aggregate function called `name`, or undefined when there is none. */
export function getAggregate (name: string): AnyAggregate | undefined {
  return AGGREGATES.get(name)
}

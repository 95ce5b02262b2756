/**
 * The registry of aggregate functions, by the name pipelines use. Adding an aggregate is one file in
 * this folder (exporting an AggregateFunction as a named const), imported and listed below.
 */
import type { AggregateFunction } from './aggregate.ts'
import { avg } from './avg.ts'
import { count } from './count.ts'
import { distinct } from './distinct.ts'
import { first } from './first.ts'
import { last } from './last.ts'
import { max } from './max.ts'
import { min } from './min.ts'
import { percentile } from './percentile.ts'
import { stddev } from './stddev.ts'
import { sum } from './sum.ts'

export type { AggregateFunction } from './aggregate.ts'

// The state type is private to each aggregate; callers only pass states back to the same aggregate.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyAggregate = AggregateFunction<any>

const LIST: readonly AnyAggregate[] = [count, sum, min, max, avg, stddev, percentile, distinct, first, last]

export const AGGREGATES: ReadonlyMap<string, AnyAggregate> = new Map(LIST.map(a => [a.name, a]))

if (AGGREGATES.size !== LIST.length) throw new Error('two aggregate functions have the same name')

/** The aggregate function called `name`, or undefined when there is none. */
export function getAggregate (name: string): AnyAggregate | undefined {
  return AGGREGATES.get(name)
}

/**
 * last(x): the reading with the largest event time; null for an empty window. x is a number or a
 * string. Readings with the same event time are ordered by value (numbers numerically, strings by code
 * units, every number before every string) and the largest wins, so the result does not depend on
 * arrival or merge order.
 *
 * Encoded as `[eventTime, value]`, or null when empty.
 */
import { timedAggregate } from './scalar.ts'

export const last = timedAggregate('last', 1)

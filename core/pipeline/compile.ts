/**
 * Turns a validated PipelineSpec into the runnable form: topic matcher, payload decoder and expressions
 * parsed once, aggregate functions looked up once. Everything per-reading reads from here.
 */
import { getAggregate } from '../aggregates/index.ts'
import type { AggregateFunction } from '../aggregates/aggregate.ts'
import { ReadingRejected } from '../errors.ts'
import { compileExpression } from '../expr.ts'
import type { Expression, Vars } from '../expr.ts'
import { PAYLOAD_DECODERS } from '../payload.ts'
import type { PayloadDecoder } from '../payload.ts'
import { toEventTime } from '../timestamp.ts'
import { compileTopicFilter } from '../topic.ts'
import type { TopicFilter } from '../topic.ts'
import { SINGLE_KEY } from './spec.ts'
import type { PipelineSpec } from './spec.ts'

/** One result field: its aggregate function, constant parameters and input expression. */
export interface CompiledSelect {
  readonly name: string
  readonly fn: AggregateFunction<unknown>
  readonly params: readonly number[]
  readonly input?: Expression
}

export interface CompiledEmit {
  readonly kind: 'upstream' | 'mqtt' | 'sparkplug'
  readonly topic?: string
  /** Sparkplug group and edge node (kind sparkplug). */
  readonly group?: string
  readonly node?: string
  readonly when?: Expression
  readonly qos: 0 | 1 | 2
  readonly retain: boolean
}

export interface CompiledPipeline {
  readonly spec: PipelineSpec
  readonly topic: TopicFilter
  /**
   * The shared decoder of the pipeline's format, for decoding on its own (WindowOperator.ingest). A
   * runner decodes with its own (see createDecoder), where stateful formats keep their state.
   */
  readonly decode: PayloadDecoder
  readonly selects: readonly CompiledSelect[]
  readonly emits: readonly CompiledEmit[]
  /** Key parts named by plain identifiers (`key: [room, device]`), for emit templates. */
  readonly keyNames: ReadonlyArray<string | undefined>
  /** Event time of a reading in epoch ms; `arrival` when the pipeline has no timestamp. */
  eventTime: (vars: Vars, arrival: number) => number
  /** Whether the reading passes `where`. */
  accepts: (vars: Vars) => boolean
  keyOf: (vars: Vars) => string
  /** Evaluates every select input into `out` (reused across readings to spare allocations). */
  inputs: (vars: Vars, out: unknown[]) => void
  /** Whether any expression uses `topic` or `payload`, so the reading path knows to provide them. */
  readonly needsTopic: boolean
  readonly needsPayload: boolean
}

function keyPart (v: unknown, source: string): string {
  if (typeof v === 'string') return v
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new ReadingRejected('non_finite', `key ${source} is ${v}`)
    return String(v)
  }
  if (typeof v === 'boolean') return String(v)
  throw new ReadingRejected('type', `key ${source} must be a string, number or boolean, not ${v === null ? 'null' : typeof v}`)
}

/** Checks a select input against what its aggregate takes. */
function checkInput (v: unknown, sel: CompiledSelect): unknown {
  const want = sel.fn.input
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new ReadingRejected('non_finite', `${sel.name}: ${sel.input?.source} is ${v}`)
    return v
  }
  if (want === 'scalar' && typeof v === 'string') return v
  throw new ReadingRejected('type', `${sel.name}: ${sel.fn.name}() needs ${want === 'number' ? 'a number' : 'a number or a string'}, ${sel.input?.source} is ${v === null ? 'null' : typeof v}`)
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/

export function compilePipeline (spec: PipelineSpec): CompiledPipeline {
  const timestamp = spec.timestamp === undefined ? undefined : compileExpression(spec.timestamp)
  const where = spec.where === undefined ? undefined : compileExpression(spec.where)
  const keys = spec.key.map(k => compileExpression(k))
  const selects: CompiledSelect[] = spec.select.map(s => {
    const fn = getAggregate(s.fn)
    if (fn === undefined) throw new Error(`unknown aggregate ${s.fn}`)
    return { name: s.name, fn, params: s.params, input: s.arg === undefined ? undefined : compileExpression(s.arg) }
  })
  const emits: CompiledEmit[] = spec.emit.map(e => e.kind === 'upstream'
    ? { kind: 'upstream', qos: 0, retain: false }
    : e.kind === 'sparkplug'
      ? { kind: 'sparkplug', group: e.group, node: e.node, qos: 0, retain: false }
      : { kind: 'mqtt', topic: e.topic, when: e.when === undefined ? undefined : compileExpression(e.when), qos: e.qos, retain: e.retain })

  const sources = [spec.timestamp, spec.where, ...spec.key, ...spec.select.map(s => s.arg)].filter(s => s !== undefined)
  const mentions = (name: string) => sources.some(s => new RegExp(`\\b${name}\\b`).test(s))

  const keyOf = keys.length === 0
    ? () => SINGLE_KEY
    : keys.length === 1
      ? (vars: Vars) => keyPart(keys[0].evaluate(vars), keys[0].source)
      : (vars: Vars) => keys.map(k => keyPart(k.evaluate(vars), k.source)).join('/')

  return {
    spec,
    topic: compileTopicFilter(spec.from),
    decode: PAYLOAD_DECODERS[spec.format],
    selects,
    emits,
    keyNames: spec.key.map(k => IDENT.test(k.trim()) ? k.trim() : undefined),
    eventTime: timestamp === undefined
      ? (_vars, arrival) => arrival
      : (vars) => toEventTime(timestamp.evaluate(vars)),
    accepts: where === undefined
      ? () => true
      : (vars) => {
          const ok = where.evaluate(vars)
          if (typeof ok !== 'boolean') throw new ReadingRejected('type', `where must give true or false, gave ${typeof ok}`)
          return ok
        },
    keyOf,
    inputs: (vars, out) => {
      for (let i = 0; i < selects.length; i++) {
        const sel = selects[i]
        out[i] = sel.input === undefined ? undefined : checkInput(sel.input.evaluate(vars), sel)
      }
    },
    needsTopic: mentions('topic'),
    needsPayload: mentions('payload')
  }
}

/**
 * CEL expressions (where, key, timestamp, select inputs, emit conditions). Each is parsed once when a
 * pipeline is compiled; evaluation runs a tree walker over the reading's fields only, so an expression
 * can reach nothing outside the reading (no eval, no globals, no I/O).
 */
import { Environment } from '@marcbachmann/cel-js'
import { ReadingRejected } from './errors.ts'

export type Vars = Record<string, unknown>
export type Evaluate = (vars: Vars) => unknown

export interface Expression {
  readonly source: string
  /** Set when the expression is a single identifier: callers may read `vars[field]` directly. */
  readonly field?: string
  readonly evaluate: Evaluate
}

/** Where in the expression source a problem was found (0-based character offset). */
export interface ExpressionProblem {
  message: string
  offset: number
}

function createEnvironment (): Environment {
  const env = new Environment({ unlistedVariablesAreDyn: true, homogeneousAggregateLiterals: false })
  // JSON numbers are doubles to CEL while literals like `2` are ints, and strict CEL refuses to mix them
  // (`value * 2` fails). Sensor data needs mixed arithmetic, so define it the way users expect.
  const ops: Record<string, (a: number, b: number) => number> = {
    '+': (a, b) => a + b,
    '-': (a, b) => a - b,
    '*': (a, b) => a * b,
    '/': (a, b) => a / b
  }
  for (const [op, fn] of Object.entries(ops)) {
    env.registerOperator(`double ${op} int`, (a: number, b: bigint) => fn(a, Number(b)))
    env.registerOperator(`int ${op} double`, (a: bigint, b: number) => fn(Number(a), b))
  }
  return env
}

const env = createEnvironment()
const IDENTIFIER = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*$/
const RESERVED = new Set(['true', 'false', 'null', 'in', 'as', 'break', 'const', 'continue', 'else', 'for', 'function', 'if', 'import', 'let', 'loop', 'package', 'namespace', 'return', 'var', 'void', 'while'])

/** Returns the first problem in `source`, or undefined when it parses. */
export function checkExpression (source: string): ExpressionProblem | undefined {
  try {
    env.parse(source)
    return undefined
  } catch (err) {
    const e = err as Error & { node?: { pos?: number } }
    const message = e.message.split('\n')[0]
    return { message, offset: e.node?.pos ?? 0 }
  }
}

/** Converts CEL values to plain JS: ints come back as bigint. */
function plain (value: unknown): unknown {
  return typeof value === 'bigint' ? Number(value) : value
}

/**
 * Compiles an expression. Evaluation errors become ReadingRejected with a reason: `missing_field` when
 * the reading lacks a field the expression needs, `expression` otherwise.
 */
export function compileExpression (source: string): Expression {
  const ident = IDENTIFIER.exec(source)
  if (ident != null && !RESERVED.has(ident[1])) {
    const field = ident[1]
    return {
      source,
      field,
      evaluate: (vars) => {
        const v = vars[field]
        if (v === undefined) throw new ReadingRejected('missing_field', `field "${field}" is missing`)
        return v
      }
    }
  }
  // Throws the library's ParseError on bad syntax; pipelines are checked with checkExpression first.
  const program = env.parse(source) as unknown as (vars: Vars) => unknown
  return {
    source,
    evaluate: (vars) => {
      try {
        return plain(program(vars))
      } catch (err) {
        const message = (err as Error).message.split('\n')[0]
        if (message.startsWith('Unknown variable') || message.startsWith('No such key')) {
          throw new ReadingRejected('missing_field', `${source}: ${message}`)
        }
        throw new ReadingRejected('expression', `${source}: ${message}`)
      }
    }
  }
}

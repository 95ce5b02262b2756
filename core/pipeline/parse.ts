/**
 * Reads pipelines from YAML into validated PipelineSpec objects. Validation collects every problem it
 * can find, each with the line and column of the YAML node at fault, so `fogmesh validate` can point at
 * all mistakes of a file at once.
 */
import { readFile } from 'node:fs/promises'
import { isMap, isPair, isScalar, isSeq, LineCounter, parseDocument } from 'yaml'
import type { Node, Pair, YAMLMap } from 'yaml'
import { getAggregate } from '../aggregates/index.ts'
import { parseDuration } from '../duration.ts'
import { PipelineError } from '../errors.ts'
import type { PipelineProblem } from '../errors.ts'
import { checkExpression } from '../expr.ts'
import { FORMAT_NAMES, isPayloadFormat } from '../formats/index.ts'
import { checkTopicFilter } from '../topic.ts'
import { PIPELINE_DEFAULTS, PIPELINE_NAME } from './spec.ts'
import type { EmitSpec, LatePolicy, PipelineSpec, SelectSpec, WindowSpec } from './spec.ts'

const FIELD = /^[A-Za-z_][A-Za-z0-9_]*$/
const PIPELINE_FIELDS = new Set(['name', 'from', 'format', 'timestamp', 'where', 'key', 'window', 'lateness', 'idle', 'max-future', 'late', 'late-horizon', 'select', 'emit', 'version', 'description'])
const CALL = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(([\s\S]*)\)\s*$/

/** Collects problems with positions; `at` turns a YAML node into line:col. */
class Problems {
  readonly list: PipelineProblem[] = []
  readonly #lines: LineCounter

  constructor (lines: LineCounter) {
    this.#lines = lines
  }

  /** Reports `message` at `node`, `offset` characters into its source (for expression errors). */
  add (node: Node | Pair | null | undefined, message: string, offset = 0): void {
    const range = node == null ? undefined : isPair(node) ? (node.key as Node | null)?.range : node.range
    const pos = this.#lines.linePos((range?.[0] ?? 0) + offset)
    this.list.push({ line: pos.line, col: pos.col, message })
  }
}

/** The source offset of an expression inside a scalar node; only exact for plain one-line scalars. */
function exprOffset (node: Node, offset: number): number {
  return isScalar(node) && node.type === 'PLAIN' ? offset : 0
}

function pairsOf (map: YAMLMap): Array<{ key: string, keyNode: Node, value: Node | null, pair: Pair }> {
  return map.items.map(pair => {
    const keyNode = pair.key as Node
    return { key: isScalar(keyNode) ? String(keyNode.value) : '', keyNode, value: pair.value as Node | null, pair }
  })
}

function scalarString (node: Node | null, what: string, problems: Problems, at: Node | Pair): string | undefined {
  if (node == null || !isScalar(node) || node.value == null) {
    problems.add(node ?? at, `${what} must be a string`)
    return undefined
  }
  return String(node.value)
}

function duration (node: Node | null, what: string, problems: Problems, at: Node | Pair): number | undefined {
  if (node != null && isScalar(node) && (typeof node.value === 'string' || typeof node.value === 'number')) {
    try {
      return parseDuration(node.value)
    } catch (err) {
      problems.add(node, `${what}: ${(err as Error).message}`)
      return undefined
    }
  }
  problems.add(node ?? at, `${what} must be a duration like 500ms, 10s or 5m`)
  return undefined
}

function expression (node: Node | null, what: string, problems: Problems, at: Node | Pair): string | undefined {
  const source = scalarString(node, what, problems, at)
  if (source === undefined || node == null) return undefined
  const problem = checkExpression(source)
  if (problem !== undefined) {
    problems.add(node, `${what}: invalid expression: ${problem.message}`, exprOffset(node, problem.offset))
    return undefined
  }
  return source
}

/** Splits call arguments at top-level commas, leaving commas inside brackets and strings alone. */
export function splitArguments (text: string): string[] {
  const args: string[] = []
  let depth = 0
  let quote = ''
  let start = 0
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (quote !== '') {
      if (c === '\\') i++
      else if (c === quote) quote = ''
    } else if (c === '"' || c === "'") {
      quote = c
    } else if (c === '(' || c === '[' || c === '{') {
      depth++
    } else if (c === ')' || c === ']' || c === '}') {
      depth--
    } else if (c === ',' && depth === 0) {
      args.push(text.slice(start, i))
      start = i + 1
    }
  }
  const last = text.slice(start)
  if (args.length > 0 || last.trim() !== '') args.push(last)
  return args.map(a => a.trim())
}

function parseSelect (node: Node | null, problems: Problems, at: Pair): SelectSpec[] {
  if (node == null || !isMap(node) || node.items.length === 0) {
    problems.add(node ?? at, 'select must map result names to aggregates, like `n: count()`')
    return []
  }
  const out: SelectSpec[] = []
  for (const { key, keyNode, value } of pairsOf(node)) {
    if (!FIELD.test(key)) problems.add(keyNode, `result name "${key}" must be an identifier ([A-Za-z_][A-Za-z0-9_]*)`)
    const text = scalarString(value, `select.${key}`, problems, keyNode)
    if (text === undefined || value == null) continue
    const call = CALL.exec(text)
    if (call == null) {
      const unbalanced = (text.match(/\(/g) ?? []).length > (text.match(/\)/g) ?? []).length
      const hint = unbalanced && node.flow === true ? ' (inside { } a comma ends the entry: quote the call or use one line per field)' : ''
      problems.add(value, `select.${key}: expected an aggregate call like sum(value), got "${text}"${hint}`)
      continue
    }
    const fn = call[1]
    const agg = getAggregate(fn)
    if (agg === undefined) {
      problems.add(value, `select.${key}: unknown aggregate "${fn}" (known: count, sum, min, max, avg, stddev, percentile, distinct, first, last)`)
      continue
    }
    const args = splitArguments(call[2])
    const wanted = (agg.input === 'none' ? 0 : 1) + agg.params
    if (args.length !== wanted) {
      problems.add(value, `select.${key}: ${fn}() takes ${wanted} argument${wanted === 1 ? '' : 's'}, got ${args.length}`)
      continue
    }
    let arg: string | undefined
    if (agg.input !== 'none') {
      arg = args[0]
      const problem = checkExpression(arg)
      if (problem !== undefined) {
        problems.add(value, `select.${key}: invalid expression "${arg}": ${problem.message}`, exprOffset(value, text.indexOf(arg) + problem.offset))
        continue
      }
    }
    const params = args.slice(agg.input === 'none' ? 0 : 1).map(Number)
    if (params.some(p => !Number.isFinite(p))) {
      problems.add(value, `select.${key}: the parameters of ${fn}() must be numbers`)
      continue
    }
    const bad = agg.checkParams?.(params)
    if (bad !== undefined) {
      problems.add(value, `select.${key}: ${bad}`)
      continue
    }
    out.push({ name: key, fn, arg, params })
  }
  return out
}

function parseWindow (node: Node | null, problems: Problems, at: Pair): WindowSpec | undefined {
  const usage = 'window must be one of { tumbling: D }, { hopping: D, every: D }, { session: GAP }, { count: N }'
  if (node == null || !isMap(node)) {
    problems.add(node ?? at, usage)
    return undefined
  }
  const fields = new Map(pairsOf(node).map(p => [p.key, p]))
  const kinds = ['tumbling', 'hopping', 'session', 'count'].filter(k => fields.has(k))
  if (kinds.length !== 1) {
    problems.add(node, kinds.length === 0 ? usage : `window has more than one kind: ${kinds.join(', ')}`)
    return undefined
  }
  const kind = kinds[0]
  for (const [name, p] of fields) {
    if (name !== kind && !(kind === 'hopping' && name === 'every')) problems.add(p.keyNode, `unknown window field "${name}" for a ${kind} window`)
  }
  const main = fields.get(kind)!
  if (kind === 'count') {
    const n = isScalar(main.value) ? Number(main.value.value) : NaN
    if (!Number.isInteger(n) || n < 1) {
      problems.add(main.value ?? main.keyNode, 'window.count must be a whole number of readings, at least 1')
      return undefined
    }
    return { kind: 'count', count: n }
  }
  const size = duration(main.value, `window.${kind}`, problems, main.keyNode)
  if (size === undefined) return undefined
  if (size < 1) {
    problems.add(main.value, `window.${kind} must be at least 1ms`)
    return undefined
  }
  if (kind === 'tumbling') return { kind, size }
  if (kind === 'session') return { kind, gap: size }
  const everyPair = fields.get('every')
  if (everyPair === undefined) {
    problems.add(node, 'a hopping window needs `every` (how often a window starts), like { hopping: 1m, every: 10s }')
    return undefined
  }
  const every = duration(everyPair.value, 'window.every', problems, everyPair.keyNode)
  if (every === undefined) return undefined
  if (every < 1 || every > size) {
    problems.add(everyPair.value, 'window.every must be at least 1ms and at most the window size')
    return undefined
  }
  return { kind: 'hopping', size, every }
}

function parseEmit (node: Node | null, problems: Problems, at: Pair): EmitSpec[] {
  if (node == null) return [{ kind: 'upstream' }]
  if (!isSeq(node)) {
    problems.add(node, 'emit must be a list of targets: upstream, or { mqtt: TOPIC, when: CONDITION }')
    return []
  }
  const out: EmitSpec[] = []
  for (const item of node.items as Array<Node | null>) {
    if (isScalar(item) && item.value === 'upstream') {
      out.push({ kind: 'upstream' })
      continue
    }
    if (item == null || !isMap(item)) {
      problems.add(item ?? at, 'an emit target is `upstream`, { mqtt: TOPIC, when: CONDITION, qos: 0|1|2, retain: bool } or { sparkplug: { group: G, node: N } }')
      continue
    }
    const sparkplugPair = pairsOf(item).find(p => p.key === 'sparkplug')
    if (sparkplugPair !== undefined) {
      const emit = parseSparkplugEmit(item, sparkplugPair, problems)
      if (emit !== undefined) out.push(emit)
      continue
    }
    let topic: string | undefined
    let when: string | undefined
    let qos: 0 | 1 | 2 = 0
    let retain = false
    for (const { key, keyNode, value } of pairsOf(item)) {
      if (key === 'mqtt') {
        topic = scalarString(value, 'emit.mqtt', problems, keyNode)
        if (topic !== undefined && (topic === '' || /[+#]/.test(topic))) {
          problems.add(value, 'emit.mqtt must be a topic without wildcards')
          topic = undefined
        }
      } else if (key === 'when') {
        when = expression(value, 'emit.when', problems, keyNode)
      } else if (key === 'qos') {
        const q = isScalar(value) ? value.value : undefined
        if (q === 0 || q === 1 || q === 2) qos = q
        else problems.add(value ?? keyNode, 'emit.qos must be 0, 1 or 2')
      } else if (key === 'retain') {
        if (isScalar(value) && typeof value.value === 'boolean') retain = value.value
        else problems.add(value ?? keyNode, 'emit.retain must be true or false')
      } else {
        problems.add(keyNode, `unknown emit field "${key}" (known: mqtt, when, qos, retain)`)
      }
    }
    if (topic === undefined) {
      if (!pairsOf(item).some(p => p.key === 'mqtt')) problems.add(item, 'an emit target needs `mqtt: TOPIC`')
      continue
    }
    out.push({ kind: 'mqtt', topic, when, qos, retain })
  }
  return out
}

/** A Sparkplug group or edge node id: one topic level, no wildcards (Sparkplug B 3.0, topic namespace). */
const SPARKPLUG_ID = /^[^/+#]+$/

function parseSparkplugEmit (item: YAMLMap, pair: ReturnType<typeof pairsOf>[number], problems: Problems): EmitSpec | undefined {
  const usage = 'emit.sparkplug must be { group: GROUP, node: NODE }'
  for (const p of pairsOf(item)) {
    if (p.key !== 'sparkplug') problems.add(p.keyNode, `unknown field "${p.key}" beside emit.sparkplug (it takes only { group, node })`)
  }
  const node = pair.value
  if (node == null || !isMap(node)) {
    problems.add(node ?? pair.keyNode, usage)
    return undefined
  }
  const ids: Record<string, string | undefined> = { group: undefined, node: undefined }
  for (const { key, keyNode, value } of pairsOf(node)) {
    if (!(key in ids)) {
      problems.add(keyNode, `unknown emit.sparkplug field "${key}" (known: group, node)`)
      continue
    }
    const id = scalarString(value, `emit.sparkplug.${key}`, problems, keyNode)
    if (id !== undefined && !SPARKPLUG_ID.test(id)) problems.add(value, `emit.sparkplug.${key} must be one topic level, without /, + or #`)
    else ids[key] = id
  }
  for (const key of ['group', 'node']) {
    if (ids[key] === undefined && !pairsOf(node).some(p => p.key === key)) problems.add(node, `emit.sparkplug needs \`${key}\``)
  }
  if (ids.group === undefined || ids.node === undefined) return undefined
  return { kind: 'sparkplug', group: ids.group, node: ids.node }
}

/** Names an emit template or condition may use: result fields, key parts named by identifiers, and more. */
function resultNames (spec: Pick<PipelineSpec, 'select' | 'key'>): Set<string> {
  const names = new Set(['key', 'pipeline', 'start', 'end', 'revision'])
  for (const s of spec.select) names.add(s.name)
  for (const k of spec.key) if (FIELD.test(k.trim())) names.add(k.trim())
  return names
}

function parsePipeline (map: Node | null, problems: Problems, at: Node): PipelineSpec | undefined {
  if (map == null || !isMap(map)) {
    problems.add(map ?? at, 'a pipeline must be a mapping with at least name, from, window and select')
    return undefined
  }
  const before = problems.list.length
  const fields = new Map<string, ReturnType<typeof pairsOf>[number]>()
  for (const p of pairsOf(map)) {
    if (!PIPELINE_FIELDS.has(p.key)) problems.add(p.keyNode, `unknown pipeline field "${p.key}"`)
    else if (fields.has(p.key)) problems.add(p.keyNode, `duplicate field "${p.key}"`)
    else fields.set(p.key, p)
  }
  for (const required of ['name', 'from', 'window', 'select']) {
    if (!fields.has(required)) problems.add(map, `pipeline is missing \`${required}\``)
  }
  const get = (k: string) => fields.get(k)

  let name = ''
  const nameField = get('name')
  if (nameField !== undefined) {
    name = scalarString(nameField.value, 'name', problems, nameField.keyNode) ?? ''
    if (name !== '' && !PIPELINE_NAME.test(name)) problems.add(nameField.value, `pipeline name "${name}" must match [a-z0-9-]+`)
  }
  let from = ''
  const fromField = get('from')
  if (fromField !== undefined) {
    from = scalarString(fromField.value, 'from', problems, fromField.keyNode) ?? ''
    const bad = from === '' ? undefined : checkTopicFilter(from)
    if (bad !== undefined) problems.add(fromField.value, `from: ${bad}`)
  }
  let format = PIPELINE_DEFAULTS.format
  const formatField = get('format')
  if (formatField !== undefined) {
    const f = scalarString(formatField.value, 'format', problems, formatField.keyNode)
    if (f !== undefined && !isPayloadFormat(f)) problems.add(formatField.value, `format must be one of ${FORMAT_NAMES.join(', ')}`)
    else if (f !== undefined) format = f
  }
  const optionalExpr = (k: string) => {
    const f = get(k)
    return f === undefined ? undefined : expression(f.value, k, problems, f.keyNode)
  }
  const timestamp = optionalExpr('timestamp')
  const where = optionalExpr('where')

  const key: string[] = []
  const keyField = get('key')
  if (keyField !== undefined) {
    const items = isSeq(keyField.value) ? keyField.value.items as Array<Node | null> : [keyField.value]
    if (items.length === 0) problems.add(keyField.value, 'key must name at least one expression')
    for (const item of items) {
      const k = expression(item, 'key', problems, keyField.keyNode)
      if (k !== undefined) key.push(k)
    }
  }

  const windowField = get('window')
  const window = windowField === undefined ? undefined : parseWindow(windowField.value, problems, windowField.pair)

  const durationField = (k: string, fallback: number) => {
    const f = get(k)
    return f === undefined ? fallback : duration(f.value, k, problems, f.keyNode) ?? fallback
  }
  const lateness = durationField('lateness', PIPELINE_DEFAULTS.lateness)
  const idle = durationField('idle', PIPELINE_DEFAULTS.idle)
  if (idle < 1) problems.add(get('idle')?.value, 'idle must be at least 1ms')
  const maxFuture = durationField('max-future', PIPELINE_DEFAULTS.maxFuture)
  const lateHorizon = durationField('late-horizon', PIPELINE_DEFAULTS.lateHorizon)

  let late: LatePolicy = PIPELINE_DEFAULTS.late
  const lateField = get('late')
  if (lateField !== undefined) {
    const l = scalarString(lateField.value, 'late', problems, lateField.keyNode)
    if (l === 'drop' || l === 'update') late = l
    else if (l !== undefined) problems.add(lateField.value, 'late must be drop or update')
    if (late === 'update' && window?.kind === 'session') problems.add(lateField.value, 'late: update is not supported for session windows (a late reading could merge closed sessions); use drop')
    if (late === 'update' && window?.kind === 'count') problems.add(lateField.value, 'count windows have no late readings; remove `late`')
  }

  let version = PIPELINE_DEFAULTS.version
  const versionField = get('version')
  if (versionField !== undefined) {
    const v = isScalar(versionField.value) ? versionField.value.value : undefined
    if (typeof v === 'number' && Number.isInteger(v) && v >= 1) version = v
    else problems.add(versionField.value ?? versionField.keyNode, 'version must be a whole number, at least 1')
  }

  const selectField = get('select')
  const select = selectField === undefined ? [] : parseSelect(selectField.value, problems, selectField.pair)
  const emitField = get('emit')
  const emit = emitField === undefined ? [{ kind: 'upstream' as const }] : parseEmit(emitField.value, problems, emitField.pair)

  // Emit templates and conditions may only name what a result has.
  const names = resultNames({ select, key })
  if (emitField != null && isSeq(emitField.value)) {
    for (const item of emitField.value.items as Array<Node | null>) {
      if (!isMap(item)) continue
      for (const { key: k, value } of pairsOf(item)) {
        if (k !== 'mqtt' || !isScalar(value)) continue
        for (const m of String(value.value).matchAll(/\{([^}]*)\}/g)) {
          if (!names.has(m[1])) problems.add(value, `emit.mqtt: {${m[1]}} is not a result field or key part (known: ${[...names].join(', ')})`)
        }
      }
    }
  }

  if (problems.list.length > before || window === undefined) return undefined
  return { name, from, format, timestamp, where, key, window, lateness, idle, maxFuture, late, lateHorizon, select, emit, version }
}

function parseWith (text: string, file: string, body: (root: Node | null, problems: Problems) => PipelineSpec[]): PipelineSpec[] {
  const lines = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true })
  const problems = new Problems(lines)
  for (const err of doc.errors) {
    const pos = err.linePos?.[0] ?? { line: 1, col: 1 }
    problems.list.push({ line: pos.line, col: pos.col, message: `YAML: ${err.message.split('\n')[0]}` })
  }
  if (problems.list.length > 0) throw new PipelineError(file, problems.list)
  const specs = body(doc.contents as Node | null, problems)
  if (problems.list.length > 0) throw new PipelineError(file, problems.list.sort((a, b) => a.line - b.line || a.col - b.col))
  return specs
}

/**
 * Parses a pipelines file: `pipelines:` followed by a list of pipelines. Throws PipelineError listing
 * every problem found.
 */
export function parsePipelines (text: string, file = 'pipelines.yaml'): PipelineSpec[] {
  return parseWith(text, file, (root, problems) => {
    if (root == null || !isMap(root)) {
      problems.add(root, 'a pipelines file is a mapping with a `pipelines:` list')
      return []
    }
    const specs: PipelineSpec[] = []
    for (const { key, keyNode, value } of pairsOf(root)) {
      if (key !== 'pipelines') {
        problems.add(keyNode, `unknown top-level field "${key}" (expected \`pipelines\`)`)
        continue
      }
      if (value == null || !isSeq(value)) {
        problems.add(value ?? keyNode, '`pipelines` must be a list')
        continue
      }
      const seen = new Map<string, Node>()
      for (const item of value.items as Array<Node | null>) {
        const spec = parsePipeline(item, problems, value)
        if (spec === undefined) continue
        if (seen.has(spec.name)) {
          problems.add(item, `duplicate pipeline name "${spec.name}"`)
          continue
        }
        seen.set(spec.name, item as Node)
        specs.push(spec)
      }
    }
    if (!pairsOf(root).some(p => p.key === 'pipelines')) problems.add(root, 'missing `pipelines:` list')
    return specs
  })
}

/** Parses one pipeline given on its own (the body of `PUT /v1/pipelines/{name}`). */
export function parseSinglePipeline (text: string, file = 'pipeline.yaml'): PipelineSpec {
  return parseWith(text, file, (root, problems) => {
    const spec = parsePipeline(root, problems, root as Node)
    return spec === undefined ? [] : [spec]
  })[0]
}

export async function loadPipelinesFile (path: string): Promise<PipelineSpec[]> {
  return parsePipelines(await readFile(path, 'utf8'), path)
}

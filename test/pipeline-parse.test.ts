import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import t from 'tap'
import { parseDuration } from '../core/duration.ts'
import { PipelineError } from '../core/errors.ts'
import { parsePipelines, parseSinglePipeline, splitArguments } from '../core/pipeline/parse.ts'
import { pipelineToPlain } from '../core/pipeline/format.ts'
import { parse as parseYaml, stringify } from 'yaml'

const run = promisify(execFile)
const fixture = (name: string) => new URL(`fixtures/${name}`, import.meta.url).pathname

function problems (yaml: string): string[] {
  try {
    parsePipelines(yaml, 'p.yaml')
  } catch (err) {
    if (err instanceof PipelineError) return err.problems.map(p => `${p.line}:${p.col}: ${p.message}`)
    throw err
  }
  return []
}

t.test('a full pipeline parses with defaults filled in', async t => {
  const specs = parsePipelines(await readFile(fixture('all-windows.yaml'), 'utf8'))
  t.same(specs.map(s => s.window), [
    { kind: 'tumbling', size: 10_000 },
    { kind: 'hopping', size: 20_000, every: 5_000 },
    { kind: 'session', gap: 3_000 },
    { kind: 'count', count: 25 }
  ])
  const [room] = specs
  t.equal(room.format, 'json')
  t.equal(room.lateness, 2_000)
  t.equal(room.late, 'drop')
  t.same(room.key, ['room'])
  t.same(room.select.find(s => s.name === 'p95'), { name: 'p95', fn: 'percentile', arg: 'value', params: [0.95] })
  t.same(room.emit, [{ kind: 'upstream' }, { kind: 'mqtt', topic: 'alerts/{room}', when: 'high > 25.0', qos: 0, retain: false }])
  t.same(specs[1].key, ['room', 'device'])
  t.equal(room.maxFuture, 300_000, 'max-future defaults to 5 minutes')
})

t.test('max-future: parsed, rendered back, and refused when it is not a duration', async t => {
  const [spec] = parsePipelines('pipelines:\n  - name: p\n    from: s\n    timestamp: ts\n    window: { tumbling: 10s }\n    max-future: 30s\n    select: { n: count() }\n')
  t.equal(spec.maxFuture, 30_000)
  t.same(parseSinglePipeline(stringify(pipelineToPlain(spec))), spec)
  t.throws(() => parsePipelines('pipelines:\n  - name: p\n    from: s\n    window: { tumbling: 10s }\n    max-future: soon\n    select: { n: count() }\n'), /5:17: max-future: invalid duration/)
})

t.test('durations: a bare 0 needs no unit, other bare numbers in text do', async t => {
  t.equal(parseDuration('0'), 0)
  t.equal(parseDuration(' 0 '), 0)
  t.throws(() => parseDuration('10'), /expected a number and a unit/)
  t.equal(parseDuration(1500), 1500, 'a YAML number is milliseconds')
})

t.test('a pipeline rendered back to YAML parses to the same spec', async t => {
  const specs = parsePipelines(await readFile(fixture('all-windows.yaml'), 'utf8'))
  for (const spec of specs) t.same(parseSinglePipeline(stringify(pipelineToPlain(spec))), spec, spec.name)
})

t.test('every mistake is reported at its line and column', async t => {
  t.same(problems(await readFile(fixture('broken-pipelines.yaml'), 'utf8')), [
    '2:11: pipeline name "Room_Temp" must match [a-z0-9-]+',
    '3:11: from: "temp#": a wildcard must take a whole topic level',
    '4:13: format must be one of json, cbor, text, senml, sparkplug',
    '5:19: where: invalid expression: Unexpected token: EOF',
    '7:25: window.tumbling: invalid duration "10x": expected a number and a unit (ms, s, m, h, d), like 500ms or 10s',
    '8:15: lateness: invalid duration "soon": expected a number and a unit (ms, s, m, h, d), like 500ms or 10s',
    '10:10: select.n: count() takes 0 arguments, got 1',
    '11:10: select.p: percentile\'s q must be between 0 and 1 (0.95 for the 95th percentile), got 1.5',
    '12:10: select.z: unknown aggregate "zork" (known: count, sum, min, max, avg, stddev, percentile, distinct, first, last)',
    '13:11: select.ok: expected an aggregate call like sum(value), got "sum(value"',
    '15:15: emit.mqtt: {nope} is not a result field or key part (known: key, pipeline, start, end, revision, room)',
    '16:5: pipeline is missing `from`',
    '17:13: a hopping window needs `every` (how often a window starts), like { hopping: 1m, every: 10s }',
    '18:13: select must map result names to aggregates, like `n: count()`',
    '19:5: unknown pipeline field "colour"'
  ])
})

t.test('YAML syntax errors and structural mistakes', async t => {
  t.match(problems('pipelines:\n  - name: a\n    from: [unclosed\n'), [/^\d+:\d+: YAML: /])
  t.same(problems('pipeline: []\n'), ['1:1: unknown top-level field "pipeline" (expected `pipelines`)', '1:1: missing `pipelines:` list'])
  t.same(problems('pipelines: 3\n'), ['1:12: `pipelines` must be a list'])
  t.same(problems(''), ['1:1: a pipelines file is a mapping with a `pipelines:` list'])
  const two = 'pipelines:\n  - { name: a, from: x, window: { count: 1 }, select: { n: count() } }\n  - { name: a, from: y, window: { count: 1 }, select: { n: count() } }\n'
  t.same(problems(two), ['3:5: duplicate pipeline name "a"'])
  t.same(problems('pipelines:\n  - { name: a, from: x, window: { session: 1s }, late: update, select: { n: count() } }\n'),
    ['2:56: late: update is not supported for session windows (a late reading could merge closed sessions); use drop'])
  t.same(problems('pipelines:\n  - { name: a, from: x, window: { count: 0 }, select: { n: count() } }\n'),
    ['2:42: window.count must be a whole number of readings, at least 1'])
  t.same(problems('pipelines:\n  - { name: a, from: x, window: { tumbling: 1s, count: 3 }, select: { n: count() } }\n'),
    ['2:33: window has more than one kind: tumbling, count'])
  t.same(problems('pipelines:\n  - { name: a, from: x, window: { hopping: 1s, every: 2s }, select: { n: count() } }\n'),
    ['2:55: window.every must be at least 1ms and at most the window size'])
})

t.test('a comma inside a flow mapping gets a hint', async t => {
  t.match(problems('pipelines:\n  - { name: a, from: x, window: { count: 1 }, select: { p: percentile(value, 0.5) } }\n')[0],
    /select.p: expected an aggregate call like sum\(value\), got "percentile\(value" \(inside \{ \} a comma ends the entry/)
})

t.test('expression errors point into the expression', async t => {
  t.same(problems('pipelines:\n  - name: a\n    from: x\n    where: value >> 3\n    window: { count: 1 }\n    select: { n: count() }\n'),
    ['4:19: where: invalid expression: Unexpected token: GT'])
})

t.test('call arguments split at top-level commas only', async t => {
  t.same(splitArguments('value, 0.95'), ['value', '0.95'])
  t.same(splitArguments('max([a, b].size(), 2), "x,y", 3'), ['max([a, b].size(), 2)', '"x,y"', '3'])
  t.same(splitArguments(''), [])
})

t.test('fogmesh validate prints file:line:col: message and exits 1', async t => {
  const file = fixture('broken-pipelines.yaml')
  const err = await run(process.execPath, ['bin/fogmesh.js', 'validate', file]).catch((e: { code: number, stdout: string }) => e)
  t.equal((err as { code: number }).code, 1)
  const lines = (err as { stdout: string }).stdout.trim().split('\n')
  t.equal(lines.length, 15)
  t.match(lines[0], `${file}:2:11: pipeline name "Room_Temp" must match [a-z0-9-]+`)
  const ok = await run(process.execPath, ['bin/fogmesh.js', 'validate', fixture('all-windows.yaml')])
  t.match(ok.stdout, /4 pipelines valid/)
})

t.test('the example in the README is valid', async t => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8').catch(() => '')
  const block = /```yaml\n(pipelines:[\s\S]*?)```/.exec(readme)
  if (block === null) return t.fail('README has no pipelines example')
  t.ok(parsePipelines(block[1]).length > 0)
  t.ok(parseYaml(block[1]))
})

/**
 * Pipeline deployment without processes: the route handlers of a fog (auth, validation, versions,
 * conflicts, serialization), the file store behind a single fog, the deployed set's wire form and what a
 * new version may change, and the `deployed` revision fogs gossip in their heartbeats.
 */
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { Test } from 'tap'
import { HttpError, PipelineError } from '../core/errors.ts'
import { decodeHeartbeat, encodeHeartbeat, HEARTBEAT_VERSION } from '../core/mesh/heartbeat.ts'
import type { FogBeat, Heartbeat } from '../core/mesh/heartbeat.ts'
import { changeSet, DEPLOYMENT_LIMITS, deployedSpec, EMPTY_DEPLOYMENT, incompatibility, readDeployedSet, sameSpec } from '../core/pipeline/deployment.ts'
import type { DeployedPipeline, DeployedSet } from '../core/pipeline/deployment.ts'
import { parseSinglePipeline } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import type { PipelineDef } from '../core/upstream/batch.ts'
import { Deployments } from '../fog-coordinator/deployments.ts'
import type { DeploymentsOptions } from '../fog-coordinator/deployments.ts'
import { FileDeploymentStore } from '../server/shell/deployment-store.ts'
import type { DeploymentStore } from '../server/shell/deployment-store.ts'
import type { Reply, Request } from '../server/shell/http.ts'
import { createLogger, silentLogger } from '../server/shell/log.ts'

const TOKEN = 'fog-admin-token'
const AUTH = `Bearer ${TOKEN}`

/** One pipeline's YAML body; `over` replaces or adds top-level fields (values are YAML text). */
function pipelineYaml (name = 'room-temp', over: Record<string, string> = {}): string {
  const fields: Record<string, string> = {
    name,
    from: 'sensors/+room/temperature',
    timestamp: 'ts',
    window: '{ tumbling: 10s }',
    select: '{ n: count(), total: sum(value) }',
    ...over
  }
  return Object.entries(fields).map(([k, v]) => `${k}: ${v}`).join('\n') + '\n'
}

/** `auth` null sends no Authorization header at all. */
function request (method: string, name: string, body: string | Buffer = '', auth: string | null = AUTH): Request {
  const headers: Request['headers'] = {}
  if (auth !== null) headers.authorization = auth
  const path = method === 'GET' ? '/v1/deployments' : `/v1/pipelines/${name}`
  return {
    method,
    path,
    params: method === 'GET' ? {} : { name },
    query: new URLSearchParams(),
    headers,
    body: async () => Buffer.isBuffer(body) ? body : Buffer.from(body)
  }
}

async function tempDir (t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'fogmesh-deployments-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** A Deployments over an in-memory store (unless one is given), recording onChange calls and log lines. */
function fog (over: Partial<DeploymentsOptions> = {}) {
  const changes: PipelineSpec[][] = []
  const logs: string[] = []
  const store = over.store ?? new FileDeploymentStore(undefined, createLogger({ write: line => logs.push(line) }))
  const d = new Deployments({
    adminToken: TOKEN,
    store,
    local: new Map(),
    definition: () => undefined,
    onChange: specs => changes.push(specs),
    log: createLogger({ write: line => logs.push(line) }),
    ...over
  })
  const routes = d.routes()
  const handle = async (method: string, req: Request): Promise<Reply> => {
    const route = routes.find(r => r.method === method)
    if (route === undefined) throw new Error(`no ${method} route`)
    return await route.handle(req)
  }
  return {
    d,
    store,
    changes,
    logs,
    put: (name: string, body: string | Buffer, auth?: string | null) => handle('PUT', request('PUT', name, body, auth)),
    del: (name: string, auth?: string | null) => handle('DELETE', request('DELETE', name, '', auth)),
    get: async () => (await handle('GET', request('GET', ''))).body as DeployedSet
  }
}

/** The HttpError a promise rejects with, checked for status and code. */
async function refusal (t: Test, p: Promise<unknown>, status: number, code: string, what: string): Promise<HttpError | undefined> {
  let err: unknown
  try {
    await p
    t.fail(`${what}: expected ${status} ${code}, but it succeeded`)
    return undefined
  } catch (e) {
    err = e
  }
  if (!(err instanceof HttpError)) {
    t.fail(`${what}: expected an HttpError, got ${String(err)}`)
    return undefined
  }
  t.equal(err.status, status, `${what}: status`)
  t.equal(err.code, code, `${what}: code`)
  return err
}

t.test('PUT and DELETE need the admin token', async t => {
  const off = fog({ adminToken: undefined })
  await refusal(t, off.put('room-temp', pipelineYaml()), 403, 'deployment_disabled', 'PUT without a token configured')
  await refusal(t, off.del('room-temp'), 403, 'deployment_disabled', 'DELETE without a token configured')
  t.equal(off.d.revision, 0)

  const on = fog()
  await refusal(t, on.put('room-temp', pipelineYaml(), null), 401, 'unauthorized', 'no header')
  for (const [auth, what] of [
    ['Bearer wrong-token', 'wrong token'],
    [`Bearer ${TOKEN}x`, 'token with a byte more'],
    [`Basic ${TOKEN}`, 'non-Bearer scheme'],
    [TOKEN, 'bare token'],
    ['Bearer', 'scheme without a token']
  ]) {
    await refusal(t, on.put('room-temp', pipelineYaml(), auth), 401, 'unauthorized', `PUT, ${what}`)
  }
  await refusal(t, on.del('room-temp', 'Bearer wrong-token'), 401, 'unauthorized', 'DELETE, wrong token')
  t.equal(on.d.revision, 0, 'nothing was deployed')
  t.same(on.changes, [])
  t.equal(on.d.stats.refused, 7)

  const ok = await on.put('room-temp', pipelineYaml(), `bearer  ${TOKEN} `)
  t.equal(ok.status, 201, 'the scheme is case-insensitive and spaces around the token do not matter')
})

t.test('the first PUT deploys version 1; the same YAML again changes nothing', async t => {
  const f = fog()
  t.equal(f.d.revision, 0)
  const yaml = pipelineYaml()
  const first = await f.put('room-temp', yaml)
  t.equal(first.status, 201)
  t.match(first.body, { pipeline: { name: 'room-temp', version: 1, spec: { name: 'room-temp', window: { tumbling: '10s' } } }, revision: 1, changed: true })
  t.equal(f.d.revision, 1)
  t.same(f.d.set.pipelines, [{ name: 'room-temp', version: 1, yaml }])
  t.same(f.store.current(), f.d.set, 'the store holds the new set')
  t.equal(f.changes.length, 1)
  t.same(f.changes[0], [parseSinglePipeline(yaml)], 'onChange gets the spec')
  t.same(f.d.specs().map(s => s.name), ['room-temp'])

  const again = await f.put('room-temp', yaml)
  t.not(again.status, 201)
  t.equal(again.status ?? 200, 200)
  t.match(again.body, { pipeline: { name: 'room-temp', version: 1 }, revision: 1, changed: false })
  t.equal(f.d.revision, 1, 'revision unchanged')
  t.equal(f.changes.length, 1, 'onChange not called again')
  t.equal(f.d.stats.deployed, 1)

  // Layout and comments aside, it is the same pipeline.
  const reformatted = '# room temperatures\n' + pipelineYaml('room-temp', { select: '\n  n: count()\n  total: sum(value)' })
  t.match((await f.put('room-temp', reformatted)).body, { revision: 1, changed: false })

  const listed = await f.get()
  t.same(listed, { revision: 1, pipelines: [{ name: 'room-temp', version: 1, yaml }] })
})

t.test('a compatible change is a new version; select and window stay as they are', async t => {
  const f = fog()
  await f.put('room-temp', pipelineYaml())
  const where = pipelineYaml('room-temp', { where: 'value > -40.0' })
  const second = await f.put('room-temp', where)
  t.equal(second.status ?? 200, 200)
  t.match(second.body, { pipeline: { name: 'room-temp', version: 2, spec: { where: 'value > -40.0' } }, revision: 2, changed: true })
  t.equal(f.d.revision, 2)
  t.same(f.d.set.pipelines, [{ name: 'room-temp', version: 2, yaml: where }])
  t.equal(f.d.specs()[0].version, 2, 'the deployed spec runs as version 2')
  t.equal(f.d.specs()[0].where, 'value > -40.0')
  t.equal(f.changes.length, 2)
  t.equal(f.changes[1][0].version, 2)

  const refusedChanges: Array<[string, Record<string, string>]> = [
    ['another aggregate', { select: '{ n: count(), total: avg(value) }' }],
    ['one more aggregate', { select: '{ n: count(), total: sum(value), top: max(value) }' }],
    ['a renamed result', { select: '{ n: count(), sum: sum(value) }' }],
    ['another window size', { window: '{ tumbling: 20s }' }],
    ['another window kind', { window: '{ hopping: 10s, every: 5s }' }]
  ]
  for (const [what, over] of refusedChanges) {
    const err = await refusal(t, f.put('room-temp', pipelineYaml('room-temp', { where: 'value > -40.0', ...over })), 409, 'incompatible_change', what)
    t.match(err?.message, 'window' in over ? /may not change its window/ : /may not change its select/, `${what}: says what may not change`)
  }
  t.equal(f.d.revision, 2, 'nothing stored')
  t.equal(f.store.current().revision, 2)
  t.same(f.store.current().pipelines, [{ name: 'room-temp', version: 2, yaml: where }])
  t.equal(f.changes.length, 2, 'onChange not called')
})

t.test('a version in the YAML is kept when it is ahead', async t => {
  const f = fog()
  const seven = await f.put('room-temp', pipelineYaml('room-temp', { version: '7' }))
  t.equal(seven.status, 201)
  t.match(seven.body, { pipeline: { version: 7 }, revision: 1 })
  t.equal(f.d.set.pipelines[0].version, 7)
  t.equal(f.d.specs()[0].version, 7)

  const next = await f.put('room-temp', pipelineYaml('room-temp', { where: 'value > 0' }))
  t.match(next.body, { pipeline: { version: 8 }, revision: 2 }, 'without a version it counts up from the running one')
  const behind = await f.put('room-temp', pipelineYaml('room-temp', { where: 'value > 1', version: '3' }))
  t.match(behind.body, { pipeline: { version: 9 }, revision: 3 }, 'a version behind the running one is not taken')
  t.equal(f.d.specs()[0].version, 9)
})

t.test('a PUT that is not a valid pipeline of that name is refused with 400', async t => {
  const f = fog()
  const broken = 'name: room-temp\nfrom: sensors/+room/temperature\nwindow: { tumbling: 10x }\nselect: { n: count() }\n'
  const err = await refusal(t, f.put('room-temp', broken), 400, 'pipeline_invalid', 'bad duration')
  const problems = err?.details?.problems as Array<{ line: number, col: number, message: string }> | undefined
  t.ok(Array.isArray(problems) && problems.length === 1, 'one problem')
  t.match(problems?.[0], { line: 3, col: 21, message: /window\.tumbling: invalid duration "10x"/ })

  const syntax = await refusal(t, f.put('room-temp', 'name: room-temp\nfrom: [unclosed\n'), 400, 'pipeline_invalid', 'YAML syntax')
  const syntaxProblems = syntax?.details?.problems as Array<{ line: number, col: number }> | undefined
  t.ok(syntaxProblems !== undefined && syntaxProblems.length > 0 && syntaxProblems.every(p => Number.isInteger(p.line) && p.line >= 1 && Number.isInteger(p.col) && p.col >= 1),
    'syntax problems carry a line and column')
  await refusal(t, f.put('room-temp', ''), 400, 'pipeline_invalid', 'empty body')
  await refusal(t, f.put('room-temp', 'pipelines:\n  - ' + pipelineYaml().trimEnd().replace(/\n/g, '\n    ') + '\n'), 400, 'pipeline_invalid', 'a pipelines file')

  const mismatch = await refusal(t, f.put('room-temp', pipelineYaml('other')), 400, 'name_mismatch', 'another name in the body')
  t.match(mismatch?.message, /"other".*"room-temp"/)

  for (const name of ['Bad_Name', 'UPPER', 'a.b', 'x'.repeat(65)]) {
    await refusal(t, f.put(name, pipelineYaml(name)), 400, 'bad_parameter', `path name ${name.slice(0, 10)}`)
  }
  await refusal(t, f.del('Bad_Name'), 400, 'bad_parameter', 'DELETE of a bad name')
  const longest = 'x'.repeat(64)
  t.equal((await f.put(longest, pipelineYaml(longest))).status, 201, 'a name of 64 characters is fine')
  t.equal(f.d.revision, 1, 'only that one was stored')
})

t.test('a YAML body over the bound is refused with 413', async t => {
  const f = fog()
  const yaml = pipelineYaml()
  const pad = (bytes: number) => yaml + '#' + 'x'.repeat(bytes - Buffer.byteLength(yaml) - 2) + '\n'
  t.equal(Buffer.byteLength(pad(DEPLOYMENT_LIMITS.yamlBytes + 1)), DEPLOYMENT_LIMITS.yamlBytes + 1)
  const err = await refusal(t, f.put('room-temp', pad(DEPLOYMENT_LIMITS.yamlBytes + 1)), 413, 'body_too_large', 'one byte over')
  t.match(err?.message, String(DEPLOYMENT_LIMITS.yamlBytes))
  t.equal(f.d.revision, 0)
  const atLimit = pad(DEPLOYMENT_LIMITS.yamlBytes)
  t.equal((await f.put('room-temp', atLimit)).status, 201, 'exactly at the bound is fine')
  const served = JSON.parse(JSON.stringify(await f.get())) as unknown
  t.equal(readDeployedSet(served).pipelines[0].yaml, atLimit, 'and the set reads back')
})

t.test('every set a PUT accepts reads back, on the fog after a restart and at the edges', async t => {
  // A body within the bound whose bytes are not UTF-8: decoded, each bad byte becomes U+FFFD (3 bytes).
  const dir = await tempDir(t)
  const logs: string[] = []
  const f = fog({ store: new FileDeploymentStore(dir, createLogger({ write: line => logs.push(line) })) })
  const head = Buffer.from(pipelineYaml() + '# ')
  const body = Buffer.concat([head, Buffer.alloc(DEPLOYMENT_LIMITS.yamlBytes - head.byteLength - 1, 0xff), Buffer.from('\n')])
  t.equal(body.byteLength, DEPLOYMENT_LIMITS.yamlBytes)
  let accepted = true
  try {
    await f.put('room-temp', body)
  } catch (err) {
    accepted = false
    t.ok(err instanceof HttpError && [400, 413].includes(err.status), `refused as a client error: ${String(err)}`)
  }
  if (accepted) {
    const served = JSON.parse(JSON.stringify(await f.get())) as unknown
    t.doesNotThrow(() => readDeployedSet(served), 'what GET /v1/deployments serves, edges can read')
    const restarted = new FileDeploymentStore(dir, createLogger({ write: line => logs.push(line) }))
    t.equal(restarted.current().revision, 1, 'a restarted fog still has the deployed set')
    t.same(logs, [], 'and read it without complaint')
  }
})

t.test('pipelines of the fog itself, or of an earlier pipeline that merged differently, are not replaced', async t => {
  const local = new Map([['local-one', parseSinglePipeline(pipelineYaml('local-one'))]])
  const earlier: Record<string, PipelineDef> = {
    'old-sum': { name: 'old-sum', version: 1, window: 'tumbling', selects: [{ name: 'n', fn: 'sum', params: [] }, { name: 'total', fn: 'sum', params: [] }] },
    'old-session': { name: 'old-session', version: 1, window: 'session', selects: [{ name: 'n', fn: 'count', params: [] }, { name: 'total', fn: 'sum', params: [] }] },
    'old-same': { name: 'old-same', version: 3, window: 'tumbling', selects: [{ name: 'n', fn: 'count', params: [] }, { name: 'total', fn: 'sum', params: [] }] }
  }
  const asked: string[] = []
  const f = fog({ local, definition: name => { asked.push(name); return earlier[name] } })
  await refusal(t, f.put('local-one', pipelineYaml('local-one')), 409, 'pipeline_conflict', 'PUT of a local pipeline')
  await refusal(t, f.del('local-one'), 409, 'pipeline_conflict', 'DELETE of a local pipeline')
  await refusal(t, f.put('old-sum', pipelineYaml('old-sum')), 409, 'pipeline_conflict', 'earlier pipeline with other aggregates')
  await refusal(t, f.put('old-session', pipelineYaml('old-session')), 409, 'pipeline_conflict', 'earlier pipeline with another window kind')
  t.equal(f.d.revision, 0, 'nothing stored')
  t.ok(asked.includes('old-sum') && asked.includes('old-session'), 'the fog was asked how it merges them now')

  const same = await f.put('old-same', pipelineYaml('old-same'))
  t.equal(same.status, 201, 'an earlier pipeline that merges the same way may be deployed')
  t.equal(f.d.revision, 1)
})

t.test('DELETE takes a deployed pipeline out of the set', async t => {
  const f = fog()
  await refusal(t, f.del('room-temp'), 404, 'unknown_pipeline', 'nothing deployed yet')
  await f.put('room-temp', pipelineYaml())
  await f.put('hall-temp', pipelineYaml('hall-temp'))
  t.same((await f.get()).pipelines.map(p => p.name), ['hall-temp', 'room-temp'])
  await refusal(t, f.del('attic-temp'), 404, 'unknown_pipeline', 'a name never deployed')
  t.equal(f.d.revision, 2)

  const res = await f.del('room-temp')
  t.equal(res.status ?? 200, 200)
  t.same(res.body, { deleted: 'room-temp', revision: 3 })
  t.equal(f.d.revision, 3)
  const listed = await f.get()
  t.equal(listed.revision, 3)
  t.same(listed.pipelines.map(p => p.name), ['hall-temp'], 'GET /v1/deployments no longer lists it')
  t.same(f.changes.at(-1)?.map(s => s.name), ['hall-temp'], 'onChange gets the set without it')
  t.equal(f.d.stats.deleted, 1)
  await refusal(t, f.del('room-temp'), 404, 'unknown_pipeline', 'deleted twice')
  t.equal(f.d.revision, 3)

  // Deployed again, it starts over as a new pipeline.
  const back = await f.put('room-temp', pipelineYaml())
  t.equal(back.status, 201)
  t.match(back.body, { pipeline: { version: 1 }, revision: 4 })
})

t.test('concurrent changes through one fog run one after the other', async t => {
  const inner = new FileDeploymentStore(undefined, silentLogger)
  let inFlight = 0
  let mostInFlight = 0
  // A slow store (etcd, a disk): without serialization both PUTs would start from revision 0.
  const store: DeploymentStore = {
    current: () => inner.current(),
    replace: async (next, expected) => {
      inFlight++
      mostInFlight = Math.max(mostInFlight, inFlight)
      await sleep(20)
      inFlight--
      await inner.replace(next, expected)
    }
  }
  const f = fog({ store })
  const [a, bad, b] = await Promise.allSettled([
    f.put('room-temp', pipelineYaml()),
    f.put('broken', 'name: broken\n'),
    f.put('hall-temp', pipelineYaml('hall-temp'))
  ])
  t.equal(a.status, 'fulfilled', String(a.status === 'rejected' ? a.reason : ''))
  t.equal(b.status, 'fulfilled', String(b.status === 'rejected' ? b.reason : ''))
  t.equal(bad.status, 'rejected', 'the invalid one in between is refused')
  t.match(bad.status === 'rejected' ? bad.reason : undefined, { status: 400, code: 'pipeline_invalid' })
  t.equal(mostInFlight, 1, 'one store write at a time')
  t.equal(f.d.revision, 2)
  t.equal(inner.current().revision, 2)
  t.same(inner.current().pipelines.map(p => p.name), ['hall-temp', 'room-temp'])
  const revisions = [a, b].map(r => r.status === 'fulfilled' ? (r.value.body as { revision: number }).revision : -1).sort()
  t.same(revisions, [1, 2])
})

t.test('a store that refuses the change leaves the fog as it was', async t => {
  const inner = new FileDeploymentStore(undefined, silentLogger)
  const store: DeploymentStore = {
    current: () => inner.current(),
    replace: async () => { throw new HttpError(409, 'deployment_conflict', 'another coordinator came first') }
  }
  const f = fog({ store })
  await refusal(t, f.put('room-temp', pipelineYaml()), 409, 'deployment_conflict', 'store conflict')
  t.equal(f.d.revision, 0)
  t.same(f.d.specs(), [])
  t.same(f.changes, [])
})

t.test('a fog starts with the set its store holds, and adopts newer ones', async t => {
  const dir = await tempDir(t)
  const first = fog({ store: new FileDeploymentStore(dir, silentLogger) })
  await first.put('room-temp', pipelineYaml('room-temp', { version: '4' }))
  await first.put('hall-temp', pipelineYaml('hall-temp'))

  const second = fog({ store: new FileDeploymentStore(dir, silentLogger) })
  t.equal(second.d.revision, 2)
  t.same(second.d.specs().map(s => [s.name, s.version]).sort(), [['hall-temp', 1], ['room-temp', 4]])
  t.same(second.changes, [], 'the starting set is not reported as a change')

  const newer = changeSet(second.d.set, { remove: 'hall-temp' })
  second.d.adopt(newer)
  t.equal(second.d.revision, 3)
  t.same(second.changes.map(c => c.map(s => s.name)), [['room-temp']])
  second.d.adopt(first.d.set)
  t.equal(second.d.revision, 3, 'an older set is ignored')
  t.equal(second.changes.length, 1)
})

t.test('FileDeploymentStore keeps the set in deployed.json', async t => {
  const dir = await tempDir(t)
  const logs: string[] = []
  const store = new FileDeploymentStore(dir, createLogger({ write: line => logs.push(line) }))
  t.same(store.current(), EMPTY_DEPLOYMENT, 'a missing file is the empty set')
  const one = changeSet(EMPTY_DEPLOYMENT, { put: { name: 'room-temp', version: 1, yaml: pipelineYaml() } })
  await store.replace(one, 0)
  t.same(await readdir(dir), ['deployed.json'], 'no temporary file is left behind')
  t.same(readDeployedSet(JSON.parse(await readFile(join(dir, 'deployed.json'), 'utf8'))), one)

  const reopened = new FileDeploymentStore(dir, createLogger({ write: line => logs.push(line) }))
  t.same(reopened.current(), one, 'a new instance on the same dir has the set')

  const two = changeSet(one, { put: { name: 'hall-temp', version: 1, yaml: pipelineYaml('hall-temp') } })
  const err = await refusal(t, store.replace(two, 0), 409, 'deployment_conflict', 'stale expected revision')
  t.match(err?.message, /revision 1, expected 0/)
  t.same(store.current(), one, 'the set is unchanged')
  t.same(new FileDeploymentStore(dir, silentLogger).current(), one, 'and so is the file')
  await store.replace(two, 1)
  t.same(new FileDeploymentStore(dir, silentLogger).current(), two)
  t.same(logs, [])

  const nested = join(dir, 'not', 'there', 'yet')
  await new FileDeploymentStore(nested, silentLogger).replace(one, 0)
  t.same(new FileDeploymentStore(nested, silentLogger).current(), one, 'the data dir is created when missing')
})

t.test('FileDeploymentStore starts empty, loudly, from a damaged file', async t => {
  const dir = await tempDir(t)
  const cases: Array<[string, string]> = [
    ['not JSON', '{"revision": 3, "pipel'],
    ['not a deployed set', JSON.stringify({ revision: -2, pipelines: [] })],
    ['names out of order', JSON.stringify({ revision: 2, pipelines: [{ name: 'b', version: 1, yaml: 'x' }, { name: 'a', version: 1, yaml: 'x' }] })]
  ]
  for (const [what, text] of cases) {
    await writeFile(join(dir, 'deployed.json'), text)
    const logs: string[] = []
    const store = new FileDeploymentStore(dir, createLogger({ write: line => logs.push(line) }))
    t.equal(store.current().revision, 0, `${what}: revision 0`)
    t.same(store.current().pipelines, [], `${what}: no pipelines`)
    t.equal(logs.length, 1, `${what}: logged`)
    t.match(logs[0], /deployed\.json/, `${what}: the log names the file`)
    // It can be written over, from revision 0.
    await store.replace(changeSet(store.current(), { put: { name: 'a', version: 1, yaml: 'x' } }), 0)
    t.equal(new FileDeploymentStore(dir, silentLogger).current().revision, 1, `${what}: replaced`)
  }
})

t.test('readDeployedSet checks a set read from elsewhere', async t => {
  const p = (name: string, version = 1, yaml = 'x'): DeployedPipeline => ({ name, version, yaml })
  const valid: DeployedSet = { revision: 3, pipelines: [p('a'), p('b-2', 5, pipelineYaml())] }
  t.same(readDeployedSet(JSON.parse(JSON.stringify(valid))), valid)
  t.same(readDeployedSet({ revision: 0, pipelines: [] }), EMPTY_DEPLOYMENT)
  t.same(readDeployedSet({ revision: 1, pipelines: [{ ...p('a'), extra: true }], more: 1 }), { revision: 1, pipelines: [p('a')] }, 'unknown fields are dropped')
  const names = (n: number) => Array.from({ length: n }, (_, i) => p(`p${String(i).padStart(3, '0')}`))
  t.equal(readDeployedSet({ revision: 1, pipelines: names(DEPLOYMENT_LIMITS.pipelines) }).pipelines.length, DEPLOYMENT_LIMITS.pipelines, 'the most pipelines')
  t.equal(readDeployedSet({ revision: 1, pipelines: [p('a', 1, 'y'.repeat(DEPLOYMENT_LIMITS.yamlBytes))] }).pipelines.length, 1, 'the longest YAML')

  const bad: Array<[string, unknown, RegExp]> = [
    ['null', null, /an object/],
    ['a list', [], /an object/],
    ['a string', 'set', /an object/],
    ['negative revision', { ...valid, revision: -1 }, /revision/],
    ['fractional revision', { ...valid, revision: 1.5 }, /revision/],
    ['revision as text', { ...valid, revision: '3' }, /revision/],
    ['no pipelines', { revision: 3 }, /pipelines: expected a list/],
    ['too many pipelines', { revision: 1, pipelines: names(DEPLOYMENT_LIMITS.pipelines + 1) }, /at most 64/],
    ['a pipeline not an object', { ...valid, pipelines: [p('a'), 'b'] }, /pipelines\[1\]: expected an object/],
    ['bad name', { ...valid, pipelines: [p('Bad_Name')] }, /pipelines\[0\]\.name/],
    ['empty name', { ...valid, pipelines: [p('')] }, /pipelines\[0\]\.name/],
    ['name too long', { ...valid, pipelines: [p('x'.repeat(65))] }, /pipelines\[0\]\.name/],
    ['version 0', { ...valid, pipelines: [p('a', 0)] }, /pipelines\[0\]\.version/],
    ['fractional version', { ...valid, pipelines: [p('a', 1.5)] }, /pipelines\[0\]\.version/],
    ['yaml too long', { ...valid, pipelines: [p('a'), p('b', 1, 'y'.repeat(DEPLOYMENT_LIMITS.yamlBytes + 1))] }, /pipelines\[1\]\.yaml/],
    ['yaml too long in bytes', { ...valid, pipelines: [p('a', 1, 'é'.repeat(DEPLOYMENT_LIMITS.yamlBytes / 2 + 1))] }, /pipelines\[0\]\.yaml/],
    ['yaml not a string', { ...valid, pipelines: [{ name: 'a', version: 1, yaml: 3 }] }, /pipelines\[0\]\.yaml/],
    ['unsorted names', { ...valid, pipelines: [p('b'), p('a')] }, /unique names in order/],
    ['duplicate names', { ...valid, pipelines: [p('a'), p('a')] }, /unique names in order/]
  ]
  for (const [what, v, message] of bad) {
    t.throws(() => readDeployedSet(v), { name: 'DeploymentError', code: 'deployment_invalid', message }, what)
  }
})

t.test('changeSet keeps pipelines sorted by name and bumps the revision', async t => {
  const a = { name: 'a', version: 1, yaml: 'a' }
  const c = { name: 'c', version: 1, yaml: 'c' }
  const start: DeployedSet = { revision: 5, pipelines: [a, c] }
  const withB = changeSet(start, { put: { name: 'b', version: 1, yaml: 'b' } })
  t.same(withB, { revision: 6, pipelines: [a, { name: 'b', version: 1, yaml: 'b' }, c] })
  t.same(start, { revision: 5, pipelines: [a, c] }, 'the set it started from is left as it was')
  const first = changeSet(withB, { put: { name: '0-first', version: 2, yaml: 'z' } })
  t.same(first.pipelines.map(p => p.name), ['0-first', 'a', 'b', 'c'])
  const replaced = changeSet(first, { put: { name: 'b', version: 2, yaml: 'b2' } })
  t.same(replaced.pipelines, [first.pipelines[0], a, { name: 'b', version: 2, yaml: 'b2' }, c], 'a pipeline of the same name is replaced in place')
  t.equal(replaced.revision, 8)
  const removed = changeSet(replaced, { remove: 'a' })
  t.same(removed, { revision: 9, pipelines: [first.pipelines[0], { name: 'b', version: 2, yaml: 'b2' }, c] })
  t.same(readDeployedSet(removed), removed, 'what changeSet makes, readDeployedSet reads')
})

t.test('incompatibility and sameSpec', async t => {
  const base = parseSinglePipeline(pipelineYaml('room-temp', { where: 'value > 0', key: 'room', lateness: '2s' }))
  const changed = (over: Record<string, string>) => parseSinglePipeline(pipelineYaml('room-temp', { where: 'value > 0', key: 'room', lateness: '2s', ...over }))
  const compatible: Array<Record<string, string>> = [
    { where: 'value > 1' },
    { key: '[room, device]' },
    { lateness: '5s' },
    { from: 'sensors/+room/humidity', idle: '1s', late: 'update' },
    { version: '9' }
  ]
  for (const over of compatible) {
    const next = changed(over)
    t.equal(incompatibility(base, next), undefined, `may change ${Object.keys(over).join(', ')}`)
  }
  for (const [over, field] of [
    [{ select: '{ n: count(), total: avg(value) }' }, 'select'],
    [{ select: '{ total: sum(value), n: count() }' }, 'select'],
    [{ select: '{ n: count(), total: sum(value), p: "percentile(value, 0.9)" }' }, 'select'],
    [{ window: '{ tumbling: 1m }' }, 'window'],
    [{ window: '{ session: 10s }' }, 'window'],
    [{ window: '{ count: 10 }' }, 'window']
  ] as Array<[Record<string, string>, string]>) {
    const why = incompatibility(base, changed(over))
    t.type(why, 'string', `may not change ${field} to ${Object.values(over)[0]}`)
    t.match(why, new RegExp(`"room-temp" may not change its ${field}`))
  }
  t.match(incompatibility(changed({ select: '{ p: "percentile(value, 0.9)" }' }), changed({ select: '{ p: "percentile(value, 0.95)" }' })), /select/,
    'a parameter of an aggregate counts too')

  t.ok(sameSpec(base, changed({ version: '9' })), 'the version aside')
  t.ok(sameSpec(base, { ...base }), 'a copy')
  t.notOk(sameSpec(base, changed({ where: 'value > 1' })), 'another where')
  t.notOk(sameSpec(base, changed({ lateness: '3s' })), 'another lateness')
  t.notOk(sameSpec(base, changed({ emit: '[upstream, { mqtt: alerts/x }]' })), 'another emit')
})

t.test('deployedSpec runs the YAML at the deployed version', async t => {
  const yaml = pipelineYaml('room-temp', { version: '3', where: 'value > 0' })
  const spec = deployedSpec({ name: 'room-temp', version: 5, yaml })
  t.equal(spec.version, 5, 'the version comes from the deployed entry, not the YAML')
  t.same(spec, { ...parseSinglePipeline(yaml), version: 5 })
  t.equal(deployedSpec({ name: 'room-temp', version: 1, yaml }).version, 1, 'also when the YAML says more')

  t.throws(() => deployedSpec({ name: 'hall-temp', version: 1, yaml }), { name: 'DeploymentError', code: 'deployment_invalid', message: /hall-temp.*"room-temp"/ })
  t.throws(() => deployedSpec({ name: 'room-temp', version: 1, yaml: 'name: room-temp\n' }), PipelineError)
})

t.test('a fog heartbeat carries the deployed revision', async t => {
  const beat = (fogBeat: object): Heartbeat => ({
    v: HEARTBEAT_VERSION,
    id: 'fog-1',
    role: 'fog',
    peerId: 'peer-1',
    http: 'http://127.0.0.1:8080',
    sw: '0.1.0',
    at: 1_700_000_000_000,
    uptime: 10,
    rate: 0,
    outbox: 0,
    pipelines: [{ name: 'room-temp', version: 2, watermark: null }],
    fog: fogBeat as unknown as FogBeat
  })
  const fogBeat: FogBeat = { leader: 'fog-1', shardMapVersion: 3, endpoints: ['http://127.0.0.1:8080'] }

  for (const deployed of [0, 1, 42]) {
    const hb = beat({ ...fogBeat, deployed })
    const decoded = decodeHeartbeat(encodeHeartbeat(hb), 'peer-1')
    t.same(decoded, { ok: true, heartbeat: hb }, `deployed ${deployed} round-trips`)
    t.equal(decoded.ok ? decoded.heartbeat.fog?.deployed : undefined, deployed)
  }
  const without = decodeHeartbeat(encodeHeartbeat(beat(fogBeat)))
  t.ok(without.ok, 'a fog heartbeat without a revision (an older fog) is fine')
  t.notOk(without.ok && without.heartbeat.fog !== undefined && 'deployed' in without.heartbeat.fog, 'and decodes without one')

  for (const deployed of [-1, 1.5, '3', null, Number.MAX_SAFE_INTEGER + 2]) {
    const decoded = decodeHeartbeat(encodeHeartbeat(beat({ ...fogBeat, deployed })))
    t.match(decoded, { ok: false, reason: 'bad_field', message: /deployed/ }, `deployed ${String(deployed)} is refused`)
  }
})

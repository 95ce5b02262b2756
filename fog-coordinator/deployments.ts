/**
 * Pipeline deployment at a fog coordinator: `PUT /v1/pipelines/{name}` (YAML body) and `DELETE`,
 * guarded by the admin token, and `GET /v1/deployments`, the deployed set edges fetch when a fog
 * gossips a newer revision of it. The set is kept by a DeploymentStore: a file for a single fog, etcd
 * for a cluster (every coordinator then sees every change through its watch, and serves the same set).
 */
import { HttpError, PipelineError } from '../core/errors.ts'
import { changeSet, DEPLOYMENT_LIMITS, deployableName, deployedSpec, incompatibility, sameSpec } from '../core/pipeline/deployment.ts'
import type { DeployedSet } from '../core/pipeline/deployment.ts'
import { pipelineToPlain } from '../core/pipeline/format.ts'
import { parseSinglePipeline } from '../core/pipeline/parse.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import type { PipelineDef } from '../core/upstream/batch.ts'
import { sameSelects } from '../core/upstream/merge.ts'
import { pipelineDef } from '../core/upstream/pipeline-def.ts'
import { BearerToken } from '../server/shell/bearer.ts'
import type { DeploymentStore } from '../server/shell/deployment-store.ts'
import type { Reply, Request, Route } from '../server/shell/http.ts'
import type { Logger } from '../server/shell/log.ts'
import type { Metrics } from '../server/shell/metrics.ts'
import { SerialQueue } from '../server/shell/serial-queue.ts'

export interface DeploymentsOptions {
  /** --admin-token; without one, PUT and DELETE answer 403 deployment_disabled. */
  adminToken: string | undefined
  store: DeploymentStore
  /** The fog's own --pipelines: a deployment may not replace them. */
  local: ReadonlyMap<string, PipelineSpec>
  /** How the fog merges a pipeline of that name now (it may have learned one from batches). */
  definition: (name: string) => PipelineDef | undefined
  /** Called with the deployed pipelines whenever the set changes. */
  onChange: (specs: PipelineSpec[]) => void
  log: Logger
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

export class Deployments {
  readonly #o: DeploymentsOptions
  readonly #token: BearerToken | undefined
  #set: DeployedSet
  #specs = new Map<string, PipelineSpec>()
  /** Changes run one at a time: each is computed from the set the one before it left. */
  readonly #changes = new SerialQueue()
  readonly stats = { deployed: 0, deleted: 0, refused: 0 }

  constructor (options: DeploymentsOptions) {
    this.#o = options
    this.#token = options.adminToken === undefined ? undefined : new BearerToken(options.adminToken)
    this.#set = { revision: -1, pipelines: [] }
    this.#take(options.store.current())
  }

  get revision (): number {
    return this.#set.revision
  }

  get set (): DeployedSet {
    return this.#set
  }

  specs (): PipelineSpec[] {
    return [...this.#specs.values()]
  }

  /** The store holds `set` now (changed here, or by another coordinator of the cluster). */
  adopt (set: DeployedSet): void {
    if (this.#take(set)) this.#o.onChange(this.specs())
  }

  #take (set: DeployedSet): boolean {
    if (set.revision <= this.#set.revision) return false
    const specs = new Map<string, PipelineSpec>()
    for (const p of set.pipelines) {
      try {
        specs.set(p.name, deployedSpec(p))
      } catch (err) {
        // Validated when it was deployed; a newer coordinator may have deployed what this one cannot read.
        this.#o.log.warn('deploy.unreadable', `cannot run deployed pipeline ${p.name} v${p.version} here (${(err as Error).message})`, {
          pipeline: p.name, version: p.version, reason: (err as Error).message
        })
      }
    }
    this.#set = set
    this.#specs = specs
    return true
  }

  routes (): Route[] {
    return [
      { method: 'PUT', path: '/v1/pipelines/{name}', handle: async req => await this.#serially(async () => await this.#put(req)) },
      { method: 'DELETE', path: '/v1/pipelines/{name}', handle: async req => await this.#serially(async () => await this.#delete(req)) },
      // A dry run of PUT (the web console checks a pipeline before it deploys it): the same checks and
      // answers (400 pipeline_invalid with every problem's line and column, 409 …), nothing stored.
      { method: 'POST', path: '/v1/pipelines/{name}/validate', handle: async req => await this.#validate(req) },
      { method: 'GET', path: '/v1/deployments', handle: () => ({ body: this.#set }) }
    ]
  }

  registerMetrics (m: Metrics): void {
    m.gauge('fogmesh_deployment_revision', 'Revision of the deployed pipeline set this fog serves', [], () => [[{}, Math.max(0, this.#set.revision)]])
    m.counter('fogmesh_deployments_total', 'Pipeline deployments through this fog, by outcome', ['outcome'], () => [
      [{ outcome: 'deployed' }, this.stats.deployed], [{ outcome: 'deleted' }, this.stats.deleted], [{ outcome: 'refused' }, this.stats.refused]
    ])
  }

  async #serially (fn: () => Promise<Reply>): Promise<Reply> {
    try {
      return await this.#changes.run(fn)
    } catch (err) {
      this.stats.refused++
      throw err
    }
  }

  #authorize (req: Request): void {
    if (this.#token === undefined) {
      throw new HttpError(403, 'deployment_disabled', 'pipeline deployment is off on this fog: start it with --admin-token')
    }
    if (!this.#token.matches(req.headers.authorization)) {
      throw new HttpError(401, 'unauthorized', 'pipeline deployment needs the header "Authorization: Bearer <admin token>"')
    }
  }

  #name (req: Request): string {
    const name = req.params.name
    if (!deployableName(name)) throw new HttpError(400, 'bad_parameter', `"${name.slice(0, 80)}" is not a pipeline name ([a-z0-9-]+, at most ${DEPLOYMENT_LIMITS.name} characters)`)
    if (this.#o.local.has(name)) {
      throw new HttpError(409, 'pipeline_conflict', `pipeline "${name}" is defined in this fog's pipelines file; deployed pipelines cannot replace it`)
    }
    return name
  }

  async #validate (req: Request): Promise<Reply> {
    const { name, spec, current } = await this.#check(req)
    const version = current !== undefined && sameSpec(current, spec) ? current.version : Math.max(spec.version, (current?.version ?? 0) + 1)
    return { body: { valid: true, pipeline: this.#info({ ...spec, name, version }), changed: current === undefined || !sameSpec(current, spec) } }
  }

  /** The checks of a PUT, up to the change itself. */
  async #check (req: Request): Promise<{ name: string, yaml: string, spec: PipelineSpec, current: PipelineSpec | undefined }> {
    this.#authorize(req)
    const name = this.#name(req)
    const body = await req.body()
    if (body.byteLength > DEPLOYMENT_LIMITS.yamlBytes) {
      throw new HttpError(413, 'body_too_large', `a pipeline's YAML is at most ${DEPLOYMENT_LIMITS.yamlBytes} bytes, not ${body.byteLength}`)
    }
    let yaml: string
    try {
      // Strictly: a lenient decode would turn each bad byte into a three-byte replacement character and
      // store a pipeline larger than any node reads back.
      yaml = utf8.decode(body)
    } catch {
      throw new HttpError(400, 'bad_encoding', 'a pipeline\'s YAML must be UTF-8')
    }
    let spec: PipelineSpec
    try {
      spec = parseSinglePipeline(yaml, `PUT /v1/pipelines/${name}`)
    } catch (err) {
      if (err instanceof PipelineError) throw new HttpError(400, err.code, err.message, { details: { problems: err.problems } })
      throw err
    }
    if (spec.name !== name) throw new HttpError(400, 'name_mismatch', `the YAML names pipeline "${spec.name}", the path "${name}"`)
    const current = this.#specs.get(name)
    if (current !== undefined) {
      const why = incompatibility(current, spec)
      if (why !== undefined) throw new HttpError(409, 'incompatible_change', why)
    } else {
      const known = this.#o.definition(name)
      if (known !== undefined && !sameSelects(known, pipelineDef(spec))) {
        throw new HttpError(409, 'pipeline_conflict', `this fog holds results of an earlier pipeline "${name}" that merges differently (window or select); use another name`)
      }
    }
    if (current === undefined && this.#set.pipelines.length >= DEPLOYMENT_LIMITS.pipelines) {
      throw new HttpError(409, 'too_many_pipelines', `at most ${DEPLOYMENT_LIMITS.pipelines} pipelines can be deployed; delete one first`)
    }
    return { name, yaml, spec, current }
  }

  async #put (req: Request): Promise<Reply> {
    const { name, yaml, spec, current } = await this.#check(req)
    if (current !== undefined && sameSpec(current, spec)) return { body: { pipeline: this.#info(current), revision: this.#set.revision, changed: false } }
    // A version given in the YAML is kept when it is ahead; otherwise each deployment counts up.
    const version = Math.max(spec.version, (current?.version ?? 0) + 1)
    const next = changeSet(this.#set, { put: { name, version, yaml } })
    await this.#o.store.replace(next, this.#set.revision)
    this.adopt(next)
    this.stats.deployed++
    this.#o.log.info('deploy.deployed', `${name} v${version} deployed (set revision ${next.revision})`, { pipeline: name, version, revision: next.revision })
    return { status: current === undefined ? 201 : 200, body: { pipeline: this.#info({ ...spec, version }), revision: next.revision, changed: true } }
  }

  async #delete (req: Request): Promise<Reply> {
    this.#authorize(req)
    const name = this.#name(req)
    if (!this.#set.pipelines.some(p => p.name === name)) throw new HttpError(404, 'unknown_pipeline', `no deployed pipeline named "${name}"`)
    const next = changeSet(this.#set, { remove: name })
    await this.#o.store.replace(next, this.#set.revision)
    this.adopt(next)
    this.stats.deleted++
    this.#o.log.info('deploy.deleted', `${name} deleted (set revision ${next.revision})`, { pipeline: name, revision: next.revision })
    return { body: { deleted: name, revision: next.revision } }
  }

  #info (spec: PipelineSpec): { name: string, version: number, spec: Record<string, unknown> } {
    return { name: spec.name, version: spec.version, spec: pipelineToPlain(spec) }
  }
}

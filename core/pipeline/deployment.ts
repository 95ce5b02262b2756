/**
 * Pipelines deployed through a fog coordinator (`PUT /v1/pipelines/{name}`) rather than read from a
 * local file: the set every tier agrees on, its wire form, and what a new version may change.
 *
 * The set is versioned as a whole (`revision`, +1 per PUT or DELETE that changed it) so that a node can
 * tell from one number in a heartbeat whether it runs the current set; each pipeline keeps its own
 * `version`. A pipeline travels as the YAML it was deployed with: every node parses it with the same
 * parser, so what runs at an edge is exactly what the fog validated.
 *
 * A new version of a running pipeline keeps its window state (open windows go on, late updates still
 * apply), so it may change how readings are chosen and keyed (`from`, `where`, `key`, `timestamp`,
 * `format`, `lateness`, `idle`, `late`, `emit`) but not what the merge tiers merge: its `window` and
 * `select` must stay as they are (as `CREATE OR REPLACE` in ksqlDB refuses to change an aggregation).
 * Anything else is a new pipeline: deploy it under a new name, and delete the old one.
 */
import { FogmeshError } from '../errors.ts'
import { isPlainMap } from '../plain-map.ts'
import { pipelineToPlain } from './format.ts'
import { parseSinglePipeline } from './parse.ts'
import { PIPELINE_NAME } from './spec.ts'
import type { PipelineSpec } from './spec.ts'

export interface DeployedPipeline {
  name: string
  version: number
  /** The YAML body it was deployed with. */
  yaml: string
}

export interface DeployedSet {
  /** 0 for the empty set nobody deployed to; +1 for every change. */
  revision: number
  /** Sorted by name. */
  pipelines: DeployedPipeline[]
}

export const EMPTY_DEPLOYMENT: DeployedSet = { revision: 0, pipelines: [] }

/** Bounds of a deployed set: it travels whole (etcd value, HTTP body), so it stays small. */
export const DEPLOYMENT_LIMITS = {
  /** Most pipelines deployed at once (a heartbeat reports at most 64 per node anyway). */
  pipelines: 64,
  /** Longest YAML body of one pipeline, bytes. */
  yamlBytes: 16 * 1024,
  /** Longest name of a deployed pipeline (it is a path segment, a key in etcd and a heartbeat field). */
  name: 64
}

/** Whether `name` can name a deployed pipeline. */
export function deployableName (name: string): boolean {
  return name.length <= DEPLOYMENT_LIMITS.name && PIPELINE_NAME.test(name)
}

/** A deployed set that cannot be read (from a peer, a file or etcd). */
export class DeploymentError extends FogmeshError {
  constructor (message: string, options?: ErrorOptions) {
    super('deployment_invalid', message, options)
  }
}

/** The spec a deployed pipeline runs as: its YAML, with the version the fog gave it. */
export function deployedSpec (p: DeployedPipeline): PipelineSpec {
  const spec = parseSinglePipeline(p.yaml, `deployed pipeline ${p.name}`)
  if (spec.name !== p.name) throw new DeploymentError(`deployed pipeline ${p.name} is named "${spec.name}" in its YAML`)
  return { ...spec, version: p.version }
}

/** Why `next` cannot replace `running` in place, or undefined when it can. */
export function incompatibility (running: PipelineSpec, next: PipelineSpec): string | undefined {
  const a = pipelineToPlain(running)
  const b = pipelineToPlain(next)
  for (const field of ['window', 'select'] as const) {
    if (JSON.stringify(a[field]) !== JSON.stringify(b[field])) {
      return `a new version of "${running.name}" may not change its ${field} (${JSON.stringify(a[field])} → ${JSON.stringify(b[field])}): ` +
        'the windows it has open, here and at every edge, would merge differently; deploy it under a new name and delete this one'
    }
  }
  return undefined
}

/** Whether two specs run the same way (the version aside). */
export function sameSpec (a: PipelineSpec, b: PipelineSpec): boolean {
  return JSON.stringify({ ...pipelineToPlain(a), version: 0 }) === JSON.stringify({ ...pipelineToPlain(b), version: 0 })
}

/**
 * Checks a deployed set read from elsewhere: shape, bounds, names unique and sorted. The pipelines'
 * YAML is not parsed here; a node parses each one when it applies it (and skips, loudly, one it
 * cannot: a newer fog may deploy what an older edge does not understand).
 */
export function readDeployedSet (v: unknown): DeployedSet {
  if (!isPlainMap(v)) throw new DeploymentError('a deployed set is an object')
  const { revision, pipelines } = v
  if (typeof revision !== 'number' || !Number.isSafeInteger(revision) || revision < 0) throw new DeploymentError('revision: expected a non-negative integer')
  if (!Array.isArray(pipelines) || pipelines.length > DEPLOYMENT_LIMITS.pipelines) {
    throw new DeploymentError(`pipelines: expected a list of at most ${DEPLOYMENT_LIMITS.pipelines}`)
  }
  const out: DeployedPipeline[] = []
  for (const [i, p] of pipelines.entries()) {
    if (!isPlainMap(p)) throw new DeploymentError(`pipelines[${i}]: expected an object`)
    const { name, version, yaml } = p
    if (typeof name !== 'string' || !deployableName(name)) throw new DeploymentError(`pipelines[${i}].name: expected a pipeline name`)
    if (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 1) throw new DeploymentError(`pipelines[${i}].version: expected a positive integer`)
    if (typeof yaml !== 'string' || Buffer.byteLength(yaml) > DEPLOYMENT_LIMITS.yamlBytes) {
      throw new DeploymentError(`pipelines[${i}].yaml: expected a string of at most ${DEPLOYMENT_LIMITS.yamlBytes} bytes`)
    }
    if (i > 0 && out[i - 1].name >= name) throw new DeploymentError('pipelines: expected unique names in order')
    out.push({ name, version, yaml })
  }
  return { revision, pipelines: out }
}

/** The set with `p` put in (replacing a pipeline of its name) or, with `remove`, that name taken out. */
export function changeSet (set: DeployedSet, change: { put: DeployedPipeline } | { remove: string }): DeployedSet {
  const name = 'put' in change ? change.put.name : change.remove
  const pipelines = set.pipelines.filter(p => p.name !== name)
  if ('put' in change) pipelines.push(change.put)
  pipelines.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  return { revision: set.revision + 1, pipelines }
}

/**
 * The pipelines a merge node merges, and how: those of its --pipelines file, those deployed to the
 * mesh (a fog), and those learned from batches (definitions that came with partials).
 *
 * Invariants:
 * - one definition per name, and a name never changes how it merges (`sameSelects`): a batch whose
 *   definition merges differently is refused whole (409 pipeline_conflict) before anything of it is
 *   staged, and a pipelines file that contradicts the stored definitions refuses to start;
 * - the learned definitions are kept apart from the file's and the deployed ones: the windows stored
 *   with a definition stay mergeable after a restart without the pipelines file;
 * - a pipeline deleted from the deployed set keeps its definition (it may have windows still to
 *   finalize, and its results stay queryable).
 */
import { ConfigError, HttpError } from '../../core/errors.ts'
import { pipelineToPlain } from '../../core/pipeline/format.ts'
import type { PipelineSpec } from '../../core/pipeline/spec.ts'
import type { Batch, PipelineDef } from '../../core/upstream/batch.ts'
import { sameSelects } from '../../core/upstream/merge.ts'
import { pipelineDef } from '../../core/upstream/pipeline-def.ts'
import type { PipelineInfo } from '../shell/http.ts'

export interface PipelineRegistryInit {
  /** Named in the refusal of a conflicting batch: "the … this fog merges". */
  role: 'fog' | 'cloud'
  /** The pipelines of the --pipelines file. */
  specs: readonly PipelineSpec[]
  /** The definitions the node's store holds (learned from batches before a restart). */
  stored: readonly PipelineDef[]
  /** Named in the startup error of a conflict between the two: --pipelines and --data-dir. */
  pipelinesFile?: string
  dataDir?: string
}

export class PipelineRegistry {
  readonly #role: 'fog' | 'cloud'
  /** Pipelines from --pipelines, by name. */
  readonly #fileSpecs: Map<string, PipelineSpec>
  /** Pipelines from --pipelines and deployed ones, by name (shown as specs by /v1/pipelines). */
  #specs: Map<string, PipelineSpec>
  /** Every pipeline merged here: from --pipelines and learned from batches. */
  readonly #defs = new Map<string, PipelineDef>()
  /** The definitions in the store. */
  readonly #learned = new Map<string, PipelineDef>()

  constructor (init: PipelineRegistryInit) {
    this.#role = init.role
    this.#fileSpecs = new Map(init.specs.map(s => [s.name, s]))
    this.#specs = new Map(this.#fileSpecs)
    for (const s of init.specs) this.#defs.set(s.name, pipelineDef(s))
    for (const def of init.stored) {
      this.#learned.set(def.name, def)
      const known = this.#defs.get(def.name)
      if (known !== undefined && !sameSelects(known, def)) {
        throw new ConfigError(`pipeline "${def.name}" in ${init.pipelinesFile ?? 'the pipelines file'} merges differently from the one in ${init.dataDir} ` +
          '(learned from batches): its stored partials cannot be merged with the new definition; use a new pipeline name or another data dir')
      }
      if (known === undefined) this.#defs.set(def.name, def)
    }
  }

  /** How a pipeline merged here merges (from --pipelines, deployed, or learned from batches). */
  definition (pipeline: string): PipelineDef | undefined {
    return this.#defs.get(pipeline)
  }

  has (pipeline: string): boolean {
    return this.#defs.has(pipeline)
  }

  /** The names of every pipeline merged here. */
  names (): IterableIterator<string> {
    return this.#defs.keys()
  }

  /** The pipelines with a spec (from --pipelines, or deployed), as heartbeats list them. */
  specs (): PipelineSpec[] {
    return [...this.#specs.values()]
  }

  /**
   * The deployed pipelines, as of the latest change: merged here from now on and listed with their
   * specs. A pipeline of the --pipelines file keeps its own spec.
   */
  setDeployed (specs: readonly PipelineSpec[]): void {
    const next = new Map(this.#fileSpecs)
    for (const s of specs) {
      if (next.has(s.name)) continue
      next.set(s.name, s)
      // The deployment checked it merges as the definition known here; the version is the news.
      this.#defs.set(s.name, pipelineDef(s))
    }
    this.#specs = next
  }

  /**
   * The definitions of `batch` to learn (new ones, or known ones with a higher version), on top of
   * `staged` (those the batches before it in the same commit bring). Throws 409 pipeline_conflict when
   * one merges differently from the one known here: the batch is then refused whole.
   */
  toLearn (batch: Batch, staged: ReadonlyMap<string, PipelineDef>): PipelineDef[] {
    const fresh: PipelineDef[] = []
    for (const d of batch.pipelines) {
      const known = staged.get(d.name) ?? this.#defs.get(d.name)
      if (known !== undefined && !sameSelects(known, d)) {
        throw new HttpError(409, 'pipeline_conflict', `pipeline "${d.name}" version ${d.version} from ${batch.sender} merges differently ` +
          `(window or select) from the "${d.name}" this ${this.#role} merges (version ${known.version}); nothing was stored`)
      }
      const learned = staged.get(d.name) ?? this.#learned.get(d.name)
      if (learned === undefined || d.version > learned.version) fresh.push(d)
    }
    return fresh
  }

  /** Definitions now in the store (committed here, or by another node of the cluster). */
  learn (defs: Iterable<PipelineDef>): void {
    for (const d of defs) {
      this.#learned.set(d.name, d)
      if (!this.#specs.has(d.name)) this.#defs.set(d.name, d)
    }
  }

  /**
   * Pipelines from --pipelines (and deployed ones) as their YAML shape; pipelines learned from batches
   * as their merge definition: `{ name, version, window: kind, selects: [{ name, fn, params }] }`.
   */
  infos (): PipelineInfo[] {
    return [...this.#defs.values()].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0).map(def => {
      const spec = this.#specs.get(def.name)
      return spec !== undefined
        ? { name: spec.name, version: spec.version, spec: pipelineToPlain(spec) }
        : { name: def.name, version: def.version, spec: { ...def } }
    })
  }
}

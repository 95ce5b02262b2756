/**
 * How a MergeNode takes part in a replicated cluster (the fog cluster on etcd). Without one, the node
 * keeps its state in its own durable store (a single fog, the cloud sink). With one, every change is
 * committed to the replicated state first, fenced (refused unless this node still owns the windows'
 * shards), and only then applied here; changes other nodes committed come in through `apply`.
 */
import type { Batch, PipelineDef } from '../../core/upstream/batch.ts'
import type { ShardMapView } from '../../core/upstream/shards.ts'
import type { BatchWrite, MergeWindow } from './contribution-store.ts'

/** Changes other nodes committed, for MergeNode.applyReplicated. */
export interface ReplicatedChange {
  pipelines: PipelineDef[]
  /** Whole window records, newer than what this node has. */
  windows: MergeWindow[]
}

export interface Replication {
  /**
   * Throws an HttpError when this node may not take the batch now: 503 `no_quorum` (the replicated
   * state cannot commit), 503 `starting`, 421 `wrong_shard` (a window of a shard it does not own; the
   * error carries the current shard map).
   */
  admit: (batch: Batch) => void
  /** Commits a batch's changes (`windows`: every window the batch changed, whole) before they apply here. */
  commitBatch: (write: BatchWrite, windows: readonly MergeWindow[]) => Promise<void>
  /** Commits windows as final (each with its new revision) before they are recorded here. */
  commitFinal: (due: ReadonlyArray<{ window: MergeWindow, revision: number }>, at: number) => Promise<void>
  /** Whether this node may finalize now (false while it is joining and cannot know every edge yet). */
  finalizing: () => boolean
  /** Whether this node owns the shard of (pipeline, key), and so finalizes its windows. */
  owns: (pipeline: string, key: string) => boolean
  /** The shard map and status, for GET /v1/shards and /v1/mesh. */
  view: () => ShardMapView
}

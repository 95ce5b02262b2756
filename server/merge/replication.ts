/**
 * How a MergeNode takes part in a replicated cluster (the fog cluster on etcd). Without one, the node
 * keeps its state in its own durable store (a single fog, the cloud sink). With one, every change is
 * committed to the replicated state first, fenced (refused unless this node still owns the windows'
 * shards), and only then applied here; changes other nodes committed come in through `apply`.
 *
 * A node's sinks get every final window at least once across a crash between the replicated commit
 * and their queues: with sinks, the results are committed with the final windows as handed to the
 * sinks, and kept there until the node says they are in its sinks' queues; a node that comes to own a
 * shard (at its start, or taking it over) gets those still kept and appends them to its sinks again.
 */
import type { Batch, PipelineDef } from '../../core/upstream/batch.ts'
import type { ShardMapView } from '../../core/upstream/shards.ts'
import type { WindowResult } from '../shell/results.ts'
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
  /**
   * Commits windows as final (each with its new revision) before they are recorded here. With
   * `results` (the node has sinks; one per window, in the same order) they are kept as handed to the
   * sinks, and the function returned is to be called once they are in the sinks' queues.
   */
  commitFinal: (due: ReadonlyArray<{ window: MergeWindow, revision: number }>, at: number, results?: readonly WindowResult[]) => Promise<(() => void) | undefined>
  /**
   * Where results handed to the sinks that may not have reached their queues go (this node's own from
   * before a restart, or a previous owner's in a shard taken over): `toSinks` appends them and returns
   * whether they are in the queues now. Set once, by a node with sinks.
   */
  handOver: (toSinks: (results: readonly WindowResult[]) => boolean) => void
  /** Whether this node may finalize now (false while it is joining and cannot know every edge yet). */
  finalizing: () => boolean
  /** Whether this node owns the shard of (pipeline, key), and so finalizes its windows. */
  owns: (pipeline: string, key: string) => boolean
  /** The shard map and status, for GET /v1/shards and /v1/mesh. */
  view: () => ShardMapView
}

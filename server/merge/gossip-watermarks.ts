/**
 * A fog in the mesh finalizes on the watermarks edges gossip too (those their fogs acknowledged: a
 * cluster member that missed an edge's watermark batch catches up, and an edge is known before it
 * sends), and stops waiting for an edge whose heartbeats stopped, as for an edge gone silent.
 *
 * Invariants:
 * - only a fog listens (the cloud finalizes on what batches bring), and only with the mesh on;
 * - a gossiped watermark counts only for a pipeline merged here and never moves one back;
 * - an expired edge is silenced once per expiry: a batch from it later makes it waited for again.
 */
import type { Finalizer } from '../../core/upstream/merge.ts'
import type { RoleMesh } from '../mesh/role-mesh.ts'
import type { PipelineRegistry } from './pipeline-registry.ts'

export class GossipWatermarks {
  readonly #membership: RoleMesh
  readonly #pipelines: PipelineRegistry
  readonly #finalizer: Finalizer
  /** Edges expired in the mesh view that are no longer waited for. */
  readonly #silenced = new Set<string>()

  constructor (parts: { membership: RoleMesh, pipelines: PipelineRegistry, finalizer: Finalizer }) {
    this.#membership = parts.membership
    this.#pipelines = parts.pipelines
    this.#finalizer = parts.finalizer
  }

  /** The mesh's view of the edges, into the finalizer (before each finalization pass). */
  apply (now: number): void {
    const node = this.#membership.node
    if (node === undefined) return
    for (const p of node.view().peers) {
      if (p.role !== 'edge') continue
      if (p.state === 'alive') {
        this.#silenced.delete(p.id)
        for (const pl of p.heartbeat.pipelines ?? []) {
          if (typeof pl.watermark === 'number' && Number.isFinite(pl.watermark) && this.#pipelines.has(pl.name)) this.#finalizer.gossiped(pl.name, p.id, pl.watermark, now)
        }
      } else if (!this.#silenced.has(p.id)) {
        this.#silenced.add(p.id)
        this.#finalizer.silence(p.id)
      }
    }
  }
}

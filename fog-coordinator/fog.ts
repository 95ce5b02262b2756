/**
 * The fog coordinator: a MergeNode (partials in, merged results out) and, with --cloud, a forwarder
 * that takes every finalized window to the cloud sink.
 */
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import type { Runnable } from '../server/lifecycle.ts'
import { MergeNode } from '../server/merge-node.ts'
import type { FogOptions } from './config.ts'
import { Forwarder } from './forwarder.ts'

export class FogCoordinator implements Runnable {
  readonly node: MergeNode
  /** Undefined without --cloud: final windows stay here. */
  readonly forwarder: Forwarder | undefined

  constructor (options: FogOptions, specs: PipelineSpec[]) {
    this.node = new MergeNode('fog', options, specs)
    this.forwarder = options.cloud === undefined
      ? undefined
      : new Forwarder(this.node, {
        fog: options.id,
        dataDir: options.dataDir,
        cloud: options.cloud,
        outboxMax: options.outboxMax,
        requestTimeout: options.uplinkTimeout,
        retryMax: options.uplinkRetryMax
      })
  }

  async start (): Promise<void> {
    await this.node.start()
    this.forwarder?.start()
  }

  /** The node first: once it takes no batches and finalizes nothing more, the outbox can close. */
  async stop (): Promise<void> {
    await this.node.stop()
    await this.forwarder?.stop()
  }

  readyLine (): string {
    return this.node.readyLine()
  }
}

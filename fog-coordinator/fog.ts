/**
 * The fog coordinator: a MergeNode (partials in, merged results out), with --etcd one member of a
 * replicated cluster (FogCluster), and with --cloud a forwarder that takes every finalized window to
 * the cloud sink.
 */
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import type { WindowEntry } from '../core/upstream/batch.ts'
import type { Runnable } from '../server/shell/lifecycle.ts'
import { FileDeploymentStore } from '../server/shell/deployment-store.ts'
import { roleLogger } from '../server/shell/log.ts'
import type { Logger } from '../server/shell/log.ts'
import { MergeNode } from '../server/merge/merge-node.ts'
import { NodeSecurity } from '../server/shell/security.ts'
import { FogCluster } from './cluster.ts'
import type { WindowRef } from './cluster-layout.ts'
import type { FogOptions } from './config.ts'
import { Deployments } from './deployments.ts'
import { Forwarder } from './forwarder.ts'

export class FogCoordinator implements Runnable {
  readonly node: MergeNode
  /** Undefined without --etcd: a single fog with its own store. */
  readonly cluster: FogCluster | undefined
  /** Pipelines deployed through this fog (PUT /v1/pipelines/{name}). */
  readonly deployments: Deployments
  /** Undefined without --cloud: final windows stay here. */
  readonly forwarder: Forwarder | undefined
  /** TLS and the API token; the forwarder calls the cloud with its client (this fog's certificate). */
  readonly security: NodeSecurity

  /** `log` defaults to the node's own, from its options (--log-level, --log-format). */
  constructor (options: FogOptions, specs: PipelineSpec[], log: Logger = roleLogger('fog', options)) {
    this.security = new NodeSecurity(options, [{ flag: '--host', host: options.host }])
    this.cluster = options.etcd === undefined
      ? undefined
      : new FogCluster({
        id: options.id,
        endpoints: options.etcd,
        // Over https://, etcd is verified with --tls-ca and sees this node's certificate.
        tls: this.security.clientTls,
        prefix: options.etcdPrefix,
        leaseTtl: options.leaseTtl,
        shards: options.shards,
        etcdTimeout: options.etcdTimeout,
        maintainEvery: options.etcdMaintainEvery,
        retention: options.etcdRetention,
        forward: options.cloud !== undefined,
        log
      })
    // In a cluster, results live as long as etcd keeps them.
    const nodeOptions = this.cluster === undefined ? options : { ...options, retention: options.etcdRetention }
    this.deployments = new Deployments({
      adminToken: options.adminToken,
      store: this.cluster?.deployments ?? new FileDeploymentStore(options.dataDir, log),
      local: new Map(specs.map(s => [s.name, s])),
      definition: name => this.node.definition(name),
      onChange: deployed => { this.node.setDeployed(deployed) },
      log
    })
    this.node = new MergeNode('fog', nodeOptions, specs, {
      replication: this.cluster,
      routes: this.deployments.routes(),
      log,
      security: this.security,
      // Read at each heartbeat: the forwarder is made from the node, below.
      outboxDepth: () => this.forwarder?.outbox.items ?? 0,
      deployedRevision: () => Math.max(0, this.deployments.revision)
    })
    this.node.setDeployed(this.deployments.specs())
    this.deployments.registerMetrics(this.node.metrics)
    this.cluster?.registerMetrics(this.node.metrics)
    const cluster = this.cluster
    this.forwarder = options.cloud === undefined
      ? undefined
      : new Forwarder(this.node, {
        fog: options.id,
        dataDir: options.dataDir,
        cloud: options.cloud,
        outboxMax: options.outboxMax,
        requestTimeout: options.uplinkTimeout,
        retryMax: options.uplinkRetryMax,
        log,
        client: this.security.client,
        // The replicated marks of what the cloud has: a coordinator taking over a shard forwards the rest.
        onDelivered: cluster === undefined ? undefined : windows => { cluster.forwarded(windows).catch(() => {}) }
      })
  }

  /** `abort`: a stop signal while the cluster waits for etcd ends the start (see server/shell/lifecycle.ts). */
  async start (abort?: AbortSignal): Promise<void> {
    await this.node.start()
    await this.cluster?.start(this.node.advertisedUrl, {
      apply: change => { this.node.mirror.apply(change) },
      toForward: windows => { this.#forwardAgain(windows) },
      expired: (before, limit) => this.node.mirror.finalBefore(before, limit),
      removed: windows => { this.node.mirror.remove(windows) },
      deployed: set => { this.deployments.adopt(set) }
    }, abort)
    if (abort?.aborted === true) return
    this.forwarder?.start()
  }

  /** The node first: once it takes no batches and finalizes nothing more, the cluster and outbox can close. */
  async stop (): Promise<void> {
    await this.node.stop()
    await this.cluster?.stop()
    await this.forwarder?.stop()
    this.security.close()
  }

  reload (): void {
    this.node.reload()
  }

  readyLine (): string {
    return this.node.readyLine()
  }

  /** Final windows of shards taken over from another coordinator that the cloud may not have yet. */
  #forwardAgain (windows: Array<{ ref: WindowRef, revision: number }>): void {
    if (this.forwarder === undefined) return
    const entries: WindowEntry[] = []
    for (const { ref } of windows) {
      const w = this.node.mirror.window(ref)
      if (w === undefined || w.finalRevision === null) continue
      entries.push({ pipeline: w.pipeline, key: w.key, start: w.start, end: w.end, final: w.finalRevision, contributions: [...w.contributions.values()] })
    }
    if (entries.length > 0) this.forwarder.forward(entries)
  }
}

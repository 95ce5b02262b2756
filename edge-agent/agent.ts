/**
 * The edge agent: readings in over MQTT (embedded broker or an existing one), windowed pipelines,
 * results into a local store and local actions, and the HTTP API over all of it.
 */
import type { RejectReason } from '../core/errors.ts'
import { sparkplugState } from '../core/formats/sparkplug.ts'
import { deployedSpec, incompatibility, sameSpec } from '../core/pipeline/deployment.ts'
import type { DeployedSet } from '../core/pipeline/deployment.ts'
import { pipelineToPlain } from '../core/pipeline/format.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import type { WindowOperator } from '../core/windows/operator.ts'
import { windowValues } from '../core/windows/window.ts'
import type { WindowState } from '../core/windows/window.ts'
import { advertisedUrl } from '../server/shell/advertise.ts'
import { FileDeploymentStore } from '../server/shell/deployment-store.ts'
import { HttpService, httpLimits } from '../server/shell/http.ts'
import type { HeartbeatInput } from '../server/mesh/mesh-node.ts'
import { meshEnabled, RoleMesh, SOFTWARE_VERSION } from '../server/mesh/role-mesh.ts'
import type { PipelineInfo, ServiceApi } from '../server/shell/http.ts'
import { roleLogger } from '../server/shell/log.ts'
import type { Logger } from '../server/shell/log.ts'
import { Metrics } from '../server/shell/metrics.ts'
import type { Sample } from '../server/shell/metrics.ts'
import { ResultStore } from '../server/shell/result-store.ts'
import { NodeSecurity } from '../server/shell/security.ts'
import { withLive } from '../server/shell/results.ts'
import type { ResultQuery, WindowResult } from '../server/shell/results.ts'
import { EmbeddedBroker, internalLogin, PACKET_HEADROOM } from './broker.ts'
import { Checkpointer } from './checkpoint.ts'
import { removeCheckpoint } from './checkpoint-db.ts'
import { ConfigError } from '../core/errors.ts'
import { DeploymentFollower } from './deployment-follower.ts'
import type { EdgeOptions } from './config.ts'
import { PipelineRunner } from './pipelines.ts'
import type { MessageSource } from './source.ts'
import { BrokerSubscriber } from './subscriber.ts'
import { EdgeOutputs } from './outputs.ts'
import type { Uplink, UplinkStatus } from './uplink.ts'
import { upstreamOutput } from './upstream-output.ts'

/** How often results past retention are pruned. */
const PRUNE_EVERY = 60_000
const REASONS: RejectReason[] = ['too_large', 'parse', 'missing_field', 'non_finite', 'bad_timestamp', 'future_timestamp', 'type', 'expression',
  'sparkplug_topic', 'sparkplug_alias', 'sparkplug_no_birth']

export class EdgeAgent implements ServiceApi {
  readonly role = 'edge' as const
  readonly id: string
  readonly metrics = new Metrics()
  readonly #options: EdgeOptions
  readonly #log: Logger
  readonly #store: ResultStore
  readonly #runner: PipelineRunner
  readonly #source: MessageSource
  readonly #http: HttpService
  /** TLS and the API token; every call to a fog or the cloud goes through its client (this edge's certificate). */
  readonly #security: NodeSecurity
  /**
   * Where closed windows go besides the store (the config file's sinks, emit: mqtt, emit: sparkplug,
   * upstream), built from the registry in outputs.ts.
   */
  readonly #outputs: EdgeOutputs
  /** The upstream output's; undefined without --fog, --cloud and the mesh: then nothing is queued for upstream (see README). */
  readonly #uplink: Uplink | undefined
  /** Undefined with --checkpoint-every 0. */
  readonly #checkpoints: Checkpointer | undefined
  /** Off unless --mesh-port or --bootstrap is given. */
  readonly membership: RoleMesh
  /** MQTT messages so far and when last sampled, for the heartbeat's rate. */
  #rate = { at: Date.now(), messages: 0, perSecond: 0 }
  /** Without --fog, with the mesh on: the fog tier is the fogs alive in the mesh view. */
  readonly #discoverFog: boolean
  /** Names of the pipelines from the local file: a deployed pipeline of the same name does not replace them. */
  readonly #local: Set<string>
  /** The deployed set this edge runs (kept in its data dir). */
  readonly #deployments: FileDeploymentStore
  readonly #follower: DeploymentFollower
  /** Deployed pipelines left out, logged once per name and version. */
  readonly #skipped = new Set<string>()
  #ready = false
  #timers: NodeJS.Timeout[] = []

  /** `log` defaults to the node's own, from its options (--log-level, --log-format). */
  constructor (options: EdgeOptions, specs: PipelineSpec[], log: Logger = roleLogger('edge', options)) {
    this.#options = options
    this.#log = log
    this.id = options.id
    // The embedded broker listens on --mqtt-host: exposed there, it needs TLS (or --insecure) as the API does.
    this.#security = new NodeSecurity(options, [{ flag: '--host', host: options.host },
      ...options.mqttUrl === undefined ? [{ flag: '--mqtt-host', host: options.mqttHost }] : []])
    const tls = this.#security.server
    if (options.mqttTlsPort !== undefined && tls === undefined) throw new ConfigError('--mqtt-tls-port needs --tls-cert and --tls-key: the broker serves MQTT over TLS with that certificate')
    this.#local = new Set(specs.map(s => s.name))
    // The deployed pipelines this edge ran last run from its start, before any fog is heard from:
    // their checkpoints are restored with the others'.
    this.#deployments = new FileDeploymentStore(options.dataDir, log)
    specs = [...specs, ...this.#deployedSpecs(this.#deployments.current())]
    const checkpoints = options.checkpointEvery > 0
    // The change log tells a restart which windows were emitted after its checkpoint.
    this.#store = new ResultStore({ dataDir: options.dataDir, retention: options.retention, maxResultsPerPipeline: options.maxResults, changeLog: checkpoints })
    // Sparkplug rebirth requests go to the broker the readings come from, as a host application's do.
    this.#runner = new PipelineRunner(specs, (op, w) => this.#onWindow(op, w), options.maxPayload, (topic, payload) => {
      this.#source.publish(topic, Buffer.from(payload), 0, false).catch((err: unknown) => {
        this.#log.warn('sparkplug.rebirth_failed', `cannot ask for a Sparkplug rebirth on ${topic} (${(err as Error).message})`, { topic, reason: (err as Error).message })
      })
    })
    // Without --fog, an edge in the mesh finds its fogs there (#discoverFogs) and queues for them
    // meanwhile, as it would for a --fog that is down.
    const discoverFog = options.fog.length === 0 && meshEnabled(options)
    this.#discoverFog = discoverFog
    this.#source = options.mqttUrl !== undefined
      ? new BrokerSubscriber({ url: options.mqttUrl, clientId: options.mqttClientId, filters: () => this.#runner.filters(), connectTimeout: 10_000, log, tls: this.#security.clientTls })
      : new EmbeddedBroker({
        host: options.mqttHost,
        port: options.mqttPort,
        users: options.users,
        internal: internalLogin(),
        maxPacket: Math.max(options.mqttMaxPacket, options.maxPayload + PACKET_HEADROOM),
        maxInflight: options.mqttMaxInflight,
        maxQueued: options.mqttMaxQueued,
        maxConnections: options.mqttMaxConnections,
        tlsPort: options.mqttTlsPort,
        tls
      })
    this.#outputs = new EdgeOutputs({
      options,
      discoverFog,
      log,
      metrics: this.metrics,
      security: this.#security,
      source: this.#source,
      operators: this.#runner.operators,
      // The shipper appends too, before each batch: the other outputs' queues and the store follow at once (see #commit).
      committed: by => {
        this.#outputs.commit(by)
        this.#store.flush()
      }
    })
    this.#uplink = this.#outputs.get(upstreamOutput)?.uplink
    if (checkpoints) {
      this.#checkpoints = new Checkpointer({ dataDir: options.dataDir, log }, { operators: this.#runner.operators, store: this.#store, uplink: this.#uplink })
    } else if (removeCheckpoint(options.dataDir)) {
      log.info('checkpoint.removed_stale', 'checkpoints are off: removed the checkpoint of an earlier run (it would be stale when they are back on)')
    }
    // GET /v1/broker: the embedded broker's clients (guarded like every GET /v1 route); an edge that
    // subscribes to an external broker has none to list.
    const source = this.#source
    const brokerRoute = {
      method: 'GET',
      path: '/v1/broker',
      handle: () => ({ body: source instanceof EmbeddedBroker ? { embedded: true, ...source.clients() } : { embedded: false, clients: [], disconnected: [] } })
    }
    this.#http = new HttpService(this, [brokerRoute], { host: options.host, port: options.httpPort, maxBody: 1 << 20, ...httpLimits(options), tls, apiToken: this.#security.apiToken, log })
    this.membership = new RoleMesh(options, 'edge', () => this.#heartbeat())
    this.#follower = new DeploymentFollower({
      store: this.#deployments,
      apply: set => { this.#applyDeployed(set) },
      timeout: options.uplinkTimeout,
      log,
      client: this.#security.client
    })
    this.#registerMetrics()
    this.membership.registerMetrics(this.metrics)
  }

  get httpUrl (): string {
    return this.#http.url
  }

  get mqttUrl (): string {
    return this.#source.url
  }

  async start (): Promise<void> {
    // The mesh code (loaded only with the mesh on) and a bad --bootstrap: before any port is opened.
    await this.membership.load()
    // Before the shipper can take items out of the outbox, and before any reading.
    this.#checkpoints?.restore(Date.now())
    await this.#http.listen()
    this.#outputs.start()
    await this.#source.start((topic, payload, arrival) => this.#runner.onMessage(topic, payload, arrival))
    this.#outputs.sourceUp()
    await this.membership.start()
    this.#timers.push(setInterval(() => this.#tick(), this.#options.tick))
    this.#timers.push(setInterval(() => {
      this.#commit()
      this.#store.prune()
    }, PRUNE_EVERY))
    if (this.#checkpoints !== undefined) {
      const checkpoints = this.#checkpoints
      this.#timers.push(setInterval(() => {
        this.#commit()
        checkpoints.take()
      }, this.#options.checkpointEvery))
    }
    this.#ready = true
  }

  /**
   * Stops taking readings, commits every result, takes a last checkpoint of the open windows (they
   * are not emitted: the next start restores them), and closes. Closed windows not yet delivered
   * upstream stay in the outbox for the next start.
   */
  async stop (): Promise<void> {
    this.#ready = false
    for (const t of this.#timers) clearInterval(t)
    await this.membership.stop()
    // Their last messages (Sparkplug NDEATH) go out before the embedded broker closes.
    await this.#outputs.sourceDown()
    await this.#source.stop()
    this.#commit()
    this.#checkpoints?.take()
    await this.#outputs.stop()
    await this.#http.close()
    this.#store.close()
    this.#checkpoints?.close()
    this.#security.close()
  }

  /** SIGHUP: the certificate files are read again; new connections (HTTP, MQTT over TLS, calls out) use them. */
  reload (): void {
    const tls = this.#security.reload()
    if (tls !== undefined) {
      this.#http.setTls(tls)
      if (this.#source instanceof EmbeddedBroker) this.#source.setTls(tls)
    }
    this.#log.info('tls.reloaded', `certificates read again from ${this.#security.files.join(', ') || '(no TLS files)'}`, { files: this.#security.files })
  }

  #tick (): void {
    if (this.#discoverFog) this.#discoverFogs()
    if (this.membership.enabled) {
      this.#followShardMap()
      this.#follower.check(this.membership.alive('fog'))
    }
    this.#runner.tick(Date.now())
    this.#commit()
    this.#checkpoints?.saveAccepted()
  }

  /** The specs of a deployed set this edge can run: not shadowed by a local pipeline, and readable. */
  #deployedSpecs (set: DeployedSet): PipelineSpec[] {
    const specs: PipelineSpec[] = []
    for (const p of set.pipelines) {
      const once = `${p.name} v${p.version}`
      if (this.#local.has(p.name)) {
        if (!this.#skipped.has(once)) {
          this.#log.warn('deploy.shadowed', `${once} not run here: the local pipelines file has a pipeline of that name`, { pipeline: p.name, version: p.version })
        }
        this.#skipped.add(once)
        continue
      }
      try {
        specs.push(deployedSpec(p))
      } catch (err) {
        // Checked by the fog that took it; a newer fog may deploy what this edge's version cannot read.
        if (!this.#skipped.has(once)) {
          this.#log.warn('deploy.unreadable', `${once} cannot run here (${(err as Error).message})`, { pipeline: p.name, version: p.version, reason: (err as Error).message })
        }
        this.#skipped.add(once)
      }
    }
    return specs
  }

  /**
   * Runs a new deployed set: pipelines new to this edge start, new versions replace the running ones
   * (keeping their window state when they merge the same way, see core/pipeline/deployment.ts), and
   * those no longer deployed stop after emitting their open windows. Other pipelines are not touched.
   */
  #applyDeployed (set: DeployedSet): void {
    const now = Date.now()
    const wanted = new Map(this.#deployedSpecs(set).map(s => [s.name, s]))
    for (const [name, spec] of wanted) {
      const running = this.#runner.operators.get(name)?.pipeline.spec
      if (running !== undefined && running.version === spec.version && sameSpec(running, spec)) continue
      try {
        const operator = running === undefined
          ? this.#runner.add(spec)
          : this.#runner.replace(spec, incompatibility(running, spec) === undefined, now)
        this.#outputs.addPipeline(operator)
        this.#log.info('deploy.running', `running ${name} v${spec.version}${running === undefined ? '' : ` (was v${running.version})`}`, {
          pipeline: name, version: spec.version, was: running?.version
        })
      } catch (err) {
        this.#log.error('deploy.start_failed', `cannot run ${name} v${spec.version} (${(err as Error).message}); ${running === undefined ? 'not started' : `v${running.version} keeps running`}`, {
          pipeline: name, version: spec.version, err
        })
      }
    }
    // Every running pipeline not from the local file was deployed. One still in the set that this edge
    // cannot read keeps running: stopping it would lose more.
    const named = new Set(set.pipelines.map(p => p.name))
    for (const name of [...this.#runner.operators.keys()]) {
      if (this.#local.has(name) || named.has(name)) continue
      this.#runner.remove(name)
      this.#log.info('deploy.stopped', `stopped ${name}: no longer deployed`, { pipeline: name })
    }
    // The windows the changes emitted go out now, and a crash from here on restores the new versions.
    this.#commit()
    this.#checkpoints?.take()
    if (this.#source instanceof BrokerSubscriber) {
      this.#source.resubscribe().catch((err: unknown) => {
        this.#log.error('mqtt.subscribe_failed', `cannot subscribe to the new pipelines' topics (${(err as Error).message})`, { reason: (err as Error).message })
      })
    }
    this.membership.announce()
  }

  /** Switches to a newer shard map as soon as a fog gossips its version, not at the next refusal. */
  #followShardMap (): void {
    let newest = 0
    for (const p of this.membership.alive('fog')) newest = Math.max(newest, p.heartbeat.fog?.shardMapVersion ?? 0)
    if (newest > 0) this.#uplink?.shardMapSeen(newest)
  }

  /**
   * Adds the HTTP URL of every fog alive in the mesh view to the fog tier. URLs are only ever added: a
   * fog that expires may come back, and the shipper already moves on from one that does not answer
   * (to the next URL, or to a cluster's other members through the shard map it learnt from them).
   */
  #discoverFogs (): void {
    for (const p of this.membership.alive('fog')) {
      // Heartbeats only check that `http` is a short string: anything else than an http(s) URL is skipped.
      if (URL.canParse(p.http) && /^https?:$/.test(new URL(p.http).protocol)) this.#uplink?.addFog(p.http)
    }
  }

  /**
   * Commits the windows emitted since the last commit: the outbox first, then the result store (and
   * its change log). Every path that writes results goes through here, or through an output's
   * `committed` (the uplink's afterAppend, when the shipper appends), because the order is what lets a restart from a checkpoint
   * tell emitted windows from open ones (see checkpoint.ts): a window in the store is always in the
   * outbox too (or delivered), and one only in the outbox is rolled forward into the store at start;
   * and the store commits in the same event-loop turn as the append, before the shipper can deliver
   * (and so remove) what was appended.
   */
  #commit (): void {
    // The outputs in the registry's order (the sinks' queues, then the outbox), the store last: a
    // window the store has (so a restart does not emit it again) is in every queue.
    this.#outputs.commit()
    this.#store.flush()
  }

  #onWindow (operator: WindowOperator, w: WindowState): void {
    const result = this.#result(operator, w, true)
    this.#store.put(result)
    this.#outputs.window(operator, w, result)
  }

  #result (operator: WindowOperator, w: WindowState, final: boolean): WindowResult {
    return {
      pipeline: operator.pipeline.spec.name,
      key: w.key,
      start: w.start,
      end: w.end,
      final,
      revision: w.revision,
      sources: 1,
      values: windowValues(operator.pipeline.selects, w)
    }
  }

  // ServiceApi

  isReady (): boolean {
    return this.#ready
  }

  pipelines (): PipelineInfo[] {
    return [...this.#runner.operators.values()].map(o => ({
      name: o.pipeline.spec.name,
      version: o.pipeline.spec.version,
      spec: pipelineToPlain(o.pipeline.spec)
    }))
  }

  /** Final results from the store, with the windows still open (final: false) mixed in by start. */
  results (pipeline: string, q: ResultQuery): WindowResult[] | undefined {
    const operator = this.#runner.operators.get(pipeline)
    if (operator === undefined) return undefined
    // The store's query would commit pending results itself, ahead of the outbox.
    this.#commit()
    const live = [...operator.openWindows()].map(w => this.#result(operator, w, false))
    return withLive(this.#store.query(pipeline, q), live, q)
  }

  mesh (): unknown {
    const uplink: UplinkStatus | null = this.#uplink?.status() ?? null
    return {
      ...this.membership.json(),
      fog: { leader: null, shardMapVersion: 0, shards: 0 },
      uplink
    }
  }

  readyLine (): string {
    // mqtts= after the others: readers of the older line (http=, mqtt=, mesh=) still match it.
    const mqtts = this.#source instanceof EmbeddedBroker && this.#source.tlsUrl !== undefined ? ` mqtts=${this.#source.tlsUrl}` : ''
    return `ready edge ${this.id} http=${this.httpUrl} mqtt=${this.mqttUrl}${this.membership.readySuffix()}${mqtts}`
  }

  #heartbeat (): HeartbeatInput {
    const messages = this.#runner.stats.messages
    const now = Date.now()
    const r = this.#rate
    // Sampled at each heartbeat rather than kept per second: heartbeats are the only reader.
    if (now > r.at) this.#rate = { at: now, messages, perSecond: (messages - r.messages) * 1000 / (now - r.at) }
    const uplink = this.#uplink
    return {
      http: advertisedUrl(this.#options, this.httpUrl),
      sw: SOFTWARE_VERSION,
      uptime: this.membership.uptime,
      rate: this.#rate.perSecond,
      outbox: uplink?.outbox.items ?? 0,
      // The watermark the fogs acknowledged, not the operator's: one that ran ahead of the windows
      // delivered would tell the mesh of progress the merged results do not have yet.
      pipelines: [...this.#runner.operators.values()].slice(0, 64).map(o => ({
        name: o.pipeline.spec.name,
        version: o.pipeline.spec.version,
        watermark: uplink?.fogWatermark(o.pipeline.spec.name) ?? null
      }))
    }
  }

  #registerMetrics (): void {
    const m = this.metrics
    const ops = () => [...this.#runner.operators.values()]
    const perPipeline = (read: (o: WindowOperator) => number) => (): Sample[] => ops().map(o => [{ pipeline: o.pipeline.spec.name }, read(o)])
    m.counter('fogmesh_readings_total', 'Readings accepted into at least one window', ['pipeline'], perPipeline(o => o.stats.accepted))
    m.counter('fogmesh_readings_late_total', 'Readings dropped because their window had closed', ['pipeline'], perPipeline(o => o.stats.late))
    m.counter('fogmesh_readings_filtered_total', 'Readings left out by the pipeline\'s where', ['pipeline'], perPipeline(o => o.stats.filtered))
    m.counter('fogmesh_windows_emitted_total', 'Windows closed and emitted, late revisions included', ['pipeline'], perPipeline(o => o.stats.emitted))
    m.gauge('fogmesh_watermark_seconds', 'Event-time watermark of each pipeline', ['pipeline'], () => ops().filter(o => Number.isFinite(o.watermark)).map(o => [{ pipeline: o.pipeline.spec.name }, o.watermark / 1000]))
    m.gauge('fogmesh_open_windows', 'Windows currently open', ['pipeline'], perPipeline(o => o.openCount))
    // Each message refused as a whole (too large, undecodable) once, plus each reading a pipeline refused.
    m.counter('fogmesh_readings_rejected_total', 'Readings rejected, by reason', ['reason'], () => REASONS.map(reason => {
      let n = this.#runner.stats.rejected[reason] ?? 0
      for (const o of ops()) n += o.stats.rejected[reason] ?? 0
      return [{ reason }, n]
    }))
    m.counter('fogmesh_pipeline_readings_rejected_total', 'Readings a pipeline rejected, by pipeline and reason (messages refused as a whole are not here)', ['pipeline', 'reason'], () =>
      ops().flatMap(o => Object.entries(o.stats.rejected).map(([reason, n]): Sample => [{ pipeline: o.pipeline.spec.name, reason }, n])))
    m.counter('fogmesh_mqtt_messages_total', 'MQTT messages received', [], () => [[{}, this.#runner.stats.messages]])
    m.counter('fogmesh_mqtt_messages_unmatched_total', 'MQTT messages no pipeline subscribes to', [], () => [[{}, this.#runner.stats.unmatched]])
    m.gauge('fogmesh_deployment_revision', 'Revision of the deployed pipeline set this edge runs', [], () => [[{}, this.#deployments.current().revision]])
    m.counter('fogmesh_deployment_fetches_total', 'Fetches of a newer deployed set from a fog, by outcome', ['outcome'], () => [
      [{ outcome: 'applied' }, this.#follower.stats.applied], [{ outcome: 'failed' }, this.#follower.stats.failed]
    ])
    const sparkplug = () => sparkplugState(this.#runner.decoders.get('sparkplug'))
    m.gauge('fogmesh_sparkplug_online', 'Sparkplug B nodes and devices seen: 1 online (born), 0 after their DEATH', ['group', 'node', 'device'], () =>
      (sparkplug()?.status() ?? []).map((s): Sample => [{ group: s.group, node: s.node, device: s.device }, s.online ? 1 : 0]))
    m.counter('fogmesh_sparkplug_seq_gaps_total', 'Sparkplug B messages whose seq did not follow the previous one of their node', [], () => [[{}, sparkplug()?.stats.seqGaps ?? 0]])
    m.counter('fogmesh_sparkplug_rebirth_requests_total', 'Sparkplug B rebirth requests (NCMD Node Control/Rebirth) sent', [], () => [[{}, sparkplug()?.stats.rebirthRequests ?? 0]])
    this.#checkpoints?.registerMetrics(m)
    if (this.#source instanceof EmbeddedBroker) {
      const broker = this.#source
      m.counter('fogmesh_mqtt_denied_total', 'Embedded broker refusals, by what was refused', ['what'], () => Object.entries(broker.denied).map(([what, n]) => [{ what }, n]))
      broker.registerMetrics(m)
    }
  }
}

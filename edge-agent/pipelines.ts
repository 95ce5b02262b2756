/**
 * The pipelines an agent runs: routes each MQTT message to the operators whose topic filter matches,
 * drives their clocks, and reports closed windows to the agent.
 *
 * A message is decoded once per payload format its pipelines use, not once per pipeline. A message
 * refused before any pipeline sees a reading in it (too large, or a payload that does not decode) is
 * one rejection, counted here; each operator counts the rejections of the readings it evaluates.
 *
 * Each format's decoder is made once per runner and lives as long as it (see core/formats/format.ts):
 * a stateful format (Sparkplug's alias tables) keeps its state across redeployments of its pipelines,
 * and the decoder counts the single readings it refuses here, as the runner counts whole messages.
 */
import { ReadingRejected } from '../core/errors.ts'
import type { RejectReason } from '../core/errors.ts'
import { createDecoder } from '../core/formats/index.ts'
import type { DecoderContext, Fields, PayloadDecoder, PayloadFormat } from '../core/formats/index.ts'
import { compilePipeline } from '../core/pipeline/compile.ts'
import type { PipelineSpec } from '../core/pipeline/spec.ts'
import { WindowOperator } from '../core/windows/operator.ts'
import type { WindowState } from '../core/windows/window.ts'

export type WindowHandler = (operator: WindowOperator, window: WindowState) => void

/**
 * The operators a topic goes to, with the named wildcards it binds for each, grouped by payload
 * decoder (operators of one format are adjacent), so each message is decoded once per format.
 */
type Route = Array<{ operator: WindowOperator, bindings: Record<string, string>, decode: PayloadDecoder }>

/**
 * How many topics' routes are remembered. Sensors publish to a fixed set of topics, so matching each
 * topic once instead of per message saves splitting and comparing on the hot path; the bound keeps a
 * client that invents topics from growing memory (the cache is just dropped when full).
 */
const ROUTE_CACHE_SIZE = 10_000

export class PipelineRunner {
  readonly #operators = new Map<string, WindowOperator>()
  readonly #onWindow: WindowHandler
  readonly #maxPayload: number
  readonly #routes = new Map<string, Route>()
  readonly #decoders = new Map<PayloadFormat, PayloadDecoder>()
  readonly #context: DecoderContext
  /** Messages no pipeline wanted, and rejections before any pipeline saw the message. */
  readonly stats = { messages: 0, unmatched: 0, rejected: {} as Partial<Record<RejectReason, number>> }

  /** `publish` sends on the broker the runner reads from (a Sparkplug rebirth request); none: not sent. */
  constructor (specs: PipelineSpec[], onWindow: WindowHandler, maxPayload: number, publish?: (topic: string, payload: Uint8Array) => void) {
    this.#onWindow = onWindow
    this.#maxPayload = maxPayload
    this.#context = { reject: reason => { this.#reject(reason) }, publish, now: Date.now }
    for (const spec of specs) this.add(spec)
  }

  /** Runs a pipeline (or a new version of one: see replace). Throws if its expressions do not compile. */
  add (spec: PipelineSpec): WindowOperator {
    const operator: WindowOperator = new WindowOperator(compilePipeline(spec), (w) => this.#onWindow(operator, w))
    this.#operators.set(spec.name, operator)
    this.#routes.clear()
    return operator
  }

  /**
   * Runs a new version of a pipeline. With `carry`, the new version starts from the old one's state
   * (its windows stay open, its closed ones take late updates: the caller checked that both merge the
   * same way); without, the old version's open windows are emitted first and the new one starts empty.
   */
  replace (spec: PipelineSpec, carry: boolean, now: number): WindowOperator {
    const old = this.#operators.get(spec.name)
    const compiled = compilePipeline(spec)
    const operator: WindowOperator = new WindowOperator(compiled, (w) => this.#onWindow(operator, w))
    if (old !== undefined) {
      if (carry) operator.restore(old.snapshot(), now)
      else old.closeAll()
    }
    this.#operators.set(spec.name, operator)
    this.#routes.clear()
    return operator
  }

  /** Stops running a pipeline: its open windows are emitted first. Returns its operator, if it ran. */
  remove (name: string): WindowOperator | undefined {
    const old = this.#operators.get(name)
    if (old === undefined) return undefined
    old.closeAll()
    this.#operators.delete(name)
    this.#routes.clear()
    return old
  }

  get operators (): ReadonlyMap<string, WindowOperator> {
    return this.#operators
  }

  /** The decoders made so far, by format. */
  get decoders (): ReadonlyMap<PayloadFormat, PayloadDecoder> {
    return this.#decoders
  }

  /** The decoder of `format` this runner uses, made on first use. */
  decoder (format: PayloadFormat): PayloadDecoder {
    let d = this.#decoders.get(format)
    if (d === undefined) {
      d = createDecoder(format, this.#context)
      this.#decoders.set(format, d)
    }
    return d
  }

  /** Plain MQTT filters of all pipelines, for subscribing at an external broker. */
  filters (): string[] {
    return [...new Set([...this.#operators.values()].map(o => o.pipeline.topic.mqtt))]
  }

  /** False when the message, or a reading of it, was rejected (for the broker's per-client count). */
  onMessage (topic: string, payload: Uint8Array, arrival: number): boolean {
    this.stats.messages++
    const route = this.#route(topic)
    if (route.length === 0) {
      this.stats.unmatched++
      return true
    }
    if (payload.length > this.#maxPayload) {
      this.#reject('too_large')
      return false
    }
    let decode: PayloadDecoder | undefined
    let records: Fields[] | undefined
    let refused = false
    let readingRejected = false
    for (let i = 0; i < route.length; i++) {
      const r = route[i]
      if (r.decode !== decode) {
        decode = r.decode
        try {
          records = decode(payload, topic)
        } catch (err) {
          records = undefined
          if (!refused) this.#reject(err instanceof ReadingRejected ? err.reason : 'parse')
          refused = true
        }
      }
      if (records === undefined) continue
      // Operators write to the records they are given (bindings, topic): each but the last of a
      // format gets its own copies.
      const shared = i + 1 < route.length && route[i + 1].decode === decode
      const before = r.operator.rejectedCount
      r.operator.ingestRecords(shared ? records.map(f => ({ ...f })) : records, topic, r.bindings, arrival)
      if (r.operator.rejectedCount !== before) readingRejected = true
    }
    return !refused && !readingRejected
  }

  #reject (reason: RejectReason): void {
    this.stats.rejected[reason] = (this.stats.rejected[reason] ?? 0) + 1
  }

  #route (topic: string): Route {
    let route = this.#routes.get(topic)
    if (route === undefined) {
      route = []
      for (const operator of this.#operators.values()) {
        const bindings = operator.pipeline.topic.match(topic)
        if (bindings !== undefined) route.push({ operator, bindings, decode: this.decoder(operator.pipeline.spec.format) })
      }
      route.sort((a, b) => a.operator.pipeline.spec.format.localeCompare(b.operator.pipeline.spec.format))
      if (this.#routes.size >= ROUTE_CACHE_SIZE) this.#routes.clear()
      this.#routes.set(topic, route)
    }
    return route
  }

  tick (now: number): void {
    for (const operator of this.#operators.values()) operator.tick(now)
  }
}

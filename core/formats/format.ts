/**
 * What a payload format is: a name pipelines use (`format: NAME`) and how it turns one MQTT message into
 * the records (readings) it carries. A record is the set of top-level fields that expressions see.
 *
 * Most formats are pure functions of the payload. A format with state across messages (Sparkplug B
 * keeps the alias table of every node from its last BIRTH) gets one decoder per runner from `create`:
 * an edge's pipelines of that format share it, and the oracle makes one per simulated edge, so both see
 * the same messages in the same order and reach the same state.
 */
import type { RejectReason } from '../errors.ts'

export type Fields = Record<string, unknown>

/**
 * Decodes one message; throws ReadingRejected when the message is refused as a whole. Pure formats
 * ignore the topic; Sparkplug reads group, node and message type from it.
 */
export type PayloadDecoder = (payload: Uint8Array, topic?: string) => Fields[]

/** What a stateful decoder may do besides returning records. */
export interface DecoderContext {
  /** Counts one reading of a message refused on its own while the rest of the message is kept. */
  reject: (reason: RejectReason) => void
  /** Publishes on the broker the message came from (a Sparkplug rebirth request); absent in the oracle. */
  publish?: (topic: string, payload: Uint8Array) => void
  /** The clock, for rate limits. */
  now: () => number
}

export interface PayloadFormatDef<N extends string = string> {
  readonly name: N
  /** One line for the pipeline reference and error messages. */
  readonly describe: string
  /**
   * The decoder of one runner. Pure formats return the same function every time; stateful ones a
   * fresh decoder whose state lives as long as the runner.
   */
  readonly create: (ctx: DecoderContext) => PayloadDecoder
  /** Whether `create` gives a new state each time (and so the decoder must not be shared across runners). */
  readonly stateful: boolean
}

/** A stateless format: one decoder for everyone. */
export function pureFormat<N extends string> (name: N, describe: string, decode: (payload: Uint8Array) => Fields[]): PayloadFormatDef<N> {
  const decoder: PayloadDecoder = (payload) => decode(payload)
  return { name, describe, create: () => decoder, stateful: false }
}

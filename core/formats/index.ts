/**
 * The registry of payload formats, by the name pipelines use (`format: NAME`). Adding a format is one
 * file in this folder (exporting a PayloadFormatDef as a named const), imported and listed below; the
 * PayloadFormat type, the parser's list and the simulator's follow from here.
 */
import { cbor } from './cbor.ts'
import type { DecoderContext, PayloadDecoder } from './format.ts'
import { json } from './json.ts'
import { senml } from './senml.ts'
import { sparkplug } from './sparkplug.ts'
import { text } from './text.ts'

export type { DecoderContext, Fields, PayloadDecoder, PayloadFormatDef } from './format.ts'

const LIST = [json, cbor, text, senml, sparkplug] as const

export type PayloadFormat = typeof LIST[number]['name']

export const FORMAT_NAMES: readonly PayloadFormat[] = LIST.map(f => f.name)

export const FORMATS: ReadonlyMap<string, typeof LIST[number]> = new Map(LIST.map(f => [f.name, f]))

if (FORMATS.size !== LIST.length) throw new Error('two payload formats have the same name')

export function isPayloadFormat (name: string): name is PayloadFormat {
  return FORMATS.has(name)
}

/** A context for decoders that only need to count (tests, tools): nothing is published. */
export function quietContext (): DecoderContext {
  return { reject: () => {}, now: Date.now }
}

/** The decoder of `format` for one runner (a fresh state for stateful formats). */
export function createDecoder (format: PayloadFormat, ctx: DecoderContext): PayloadDecoder {
  return FORMATS.get(format)!.create(ctx)
}

/**
 * One decoder per format for one-off decoding (tools, tests). A stateful format's decoder here has one
 * state shared by all its callers: runners take their own from createDecoder.
 */
export const PAYLOAD_DECODERS = Object.fromEntries(LIST.map(f => [f.name, f.create(quietContext())])) as Readonly<Record<PayloadFormat, PayloadDecoder>>

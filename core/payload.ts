/**
 * Payload formats: each decoder turns one MQTT payload into the records (readings) it carries. The
 * formats themselves live in core/formats/, one file each; this module keeps the older import path.
 */
export { createDecoder, PAYLOAD_DECODERS } from './formats/index.ts'
export type { DecoderContext, Fields, PayloadDecoder } from './formats/index.ts'

/** `format: cbor`: one CBOR map per message (or a bare number), decoded as plain objects. */
import { Decoder } from 'cbor-x'
import { ReadingRejected } from '../errors.ts'
import { record } from './common.ts'
import { pureFormat } from './format.ts'

const decoder = new Decoder({ mapsAsObjects: true, useRecords: false })

export const cbor = pureFormat('cbor', 'a CBOR map (or a bare number: the value)', (payload) => {
  let v: unknown
  try {
    v = decoder.decode(payload)
  } catch (err) {
    throw new ReadingRejected('parse', `invalid CBOR: ${(err as Error).message}`)
  }
  if (v instanceof Map) v = Object.fromEntries(v)
  return [record(v, 'CBOR')]
})

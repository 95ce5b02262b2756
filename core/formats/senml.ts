/**
 * `format: senml`: SenML (RFC 8428) in JSON: an array of records with base fields (bn, bt, bu, bv) that
 * apply to the records after them. Each resolved record is one reading with `name`, `value` (or
 * `string`/`bool`), `unit` and `time` (seconds since the epoch).
 */
import { ReadingRejected } from '../errors.ts'
import { finite, isPlainObject, parseJson } from './common.ts'
import { pureFormat } from './format.ts'
import type { Fields } from './format.ts'

export const senml = pureFormat('senml', 'SenML JSON (RFC 8428): each record one reading', (payload) => {
  const v = parseJson(payload, 'SenML JSON')
  if (!Array.isArray(v) || v.length === 0) throw new ReadingRejected('parse', 'SenML payload must be a non-empty array of records')
  let bn = ''
  let bt = 0
  let bu: unknown
  let bv = 0
  const out: Fields[] = []
  for (const r of v) {
    if (!isPlainObject(r)) throw new ReadingRejected('parse', 'SenML record must be an object')
    if (r.bn !== undefined) bn = String(r.bn)
    if (r.bt !== undefined) bt = Number(r.bt)
    if (r.bu !== undefined) bu = r.bu
    if (r.bv !== undefined) bv = Number(r.bv)
    const fields: Fields = { ...r }
    for (const base of ['bn', 'bt', 'bu', 'bv', 'bver', 'n', 't', 'u', 'v', 'vs', 'vb', 's', 'vd']) delete fields[base]
    fields.name = bn + (r.n === undefined ? '' : String(r.n))
    if (r.v !== undefined) fields.value = bv + Number(r.v)
    else if (r.s !== undefined) fields.value = bv + Number(r.s)
    else if (r.vs !== undefined) fields.string = r.vs
    else if (r.vb !== undefined) fields.bool = r.vb
    const unit = r.u ?? bu
    if (unit !== undefined) fields.unit = unit
    // RFC 8428: times below 2^28 are relative to now
    const t = bt + (r.t === undefined ? 0 : Number(r.t))
    fields.time = Math.abs(t) < 2 ** 28 ? Date.now() / 1000 + t : t
    out.push(finite(fields))
  }
  return out
})

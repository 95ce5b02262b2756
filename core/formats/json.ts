/** `format: json` (the default): one JSON object per message, or a bare number (the `value`). */
import { parseJson, record } from './common.ts'
import { pureFormat } from './format.ts'

export const json = pureFormat('json', 'a JSON object (or a bare number: the value)', (payload) => [record(parseJson(payload, 'JSON'), 'JSON')])

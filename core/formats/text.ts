/** `format: text`: the payload is one number in plain text, exposed as `value`. */
import { ReadingRejected } from '../errors.ts'
import { finite, text as utf8Text } from './common.ts'
import { pureFormat } from './format.ts'

const NUMBER = /^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$|^\s*[-+]?(NaN|Infinity)\s*$/

export const text = pureFormat('text', 'one number in plain text (the value)', (payload) => {
  const s = utf8Text(payload)
  if (!NUMBER.test(s)) throw new ReadingRejected('parse', `text payload "${s.slice(0, 40)}" is not a number`)
  return [finite({ value: Number(s) })]
})

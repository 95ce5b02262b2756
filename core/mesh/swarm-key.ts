/**
 * The mesh key: a libp2p private-network pre-shared key (PSK) in the go-ipfs swarm key format,
 *   /key/swarm/psk/1.0.0/
 *   /base16/
 *   <64 hex digits>
 * Only peers holding the same 32 bytes can complete a connection, so outsiders cannot join.
 */
import { ConfigError } from '../errors.ts'

const HEADER = '/key/swarm/psk/1.0.0/'
const CODEC = '/base16/'
const KEY_BYTES = 32

/** A new random swarm key, as the file holds it. */
export function generateSwarmKey (): string {
  const key = crypto.getRandomValues(new Uint8Array(KEY_BYTES))
  return `${HEADER}\n${CODEC}\n${Array.from(key, b => b.toString(16).padStart(2, '0')).join('')}\n`
}

/**
 * Checks a swarm key file's text and returns it in the exact form @libp2p/pnet reads (lowercase hex,
 * no trailing newline, "\n" line ends), so keys written by other tools (CRLF, uppercase) work as well.
 * `file` names the file in errors.
 */
export function parseSwarmKey (text: string, file: string): Uint8Array {
  const lines = text.replace(/^\uFEFF/, '').trim().split(/\r?\n/).map(l => l.trim())
  const fail = (what: string): never => {
    throw new ConfigError(`mesh key ${file}: ${what} (expected "${HEADER}", "${CODEC}" and 64 hex digits on three lines; fogmesh keygen FILE writes one)`)
  }
  if (lines.length !== 3) fail(`${lines.length} line${lines.length === 1 ? '' : 's'}`)
  if (lines[0] !== HEADER) fail(`first line is not ${HEADER}`)
  if (lines[1] !== CODEC) fail(`second line is not ${CODEC}, the only encoding supported`)
  if (!/^[0-9a-fA-F]{64}$/.test(lines[2])) fail(`key is not 64 hex digits (${lines[2].length} characters)`)
  return new TextEncoder().encode(`${HEADER}\n${CODEC}\n${lines[2].toLowerCase()}`)
}

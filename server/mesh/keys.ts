/** Key files of the mesh: the shared mesh key (`--mesh-key FILE`) and a node's own peer identity. */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { ConfigError } from '../../core/errors.ts'
import { parseSwarmKey } from '../../core/mesh/swarm-key.ts'
import { writeFileAtomic } from '../shell/atomic-file.ts'

/** Reads and checks a swarm key file; returns the bytes @libp2p/pnet takes as `psk`. */
export async function loadMeshKey (file: string): Promise<Uint8Array> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new ConfigError(`mesh key ${file}: cannot read: ${(err as Error).message}`, { cause: err })
  }
  return parseSwarmKey(text, file)
}

export const PEER_KEY_FILE = 'peer.key'

/**
 * The node's libp2p private key, kept in `<dataDir>/peer.key` (protobuf, mode 0600) so its peer id
 * survives restarts: bootstrap lists name peers by id. Created on first start. A file that exists but
 * cannot be read as a key is an error, never replaced, since replacing it would silently change the
 * node's identity.
 */
export async function loadOrCreatePeerKey (dataDir: string): Promise<PrivateKey> {
  const file = join(dataDir, PEER_KEY_FILE)
  let bytes: Uint8Array | undefined
  try {
    bytes = await readFile(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new ConfigError(`peer key ${file}: cannot read: ${(err as Error).message}`, { cause: err })
    }
  }
  if (bytes !== undefined) {
    try {
      return privateKeyFromProtobuf(bytes)
    } catch (err) {
      throw new ConfigError(`peer key ${file}: not a libp2p private key (${(err as Error).message}); move it away to start with a new identity`, { cause: err })
    }
  }
  const key = await generateKeyPair('Ed25519')
  // A crash never leaves a half-written key behind.
  await writeFileAtomic(file, privateKeyToProtobuf(key), 0o600)
  return key
}

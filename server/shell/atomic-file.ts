/**
 * Writing a small file so that a crash or a power cut leaves either the old contents or the new ones,
 * never half of them: written aside, fsynced, renamed over the old file, and the rename fsynced too.
 */
import { randomBytes } from 'node:crypto'
import { mkdir, open, rename } from 'node:fs/promises'
import { dirname } from 'node:path'

export async function writeFileAtomic (path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const dir = dirname(path)
  await mkdir(dir, { recursive: true })
  // A name of its own: two writers (or a leftover of a crash) never share the file written aside.
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`
  const file = await open(tmp, 'wx', mode)
  try {
    await file.writeFile(data)
    await file.sync()
  } finally {
    await file.close()
  }
  await rename(tmp, path)
  const d = await open(dir, 'r')
  try {
    await d.sync()
  } finally {
    await d.close()
  }
}

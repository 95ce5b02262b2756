// fogmesh's sources as plain JavaScript, made ahead of time, so that a node does not pay at run time
// for Node's TypeScript type stripper (about 17 MB resident for its WebAssembly instance, from the first
// .ts file loaded to the end of the process).
//
// `npm run build` (bin/build.js; npm pack runs it too) strips the types of every source file with
// Node's own stripper (no compiler, no dev dependency: it works on a gateway after `npm ci --omit=dev`)
// and writes the JavaScript to dist/, with a manifest of the sources' SHA-1. The launcher then installs
// the load hook below: a .ts module of the package whose source still has the hash recorded is served
// from dist/ under its own URL, so import.meta.url and every relative path stay those of the sources.
// Anything else (a file edited since the build, a new one, no dist/ at all) loads as before, through
// the stripper: a stale build can cost memory, never run old code.
//
// Type stripping replaces types with blanks, so lines and columns in stack traces are the sources'.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { dirname, join, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

export const PACKAGE_ROOT = dirname(dirname(fileURLToPath(import.meta.url)))
export const DIST = join(PACKAGE_ROOT, 'dist')
export const MANIFEST = join(DIST, 'manifest.json')
/** Bumped when the form of dist/ changes: a manifest of another version is ignored. */
export const BUILD_VERSION = 1

/** What the manifest records for a source text. */
export function sourceHash (text) {
  return createHash('sha1').update(text).digest('hex')
}

/** The compiled file of a source, by its path relative to the package root (`core/expr.ts`). */
export function compiledPath (rel, dist = DIST) {
  return join(dist, rel.replace(/\.ts$/, '.js'))
}

/** The manifest's sources by relative path (forward slashes), or undefined without a usable one. */
export function readManifest () {
  try {
    const m = JSON.parse(readFileSync(MANIFEST, 'utf8'))
    return m.version === BUILD_VERSION && m.sources !== null && typeof m.sources === 'object' ? m.sources : undefined
  } catch {
    return undefined
  }
}

/**
 * Serves compiled modules where dist/ has a current one. Returns how many sources the manifest lists
 * (0: nothing installed). Needs module.registerHooks (Node 22.15+, 23.5+).
 */
export function installCompiledHook (registerHooks) {
  const sources = readManifest()
  if (sources === undefined || typeof registerHooks !== 'function') return 0
  const prefix = PACKAGE_ROOT + sep
  // A Node that still calls registerHooks experimental would say so on stderr at every start: the hook
  // is ours to vouch for, and only that warning is dropped.
  const emitWarning = process.emitWarning
  process.emitWarning = (warning, ...rest) => {
    if (!String(warning?.message ?? warning).includes('registerHooks')) emitWarning.call(process, warning, ...rest)
  }
  try {
    install(registerHooks, sources, prefix)
  } finally {
    process.emitWarning = emitWarning
  }
  return Object.keys(sources).length
}

function install (registerHooks, sources, prefix) {
  registerHooks({
    load (url, context, nextLoad) {
      if (!url.startsWith('file:') || !url.endsWith('.ts')) return nextLoad(url, context)
      const file = fileURLToPath(url)
      if (!file.startsWith(prefix)) return nextLoad(url, context)
      const rel = relative(PACKAGE_ROOT, file).split(sep).join('/')
      const hash = sources[rel]
      if (hash === undefined || rel.startsWith('node_modules/')) return nextLoad(url, context)
      let compiled
      try {
        if (sourceHash(readFileSync(file)) !== hash) return nextLoad(url, context)
        compiled = readFileSync(compiledPath(rel), 'utf8')
      } catch {
        return nextLoad(url, context)
      }
      return { format: 'module', source: compiled, shortCircuit: true }
    }
  })
}

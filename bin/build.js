#!/usr/bin/env node
// `npm run build`: writes dist/, the sources as plain JavaScript, that the launcher runs instead of
// stripping types at run time (see bin/compiled.js). Needs only Node 22.13+ (module.stripTypeScriptTypes),
// no compiler and no dev dependency. Rebuilding is cheap and always from scratch; dist/ is never
// committed, and npm pack builds it (prepack).
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import * as nodeModule from 'node:module'
import { dirname, join } from 'node:path'
import { BUILD_VERSION, compiledPath, DIST, MANIFEST, PACKAGE_ROOT, sourceHash } from './compiled.js'

/** The folders whose .ts files a node runs (tests and benchmarks run from the sources). */
const SOURCE_DIRS = ['cli', 'core', 'server', 'edge-agent', 'fog-coordinator', 'cloud-sink', 'simulators']

// The stripper calls itself experimental once per process; the build says what it did instead.
process.removeAllListeners('warning')

function * tsFiles (rel) {
  for (const entry of readdirSync(join(PACKAGE_ROOT, rel), { withFileTypes: true })) {
    const path = `${rel}/${entry.name}`
    if (entry.isDirectory()) yield * tsFiles(path)
    else if (entry.isFile() && entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) yield path
  }
}

const { stripTypeScriptTypes } = nodeModule
if (typeof stripTypeScriptTypes !== 'function') {
  process.stderr.write(`fogmesh build: needs Node.js 22.13 or newer (module.stripTypeScriptTypes); this is ${process.version}. ` +
    '`npm run build` runs the Node that `npm install` brought along.\n')
  process.exit(1)
}

rmSync(DIST, { recursive: true, force: true })
const sources = {}
let bytes = 0
for (const dir of SOURCE_DIRS) {
  for (const rel of tsFiles(dir)) {
    const text = readFileSync(join(PACKAGE_ROOT, rel), 'utf8')
    // mode 'strip' keeps every line and column where it was; it refuses syntax that needs transforming
    // (enums, namespaces, parameter properties), which tsconfig's erasableSyntaxOnly rules out too.
    const js = stripTypeScriptTypes(text, { mode: 'strip' })
    const out = compiledPath(rel)
    mkdirSync(dirname(out), { recursive: true })
    writeFileSync(out, js)
    sources[rel] = sourceHash(text)
    bytes += js.length
  }
}
writeFileSync(MANIFEST, JSON.stringify({ version: BUILD_VERSION, node: process.version, sources }, null, 1) + '\n')
process.stdout.write(`fogmesh build: ${Object.keys(sources).length} modules, ${Math.round(bytes / 1024)} KiB of JavaScript in dist/\n`)

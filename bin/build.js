#!/usr/bin/env node
// `npm run build`: writes dist/, the sources as plain JavaScript, that the launcher runs instead of
// stripping types at run time (see bin/compiled.js). Needs only Node 22.13+ (module.stripTypeScriptTypes),
// no compiler and no dev dependency. Rebuilding is cheap and always from scratch, into a new folder
// that then replaces dist/, so a process starting meanwhile finds the old build or the new one. A file
// that does not strip (a syntax error) is left out, said on stderr, and fails the build (exit 1): it
// runs from its source, where it fails the same way. dist/ is never committed; npm pack builds it
// (prepack).
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import * as nodeModule from 'node:module'
import { dirname, join } from 'node:path'
import { BUILD_VERSION, compiledPath, DIST, PACKAGE_ROOT, sourceHash } from './compiled.js'

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

const next = `${DIST}.new-${process.pid}`
rmSync(next, { recursive: true, force: true })
const sources = {}
let bytes = 0
let failed = 0
for (const dir of SOURCE_DIRS) {
  for (const rel of tsFiles(dir)) {
    const text = readFileSync(join(PACKAGE_ROOT, rel), 'utf8')
    let js
    try {
      // mode 'strip' keeps every line and column where it was; it refuses syntax that needs transforming
      // (enums, namespaces, parameter properties), which tsconfig's erasableSyntaxOnly rules out too.
      js = stripTypeScriptTypes(text, { mode: 'strip' })
    } catch (err) {
      failed++
      process.stderr.write(`fogmesh build: ${rel} left out: ${err.message.split('\n')[0]}\n`)
      continue
    }
    const out = compiledPath(rel, next)
    mkdirSync(dirname(out), { recursive: true })
    writeFileSync(out, js)
    sources[rel] = sourceHash(text)
    bytes += js.length
  }
}
writeFileSync(join(next, 'manifest.json'), JSON.stringify({ version: BUILD_VERSION, node: process.version, sources }, null, 1) + '\n')
rmSync(DIST, { recursive: true, force: true })
renameSync(next, DIST)
process.stdout.write(`fogmesh build: ${Object.keys(sources).length} modules, ${Math.round(bytes / 1024)} KiB of JavaScript in dist/\n`)
if (failed > 0) process.exitCode = 1

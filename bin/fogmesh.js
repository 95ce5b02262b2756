#!/usr/bin/env node
// The fogmesh executable. fogmesh is written in TypeScript and run with Node's native type
// stripping, which needs Node.js 22.18 or newer (or, after `npm run build`, as the JavaScript in dist/:
// see bin/compiled.js). On an older Node (Debian and Raspberry Pi OS ship
// Node 18/20) this launcher looks for the Node bundled through the optional dependency
// `node-<platform>-<arch>` and re-executes itself with it; otherwise it loads the CLI in-process.
//
// This file must stay plain JavaScript that any Node since 14 can parse: it runs before we know
// whether the running Node understands TypeScript.
import { spawn } from 'node:child_process'
import { accessSync, constants, realpathSync } from 'node:fs'
import { createRequire } from 'node:module'
import { constants as osConstants } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const MIN_MAJOR = 22
const MIN_MINOR = 18
// Set in the child we re-exec, so a bundled Node that is itself too old cannot make us loop.
const REEXEC_ENV = 'FOGMESH_REEXEC'
// FOGMESH_NO_REEXEC=1: never start another Node (neither the execve below nor the bundled Node):
// run in this process or, on a Node too old, say so. For a Node that cannot exec itself, e.g. a
// foreign-architecture Node under qemu-user without binfmt (execve of it fails with ENOEXEC, and a
// failed process.execve aborts). Pass the V8 flags yourself then (`node --max-semi-space-size=4 …`).
const NO_REEXEC_ENV = 'FOGMESH_NO_REEXEC'
const noReexec = process.env[NO_REEXEC_ENV] === '1'
const FORWARDED_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP']

const self = fileURLToPath(import.meta.url)

// V8 sizes its young generation for servers (up to 32 MB per semi-space on a 64-bit machine with
// memory to spare), which on a gateway is mostly garbage kept resident. A small one costs no measurable
// throughput for fogmesh's allocation pattern and keeps an edge agent's peak RSS near its live size
// (`npm run bench` shows both). Users can override it: any --max-semi-space-size of theirs wins, and
// FOGMESH_V8_DEFAULTS=0 turns this off.
const V8_FLAGS = ['--max-semi-space-size=4']
const V8_DEFAULTS_ENV = 'FOGMESH_V8_DEFAULTS'

function wantsV8Flags () {
  if (process.env[V8_DEFAULTS_ENV] === '0') return false
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)]
  return !given.some(arg => arg.startsWith('--max-semi-space-size'))
}

function isRecentEnough (version) {
  const [major, minor] = version.replace(/^v/, '').split('.').map(Number)
  // Type stripping is on by default since 22.18 on the 22 line and since 23.6 on the 23 line.
  if (major === 22) return minor >= MIN_MINOR
  if (major === 23) return minor >= 6
  return major > MIN_MAJOR
}

function isExecutable (file) {
  try {
    accessSync(file, constants.X_OK)
    return true
  } catch {
    return false
  }
}

function samePath (a, b) {
  try {
    return realpathSync(a) === realpathSync(b)
  } catch {
    return false
  }
}

/** The Node binary installed by the optional dependency for this platform, or undefined. */
function findBundledNode () {
  const exe = process.platform === 'win32' ? 'node.exe' : 'node'
  const pkg = `node-${process.platform}-${process.arch}`
  const packageRoot = dirname(dirname(self))
  const candidates = []
  // Resolve the package the way Node would from here: it may sit in our own node_modules, or be
  // hoisted next to us when fogmesh is itself installed as a dependency.
  try {
    const require = createRequire(import.meta.url)
    candidates.push(join(dirname(require.resolve(`${pkg}/package.json`)), 'bin', exe))
  } catch {}
  candidates.push(join(packageRoot, 'node_modules', pkg, 'bin', exe))
  candidates.push(join(packageRoot, 'node_modules', '.bin', exe))
  return candidates.find(file => isExecutable(file) && !samePath(file, process.execPath))
}

function tooOld () {
  process.stderr.write(`fogmesh needs Node.js ${MIN_MAJOR}.${MIN_MINOR} or newer; this is ${process.version}. ` +
    'Install Node 22+ or run `npm install` to get the bundled one.\n')
  process.exit(1)
}

function reexec (nodePath) {
  const child = spawn(nodePath, [...(wantsV8Flags() ? V8_FLAGS : []), ...process.execArgv, self, ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, [REEXEC_ENV]: '1' }
  })
  const forward = signal => {
    // The child may already be gone (or be going): nothing more to tell it.
    try { child.kill(signal) } catch {}
  }
  for (const signal of FORWARDED_SIGNALS) process.on(signal, forward)
  child.on('error', err => {
    process.stderr.write(`fogmesh: could not start ${nodePath}: ${err.message}\n`)
    process.exit(1)
  })
  child.on('exit', (code, signal) => {
    for (const s of FORWARDED_SIGNALS) process.off(s, forward)
    if (signal != null) {
      // Die of the same signal so our parent sees what the child saw.
      process.kill(process.pid, signal)
      // Signals we cannot re-raise into a default death (or that are ignored) still end us.
      setTimeout(() => process.exit(128 + (osConstants.signals[signal] ?? 0)), 1000)
      return
    }
    process.exit(code ?? 1)
  })
}

async function run () {
  // Compiled JavaScript from dist/ where `npm run build` made it and the source has not changed since
  // (bin/compiled.js): no type stripper in the process. Without it, the .ts sources run as they are.
  const { installCompiledHook } = await import('./compiled.js')
  installCompiledHook((await import('node:module')).registerHooks)
  const { main } = await import('../cli/main.ts')
  const code = await main(process.argv.slice(2))
  if (typeof code === 'number') process.exitCode = code
}

if (isRecentEnough(process.version) && !noReexec && wantsV8Flags() && typeof process.execve === 'function') {
  // Same process (same pid, signals and stdio), restarted with the flags: they only apply at start-up.
  process.execve(process.execPath, [process.execPath, ...V8_FLAGS, ...process.execArgv, self, ...process.argv.slice(2)], process.env)
} else if (isRecentEnough(process.version)) {
  try {
    await run()
  } catch (err) {
    // cli/main reports the errors it expects; this is the last resort for anything else. fogmesh's
    // own errors are for people (one line), anything else is a bug worth a stack trace.
    let FogmeshError
    try { ({ FogmeshError } = await import('../core/errors.ts')) } catch {}
    const expected = FogmeshError != null && err instanceof FogmeshError
    process.stderr.write(`fogmesh: ${expected ? err.message : (err?.stack ?? String(err))}\n`)
    process.exitCode = 1
  }
} else if (process.env[REEXEC_ENV] === '1' || noReexec) {
  tooOld()
} else {
  const nodePath = findBundledNode()
  if (nodePath == null) tooOld()
  else reexec(nodePath)
}

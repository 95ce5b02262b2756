/**
 * Free loopback ports for the processes the simulators and tests start (etcd members, chaos
 * coordinators, brokers), chosen below the kernel's ephemeral range where it can be read. listen(0)
 * hands out ports in that range, and so does every outgoing connection for its source port: a process
 * that must come back on its port (a coordinator restarted after kill -9, a broker brought back) could
 * find it taken by some connection in the meantime. Below the range only listeners compete for it.
 */
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import type { Server } from 'node:net'

/** How many ports below the ephemeral range are tried. */
const SPAN = 10_000

/** [first, last] port to pick from, or undefined: let the kernel pick (port 0). */
function range (): [number, number] | undefined {
  try {
    const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number)
    if (Number.isInteger(low) && low - SPAN > 1024) return [low - SPAN, low - 1]
  } catch {}
  return undefined
}

function listen (server: Server, port: number): Promise<number | undefined> {
  return new Promise<number | undefined>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE' || err.code === 'EACCES') resolve(undefined)
      else reject(err)
    })
    server.listen(port, '127.0.0.1', () => {
      const address = server.address()
      if (address == null || typeof address === 'string') reject(new Error('could not determine a free port'))
      else resolve(address.port)
    })
  })
}

/** `n` distinct ports that were free on 127.0.0.1 a moment ago (held together so they cannot repeat). */
export async function freePorts (n: number): Promise<number[]> {
  const servers: Server[] = []
  const span = range()
  try {
    const ports: number[] = []
    for (let tries = 0; ports.length < n; tries++) {
      const server = createServer()
      server.unref()
      servers.push(server)
      // Random in the span (tests run side by side), then the kernel's choice if the span seems full.
      const wanted = span !== undefined && tries < 50 * n ? span[0] + Math.floor(Math.random() * (span[1] - span[0] + 1)) : 0
      const port = await listen(server, wanted)
      if (port !== undefined) ports.push(port)
    }
    return ports
  } finally {
    await Promise.all(servers.map(s => new Promise<void>(resolve => s.listening ? s.close(() => resolve()) : resolve())))
  }
}

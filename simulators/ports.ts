/** Free loopback ports for the processes the simulators start (etcd members, chaos coordinators). */
import { createServer } from 'node:net'
import type { Server } from 'node:net'

/** `n` distinct ports that were free on 127.0.0.1 a moment ago (held together so they cannot repeat). */
export async function freePorts (n: number): Promise<number[]> {
  const servers: Server[] = []
  try {
    const ports: number[] = []
    for (let i = 0; i < n; i++) {
      const server = createServer()
      server.unref()
      servers.push(server)
      ports.push(await new Promise<number>((resolve, reject) => {
        server.once('error', reject)
        server.listen(0, '127.0.0.1', () => {
          const address = server.address()
          if (address == null || typeof address === 'string') reject(new Error('could not determine a free port'))
          else resolve(address.port)
        })
      }))
    }
    return ports
  } finally {
    await Promise.all(servers.map(s => new Promise<void>(resolve => s.close(() => resolve()))))
  }
}

/**
 * A TCP proxy on loopback that can be cut and healed, to simulate a network partition between one
 * process and its peers (e.g. one fog coordinator and the etcd cluster): point the process at the
 * proxy instead of the target, then cut() to isolate it.
 */
import { connect, createServer } from 'node:net'
import type { Socket } from 'node:net'

export interface TcpProxyOptions {
  /** Listen on this port instead of a free one. */
  port?: number
}

export interface TcpProxy {
  port: number
  /** 127.0.0.1:<port> */
  address: string
  /** Destroys the open connections and destroys new ones as soon as they are accepted, until heal(). */
  cut (): void
  /** Lets new connections through again (connections cut before stay closed). */
  heal (): void
  readonly isCut: boolean
  /** Stops listening and destroys every connection. Safe to call twice. */
  close (): Promise<void>
}

/** Starts a proxy listening on 127.0.0.1 that forwards every connection to `target`. */
export async function startTcpProxy (target: { host: string, port: number }, opts: TcpProxyOptions = {}): Promise<TcpProxy> {
  const sockets = new Set<Socket>()
  let cut = false

  // allowHalfOpen on both sides so that one direction finishing (FIN) does not truncate data still
  // flowing the other way; pipe() forwards the FIN.
  const server = createServer({ allowHalfOpen: true }, client => {
    if (cut) {
      client.on('error', () => {})
      client.destroy()
      return
    }
    const upstream = connect({ host: target.host, port: target.port, allowHalfOpen: true })
    sockets.add(client)
    sockets.add(upstream)
    // An error or close on either side ends the pair: no half-dead connections, no unhandled 'error'.
    const destroyPair = () => {
      client.destroy()
      upstream.destroy()
    }
    for (const socket of [client, upstream]) {
      socket.on('error', destroyPair)
      socket.once('close', () => {
        sockets.delete(socket)
        destroyPair()
      })
    }
    client.pipe(upstream)
    upstream.pipe(client)
  })

  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject)
      const address = server.address()
      if (address == null || typeof address === 'string') reject(new Error('could not determine the proxy port'))
      else resolve(address.port)
    })
  })
  // Accept errors after listening (e.g. EMFILE) must not crash the process.
  server.on('error', () => {})

  const destroyAll = () => {
    for (const socket of sockets) socket.destroy()
    sockets.clear()
  }

  let closed: Promise<void> | undefined
  return {
    port,
    address: `127.0.0.1:${port}`,
    cut () {
      cut = true
      destroyAll()
    },
    heal () {
      cut = false
    },
    get isCut () {
      return cut
    },
    close () {
      closed ??= new Promise<void>(resolve => {
        server.close(() => resolve())
        destroyAll()
      })
      return closed
    }
  }
}

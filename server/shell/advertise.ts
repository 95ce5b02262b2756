/**
 * The HTTP URL a node gives other nodes (in heartbeats and a fog cluster's member records), as opposed
 * to the one it prints for the person who started it. A node listening on every interface (--host
 * 0.0.0.0) would otherwise tell the mesh "http://127.0.0.1:…", which is every other machine's own
 * loopback: edges on other gateways would send their partials to themselves. As etcd's
 * --advertise-client-urls and NATS's advertise: explicit when given (NAT, DNS names, TLS proxies),
 * else the first external address of this machine.
 */
import { networkInterfaces } from 'node:os'

const WILDCARDS = new Set(['0.0.0.0', '::'])

/** This machine's first non-loopback address (by interface name, for a stable choice): IPv4 first. */
export function externalAddress (interfaces = networkInterfaces()): string | undefined {
  const names = Object.keys(interfaces).sort()
  for (const family of ['IPv4', 'IPv6']) {
    for (const name of names) {
      for (const a of interfaces[name] ?? []) {
        // Link-local IPv6 needs a zone to be reachable: useless in a URL handed to others.
        if (!a.internal && a.family === family && !a.address.startsWith('fe80:')) return a.address
      }
    }
  }
  return undefined
}

/** The URL to advertise for an HTTP API listening at `listening` on `host`. */
export function advertisedUrl (o: { host: string, advertiseUrl?: string }, listening: string, interfaces = networkInterfaces()): string {
  if (o.advertiseUrl !== undefined) return o.advertiseUrl.replace(/\/+$/, '')
  if (!WILDCARDS.has(o.host)) return listening
  const ip = externalAddress(interfaces)
  if (ip === undefined) return listening
  const url = new URL(listening)
  url.hostname = ip.includes(':') ? `[${ip}]` : ip
  return url.origin
}

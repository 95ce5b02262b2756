/**
 * The etcd3 client a fog cluster member talks to etcd with, and the limits of what it asks.
 *
 * - TLS: endpoints given as `https://host:port` are reached over TLS (all of them or none): etcd's
 *   certificate is verified against the node's --tls-ca (default the system's CAs), and the node's own
 *   certificate (--tls-cert/--tls-key) is presented as the client certificate, so an etcd started with
 *   `--client-cert-auth --trusted-ca-file <site CA>` admits only the site's nodes.
 * - Every unary request has a deadline (--etcd-timeout): beyond it the cluster counts as without
 *   quorum, rather than waiting on an etcd that lost its majority.
 */
import { rootCertificates } from 'node:tls'
import { Etcd3, isRecoverableError } from 'etcd3'
import type { IOptions } from 'etcd3'
import { ConsecutiveBreaker, ExponentialBackoff, circuitBreaker, handleWhen, retry } from 'cockatiel'
import { ConfigError } from '../core/errors.ts'
import type { ClientTls } from '../server/shell/tls.ts'

/** Most operations in one transaction (etcd's --max-txn-ops defaults to 128) and most value bytes. */
export const TXN_OPS = 100
export const TXN_BYTES = 1024 * 1024

export function openEtcd (options: { endpoints: readonly string[], tls?: ClientTls, etcdTimeout: number }): Etcd3 {
  const timeout = options.etcdTimeout
  return new Etcd3({
    ...etcdConnection(options.endpoints, options.tls),
    dialTimeout: timeout,
    defaultCallOptions: ctx => ctx.isStream ? {} : { deadline: Date.now() + timeout },
    faultHandling: {
      // A member that fails is skipped for a second, not five: after quorum returns, commits should too.
      host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 1_000, breaker: new ConsecutiveBreaker(3) }),
      global: retry(handleWhen(isRecoverableError), { maxAttempts: 2 }),
      // etcd3 types this as one backoff step and asks it for the next: a step it is.
      watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2_000 }).next()
    }
  })
}

/**
 * The etcd3 client's hosts and credentials for `--etcd` endpoints: `host:port` and `http://…` plain,
 * `https://…` over TLS verified against `tls.ca` (default the system's CAs), presenting `tls.cert` as
 * the client certificate when there is one. One client speaks one of the two: a mix is a ConfigError.
 */
export function etcdConnection (endpoints: readonly string[], tls: ClientTls = {}): Pick<IOptions, 'hosts' | 'credentials'> {
  const hosts = endpoints.map(e => /^https?:\/\//i.test(e) ? e.replace(/^https?/i, s => s.toLowerCase()) : `http://${e}`)
  const secure = hosts.filter(h => h.startsWith('https://')).length
  if (secure === 0) return { hosts }
  if (secure !== hosts.length) {
    throw new ConfigError(`--etcd ${endpoints.join(',')}: either every endpoint is https:// (TLS) or none is`)
  }
  return {
    hosts,
    credentials: {
      rootCertificate: tls.ca ?? Buffer.from(rootCertificates.join('\n')),
      ...tls.cert !== undefined && tls.key !== undefined ? { privateKey: tls.key, certChain: tls.cert } : {}
    }
  }
}

/**
 * Bearer tokens (RFC 6750): the fog's admin token and every role's API token. One home for reading a
 * token file and for comparing what a request presents with the token, so that both are done the same
 * careful way everywhere:
 * - a token is compared as SHA-256 digests with timingSafeEqual: equal lengths, and no early exit that
 *   would tell an attacker how much of a guess was right;
 * - the token itself is kept only as its digest, never logged, and read from a file rather than a flag
 *   where it can be (ps shows flags).
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { ConfigError } from '../../core/errors.ts'

/** Shortest token taken: anything shorter can be guessed by trying. */
export const MIN_TOKEN = 16

function digest (s: string): Buffer {
  return createHash('sha256').update(s).digest()
}

/** What an `Authorization` header holds, as far as a bearer token goes. */
export type Presented = { ok: true, token: string } | { ok: false, reason: 'no_token' | 'malformed_token' }

/** The token of an `Authorization: Bearer <token>` header. */
export function presentedToken (header: string | string[] | undefined): Presented {
  if (header === undefined || header === '') return { ok: false, reason: 'no_token' }
  const m = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null
  return m == null ? { ok: false, reason: 'malformed_token' } : { ok: true, token: m[1] }
}

export class BearerToken {
  #digest: Buffer

  /** The token's strength is checked where it is read (strongToken), not here. */
  constructor (token: string) {
    this.#digest = digest(token)
  }

  /** A rotated token (its file read again): from now on only it matches. */
  replace (token: string): void {
    this.#digest = digest(token)
  }

  /** Whether `header` is `Bearer <this token>`; why not, else. */
  check (header: string | string[] | undefined): { ok: true } | { ok: false, reason: 'no_token' | 'malformed_token' | 'bad_token' } {
    const p = presentedToken(header)
    if (!p.ok) return p
    return timingSafeEqual(digest(p.token), this.#digest) ? { ok: true } : { ok: false, reason: 'bad_token' }
  }

  matches (header: string | string[] | undefined): boolean {
    return this.check(header).ok
  }
}

/** `token`, unless it is too short to resist guessing; the error names the flag it came from. */
export function strongToken (flag: string, token: string): string {
  if (token.length < MIN_TOKEN) throw new ConfigError(`${flag}: use at least ${MIN_TOKEN} characters (e.g. openssl rand -hex 16)`)
  return token
}

/** A token from a file (surrounding white space trimmed); the error names the flag and the file. */
export function readTokenFile (flag: string, path: string): string {
  let token: string
  try {
    token = readFileSync(path, 'utf8').trim()
  } catch (err) {
    throw new ConfigError(`${flag}: cannot read ${path}: ${(err as Error).message}`, { cause: err })
  }
  if (token === '') throw new ConfigError(`${flag}: ${path} is empty`)
  return token
}

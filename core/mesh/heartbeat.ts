/**
 * The mesh heartbeat: what every node gossips about itself at an interval. CBOR, version 1:
 *   { v: 1, id, role, peerId, http, sw, at, uptime, rate, outbox,
 *     pipelines: [{ name, version, watermark }, …], addrs?: [multiaddr, …],
 *     fog?: { leader, shardMapVersion, endpoints: [url, …], deployed? } }
 * `at` is the sender's wall clock (ms since the epoch), used only to order heartbeats of one sender;
 * `uptime` is in ms, `rate` in readings per second, `outbox` in batches waiting to go upstream,
 * `watermark` in ms since the epoch or null before the first reading. `fog` is present on fogs only;
 * its `deployed` is the revision of the deployed pipeline set the fog serves (edges fetch a newer one).
 * `addrs` are the sender's libp2p addresses, so nodes that joined through one bootstrap peer can connect
 * to each other rather than hang off that one peer.
 *
 * Keys this version does not know are ignored, so a field can be added without a version bump; a change
 * in the meaning or type of a field bumps `v`, and receivers drop versions they do not know.
 *
 * Decoding is strict because a heartbeat comes from another machine: every field is checked for type
 * and bounds, and a failure names a stable reason (the `reason` label of
 * `fogmesh_gossip_rejected_total`) rather than throwing.
 */
import { Decoder, Encoder } from 'cbor-x'
import { FogmeshError } from '../errors.ts'
import { isPlainMap } from '../plain-map.ts'

export const HEARTBEAT_VERSION = 1
/** Bound on an encoded heartbeat: a few hundred bytes in practice, room for ~64 pipelines. */
export const MAX_HEARTBEAT_BYTES = 8192

export type MeshRole = 'edge' | 'fog' | 'cloud'
const ROLES: readonly string[] = ['edge', 'fog', 'cloud']

export interface PipelineBeat {
  name: string
  version: number
  /** Event-time watermark in ms since the epoch; null before the pipeline saw a reading. */
  watermark: number | null
}

export interface FogBeat {
  /** Node id of the fog cluster's leader as this fog sees it; null while there is none. */
  leader: string | null
  shardMapVersion: number
  /** HTTP URLs edges may send partials to. */
  endpoints: string[]
  /** Revision of the deployed pipeline set (GET /v1/deployments); 0 when nothing was ever deployed. */
  deployed?: number
}

export interface Heartbeat {
  v: typeof HEARTBEAT_VERSION
  id: string
  role: MeshRole
  /** The sender's libp2p peer id; must equal the gossip message's signed `from`. */
  peerId: string
  http: string
  sw: string
  at: number
  uptime: number
  rate: number
  outbox: number
  pipelines: PipelineBeat[]
  addrs?: string[]
  fog?: FogBeat
}

/** Why a heartbeat was dropped: the `reason` label values of `fogmesh_gossip_rejected_total`. */
export type HeartbeatRejectReason =
  | 'too_large' // encoded size over MAX_HEARTBEAT_BYTES
  | 'malformed' // not CBOR, trailing bytes, or not a map
  | 'bad_version' // `v` missing or not a version this node reads
  | 'bad_field' // a field is missing, of the wrong type or out of bounds
  | 'sender_mismatch' // `peerId` differs from the peer that signed the message
  | 'unsigned' // the gossip message carries no signed sender

export type HeartbeatResult =
  | { ok: true, heartbeat: Heartbeat }
  | { ok: false, reason: HeartbeatRejectReason, message: string }

const MAX_ID = 128
const MAX_URL = 512
const MAX_PIPELINES = 64
const MAX_ENDPOINTS = 16
const MAX_ADDRS = 8
const MAX_ADDR = 256

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true })
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true })

/** Encodes a heartbeat; a heartbeat over the bound is a bug in the sender, so it throws. */
export function encodeHeartbeat (hb: Heartbeat): Uint8Array {
  // Optional fields are left out rather than sent as CBOR undefined, which strict receivers refuse.
  const body: Record<string, unknown> = {
    v: hb.v,
    id: hb.id,
    role: hb.role,
    peerId: hb.peerId,
    http: hb.http,
    sw: hb.sw,
    at: hb.at,
    uptime: hb.uptime,
    rate: hb.rate,
    outbox: hb.outbox,
    pipelines: hb.pipelines.map(p => ({ name: p.name, version: p.version, watermark: p.watermark }))
  }
  if (hb.addrs !== undefined) body.addrs = hb.addrs
  if (hb.fog !== undefined) {
    const f: Record<string, unknown> = { leader: hb.fog.leader, shardMapVersion: hb.fog.shardMapVersion, endpoints: hb.fog.endpoints }
    if (hb.fog.deployed !== undefined) f.deployed = hb.fog.deployed
    body.fog = f
  }
  const bytes = encoder.encode(body)
  if (bytes.byteLength > MAX_HEARTBEAT_BYTES) {
    throw new FogmeshError('heartbeat_too_large', `heartbeat of ${bytes.byteLength} bytes is over the ${MAX_HEARTBEAT_BYTES}-byte bound`)
  }
  return bytes
}

class BadField extends Error {}

function str (o: Record<string, unknown>, key: string, max: number): string {
  const v = o[key]
  if (typeof v !== 'string' || v.length === 0 || v.length > max) throw new BadField(`${key}: expected a string of 1 to ${max} characters`)
  return v
}

function num (o: Record<string, unknown>, key: string, integer = false): number {
  const v = o[key]
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (integer && !Number.isSafeInteger(v))) {
    throw new BadField(`${key}: expected a non-negative ${integer ? 'integer' : 'number'}`)
  }
  return v
}

function httpUrl (o: Record<string, unknown>, key: string, v: unknown = o[key]): string {
  let url: URL | undefined
  try {
    url = typeof v === 'string' && v.length <= MAX_URL ? new URL(v) : undefined
  } catch {}
  if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:')) throw new BadField(`${key}: expected an http(s) URL`)
  return v as string
}

function list (o: Record<string, unknown>, key: string, max: number): unknown[] {
  const v = o[key]
  if (!Array.isArray(v) || v.length > max) throw new BadField(`${key}: expected a list of at most ${max} items`)
  return v
}

function pipeline (v: unknown, i: number): PipelineBeat {
  if (!isPlainMap(v)) throw new BadField(`pipelines[${i}]: expected a map`)
  const watermark = v.watermark === null ? null : num(v, 'watermark', true)
  return { name: str(v, 'name', MAX_ID), version: num(v, 'version', true), watermark }
}

function fog (v: unknown): FogBeat {
  if (!isPlainMap(v)) throw new BadField('fog: expected a map')
  const leader = v.leader === null ? null : str(v, 'leader', MAX_ID)
  const endpoints = list(v, 'endpoints', MAX_ENDPOINTS).map((e, i) => httpUrl(v, `endpoints[${i}]`, e))
  const beat: FogBeat = { leader, shardMapVersion: num(v, 'shardMapVersion', true), endpoints }
  if (v.deployed !== undefined) beat.deployed = num(v, 'deployed', true)
  return beat
}

/**
 * Decodes and checks a heartbeat. `from` is the peer id that signed the gossip message; the heartbeat
 * must name the same peer, so a node cannot speak for another.
 */
export function decodeHeartbeat (bytes: Uint8Array, from?: string): HeartbeatResult {
  if (bytes.byteLength > MAX_HEARTBEAT_BYTES) {
    return { ok: false, reason: 'too_large', message: `${bytes.byteLength} bytes, over ${MAX_HEARTBEAT_BYTES}` }
  }
  let raw: unknown
  try {
    raw = decoder.decode(bytes)
  } catch (err) {
    return { ok: false, reason: 'malformed', message: `not CBOR: ${(err as Error).message}` }
  }
  if (!isPlainMap(raw)) return { ok: false, reason: 'malformed', message: 'expected a CBOR map' }
  if (raw.v !== HEARTBEAT_VERSION) return { ok: false, reason: 'bad_version', message: `version ${JSON.stringify(raw.v)}, expected ${HEARTBEAT_VERSION}` }
  let hb: Heartbeat
  try {
    const role = str(raw, 'role', 8)
    if (!ROLES.includes(role)) throw new BadField(`role: expected one of ${ROLES.join(', ')}`)
    hb = {
      v: HEARTBEAT_VERSION,
      id: str(raw, 'id', MAX_ID),
      role: role as MeshRole,
      peerId: str(raw, 'peerId', MAX_ID),
      http: httpUrl(raw, 'http'),
      sw: str(raw, 'sw', 64),
      at: num(raw, 'at', true),
      uptime: num(raw, 'uptime', true),
      rate: num(raw, 'rate'),
      outbox: num(raw, 'outbox', true),
      pipelines: list(raw, 'pipelines', MAX_PIPELINES).map(pipeline)
    }
    if (raw.addrs !== undefined) hb.addrs = list(raw, 'addrs', MAX_ADDRS).map((a, i) => str({ [`addrs[${i}]`]: a }, `addrs[${i}]`, MAX_ADDR))
    if (raw.fog !== undefined) hb.fog = fog(raw.fog)
    if ((role === 'fog') !== (hb.fog !== undefined)) throw new BadField('fog: present on fogs and only on fogs')
  } catch (err) {
    if (err instanceof BadField) return { ok: false, reason: 'bad_field', message: err.message }
    throw err
  }
  if (from !== undefined && hb.peerId !== from) {
    return { ok: false, reason: 'sender_mismatch', message: `heartbeat names ${hb.peerId} but was signed by ${from}` }
  }
  return { ok: true, heartbeat: hb }
}

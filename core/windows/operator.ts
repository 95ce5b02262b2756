/**
 * The window operator of one pipeline at one node: assigns readings to windows per key, tracks the
 * watermark, fires windows when the watermark passes their end, and handles late readings. It does no
 * I/O: closed windows go to the sink given at construction.
 *
 * Semantics (the contract the simulator's ground truth re-implements independently):
 * - watermark = max event time seen (readings with a valid timestamp) − lateness; a reading is assigned
 *   with the watermark as it was before it, then the watermark advances and due windows close.
 * - idle: once `idle` has passed since the last reading arrived, event time advances with the wall
 *   clock: the watermark is max event time + (now − that arrival) − lateness. It is applied at every
 *   tick and again at the arrival of the next reading, before that reading is assigned, so a sensor
 *   that reports on time is never late however long it pauses, and the watermark never runs ahead of
 *   what on-time readings could still carry.
 * - clock guard: a reading whose event time is more than `maxFuture` ahead of its arrival is rejected
 *   (`future_timestamp`); it neither moves the watermark nor counts as a reading for idle.
 * - tumbling/hopping: a reading is late for each of its windows whose end <= watermark; `late: update`
 *   re-emits such a window with revision + 1 while end > watermark − lateHorizon.
 * - session: the reading's [ts, ts + gap) merges with every open session of its key it overlaps; late
 *   when the merged window's end <= watermark.
 * - count: every N readings of a key, in arrival order; start/end = min/max event time (+1 ms); never
 *   late; an incomplete count window is not emitted.
 */
import { ReadingRejected } from '../errors.ts'
import type { RejectReason } from '../errors.ts'
import type { Vars } from '../expr.ts'
import type { CompiledPipeline } from '../pipeline/compile.ts'
import { hoppingStarts, tumblingStart } from './assigners.ts'
import { addToWindow, createWindow, decodeStates, encodeStates, mergeWindow } from './window.ts'
import type { WindowState } from './window.ts'

export interface OperatorStats {
  /** Readings that went into at least one window. */
  accepted: number
  /** Readings `where` filtered out. */
  filtered: number
  /** Readings dropped because (some of) their windows had closed. */
  late: number
  /** Windows emitted, revisions included. */
  emitted: number
  rejected: Partial<Record<RejectReason, number>>
}

/**
 * Receives each window when it closes (and again per late update). The state is live: read or encode
 * it synchronously, do not keep it.
 */
export type WindowSink = (window: WindowState) => void

type WindowsByStart = Map<number, Map<string, WindowState>>

/**
 * The state of an operator that a restart needs, in a form that survives CBOR: the watermark and
 * every window it holds (open ones, and closed ones kept for late updates), with encoded states.
 */
export interface OperatorSnapshot {
  watermark: number
  windows: Array<{
    /** open: a time window or session; count: an incomplete count window (n readings); closed: kept for `late: update`. */
    kind: 'open' | 'count' | 'closed'
    key: string
    start: number
    end: number
    revision: number
    readings: number
    states: unknown[]
  }>
}

export class WindowOperator {
  readonly pipeline: CompiledPipeline
  readonly stats: OperatorStats = { accepted: 0, filtered: 0, late: 0, emitted: 0, rejected: {} }
  /** Readings rejected, all reasons together (the sum of stats.rejected, without walking it). */
  rejectedCount = 0
  readonly #sink: WindowSink
  readonly #inputs: unknown[]
  readonly #starts: number[] = []
  #watermark = -Infinity
  /** The latest event time seen; -Infinity before any. */
  #maxEventTime = -Infinity
  #lastReadingAt = 0
  /** tumbling/hopping: open windows by start, then key. */
  readonly #open: WindowsByStart = new Map()
  /**
   * The entry of #open a reading went to last (NaN: none): readings come in event-time order, nearly
   * all for the same window start, so this spares a map lookup per reading. Cleared with the entry.
   */
  #lastStart = NaN
  #lastByKey: Map<string, WindowState> | undefined
  /** tumbling/hopping with `late: update`: closed windows kept for updates until the horizon. */
  readonly #closed: WindowsByStart = new Map()
  /** The earliest end among open time windows or sessions (may be stale-low for sessions). */
  #nextClose = Infinity
  /** session: open sessions per key, unordered. */
  readonly #sessions = new Map<string, WindowState[]>()
  /** count: the current window and its size per key. */
  readonly #counts = new Map<string, { w: WindowState, n: number }>()

  constructor (pipeline: CompiledPipeline, sink: WindowSink) {
    this.pipeline = pipeline
    this.#sink = sink
    this.#inputs = new Array(pipeline.selects.length)
  }

  get watermark (): number {
    return this.#watermark
  }

  /** Decodes one message and processes each reading in it. `bindings` are the topic's named wildcards. */
  ingest (payload: Uint8Array, topic: string, bindings: Record<string, string>, arrival: number): void {
    let records
    try {
      records = this.pipeline.decode(payload, topic)
    } catch (err) {
      this.reject(err)
      return
    }
    this.ingestRecords(records, topic, bindings, arrival)
  }

  /**
   * Processes the readings of one message already decoded in this pipeline's format. The records
   * become the readings' variables (they are written to): pass each operator its own.
   */
  ingestRecords (records: Array<Record<string, unknown>>, topic: string, bindings: Record<string, string>, arrival: number): void {
    const p = this.pipeline
    for (const fields of records) {
      const vars: Vars = fields
      if (p.needsPayload) vars.payload = { ...fields }
      for (const name in bindings) vars[name] = bindings[name]
      if (p.needsTopic) vars.topic = topic
      this.process(vars, arrival)
    }
  }

  /** Processes one reading. Bad readings are counted by reason and never throw. */
  process (vars: Vars, arrival: number): void {
    const p = this.pipeline
    let ts: number
    try {
      ts = p.eventTime(vars, arrival)
    } catch (err) {
      this.reject(err)
      return
    }
    if (ts - arrival > p.spec.maxFuture) {
      this.#rejectReason('future_timestamp')
      return
    }
    // Before the reading is assigned: a pause longer than idle has moved event time on with the clock.
    this.#idleAdvance(arrival)
    try {
      if (!p.accepts(vars)) {
        this.stats.filtered++
      } else {
        const key = p.keyOf(vars)
        p.inputs(vars, this.#inputs)
        this.#assign(key, ts)
      }
    } catch (err) {
      this.reject(err)
    }
    this.#lastReadingAt = arrival
    if (ts > this.#maxEventTime) this.#maxEventTime = ts
    this.#advance(ts - p.spec.lateness)
  }

  /** Counts a rejected reading (or message, for a payload that did not decode) by its reason. */
  reject (err: unknown): void {
    this.#rejectReason(err instanceof ReadingRejected ? err.reason : 'expression')
  }

  #rejectReason (reason: RejectReason): void {
    this.rejectedCount++
    this.stats.rejected[reason] = (this.stats.rejected[reason] ?? 0) + 1
  }

  /** The idle rule: after `idle` without a reading, event time follows the wall clock. */
  #idleAdvance (now: number): void {
    const spec = this.pipeline.spec
    const quiet = now - this.#lastReadingAt
    if (quiet >= spec.idle && this.#maxEventTime > -Infinity) this.#advance(this.#maxEventTime + quiet - spec.lateness)
  }

  #assign (key: string, ts: number): void {
    const win = this.pipeline.spec.window
    switch (win.kind) {
      case 'tumbling':
        this.#count(this.#assignTime(key, ts, tumblingStart(ts, win.size), win.size))
        return
      case 'hopping': {
        let added = 0
        const starts = hoppingStarts(ts, win.size, win.every, this.#starts)
        for (const start of starts) if (this.#assignTime(key, ts, start, win.size)) added++
        if (added > 0) this.stats.accepted++
        if (added < starts.length) this.stats.late++
        return
      }
      case 'session':
        this.#count(this.#assignSession(key, ts, win.gap))
        return
      case 'count':
        this.#assignCount(key, ts, win.count)
        this.stats.accepted++
    }
  }

  #count (added: boolean): void {
    if (added) this.stats.accepted++
    else this.stats.late++
  }

  /** Adds a reading to a time window; false when it was late and dropped. */
  #assignTime (key: string, ts: number, start: number, size: number): boolean {
    const end = start + size
    const selects = this.pipeline.selects
    if (end <= this.#watermark) return this.#lateUpdate(key, ts, start, end)
    if (end < this.#nextClose) this.#nextClose = end
    let byKey = this.#lastByKey
    if (start !== this.#lastStart || byKey === undefined) {
      byKey = this.#byStart(this.#open, start)
      this.#lastStart = start
      this.#lastByKey = byKey
    }
    let w = byKey.get(key)
    if (w === undefined) {
      w = createWindow(selects, key, start, end)
      byKey.set(key, w)
    }
    addToWindow(selects, w, this.#inputs, ts)
    return true
  }

  #lateUpdate (key: string, ts: number, start: number, end: number): boolean {
    const spec = this.pipeline.spec
    if (spec.late !== 'update' || end <= this.#watermark - spec.lateHorizon) return false
    const byKey = this.#byStart(this.#closed, start)
    let w = byKey.get(key)
    if (w === undefined) {
      // the key had no reading in this window before: its first emission is revision 0
      w = createWindow(this.pipeline.selects, key, start, end)
      byKey.set(key, w)
    } else {
      w.revision++
    }
    addToWindow(this.pipeline.selects, w, this.#inputs, ts)
    this.#emit(w)
    return true
  }

  #assignSession (key: string, ts: number, gap: number): boolean {
    const selects = this.pipeline.selects
    const sessions = this.#sessions.get(key)
    let start = ts
    let end = ts + gap
    let into: WindowState | undefined
    if (sessions !== undefined) {
      for (let i = sessions.length - 1; i >= 0; i--) {
        const s = sessions[i]
        if (s.start < end && start < s.end) {
          start = Math.min(start, s.start)
          end = Math.max(end, s.end)
          if (into === undefined) {
            into = s
          } else {
            mergeWindow(selects, into, s)
          }
          if (s !== into) sessions.splice(i, 1)
        }
      }
    }
    if (end <= this.#watermark) return false
    if (into === undefined) {
      into = createWindow(selects, key, start, end)
      if (sessions === undefined) this.#sessions.set(key, [into])
      else sessions.push(into)
      if (end < this.#nextClose) this.#nextClose = end
    }
    into.start = start
    into.end = end
    addToWindow(selects, into, this.#inputs, ts)
    return true
  }

  #assignCount (key: string, ts: number, size: number): void {
    const selects = this.pipeline.selects
    let c = this.#counts.get(key)
    if (c === undefined) {
      c = { w: createWindow(selects, key, ts, ts + 1), n: 0 }
      this.#counts.set(key, c)
    }
    const w = c.w
    if (ts < w.start) w.start = ts
    if (ts + 1 > w.end) w.end = ts + 1
    addToWindow(selects, w, this.#inputs, ts)
    if (++c.n === size) {
      this.#counts.delete(key)
      this.#emit(w)
    }
  }

  #emit (w: WindowState): void {
    this.stats.emitted++
    this.#sink(w)
  }

  /** Moves the watermark forward to `to` (never back) and closes what is due. */
  #advance (to: number): void {
    if (to <= this.#watermark) return
    this.#watermark = to
    if (to >= this.#nextClose) this.#closeUpTo(to)
    if (this.#closed.size > 0) {
      const horizon = to - this.pipeline.spec.lateHorizon
      for (const [start, byKey] of this.#closed) {
        const first = byKey.values().next().value
        if (first === undefined || first.end <= horizon) this.#closed.delete(start)
      }
    }
  }

  /** Closes every open window with end <= `wm`, oldest first, and recomputes the next close. */
  #closeUpTo (wm: number): void {
    let next = Infinity
    if (this.#open.size > 0) {
      const due = [...this.#open.keys()].sort((a, b) => a - b)
      const keep = this.pipeline.spec.late === 'update'
      for (const start of due) {
        const byKey = this.#open.get(start)!
        const end = byKey.values().next().value?.end ?? start
        if (end > wm) {
          if (end < next) next = end
          continue
        }
        this.#open.delete(start)
        if (start === this.#lastStart) this.#lastByKey = undefined
        for (const w of byKey.values()) this.#emit(w)
        if (keep) this.#closed.set(start, byKey)
      }
    }
    for (const [key, sessions] of this.#sessions) {
      for (let i = sessions.length - 1; i >= 0; i--) {
        const s = sessions[i]
        if (s.end <= wm) {
          sessions.splice(i, 1)
          this.#emit(s)
        } else if (s.end < next) {
          next = s.end
        }
      }
      if (sessions.length === 0) this.#sessions.delete(key)
    }
    this.#nextClose = next
  }

  /**
   * Processing-time duties, called periodically: pipelines without a timestamp advance their watermark
   * with the clock; the others by the idle rule once no reading came for `idle`.
   */
  tick (now: number): void {
    const spec = this.pipeline.spec
    if (spec.timestamp === undefined) this.#advance(now - spec.lateness)
    else this.#idleAdvance(now)
  }

  /**
   * Closes (emits) every open time window and session now; incomplete count windows stay (they are
   * local and close by count). Only for a pipeline that is retired or replaced by a version that does
   * not take over its windows: a running pipeline closes windows by its watermark alone.
   */
  closeAll (): void {
    // The watermark jumps to the last end closed, so stragglers for those windows count as late.
    let last = -Infinity
    for (const byKey of this.#open.values()) for (const w of byKey.values()) last = Math.max(last, w.end)
    for (const sessions of this.#sessions.values()) for (const s of sessions) last = Math.max(last, s.end)
    if (last > -Infinity) this.#advance(last)
  }

  /**
   * Whether the pipeline is idle at `now`: no reading for `idle` and no time window or session open,
   * so it has nothing more to send upstream until a reading comes. Incomplete count windows are left
   * out: they never go upstream, so no receiver waits for them.
   */
  isIdle (now: number): boolean {
    return this.#open.size === 0 && this.#sessions.size === 0 && now - this.#lastReadingAt >= this.pipeline.spec.idle
  }

  snapshot (): OperatorSnapshot {
    const selects = this.pipeline.selects
    const entry = (kind: 'open' | 'count' | 'closed', w: WindowState) =>
      ({ kind, key: w.key, start: w.start, end: w.end, revision: w.revision, readings: w.readings, states: encodeStates(selects, w) })
    const windows: OperatorSnapshot['windows'] = []
    for (const byKey of this.#open.values()) for (const w of byKey.values()) windows.push(entry('open', w))
    for (const sessions of this.#sessions.values()) for (const w of sessions) windows.push(entry('open', w))
    for (const c of this.#counts.values()) windows.push(entry('count', c.w))
    for (const byKey of this.#closed.values()) for (const w of byKey.values()) windows.push(entry('closed', w))
    return { watermark: this.#watermark, windows }
  }

  /**
   * Restores a snapshot into an operator that has not processed anything yet (`now`: the clock, for
   * idle). Windows for which `skip` is true (already emitted before the restart) are left out. Returns
   * the readings restored.
   */
  restore (snapshot: OperatorSnapshot, now: number, skip: (w: { key: string, start: number, end: number, revision: number }) => boolean = () => false): number {
    const selects = this.pipeline.selects
    const kind = this.pipeline.spec.window.kind
    let readings = 0
    // A watermark further ahead of the clock than the guard lets readings move it came from a bad clock
    // before the guard (or a node whose clock was wrong): restoring it would make every on-time reading
    // late until the clock caught up. Lowering it to the guard's bound can reopen no emitted window
    // that a valid reading could reach.
    this.#watermark = Math.min(snapshot.watermark, now + this.pipeline.spec.maxFuture - this.pipeline.spec.lateness)
    this.#maxEventTime = this.#watermark + this.pipeline.spec.lateness
    // idle counts from the restart, not from before the crash
    this.#lastReadingAt = now
    for (const s of snapshot.windows) {
      if (s.kind !== 'closed' && skip(s)) continue
      const w: WindowState = { key: s.key, start: s.start, end: s.end, revision: s.revision, readings: s.readings, states: decodeStates(selects, s.states) }
      if (s.kind === 'count') {
        this.#counts.set(w.key, { w, n: w.readings })
      } else if (s.kind === 'closed') {
        this.#byStart(this.#closed, w.start).set(w.key, w)
        continue
      } else if (kind === 'session') {
        const sessions = this.#sessions.get(w.key)
        if (sessions === undefined) this.#sessions.set(w.key, [w])
        else sessions.push(w)
      } else {
        this.#byStart(this.#open, w.start).set(w.key, w)
      }
      if (s.kind === 'open' && w.end < this.#nextClose) this.#nextClose = w.end
      readings += w.readings
    }
    return readings
  }

  #byStart (map: WindowsByStart, start: number): Map<string, WindowState> {
    let byKey = map.get(start)
    if (byKey === undefined) {
      byKey = new Map()
      map.set(start, byKey)
    }
    return byKey
  }

  /** How many windows are open, without listing them (for metrics). */
  get openCount (): number {
    let n = this.#counts.size
    for (const byKey of this.#open.values()) n += byKey.size
    for (const sessions of this.#sessions.values()) n += sessions.length
    return n
  }

  /** The windows still open, for live queries (not final). */
  * openWindows (): Generator<WindowState> {
    for (const byKey of this.#open.values()) yield * byKey.values()
    for (const sessions of this.#sessions.values()) yield * sessions
    for (const c of this.#counts.values()) yield c.w
  }
}

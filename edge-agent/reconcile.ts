/**
 * Reconciles a pipeline's checkpoint with the windows it emitted after it, before a restart restores
 * it: a window that was still open in the checkpoint but has been emitted since (it is in the result
 * store, and in the outbox or delivered) must not be emitted again, and nothing after the restart may
 * make it emit again with other contents under the same revision.
 *
 * - An open window is emitted since the checkpoint when the store committed, after the checkpoint:
 *   tumbling/hopping: the same (key, start, end); session: a session of the key that contains it
 *   (sessions only grow, and a session open at the checkpoint ends after everything its key emitted
 *   before it); count: any window of the key (the open one is the next its key emits).
 * - Those windows are skipped; with `late: update` a tumbling/hopping one is kept as a closed window
 *   at the revision emitted, so that a late reading makes the next revision (from the checkpointed
 *   state: readings between the checkpoint and the crash are lost, as everywhere). So is a window
 *   opened and emitted after the checkpoint, with an empty state: else a late reading would emit its
 *   revision 0 again.
 * - A closed window (kept for late updates) takes the highest revision emitted since.
 * - The watermark moves up to the end of the last window emitted since (it had passed it before the
 *   crash): otherwise a reading after the restart could open an emitted window again.
 */
import type { CompiledPipeline } from '../core/pipeline/compile.ts'
import type { OperatorSnapshot } from '../core/windows/operator.ts'
import { createWindow, encodeStates } from '../core/windows/window.ts'

/** A window the store committed after the checkpoint. */
export interface EmittedWindow {
  key: string
  start: number
  end: number
  revision: number
}

type SnapshotWindow = OperatorSnapshot['windows'][number]

export interface Reconciled {
  /** The checkpoint to restore: watermark and revisions adjusted. */
  snapshot: OperatorSnapshot
  /** For `WindowOperator.restore`: true for an open window emitted since the checkpoint. */
  skip: (w: Pick<SnapshotWindow, 'key' | 'start' | 'end'>) => boolean
  /** Open windows of the checkpoint emitted since: skipped, or kept as closed ones. */
  emitted: number
}

function windowId (w: Pick<EmittedWindow, 'key' | 'start' | 'end'>): string {
  return `${w.key}\0${w.start}\0${w.end}`
}

export function reconcile (pipeline: CompiledPipeline, snapshot: OperatorSnapshot, emitted: Iterable<EmittedWindow>): Reconciled {
  const spec = pipeline.spec
  const kind = spec.window.kind
  /** The last revision emitted of each window. */
  const last = new Map<string, EmittedWindow>()
  const byKey = new Map<string, EmittedWindow[]>()
  let lastEnd = -Infinity
  for (const e of emitted) {
    const id = windowId(e)
    if (e.revision > (last.get(id)?.revision ?? -1)) last.set(id, e)
    let list = byKey.get(e.key)
    if (list === undefined) byKey.set(e.key, list = [])
    list.push(e)
    if (e.end > lastEnd) lastEnd = e.end
  }

  const skip = (w: Pick<SnapshotWindow, 'key' | 'start' | 'end'>): boolean => {
    switch (kind) {
      case 'tumbling':
      case 'hopping':
        return last.has(windowId(w))
      case 'session':
        return byKey.get(w.key)?.some(e => e.start <= w.start && e.end >= w.end) ?? false
      case 'count':
        return byKey.has(w.key)
    }
  }

  const keepClosed = spec.late === 'update' && (kind === 'tumbling' || kind === 'hopping')
  let emittedSince = 0
  const windows = snapshot.windows.map((w): SnapshotWindow => {
    if (w.kind !== 'closed' && skip(w)) emittedSince++
    const revision = last.get(windowId(w))?.revision
    if (revision === undefined) return w
    if (w.kind === 'closed') return revision > w.revision ? { ...w, revision } : w
    if (w.kind === 'open' && keepClosed) return { ...w, kind: 'closed', revision }
    return w
  })
  // Count windows close by count, not by watermark: emitting one says nothing about it.
  const watermark = kind === 'count' ? snapshot.watermark : Math.max(snapshot.watermark, lastEnd)
  if (keepClosed) {
    const known = new Set(snapshot.windows.map(windowId))
    for (const [id, e] of last) {
      if (known.has(id) || e.end <= watermark - spec.lateHorizon) continue
      const w = createWindow(pipeline.selects, e.key, e.start, e.end)
      windows.push({ kind: 'closed', key: e.key, start: e.start, end: e.end, revision: e.revision, readings: 0, states: encodeStates(pipeline.selects, w) })
    }
  }
  return { snapshot: { watermark, windows }, skip, emitted: emittedSince }
}

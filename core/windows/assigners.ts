/**
 * Window assigners for fixed time windows: which windows a reading with event time `ts` belongs to.
 * Windows are aligned to the Unix epoch (UTC) and are half-open, [start, end).
 */

/** Start of the tumbling window of `size` ms that holds `ts`. */
export function tumblingStart (ts: number, size: number): number {
  return Math.floor(ts / size) * size
}

/**
 * Starts of the hopping windows (`size` long, one starting every `every` ms) that hold `ts`, latest
 * first. A reading belongs to ceil(size / every) windows, or fewer when `every` does not divide `size`.
 */
export function hoppingStarts (ts: number, size: number, every: number, out: number[] = []): number[] {
  out.length = 0
  for (let start = Math.floor(ts / every) * every; start > ts - size; start -= every) out.push(start)
  return out
}

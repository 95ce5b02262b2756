/**
 * Closing a replayed run's windows at once. A run dated in the past and published as fast as a broker
 * takes it ends with windows that only the wall clock closes, up to a window's size (plus lateness)
 * after the last reading. One reading an hour of event time later moves every pipeline's watermark past
 * them instead; it is still in the past of a run dated 2026-01-01, so the clock guard (max-future)
 * takes it. Its own windows stay open and are left out of the comparisons (`beforeTail`).
 */
import mqtt from 'mqtt'

export const TAIL_TOPIC = 'sensors/tail/temperature'

/** The tail reading's payload: every field the simulator's readings have, so every pipeline takes it. */
export function tailPayload (ts: number): Buffer {
  return Buffer.from(JSON.stringify({ device: 'tail', room: 'tail', value: 0, humidity: 0, ts }))
}

/** Event time of the tail of a run that starts at `start` (an hour later). */
export function tailOf (start: number): number {
  return start + 3_600_000
}

export async function publishTail (brokerUrl: string, ts: number): Promise<void> {
  const c = await mqtt.connectAsync(brokerUrl)
  try {
    await c.publishAsync(TAIL_TOPIC, tailPayload(ts), { qos: 1 })
  } finally {
    await c.endAsync()
  }
}

/** The results of windows that start before the tail: the run's. */
export function beforeTail<T extends { start: string }> (results: T[], ts: number): T[] {
  return results.filter(r => Date.parse(r.start) < ts)
}

/**
 * The `formats` part of the bench: ingest throughput of Sparkplug B against JSON in the same run, through
 * the edge's PipelineRunner (decode, route, window), without MQTT: what differs between the two is the
 * decoding, so that is what the figure isolates. The same readings (the simulator's, seeded) go in
 * both ways; alternate rounds, best of each, so load spikes hit both alike.
 */
import { parsePipelines } from '../core/pipeline/parse.ts'
import { PipelineRunner } from '../edge-agent/pipelines.ts'
import { generate } from '../simulators/generator.ts'
import { SIM_DEFAULTS } from '../simulators/options.ts'
import type { PayloadFormat } from '../core/pipeline/spec.ts'

const PIPELINE = (format: PayloadFormat) => format === 'sparkplug'
  ? `pipelines:
  - { name: p, from: "spBv1.0/#", format: sparkplug, timestamp: timestamp, where: name == "temperature", key: node,
      window: { tumbling: 10s }, lateness: 2s, select: { n: count(), mean: avg(value) } }`
  : `pipelines:
  - { name: p, from: "sensors/#", timestamp: ts, key: room,
      window: { tumbling: 10s }, lateness: 2s, select: { n: count(), mean: avg(value) } }`

export interface FormatsResult {
  readings: number
  jsonPerSecond: number
  sparkplugPerSecond: number
  /** sparkplug / json: below 1 means Sparkplug ingest is slower. */
  ratio: number
}

function rate (format: PayloadFormat, readings: number): number {
  const g = generate({ devices: 100, rooms: 10, rate: [10], duration: readings / 100 / 10 * 1000, topic: SIM_DEFAULTS.topic, format, seed: 1, malformedShare: 0, duplicateShare: 0, lateShare: 0, lateBy: 0, jitter: 0, brokers: 1 }, Date.UTC(2026, 0, 1))
  const runner = new PipelineRunner(parsePipelines(PIPELINE(format)), () => {}, 1 << 20)
  const stream = g.streams[0]
  const t0 = performance.now()
  for (const m of stream) runner.onMessage(m.topic, m.payload, m.due)
  const seconds = (performance.now() - t0) / 1000
  return runner.operators.get('p')!.stats.accepted / seconds
}

export function runFormatsBench (o: { quick: boolean, log: (line: string) => void }): FormatsResult {
  const readings = o.quick ? 50_000 : 300_000
  let json = 0
  let sparkplug = 0
  for (let round = 0; round < 3; round++) {
    json = Math.max(json, rate('json', readings))
    sparkplug = Math.max(sparkplug, rate('sparkplug', readings))
  }
  const ratio = Math.round(sparkplug / json * 100) / 100
  o.log(`formats: ${readings} readings, json ${Math.round(json)}/s, sparkplug ${Math.round(sparkplug)}/s (x${ratio})`)
  return { readings, jsonPerSecond: Math.round(json), sparkplugPerSecond: Math.round(sparkplug), ratio }
}

export function formatsRows (r: FormatsResult): Array<[string, string]> {
  return [['ingest by format', `json ${r.jsonPerSecond}/s, sparkplug ${r.sparkplugPerSecond}/s (sparkplug/json x${r.ratio}), in-process, ${r.readings} readings`]]
}

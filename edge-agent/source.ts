/** Where readings come from: the embedded broker or a subscription at an existing broker. */

/**
 * Called once per MQTT message; `arrival` is the local clock in epoch ms. False when the message, or a
 * reading of it, was rejected: the embedded broker counts those per client.
 */
export type MessageHandler = (topic: string, payload: Uint8Array, arrival: number) => boolean

export interface MessageSource {
  /** The broker URL sensors publish to. */
  readonly url: string
  start: (onMessage: MessageHandler) => Promise<void>
  /** Publishes a local action (emit: mqtt). */
  publish: (topic: string, payload: Buffer, qos: 0 | 1 | 2, retain: boolean) => Promise<void>
  stop: () => Promise<void>
}

/**
 * `type: mqtt`: each result is published (QoS 1, not retained unless `retain: true`) as the HTTP API's
 * result JSON, with its pipeline, to `topic` (default `results/{pipeline}/{key}`) on any broker
 * (`url`: mqtt://, mqtts://, ws://, wss://; user and password in the url, or `username` and
 * `password`/`password-file`/`password-env`).
 *
 * Topic substitution is safe: in the values of `{pipeline}` and `{key}`, `%`, `+`, `#`, `/` and NUL are
 * percent-encoded (`%25`, `%2B`, `%23`, `%2F`, `%00`), so a key can neither add topic levels nor make a
 * wildcard: a key `a/b` of pipeline `p` goes to `results/p/a%2Fb`. `{start}` (ISO-8601) and
 * `{revision}` are there too.
 *
 * mqtt.js is loaded by the first send, not with the node: a node without an mqtt sink never pays for it.
 */
import type { MqttClient } from 'mqtt'
import type { WindowResult } from '../shell/results.ts'
import { resultBody } from './webhook.ts'
import type { SinkDefinition, SinkFields } from './sink.ts'

export interface MqttConfig {
  url: string
  topic: string
  username?: string
  password?: string
  clientId?: string
  retain: boolean
}

const PLACEHOLDERS = new Set(['pipeline', 'key', 'start', 'revision'])

/** A value made safe for one topic level. */
export function topicLevel (value: string): string {
  return value.replace(/[%+#/\0]/g, c => '%' + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0'))
}

export function renderSinkTopic (template: string, r: WindowResult): string {
  return template.replace(/\{([a-z]+)\}/g, (_, name: string) => {
    switch (name) {
      case 'pipeline': return topicLevel(r.pipeline)
      case 'key': return topicLevel(r.key)
      case 'start': return new Date(r.start).toISOString()
      default: return String(r.revision)
    }
  })
}

export const mqtt: SinkDefinition<MqttConfig> = {
  type: 'mqtt',
  batch: 100,
  parse (f: SinkFields): MqttConfig {
    const url = f.url('url', ['mqtt:', 'mqtts:', 'ws:', 'wss:', 'tcp:', 'ssl:'])
    const topic = f.string('topic') ?? 'results/{pipeline}/{key}'
    if (topic === '' || /[+#\0]/.test(topic)) f.fail('topic', 'a topic name without wildcards (+, #)')
    for (const m of topic.matchAll(/\{([^}]*)\}/g)) {
      if (!PLACEHOLDERS.has(m[1])) f.fail('topic', `unknown placeholder {${m[1]}} (known: ${[...PLACEHOLDERS].map(p => `{${p}}`).join(', ')})`)
    }
    const retain = f.bool('retain', false)
    return { url: url.href, topic, username: f.string('username'), password: f.secret('password'), clientId: f.string('client-id'), retain }
  },
  create (config, parts) {
    let client: MqttClient | undefined
    let closed = false
    const connected = async (): Promise<MqttClient> => {
      if (client !== undefined) return client
      const { default: mqttjs } = await import('mqtt')
      if (closed) throw new Error('stopped')
      // Another send may have connected while the library loaded.
      if (client === undefined) {
        client = mqttjs.connect(config.url, {
          clientId: config.clientId ?? `fogmesh-sink-${parts.name}-${Math.random().toString(16).slice(2, 10)}`,
          ...config.username !== undefined ? { username: config.username } : {},
          ...config.password !== undefined ? { password: config.password } : {},
          reconnectPeriod: 1000,
          connectTimeout: parts.timeout,
          // Results are queued durably by the sink; mqtt.js need not queue them again while offline.
          queueQoSZero: false,
          // mqtts:// and wss:// are verified against the node's --tls-ca (mqtt.js verifies unless told not to).
          ...parts.tls.ca !== undefined ? { ca: parts.tls.ca } : {},
          ...parts.tls.cert !== undefined && parts.tls.key !== undefined ? { cert: parts.tls.cert, key: parts.tls.key } : {}
        })
        client.on('error', err => { parts.log.debug('sink.mqtt_error', `broker error (${err.message})`) })
      }
      return client
    }
    return {
      async send (results, signal) {
        const c = await connected()
        if (!c.connected) {
          await new Promise<void>((resolve, reject) => {
            const timer = setTimeout(() => { cleanup(); reject(new Error(`not connected to the broker within ${parts.timeout} ms`)) }, parts.timeout)
            const onConnect = (): void => { cleanup(); resolve() }
            const onAbort = (): void => { cleanup(); reject(new Error('stopped')) }
            const cleanup = (): void => {
              clearTimeout(timer)
              c.off('connect', onConnect)
              signal.removeEventListener('abort', onAbort)
            }
            c.on('connect', onConnect)
            signal.addEventListener('abort', onAbort)
          })
        }
        const publishes = results.map(r => c.publishAsync(renderSinkTopic(config.topic, r), resultBody(r), { qos: 1, retain: config.retain }))
        let timer: NodeJS.Timeout | undefined
        const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`the broker did not acknowledge within ${parts.timeout} ms`)), parts.timeout) })
        try {
          await Promise.race([Promise.all(publishes), timeout])
        } finally {
          clearTimeout(timer)
          // Rejections after a timeout are expected (the batch is sent again): not unhandled.
          for (const p of publishes) p.catch(() => {})
        }
      },
      async close () {
        closed = true
        await client?.endAsync(true)
      }
    }
  }
}

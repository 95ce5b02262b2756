/**
 * The throughput baseline: a bare aedes broker that only JSON-parses each reading and counts it. The
 * agent does this much and more (windows, aggregates), so agent/raw is the share of the broker's speed
 * the pipeline work leaves. Plain JavaScript, as the agent runs after `npm run build`: a bare process
 * carries no type stripper, so its memory is the floor the agent's idle and peak RSS are compared to.
 *
 * stdout: `ready raw http=<url> mqtt=<url>`, like the agent. `GET <http>/metrics` answers one line,
 * `bench_raw_messages_total N`, read by the same poller as the agent's metrics. Stops on SIGTERM.
 */
import { createServer as createHttpServer } from 'node:http'
import { createServer } from 'node:net'
import { Aedes } from 'aedes'

const HOST = '127.0.0.1'

async function main () {
  const broker = await Aedes.createBroker()
  let messages = 0
  let invalid = 0
  broker.on('publish', (packet, client) => {
    // client is null for the broker's own publishes ($SYS heartbeats), which are not readings.
    if (client === null) return
    try {
      JSON.parse(packet.payload.toString('utf8'))
      messages++
    } catch {
      invalid++
    }
  })
  const mqtt = createServer(broker.handle)
  await new Promise(resolve => mqtt.listen(0, HOST, resolve))

  const http = createHttpServer((req, res) => {
    if (req.url === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.end(`bench_raw_messages_total ${messages}\nbench_raw_invalid_total ${invalid}\n`)
      return
    }
    res.writeHead(404)
    res.end()
  })
  await new Promise(resolve => http.listen(0, HOST, resolve))

  const port = s => s.address().port
  process.stdout.write(`ready raw http=http://${HOST}:${port(http)} mqtt=mqtt://${HOST}:${port(mqtt)}\n`)

  const stop = () => {
    // Connections may linger (keep-alive polls, the publisher): exit whether or not they close.
    setTimeout(() => process.exit(0), 2_000).unref()
    http.closeAllConnections()
    http.close()
    mqtt.close()
    broker.close()
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
}

main().catch(err => {
  process.stderr.write(`raw-broker: ${err?.stack ?? String(err)}\n`)
  process.exit(1)
})

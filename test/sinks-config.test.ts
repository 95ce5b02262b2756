/**
 * `sinks:` in a node's config file: a wrong entry makes the node refuse to start, naming the field;
 * secrets come from a file or the environment, never from the command line.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import { parseSinks } from '../server/sinks/index.ts'
import { escapeKey, escapeMeasurement, escapeString, linePoint } from '../server/sinks/influxdb.ts'
import { renderSinkTopic } from '../server/sinks/mqtt.ts'
import { quotedTable } from '../server/sinks/postgres.ts'
import { startFogmesh, tmpDir } from './helpers/process.ts'

const PG = { name: 'w', type: 'postgres', url: 'postgres://u@db:5432/plant' }

t.test('a wrong sink names its field', async t => {
  const bad: Array<[unknown, RegExp]> = [
    [{ sinks: 'x' }, /^sinks: expected a list/],
    [[{ ...PG, type: 'kafka' }], /^sinks\[0\] \(w\)\.type: unknown sink type "kafka" \(known: postgres, influxdb, mqtt, webhook\)/],
    [[{ name: 'w', type: 'postgres' }], /^sinks\[0\] \(w\)\.url: required/],
    [[{ type: 'webhook', url: 'http://x' }], /^sinks\[0\]\.name: required/],
    [[{ ...PG, url: 'http://db' }], /^sinks\[0\] \(w\)\.url: expected a postgres:\/\/ or postgresql:\/\/ URL/],
    [[{ ...PG, table: 'results; DROP TABLE x' }], /^sinks\[0\] \(w\)\.table: expected an identifier/],
    [[{ ...PG, table: 'a.b.c' }], /^sinks\[0\] \(w\)\.table: expected an identifier/],
    [[{ ...PG, tabel: 'x' }], /^sinks\[0\] \(w\)\.tabel: unknown field/],
    [[PG, { ...PG }], /^sinks\[1\] \(w\)\.name: two sinks are called w/],
    [[{ ...PG, 'max-pending': 'lots' }], /^sinks\[0\] \(w\)\.max-pending: expected a size/],
    [[{ ...PG, pipelines: [1] }], /^sinks\[0\] \(w\)\.pipelines: expected a list of names/],
    [[{ name: 'i', type: 'influxdb', url: 'http://influx:8086' }], /^sinks\[0\] \(i\)\.database: required/],
    [[{ name: 'i', type: 'influxdb', url: 'http://influx:8086', org: 'o', bucket: 'b' }], /^sinks\[0\] \(i\)\.token: required/],
    [[{ name: 'm', type: 'mqtt', url: 'mqtt://b', topic: 'results/#' }], /^sinks\[0\] \(m\)\.topic: a topic name without wildcards/],
    [[{ name: 'm', type: 'mqtt', url: 'mqtt://b', topic: 'r/{room}' }], /^sinks\[0\] \(m\)\.topic: unknown placeholder \{room\}/],
    [[{ name: 'h', type: 'webhook', url: 'ftp://x' }], /^sinks\[0\] \(h\)\.url: expected a http:\/\/ or https:\/\/ URL/],
    [[{ name: 'h', type: 'webhook', url: 'https://x', 'token-env': 'FOGMESH_TEST_UNSET_TOKEN' }], /^sinks\[0\] \(h\)\.token-env: the environment variable FOGMESH_TEST_UNSET_TOKEN is not set/],
    [[{ name: 'h', type: 'webhook', url: 'https://${FOGMESH_TEST_UNSET_HOST}/x' }], /^sinks\[0\] \(h\)\.url: refers to \$\{FOGMESH_TEST_UNSET_HOST\}, which is not set/],
    [[{ name: 'h', type: 'webhook', url: 'https://x', 'token-file': '/nonexistent/token' }], /^sinks\[0\] \(h\)\.token-file: cannot read \/nonexistent\/token \(ENOENT\)/],
    [[{ name: 'h', type: 'webhook', url: 'https://x', token: 'a', 'token-env': 'B' }], /^sinks\[0\] \(h\)\.token: give one of token, token-file and token-env/]
  ]
  for (const [raw, re] of bad) t.throws(() => parseSinks(Array.isArray(raw) ? raw : (raw as { sinks: unknown }).sinks, {}), re, String(re))
})

t.test('the config reference of SPEC parses; secrets from the environment and files', async t => {
  const dir = await tmpDir()
  t.teardown(() => dir.cleanup())
  await writeFile(join(dir.path, 'token'), 'from-a-file\n')
  const sinks = parseSinks([
    { name: 'warehouse', type: 'postgres', url: 'postgres://user:${PGPASS}@db:5432/plant', table: 'fogmesh_results', pipelines: ['room-temp'] },
    { name: 'tsdb', type: 'influxdb', url: 'http://influx:8086', database: 'plant' },
    { name: 'tsdb2', type: 'influxdb', url: 'http://influx:8086', org: 'o', bucket: 'b', 'token-file': join(dir.path, 'token') },
    { name: 'bus', type: 'mqtt', url: 'mqtt://broker:1883', topic: 'results/{pipeline}/{key}' },
    { name: 'hook', type: 'webhook', url: 'https://ops.example/fogmesh', 'token-env': 'HOOK_TOKEN' }
  ], { PGPASS: 'p@ss', HOOK_TOKEN: 'from-env' })
  t.same(sinks.map(s => [s.name, s.type, s.pipelines]), [['warehouse', 'postgres', ['room-temp']], ['tsdb', 'influxdb', undefined], ['tsdb2', 'influxdb', undefined], ['bus', 'mqtt', undefined], ['hook', 'webhook', undefined]])
  t.match(sinks[0].settings, { url: 'postgres://user:p%40ss@db:5432/plant', table: ['fogmesh_results'] })
  t.match(sinks[1].settings, { writeUrl: 'http://influx:8086/write?db=plant&precision=ms' })
  t.match(sinks[2].settings, { writeUrl: 'http://influx:8086/api/v2/write?org=o&bucket=b&precision=ms', authorization: 'Token from-a-file' })
  t.match(sinks[4].settings, { token: 'from-env' })
})

t.test('quoting: table names, line protocol, topics', async t => {
  t.equal(quotedTable(['public', 'fogmesh_results']), '"public"."fogmesh_results"')
  t.equal(escapeMeasurement('room temp,x'), 'room\\ temp\\,x')
  t.equal(escapeKey('a=b c,d'), 'a\\=b\\ c\\,d')
  t.equal(escapeString('say "hi" \\o/'), '"say \\"hi\\" \\\\o/"')
  const r = { pipeline: 'room temp', key: 'r 1,x=y', start: 1000, end: 2000, final: true, revision: 2, sources: 1, values: { n: 3, label: 'a "b"', gone: null } }
  t.equal(linePoint(r), 'room\\ temp,key=r\\ 1\\,x\\=y n=3,label="a \\"b\\"",revision=2i 1000')
  t.throws(() => linePoint({ ...r, key: 'a\nb' }), /line break/)
  t.equal(renderSinkTopic('results/{pipeline}/{key}', { ...r, pipeline: 'p', key: 'a/+/#/%' }), 'results/p/a%2F%2B%2F%23%2F%25', 'no wildcard, no extra level')
})

t.test('a node with a wrong sink refuses to start and names the field', async t => {
  const dir = await tmpDir()
  t.teardown(() => dir.cleanup())
  const config = join(dir.path, 'edge.yaml')
  await writeFile(config, stringify({ sinks: [{ name: 'w', type: 'postgres', url: 'postgres://db/x', table: 'x"; DROP TABLE y' }] }))
  await t.rejects(startFogmesh(['edge', '--config', config, '--http-port', '0', '--mqtt-port', '0', '--data-dir', join(dir.path, 'e')]), /sinks\[0\] \(w\)\.table: expected an identifier/)
  await writeFile(config, stringify({ sinks: [{ name: 'h', type: 'smtp', url: 'http://x' }] }))
  await t.rejects(startFogmesh(['fog', '--config', config, '--http-port', '0', '--data-dir', join(dir.path, 'f')]), /sinks\[0\] \(h\)\.type: unknown sink type "smtp"/)
  await t.rejects(startFogmesh(['cloud', '--sinks', 'x', '--http-port', '0', '--data-dir', join(dir.path, 'c')]), /Unknown option '--sinks'/, 'sinks (and their secrets) only from the config file')
})

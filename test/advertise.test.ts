import type { NetworkInterfaceInfo } from 'node:os'
import t from 'tap'
import { advertisedUrl, externalAddress } from '../server/shell/advertise.ts'

function iface (address: string, family: 'IPv4' | 'IPv6', internal = false): NetworkInterfaceInfo {
  return { address, family, internal, netmask: '', mac: '00:00:00:00:00:00', cidr: null, ...(family === 'IPv6' ? { scopeid: 0 } : {}) } as NetworkInterfaceInfo
}

const LAN = {
  lo: [iface('127.0.0.1', 'IPv4', true), iface('::1', 'IPv6', true)],
  wlan0: [iface('fe80::1', 'IPv6'), iface('192.168.1.23', 'IPv4')],
  eth0: [iface('2001:db8::5', 'IPv6'), iface('10.0.0.7', 'IPv4')]
}

t.test('the first external IPv4 address by interface name, IPv6 (not link-local) only without one', async t => {
  t.equal(externalAddress(LAN), '10.0.0.7')
  t.equal(externalAddress({ lo: LAN.lo, eth0: [iface('fe80::2', 'IPv6'), iface('2001:db8::5', 'IPv6')] }), '2001:db8::5')
  t.equal(externalAddress({ lo: LAN.lo }), undefined)
})

t.test('what a node advertises', async t => {
  t.equal(advertisedUrl({ host: '127.0.0.1' }, 'http://127.0.0.1:8080', LAN), 'http://127.0.0.1:8080', 'a specific address: as it listens')
  t.equal(advertisedUrl({ host: '0.0.0.0' }, 'http://127.0.0.1:8080', LAN), 'http://10.0.0.7:8080', 'every interface: the machine\'s external address, not loopback')
  t.equal(advertisedUrl({ host: '::' }, 'http://127.0.0.1:8080', { lo: LAN.lo, eth0: [iface('2001:db8::5', 'IPv6')] }), 'http://[2001:db8::5]:8080')
  t.equal(advertisedUrl({ host: '0.0.0.0' }, 'http://127.0.0.1:8080', { lo: LAN.lo }), 'http://127.0.0.1:8080', 'no external address: loopback, for a machine alone')
  t.equal(advertisedUrl({ host: '0.0.0.0', advertiseUrl: 'https://fog.plant.example/' }, 'http://127.0.0.1:8080', LAN), 'https://fog.plant.example', 'given: as given')
})

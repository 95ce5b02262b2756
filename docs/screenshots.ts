/**
 * Takes the README's console screenshots (docs/console-*.png) from a real `fogmesh demo` in headless
 * Chromium, so that they show the console as it is: `node docs/screenshots.ts` (needs the Debian
 * package chromium, or $CHROMIUM). Everything runs on loopback and is stopped at the end.
 *
 * The fog's views (mesh, pipelines with live charts, deploy with a pipeline's problems at their lines)
 * and an edge's broker view. The demo runs for about a minute first, so that charts have windows.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Page } from 'puppeteer-core'
import { startBrowser } from '../test/helpers/browser.ts'
import { startDemo } from '../test/helpers/demo.ts'

const OUT = new URL('./', import.meta.url)
/** Long enough for several 10 s windows to be final at the fog. */
const WARM_UP_MS = 60_000
const BAD_PIPELINE = 'name: hall-co2\nfrom: sensors/+room/co2\nkey: room\nwindow: { tumbling: 5q }\nselect:\n  n: count()\n  peak: mx(value)\n'

async function shoot (page: Page, name: string): Promise<void> {
  // Pollers and charts settle after a poll or two.
  await new Promise(resolve => setTimeout(resolve, 2_500))
  const path = new URL(`console-${name}.png`, OUT).pathname
  await page.screenshot({ path, fullPage: false })
  process.stdout.write(`wrote ${path}\n`)
}

async function main (): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'fogmesh-screenshots-'))
  const demo = startDemo(['--base-port', '0', '--data-dir', dir, '--devices', '12'])
  const browser = await startBrowser()
  try {
    const ready = await demo.line(/^ready demo cloud=(\S+) fog=(\S+) edge-1=(\S+)/, 90_000)
    const [, , fog, edge] = ready
    await new Promise(resolve => setTimeout(resolve, WARM_UP_MS))
    const page = await browser.page()
    await page.goto(`${fog}/#mesh`)
    await page.waitForSelector('#mesh-table tbody tr')
    await shoot(page, 'mesh')
    await page.goto(`${fog}/#pipelines`)
    await page.waitForSelector('#view-pipelines canvas')
    await shoot(page, 'pipelines')
    await page.goto(`${fog}/#deploy`)
    await page.waitForSelector('#deploy-yaml', { visible: true })
    // Validation asks for the admin token, as deployment does; the demo keeps it in its data dir.
    await page.type('#admin-token', (await readFile(join(dir, 'admin.token'), 'utf8')).trim())
    await page.evaluate(`document.getElementById('deploy-yaml').value = ${JSON.stringify(BAD_PIPELINE)}`)
    await page.click('#deploy-validate')
    await page.waitForSelector('#deploy-problems li')
    await shoot(page, 'deploy')
    await page.goto(`${edge}/#edge`)
    await page.waitForSelector('#client-table tbody tr')
    await shoot(page, 'broker')
  } finally {
    await browser.close()
    demo.signal('SIGTERM')
    await demo.exited
    await rm(dir, { recursive: true, force: true })
  }
}

await main()

/**
 * Headless Chromium for the console tests, driven by puppeteer-core: the system's chromium
 * (Debian package `chromium`, or $CHROMIUM), a fresh profile in a temp dir, and flags that keep it
 * from calling any host on its own (updates, sync, safe browsing, QUIC probes): a test page's
 * requests are the only traffic, all to 127.0.0.1.
 */
import { existsSync } from 'node:fs'
import puppeteer from 'puppeteer-core'
import type { Browser, HTTPRequest, Page } from 'puppeteer-core'
import { tmpDir } from './process.ts'

const CANDIDATES = [process.env.CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].filter((p): p is string => p !== undefined && p !== '')

/** The browser's executable, or undefined when none is installed (the tests then fail with that reason). */
export function chromiumPath (): string | undefined {
  return CANDIDATES.find(p => existsSync(p))
}

export const CHROMIUM_FLAGS = [
  '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--no-default-browser-check',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-default-apps',
  '--disable-extensions', '--disable-domain-reliability', '--disable-client-side-phishing-detection',
  '--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater',
  '--metrics-recording-only', '--no-pings', '--password-store=basic', '--use-mock-keychain', '--mute-audio'
]

export interface TestBrowser {
  browser: Browser
  /** A new page that records every request it makes (see `requests`). */
  page: () => Promise<Page>
  /** Every URL any page of this browser requested, in order. */
  requests: string[]
  close: () => Promise<void>
}

/** Starts Chromium; close it with `close()` (tests register it as a teardown). */
export async function startBrowser (): Promise<TestBrowser> {
  const executablePath = chromiumPath()
  if (executablePath === undefined) throw new Error(`no Chromium found (tried ${CANDIDATES.join(', ')}); install the Debian package "chromium" or set CHROMIUM`)
  const profile = await tmpDir('fogmesh-chromium-')
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    args: [...CHROMIUM_FLAGS, `--user-data-dir=${profile.path}`],
    defaultViewport: { width: 1280, height: 900 },
    protocolTimeout: 30_000
  })
  const requests: string[] = []
  return {
    browser,
    requests,
    page: async () => {
      const page = await browser.newPage()
      page.on('request', (r: HTTPRequest) => { requests.push(r.url()) })
      page.setDefaultTimeout(15_000)
      return page
    },
    close: async () => {
      await browser.close().catch(() => browser.process()?.kill('SIGKILL'))
      await profile.cleanup()
    }
  }
}

/** Runs `expr` in the page (a string: this project's TypeScript has no DOM types). */
export async function inPage<T> (page: Page, expr: string): Promise<T> {
  return await page.evaluate(expr) as T
}

/** Every request the browser made that is not to `origin`. */
export function foreign (requests: string[], origin: string): string[] {
  return requests.filter(u => new URL(u).origin !== origin && !u.startsWith('data:'))
}

export interface ConsolePage {
  page: Page
  /** The page's uncaught script errors, as they happen. */
  errors: string[]
}

/** Opens a node's console at `url` in a new page of `b`, recording its script errors, once it has its first data. */
export async function openConsole (b: TestBrowser, url: string): Promise<ConsolePage> {
  const page = await b.page()
  const errors: string[] = []
  page.on('pageerror', e => errors.push(String(e)))
  await page.goto(url)
  await page.waitForFunction('window.fogmeshConsole?.ready === true', { timeout: 15_000 })
  return { page, errors }
}

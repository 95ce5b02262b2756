/**
 * Where the oracle's final results go (simulators/truth.ts): kept in memory for the tests that read
 * the truth in-process, dropped, or spilled to files beside the truth file as they become final, so
 * that `fogmesh sim` over a long run holds only the results that may still be overtaken. The files are
 * read back merged, in the order the truth file lists results (start, key, end, closing order).
 */
import { closeSync, createReadStream, openSync, writeSync } from 'node:fs'
import { createInterface } from 'node:readline'
import type { WindowResult } from './truth.ts'

/** A final result and what it sorts by. */
export interface Final {
  key: string
  start: number
  end: number
  result: WindowResult
}

function compareKeys (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

/** By start, then key, then end; stable, so windows of one key and span stay in closing order. */
function sortFinals (fs: Final[]): WindowResult[] {
  return fs.sort((a, b) => a.start - b.start || compareKeys(a.key, b.key) || a.end - b.end).map(f => f.result)
}

/**
 * Where the final results of one view (a pipeline at one edge, or its merged view) go, in the order
 * they become final.
 */
export interface ResultStore {
  add: (f: Final) => void
  /** Every result still to come starts at `bound` or later (a hint: see SpilledResults). */
  settle?: (bound: number) => void
  /** End of the run: the results kept in memory, sorted (none unless kept). */
  end: () => WindowResult[]
}

export class KeptResults implements ResultStore {
  readonly #finals: Final[] = []

  add (f: Final): void {
    this.#finals.push(f)
  }

  end (): WindowResult[] {
    return sortFinals(this.#finals)
  }
}

export const DROPPED: ResultStore = { add () {}, end: () => [] }

/** A final result with its place in closing order, the tie-break of sortFinals. */
interface Numbered extends Final {
  seq: number
}

function compareNumbered (a: Numbered, b: Numbered): number {
  return a.start - b.start || compareKeys(a.key, b.key) || a.end - b.end || a.seq - b.seq
}

/** Results buffered before a write to a file. */
const WRITE_BUFFER = 1 << 16
/** Results written to a file of their own, sorted, once this many are out of order. */
const STRAGGLER_RUN = 8192
/** Results held back at most: beyond, the earlier half is written whatever may still come before it. */
const PENDING_MAX = 65_536

/** A file of results in sorted order, one JSON line each: [start, end, seq, result]. */
class RunFile {
  readonly path: string
  #fd: number | undefined
  #chunk = ''

  constructor (path: string) {
    this.path = path
    this.#fd = openSync(path, 'w')
  }

  write (f: Numbered): void {
    this.#chunk += JSON.stringify([f.start, f.end, f.seq, f.result]) + '\n'
    if (this.#chunk.length >= WRITE_BUFFER) this.#flush()
  }

  #flush (): void {
    if (this.#fd !== undefined && this.#chunk !== '') writeSync(this.#fd, this.#chunk)
    this.#chunk = ''
  }

  close (): void {
    this.#flush()
    if (this.#fd !== undefined) closeSync(this.#fd)
    this.#fd = undefined
  }
}

/** Reads a RunFile back, one result ahead. */
class RunReader {
  head: Numbered | undefined
  readonly #lines: AsyncIterator<string>

  constructor (path: string) {
    this.#lines = createInterface({ input: createReadStream(path, { highWaterMark: WRITE_BUFFER }), crlfDelay: Infinity })[Symbol.asyncIterator]()
  }

  async next (): Promise<void> {
    const line = await this.#lines.next()
    if (line.done === true) {
      this.head = undefined
      return
    }
    const [start, end, seq, result] = JSON.parse(line.value as string) as [number, number, number, WindowResult]
    this.head = { key: result.key, start, end, seq, result }
  }
}

/**
 * Results written to files as they become final, so that memory holds only those that may still be
 * overtaken. A result is buffered until nothing to come can sort before it (`settle` says how far
 * that is), then appended to the main file in sorted order. One that arrives below what is already
 * written (a count window that took a reading far older than any before) goes with the other
 * stragglers to a sorted file of their own. So does one that comes before results written because too
 * many were held back (a count window that never fills keeps its start as the bound). Reading merges
 * the files.
 */
export class SpilledResults implements ResultStore {
  readonly #prefix: string
  readonly #runs: RunFile[]
  #seq = 0
  /** Everything in the main file starts before this. */
  #written = -Infinity
  #pending: Numbered[] = []
  #stragglers: Numbered[] = []

  constructor (prefix: string) {
    this.#prefix = prefix
    this.#runs = [new RunFile(`${prefix}.0.jsonl`)]
  }

  add (f: Final): void {
    const n = { ...f, seq: this.#seq++ }
    if (n.start >= this.#written) {
      this.#pending.push(n)
      if (this.#pending.length >= PENDING_MAX) this.settle(this.#pending.sort(compareNumbered)[PENDING_MAX >> 1].start + 1)
      return
    }
    this.#stragglers.push(n)
    if (this.#stragglers.length >= STRAGGLER_RUN) this.#writeStragglers()
  }

  settle (bound: number): void {
    if (bound <= this.#written) return
    this.#written = bound
    const pending = this.#pending
    if (pending.length === 0) return
    pending.sort(compareNumbered)
    let i = 0
    while (i < pending.length && pending[i].start < bound) this.#runs[0].write(pending[i++])
    if (i > 0) this.#pending = pending.slice(i)
  }

  #writeStragglers (): void {
    if (this.#stragglers.length === 0) return
    const run = new RunFile(`${this.#prefix}.${this.#runs.length}.jsonl`)
    this.#runs.push(run)
    for (const f of this.#stragglers.sort(compareNumbered)) run.write(f)
    run.close()
    this.#stragglers = []
  }

  end (): WindowResult[] {
    this.settle(Infinity)
    this.#writeStragglers()
    this.close()
    return []
  }

  close (): void {
    for (const run of this.#runs) run.close()
  }

  /** Every result, sorted as sortFinals sorts them; after end(). */
  async * read (): AsyncGenerator<WindowResult> {
    const readers = this.#runs.map(r => new RunReader(r.path))
    await Promise.all(readers.map(async r => await r.next()))
    for (;;) {
      let first: RunReader | undefined
      for (const r of readers) if (r.head !== undefined && (first === undefined || compareNumbered(r.head, first.head!) < 0)) first = r
      if (first === undefined) return
      yield first.head!.result
      await first.next()
    }
  }
}

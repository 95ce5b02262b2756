/** Runs async jobs one at a time, in the order they were given; a failing job does not stop the next. */
export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve()

  run<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn, fn)
    this.#tail = run.catch(() => {})
    return run
  }

  /** Resolves once every job given so far has finished. */
  async drained (): Promise<void> {
    await this.#tail
  }
}

/** Numeric ground truth shared by the aggregate tests. */

/** A small seeded PRNG (mulberry32): reproducible datasets. */
export function mulberry32 (seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

/** Shewchuk's exactly rounded sum (Python's math.fsum), the ground truth for sums. */
export function fsum (xs: readonly number[]): number {
  const partials: number[] = []
  for (let x of xs) {
    let i = 0
    for (let y of partials) {
      if (Math.abs(x) < Math.abs(y)) [x, y] = [y, x]
      const hi = x + y
      const lo = y - (hi - x)
      if (lo !== 0) partials[i++] = lo
      x = hi
    }
    partials.length = i
    partials.push(x)
  }
  let total = 0
  for (let i = partials.length - 1; i >= 0; i--) total += partials[i]
  return total
}

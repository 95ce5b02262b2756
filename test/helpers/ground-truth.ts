// The comparison with the ground truth lives in simulators/verify.ts (the chaos runner uses it too).
export { compareResults, fetchMetric, fetchResults, valueMismatch } from '../../simulators/verify.ts'
export type { ServedResult } from '../../simulators/verify.ts'

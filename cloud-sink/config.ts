/** Options of the cloud sink (`fogmesh cloud`), with their defaults. */
import { MERGE_OPTIONS, readMergeOptions } from '../server/merge/merge-options.ts'
import type { MergeOptions } from '../server/merge/merge-options.ts'
import { COMMON_OPTIONS } from '../server/shell/options.ts'
import type { OptionTable } from '../server/shell/options.ts'

export const CLOUD_OPTIONS: OptionTable = {
  ...COMMON_OPTIONS,
  ...MERGE_OPTIONS
}

export type CloudOptions = MergeOptions

export function cloudOptions (argv: string[]): CloudOptions & { help: boolean } {
  return readMergeOptions('cloud', CLOUD_OPTIONS, argv)
}

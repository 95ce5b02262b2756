/**
 * MQTT topic filters with named wildcards: `sensors/+room/temperature` matches `sensors/r1/temperature`
 * and binds `room = "r1"`; `#rest` binds the remaining levels joined by "/". Unnamed `+` and `#` work as
 * in plain MQTT and bind nothing.
 */
export interface TopicFilter {
  /** The filter as the broker understands it: names stripped (`sensors/+/temperature`). */
  readonly mqtt: string
  /** The wildcard names, in order; undefined for unnamed wildcards. */
  readonly names: ReadonlyArray<string | undefined>
  /** Binds the named wildcards of a matching topic, or returns undefined when it does not match. */
  match: (topic: string) => Record<string, string> | undefined
}

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/

/** Checks a filter; returns a message for the first problem, or undefined when it is valid. */
export function checkTopicFilter (filter: string): string | undefined {
  if (filter.length === 0) return 'topic filter is empty'
  const levels = filter.split('/')
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i]
    if (level.startsWith('+') || level.startsWith('#')) {
      const name = level.slice(1)
      if (name !== '' && !NAME.test(name)) return `wildcard name "${name}" must be an identifier ([A-Za-z_][A-Za-z0-9_]*)`
      if (level[0] === '#' && i !== levels.length - 1) return '"#" must be the last level of a topic filter'
    } else if (level.includes('+') || level.includes('#')) {
      return `"${level}": a wildcard must take a whole topic level`
    }
  }
  return undefined
}

export function compileTopicFilter (filter: string): TopicFilter {
  const problem = checkTopicFilter(filter)
  if (problem !== undefined) throw new Error(problem)
  const levels = filter.split('/')
  const names: Array<string | undefined> = []
  const mqtt = levels.map(level => {
    if (level[0] === '+' || level[0] === '#') {
      names.push(level.length > 1 ? level.slice(1) : undefined)
      return level[0]
    }
    return level
  }).join('/')

  const match = (topic: string): Record<string, string> | undefined => {
    // MQTT: filters starting with a wildcard never match topics starting with "$" ($SYS and friends)
    if (topic.startsWith('$') && (levels[0][0] === '+' || levels[0][0] === '#')) return undefined
    const parts = topic.split('/')
    const bound: Record<string, string> = {}
    for (let i = 0; i < levels.length; i++) {
      const level = levels[i]
      const first = level.charCodeAt(0)
      if (first === 35 /* # */) {
        if (level.length > 1) bound[level.slice(1)] = parts.slice(i).join('/')
        return bound
      }
      if (i >= parts.length) return undefined
      if (first === 43 /* + */) {
        if (level.length > 1) bound[level.slice(1)] = parts[i]
      } else if (level !== parts[i]) {
        return undefined
      }
    }
    return parts.length === levels.length ? bound : undefined
  }
  return { mqtt, names, match }
}

/**
 * Whether every topic matched by `requested` is also matched by `allowed` (both plain MQTT filters):
 * the check behind per-user subscribe rules.
 */
export function filterCovers (allowed: string, requested: string): boolean {
  const a = allowed.split('/')
  const r = requested.split('/')
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '#') return true
    if (i >= r.length) return false
    if (r[i] === '#') return false
    if (a[i] === '+') continue
    if (r[i] === '+' || a[i] !== r[i]) return false
  }
  return a.length === r.length
}

/**
 * fd-leak checks from /proc/self/fd, the way libwayland's test runner does it: the set of open
 * fds after a test must equal the set before.
 */
import { readdirSync, readlinkSync } from "node:fs"
import { Effect } from "effect"

/** The fds open in this process, ascending (the directory fd used to list them is left out). */
export const openFds = (): number[] => {
  const listed = readdirSync("/proc/self/fd").map(Number)
  // The listing's own fd is closed by now: readlink fails on it.
  return listed.filter((fd) => describeFd(fd) !== null).sort((a, b) => a - b)
}

/** readlink of /proc/self/fd/N ("socket:[123]", "/memfd:x (deleted)", …), or null if closed. */
export const describeFd = (fd: number): string | null => {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return null
  }
}

const diff = (before: readonly number[], after: readonly number[]): string | null => {
  const b = new Set(before)
  const a = new Set(after)
  const leaked = after.filter((fd) => !b.has(fd))
  const lost = before.filter((fd) => !a.has(fd))
  if (leaked.length === 0 && lost.length === 0) return null
  const show = (fds: number[]): string => fds.map((fd) => `${fd}→${describeFd(fd) ?? "?"}`).join(", ")
  return [
    leaked.length > 0 ? `leaked fds: ${show(leaked)}` : "",
    lost.length > 0 ? `fds closed that the test did not open: ${lost.join(", ")}` : ""
  ]
    .filter((s) => s !== "")
    .join("; ")
}

/** Compare with `before`, retrying for up to `waitMs` (child-process pipes close asynchronously). */
export const checkFds = async (before: readonly number[], waitMs = 1000): Promise<void> => {
  const deadline = Date.now() + waitMs
  for (;;) {
    const problem = diff(before, openFds())
    if (problem === null) return
    if (Date.now() >= deadline) throw new Error(problem)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/**
 * Run `effect` (scoped resources included: wrap in Effect.scoped first) and fail if the set of
 * open fds differs afterwards.
 */
export const expectNoFdLeak = <A, E, R>(effect: Effect.Effect<A, E, R>, waitMs = 1000): Effect.Effect<A, E | Error, R> =>
  Effect.gen(function* () {
    const before = openFds()
    const result = yield* effect
    yield* Effect.tryPromise({ try: () => checkFds(before, waitMs), catch: (e) => (e instanceof Error ? e : new Error(String(e))) })
    return result
  })

/** Plain form for synchronous test bodies. */
export const withNoFdLeak = <A>(body: () => A): A => {
  const before = openFds()
  const result = body()
  const problem = diff(before, openFds())
  if (problem !== null) throw new Error(problem)
  return result
}

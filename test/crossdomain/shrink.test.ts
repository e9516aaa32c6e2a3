/**
 * A client that shrinks its wl_shm pool's file under a live buffer (test/crossdomain/fixtures/
 * shrink-pool.c, libwayland-client). In cross-domain mode the proxy copies the buffer's rows out
 * of its own mapping of the pool at each commit; reading past the end of the file would raise
 * SIGBUS and kill the proxy with every client. Run on every transport: locally the fd reaches
 * weston, which decides (and reads the pool only to paint); through the cross-domain proxy the
 * proxy must.
 *
 * Proves (cross-domain): the shrinking client gets a `wl_display.error` with wl_shm's invalid_fd
 * code (2) and is disconnected; on every transport the proxy stays up and serves another client to the end (both commits copied);
 * nothing leaks (withProxy's fd check) and nothing escaped the data path.
 */
import { describe, expect } from "@effect/vitest"
import { Effect } from "effect"
import { createHash } from "node:crypto"
import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { runClientOk, spawnClient } from "../helpers/clients.js"
import { scopedLiveNeeding, transports } from "../helpers/proxy.js"
import { headlessHost } from "../helpers/weston.js"
import { withProxy } from "../e2e/fixture.js"

const here = dirname(fileURLToPath(import.meta.url))
const repoRoot = resolve(here, "../..")

/** Builds fixtures/shrink-pool.c once per source (cached; each build in its own directory, renamed into place). */
const buildShrinkPool = (): string => {
  const source = readFileSync(join(here, "fixtures", "shrink-pool.c"))
  const cacheDir = join(repoRoot, "node_modules/.cache/sommelier-test-clients")
  const target = join(cacheDir, `shrink-pool-${createHash("sha256").update(source).digest("hex").slice(0, 16)}`)
  if (existsSync(target)) return target
  mkdirSync(cacheDir, { recursive: true })
  const work = mkdtempSync(join(cacheDir, "build-shrink-pool-"))
  try {
    const flags = execFileSync("pkg-config", ["--cflags", "--libs", "wayland-client"], { encoding: "utf8" }).trim().split(/\s+/).filter((s) => s !== "")
    const out = join(work, "shrink-pool")
    execFileSync("cc", ["-std=c11", "-O1", "-Wall", "-Werror", "-o", out, join(here, "fixtures", "shrink-pool.c"), ...flags], { stdio: ["ignore", "pipe", "pipe"] })
    renameSync(out, target)
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
  return target
}

for (const transport of transports) {
  describe(`a client that shrinks its wl_shm pool (${transport.name})`, () => {
    scopedLiveNeeding(transport, "shm")(
      "gets wl_shm's invalid_fd error; the proxy keeps serving another client",
      () =>
        Effect.gen(function* () {
          const bin = buildShrinkPool()
          yield* withProxy(transport, headlessHost(), ({ proxy }) =>
            Effect.gen(function* () {
              // A well-behaved client connected before the bad one and still there after it.
              const steady = yield* spawnClient(bin, ["keep"], { env: proxy.env })
              yield* steady.waitForStdout(/^first commit ok$/m, "20 seconds")
              const bad = yield* runClientOk(bin, ["shrink"], { env: proxy.env, timeout: "20 seconds" })
              const out = bad.stdout.toString("utf8")
              expect(out).toMatch(/^first commit ok$/m)
              if (transport.name === "local") {
                // The fd reaches weston, which reads the pool only when it paints the surface
                // (this one has no role, so never): its business, not the proxy's.
                expect(out).toMatch(/^(second commit ok|protocol error: wl_buffer@\d+ code 2 \(second commit\))$/m)
              } else {
                // The proxy copies at commit; it posts the error on the committing wl_surface,
                // its message naming the wl_buffer (libwayland-server uses wl_shm's invalid_fd too).
                expect(out).toMatch(/^protocol error: wl_surface@\d+ code 2 \(second commit\)$/m)
              }
              const done = yield* steady.wait("20 seconds")
              expect(done.code, done.stderr).toBe(0)
              expect(done.stdout.toString("utf8")).toMatch(/^second commit ok$/m)
              // And a new client after both is served as usual.
              const again = yield* runClientOk(bin, ["keep"], { env: proxy.env, timeout: "20 seconds" })
              expect(again.stdout.toString("utf8")).toMatch(/^second commit ok$/m)
              expect(proxy.internalErrors()).toEqual([])
            })
          )
        }),
      120_000
    )
  })
}

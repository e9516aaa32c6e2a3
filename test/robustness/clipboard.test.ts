/**
 * Clipboard edges through the proxy (local transport; weston x11 backend in Xvfb, as in
 * test/e2e/clipboard.test.ts, which covers a short text and 5 MB both ways):
 * - 64 KiB + 1 byte (one more than a pipe's default buffer) both ways, byte-identical;
 * - a transfer cut by a kill in the middle (16 MB): the copier on the proxy side killed as soon
 *   as its writer runs (the paster gets a part, then EOF), and the paster on the proxy side
 *   killed as soon as its pipe's fd has crossed the proxy. The proxy keeps serving, and the process's fds return to the
 *   snapshot (withProxy checks it).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { readdirSync, readFileSync } from "node:fs"
import { withProxy } from "../e2e/fixture.js"
import { runClient, spawnClient } from "../helpers/clients.js"
import { local } from "../helpers/proxy.js"
import { x11Host } from "../helpers/weston.js"

const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex")

/** pids of processes named one of `names` that run with `env`'s XDG_RUNTIME_DIR and WAYLAND_DISPLAY. */
const processesOf = (names: ReadonlyArray<string>, env: NodeJS.ProcessEnv): number[] => {
  const want = [`XDG_RUNTIME_DIR=${env.XDG_RUNTIME_DIR}`, `WAYLAND_DISPLAY=${env.WAYLAND_DISPLAY}`]
  const out: number[] = []
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue
    try {
      if (!names.includes(readFileSync(`/proc/${d}/comm`, "utf8").trim())) continue
      const environ = readFileSync(`/proc/${d}/environ`, "utf8").split("\0")
      if (want.every((w) => environ.includes(w))) out.push(Number(d))
    } catch {
      // Gone meanwhile.
    }
  }
  return out
}
const TYPE = "application/octet-stream"

/** Waits until no process named one of `names` runs with `env`. */
const waitGone = (names: ReadonlyArray<string>, env: NodeJS.ProcessEnv) =>
  Effect.gen(function* () {
    const deadline = Date.now() + 10_000
    while (processesOf(names, env).length > 0) {
      if (Date.now() > deadline) return yield* Effect.fail(new Error(`still running: ${processesOf(names, env).join(", ")}`))
      yield* Effect.sleep("50 millis")
    }
  })
const WRITERS = ["wl-copy", "cat"]

/** Polls `wl-paste --list-types` until `type` is on offer (wl-copy sets the selection asynchronously). */
const waitForOffer = (env: NodeJS.ProcessEnv, type: string) =>
  Effect.gen(function* () {
    let last = ""
    for (let i = 0; i < 50; i++) {
      const r = yield* Effect.scoped(runClient("wl-paste", ["--list-types"], { env, timeout: "5 seconds" }))
      last = `${r.stdout.toString("utf8")} ${r.stderr}`
      if (r.stdout.toString("utf8").split("\n").includes(type)) return
      yield* Effect.sleep("50 millis")
    }
    return yield* Effect.fail(new Error(`the clipboard never offered ${type}; last wl-paste --list-types: ${last}`))
  })

describe("clipboard edges through the proxy (local)", () => {
  const payload = randomBytes(64 * 1024 + 1)
  for (const direction of ["proxy → host", "host → proxy"] as const) {
    it.scopedLive(`64 KiB + 1 byte, ${direction}, byte-identical`, () =>
      withProxy(local, x11Host(), ({ host, proxy }) =>
        Effect.gen(function* () {
          const copyEnv = direction === "proxy → host" ? proxy.env : host.env
          const pasteEnv = direction === "proxy → host" ? host.env : proxy.env
          // No --paste-once: weston's clipboard manager reads every new selection itself and
          // would take the one paste (see test/e2e/clipboard.test.ts); the copier is checked
          // alive and then stopped instead.
          const copier = yield* spawnClient("wl-copy", ["--foreground", "--type", TYPE], { env: copyEnv, input: payload })
          yield* waitForOffer(pasteEnv, TYPE)
          const pasted = yield* Effect.scoped(runClient("wl-paste", ["--no-newline", "--type", TYPE], { env: pasteEnv, timeout: "15 seconds" }))
          expect(pasted.code, pasted.stderr).toBe(0)
          expect(pasted.stdout.length).toBe(payload.length)
          expect(sha256(pasted.stdout)).toBe(sha256(payload))
          expect(copier.alive(), `wl-copy stderr: ${copier.stderr()}`).toBe(true)
          expect(copier.stderr()).toBe("")
          yield* copier.kill("SIGTERM")
        })
      )
    )
  }

  const big = randomBytes(16 * 1024 * 1024)
  for (const killed of ["copier", "paster"] as const) {
    it.scopedLive(`the ${killed} on the proxy side is killed in the middle of a 16 MB transfer: nothing leaks, the proxy serves on`, () =>
      withProxy(local, x11Host(), ({ host, proxy }) =>
        Effect.gen(function* () {
          const copyEnv = killed === "copier" ? proxy.env : host.env
          const pasteEnv = killed === "copier" ? host.env : proxy.env
          const copier = yield* spawnClient("wl-copy", ["--foreground", "--type", TYPE], { env: copyEnv, input: big })
          yield* waitForOffer(pasteEnv, TYPE)
          const fdsBefore = proxy.server.stats().requestFds + proxy.server.stats().eventFds
          const paster = yield* spawnClient("wl-paste", ["--no-newline", "--type", TYPE], { env: pasteEnv })
          const deadline = Date.now() + 10_000
          if (killed === "copier") {
            // wl-copy writes each paste from a child (`cat` of its temp file): while that runs,
            // the transfer is in progress. Kill both as soon as it appears.
            let writers: number[] = []
            while ((writers = processesOf(WRITERS, copyEnv).filter((pid) => pid !== copier.pid)).length === 0) {
              if (Date.now() > deadline) return yield* Effect.fail(new Error(`the copier never started writing (paster: ${paster.alive()} ${paster.stdout().length})`))
              yield* Effect.sleep("1 millis")
            }
            for (const pid of writers) process.kill(pid, "SIGKILL")
            yield* copier.kill("SIGKILL")
            // The paster gets EOF and ends with what had arrived.
            const end = yield* paster.wait("10 seconds")
            expect(end.stdout.length, "the paster got only part of it").toBeLessThan(big.length)
          } else {
            // The transfer starts when the pipe's fd crosses the proxy (wl_data_offer.receive):
            // kill the paster right then.
            while (proxy.server.stats().requestFds + proxy.server.stats().eventFds === fdsBefore) {
              if (Date.now() > deadline) return yield* Effect.fail(new Error(`no pipe crossed the proxy (paster: ${paster.stderr()})`))
              yield* Effect.sleep("1 millis")
            }
            yield* paster.kill("SIGKILL")
            yield* waitGone(WRITERS.filter((n) => n !== "wl-copy"), copyEnv)
            yield* copier.kill("SIGKILL")
          }
          yield* waitGone(["wl-copy", "wl-paste", "cat"], proxy.env)
          // The proxy serves on.
          const types = yield* Effect.scoped(runClient("wl-paste", ["--list-types"], { env: proxy.env, timeout: "5 seconds" }))
          expect(types.stderr).not.toMatch(/error/i)
        })
      )
    )
  }
})

/**
 * Window tagging: the prefix rules and the hooks on their own, then what the compositor really
 * received: weston runs with WAYLAND_DEBUG=server (every request it gets, on its stderr) and
 * weston-simple-shm (title "simple-shm", app id "org.freedesktop.weston.simple-shm") runs
 * through the proxy, once through `bin/sommelier serve --tag` and once through an in-process
 * `serve` with separate prefixes.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Layer } from "effect"
import { join } from "node:path"
import { startWeston, type Weston } from "../../src/host/weston.js"
import * as Protocols from "../../src/protocol/registry.js"
import type { HookMessage, HookResult } from "../../src/proxy/connection.js"
import { mergeHooks, serve } from "../../src/proxy/listener.js"
import { prefixed, tagHooks, tagPrefixes } from "../../src/proxy/tag.js"
import * as Reactor from "../../src/transport/reactor.js"
import { spawnClient } from "../helpers/clients.js"
import { cleanEnv, ensureBuilt, noFdLeak, runtimeDir, spawnSommelier } from "./helpers.js"

describe("prefix rules", () => {
  it("--tag sets both; --title-prefix and --app-id-prefix override one each", () => {
    expect(tagPrefixes({})).toBeNull()
    expect(tagPrefixes({ tag: "vm1" })).toEqual({ titlePrefix: "[vm1] ", appIdPrefix: "vm1." })
    expect(tagPrefixes({ tag: "vm1", titlePrefix: "VM: " })).toEqual({ titlePrefix: "VM: ", appIdPrefix: "vm1." })
    expect(tagPrefixes({ tag: "vm1", appIdPrefix: "" })).toEqual({ titlePrefix: "[vm1] ", appIdPrefix: "" })
    expect(tagPrefixes({ titlePrefix: "", appIdPrefix: "" })).toBeNull()
    expect(tagPrefixes({ appIdPrefix: "guest." })).toEqual({ titlePrefix: "", appIdPrefix: "guest." })
  })

  it("cuts a long result at a character boundary so the message stays within the limit", () => {
    expect(prefixed("[a] ", "title", 4096)).toBe("[a] title")
    // 4096-byte message: 8 header + 4 length + 4084 string bytes with the NUL → 4083 characters.
    const long = prefixed("[a] ", "x".repeat(5000), 4096)
    expect(Buffer.byteLength(long)).toBe(4083)
    expect(long.startsWith("[a] xxx")).toBe(true)
    // "é" is two bytes: never split in half.
    const accents = prefixed("[a] ", "é".repeat(3000), 4096)
    expect(Buffer.byteLength(accents)).toBeLessThanOrEqual(4083)
    expect(accents).toBe("[a] " + "é".repeat((Buffer.byteLength(accents) - 4) / 2))
    expect(accents.includes("\ufffd")).toBe(false)
  })
})

describe("hooks", () => {
  it.effect("replace set_title / set_app_id with the prefixed string, addressed to the host id", () =>
    Effect.gen(function* () {
      const registry = yield* Protocols.Protocols
      const hooks = tagHooks(registry, { titlePrefix: "[vm] ", appIdPrefix: "vm." })
      const toplevel = registry.get("xdg_toplevel")!
      const setTitle = toplevel.requests.find((r) => r.name === "set_title")!
      const setAppId = toplevel.requests.find((r) => r.name === "set_app_id")!
      const message = (desc: typeof setTitle, s: string): HookMessage =>
        ({ connection: { options: { limits: { maxMessageSize: 4096 } } }, entry: { hostId: 77, clientId: 5 }, desc, args: [s], fds: [] }) as unknown as HookMessage
      expect(hooks.requests.get(setTitle)!(message(setTitle, "t"))).toEqual({ _tag: "Replace", messages: [{ objectId: 77, desc: setTitle, args: ["[vm] t"] }] })
      expect(hooks.requests.get(setAppId)!(message(setAppId, "org.x"))).toEqual({ _tag: "Replace", messages: [{ objectId: 77, desc: setAppId, args: ["vm.org.x"] }] })
      // An empty prefix installs no hook at all (that message keeps the zero-cost path).
      const titleOnly = tagHooks(registry, { titlePrefix: "T ", appIdPrefix: "" })
      expect(titleOnly.requests.has(setAppId)).toBe(false)
      expect(titleOnly.requests.has(setTitle)).toBe(true)
    }).pipe(Effect.provide(Protocols.layer))
  )

  it.effect("merged hooks run in order; a later one runs only on Forward", () =>
    Effect.gen(function* () {
      const registry = yield* Protocols.Protocols
      const setTitle = registry.get("xdg_toplevel")!.requests.find((r) => r.name === "set_title")!
      const calls: string[] = []
      const hook =
        (name: string, result: HookResult) =>
        (): HookResult => {
          calls.push(name)
          return result
        }
      const merged = mergeHooks([
        { requests: new Map([[setTitle, hook("a", { _tag: "Forward" })]]), events: new Map() },
        { requests: new Map([[setTitle, hook("b", { _tag: "Drop" })]]), events: new Map() },
        { requests: new Map([[setTitle, hook("c", { _tag: "Forward" })]]), events: new Map() }
      ])!
      expect(merged.requests.get(setTitle)!({} as HookMessage)).toEqual({ _tag: "Drop" })
      expect(calls).toEqual(["a", "b"])
      expect(mergeHooks([])).toBeNull()
      expect(mergeHooks([{ requests: new Map(), events: new Map() }])).toBeNull()
    }).pipe(Effect.provide(Protocols.layer))
  )
})

/** weston (headless) logging every request it receives; `log()` is its stderr so far. */
const debugWeston = (): Effect.Effect<{ weston: Weston; log: () => string }, unknown, import("effect").Scope.Scope> =>
  Effect.gen(function* () {
    const weston = yield* startWeston({ env: { WAYLAND_DEBUG: "server" } })
    let text = ""
    weston.process.stderr!.on("data", (d: Buffer) => {
      text += d.toString()
    })
    return { weston, log: () => text }
  })

const waitForLine = (log: () => string, pattern: RegExp, timeout: Duration.DurationInput = "90 seconds"): Effect.Effect<string, Error> =>
  Effect.gen(function* () {
    const deadline = Date.now() + Duration.toMillis(timeout)
    for (;;) {
      const m = pattern.exec(log())
      if (m !== null) return m[0]
      if (Date.now() > deadline) {
        const seen = log()
          .split("\n")
          .filter((l) => /set_title|set_app_id/.test(l))
        return yield* Effect.fail(new Error(`the compositor never received ${pattern}; it saw: ${JSON.stringify(seen)}`))
      }
      yield* Effect.sleep(Duration.millis(50))
    }
  })

describe("what the compositor receives", () => {
  it.scopedLive(
    "bin/sommelier serve --tag vm1: [vm1] title and vm1. app id",
    () =>
      Effect.gen(function* () {
        yield* ensureBuilt()
        const { weston, log } = yield* debugWeston()
        const dir = yield* runtimeDir()
        const server = yield* spawnSommelier(["serve", "wayland-tag", "--mode", "local", "--host-display", weston.socketPath, "--tag", "vm1"], {
          env: cleanEnv({ XDG_RUNTIME_DIR: dir })
        })
        yield* server.until("listening", () => /listening on/.test(server.stderr()))
        yield* spawnClient("weston-simple-shm", [], { env: cleanEnv({ XDG_RUNTIME_DIR: dir, WAYLAND_DISPLAY: "wayland-tag" }) })
        yield* waitForLine(log, /xdg_toplevel@\d+\.set_title\("\[vm1\] simple-shm"\)/)
        yield* waitForLine(log, /xdg_toplevel@\d+\.set_app_id\("vm1\.org\.freedesktop\.weston\.simple-shm"\)/)
        expect(log()).not.toMatch(/set_title\("simple-shm"\)/)
      }),
    240_000
  )

  it.scopedLive(
    "separate prefixes through an in-process server: title prefixed, app id untouched",
    () =>
      noFdLeak(
        Effect.gen(function* () {
          const { weston, log } = yield* debugWeston()
          const dir = yield* runtimeDir()
          const context = yield* Layer.build(Layer.mergeAll(Reactor.layer, Protocols.layer))
          const registry = Effect.runSync(Protocols.Protocols.pipe(Effect.provide(context)))
          yield* serve({
            socketPath: join(dir, "wayland-tag2"),
            hostPath: weston.socketPath,
            hooks: [tagHooks(registry, { titlePrefix: "VM: ", appIdPrefix: "" })]
          }).pipe(Effect.provide(context))
          const client = yield* spawnClient("weston-simple-shm", [], { env: cleanEnv({ XDG_RUNTIME_DIR: dir, WAYLAND_DISPLAY: "wayland-tag2" }) })
          yield* waitForLine(log, /xdg_toplevel@\d+\.set_title\("VM: simple-shm"\)/)
          yield* waitForLine(log, /xdg_toplevel@\d+\.set_app_id\("org\.freedesktop\.weston\.simple-shm"\)/)
          yield* client.kill()
        })
      ),
    240_000
  )
})

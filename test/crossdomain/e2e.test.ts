/**
 * End to end over cross-domain: weston ← emulator process (emulated virtio-gpu + cross-domain
 * host) ← `serve` with the cross-domain connector ← clients. wayland-info lists the host's globals
 * (minus the proxy's filtering); a keyboard's keymap (a host blob) reaches a client as a sealed
 * memfd with exactly the bytes weston gives a direct client.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, type Scope } from "effect"
import { readFileSync } from "node:fs"
import { F_GET_SEALS, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE, sys } from "../../src/ffi/libc.js"
import { defaultRegistry } from "../../src/protocol/registry.js"
import type { ArgValue } from "../../src/protocol/types.js"
import { connectUnix, SocketEndpoint } from "../../src/transport/socket.js"
import { encodeMessage, readU32 } from "../../src/wire/index.js"
import { runClientOk } from "../helpers/clients.js"
import { headlessHost, x11Host } from "../helpers/weston.js"
import { startCrossDomainProxy } from "./transport.js"

const registry = defaultRegistry()
const req = (id: number, iface: string, name: string, args: ArgValue[]) =>
  encodeMessage(id, registry.get(iface)!.requests.find((m) => m.name === name)!, args, [])

/**
 * A minimal client with fds (node:net has none): binds wl_seat, gets a keyboard, returns the
 * keymap event's size and the bytes of its fd, and whether the fd is sealed like a compositor's.
 */
const keymapVia = (socketPath: string): Effect.Effect<{ bytes: Buffer; seals: number }, Error, Scope.Scope> =>
  Effect.gen(function* () {
    const fd = yield* connectUnix(socketPath)
    const ep = yield* Effect.acquireRelease(
      Effect.sync(() => new SocketEndpoint(fd)),
      (e) => Effect.sync(() => e.close())
    )
    const send = (b: Uint8Array) => ep.write(b, 0, b.length, [])
    send(Buffer.concat([req(1, "wl_display", "get_registry", [2]), req(1, "wl_display", "sync", [3])]))
    let seatName = -1
    let seatVersion = 0
    let keyboardAsked = false
    for (let i = 0; i < 500; i++) {
      ep.fill()
      let off = ep.inStart
      while (ep.inEnd - off >= 8) {
        const id = readU32(ep.inBuf, off)
        const w = readU32(ep.inBuf, off + 4)
        const size = w >>> 16
        if (ep.inEnd - off < size) break
        const op = w & 0xffff
        if (id === 2 && op === 0) {
          const len = readU32(ep.inBuf, off + 12)
          const name = Buffer.from(ep.inBuf.subarray(off + 16, off + 16 + len - 1)).toString()
          if (name === "wl_seat") {
            seatName = readU32(ep.inBuf, off + 8)
            seatVersion = readU32(ep.inBuf, off + size - 4)
          }
        }
        if (id === 3 && op === 0 && !keyboardAsked) {
          if (seatName < 0) return yield* Effect.fail(new Error("no wl_seat"))
          const v = Math.min(seatVersion, 7)
          const bind = encodeMessage(2, registry.get("wl_registry")!.requests[0]!, [seatName, { interface: "wl_seat", version: v, id: 4 }], [])
          send(Buffer.concat([bind, req(4, "wl_seat", "get_keyboard", [5])]))
          keyboardAsked = true
        }
        if (id === 5 && op === 0) {
          const keymapSize = readU32(ep.inBuf, off + 12)
          const kfd = ep.inFds.shift()!
          const bytes = readFileSync(`/proc/self/fd/${kfd}`).subarray(0, keymapSize)
          const seals = sys.fcntl(kfd, F_GET_SEALS)
          sys.close(kfd)
          return { bytes, seals }
        }
        off += size
      }
      ep.consume(off - ep.inStart)
      yield* Effect.sleep("10 millis")
    }
    return yield* Effect.fail(new Error("no keymap within 5 s"))
  })

const globalsOf = (out: string): string[] =>
  out
    .split("\n")
    .map((l) => /^interface: '([^']+)'/.exec(l)?.[1])
    .filter((x): x is string => x !== undefined)

describe("cross-domain end to end (emulated virtio-gpu)", () => {
  it.scopedLive(
    "wayland-info through serve --mode cross-domain lists the host's globals",
    () =>
      Effect.gen(function* () {
        const host = yield* headlessHost({ debug: true })
        const proxy = yield* startCrossDomainProxy(host.socketPath)
        const direct = yield* runClientOk("wayland-info", [], { env: host.env })
        const proxied = yield* runClientOk("wayland-info", [], { env: proxy.env }).pipe(
          Effect.tapError(() => Effect.sync(() => process.stderr.write(`emulator log:\n${proxy.emulatorLog()}\n`)))
        )
        const d = globalsOf(direct.stdout.toString("utf8"))
        const p = globalsOf(proxied.stdout.toString("utf8"))
        expect(p.length).toBeGreaterThan(5)
        expect(p.every((g) => d.includes(g))).toBe(true)
        expect(p).toContain("wl_compositor")
        expect(proxy.internalErrors()).toEqual([])
      }),
    60_000
  )

  it.scopedLive(
    "a keymap (host blob → dma-buf) reaches the client as a sealed memfd with weston's exact bytes",
    () =>
      Effect.gen(function* () {
        const host = yield* x11Host()
        const proxy = yield* startCrossDomainProxy(host.socketPath)
        const direct = yield* keymapVia(host.socketPath)
        const proxied = yield* keymapVia(proxy.socketPath)
        expect(direct.bytes.length).toBeGreaterThan(1000)
        expect(proxied.bytes.equals(direct.bytes)).toBe(true)
        expect(proxied.seals).toBe(F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL)
        expect(proxy.internalErrors()).toEqual([])
      }),
    60_000
  )
})

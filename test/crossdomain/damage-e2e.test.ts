/**
 * Partial damage end to end over the cross-domain transport (guest client → serve with the
 * cross-domain connector → emulated virtio-gpu in a child process → weston headless):
 *
 * - A client written here (wl_shm, two buffers, xdg_toplevel) draws frames whose damage it
 *   controls; after each commit weston's screenshot must show exactly the frame (pixel counts
 *   per colour), and the connection's copy counter must show exactly the damaged rows copied
 *   (plus what each buffer missed while the other was shown).
 * - weston-simple-damage in its variants (damage_buffer, scale 2, transforms, viewport, rotating
 *   transform) runs without protocol errors and copies far less than a frame per commit.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, type Scope } from "effect"
import { F_DUPFD_CLOEXEC, sys } from "../../src/ffi/libc.js"
import { defaultRegistry } from "../../src/protocol/registry.js"
import type { ArgValue } from "../../src/protocol/types.js"
import { connectUnix, SocketEndpoint } from "../../src/transport/socket.js"
import { mapShared, memfdCreate } from "../../src/transport/memfd.js"
import { encodeMessage, readU32 } from "../../src/wire/index.js"
import { spawnClient } from "../helpers/clients.js"
import { countPixels, type Image } from "../helpers/png.js"
import { expectNoFdLeak, fdSnapshot } from "../helpers/proxy.js"
import { headlessHost, screenshot, type Host } from "../helpers/weston.js"
import { startCrossDomainProxy, type CrossDomainProxy } from "./transport.js"

const registry = defaultRegistry()
const reqDesc = (i: string, name: string) => registry.get(i)!.requests.find((m) => m.name === name)!

interface Event {
  readonly id: number
  readonly opcode: number
  readonly words: number[]
}

/** A minimal wl_shm client on the project's socket endpoint (it passes fds). */
const shmClient = (socketPath: string): Effect.Effect<ShmClient, Error, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.map(connectUnix(socketPath), (fd) => new ShmClient(new SocketEndpoint(fd))),
    (c) => Effect.sync(() => c.close())
  )

class ShmClient {
  readonly events: Event[] = []
  readonly globals = new Map<string, number>()
  nextId = 2
  constructor(readonly ep: SocketEndpoint) {}
  send(id: number, iface: string, name: string, args: ArgValue[], fds: number[] = []): void {
    const out: number[] = []
    const m = encodeMessage(id, reqDesc(iface, name), args, out)
    this.ep.write(m, 0, m.length, fds)
    this.ep.flush()
  }
  /** Reads what is there; answers pings; fails on wl_display.error. */
  pump(): void {
    const r = this.ep.fill()
    const b = this.ep.inBuf
    let p = this.ep.inStart
    while (this.ep.inEnd - p >= 8) {
      const size = readU32(b, p + 4) >>> 16
      if (this.ep.inEnd - p < size) break
      const words: number[] = []
      for (let q = p + 8; q < p + size; q += 4) words.push(readU32(b, q))
      const e = { id: readU32(b, p), opcode: readU32(b, p + 4) & 0xffff, words }
      if (e.id === 1 && e.opcode === 0) {
        const len = words[2]!
        const text = Buffer.from(new Uint32Array(words.slice(3)).buffer).toString("utf8", 0, len - 1)
        throw new Error(`wl_display.error on object ${words[0]}, code ${words[1]}: ${text}`)
      }
      if (e.id === 2 && e.opcode === 0) {
        const len = words[1]!
        this.globals.set(Buffer.from(new Uint32Array(words.slice(2)).buffer).toString("utf8", 0, len - 1), words[0]!)
      }
      this.events.push(e)
      p += size
    }
    this.ep.consume(p - this.ep.inStart)
    if (r === "eof") throw new Error("the proxy closed the connection")
  }
  /** Polls until `pred` holds for some event received from now on. */
  waitFor(pred: (e: Event) => boolean, what: string): Effect.Effect<Event, Error> {
    const start = this.events.length
    return Effect.gen(this, function* () {
      for (let i = 0; i < 500; i++) {
        this.pump()
        const e = this.events.slice(start).find(pred)
        if (e !== undefined) return e
        yield* Effect.sleep("10 millis")
      }
      return yield* Effect.fail(new Error(`timed out waiting for ${what}`))
    })
  }
  roundtrip(): Effect.Effect<Event, Error> {
    const id = this.nextId++
    this.send(1, "wl_display", "sync", [id])
    return this.waitFor((e) => e.id === id && e.opcode === 0, `wl_callback ${id}`)
  }
  close(): void {
    this.ep.close()
  }
}

const fillRect = (v: Uint32Array, W: number, x: number, y: number, w: number, h: number, argb: number): void => {
  for (let yy = y; yy < y + h; yy++) v.fill(argb, yy * W + x, yy * W + x + w)
}

/** Screenshots until `ok` holds (weston repaints asynchronously), up to ~3 s. */
const shotUntil = (host: Host, ok: (img: Image) => boolean): Effect.Effect<Image, unknown> =>
  Effect.gen(function* () {
    let img = yield* screenshot(host)
    for (let i = 0; i < 30 && !ok(img); i++) {
      yield* Effect.sleep("100 millis")
      img = yield* screenshot(host)
    }
    return img
  })

const withCrossDomain = <A, E>(debug: boolean, body: (host: Host, proxy: CrossDomainProxy) => Effect.Effect<A, E, Scope.Scope>): Effect.Effect<A, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const host = yield* headlessHost({ debug })
    const proxy = yield* startCrossDomainProxy(host.socketPath)
    const before = fdSnapshot()
    const result = yield* Effect.scoped(body(host, proxy))
    yield* expectNoFdLeak(before, proxy.server)
    expect(proxy.internalErrors()).toEqual([])
    return result
  })

const W = 120
const H = 90
const C1 = 0xff2040c0
const C2 = 0xffc02040
const C3 = 0xff40c020
const C4 = 0xffe0e010

describe("partial damage over the cross-domain transport", () => {
  it.scopedLive("a client's partial damage: exact pixels on weston after every frame, exactly the damaged rows copied", () =>
    withCrossDomain(true, (host, proxy) =>
      Effect.gen(function* () {
        const c = yield* shmClient(proxy.socketPath)
        c.send(1, "wl_display", "get_registry", [2])
        c.nextId = 3
        yield* c.roundtrip()
        const [compositor, shm, wm] = [c.globals.get("wl_compositor"), c.globals.get("wl_shm"), c.globals.get("xdg_wm_base")]
        expect(compositor !== undefined && shm !== undefined && wm !== undefined).toBe(true)
        c.send(2, "wl_registry", "bind", [compositor!, { interface: "wl_compositor", version: 4, id: 10 }])
        c.send(2, "wl_registry", "bind", [shm!, { interface: "wl_shm", version: 1, id: 11 }])
        c.send(2, "wl_registry", "bind", [wm!, { interface: "xdg_wm_base", version: 1, id: 12 }])
        const size = 2 * W * H * 4
        const poolFd = memfdCreate("damage-e2e-pool", size)
        const pool = yield* Effect.acquireRelease(
          Effect.sync(() => mapShared(poolFd, size)),
          (m) => Effect.sync(() => (m.unmap(), sys.close(poolFd)))
        )
        const px = new Uint32Array(pool.view.buffer, pool.view.byteOffset, size / 4)
        const bufA = px.subarray(0, W * H)
        const bufB = px.subarray(W * H, 2 * W * H)
        c.send(11, "wl_shm", "create_pool", [13, poolFd, size], [sys.fcntl(poolFd, F_DUPFD_CLOEXEC, 0)])
        c.send(13, "wl_shm_pool", "create_buffer", [14, 0, W, H, W * 4, 0])
        c.send(13, "wl_shm_pool", "create_buffer", [15, W * H * 4, W, H, W * 4, 0])
        c.send(13, "wl_shm_pool", "destroy", [])
        c.send(10, "wl_compositor", "create_surface", [16])
        c.send(12, "xdg_wm_base", "get_xdg_surface", [17, 16])
        c.send(17, "xdg_surface", "get_toplevel", [18])
        c.send(16, "wl_surface", "commit", [])
        const conf = yield* c.waitFor((e) => e.id === 17 && e.opcode === 0, "xdg_surface.configure")
        c.send(17, "xdg_surface", "ack_configure", [conf.words[0]!])
        c.nextId = 19
        const conn = proxy.server.connections()[0]!
        const stats = conn.stats
        const shown = (counts: Array<[number, number]>) => (img: Image) => counts.every(([color, n]) => countPixels(img, color) === n)
        const frame = (buf: 14 | 15, damage: Array<[number, number, number, number]>) =>
          Effect.gen(function* () {
            const before = stats.copiedBytes
            c.send(16, "wl_surface", "attach", [buf, 0, 0])
            for (const [x, y, w, h] of damage) c.send(16, "wl_surface", "damage", [x, y, w, h])
            c.send(16, "wl_surface", "commit", [])
            yield* c.roundtrip()
            return stats.copiedBytes - before
          })

        // Frame 1 (A): all C1. A new buffer is copied whole.
        bufA.fill(C1)
        expect(yield* frame(14, [[0, 0, W, H]])).toBe(W * H * 4)
        let img = yield* shotUntil(host, shown([[C1, W * H]]))
        expect(countPixels(img, C1)).toBe(W * H)

        // Frame 2 (B, new: whole copy): the frame plus R = (10, 5, 20, 8) in C2.
        bufB.fill(C1)
        fillRect(bufB, W, 10, 5, 20, 8, C2)
        expect(yield* frame(15, [[10, 5, 20, 8]])).toBe(W * H * 4)
        img = yield* shotUntil(host, shown([[C2, 160], [C1, W * H - 160]]))
        expect([countPixels(img, C2), countPixels(img, C1)]).toEqual([160, W * H - 160])

        // Frame 3 (A again): the client repairs A (R from frame 2) and draws R2 = (50, 30, 15, 4)
        // in C3, damaging only R2. The proxy copies R ∪ R2: 160 + 60 pixels, nothing else. A
        // pixel the client scribbles outside any damage (C4) must not be copied.
        fillRect(bufA, W, 10, 5, 20, 8, C2)
        fillRect(bufA, W, 50, 30, 15, 4, C3)
        fillRect(bufA, W, 100, 80, 1, 1, C4)
        expect(yield* frame(14, [[50, 30, 15, 4]])).toBe((160 + 60) * 4)
        img = yield* shotUntil(host, shown([[C3, 60], [C2, 160], [C1, W * H - 220]]))
        expect([countPixels(img, C3), countPixels(img, C2), countPixels(img, C1), countPixels(img, C4)]).toEqual([60, 160, W * H - 220, 0])

        // Frame 4 (B): repairs R2, clears R back to C1, damages R; copies R2 ∪ R.
        fillRect(bufB, W, 50, 30, 15, 4, C3)
        fillRect(bufB, W, 10, 5, 20, 8, C1)
        expect(yield* frame(15, [[10, 5, 20, 8]])).toBe((160 + 60) * 4)
        img = yield* shotUntil(host, shown([[C3, 60], [C2, 0], [C1, W * H - 60]]))
        expect([countPixels(img, C3), countPixels(img, C2), countPixels(img, C1)]).toEqual([60, 0, W * H - 60])

        // Frame 5 (B again, damage_buffer, full-width rows 40..43): 4 whole rows in one span.
        fillRect(bufB, W, 0, 40, W, 4, C2)
        const before = stats.copiedBytes
        c.send(16, "wl_surface", "damage_buffer", [0, 40, W, 4])
        c.send(16, "wl_surface", "attach", [15, 0, 0])
        c.send(16, "wl_surface", "commit", [])
        yield* c.roundtrip()
        expect(stats.copiedBytes - before).toBe(W * 4 * 4)
        img = yield* shotUntil(host, shown([[C2, 4 * W]]))
        expect(countPixels(img, C2)).toBe(4 * W)
        expect(stats.copyCommits).toBe(5)
      })
    )
  )

  const variants: ReadonlyArray<readonly [string, readonly string[], number]> = [
    ["default", [], 1],
    ["damage_buffer", ["--use-damage-buffer"], 1],
    ["scale 2", ["--scale=2"], 2],
    ["transform 90", ["--transform=90"], 1],
    ["transform flipped-270, scale 2, damage_buffer", ["--transform=flipped-270", "--scale=2", "--use-damage-buffer"], 2],
    ["viewport", ["--use-viewport"], 1],
    ["rotating transform", ["--rotating-transform"], 1]
  ]
  for (const [name, args, scale] of variants) {
    it.scopedLive(`weston-simple-damage (${name}): no protocol error, partial copies`, () =>
      withCrossDomain(false, (_host, proxy) =>
        Effect.gen(function* () {
          const client = yield* spawnClient("weston-simple-damage", ["--width=400", "--height=300", ...args], { env: proxy.env })
          // Skip the first commits (each new buffer is copied whole), then count 20 more
          // (about 1/3 s at 60 Hz; up to 30 s on a loaded machine).
          const stats = () => proxy.server.connections()[0]?.stats
          const until = (n: number) =>
            Effect.gen(function* () {
              for (let i = 0; i < 300 && (stats()?.copyCommits ?? 0) < n && client.alive(); i++) yield* Effect.sleep("100 millis")
            })
          yield* until(4)
          const b0 = stats()?.copiedBytes ?? 0
          const c0 = stats()?.copyCommits ?? 0
          yield* until(c0 + 20)
          expect(client.alive(), `stderr: ${client.stderr()}`).toBe(true)
          expect(client.stderr()).not.toMatch(/error|protocol/i)
          const s = stats()!
          const frameBytes = 400 * 300 * 4 * scale * scale
          expect(s.copyCommits - c0).toBeGreaterThanOrEqual(20)
          const perCommit = (s.copiedBytes - b0) / (s.copyCommits - c0)
          // A whole buffer changes its transform every frame: the proxy copies it whole then.
          if (name === "rotating transform") expect(perCommit).toBeLessThanOrEqual(frameBytes)
          else expect(perCommit, `${Math.round(perCommit)} bytes per commit of a ${frameBytes}-byte buffer`).toBeLessThan(frameBytes / 4)
          console.log(`weston-simple-damage ${name}: ${s.copyCommits - c0} commits measured, ${Math.round(perCommit)} bytes copied per commit (buffer ${frameBytes} bytes)`)
          yield* client.kill("SIGKILL")
        })
      )
    )
  }
})

/**
 * Every per-client limit over real sockets, with the proxy in this process (its fds are ours):
 * at the bound the offending client gets a `wl_display.error`, then EOF; the proxy logs one line
 * naming the client and the limit; a bystander's roundtrip still completes; fds return to the
 * snapshot. Also: a client pipelining 30 000 `wl_display.sync` gets all 30 000 `done` and
 * `delete_id` (the proxy keeps reading weston, which would otherwise cut the client), and a
 * compositor that stops reading pauses the client without cutting it (below the hard bound) or
 * cuts it at `maxHostBacklog`.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, type Scope } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { createServer, type Socket } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { ConnectionLimits } from "../../src/proxy/connection.js"
import { memfdCreate } from "../../src/transport/memfd.js"
import { decodeDisplayError, decodeGlobal, message } from "../e2e/raw-client.js"
import { fdSnapshot } from "../helpers/proxy.js"
import { headlessHost, x11Host } from "../helpers/weston.js"
import { startProxy, until, type RobustProxy } from "./proxy.js"
import { connectFdClient, displayErrors, type FdClient } from "./raw.js"

const sync = (id: number): Buffer => message(1, 0, [id])
/** wl_registry@2.bind(name, interface, version, id). */
const bind = (name: number, iface: string, version: number, id: number): Buffer => {
  const str = Buffer.alloc((iface.length + 1 + 3) & ~3)
  str.write(iface, "latin1")
  const words = [name, iface.length + 1, ...Array.from({ length: str.length / 4 }, (_, i) => str.readUInt32LE(i * 4)), version, id]
  return message(2, 0, words)
}
const getRegistry = (id: number): Buffer => message(1, 1, [id])

/** Sends a sync on `c` and waits for its done. */
const roundtrip = (c: FdClient, id: number) =>
  Effect.gen(function* () {
    c.send(sync(id))
    const ok = yield* c.waitFor(() => c.messages.some((m) => m.objectId === id && m.opcode === 0))
    if (!ok) return yield* Effect.fail(new Error(`roundtrip ${id} failed (eof=${c.eof})`))
  })

/**
 * The offender was cut: one wl_display.error, last, then EOF; its text is returned. Without
 * `told`, EOF alone (a client that does not read cannot be told: the error is behind its queue).
 */
const expectCut = (c: FdClient, told = true) =>
  Effect.gen(function* () {
    yield* c.waitFor(() => c.eof, 5000)
    expect(c.eof, "the offender is disconnected").toBe(true)
    const errors = displayErrors(c.messages)
    if (!told) {
      expect(errors.length).toBeLessThanOrEqual(1)
      return errors[0] === undefined ? null : decodeDisplayError(errors[0])
    }
    expect(errors.length).toBe(1)
    expect(c.messages[c.messages.length - 1]).toBe(errors[0])
    return decodeDisplayError(errors[0]!)
  })

/** One limit: a bystander stays connected, the offender is cut, the log names both. */
const limitCase = (
  limits: Partial<ConnectionLimits>,
  offend: (c: FdClient, proxy: RobustProxy) => Effect.Effect<void, Error>,
  logPattern: RegExp,
  told = true,
  compositor: Effect.Effect<{ readonly socketPath: string }, unknown, Scope.Scope> = headlessHost()
) =>
  Effect.gen(function* () {
    const host = yield* compositor
    const proxy = yield* startProxy(host.socketPath, limits)
    const bystander = yield* connectFdClient(proxy.socketPath, proxy.reactor)
    yield* roundtrip(bystander, 2)
    const before = fdSnapshot()
    const offender = yield* Effect.scoped(
      Effect.gen(function* () {
        const c = yield* connectFdClient(proxy.socketPath, proxy.reactor)
        yield* offend(c, proxy)
        const err = yield* expectCut(c, told)
        return { err: err ?? { objectId: 0, code: -1, message: "" } }
      })
    )
    yield* until("the offender's connection to end", () => proxy.server.activeClients() === 1)
    yield* roundtrip(bystander, 3)
    const line = proxy.logs().find((l) => logPattern.test(l))
    expect(line, `a log line matching ${logPattern} in:\n${proxy.logs().join("\n")}`).toBeDefined()
    expect(line).toMatch(/client \d+/)
    // Nothing the offender brought or caused stays open. (fds closing that were open before are
    // not checked: an earlier test's weston stdio socketpair can close late.)
    const after = fdSnapshot()
    expect([...after.fds].filter(([fd, w]) => before.fds.get(fd) !== w)).toEqual([])
    return { ...offender, line: line! }
  })

describe("limits over real sockets (proxy in-process, weston)", () => {
  it.scopedLive("a client pipelining 30 000 wl_display.sync gets all 30 000 done and delete_id", () =>
    Effect.gen(function* () {
      const host = yield* headlessHost()
      const proxy = yield* startProxy(host.socketPath)
      const c = yield* connectFdClient(proxy.socketPath, proxy.reactor)
      const N = 30_000
      const burst = Buffer.concat(Array.from({ length: N }, (_, i) => sync(2 + i)))
      const t0 = Date.now()
      c.send(burst)
      const ok = yield* c.waitFor(() => c.messages.length >= 2 * N, 60_000)
      const done = c.messages.filter((m) => m.opcode === 0 && m.objectId >= 2).length
      const deleted = c.messages.filter((m) => m.objectId === 1 && m.opcode === 1).length
      process.stdout.write(`30000 syncs: ${done} done + ${deleted} delete_id in ${Date.now() - t0} ms\n`)
      expect(ok, `eof=${c.eof}, ${displayErrors(c.messages).map((m) => decodeDisplayError(m).message).join("; ")}`).toBe(true)
      expect(done).toBe(N)
      expect(deleted).toBe(N)
      expect(displayErrors(c.messages)).toEqual([])
      // Every id came back, in order.
      const ids = c.messages.filter((m) => m.opcode === 0 && m.objectId >= 2).map((m) => m.objectId)
      expect(ids).toEqual(Array.from({ length: N }, (_, i) => 2 + i))
      expect(proxy.server.activeClients()).toBe(1)
    })
  )

  it.scopedLive("max message size: a 4100-byte request is cut, naming the limit", () =>
    Effect.gen(function* () {
      const big = Buffer.alloc(4100)
      big.writeUInt32LE(1, 0)
      big.writeUInt32LE(((4100 << 16) | 0) >>> 0, 4)
      const r = yield* limitCase({}, (c) => Effect.sync(() => void c.send(big)), /client \d+ cut: protocol error .*exceeds the limit of 4096/)
      expect(r.err.message).toContain("exceeds the limit of 4096 bytes")
    })
  )

  it.scopedLive("max message size is configurable (64 bytes)", () =>
    Effect.gen(function* () {
      // wl_registry.bind(name, "zwp_linux_dmabuf_v1", 1, 3) is 48 bytes; 68 bytes of a valid frame header suffice.
      const frame = Buffer.alloc(68)
      frame.writeUInt32LE(1, 0)
      frame.writeUInt32LE(((68 << 16) | 0) >>> 0, 4)
      const r = yield* limitCase({ maxMessageSize: 64 }, (c) => Effect.sync(() => void c.send(frame)), /exceeds the limit of 64 bytes/)
      expect(r.err.message).toContain("exceeds the limit of 64 bytes")
    })
  )

  it.scopedLive("max objects: the 11th object is refused with no_memory", () =>
    Effect.gen(function* () {
      const r = yield* limitCase(
        { maxObjects: 10 },
        (c) => Effect.sync(() => void c.send(Buffer.concat(Array.from({ length: 20 }, (_, i) => sync(2 + i))))),
        /client \d+ cut: .*object limit of 10 reached/
      )
      expect(r.err.code).toBe(2)
    })
  )

  it.scopedLive("max fds in flight: 40 fds on a request that takes none, limit 32", () =>
    Effect.gen(function* () {
      const r = yield* limitCase(
        { maxFdsInFlight: 32 },
        (c) =>
          Effect.sync(() => {
            const fds = Array.from({ length: 40 }, () => memfdCreate("sommelier-flood", 4096))
            c.send(getRegistry(2), fds)
          }),
        /client \d+ cut at limit "fds in flight"/
      )
      expect(r.err.code).toBe(2)
      expect(r.err.message).toMatch(/fds in flight/)
    })
  )

  it.scopedLive("max fds in flight (default 1024): 1100 fds riding on a message that never completes", () =>
    Effect.gen(function* () {
      const r = yield* limitCase(
        {},
        (c) =>
          Effect.sync(() => {
            // A header announcing 4096 bytes, then one byte per 28 fds: nothing completes.
            const head = Buffer.alloc(8)
            head.writeUInt32LE(1, 0)
            head.writeUInt32LE(((4096 << 16) | 0) >>> 0, 4)
            c.send(head)
            for (let sent = 0; sent < 1100; sent += 28) {
              const fds = Array.from({ length: Math.min(28, 1100 - sent) }, () => memfdCreate("sommelier-flood", 4096))
              if (!c.send(Buffer.alloc(1), fds)) break
            }
          }),
        /client \d+ cut at limit "fds in flight"/
      )
      expect(r.err.message).toMatch(/more than 1024/)
    })
  )

  it.scopedLive("max fds in flight, toward the client: 8000 wl_seat.get_keyboard not read (each brings a keymap fd)", () =>
    Effect.gen(function* () {
      const r = yield* limitCase(
        {},
        (c, proxy) =>
          Effect.gen(function* () {
            c.send(Buffer.concat([getRegistry(2), sync(3)]))
            yield* c.waitFor(() => c.messages.some((m) => m.objectId === 3 && m.opcode === 0))
            const seat = c.messages.filter((m) => m.objectId === 2 && m.opcode === 0).map(decodeGlobal).find((g) => g.iface === "wl_seat")
            if (seat === undefined) return yield* Effect.fail(new Error("the compositor has no wl_seat"))
            c.pause()
            c.send(bind(seat.name, "wl_seat", 1, 4))
            // wl_seat.get_keyboard (opcode 1) again and again: weston sends a keymap fd for each.
            c.send(Buffer.concat(Array.from({ length: 8000 }, (_, i) => message(4, 1, [5 + i]))))
            // The client's socket absorbs a few thousand fds first; then they queue in the proxy.
            yield* until("the proxy to cut the client", () => proxy.logs().some((l) => l.includes("fds in flight")), 30_000).pipe(Effect.ignore)
            c.resume()
          }),
        /client \d+ cut at limit "fds in flight"/,
        false,
        x11Host()
      )
      expect(r.line).toMatch(/toward the client/)
    })
  )

  it.scopedLive("max client backlog: a client that does not read is cut at 64 KiB queued; the compositor is always read", () =>
    Effect.gen(function* () {
      const r = yield* limitCase(
        { maxClientBacklog: 64 * 1024 },
        (c) =>
          Effect.gen(function* () {
            c.pause()
            // 24 bytes of events per sync: enough to fill the kernel's buffer and 64 KiB more.
            for (let round = 0; round < 40 && !c.eof; round++) {
              c.send(Buffer.concat(Array.from({ length: 2000 }, (_, i) => sync(2 + round * 2000 + i))))
              yield* Effect.sleep("20 millis")
              if (c.endpoint.closed) break
            }
            c.resume()
          }),
        /client \d+ cut at limit "client backlog"/,
        false
      )
      // The error cannot get past a full queue: the client reads what had reached it, then EOF.
      void r
    })
  )
})

describe("a compositor that does not read", () => {
  /** A fake compositor: accepts and does not read until `resume()`; counts what it got. */
  const stalledCompositor = () =>
    Effect.acquireRelease(
      Effect.async<{ path: string; received: () => number; resume: () => void; close: () => void }>((done) => {
        const dir = mkdtempSync(join(tmpdir(), "sommelier-stalled-"))
        const path = join(dir, "stalled-compositor")
        const conns: Socket[] = []
        let received = 0
        const server = createServer({ pauseOnConnect: true }, (s) => {
          conns.push(s)
          s.on("data", (d: Buffer) => {
            received += d.length
          })
          s.on("error", () => {})
        })
        server.listen(path, () =>
          done(
            Effect.succeed({
              path,
              received: () => received,
              resume: () => conns.forEach((s) => s.resume()),
              close: () => {
                conns.forEach((s) => s.destroy())
                server.close()
                rmSync(dir, { recursive: true, force: true })
              }
            })
          )
        )
      }),
      (f) => Effect.sync(() => f.close())
    )

  it.scopedLive("the client is paused, not cut, and everything arrives once the compositor reads again", () =>
    Effect.gen(function* () {
      const fake = yield* stalledCompositor()
      const proxy = yield* startProxy(fake.path, { maxObjects: 1_000_000 })
      const c = yield* connectFdClient(proxy.socketPath, proxy.reactor)
      const N = 250_000 // 3 MB of syncs
      const total = 12 * N
      c.send(Buffer.concat(Array.from({ length: N }, (_, i) => sync(2 + i))))
      yield* until("the client to be paused", () => proxy.server.connections()[0]?.clientPaused === true, 10_000)
      let peak = 0
      for (let i = 0; i < 20; i++) {
        peak = Math.max(peak, proxy.server.connections()[0]?.host.pendingBytes ?? 0)
        yield* Effect.sleep("10 millis")
      }
      expect(proxy.server.activeClients()).toBe(1)
      // Paused at 1 MiB: the queue never grows much past it (one read's worth).
      expect(peak).toBeLessThan(1024 * 1024 + 256 * 1024)
      fake.resume()
      yield* until(`all ${total} bytes to reach the compositor`, () => fake.received() >= total, 20_000)
      expect(fake.received()).toBe(total)
      expect(c.eof).toBe(false)
      process.stdout.write(`stalled compositor: peak ${peak} bytes queued in the proxy, ${fake.received()} bytes delivered after resume\n`)
    })
  )

  it.scopedLive("past maxHostBacklog the client is cut with an error and a log line", () =>
    Effect.gen(function* () {
      const fake = yield* stalledCompositor()
      const proxy = yield* startProxy(fake.path, { maxObjects: 1_000_000, maxHostBacklog: 128 * 1024, hostBackpressure: 4 * 1024 * 1024 })
      const c = yield* connectFdClient(proxy.socketPath, proxy.reactor)
      c.send(Buffer.concat(Array.from({ length: 100_000 }, (_, i) => sync(2 + i))))
      const err = yield* expectCut(c)
      expect(err?.code).toBe(2)
      expect(err?.message).toMatch(/compositor does not read: more than 131072 bytes/)
      expect(proxy.logs().some((l) => /client \d+ cut at limit "host backlog"/.test(l))).toBe(true)
    })
  )
})

/**
 * Many clients, bad clients, and churn, on weston (headless).
 *
 * Proves:
 * - 20 solid clients connected at once are all mapped (each printed "mapped" after a roundtrip
 *   that followed its commit) and all 20 are connected at the proxy at the same time.
 * - A client sending garbage is cut with a `wl_display.error` (decoded by hand: object 1,
 *   opcode 0, the offending object id, the code libwayland-server would use, a message) followed
 *   by EOF, for several kinds of garbage, while a well-behaved client (solid, mapped) keeps
 *   running and stays connected at the proxy.
 * - 200 connect / get_registry+sync roundtrip / close cycles (hand-encoded bytes) each see the
 *   globals and the sync's done, and leave no fd behind in this process (the proxy runs
 *   in-process, so its fds are this process's fds).
 * - 40 animating clients (weston-simple-shm) SIGKILLed while frame events stream to them are
 *   each ended cleanly: no exception escapes the proxy's data path (a write toward a client that
 *   just vanished fails with EPIPE; that must end the connection, not throw into the reactor),
 *   none stays connected, no fd leaks, and a new client is served afterwards.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { buildClient, runClientOk, spawnClient } from "../helpers/clients.js"
import { scopedLiveNeeding, transports } from "../helpers/proxy.js"
import { headlessHost } from "../helpers/weston.js"
import { withProxy } from "./fixture.js"
import { connectRaw, decodeDisplayError, decodeGlobal, message, registryAndSync, syncDone, type RawMessage } from "./raw-client.js"

const CLIENTS = 20
const CYCLES = 200

/** wl_display.error codes (wayland.xml). */
const INVALID_OBJECT = 0
const INVALID_METHOD = 1

interface Garbage {
  readonly label: string
  readonly bytes: Buffer
  /** Acceptable error codes. */
  readonly codes: ReadonlyArray<number>
  /** Expected object id in the error. */
  readonly objectId?: number
}

// Expectations follow libwayland-server (checked against weston directly). The error's object
// must be one the client knows: libwayland-client cannot demarshal a wl_display.error whose
// object argument names an id it never had, so an unknown sender is reported on wl_display (1).
const garbage: ReadonlyArray<Garbage> = [
  { label: "a header whose size is below 8", bytes: message(1, 1, [], 4), codes: [INVALID_METHOD] },
  { label: "a request to an object that does not exist", bytes: message(77, 0, [5]), codes: [INVALID_OBJECT], objectId: 1 },
  { label: "an opcode wl_display does not have", bytes: message(1, 9, []), codes: [INVALID_METHOD], objectId: 1 },
  // libwayland-server says INVALID_METHOD ("invalid arguments"); INVALID_OBJECT is as reasonable.
  { label: "a new_id in the server's id range", bytes: message(1, 1, [0xff000005]), codes: [INVALID_METHOD, INVALID_OBJECT], objectId: 1 },
  // Its header claims 8517 bytes, over the 4096-byte message limit.
  { label: "ASCII text", bytes: Buffer.from("GARBAGE!GARBAGE!GARBAGE!GARBAGE!"), codes: [INVALID_METHOD] }
]

const pollUntil = (what: string, cond: () => boolean, timeoutMs = 3000): Effect.Effect<void, Error> =>
  Effect.gen(function* () {
    const deadline = Date.now() + timeoutMs
    while (!cond()) {
      if (Date.now() > deadline) return yield* Effect.fail(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep("20 millis")
    }
  })

for (const transport of transports) {
  describe(`many and bad clients through the proxy (${transport.name})`, () => {
    scopedLiveNeeding(transport, "shm")(`${CLIENTS} concurrent clients are all mapped`, () =>
      Effect.gen(function* () {
        const solid = yield* buildClient("solid")
        yield* withProxy(transport, headlessHost(), ({ proxy }) =>
          Effect.gen(function* () {
            const clients = yield* Effect.forEach(
              Array.from({ length: CLIENTS }, (_, i) => i),
              (i) => spawnClient(solid, [String(20 + i), String(10 + i), "0xff102030"], { env: proxy.env }),
              { concurrency: "unbounded" }
            )
            yield* Effect.forEach(clients, (c) => c.waitForStdout(/^mapped$/m, "20 seconds"), { concurrency: "unbounded" })
            expect(proxy.server.activeClients()).toBe(CLIENTS)
            expect(proxy.server.totalClients()).toBe(CLIENTS)
            for (const c of clients) expect(c.alive(), c.stderr()).toBe(true)
          })
        )
      })
    )

    scopedLiveNeeding(transport, "shm")("a garbage-sending client gets wl_display.error and EOF; a well-behaved client keeps running", () =>
      Effect.gen(function* () {
        const solid = yield* buildClient("solid")
        yield* withProxy(transport, headlessHost(), ({ proxy }) =>
          Effect.gen(function* () {
            const good = yield* spawnClient(solid, ["50", "40", "0xff405060"], { env: proxy.env })
            yield* good.waitForStdout(/^mapped$/m)
            expect(proxy.server.activeClients()).toBe(1)
            const goodConn = proxy.server.connections()[0]!

            for (const g of garbage) {
              yield* Effect.scoped(
                Effect.gen(function* () {
                  const raw = yield* connectRaw(proxy.socketPath)
                  raw.send(g.bytes)
                  const { messages, eof } = yield* raw.read((_, eof) => eof)
                  expect(eof).toBe(true)
                  const errors = messages.filter((m: RawMessage) => m.objectId === 1 && m.opcode === 0)
                  expect(errors.length, `${g.label}: one wl_display.error`).toBe(1)
                  // Nothing may follow the error.
                  expect(messages[messages.length - 1]).toBe(errors[0])
                  const err = decodeDisplayError(errors[0]!)
                  expect(g.codes, `${g.label}: code ${err.code}: ${err.message}`).toContain(err.code)
                  if (g.objectId !== undefined) expect(err.objectId, `${g.label}: ${err.message}`).toBe(g.objectId)
                  expect(err.message.length).toBeGreaterThan(0)
                })
              )
            }
            yield* pollUntil("the garbage clients to be gone", () => proxy.server.activeClients() === 1)
            expect(proxy.server.totalClients()).toBe(1 + garbage.length)
            expect(proxy.server.connections()).toEqual([goodConn])
            expect(good.alive(), good.stderr()).toBe(true)
            expect(good.stderr()).toBe("")
          })
        )
      })
    )

    it.scopedLive(`${CYCLES} connect / roundtrip / disconnect cycles leak no fd`, () =>
      withProxy(transport, headlessHost(), ({ proxy }) =>
        Effect.gen(function* () {
          for (let i = 0; i < CYCLES; i++) {
            yield* Effect.scoped(
              Effect.gen(function* () {
                const raw = yield* connectRaw(proxy.socketPath)
                raw.send(registryAndSync())
                const { messages, eof } = yield* raw.read((ms, eof) => eof || syncDone(ms))
                expect(eof, `cycle ${i}: connection ended early`).toBe(false)
                const globals = messages.filter((m) => m.objectId === 2 && m.opcode === 0).map(decodeGlobal)
                expect(globals.some((g) => g.iface === "wl_compositor"), `cycle ${i}`).toBe(true)
              })
            )
          }
          expect(proxy.server.totalClients()).toBe(CYCLES)
        })
      )
    )

    scopedLiveNeeding(transport, "shm")("clients killed while events stream to them are ended cleanly", () =>
      withProxy(transport, headlessHost(), ({ proxy }) =>
        Effect.gen(function* () {
          for (let round = 0; round < 5; round++) {
            yield* Effect.scoped(
              Effect.gen(function* () {
                const clients = yield* Effect.forEach(Array.from({ length: 8 }), () => spawnClient("weston-simple-shm", [], { env: proxy.env }))
                yield* Effect.sleep("150 millis")
                for (const c of clients) {
                  expect(c.alive(), c.stderr()).toBe(true)
                  yield* c.kill("SIGKILL")
                  // Spread the kills over the frame clock so some land mid-batch.
                  yield* Effect.sleep("7 millis")
                }
              })
            )
          }
          yield* pollUntil("the killed clients to be gone", () => proxy.server.activeClients() === 0)
          expect(proxy.internalErrors()).toEqual([])
          const info = yield* runClientOk("wayland-info", [], { env: proxy.env })
          expect(info.stdout.toString("utf8")).toMatch(/wl_compositor/)
        })
      )
    )
  })
}

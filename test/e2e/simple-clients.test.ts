/**
 * weston-simple-shm and weston-simple-damage through the proxy, at the same time, for 3 s on
 * weston (headless).
 *
 * Proves: real animated clients keep running through the proxy (neither exits, neither prints a
 * protocol error), and that their frame loop really turns: each connection forwarded at least
 * 60 frames' worth of traffic in both directions (every frame is attach + damage + frame +
 * commit, answered by wl_callback.done and wl_buffer.release) and passed the shm pool fds to
 * the compositor. A proxy that stalls after the first frame, drops fds or cuts a client fails.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { spawnClient } from "../helpers/clients.js"
import { scopedLiveNeeding, transports } from "../helpers/proxy.js"
import { headlessHost } from "../helpers/weston.js"
import { withProxy } from "./fixture.js"

const RUN_MS = 3000
/** Frames each client must at least have drawn in RUN_MS (weston's headless output runs at 60 Hz). */
const MIN_FRAMES = 60

for (const transport of transports) {
  describe(`simple clients through the proxy (${transport.name})`, () => {
    scopedLiveNeeding(transport, "shm")("weston-simple-shm and weston-simple-damage run 3 s with frames committed and no protocol error", () =>
      withProxy(transport, headlessHost(), ({ proxy }) =>
        Effect.gen(function* () {
          const shm = yield* spawnClient("weston-simple-shm", [], { env: proxy.env })
          const damage = yield* spawnClient("weston-simple-damage", [], { env: proxy.env })
          yield* Effect.sleep(RUN_MS)
          for (const c of [shm, damage]) {
            expect(c.alive(), `${c.name} still running (stderr: ${c.stderr()})`).toBe(true)
            expect(c.stderr()).not.toMatch(/error|protocol/i)
          }
          const conns = proxy.server.connections()
          expect(conns.length).toBe(2)
          for (const conn of conns) {
            const s = conn.stats
            expect(s.requests, `requests of client ${conn.options.id}`).toBeGreaterThanOrEqual(MIN_FRAMES * 4)
            expect(s.events, `events of client ${conn.options.id}`).toBeGreaterThanOrEqual(MIN_FRAMES)
            expect(s.requestFds, `fds sent by client ${conn.options.id}`).toBeGreaterThanOrEqual(1)
          }
          const total = proxy.server.stats()
          expect(total.requestFds).toBeGreaterThanOrEqual(2)
          yield* shm.kill("SIGKILL")
          yield* damage.kill("SIGKILL")
        })
      )
    )
  })
}

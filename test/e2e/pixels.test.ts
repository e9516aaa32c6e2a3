/**
 * Exact pixels: test/clients/solid (a W×H xdg_toplevel filled with one ARGB colour from a
 * wl_shm buffer) through the proxy, then a screenshot of weston's (headless) output taken by
 * weston-screenshooter directly on the host socket.
 *
 * Proves: the client's shm buffer (its fd passed by the proxy) reaches the compositor
 * unchanged and the surface is mapped at its size: the screenshot holds exactly W×H pixels of
 * that colour, forming one W×H rectangle. The colour (0xff12d35e) is one no weston desktop
 * element uses, and the screenshot is checked to hold none of it before the client runs.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { buildClient, spawnClient } from "../helpers/clients.js"
import { boundingBox, countPixels, type Image } from "../helpers/png.js"
import { scopedLiveNeeding, transports } from "../helpers/proxy.js"
import { headlessHost, screenshot, type Host } from "../helpers/weston.js"
import { withProxy } from "./fixture.js"

const W = 97
const H = 61
const COLOR = 0xff12d35e

/** Screenshots until the colour shows W×H times (the compositor repaints asynchronously), up to ~3 s. */
const shotUntilComplete = (host: Host): Effect.Effect<Image, unknown> =>
  Effect.gen(function* () {
    let img = yield* screenshot(host)
    for (let i = 0; i < 30 && countPixels(img, COLOR) !== W * H; i++) {
      yield* Effect.sleep("100 millis")
      img = yield* screenshot(host)
    }
    return img
  })

for (const transport of transports) {
  describe(`exact pixels through the proxy (${transport.name})`, () => {
    scopedLiveNeeding(transport, "shm")(`a ${W}x${H} surface of 0x${COLOR.toString(16)} shows as exactly ${W * H} pixels`, () =>
      Effect.gen(function* () {
        const solid = yield* buildClient("solid")
        return yield* withProxy(transport, headlessHost({ debug: true }), ({ host, proxy }) =>
          Effect.gen(function* () {
            const empty = yield* screenshot(host)
            expect(countPixels(empty, COLOR)).toBe(0)

            const client = yield* spawnClient(solid, [String(W), String(H), `0x${COLOR.toString(16)}`], { env: proxy.env })
            yield* client.waitForStdout(/^mapped$/m)
            const img = yield* shotUntilComplete(host)
            expect(countPixels(img, COLOR)).toBe(W * H)
            const box = boundingBox(img, COLOR)
            expect(box?.width).toBe(W)
            expect(box?.height).toBe(H)
            expect(client.alive()).toBe(true)
            expect(proxy.server.stats().requestFds).toBeGreaterThanOrEqual(1)
          })
        )
      })
    )
  })
}

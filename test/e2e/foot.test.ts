/**
 * foot (a real terminal: xdg-shell, wl_seat keyboard with its keymap fd, shm buffers, text
 * rendering) through the proxy on weston (x11 backend in a private Xvfb), with keys typed into
 * Xvfb by xdotool.
 *
 * Proves: a full interactive client works end to end through the proxy: it maps, gets keyboard
 * focus, receives the keymap (an fd in an event) and key events from the real seat, and its
 * shell receives the typed line: `sh -c 'read line; printf %s "$line" > OUT'` must leave
 * exactly "hello-sommelier" in OUT.
 *
 * Readiness: foot runs with WAYLAND_DEBUG=1 (libwayland-client logs every message to its
 * stderr), and typing starts once it logged `wl_keyboard.enter`: keys typed before the surface
 * has focus would be lost. weston's X window is given X input focus and the pointer first
 * (`xdotool search --class weston`, `windowfocus --sync`, `mousemove`), because Xvfb sends key
 * events to the focused X window.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { runClientOk, spawnClient } from "../helpers/clients.js"
import { transports } from "../helpers/proxy.js"
import { x11Host } from "../helpers/weston.js"
import { withProxy } from "./fixture.js"

const TEXT = "hello-sommelier"

for (const transport of transports) {
  describe(`foot through the proxy (${transport.name})`, () => {
    it.scopedLive("foot shows typed text to its shell", () =>
      withProxy(transport, x11Host(), ({ host, proxy }) =>
        Effect.gen(function* () {
          const dir = yield* Effect.acquireRelease(
            Effect.sync(() => mkdtempSync(join(tmpdir(), "sommelier-foot-"))),
            (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
          )
          const out = join(dir, "OUT")
          const foot = yield* spawnClient("foot", ["--log-level=warning", "sh", "-c", `read line; printf "%s" "$line" > ${out}`], {
            env: { ...proxy.env, WAYLAND_DEBUG: "1", HOME: dir, XDG_CONFIG_HOME: dir },
            cwd: dir
          })
          yield* foot.waitForStderr(/wl_keyboard[@#]\d+\.enter\(/, "15 seconds")

          const x = { env: { ...process.env, DISPLAY: host.xDisplay! } }
          const found = yield* runClientOk("xdotool", ["search", "--class", "weston"], x)
          const win = found.stdout.toString("utf8").trim().split("\n")[0]
          expect(win).toMatch(/^\d+$/)
          yield* runClientOk("xdotool", ["windowfocus", "--sync", win!], x)
          yield* runClientOk("xdotool", ["mousemove", "--window", win!, "320", "240"], x)
          yield* runClientOk("xdotool", ["type", "--delay", "50", TEXT], x)
          yield* runClientOk("xdotool", ["key", "Return"], x)

          let got = ""
          for (let i = 0; i < 100 && got !== TEXT; i++) {
            yield* Effect.sleep("50 millis")
            if (existsSync(out)) got = readFileSync(out, "utf8")
          }
          expect(got).toBe(TEXT)
          expect(foot.stderr()).not.toMatch(/wl_display[@#]1\.error\(/)
          expect(proxy.server.stats().eventFds).toBeGreaterThanOrEqual(1)
        })
      )
    )
  })
}

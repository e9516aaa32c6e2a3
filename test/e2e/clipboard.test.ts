/**
 * Clipboard between a client of the proxy and a direct client of weston (x11 backend in a
 * private Xvfb), both ways, with a short text and a 5 MB random binary file.
 *
 * Proves: wl_data_device selection handling and the fds it carries work through the proxy in
 * both directions: the paster's pipe fd travels in `wl_data_offer.receive` (a request) and the
 * copier gets it in `wl_data_source.send` (an event); the bytes pasted are identical (sha256) to
 * the bytes copied, including 5 MB that needs many pipe refills.
 *
 * Focus: weston has no data-control protocol, so wl-copy/wl-paste map a tiny surface to get
 * keyboard focus (a selection needs a keyboard-enter serial). The headless backend has no
 * wl_seat at all, hence x11. On the x11 backend the seat's keyboard exists without X input
 * focus, and desktop-shell gives keyboard focus to each newly mapped toplevel, so no xdotool is
 * needed (checked by hand: it works with the pointer outside weston's window).
 *
 * The copier runs with --foreground (so it is our process, killed after the paste) and without
 * --paste-once: weston's clipboard manager (clipboard.c) reads every new selection
 * itself at once, to keep it after its owner exits, and that read would be the one paste,
 * leaving wl-paste racing weston's half-read copy (seen under load, directly on weston too).
 * Before pasting, `wl-paste --list-types` is polled until the type is offered, because wl-copy
 * sets the selection asynchronously.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { runClient, spawnClient } from "../helpers/clients.js"
import { scopedLiveNeeding, transports } from "../helpers/proxy.js"
import { x11Host } from "../helpers/weston.js"
import { withProxy } from "./fixture.js"

const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex")

interface Payload {
  readonly label: string
  readonly type: string
  readonly bytes: Buffer
}

const payloads: ReadonlyArray<Payload> = [
  { label: "text", type: "text/plain;charset=utf-8", bytes: Buffer.from("hello from sommelier — ünïcödé ✓", "utf8") },
  { label: "5 MB binary", type: "application/octet-stream", bytes: randomBytes(5 * 1024 * 1024) }
]

/** Polls `wl-paste --list-types` until `type` is on offer. */
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

for (const transport of transports) {
  describe(`clipboard through the proxy (${transport.name})`, () => {
    for (const direction of ["proxy → host", "host → proxy"] as const) {
      for (const p of payloads) {
        scopedLiveNeeding(transport, "shm")(`${p.label}: copied by a ${direction.split(" ")[0]} client, pasted by a ${direction.split(" ")[2]} client, byte-identical`, () =>
          withProxy(transport, x11Host(), ({ host, proxy }) =>
            Effect.gen(function* () {
              const copyEnv = direction === "proxy → host" ? proxy.env : host.env
              const pasteEnv = direction === "proxy → host" ? host.env : proxy.env
              const copier = yield* spawnClient("wl-copy", ["--foreground", "--type", p.type], { env: copyEnv, input: p.bytes })
              yield* waitForOffer(pasteEnv, p.type)
              const pasted = yield* Effect.scoped(runClient("wl-paste", ["--no-newline", "--type", p.type], { env: pasteEnv, timeout: "15 seconds" }))
              expect(pasted.code, `wl-paste stderr: ${pasted.stderr}`).toBe(0)
              expect(pasted.stdout.length).toBe(p.bytes.length)
              expect(sha256(pasted.stdout)).toBe(sha256(p.bytes))
              // Still the selection's owner, and it complained about nothing.
              expect(copier.alive(), `wl-copy stderr: ${copier.stderr()}`).toBe(true)
              expect(copier.stderr()).toBe("")
              expect(proxy.server.stats().requestFds + proxy.server.stats().eventFds).toBeGreaterThanOrEqual(1)
            })
          )
        )
      }
    }
  })
}

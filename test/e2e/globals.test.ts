/**
 * wayland-info through the proxy versus directly on weston (headless).
 *
 * Proves: the proxy shows a client exactly the host's globals (same names, same order) minus
 * the interfaces it has no tables for and the privileged ones it denies (`defaultDeniedGlobals`),
 * each at min(host version, generated version); and that binding each shown global and
 * receiving its initial events works: for every shown interface, the details wayland-info prints
 * (shm formats, output geometry and modes, xdg_output names, presentation clock...) are
 * identical through the proxy and directly. The test fails if nothing is filtered (weston
 * --debug offers weston_debug_v1 etc., so something must be), if a global goes missing or
 * appears, if a version is not capped, or if any detail differs.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { defaultDeniedGlobals } from "../../src/proxy/connection.js"
import * as Protocols from "../../src/protocol/registry.js"
import { runClientOk } from "../helpers/clients.js"
import { transports } from "../helpers/proxy.js"
import { headlessHost } from "../helpers/weston.js"
import { withProxy } from "./fixture.js"

interface Global {
  readonly iface: string
  readonly version: number
  readonly name: number
  /** The lines wayland-info printed about this global after its header line. */
  readonly details: string
}

const HEADER = /^interface: '([^']+)',\s+version:\s+(\d+),\s+name:\s+(\d+)\s*$/

const parseInfo = (out: string): Global[] => {
  const globals: Global[] = []
  let cur: { iface: string; version: number; name: number; lines: string[] } | null = null
  const flush = (): void => {
    if (cur !== null) globals.push({ iface: cur.iface, version: cur.version, name: cur.name, details: cur.lines.join("\n") })
  }
  for (const line of out.split("\n")) {
    const m = HEADER.exec(line)
    if (m !== null) {
      flush()
      cur = { iface: m[1]!, version: Number(m[2]), name: Number(m[3]), lines: [] }
    } else if (cur !== null) {
      cur.lines.push(line)
    }
  }
  flush()
  return globals
}

for (const transport of transports) {
  describe(`globals through the proxy (${transport.name})`, () => {
    it.scopedLive("wayland-info lists the host's globals minus the filtered ones, versions capped, same details", () =>
      withProxy(transport, headlessHost({ debug: true }), ({ host, proxy }) =>
        Effect.gen(function* () {
          const registry = yield* Protocols.Protocols
          const direct = yield* runClientOk("wayland-info", [], { env: host.env })
          const proxied = yield* runClientOk("wayland-info", [], { env: proxy.env })
          expect(proxied.stderr).toBe("")
          const hostGlobals = parseInfo(direct.stdout.toString("utf8"))
          const shown = parseInfo(proxied.stdout.toString("utf8"))
          expect(hostGlobals.length).toBeGreaterThan(5)

          const kept = hostGlobals.filter((g) => registry.get(g.iface) !== undefined && !defaultDeniedGlobals.has(g.iface))
          const filtered = hostGlobals.filter((g) => !kept.includes(g)).map((g) => g.iface)
          // weston --debug offers weston_debug_v1 and weston_screenshooter, which we have no tables for.
          expect(filtered).toContain("weston_debug_v1")

          const expected = kept.map((g) => ({ iface: g.iface, name: g.name, version: Math.min(g.version, registry.get(g.iface)!.version) }))
          expect(shown.map((g) => ({ iface: g.iface, name: g.name, version: g.version }))).toEqual(expected)

          // Details of every shown global: identical unless its version was capped (a lower
          // version may legitimately print less).
          for (const g of shown) {
            const h = hostGlobals.find((x) => x.name === g.name)!
            if (h.version === g.version) expect(g.details, `details of ${g.iface}`).toBe(h.details)
          }
          // And the details are not trivially empty (wl_shm lists its formats).
          expect(shown.find((g) => g.iface === "wl_shm")?.details ?? "").toMatch(/format/)
        }).pipe(Effect.provide(Protocols.layer))
      )
    )
  })
}

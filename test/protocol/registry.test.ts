/**
 * InterfaceRegistry: lookups over the generated tables, clash precedence and reporting,
 * and the Protocols service layer.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { allInterfaces, allProtocols } from "../../src/generated/index.js"
import { arg, iface, msg } from "../../src/protocol/build.js"
import { defaultRegistry, layer, layerFrom, makeRegistry, Protocols } from "../../src/protocol/registry.js"
import type { ProtocolDesc } from "../../src/protocol/types.js"

describe("InterfaceRegistry", () => {
  it("finds every generated interface and message", () => {
    const reg = defaultRegistry()
    expect(reg).toBe(defaultRegistry())
    for (const i of allInterfaces) {
      expect(reg.get(i.name)?.name).toBe(i.name)
      i.requests.forEach((m, op) => expect(reg.request(i.name, op)?.name).toBe(m.name))
      i.events.forEach((m, op) => expect(reg.event(i.name, op)?.name).toBe(m.name))
    }
    expect(reg.request("wl_compositor", 0)?.name).toBe("create_surface")
    expect(reg.event(reg.get("wl_display")!, 1)?.name).toBe("delete_id")
    expect(reg.request("wl_compositor", 99)).toBeUndefined()
    expect(reg.get("no_such_interface")).toBeUndefined()
    expect(reg.request("no_such_interface", 0)).toBeUndefined()
  })

  it("reports the real clashes in protocols/ (and they are wire compatible)", () => {
    const reg = defaultRegistry()
    const names = new Set(allInterfaces.map((i) => i.name))
    expect(reg.interfaces.size).toBe(names.size)
    expect(reg.clashes.length).toBe(allInterfaces.length - names.size)
    for (const c of reg.clashes) expect(c.compatible, c.name).toBe(true)
  })

  it("resolves clashes by version, then directory rank, and reports them", () => {
    const v1 = iface("zz_thing", 1, [msg("go", [arg("x", "int")])], [])
    const v2 = iface("zz_thing", 2, [msg("go", [arg("x", "int")]), msg("stop", [], 2)], [])
    const odd = iface("zz_thing", 2, [msg("go", [arg("x", "string")])], [])
    const p = (file: string, ...interfaces: ProtocolDesc["interfaces"]): ProtocolDesc => ({ name: file, file, interfaces })

    const byVersion = makeRegistry([p("stable/a.xml", v1), p("unstable/b.xml", v2)])
    expect(byVersion.get("zz_thing")).toBe(v2)
    expect(byVersion.clashes).toEqual([
      { name: "zz_thing", chosen: "unstable/b.xml", shadowed: ["stable/a.xml"], compatible: true }
    ])

    const byRank = makeRegistry([p("unstable/b.xml", odd), p("staging/c.xml", v2)])
    expect(byRank.get("zz_thing")).toBe(v2)
    expect(byRank.clashes).toEqual([
      { name: "zz_thing", chosen: "staging/c.xml", shadowed: ["unstable/b.xml"], compatible: false }
    ])
    expect(makeRegistry([p("stable/a.xml", v1)]).clashes).toEqual([])
  })

  it.effect("is provided by the Protocols layer", () =>
    Effect.gen(function*() {
      const reg = yield* Protocols
      expect(reg.get("xdg_wm_base")?.name).toBe("xdg_wm_base")
    }).pipe(Effect.provide(layer)))

  it.effect("layerFrom restricts the registry", () =>
    Effect.gen(function*() {
      const reg = yield* Protocols
      expect(reg.get("wl_surface")).toBeDefined()
      expect(reg.get("xdg_wm_base")).toBeUndefined()
    }).pipe(Effect.provide(layerFrom(allProtocols.filter((p) => p.file === "wayland/wayland.xml")))))
})

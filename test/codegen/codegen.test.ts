/**
 * scripts/codegen.ts over the vendored protocols: the committed tree is current, counts and
 * a few well-known signatures are what the XML says, and the generator rejects bad input.
 */
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { checkGenerated, findProtocolFiles, generateModule, moduleNames, parseProtocol } from "../../scripts/codegen.js"
import { allInterfaces, allProtocols } from "../../src/generated/index.js"
import { safeIdentifier } from "../../src/protocol/build.js"
import { ArgCode } from "../../src/protocol/types.js"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")

const find = (name: string) => {
  const i = allInterfaces.find((x) => x.name === name)
  if (i === undefined) throw new Error(`no interface ${name}`)
  return i
}

describe("codegen over protocols/", () => {
  it("--check passes on the committed tree", () => {
    const r = checkGenerated(root)
    expect(r.details).toEqual([])
    expect({ stale: r.stale, missing: r.missing, extra: r.extra }).toEqual({ stale: [], missing: [], extra: [] })
  })

  it("generates one protocol per XML file, sorted by path", () => {
    const files = findProtocolFiles(path.join(root, "protocols"))
    expect(allProtocols.map((p) => p.file)).toEqual(files)
    expect([...files].sort()).toEqual(files)
    expect(files).toContain("wayland/wayland.xml")
    expect(files).toContain("stable/xdg-shell/xdg-shell.xml")
  })

  it("finds the expected interfaces and signatures", () => {
    const display = find("wl_display")
    expect(display.requests.map((m) => m.name)).toEqual(["sync", "get_registry"])
    expect(display.events.map((m) => m.name)).toEqual(["error", "delete_id"])

    const bind = find("wl_registry").requests[0]!
    expect(bind.name).toBe("bind")
    expect(Array.from(bind.codes)).toEqual([ArgCode.Word, ArgCode.NewIdUntyped])
    expect(bind.newIdArg).toBe(1)
    expect(bind.fixedBodySize).toBe(-1)

    const global = find("wl_registry").events[0]!
    expect(global.args.map((a) => a.name)).toEqual(["name", "interface_", "version"])
    expect(global.args[1]!.wireName).toBe("interface")

    const attach = find("wl_surface").requests.find((m) => m.name === "attach")!
    expect(attach.opcode).toBe(1)
    expect(attach.args[0]!.nullable).toBe(true)
    expect(attach.fixedBodySize).toBe(12)

    const createPool = find("wl_shm").requests[0]!
    expect(createPool.fdCount).toBe(1)
    expect(createPool.fixedBodySize).toBe(8)
    expect(createPool.newIdArg).toBe(0)

    expect(find("xdg_wm_base").requests.map((m) => m.name)).toContain("get_xdg_surface")
    expect(find("wl_shm").enums.find((e) => e.name === "format")!.entries.find((e) => e.name === "xrgb8888")!.value).toBe(1)
    expect(find("xdg_toplevel").enums.find((e) => e.name === "resize_edge")).toBeDefined()
  })

  it("counts", () => {
    const messages = allInterfaces.reduce((n, i) => n + i.requests.length + i.events.length, 0)
    // Logged for the record; the exact numbers move with protocols/.
    console.log(`codegen: ${allProtocols.length} protocols, ${allInterfaces.length} interfaces, ${messages} messages`)
    expect(allProtocols.length).toBeGreaterThanOrEqual(40)
    expect(allInterfaces.length).toBeGreaterThanOrEqual(140)
    expect(messages).toBeGreaterThanOrEqual(600)
  })

  it("keeps every descriptor consistent", () => {
    for (const i of allInterfaces) {
      for (const list of [i.requests, i.events]) {
        list.forEach((m, op) => {
          expect(m.opcode).toBe(op)
          expect(m.codes).toHaveLength(m.args.length)
          expect(m.since).toBeGreaterThanOrEqual(1)
          expect(m.since).toBeLessThanOrEqual(i.version)
          expect(m.args.filter((a) => a.type === "new_id")).toHaveLength(m.newIdArg === -1 ? 0 : 1)
        })
      }
    }
  })
})

describe("codegen pieces", () => {
  it("safeIdentifier", () => {
    expect(safeIdentifier("interface")).toBe("interface_")
    expect(safeIdentifier("class")).toBe("class_")
    expect(safeIdentifier("new")).toBe("new_")
    expect(safeIdentifier("function")).toBe("function_")
    expect(safeIdentifier("x")).toBe("x")
    expect(safeIdentifier("odd-name.x")).toBe("odd_name_x")
    expect(safeIdentifier("2d")).toBe("_2d")
  })

  it("moduleNames disambiguates shared base names", () => {
    const names = moduleNames(["stable/foo/foo.xml", "unstable/foo/foo.xml", "wayland/wayland.xml", "x/index.xml"])
    expect([...names.values()]).toEqual(["stable-foo", "unstable-foo", "wayland", "x-index"])
  })

  it("rejects bad input with the file and place", () => {
    const wrap = (body: string) => `<protocol name="p"><interface name="i" version="1">${body}</interface></protocol>`
    expect(() => parseProtocol(wrap(`<request name="r"><arg name="a" type="long"/></request>`), "p.xml"))
      .toThrow(/p\.xml: i\.r\(a\): unknown argument type "long"/)
    expect(() =>
      parseProtocol(wrap(`<request name="r"><arg name="a" type="new_id"/><arg name="b" type="new_id"/></request>`), "p.xml")
    ).toThrow(/more than one new_id/)
    expect(() => parseProtocol(wrap(`<enum name="e"><entry name="x" value="zz"/></enum>`), "p.xml"))
      .toThrow(/bad enum value "zz"/)
    expect(() => parseProtocol(`<nothing/>`, "p.xml")).toThrow(/no <protocol> element/)
  })

  it("keeps a lone message as opcode 0 and handles an interface without messages", () => {
    const text = generateModule(`<protocol name="p"><interface name="p_i" version="2"/></protocol>`, "p.xml")
    expect(text).toContain(`export const p_i: InterfaceDesc = iface("p_i", 2, [], [])`)
  })
})

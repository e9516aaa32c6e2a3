/**
 * Golden vectors: frames captured from wayland-info and weston-simple-shm talking to a real weston
 * (scripts/capture-golden.sh) must frame, decode with the generated tables, and re-encode
 * byte-identical. Object ids are mapped to interfaces by following the conversation itself.
 *
 * Also checks the generated descriptors against the codec's reading of src/protocol/types.ts,
 * and round-trips random values through every generated message.
 */
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { allProtocols } from "../../src/generated/index.js"
import { ArgCode, type InterfaceDesc, type MessageDesc, type UntypedNewId } from "../../src/protocol/types.js"
import { decodeMessage, DEFAULT_MAX_MESSAGE_SIZE, encodeMessage, readFrame } from "../../src/wire/index.js"
import { argsFor } from "./arbitraries.js"
import { messageFromArgs } from "./desc.js"

interface GoldenFrame {
  readonly direction: "request" | "event"
  readonly hex: string
  readonly fds: number
}

const GOLDEN_DIR = join(import.meta.dirname, "../golden/wire")
const goldenFiles = readdirSync(GOLDEN_DIR).filter((f) => f.endsWith(".json")).sort()

// wayland.xml is authoritative for core names; first definition wins.
const byName = new Map<string, InterfaceDesc>()
for (const p of allProtocols) for (const i of p.interfaces) if (!byName.has(i.name)) byName.set(i.name, i)
const ifaceNamed = (name: string): InterfaceDesc => {
  const i = byName.get(name)
  if (i === undefined) throw new Error(`no generated interface ${name}`)
  return i
}

describe("golden wire vectors", () => {
  it("fixtures exist", () => {
    expect(goldenFiles).toEqual(expect.arrayContaining(["wayland-info.json", "weston-simple-shm.json"]))
  })

  for (const file of goldenFiles) {
    it(`${file}: every captured frame decodes and re-encodes byte-identical`, () => {
      const frames: GoldenFrame[] = JSON.parse(readFileSync(join(GOLDEN_DIR, file), "utf8"))
      expect(frames.length).toBeGreaterThan(0)
      // Client and server share one id space per connection; wl_display is always object 1.
      const objects = new Map<number, InterfaceDesc>([[1, ifaceNamed("wl_display")]])
      let nextFakeFd = 100
      let fdsSeen = 0
      frames.forEach((f, index) => {
        const where = `${file} frame ${index} (${f.direction} ${f.hex.slice(0, 16)})`
        const bytes = new Uint8Array(Buffer.from(f.hex, "hex"))
        const frame = readFrame(bytes, 0, bytes.length, DEFAULT_MAX_MESSAGE_SIZE)
        if (frame._tag !== "Frame") throw new Error(`${where}: readFrame gave ${frame._tag}`)
        expect(frame.size, where).toBe(bytes.length)
        const iface = objects.get(frame.objectId)
        if (iface === undefined) throw new Error(`${where}: object ${frame.objectId} is not known`)
        const table = f.direction === "request" ? iface.requests : iface.events
        const fds = Array.from({ length: f.fds }, () => nextFakeFd++)
        const popped = [...fds]
        const lookup = (_id: number, opcode: number): MessageDesc | undefined => table[opcode]
        const r = decodeMessage(bytes, 0, bytes.length, DEFAULT_MAX_MESSAGE_SIZE, lookup, fds)
        if (r._tag !== "Ok") {
          throw new Error(`${where}: ${r._tag === "Malformed" ? r.error.message : "Incomplete"} (${iface.name})`)
        }
        expect(r.desc.fdCount, `${where}: ${iface.name}.${r.desc.name} fd count`).toBe(f.fds)
        expect(fds, where).toEqual([])
        fdsSeen += f.fds

        const fdsOut: number[] = []
        const again = encodeMessage(frame.objectId, r.desc, r.message.args, fdsOut)
        expect(Buffer.from(again).toString("hex"), `${where}: ${iface.name}.${r.desc.name}`).toBe(f.hex)
        expect(fdsOut, where).toEqual(popped)

        // Follow object creation and deletion.
        const codes = r.desc.codes
        for (let i = 0; i < codes.length; i++) {
          if (codes[i] === ArgCode.NewId) objects.set(r.message.args[i] as number, ifaceNamed(r.desc.argInterfaces[i]!))
          if (codes[i] === ArgCode.NewIdUntyped) {
            const v = r.message.args[i] as UntypedNewId
            objects.set(v.id, ifaceNamed(v.interface))
          }
        }
        if (iface.name === "wl_display" && f.direction === "event" && r.desc.name === "delete_id") {
          objects.delete(r.message.args[0] as number)
        }
      })
      if (file === "weston-simple-shm.json") expect(fdsSeen).toBeGreaterThan(0) // wl_shm.create_pool
    })
  }
})

const allMessages: { readonly iface: string; readonly dir: string; readonly desc: MessageDesc }[] = allProtocols.flatMap((p) =>
  p.interfaces.flatMap((i) => [
    ...i.requests.map((desc) => ({ iface: i.name, dir: "request", desc })),
    ...i.events.map((desc) => ({ iface: i.name, dir: "event", desc }))
  ])
)

describe("generated descriptors", () => {
  it("agree with the codec's reading of types.ts (codes, fdCount, fixedBodySize, newIdArg)", () => {
    expect(allMessages.length).toBeGreaterThan(500)
    for (const { iface, dir, desc } of allMessages) {
      const expected = messageFromArgs(desc.name, desc.opcode, desc.args)
      const where = `${iface}.${desc.name} (${dir})`
      expect([...desc.codes], where).toEqual([...expected.codes])
      expect(desc.argInterfaces, where).toEqual(expected.argInterfaces)
      expect(desc.fdCount, where).toBe(expected.fdCount)
      expect(desc.fixedBodySize, where).toBe(expected.fixedBodySize)
      expect(desc.newIdArg, where).toBe(expected.newIdArg)
    }
  })

  it.prop(
    "every generated message round-trips random values",
    [fc.constantFrom(...allMessages).chain((m) => fc.tuple(fc.constant(m), argsFor(m.desc)))],
    ([[m, args]]) => {
      const fdsOut: number[] = []
      const bytes = encodeMessage(3, m.desc, args, fdsOut)
      const fds = [...fdsOut]
      const r = decodeMessage(bytes, 0, bytes.length, 0xffff, () => m.desc, fds)
      if (r._tag !== "Ok") throw new Error(`${m.iface}.${m.desc.name}: ${r._tag}`)
      expect(r.message.args).toEqual(args)
      expect(fds).toEqual([])
    },
    { fastCheck: { numRuns: 3000 } }
  )
})

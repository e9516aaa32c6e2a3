/**
 * Golden test for scripts/codegen.ts: a feature-complete XML and its expected module text.
 * `UPDATE_GOLDEN=1 npx vitest run test/codegen` rewrites the golden file.
 * The generated text is also loaded (imports pointed at src/protocol/) and its descriptors checked.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import { generateModule } from "../../scripts/codegen.js"
import type { MessageCodec } from "../../src/protocol/codec.js"
import { ArgCode, type InterfaceDesc, type ProtocolDesc } from "../../src/protocol/types.js"

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(here, "../..")
const xmlPath = path.join(root, "test/golden/codegen/feature.xml")
const goldenPath = path.join(root, "test/golden/codegen/feature.ts.golden")
const generate = (): string => generateModule(fs.readFileSync(xmlPath, "utf8"), "test/feature.xml")

/** A small line diff: each differing line with its number, at most `max` of them. */
const lineDiff = (want: string, have: string, max = 40): string => {
  const w = want.split("\n")
  const h = have.split("\n")
  const out: string[] = []
  for (let i = 0; i < Math.max(w.length, h.length) && out.length < max; i++) {
    if (w[i] !== h[i]) out.push(`line ${i + 1}:\n  - golden:    ${w[i] ?? "<eof>"}\n  + generated: ${h[i] ?? "<eof>"}`)
  }
  return out.join("\n")
}

describe("codegen golden", () => {
  it("matches test/golden/codegen/feature.ts.golden", () => {
    const actual = generate()
    if (process.env["UPDATE_GOLDEN"] === "1") {
      fs.writeFileSync(goldenPath, actual)
      return
    }
    const golden = fs.readFileSync(goldenPath, "utf8")
    if (actual !== golden) {
      console.error(`codegen output differs from the golden file (UPDATE_GOLDEN=1 rewrites it):\n${lineDiff(golden, actual)}`)
    }
    expect(actual).toBe(golden)
  })

  it("is deterministic", () => {
    expect(generate()).toBe(generate())
  })

  describe("the generated module, loaded", async () => {
    // Load the module text from a temporary file with its imports pointed at the real builders.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sommelier-codegen-"))
    const file = path.join(dir, "feature.ts")
    const protocolDir = pathToFileURL(path.join(root, "src/protocol")).href
    fs.writeFileSync(file, generate().replaceAll(`"../protocol/`, `"${protocolDir}/`))
    const mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>
    fs.rmSync(dir, { recursive: true, force: true })
    const feature = mod["test_feature"] as InterfaceDesc
    const child = mod["test_feature_child"] as InterfaceDesc
    const protocol = mod["protocol"] as ProtocolDesc

    it("has the protocol and both interfaces", () => {
      expect(protocol.name).toBe("test_feature")
      expect(protocol.file).toBe("test/feature.xml")
      expect(protocol.interfaces).toEqual([feature, child])
      expect(feature.version).toBe(3)
      expect(feature.requests.map((m) => m.name)).toEqual([
        "everything", "bind", "reserved_names", "ping", "child", "fixed_only", "destroy"
      ])
      expect(feature.requests.map((m) => m.opcode)).toEqual([0, 1, 2, 3, 4, 5, 6])
      expect(feature.events.map((m) => [m.name, m.opcode, m.since])).toEqual([["ping", 0, 1], ["caps", 1, 2]])
    })

    it("derives codes, fdCount, fixedBodySize and newIdArg", () => {
      const every = feature.requests[0]!
      expect(Array.from(every.codes)).toEqual([
        ArgCode.Word, ArgCode.Word, ArgCode.Word, ArgCode.String, ArgCode.String, ArgCode.Object,
        ArgCode.Object, ArgCode.Object, ArgCode.NewId, ArgCode.Array, ArgCode.Fd, ArgCode.Word
      ])
      expect(every.argInterfaces).toEqual([
        null, null, null, null, null, "test_feature_child", "test_feature_child", null, "test_feature_child",
        null, null, null
      ])
      expect(every.fdCount).toBe(1)
      expect(every.fixedBodySize).toBe(-1)
      expect(every.newIdArg).toBe(8)
      expect(every.args.map((a) => a.nullable)).toEqual([
        false, false, false, false, true, false, true, false, false, false, false, false
      ])
      expect(every.args[1]!.enum).toBe("caps")
      expect(every.args[11]!.enum).toBe("wl_output.transform")

      const bind = feature.requests[1]!
      expect(Array.from(bind.codes)).toEqual([ArgCode.Word, ArgCode.NewIdUntyped])
      expect(bind.args[1]!.interface).toBeNull()
      expect(bind.since).toBe(2)
      expect(bind.fixedBodySize).toBe(-1)
      expect(bind.newIdArg).toBe(1)

      const fixedOnly = feature.requests[5]!
      expect(fixedOnly.fdCount).toBe(2)
      expect(fixedOnly.fixedBodySize).toBe(4)
      expect(fixedOnly.newIdArg).toBe(-1)

      expect(feature.requests[6]!.destructor).toBe(true)
      expect(feature.requests[6]!.fixedBodySize).toBe(0)
      expect(feature.requests[0]!.destructor).toBe(false)
      expect(child.events[0]!.destructor).toBe(true)
      expect(child.requests[0]!.destructor).toBe(true)
    })

    it("sanitizes argument names and keeps wire names", () => {
      const args = feature.requests[2]!.args
      expect(args.map((a) => a.name)).toEqual(["interface_", "class_", "default_", "odd_name"])
      expect(args.map((a) => a.wireName)).toEqual(["interface", "class", "default", "odd-name"])
    })

    it("parses enums: hex values, since, bitfield", () => {
      expect(feature.enums).toEqual([
        {
          name: "error",
          bitfield: false,
          since: 1,
          entries: [{ name: "bad_value", value: 0, since: 1 }, { name: "gone", value: 16, since: 1 }]
        },
        {
          name: "caps",
          bitfield: true,
          since: 2,
          entries: [
            { name: "none", value: 0, since: 1 },
            { name: "read", value: 1, since: 1 },
            { name: "write", value: 2, since: 1 },
            { name: "all", value: 0xffffffff, since: 3 }
          ]
        }
      ])
    })

    it("names codecs with direction suffixes where names clash", () => {
      for (const name of [
        "test_feature_ping_request", "test_feature_ping_event", "test_feature_child_request",
        "test_feature_everything", "test_feature_caps", "test_feature_child_done"
      ]) {
        expect(mod[name], name).toBeDefined()
      }
      expect(mod["test_feature_ping"]).toBeUndefined()
      const ping = mod["test_feature_ping_event"] as MessageCodec<unknown>
      expect(ping.direction).toBe("event")
      expect(ping.desc).toBe(feature.events[0])
    })

    it("round-trips the everything request through its codec", () => {
      const c = mod["test_feature_everything"] as MessageCodec<Record<string, unknown>>
      const value = {
        i: -5, u: 3, f: -1.5, s: "héllo", maybe_s: null, o: 7, maybe_o: null, any_o: 9, id: 10,
        data: new Uint8Array([1, 2, 3]), fd: 42, transform: 1
      }
      const wire = Schema.encodeSync(c.schema)(value)
      expect(wire.fds).toEqual([42])
      expect(Schema.decodeSync(c.schema)(wire)).toEqual(value)
    })
  })
})

import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import type { ArgValue, MessageDesc } from "../../src/protocol/types.js"
import {
  bodySize,
  decodeArgs,
  decodeMessage,
  DEFAULT_MAX_MESSAGE_SIZE,
  encodeArgs,
  encodeMessage,
  encodeMessageInto,
  HEADER_SIZE,
  readFrame,
  utf8Length
} from "../../src/wire/index.js"
import { argsFor } from "./arbitraries.js"
import { message, messageFromArgs, parseArg } from "./desc.js"

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex")

/** Encodes, checks the frame and decodes it back; returns the decoded args and the bytes. */
const roundTrip = (objectId: number, desc: MessageDesc, args: readonly ArgValue[]) => {
  const fdsOut: number[] = []
  const bytes = encodeMessage(objectId, desc, args, fdsOut)
  expect(bytes.length).toBe(HEADER_SIZE + bodySize(desc, args))
  expect(bytes.length % 4).toBe(0)
  const frame = readFrame(bytes, 0, bytes.length, 0xffff)
  expect(frame).toEqual({ _tag: "Frame", objectId, opcode: desc.opcode, size: bytes.length })
  const fds = [...fdsOut]
  const r = decodeMessage(bytes, 0, bytes.length, 0xffff, (id, op) => (id === objectId && op === desc.opcode ? desc : undefined), fds)
  if (r._tag !== "Ok") throw new Error(`expected Ok, got ${JSON.stringify(r)}`)
  expect(r.size).toBe(bytes.length)
  expect(r.desc).toBe(desc)
  expect(r.message.objectId).toBe(objectId)
  expect(r.message.opcode).toBe(desc.opcode)
  expect(fds).toEqual([]) // every fd taken, in order
  // Re-encoding the decoded values gives the same bytes and the same fds.
  const fdsAgain: number[] = []
  expect(hex(encodeMessage(objectId, desc, r.message.args, fdsAgain))).toBe(hex(bytes))
  expect(fdsAgain).toEqual(fdsOut)
  return { args: r.message.args, bytes, fdsOut }
}

describe("wire round trip", () => {
  it("encodes wl_display.get_registry to the bytes libwayland sends", () => {
    const getRegistry = message("get_registry", 1, ["registry:new_id<wl_registry>"])
    const { bytes } = roundTrip(1, getRegistry, [2])
    expect(hex(bytes)).toBe("01000000" + "01000c00" + "02000000")
  })

  it("encodes wl_registry.bind (untyped new_id) as interface string + version + id", () => {
    const bind = message("bind", 0, ["name:uint", "id:new_id"])
    const v = { interface: "wl_compositor", version: 4, id: 3 }
    const { args, bytes } = roundTrip(2, bind, [1, v])
    expect(args).toEqual([1, v])
    // "wl_compositor" is 13 bytes + NUL = 14, padded to 16.
    expect(hex(bytes)).toBe(
      "02000000" + "00002800" + "01000000" + "0e000000" + hex(new TextEncoder().encode("wl_compositor")) + "000000" + "04000000" + "03000000"
    )
  })

  it("round-trips every word type, including negative ints and fixed values", () => {
    const m = message("words", 3, ["a:int", "b:uint", "c:fixed", "d:fixed", "e:int", "f:fixed"])
    const args = [-5, 0xffffffff, -1.5, 0, -0x80000000, 8388607.99609375]
    const { args: out, bytes } = roundTrip(7, m, args)
    expect(out).toEqual(args)
    expect(hex(bytes.subarray(8))).toBe("fbffffff" + "ffffffff" + "80feffff" + "00000000" + "00000080" + "ffffff7f")
  })

  it("rounds fixed values to the nearest 1/256 like wl_fixed_from_double", () => {
    const m = message("f", 0, ["x:fixed"])
    const b = encodeMessage(1, m, [0.3], [])
    expect(hex(b.subarray(8))).toBe("4d000000") // round(76.8) = 77
  })

  it("round-trips strings of 0..9 bytes with zero padding", () => {
    const m = message("set_title", 2, ["title:string"])
    for (let n = 0; n <= 9; n++) {
      const s = "abcdefghi".slice(0, n)
      const { args, bytes } = roundTrip(5, m, [s])
      expect(args).toEqual([s])
      const padded = (n + 1 + 3) & ~3
      expect(bytes.length).toBe(HEADER_SIZE + 4 + padded)
      expect(bytes[8]).toBe(n + 1)
      expect([...bytes.subarray(12 + n)].every((x) => x === 0)).toBe(true)
    }
  })

  it("round-trips null strings and non-ASCII UTF-8", () => {
    const m = message("m", 0, ["a:string?", "b:string", "c:string?"])
    const uni = "héllo ✓ 𝄞 — ünïcödé beyond the thirty-two byte ASCII fast path"
    const { args, bytes } = roundTrip(9, m, [null, uni, "x"])
    expect(args).toEqual([null, uni, "x"])
    expect(hex(bytes.subarray(8, 12))).toBe("00000000")
    expect(utf8Length(uni)).toBe(new TextEncoder().encode(uni).length)
  })

  it("round-trips arrays of 0..9 bytes with zero padding", () => {
    const m = message("keys", 0, ["serial:uint", "keys:array"])
    for (let n = 0; n <= 9; n++) {
      const a = Uint8Array.from({ length: n }, (_, i) => 0xf0 + i)
      const { args, bytes } = roundTrip(11, m, [42, a])
      expect(args).toEqual([42, a])
      expect(bytes.length).toBe(HEADER_SIZE + 8 + ((n + 3) & ~3))
      expect([...bytes.subarray(16 + n)].every((x) => x === 0)).toBe(true)
    }
  })

  it("round-trips nullable objects, high server ids and typed new_ids", () => {
    const m = message("attach", 1, ["buffer:object<wl_buffer>?", "x:int", "y:int", "s:object<wl_surface>", "cb:new_id<wl_callback>"])
    expect(roundTrip(3, m, [0, -10, 20, 0xff000001, 12]).args).toEqual([0, -10, 20, 0xff000001, 12])
    expect(roundTrip(0xff000003, m, [0xfffffffe, 0, 0, 1, 0xff000010]).args).toEqual([0xfffffffe, 0, 0, 1, 0xff000010])
  })

  it("takes fds from the queue in signature order and gives them no bytes", () => {
    const m = message("create_pool", 0, ["id:new_id<wl_shm_pool>", "fd:fd", "size:int", "fd2:fd"])
    const { args, bytes, fdsOut } = roundTrip(4, m, [5, 33, 4096, 34])
    expect(args).toEqual([5, 33, 4096, 34])
    expect(fdsOut).toEqual([33, 34])
    expect(bytes.length).toBe(HEADER_SIZE + 8)
    // Fds beyond the message's own stay queued.
    const q = [70, 71, 72]
    const r = decodeArgs(m, 4, bytes, 8, bytes.length - 8, q)
    expect(r).toEqual({ _tag: "Ok", args: [5, 70, 4096, 71] })
    expect(q).toEqual([72])
  })

  it("round-trips a message with no arguments and one with every type", () => {
    expect(roundTrip(1, message("destroy", 0, []), []).bytes.length).toBe(8)
    const all = message("all", 9, [
      "i:int", "u:uint", "f:fixed", "s:string", "sn:string?", "o:object<x>", "on:object<x>?",
      "n:new_id<y>", "a:array", "ae:array", "fd:fd", "bind:new_id"
    ])
    const args: ArgValue[] = [
      -1, 1, 2.5, "str", null, 8, 0, 9, new Uint8Array([1, 2, 3]), new Uint8Array(0), 3,
      { interface: "zwp_linux_dmabuf_v1", version: 5, id: 10 }
    ]
    expect(roundTrip(100, all, args).args).toEqual(args)
  })

  it("encodeMessageInto writes at an offset and matches encodeMessage", () => {
    const m = message("m", 2, ["s:string", "x:int"])
    const out = new Uint8Array(64).fill(0xaa)
    const n = encodeMessageInto(out, 4, 7, m, ["hey", -3], [])
    expect(hex(out.subarray(4, 4 + n))).toBe(hex(encodeMessage(7, m, ["hey", -3], [])))
    expect(out[3]).toBe(0xaa)
    expect(out[4 + n]).toBe(0xaa)
  })

  it("throws a plain Error on values of the wrong type", () => {
    const m = message("m", 0, ["s:string", "o:object<x>", "n:new_id<y>", "a:array", "f:fd", "x:int"])
    const ok: ArgValue[] = ["s", 1, 2, new Uint8Array(0), 3, 4]
    expect(() => encodeMessage(1, m, ok, [])).not.toThrow()
    const bad = (i: number, v: unknown) => {
      const a = [...ok]
      a[i] = v as ArgValue
      return () => encodeMessage(1, m, a, [])
    }
    expect(bad(0, null)).toThrow(/not nullable/)
    expect(bad(0, 5)).toThrow(Error)
    expect(bad(1, 0)).toThrow(/not nullable/)
    expect(bad(2, 0)).toThrow(/new_id/)
    expect(bad(3, "x")).toThrow(/Uint8Array/)
    expect(bad(4, -1)).toThrow(/fd/)
    expect(bad(5, 1.5)).toThrow(/integer/)
    expect(bad(5, 2 ** 32)).toThrow(/integer/)
    expect(() => encodeMessage(1, m, ok.slice(1), [])).toThrow(/arguments/)
    expect(() => encodeMessage(1, message("big", 0, ["a:array"]), [new Uint8Array(70000)], [])).toThrow(/16-bit/)
  })
})

// ---------------------------------------------------------------------------------------------
// Properties over random signatures

const ARG_SPECS = [
  "v:int", "v:uint", "v:fixed", "v:string", "v:string?", "v:object<x>", "v:object<x>?",
  "v:new_id<y>", "v:new_id", "v:array", "v:fd"
] as const

const messageWithValues = fc
  .record({
    specs: fc.array(fc.constantFrom(...ARG_SPECS), { maxLength: 8 }),
    opcode: fc.nat({ max: 0xffff }),
    objectId: fc.integer({ min: 1, max: 0xffffffff })
  })
  .chain(({ objectId, opcode, specs }) => {
    const desc = messageFromArgs("rand", opcode, specs.map((s, i) => parseArg(s.replace("v:", `a${i}:`))))
    return fc.tuple(fc.constant(objectId), fc.constant(desc), argsFor(desc))
  })

describe("wire properties", () => {
  it.prop("encode then decode gives the values back, byte-identical on re-encode", [messageWithValues], ([[objectId, desc, args]]) => {
    const { args: out } = roundTrip(objectId, desc, args)
    expect(out).toEqual(args)
  }, { fastCheck: { numRuns: 500 } })

  it.prop("a stream of messages decodes back in order from a buffer at any offset", [fc.array(messageWithValues, { maxLength: 6 }), fc.nat({ max: 7 })], ([msgs, lead]) => {
    const fdsOut: number[] = []
    const parts = msgs.map(([id, d, a]) => encodeMessage(id, d, a, fdsOut))
    const total = parts.reduce((n, p) => n + p.length, 0)
    const buf = new Uint8Array(lead + total)
    let o = lead
    for (const p of parts) {
      buf.set(p, o)
      o += p.length
    }
    const fds = [...fdsOut]
    let offset = lead
    for (const [id, d, a] of msgs) {
      const r = decodeMessage(buf, offset, buf.length, 0xffff, (i, op) => (i === id && op === d.opcode ? d : undefined), fds)
      if (r._tag !== "Ok") throw new Error(JSON.stringify(r))
      expect(r.message.args).toEqual(a)
      offset += r.size
    }
    expect(offset).toBe(buf.length)
    expect(fds).toEqual([])
    expect(decodeMessage(buf, offset, buf.length, 0xffff, () => undefined, fds)._tag).toBe("Incomplete")
  }, { fastCheck: { numRuns: 200 } })

  it.prop("random bytes never throw; Malformed always consumes something and no fds", [messageWithValues, fc.uint8Array({ maxLength: 80 })], ([[, desc], junk]) => {
    const fds = [1, 2, 3]
    let popped = 0
    let offset = 0
    while (offset < junk.length) {
      const r = decodeMessage(junk, offset, junk.length, DEFAULT_MAX_MESSAGE_SIZE, () => desc, fds)
      if (r._tag === "Incomplete") break
      if (r._tag === "Malformed") {
        expect(r.consumed).toBeGreaterThan(0)
        expect(r.consumed).toBeLessThanOrEqual(junk.length - offset)
        offset += r.consumed
      } else {
        popped += desc.fdCount
        offset += r.size
      }
    }
    expect(fds.length).toBe(3 - popped) // only Ok results take fds
  }, { fastCheck: { numRuns: 1000 } })

  it.prop("bodySize agrees with encodeArgs", [messageWithValues], ([[, desc, args]]) => {
    const out = new Uint8Array(HEADER_SIZE + 4096)
    expect(encodeArgs(desc, args, out, 3, [])).toBe(bodySize(desc, args))
  })
})

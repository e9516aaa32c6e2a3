import { describe, expect, it } from "@effect/vitest"
import type { ArgValue, MessageDesc } from "../../src/protocol/types.js"
import {
  decodeArgs,
  decodeMessage,
  DEFAULT_MAX_MESSAGE_SIZE,
  encodeMessage,
  readFrame,
  WireError,
  type WireErrorReason
} from "../../src/wire/index.js"
import { message } from "./desc.js"

/** Builds a frame by hand: header words then body words (little-endian). */
const frame = (objectId: number, opcode: number, body: readonly number[], size = 8 + body.length * 4): Uint8Array => {
  const b = Buffer.alloc(8 + body.length * 4)
  b.writeUInt32LE(objectId, 0)
  b.writeUInt32LE(((size << 16) | opcode) >>> 0, 4)
  body.forEach((w, i) => b.writeUInt32LE(w >>> 0, 8 + i * 4))
  return new Uint8Array(b)
}

const concat = (...parts: Uint8Array[]): Uint8Array => new Uint8Array(Buffer.concat(parts))

// The good frame that must decode after each bad one: wl_callback.done(serial) on object 9.
const done = message("done", 0, ["callback_data:uint"])
const GOOD_ID = 9
const good = encodeMessage(GOOD_ID, done, [1234], [])

/**
 * Decodes `bad` followed by the good frame. Asserts the error, that no fd left the queue, and
 * that after skipping `consumed` bytes the good frame decodes.
 */
const expectMalformed = (
  bad: Uint8Array,
  desc: MessageDesc | undefined,
  reason: WireErrorReason,
  objectId: number,
  opcode: number,
  fds: number[] = []
) => {
  const buf = concat(bad, good)
  const queued = [...fds]
  const lookup = (id: number, op: number) => (id === GOOD_ID && op === 0 ? done : desc)
  const r = decodeMessage(buf, 0, buf.length, DEFAULT_MAX_MESSAGE_SIZE, lookup, fds)
  if (r._tag !== "Malformed") throw new Error(`expected Malformed, got ${r._tag}`)
  expect(r.error).toBeInstanceOf(WireError)
  expect(r.error._tag).toBe("WireError")
  expect(r.error.reason).toBe(reason)
  expect(r.error.objectId).toBe(objectId)
  expect(r.error.opcode).toBe(opcode)
  expect(r.error.message).toMatch(new RegExp(`^object ${objectId} opcode ${opcode}: `))
  expect(fds).toEqual(queued) // validation happens before any fd is popped
  expect(r.consumed).toBe(bad.length)
  const next = decodeMessage(buf, r.consumed, buf.length, DEFAULT_MAX_MESSAGE_SIZE, lookup, fds)
  expect(next._tag === "Ok" && next.message).toEqual({ objectId: GOOD_ID, opcode: 0, args: [1234] })
  return r.error
}

describe("WireError reasons", () => {
  it("TooShort: size below the header; all buffered bytes are consumed (alignment is lost)", () => {
    const buf = concat(frame(3, 1, [0], 4), good)
    for (const decode of [
      () => readFrame(buf, 0, buf.length, DEFAULT_MAX_MESSAGE_SIZE),
      () => decodeMessage(buf, 0, buf.length, DEFAULT_MAX_MESSAGE_SIZE, () => done, [])
    ]) {
      const r = decode()
      if (r._tag !== "Malformed") throw new Error(r._tag)
      expect(r.error.reason).toBe("TooShort")
      expect([r.error.objectId, r.error.opcode]).toEqual([3, 1])
      expect(r.consumed).toBe(buf.length)
    }
  })

  it("Unaligned: size not a multiple of 4; all buffered bytes are consumed", () => {
    const buf = concat(frame(3, 2, [0, 0], 14), good)
    const r = readFrame(buf, 0, buf.length, DEFAULT_MAX_MESSAGE_SIZE)
    if (r._tag !== "Malformed") throw new Error(r._tag)
    expect(r.error.reason).toBe("Unaligned")
    expect([r.error.objectId, r.error.opcode]).toEqual([3, 2])
    expect(r.consumed).toBe(buf.length)
  })

  it("TooLarge: a whole oversized frame is skipped and the next one decodes", () => {
    const bad = frame(4, 0, new Array(10).fill(0))
    const buf = concat(bad, good)
    const r = readFrame(buf, 0, buf.length, 40)
    if (r._tag !== "Malformed") throw new Error(r._tag)
    expect(r.error.reason).toBe("TooLarge")
    expect([r.error.objectId, r.error.opcode, r.consumed]).toEqual([4, 0, 48])
    expect(readFrame(buf, r.consumed, buf.length, 40)).toEqual({ _tag: "Frame", objectId: GOOD_ID, opcode: 0, size: 12 })
    // Through decodeMessage too.
    const m = decodeMessage(buf, 0, buf.length, 40, () => done, [])
    expect(m._tag === "Malformed" && [m.error.reason, m.consumed]).toEqual(["TooLarge", 48])
  })

  it("TooLarge: reported from the header alone, before the body arrives; consumes what is buffered", () => {
    const header = frame(4, 0, [], 8000)
    const r = readFrame(header, 0, 8, DEFAULT_MAX_MESSAGE_SIZE)
    expect(r._tag === "Malformed" && [r.error.reason, r.consumed]).toEqual(["TooLarge", 8])
  })

  it("BadString: length overruns the body", () => {
    const m = message("set_title", 2, ["title:string"])
    const e = expectMalformed(frame(3, 2, [12, 0x41414141, 0x00414141]), m, "BadString", 3, 2)
    expect(e.message).toBe("object 3 opcode 2: set_title.title: string length 12 overruns the 8-byte rest of the body")
  })

  it("BadString / ArrayOverrun: lengths near 2^32 do not wrap when padded", () => {
    const m = message("set_title", 2, ["title:string"])
    expectMalformed(frame(3, 2, [0xffffffff, 0]), m, "BadString", 3, 2)
    expectMalformed(frame(3, 2, [0xfffffffd, 0]), m, "BadString", 3, 2)
    const a = message("keys", 0, ["keys:array"])
    expectMalformed(frame(3, 0, [0xffffffff, 0]), a, "ArrayOverrun", 3, 0)
    expectMalformed(frame(3, 0, [0xfffffffe, 0]), a, "ArrayOverrun", 3, 0)
  })

  it("BadString: no NUL terminator", () => {
    const m = message("set_title", 2, ["title:string"])
    expectMalformed(frame(3, 2, [4, 0x41414141]), m, "BadString", 3, 2)
  })

  it("BadString: untyped new_id interface without NUL", () => {
    const bind = message("bind", 0, ["name:uint", "id:new_id"])
    expectMalformed(frame(2, 0, [1, 4, 0x41414141, 1, 5]), bind, "BadString", 2, 0)
  })

  it("ArrayOverrun: array length overruns the body", () => {
    const m = message("enter", 1, ["serial:uint", "keys:array"])
    expectMalformed(frame(0xff000001, 1, [7, 9, 0, 0]), m, "ArrayOverrun", 0xff000001, 1)
  })

  it("MissingFd: the fd queue holds fewer fds than the signature; nothing is popped", () => {
    const m = message("create_pool", 0, ["id:new_id<wl_shm_pool>", "fd:fd", "size:int", "fd2:fd"])
    expectMalformed(frame(5, 0, [6, 4096]), m, "MissingFd", 5, 0, [40])
  })

  it("UnknownOpcode: the lookup has no signature; the frame is skipped", () => {
    expectMalformed(frame(6, 77, [1, 2, 3]), undefined, "UnknownOpcode", 6, 77)
  })

  it("ShortBody: the body ends before the signature", () => {
    const m = message("attach", 1, ["buffer:object<wl_buffer>?", "x:int", "y:int"])
    expectMalformed(frame(3, 1, [0, 1]), m, "ShortBody", 3, 1)
    const s = message("set_title", 2, ["title:string", "x:int"])
    expectMalformed(frame(3, 2, [2, 0x41]), s, "ShortBody", 3, 2)
    const bind = message("bind", 0, ["name:uint", "id:new_id"])
    expectMalformed(frame(2, 0, [1, 2, 0x41, 1]), bind, "ShortBody", 2, 0)
  })

  it("TrailingBytes: the body is longer than the signature", () => {
    const m = message("attach", 1, ["buffer:object<wl_buffer>?", "x:int", "y:int"])
    expectMalformed(frame(3, 1, [0, 1, 2, 3]), m, "TrailingBytes", 3, 1)
    const s = message("set_title", 2, ["title:string?"])
    expectMalformed(frame(3, 2, [0, 0]), s, "TrailingBytes", 3, 2)
  })

  it("NullNotAllowed: object 0, new_id 0, null string, bind id 0; fds stay queued", () => {
    const o = message("set_parent", 1, ["parent:object<xdg_toplevel>", "fd:fd"])
    expectMalformed(frame(3, 1, [0]), o, "NullNotAllowed", 3, 1, [41])
    const n = message("frame", 3, ["callback:new_id<wl_callback>"])
    expectMalformed(frame(3, 3, [0]), n, "NullNotAllowed", 3, 3)
    const s = message("set_title", 2, ["title:string"])
    expectMalformed(frame(3, 2, [0]), s, "NullNotAllowed", 3, 2)
    const bind = message("bind", 0, ["name:uint", "id:new_id"])
    expectMalformed(frame(2, 0, [1, 2, 0x41, 1, 0]), bind, "NullNotAllowed", 2, 0)
  })

  it("decodeArgs reports the same errors without a header", () => {
    const m = message("set_title", 2, ["title:string", "fd:fd"])
    const body = frame(0, 0, [8, 0x41414141, 0x41414141]).subarray(8)
    const fds = [7]
    const r = decodeArgs(m, 3, body, 0, body.length, fds)
    expect(r._tag === "Malformed" && r.error.reason).toBe("BadString")
    expect(fds).toEqual([7])
  })
})

describe("Incomplete", () => {
  const m = message("m", 4, ["s:string", "a:array", "x:fixed", "fd:fd"])
  const args: ArgValue[] = ["hello", new Uint8Array([1, 2, 3, 4, 5]), -2.25, 3]
  const bytes = encodeMessage(12, m, args, [])

  it("every proper prefix of a valid message is Incomplete and takes no fd", () => {
    for (let n = 0; n < bytes.length; n++) {
      const fds = [3]
      expect(readFrame(bytes, 0, n, DEFAULT_MAX_MESSAGE_SIZE)).toEqual({ _tag: "Incomplete" })
      expect(decodeMessage(bytes, 0, n, DEFAULT_MAX_MESSAGE_SIZE, () => m, fds)).toEqual({ _tag: "Incomplete" })
      expect(fds).toEqual([3])
    }
    const r = decodeMessage(bytes, 0, bytes.length, DEFAULT_MAX_MESSAGE_SIZE, () => m, [3])
    expect(r._tag === "Ok" && r.message.args).toEqual(args)
  })

  it("prefixes are Incomplete at a non-zero offset too", () => {
    const buf = concat(good, bytes)
    for (let n = good.length; n < buf.length; n++) {
      expect(readFrame(buf, good.length, n, DEFAULT_MAX_MESSAGE_SIZE)._tag).toBe("Incomplete")
    }
    expect(readFrame(buf, good.length, buf.length, DEFAULT_MAX_MESSAGE_SIZE)._tag).toBe("Frame")
  })

  it("a header announcing more bytes than are present is Incomplete", () => {
    const header = frame(3, 0, [1, 2], 4096)
    expect(readFrame(header, 0, header.length, DEFAULT_MAX_MESSAGE_SIZE)).toEqual({ _tag: "Incomplete" })
    expect(decodeMessage(header, 0, header.length, DEFAULT_MAX_MESSAGE_SIZE, () => undefined, [])._tag).toBe("Incomplete")
  })
})

/**
 * The Schema codecs' edges: decode failures carry the WireError message, null ⇔ 0 for nullable
 * objects, range checks, fd counts, lazy schema construction.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, ParseResult, Schema } from "effect"
import {
  wl_registry,
  wl_registry_bind,
  wl_registry_global,
  wl_shm_create_pool,
  wl_surface_attach,
  wl_surface_set_buffer_transform,
  wl_pointer_motion
} from "../../src/generated/wayland.js"
import { argsOf, codec, structOf } from "../../src/protocol/codec.js"

const errorText = (e: ParseResult.ParseError): string => ParseResult.TreeFormatter.formatErrorSync(e)

describe("MessageCodec", () => {
  it("builds its schema once, on first access", () => {
    const c = codec(wl_registry, "event", 0)
    const s = c.schema
    expect(c.schema).toBe(s)
    expect(c.desc.name).toBe("global")
    expect(c.interface).toBe(wl_registry)
    expect(c.direction).toBe("event")
  })

  it("throws for a missing opcode", () => {
    expect(() => codec(wl_registry, "request", 1)).toThrow(/wl_registry has no request with opcode 1/)
  })

  it.effect("decodes and encodes wl_registry.global with a reserved-word field", () =>
    Effect.gen(function*() {
      const value = { name: 7, interface_: "wl_compositor", version: 6 }
      const wire = yield* Schema.encode(wl_registry_global.schema)(value)
      expect(wire.body.length).toBe(4 + 4 + 16 + 4)
      expect(yield* Schema.decode(wl_registry_global.schema)(wire)).toEqual(value)
    }))

  it("maps a nullable object: null ⇔ 0 on the wire", () => {
    const wire = Schema.encodeSync(wl_surface_attach.schema)({ buffer: null, x: 1, y: -2 })
    expect(Array.from(wire.body.subarray(0, 4))).toEqual([0, 0, 0, 0])
    expect(Schema.decodeSync(wl_surface_attach.schema)(wire)).toEqual({ buffer: null, x: 1, y: -2 })
    expect(structOf(wl_surface_attach, [0, 1, 2])).toEqual({ buffer: null, x: 1, y: 2 })
    expect(argsOf(wl_surface_attach, { buffer: null, x: 1, y: 2 })).toEqual([0, 1, 2])
    expect(argsOf(wl_surface_attach, { buffer: 5, x: 1, y: 2 })).toEqual([5, 1, 2])
  })

  it("rejects 0 for a non-nullable object and out-of-range words on encode", () => {
    expect(Either.isLeft(Schema.encodeEither(wl_surface_attach.schema)({ buffer: 0, x: 0, y: 0 }))).toBe(true)
    expect(Either.isLeft(Schema.encodeEither(wl_surface_set_buffer_transform.schema)({ transform: 2 ** 31 }))).toBe(true)
    expect(Either.isLeft(Schema.encodeEither(wl_surface_attach.schema)({ buffer: 1, x: 1.5, y: 0 }))).toBe(true)
    expect(Either.isLeft(Schema.encodeEither(wl_pointer_motion.schema)({ time: 1, surface_x: Infinity, surface_y: 0 })))
      .toBe(true)
  })

  it("carries the WireError message on decode failures", () => {
    const r = Schema.decodeEither(wl_registry_bind.schema)({ body: new Uint8Array(8), fds: [] })
    if (Either.isRight(r)) throw new Error("expected a failure")
    expect(errorText(r.left)).toContain("bind.id: null string for a non-nullable argument")

    const short = Schema.decodeEither(wl_surface_attach.schema)({ body: new Uint8Array(8), fds: [] })
    if (Either.isRight(short)) throw new Error("expected a failure")
    expect(errorText(short.left)).toMatch(/body ends before the argument/)

    const trailing = Schema.decodeEither(wl_surface_attach.schema)({ body: new Uint8Array(16).fill(1), fds: [] })
    if (Either.isRight(trailing)) throw new Error("expected a failure")
    expect(errorText(trailing.left)).toMatch(/bytes left after the last argument/)
  })

  it("checks the fd count and keeps fds in order", () => {
    const wire = Schema.encodeSync(wl_shm_create_pool.schema)({ id: 3, fd: 9, size: 4096 })
    expect(wire.fds).toEqual([9])
    expect(wire.body.length).toBe(8)
    const missing = Schema.decodeEither(wl_shm_create_pool.schema)({ body: wire.body, fds: [] })
    if (Either.isRight(missing)) throw new Error("expected a failure")
    expect(errorText(missing.left)).toContain("wl_shm.create_pool: expected 1 fds, got 0")
    const fds = [9]
    expect(Schema.decodeSync(wl_shm_create_pool.schema)({ body: wire.body, fds })).toEqual({ id: 3, fd: 9, size: 4096 })
    expect(fds).toEqual([9]) // the input is not consumed
  })

  it("round-trips the untyped new_id of wl_registry.bind", () => {
    const value = { name: 1, id: { interface: "xdg_wm_base", version: 5, id: 12 } }
    const wire = Schema.encodeSync(wl_registry_bind.schema)(value)
    expect(wire.body.length).toBe(4 + 4 + 12 + 4 + 4)
    expect(Schema.decodeSync(wl_registry_bind.schema)(wire)).toEqual(value)
  })

  it("decodes fixed values as multiples of 1/256", () => {
    const wire = Schema.encodeSync(wl_pointer_motion.schema)({ time: 5, surface_x: 10.5, surface_y: -0.25 })
    expect(Array.from(wire.body.subarray(4, 8))).toEqual([0x80, 0x0a, 0, 0]) // 10.5 * 256 = 0x0a80
    expect(Schema.decodeSync(wl_pointer_motion.schema)(wire)).toEqual({ time: 5, surface_x: 10.5, surface_y: -0.25 })
  })
})

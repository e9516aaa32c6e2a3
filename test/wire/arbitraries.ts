/**
 * Test helper: fast-check arbitraries for argument values that fit a given ArgDesc, so that
 * encode → decode returns them unchanged (fixed values are multiples of 1/256).
 */
import { FastCheck as fc } from "effect"
import type { ArgDesc, ArgValue, MessageDesc } from "../../src/protocol/types.js"

export const int32 = fc.integer({ min: -0x80000000, max: 0x7fffffff })
export const uint32 = fc.integer({ min: 0, max: 0xffffffff })
const nonZeroId = fc.integer({ min: 1, max: 0xffffffff })
// Well-formed UTF-16 only: lone surrogates become U+FFFD in UTF-8 and cannot round-trip.
const text = fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: "grapheme", maxLength: 20 }))

export const valueFor = (a: ArgDesc): fc.Arbitrary<ArgValue> => {
  switch (a.type) {
    case "int":
      return int32
    case "uint":
      return uint32
    case "fixed":
      return int32.map((w) => w / 256)
    case "string":
      return a.nullable ? fc.option(text, { nil: null }) : text
    case "object":
      return a.nullable ? uint32 : nonZeroId
    case "new_id":
      return a.interface === null
        ? fc.record({ interface: fc.string({ minLength: 1, maxLength: 30 }), version: uint32, id: nonZeroId })
        : nonZeroId
    case "array":
      return fc.uint8Array({ maxLength: 40 })
    case "fd":
      return fc.nat({ max: 1023 })
  }
}

/** Values for every argument of `desc`, in signature order. */
export const argsFor = (desc: MessageDesc): fc.Arbitrary<ArgValue[]> => fc.tuple(...desc.args.map(valueFor))

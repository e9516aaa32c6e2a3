/**
 * Every message of every generated interface, both directions of both codecs:
 *   - Schema codec: random typed struct (Arbitrary of the codec's own schema) → WireBody → struct;
 *   - wire codec: encodeMessage → decodeArgs on the same values, header and fds included.
 */
import { describe, expect, it } from "@effect/vitest"
import { Arbitrary, FastCheck as fc, Schema } from "effect"
import { allProtocols } from "../../src/generated/index.js"
import { argsOf, codec } from "../../src/protocol/codec.js"
import type { Direction } from "../../src/protocol/types.js"
import { decodeArgs, encodeMessage, HEADER_SIZE, readU32 } from "../../src/wire/index.js"

const numRuns = 20

for (const p of allProtocols) {
  describe(p.file, () => {
    for (const iface of p.interfaces) {
      for (const direction of ["request", "event"] as const satisfies readonly Direction[]) {
        const list = direction === "request" ? iface.requests : iface.events
        for (const desc of list) {
          it(`${iface.name}.${desc.name} (${direction} ${desc.opcode})`, () => {
            const c = codec<Record<string, unknown>>(iface, direction, desc.opcode)
            const encode = Schema.encodeSync(c.schema)
            const decode = Schema.decodeSync(c.schema)
            const arb = Arbitrary.make(c.schema)
            fc.assert(
              fc.property(arb, fc.integer({ min: 1, max: 0xfeffffff }), (value, objectId) => {
                // Schema codec.
                const wire = encode(value)
                expect(wire.fds).toHaveLength(desc.fdCount)
                if (desc.fixedBodySize >= 0) expect(wire.body.length).toBe(desc.fixedBodySize)
                expect(decode(wire)).toEqual(value)

                // Wire codec on the same values.
                const args = argsOf(c, value)
                const fdsOut: number[] = []
                const frame = encodeMessage(objectId, desc, args, fdsOut)
                expect(readU32(frame, 0)).toBe(objectId)
                expect(readU32(frame, 4)).toBe(((frame.length << 16) | desc.opcode) >>> 0)
                expect(frame.subarray(HEADER_SIZE)).toEqual(wire.body)
                expect(fdsOut).toEqual(wire.fds)
                const r = decodeArgs(desc, objectId, frame, HEADER_SIZE, frame.length - HEADER_SIZE, [...fdsOut])
                if (r._tag !== "Ok") throw new Error(r.error.message)
                expect(r.args).toEqual(args)
              }),
              { numRuns }
            )
          })
        }
      }
    }
  })
}

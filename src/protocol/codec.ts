/**
 * Per-message Effect Schema codecs: a message body (bytes + fds) ⇄ a typed struct of its arguments.
 *
 * Every generated module declares one `MessageCodec` per message. The schema is built on the
 * first read of `.schema` and cached, so loading ~1500 codecs costs one small object each.
 * Decoding and encoding delegate to the table-driven wire codec (`src/wire/`); this module only
 * maps argument arrays ⇄ struct fields (nullable object: null ⇔ id 0) and checks value ranges.
 *
 * Not for the data path: a Schema decode per message is far too slow there (see the notes on
 * Effect cost). The proxy works on `ArgValue[]`; `structOf`/`argsOf` convert without Schema.
 */
import { type Arbitrary, ParseResult, Schema } from "effect"
import { bodySize, decodeArgs, encodeArgs } from "../wire/index.js"
import type { ArgDesc, ArgValue, Direction, InterfaceDesc, MessageDesc } from "./types.js"

/** One message body without its header, and the fds that travel with it, in signature order. */
export interface WireBody {
  readonly body: Uint8Array
  readonly fds: readonly number[]
}

export interface MessageCodec<A> {
  readonly interface: InterfaceDesc
  readonly direction: Direction
  readonly desc: MessageDesc
  /** Decodes a `WireBody` into the struct, encodes the struct into a fresh `WireBody`. */
  readonly schema: Schema.Schema<A, WireBody>
}

const FdNumber = Schema.Int.pipe(Schema.between(0, 0x7fffffff))

export const WireBodySchema: Schema.Schema<WireBody> = Schema.Struct({
  body: Schema.Uint8ArrayFromSelf,
  fds: Schema.Array(FdNumber)
})

const Int32 = Schema.Int.pipe(Schema.between(-0x80000000, 0x7fffffff))
const Uint32 = Schema.Int.pipe(Schema.between(0, 0xffffffff))
/** Object and new_id ids: 0 is the null object, never a valid id. */
const ObjectId = Schema.Int.pipe(Schema.between(1, 0xffffffff))

const fixedArbitrary: Arbitrary.ArbitraryAnnotation<number> = () => (fc) =>
  fc.integer({ min: -0x80000000, max: 0x7fffffff }).map((w) => w / 256)

/** wl_fixed_t is 24.8 signed fixed point; the encoder rounds to the nearest 1/256. */
const Fixed = Schema.Finite.pipe(
  Schema.filter((v) => {
    const w = Math.round(v * 256)
    return (w >= -0x80000000 && w <= 0x7fffffff) || "a 24.8 fixed-point value within ±2^23"
  }),
  // Generated values are exact multiples of 1/256, so they survive a round trip unchanged.
  Schema.annotations({ arbitrary: fixedArbitrary })
)

const UntypedNewIdSchema = Schema.Struct({ interface: Schema.String, version: Uint32, id: ObjectId })

const fieldSchema = (a: ArgDesc): Schema.Schema.Any => {
  switch (a.type) {
    case "int":
      return Int32
    case "uint":
      return Uint32
    case "fixed":
      return Fixed
    case "fd":
      return FdNumber
    case "string":
      return a.nullable ? Schema.NullOr(Schema.String) : Schema.String
    case "object":
      return a.nullable ? Schema.NullOr(ObjectId) : ObjectId
    case "new_id":
      return a.interface === null ? UntypedNewIdSchema : ObjectId
    case "array":
      return Schema.Uint8ArrayFromSelf
  }
}

const isNullableObject = (a: ArgDesc): boolean => a.type === "object" && a.nullable

/** Decoded argument array → struct (nullable object id 0 → null). No validation. */
export const structOf = <A>(codec: MessageCodec<A>, args: readonly ArgValue[]): A => {
  const descs = codec.desc.args
  const out: Record<string, ArgValue> = {}
  for (let i = 0; i < descs.length; i++) {
    const a = descs[i]!
    const v = args[i]!
    out[a.name] = v === 0 && isNullableObject(a) ? null : v
  }
  return out as A
}

/** Struct → argument array in signature order, as `encodeArgs` takes it (null object → 0). */
export const argsOf = <A>(codec: MessageCodec<A>, value: A): ArgValue[] => {
  const descs = codec.desc.args
  const record = value as Record<string, ArgValue>
  const out: ArgValue[] = new Array(descs.length)
  for (let i = 0; i < descs.length; i++) {
    const a = descs[i]!
    const v = record[a.name]!
    out[i] = v === null && isNullableObject(a) ? 0 : v
  }
  return out
}

const makeSchema = <A>(c: MessageCodec<A>): Schema.Schema<A, WireBody> => {
  const desc = c.desc
  const fields: Record<string, Schema.Schema.Any> = {}
  for (const a of desc.args) fields[a.name] = fieldSchema(a)
  const target = Schema.Struct(fields)
  const where = `${c.interface.name}.${desc.name}`
  const transformed = Schema.transformOrFail(WireBodySchema, target, {
    strict: false,
    decode: (wb, _options, ast) => {
      if (wb.fds.length !== desc.fdCount) {
        return ParseResult.fail(
          new ParseResult.Type(ast, wb, `${where}: expected ${desc.fdCount} fds, got ${wb.fds.length}`)
        )
      }
      // The codec sees bodies only, so the sender's object id is unknown: 0.
      const r = decodeArgs(desc, 0, wb.body, 0, wb.body.length, [...wb.fds])
      if (r._tag === "Malformed") return ParseResult.fail(new ParseResult.Type(ast, wb, r.error.message))
      return ParseResult.succeed(structOf(c, r.args))
    },
    encode: (value, _options, ast) => {
      const args = argsOf(c, value as A)
      try {
        const body = new Uint8Array(bodySize(desc, args))
        const fds: number[] = []
        encodeArgs(desc, args, body, 0, fds)
        return ParseResult.succeed({ body, fds })
      } catch (e) {
        return ParseResult.fail(new ParseResult.Type(ast, value, e instanceof Error ? e.message : String(e)))
      }
    }
  })
  return transformed.annotations({ identifier: `${where} (${c.direction})` }) as unknown as Schema.Schema<A, WireBody>
}

class Codec<A> implements MessageCodec<A> {
  readonly interface: InterfaceDesc
  readonly direction: Direction
  readonly desc: MessageDesc
  #schema: Schema.Schema<A, WireBody> | undefined = undefined

  constructor(iface: InterfaceDesc, direction: Direction, desc: MessageDesc) {
    this.interface = iface
    this.direction = direction
    this.desc = desc
  }

  get schema(): Schema.Schema<A, WireBody> {
    return (this.#schema ??= makeSchema(this))
  }
}

/** The codec of `iface`'s request or event with this opcode; throws if there is none. */
export const codec = <A>(iface: InterfaceDesc, direction: Direction, opcode: number): MessageCodec<A> => {
  const desc = (direction === "request" ? iface.requests : iface.events)[opcode]
  if (desc === undefined) throw new Error(`${iface.name} has no ${direction} with opcode ${opcode}`)
  return new Codec<A>(iface, direction, desc)
}

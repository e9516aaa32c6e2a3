/**
 * Table-driven argument codec: decodes and encodes one message body from its MessageDesc.
 *
 * Decoding never throws: bad input is a `Malformed` value carrying one WireError. Encoding throws a
 * plain Error only on programming errors (a value of the wrong type for its argument).
 * No I/O: fds are plain numbers taken from, or pushed to, queues the caller owns.
 *
 * Fd ownership on decode: the body is validated completely (and the queue's length checked against
 * `fdCount`) before the first fd is popped, so a Malformed result never takes an fd off the queue;
 * the fds stay with the queue's owner, who closes them. On Ok, the popped fds belong to the caller.
 */
import { ArgCode } from "../protocol/types.js"
import type { ArgValue, DecodedMessage, MessageDesc, UntypedNewId } from "../protocol/types.js"
import { type WireError, wireError } from "./errors.js"
import { INCOMPLETE, headerError } from "./framer.js"
import { HEADER_SIZE, MAX_ENCODABLE_MESSAGE_SIZE, readI32, readU32, writeHeader, writeU32 } from "./header.js"

/** The connection's queue of received fds. A plain `number[]` satisfies it. */
export interface FdSource {
  shift(): number | undefined
  /** Fds currently queued; checked against `fdCount` before any fd is popped. */
  readonly length: number
}

export type DecodeResult =
  | { readonly _tag: "Ok"; readonly args: ArgValue[] }
  | { readonly _tag: "Malformed"; readonly error: WireError }

export type MessageResult =
  | { readonly _tag: "Incomplete" }
  | { readonly _tag: "Ok"; readonly message: DecodedMessage; readonly desc: MessageDesc; readonly size: number }
  | { readonly _tag: "Malformed"; readonly error: WireError; readonly consumed: number }

// Local copies so the hot loops compare against constants, not an imported enum object.
const WORD: number = ArgCode.Word
const STRING: number = ArgCode.String
const ARRAY: number = ArgCode.Array
const OBJECT: number = ArgCode.Object
const NEW_ID: number = ArgCode.NewId
const NEW_ID_UNTYPED: number = ArgCode.NewIdUntyped
const FD: number = ArgCode.Fd

const utf8Decoder = new TextDecoder("utf-8", { fatal: false })

// Arithmetic, not `(n + 3) & ~3`: lengths are uint32 and bitwise ops would wrap 0xffffffff to 0.
const pad4 = (n: number): number => n + (-n & 3)

// ---------------------------------------------------------------------------------------------
// Decoding

/** Set by `readString` on success; a scratch slot instead of a per-call result object. */
let scratchString: string | null = null

// Negative returns of readString.
const S_SHORT = -1 // no room for the length word
const S_NULL = -2 // length 0 on a non-nullable string
const S_OVERRUN = -3 // bytes run past the body
const S_NO_NUL = -4 // last byte is not NUL

/** Reads a string at `p`; returns the position after it, or a negative S_ code. */
const readString = (buf: Uint8Array, p: number, end: number, nullable: boolean): number => {
  if (end - p < 4) return S_SHORT
  const len = readU32(buf, p)
  p += 4
  if (len === 0) {
    if (!nullable) return S_NULL
    scratchString = null
    return p
  }
  // Padded length, as libwayland checks it (div_roundup(length, 4) words must fit).
  if (pad4(len) > end - p) return S_OVERRUN
  const last = p + len - 1
  if (buf[last] !== 0) return S_NO_NUL
  scratchString = decodeUtf8(buf, p, last)
  return p + pad4(len)
}

/** Short ASCII strings (interface names, app ids) skip TextDecoder's native call. */
const decodeUtf8 = (buf: Uint8Array, start: number, end: number): string => {
  if (end - start <= 32) {
    let s = ""
    for (let i = start; i < end; i++) {
      const b = buf[i]!
      if (b >= 0x80) return utf8Decoder.decode(buf.subarray(start, end))
      s += String.fromCharCode(b)
    }
    return s
  }
  return utf8Decoder.decode(buf.subarray(start, end))
}

const argName = (msg: MessageDesc, i: number): string => `${msg.name}.${msg.args[i]?.name ?? `arg${i}`}`

const malformed = (error: WireError): DecodeResult => ({ _tag: "Malformed", error })

const stringError = (
  code: number,
  msg: MessageDesc,
  objectId: number,
  i: number,
  buf: Uint8Array,
  p: number,
  end: number
): DecodeResult => {
  const where = argName(msg, i)
  switch (code) {
    case S_SHORT:
      return malformed(
        wireError("ShortBody", objectId, msg.opcode, `${where}: body ends before the string length (${end - p} bytes left)`)
      )
    case S_NULL:
      return malformed(wireError("NullNotAllowed", objectId, msg.opcode, `${where}: null string for a non-nullable argument`))
    case S_OVERRUN:
      return malformed(
        wireError(
          "BadString",
          objectId,
          msg.opcode,
          `${where}: string length ${readU32(buf, p)} overruns the ${end - p - 4}-byte rest of the body`
        )
      )
    default:
      return malformed(wireError("BadString", objectId, msg.opcode, `${where}: string is not NUL-terminated`))
  }
}

const shortBody = (msg: MessageDesc, objectId: number, i: number, left: number): DecodeResult =>
  malformed(wireError("ShortBody", objectId, msg.opcode, `${argName(msg, i)}: body ends before the argument (${left} bytes left)`))

const nullNotAllowed = (msg: MessageDesc, objectId: number, i: number, what: string): DecodeResult =>
  malformed(wireError("NullNotAllowed", objectId, msg.opcode, `${argName(msg, i)}: ${what} is 0`))

/**
 * Decodes the body `[bodyOffset, bodyOffset + bodySize)` of a message sent by `objectId`.
 * `bodySize` is the header's size minus HEADER_SIZE; the caller guarantees those bytes are in `buf`.
 * Fds are popped from `fds` in signature order, only once the whole body has validated.
 */
export const decodeArgs = (
  msg: MessageDesc,
  objectId: number,
  buf: Uint8Array,
  bodyOffset: number,
  bodySize: number,
  fds: FdSource
): DecodeResult => {
  const codes = msg.codes
  const descs = msg.args
  const n = codes.length
  const end = bodyOffset + bodySize
  // Sized up front: index stores beat push() here (measured with scripts/bench/wire.ts).
  const out: ArgValue[] = new Array<ArgValue>(n)
  let p = bodyOffset
  for (let i = 0; i < n; i++) {
    const code = codes[i]!
    if (code === WORD) {
      if (end - p < 4) return shortBody(msg, objectId, i, end - p)
      const type = descs[i]!.type
      out[i] = type === "uint" ? readU32(buf, p) : type === "fixed" ? readI32(buf, p) / 256 : readI32(buf, p)
      p += 4
    } else if (code === OBJECT || code === NEW_ID) {
      if (end - p < 4) return shortBody(msg, objectId, i, end - p)
      const id = readU32(buf, p)
      // new_id must name a fresh object; object 0 is null and needs allow-null="true".
      if (id === 0 && (code === NEW_ID || !descs[i]!.nullable)) {
        return nullNotAllowed(msg, objectId, i, code === NEW_ID ? "new_id" : "object id")
      }
      out[i] = id
      p += 4
    } else if (code === STRING) {
      const q = readString(buf, p, end, descs[i]!.nullable)
      if (q < 0) return stringError(q, msg, objectId, i, buf, p, end)
      out[i] = scratchString
      p = q
    } else if (code === ARRAY) {
      if (end - p < 4) return shortBody(msg, objectId, i, end - p)
      const len = readU32(buf, p)
      const left = end - p - 4
      if (pad4(len) > left) {
        return malformed(
          wireError("ArrayOverrun", objectId, msg.opcode, `${argName(msg, i)}: array length ${len} overruns the ${left}-byte rest of the body`)
        )
      }
      p += 4
      // A copy: the receive buffer is reused, the decoded message must outlive it.
      out[i] = buf.slice(p, p + len)
      p += pad4(len)
    } else if (code === NEW_ID_UNTYPED) {
      // wl_registry.bind: interface string, version, id (connection.c, 'n' without interface).
      const q = readString(buf, p, end, false)
      if (q < 0) return stringError(q, msg, objectId, i, buf, p, end)
      const iface = scratchString!
      if (end - q < 8) return shortBody(msg, objectId, i, end - q)
      const version = readU32(buf, q)
      const id = readU32(buf, q + 4)
      if (id === 0) return nullNotAllowed(msg, objectId, i, "new_id")
      const v: UntypedNewId = { interface: iface, version, id }
      out[i] = v
      p = q + 8
    } else if (code === FD) {
      out[i] = -1 // filled below, once the whole body is known good
    } else {
      throw new Error(`unknown ArgCode ${code} in ${msg.name}`)
    }
  }
  if (p !== end) {
    return malformed(
      wireError("TrailingBytes", objectId, msg.opcode, `${msg.name}: ${end - p} bytes left after the last argument`)
    )
  }
  const fdCount = msg.fdCount
  if (fdCount > 0) {
    if (fds.length < fdCount) {
      return malformed(
        wireError("MissingFd", objectId, msg.opcode, `${msg.name}: needs ${fdCount} fds, ${fds.length} queued`)
      )
    }
    for (let i = 0; i < n; i++) if (codes[i] === FD) out[i] = fds.shift()!
  }
  return { _tag: "Ok", args: out }
}

/**
 * Reads the header at `offset`, looks up the signature and decodes one whole message.
 * `consumed` on Malformed follows framer.ts; for body errors and UnknownOpcode it is the frame size.
 */
export const decodeMessage = (
  buf: Uint8Array,
  offset: number,
  end: number,
  maxSize: number,
  lookup: (objectId: number, opcode: number) => MessageDesc | undefined,
  fds: FdSource
): MessageResult => {
  const available = end - offset
  if (available < HEADER_SIZE) return INCOMPLETE
  const objectId = readU32(buf, offset)
  const opcode = buf[offset + 4]! | (buf[offset + 5]! << 8)
  const size = buf[offset + 6]! | (buf[offset + 7]! << 8)
  if (size < HEADER_SIZE || (size & 3) !== 0 || size > maxSize) {
    return headerError(objectId, opcode, size, available, maxSize)!
  }
  if (available < size) return INCOMPLETE
  const desc = lookup(objectId, opcode)
  if (desc === undefined) {
    return {
      _tag: "Malformed",
      error: wireError("UnknownOpcode", objectId, opcode, `no message with opcode ${opcode} on this object`),
      consumed: size
    }
  }
  const r = decodeArgs(desc, objectId, buf, offset + HEADER_SIZE, size - HEADER_SIZE, fds)
  if (r._tag === "Malformed") return { _tag: "Malformed", error: r.error, consumed: size }
  return { _tag: "Ok", message: { objectId, opcode, args: r.args }, desc, size }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/** UTF-8 byte length of `s`, matching TextEncoder (lone surrogates become U+FFFD, 3 bytes). */
export const utf8Length = (s: string): number => {
  let n = 0
  const len = s.length
  for (let i = 0; i < len; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x80) n += 1
    else if (c < 0x800) n += 2
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < len) {
      const d = s.charCodeAt(i + 1)
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4
        i++
      } else n += 3
    } else n += 3
  }
  return n
}

/** Writes `s` as UTF-8 at `p` (same output as TextEncoder); returns the byte count. */
const writeUtf8 = (out: Uint8Array, p: number, s: string): number => {
  const start = p
  const len = s.length
  for (let i = 0; i < len; i++) {
    let c = s.charCodeAt(i)
    if (c < 0x80) {
      out[p++] = c
      continue
    }
    if (c < 0x800) {
      out[p++] = 0xc0 | (c >> 6)
      out[p++] = 0x80 | (c & 0x3f)
      continue
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const d = i + 1 < len ? s.charCodeAt(i + 1) : 0
      if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
        const cp = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00)
        out[p++] = 0xf0 | (cp >> 18)
        out[p++] = 0x80 | ((cp >> 12) & 0x3f)
        out[p++] = 0x80 | ((cp >> 6) & 0x3f)
        out[p++] = 0x80 | (cp & 0x3f)
        i++
        continue
      }
      c = 0xfffd
    }
    out[p++] = 0xe0 | (c >> 12)
    out[p++] = 0x80 | ((c >> 6) & 0x3f)
    out[p++] = 0x80 | (c & 0x3f)
  }
  return p - start
}

const typeError = (msg: MessageDesc, i: number, expected: string, v: unknown): Error =>
  new Error(`${argName(msg, i)}: expected ${expected}, got ${v === null ? "null" : typeof v} ${String(v)}`)

const isWord = (v: unknown): v is number =>
  typeof v === "number" && Number.isInteger(v) && v >= -0x80000000 && v <= 0xffffffff

const isUntypedNewId = (v: unknown): v is UntypedNewId =>
  typeof v === "object" && v !== null && !(v instanceof Uint8Array) && typeof (v as UntypedNewId).interface === "string"

const stringSize = (msg: MessageDesc, i: number, v: ArgValue): number => {
  if (v === null) {
    if (!msg.args[i]!.nullable) throw typeError(msg, i, "a string (argument is not nullable)", v)
    return 4
  }
  if (typeof v !== "string") throw typeError(msg, i, "a string or null", v)
  return 4 + pad4(utf8Length(v) + 1)
}

/** Body size in bytes (header excluded) that `encodeArgs` will write for these values. */
export const bodySize = (msg: MessageDesc, args: readonly ArgValue[]): number => {
  const codes = msg.codes
  if (args.length !== codes.length) throw new Error(`${msg.name}: expected ${codes.length} arguments, got ${args.length}`)
  if (msg.fixedBodySize >= 0) return msg.fixedBodySize
  let size = 0
  for (let i = 0; i < codes.length; i++) {
    const code = codes[i]!
    const v = args[i]!
    if (code === WORD || code === OBJECT || code === NEW_ID) size += 4
    else if (code === STRING) size += stringSize(msg, i, v)
    else if (code === ARRAY) {
      if (!(v instanceof Uint8Array)) throw typeError(msg, i, "a Uint8Array", v)
      size += 4 + pad4(v.length)
    } else if (code === NEW_ID_UNTYPED) {
      if (!isUntypedNewId(v)) throw typeError(msg, i, "{ interface, version, id }", v)
      size += 4 + pad4(utf8Length(v.interface) + 1) + 8
    }
  }
  return size
}

/** Writes a non-null string (length word, bytes, NUL, zero padding); returns the new position. */
const writeString = (out: Uint8Array, p: number, s: string): number => {
  const n = writeUtf8(out, p + 4, s)
  let q = p + 4 + n
  out[q++] = 0
  writeU32(out, p, n + 1)
  const padded = p + 4 + pad4(n + 1)
  while (q < padded) out[q++] = 0
  return padded
}

/**
 * Writes the body at `offset` of `out` and pushes fd arguments to `fdsOut` in signature order.
 * Returns the bytes written (== bodySize). Throws on a value of the wrong type or too small `out`.
 */
export const encodeArgs = (
  msg: MessageDesc,
  args: readonly ArgValue[],
  out: Uint8Array,
  offset: number,
  fdsOut: number[]
): number => {
  const codes = msg.codes
  const n = codes.length
  if (args.length !== n) throw new Error(`${msg.name}: expected ${n} arguments, got ${args.length}`)
  let p = offset
  for (let i = 0; i < n; i++) {
    const code = codes[i]!
    const v = args[i]!
    if (code === WORD) {
      const type = msg.args[i]!.type
      if (type === "fixed") {
        if (typeof v !== "number" || !Number.isFinite(v)) throw typeError(msg, i, "a finite number (fixed)", v)
        // wl_fixed_from_double rounds to nearest.
        const w = Math.round(v * 256)
        if (w < -0x80000000 || w > 0x7fffffff) throw typeError(msg, i, "a fixed value within 24.8 range", v)
        writeU32(out, p, w)
      } else {
        if (!isWord(v)) throw typeError(msg, i, "a 32-bit integer", v)
        writeU32(out, p, v)
      }
      p += 4
    } else if (code === OBJECT) {
      const id = v === null ? 0 : v
      if (!isWord(id) || id < 0) throw typeError(msg, i, "an object id", v)
      if (id === 0 && !msg.args[i]!.nullable) throw typeError(msg, i, "a non-zero object id (argument is not nullable)", v)
      writeU32(out, p, id)
      p += 4
    } else if (code === NEW_ID) {
      if (!isWord(v) || v <= 0) throw typeError(msg, i, "a non-zero new_id", v)
      writeU32(out, p, v)
      p += 4
    } else if (code === STRING) {
      if (v === null) {
        if (!msg.args[i]!.nullable) throw typeError(msg, i, "a string (argument is not nullable)", v)
        writeU32(out, p, 0)
        p += 4
      } else {
        if (typeof v !== "string") throw typeError(msg, i, "a string or null", v)
        p = writeString(out, p, v)
      }
    } else if (code === ARRAY) {
      if (!(v instanceof Uint8Array)) throw typeError(msg, i, "a Uint8Array", v)
      const len = v.length
      writeU32(out, p, len)
      out.set(v, p + 4)
      let q = p + 4 + len
      p = p + 4 + pad4(len)
      while (q < p) out[q++] = 0
    } else if (code === NEW_ID_UNTYPED) {
      if (!isUntypedNewId(v) || !isWord(v.version) || !isWord(v.id) || v.id <= 0) {
        throw typeError(msg, i, "{ interface, version, id } with a non-zero id", v)
      }
      p = writeString(out, p, v.interface)
      writeU32(out, p, v.version)
      writeU32(out, p + 4, v.id)
      p += 8
    } else if (code === FD) {
      if (!isWord(v) || v < 0) throw typeError(msg, i, "an fd", v)
      fdsOut.push(v)
    } else {
      throw new Error(`unknown ArgCode ${code} in ${msg.name}`)
    }
  }
  if (p > out.length) throw new Error(`${msg.name}: ${p - offset}-byte body does not fit the output buffer`)
  return p - offset
}

/**
 * Writes header + body at `offset` of `out`; returns the message size.
 * Throws when the message cannot be represented (size field is 16 bits) or does not fit `out`.
 */
export const encodeMessageInto = (
  out: Uint8Array,
  offset: number,
  objectId: number,
  msg: MessageDesc,
  args: readonly ArgValue[],
  fdsOut: number[]
): number => {
  const size = HEADER_SIZE + bodySize(msg, args)
  if (size > MAX_ENCODABLE_MESSAGE_SIZE) throw new Error(`${msg.name}: ${size}-byte message exceeds the 16-bit size field`)
  if (offset + size > out.length) throw new Error(`${msg.name}: ${size}-byte message does not fit the output buffer`)
  writeHeader(out, offset, objectId, msg.opcode, size)
  encodeArgs(msg, args, out, offset + HEADER_SIZE, fdsOut)
  return size
}

/** Encodes header + body into a fresh array; pushes fd arguments to `fdsOut`. */
export const encodeMessage = (
  objectId: number,
  msg: MessageDesc,
  args: readonly ArgValue[],
  fdsOut: number[]
): Uint8Array => {
  const size = HEADER_SIZE + bodySize(msg, args)
  if (size > MAX_ENCODABLE_MESSAGE_SIZE) throw new Error(`${msg.name}: ${size}-byte message exceeds the 16-bit size field`)
  const out = new Uint8Array(size)
  writeHeader(out, 0, objectId, msg.opcode, size)
  encodeArgs(msg, args, out, HEADER_SIZE, fdsOut)
  return out
}

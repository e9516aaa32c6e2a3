/**
 * Wayland message header constants and little-endian word access.
 *
 * The header is two 32-bit words in host byte order: sender object id, then `size << 16 | opcode`
 * (wayland-util.h / connection.c). This module reads and writes those words with byte arithmetic;
 * it does not frame streams (framer.ts) or decode arguments (args.ts).
 */

export const HEADER_SIZE = 8
/** libwayland's WL_MAX_MESSAGE_SIZE before it became configurable. */
export const DEFAULT_MAX_MESSAGE_SIZE = 4096
/** libwayland's MAX_FDS_OUT (connection.c): at most this many fds ride on one sendmsg. */
export const MAX_FDS_PER_SENDMSG = 28
/** The size field is 16 bits wide; the largest aligned size it can carry. */
export const MAX_ENCODABLE_MESSAGE_SIZE = 0xfffc

// The wire uses host byte order; every word access below assumes little-endian.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("sommelier's wire codec supports little-endian hosts only")
}

/** Reads an unsigned 32-bit little-endian word. The caller guarantees `i + 4 <= buf.length`. */
export const readU32 = (buf: Uint8Array, i: number): number =>
  ((buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16)) + buf[i + 3]! * 0x1000000)

/** Reads a signed 32-bit little-endian word. */
export const readI32 = (buf: Uint8Array, i: number): number =>
  buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24)

/** Writes the low 32 bits of `v` little-endian (signed or unsigned input). */
export const writeU32 = (buf: Uint8Array, i: number, v: number): void => {
  buf[i] = v
  buf[i + 1] = v >>> 8
  buf[i + 2] = v >>> 16
  buf[i + 3] = v >>> 24
}

/** Writes a message header. */
export const writeHeader = (buf: Uint8Array, i: number, objectId: number, opcode: number, size: number): void => {
  writeU32(buf, i, objectId)
  writeU32(buf, i + 4, ((size << 16) | opcode) >>> 0)
}

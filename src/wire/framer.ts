/**
 * Finds message boundaries in a received byte stream by reading the 8-byte header.
 *
 * Checks only the header (size bounds and alignment); it does not look up signatures or decode
 * arguments (args.ts). "Need more bytes" is the `Incomplete` value, never an exception.
 *
 * `consumed` on Malformed: when the header's size is usable (>= 8, a multiple of 4) and the whole
 * frame is in `[offset, end)`, it is the frame's size, so the next frame decodes. Otherwise
 * (TooShort, Unaligned, or TooLarge with the frame not fully buffered) the frame boundary is
 * unknown or out of reach: `consumed` is every buffered byte (`end - offset`), alignment is lost
 * and the caller must treat the connection as broken, as libwayland does.
 */
import { WireError, wireError } from "./errors.js"
import { HEADER_SIZE } from "./header.js"

export type FrameResult =
  | { readonly _tag: "Incomplete" }
  | { readonly _tag: "Frame"; readonly objectId: number; readonly opcode: number; readonly size: number }
  | { readonly _tag: "Malformed"; readonly error: WireError; readonly consumed: number }

/** Shared value: Incomplete carries no data, so it is never allocated per call. */
export const INCOMPLETE: { readonly _tag: "Incomplete" } = Object.freeze({ _tag: "Incomplete" as const })

/**
 * The Malformed result for a header whose size field is bad, or undefined when the header is fine.
 * Kept apart from the hot path so readFrame and decodeMessage share one definition of "bad".
 */
export const headerError = (
  objectId: number,
  opcode: number,
  size: number,
  available: number,
  maxSize: number
): { readonly _tag: "Malformed"; readonly error: WireError; readonly consumed: number } | undefined => {
  if (size < HEADER_SIZE) {
    return {
      _tag: "Malformed",
      error: wireError("TooShort", objectId, opcode, `message size ${size} is smaller than the ${HEADER_SIZE}-byte header`),
      consumed: available
    }
  }
  if ((size & 3) !== 0) {
    return {
      _tag: "Malformed",
      error: wireError("Unaligned", objectId, opcode, `message size ${size} is not a multiple of 4`),
      consumed: available
    }
  }
  if (size > maxSize) {
    return {
      _tag: "Malformed",
      error: wireError("TooLarge", objectId, opcode, `message size ${size} exceeds the maximum of ${maxSize}`),
      consumed: size <= available ? size : available
    }
  }
  return undefined
}

/**
 * Reads the header at `offset` and reports whether a whole frame lies in `[offset, end)`.
 * Bad headers are reported as soon as the header is readable, before the body arrives.
 */
export const readFrame = (buf: Uint8Array, offset: number, end: number, maxSize: number): FrameResult => {
  const available = end - offset
  if (available < HEADER_SIZE) return INCOMPLETE
  const objectId = (buf[offset]! | (buf[offset + 1]! << 8) | (buf[offset + 2]! << 16)) + buf[offset + 3]! * 0x1000000
  const opcode = buf[offset + 4]! | (buf[offset + 5]! << 8)
  const size = buf[offset + 6]! | (buf[offset + 7]! << 8)
  if (size < HEADER_SIZE || (size & 3) !== 0 || size > maxSize) {
    return headerError(objectId, opcode, size, available, maxSize)!
  }
  if (available < size) return INCOMPLETE
  return { _tag: "Frame", objectId, opcode, size }
}

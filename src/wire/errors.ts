/**
 * The wire codec's one error type. Every malformed input maps to exactly one `reason`.
 *
 * Values of this class are returned inside `Malformed` results, never thrown by the decoder.
 */
import { Data } from "effect"

export type WireErrorReason =
  | "TooShort"
  | "Unaligned"
  | "TooLarge"
  | "BadString"
  | "ArrayOverrun"
  | "MissingFd"
  | "UnknownOpcode"
  | "ShortBody"
  | "TrailingBytes"
  | "NullNotAllowed"

export class WireError extends Data.TaggedError("WireError")<{
  readonly reason: WireErrorReason
  readonly objectId: number
  readonly opcode: number
  readonly message: string
}> {}

/** Builds a WireError whose message names the object, the opcode and the cause. */
export const wireError = (
  reason: WireErrorReason,
  objectId: number,
  opcode: number,
  detail: string
): WireError => new WireError({ reason, objectId, opcode, message: `object ${objectId} opcode ${opcode}: ${detail}` })

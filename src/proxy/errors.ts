/**
 * Errors of the proxy layer. A `ProtocolViolation` ends exactly one client: it becomes a
 * `wl_display.error` to that client, naming the object, the code and the reason, and then the
 * client and its host connection are closed. Other clients never see it.
 */
import { Data } from "effect"

/** `wl_display.error` codes (wayland.xml, enum wl_display.error). */
export const enum DisplayErrorCode {
  InvalidObject = 0,
  InvalidMethod = 1,
  NoMemory = 2,
  Implementation = 3
}

export class ProtocolViolation extends Data.TaggedError("ProtocolViolation")<{
  /** The client's id of the object the error is about (1 = wl_display when none fits). */
  readonly objectId: number
  /** Interface name of that object, or "unknown". */
  readonly interface: string
  readonly code: number
  readonly message: string
}> {}

export type ConnectionEndReason =
  | { readonly _tag: "ClientClosed" }
  | { readonly _tag: "HostClosed" }
  | { readonly _tag: "ClientViolation"; readonly violation: ProtocolViolation }
  | { readonly _tag: "HostViolation"; readonly message: string }
  | { readonly _tag: "Limit"; readonly limit: string; readonly message: string }
  | { readonly _tag: "IoError"; readonly message: string }
  | { readonly _tag: "Shutdown" }

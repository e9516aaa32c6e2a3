/**
 * Static protocol metadata: the descriptor types that `scripts/codegen.ts` emits into
 * `src/generated/` and that the wire codec and the proxy read.
 *
 * Pure data types and the compact argument codes; no I/O, no services, no Effect.
 * Imports: nothing from this project.
 */

/** Wayland argument types as spelled in the XML. */
export type ArgType = "int" | "uint" | "fixed" | "string" | "object" | "new_id" | "array" | "fd"

/**
 * Compact per-argument codes for the table-driven hot path. One byte per argument,
 * in signature order. The untyped `new_id` (only `wl_registry.bind` in practice) travels
 * as interface string + version + id, so it has a code of its own.
 */
export const enum ArgCode {
  /** int, uint, fixed, enum: one 32-bit word, never rewritten. */
  Word = 0,
  /** string: length word (counting the NUL; 0 = null) + padded bytes. */
  String = 1,
  /** array: length word + padded bytes. */
  Array = 2,
  /** object id: one word; 0 = null (only when nullable). */
  Object = 3,
  /** typed new_id: one word, the id of the object it creates. */
  NewId = 4,
  /** untyped new_id: string interface, uint version, uint id. */
  NewIdUntyped = 5,
  /** fd: no bytes; one fd from the connection's fd queue. */
  Fd = 6
}

export interface ArgDesc {
  /** Safe identifier (see `safeIdentifier` in codegen); `interface` becomes `interface_`. */
  readonly name: string
  /** Name as written in the XML. */
  readonly wireName: string
  readonly type: ArgType
  /** Interface of an object/new_id argument, null when the XML leaves it open. */
  readonly interface: string | null
  readonly nullable: boolean
  /** `enum` attribute as written (`wl_output.transform`, or a local enum name), or null. */
  readonly enum: string | null
}

export interface MessageDesc {
  /** XML name, e.g. `attach`. */
  readonly name: string
  readonly opcode: number
  /** Version the message appeared in (1 when the XML has no `since`). */
  readonly since: number
  /** `type="destructor"` in the XML. */
  readonly destructor: boolean
  readonly args: readonly ArgDesc[]
  /** One ArgCode per argument, in order. */
  readonly codes: Uint8Array
  /** For each argument: its interface when it is an object/new_id with one, else null. */
  readonly argInterfaces: readonly (string | null)[]
  /** Number of fd arguments. */
  readonly fdCount: number
  /**
   * When the message has no string or array arguments, every argument sits at a fixed word
   * offset and this is the body's size in bytes (header excluded); otherwise -1.
   */
  readonly fixedBodySize: number
  /** Index of the new_id argument (typed or untyped), or -1. At most one per message. */
  readonly newIdArg: number
}

export interface EnumEntryDesc {
  readonly name: string
  readonly value: number
  readonly since: number
}

export interface EnumDesc {
  readonly name: string
  readonly bitfield: boolean
  readonly since: number
  readonly entries: readonly EnumEntryDesc[]
}

export interface InterfaceDesc {
  readonly name: string
  readonly version: number
  readonly requests: readonly MessageDesc[]
  readonly events: readonly MessageDesc[]
  readonly enums: readonly EnumDesc[]
}

/** One generated module = one protocol XML file. */
export interface ProtocolDesc {
  /** `name` attribute of `<protocol>`. */
  readonly name: string
  /** XML file name under `protocols/`, e.g. `stable/xdg-shell/xdg-shell.xml`. */
  readonly file: string
  readonly interfaces: readonly InterfaceDesc[]
}

/** Which direction a message travels: requests go client → server, events server → client. */
export type Direction = "request" | "event"

/** The untyped new_id of `wl_registry.bind`: interface string + version + id on the wire. */
export interface UntypedNewId {
  readonly interface: string
  readonly version: number
  readonly id: number
}

/**
 * A decoded argument value:
 * int, uint → number; fixed → number (wire value / 256); string → string | null;
 * object → number (object id, 0 = null); typed new_id → number; untyped new_id → UntypedNewId;
 * array → Uint8Array; fd → number (the fd, owned by whoever holds the decoded message).
 */
export type ArgValue = number | string | null | Uint8Array | UntypedNewId

/** A message header plus its decoded arguments in signature order. */
export interface DecodedMessage {
  readonly objectId: number
  readonly opcode: number
  readonly args: readonly ArgValue[]
}

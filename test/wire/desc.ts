/**
 * Test helper: builds MessageDesc values by hand from a compact signature, computing the derived
 * fields (codes, argInterfaces, fdCount, fixedBodySize, newIdArg) as src/protocol/types.ts defines them.
 *
 * Argument spec: `name:type`, `name:type<interface>`, with a trailing `?` for allow-null.
 * Examples: `x:int`, `title:string?`, `surface:object<wl_surface>?`, `id:new_id<wl_callback>`, `id:new_id`.
 */
import { ArgCode } from "../../src/protocol/types.js"
import type { ArgDesc, ArgType, MessageDesc } from "../../src/protocol/types.js"

const ARG_TYPES: readonly ArgType[] = ["int", "uint", "fixed", "string", "object", "new_id", "array", "fd"]

export const argCode = (a: Pick<ArgDesc, "type" | "interface">): ArgCode => {
  switch (a.type) {
    case "int":
    case "uint":
    case "fixed":
      return ArgCode.Word
    case "string":
      return ArgCode.String
    case "array":
      return ArgCode.Array
    case "object":
      return ArgCode.Object
    case "new_id":
      return a.interface === null ? ArgCode.NewIdUntyped : ArgCode.NewId
    case "fd":
      return ArgCode.Fd
  }
}

export const parseArg = (spec: string): ArgDesc => {
  const m = /^(\w+):(\w+)(?:<(\w+)>)?(\?)?$/.exec(spec)
  if (m === null) throw new Error(`bad arg spec ${spec}`)
  const type = m[2] as ArgType
  if (!ARG_TYPES.includes(type)) throw new Error(`bad arg type in ${spec}`)
  const name = m[1]!
  return {
    name: name === "interface" ? "interface_" : name,
    wireName: name,
    type,
    interface: m[3] ?? null,
    nullable: m[4] === "?",
    enum: null
  }
}

/** Builds a MessageDesc from ArgDescs. */
export const messageFromArgs = (name: string, opcode: number, args: readonly ArgDesc[]): MessageDesc => {
  const codes = Uint8Array.from(args.map(argCode))
  const variable = args.some((a) => argCode(a) === ArgCode.String || argCode(a) === ArgCode.Array || argCode(a) === ArgCode.NewIdUntyped)
  const words = args.filter((a) => a.type !== "fd").length
  return {
    name,
    opcode,
    since: 1,
    destructor: false,
    args,
    codes,
    argInterfaces: args.map((a) => (a.type === "object" || a.type === "new_id" ? a.interface : null)),
    fdCount: args.filter((a) => a.type === "fd").length,
    fixedBodySize: variable ? -1 : words * 4,
    newIdArg: args.findIndex((a) => a.type === "new_id")
  }
}

/** Builds a MessageDesc from compact specs. */
export const message = (name: string, opcode: number, specs: readonly string[]): MessageDesc =>
  messageFromArgs(name, opcode, specs.map(parseArg))

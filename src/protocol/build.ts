/**
 * Builders that the generated modules in `src/generated/` call to make their descriptors.
 *
 * The generated files stay compact data tables and tsc does no inference over large literals:
 * every builder has a declared signature, and the derived fields of `MessageDesc` (opcode,
 * codes, argInterfaces, fdCount, fixedBodySize, newIdArg) are computed here at module load.
 * `safeIdentifier` is shared with `scripts/codegen.ts` so descriptor names and the generated
 * struct field names agree. No I/O, no Effect.
 */
import {
  ArgCode,
  type ArgDesc,
  type ArgType,
  type EnumDesc,
  type EnumEntryDesc,
  type InterfaceDesc,
  type MessageDesc
} from "./types.js"

/** Words that cannot be used as binding names in strict-mode TypeScript (plus a few awkward ones). */
const reserved: ReadonlySet<string> = new Set([
  "arguments", "await", "break", "case", "catch", "class", "const", "continue", "debugger",
  "default", "delete", "do", "else", "enum", "eval", "export", "extends", "false", "finally",
  "for", "function", "if", "implements", "import", "in", "instanceof", "interface", "let", "new",
  "null", "package", "private", "protected", "public", "return", "static", "super", "switch",
  "this", "throw", "true", "try", "typeof", "undefined", "var", "void", "while", "with", "yield"
])

/**
 * Turns an XML name into a safe TypeScript identifier: characters outside `[A-Za-z0-9_$]`
 * become `_`, a leading digit gets a `_` prefix, and reserved words get a `_` suffix
 * (`interface` → `interface_`, `class` → `class_`).
 */
export const safeIdentifier = (name: string): string => {
  let id = name.replace(/[^A-Za-z0-9_$]/g, "_")
  if (id.length === 0 || /^[0-9]/.test(id)) id = `_${id}`
  return reserved.has(id) ? `${id}_` : id
}

/** Argument type as the generated code spells it: a leading `?` marks `allow-null="true"`. */
export type ArgSpecType = ArgType | `?${ArgType}`

/** An argument descriptor. `type` may carry a `?` prefix for nullable arguments. */
export const arg = (
  wireName: string,
  type: ArgSpecType,
  iface: string | null = null,
  enumName: string | null = null
): ArgDesc => {
  const nullable = type.charCodeAt(0) === 63 // "?"
  return {
    name: safeIdentifier(wireName),
    wireName,
    type: (nullable ? type.slice(1) : type) as ArgType,
    interface: iface,
    nullable,
    enum: enumName
  }
}

/** A message before its position in the interface gives it an opcode. */
export interface MessageSpec {
  readonly name: string
  readonly since: number
  readonly destructor: boolean
  readonly args: readonly ArgDesc[]
}

/** A request or event; `since` defaults to 1 as in the XML. */
export const msg = (
  name: string,
  args: readonly ArgDesc[],
  since = 1,
  destructor = false
): MessageSpec => ({ name, since, destructor, args })

const codeOf = (a: ArgDesc): ArgCode => {
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

/** Completes a message descriptor: the derived tables of `MessageDesc`. */
export const message = (spec: MessageSpec, opcode: number): MessageDesc => {
  const n = spec.args.length
  const codes = new Uint8Array(n)
  const argInterfaces: (string | null)[] = new Array(n)
  let fdCount = 0
  let words = 0
  let variable = false
  let newIdArg = -1
  for (let i = 0; i < n; i++) {
    const a = spec.args[i]!
    const code = codeOf(a)
    codes[i] = code
    argInterfaces[i] = (a.type === "object" || a.type === "new_id") ? a.interface : null
    switch (code) {
      case ArgCode.Fd:
        fdCount++
        break
      case ArgCode.String:
      case ArgCode.Array:
        variable = true
        break
      case ArgCode.NewIdUntyped:
        variable = true
        newIdArg = i
        break
      case ArgCode.NewId:
        newIdArg = i
        words++
        break
      default:
        words++
    }
  }
  return {
    name: spec.name,
    opcode,
    since: spec.since,
    destructor: spec.destructor,
    args: spec.args,
    codes,
    argInterfaces,
    fdCount,
    fixedBodySize: variable ? -1 : words * 4,
    newIdArg
  }
}

/** An enum entry as the generated code writes it: name, value, and `since` when not 1. */
export type EntrySpec = readonly [name: string, value: number, since?: number]

/** An enum descriptor; `since` defaults to 1, `bitfield` to false. */
export const enm = (
  name: string,
  entries: readonly EntrySpec[],
  since = 1,
  bitfield = false
): EnumDesc => ({
  name,
  bitfield,
  since,
  entries: entries.map(
    ([entryName, value, entrySince = 1]): EnumEntryDesc => ({ name: entryName, value, since: entrySince })
  )
})

/** An interface descriptor; opcodes are the positions in `requests` resp. `events`. */
export const iface = (
  name: string,
  version: number,
  requests: readonly MessageSpec[],
  events: readonly MessageSpec[],
  enums: readonly EnumDesc[] = []
): InterfaceDesc => ({
  name,
  version,
  requests: requests.map(message),
  events: events.map(message),
  enums
})

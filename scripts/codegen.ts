/**
 * Protocol code generator: Wayland XML under `protocols/` → TypeScript modules in `src/generated/`.
 *
 *   npx tsx scripts/codegen.ts           regenerate src/generated/
 *   npx tsx scripts/codegen.ts --check   regenerate in memory; exit 1 naming stale/missing/extra files
 *
 * One module per XML file, named after the file (`xdg-shell.xml` → `xdg-shell.ts`). When two XML
 * files share a base name, every one of them is named `<first directory>-<base name>` instead
 * (`stable-foo.ts`, `unstable-foo.ts`); a base name `index` is treated the same way so it cannot
 * collide with `index.ts`. Each module holds:
 *   - one `InterfaceDesc` per interface, built with the small builders of `src/protocol/build.ts`
 *     (explicitly typed, so tsc infers nothing from large literals);
 *   - `protocol: ProtocolDesc`;
 *   - per message a struct interface of its decoded arguments (`<Interface><Message>Request` or
 *     `...Event`, PascalCase) and a lazy Schema codec named `<interface>_<message>`. A codec gets a
 *     direction suffix (`<interface>_<message>_request` / `_event`) when a request and an event of
 *     its interface share the name (both get it), or when the plain name is an interface of the same
 *     file (`wp_presentation.feedback` → `wp_presentation_feedback_request`, since
 *     `wp_presentation_feedback` is the interface). Any remaining clash is a generation error.
 * `index.ts` re-exports every module as a namespace and lists `allProtocols` (sorted by path)
 * and `allInterfaces` (in that order; an interface defined by two files appears twice, the
 * registry in `src/protocol/registry.ts` resolves such clashes).
 *
 * Output is deterministic: no timestamps, files sorted by path, messages in XML order.
 * This script does not interpret protocol semantics beyond the descriptor fields.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { XMLParser } from "fast-xml-parser"
import { safeIdentifier } from "../src/protocol/build.js"
import type { ArgType, Direction } from "../src/protocol/types.js"

// ---------------------------------------------------------------------------------------------
// Parsed model

export interface ParsedArg {
  readonly wireName: string
  readonly name: string
  readonly type: ArgType
  readonly interface: string | null
  readonly nullable: boolean
  readonly enum: string | null
}

export interface ParsedMessage {
  readonly name: string
  readonly since: number
  readonly destructor: boolean
  readonly summary: string | null
  readonly args: readonly ParsedArg[]
}

export interface ParsedEntry {
  readonly name: string
  readonly value: number
  /** The value as the generated code spells it (hex stays hex). */
  readonly literal: string
  readonly since: number
}

export interface ParsedEnum {
  readonly name: string
  readonly since: number
  readonly bitfield: boolean
  readonly entries: readonly ParsedEntry[]
}

export interface ParsedInterface {
  readonly name: string
  readonly version: number
  readonly summary: string | null
  readonly requests: readonly ParsedMessage[]
  readonly events: readonly ParsedMessage[]
  readonly enums: readonly ParsedEnum[]
}

export interface ParsedProtocol {
  readonly name: string
  /** Path under `protocols/`, e.g. `stable/xdg-shell/xdg-shell.xml`. */
  readonly file: string
  readonly interfaces: readonly ParsedInterface[]
}

const argTypes: ReadonlySet<string> = new Set([
  "int", "uint", "fixed", "string", "object", "new_id", "array", "fd"
])

const repeated: ReadonlySet<string> = new Set(["interface", "request", "event", "arg", "enum", "entry"])

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: "@_",
  parseAttributeValue: false,
  // Grouping by tag keeps document order within each tag, which is all opcodes need:
  // request opcodes count <request> elements, event opcodes count <event> elements.
  isArray: (tagName, _path, _leaf, isAttribute) => !isAttribute && repeated.has(tagName)
})

type XmlNode = Record<string, unknown>

const fail = (file: string, where: string, what: string): never => {
  throw new Error(`${file}: ${where}: ${what}`)
}

const attr = (node: XmlNode, name: string): string | undefined => {
  const v = node[`@_${name}`]
  return typeof v === "string" ? v : undefined
}

const required = (file: string, where: string, node: XmlNode, name: string): string =>
  attr(node, name) ?? fail(file, where, `missing attribute "${name}"`)

const children = (node: XmlNode, tag: string): readonly XmlNode[] => {
  const v = node[tag]
  return Array.isArray(v) ? (v as XmlNode[]) : []
}

const positiveInt = (file: string, where: string, text: string | undefined, fallback: number): number => {
  if (text === undefined) return fallback
  const n = Number(text)
  if (!Number.isInteger(n) || n < 1) fail(file, where, `bad version number "${text}"`)
  return n
}

const summaryOf = (node: XmlNode): string | null => {
  const direct = attr(node, "summary")
  const desc = node["description"]
  const fromDesc = desc !== null && typeof desc === "object" ? attr(desc as XmlNode, "summary") : undefined
  const s = (direct ?? fromDesc)?.replace(/\s+/g, " ").trim()
  return s === undefined || s.length === 0 ? null : s
}

const parseArg = (file: string, where: string, node: XmlNode): ParsedArg => {
  const wireName = required(file, where, node, "name")
  const at = `${where}(${wireName})`
  const type = required(file, at, node, "type")
  if (!argTypes.has(type)) fail(file, at, `unknown argument type "${type}"`)
  const allowNull = attr(node, "allow-null")
  if (allowNull !== undefined && allowNull !== "true" && allowNull !== "false") {
    fail(file, at, `bad allow-null "${allowNull}"`)
  }
  const ifaceName = attr(node, "interface")
  return {
    wireName,
    name: safeIdentifier(wireName),
    type: type as ArgType,
    interface: (type === "object" || type === "new_id") && ifaceName !== undefined ? ifaceName : null,
    nullable: allowNull === "true",
    enum: attr(node, "enum") ?? null
  }
}

const parseMessage = (file: string, ifaceName: string, kind: Direction, node: XmlNode): ParsedMessage => {
  const name = required(file, `${ifaceName} ${kind}`, node, "name")
  const where = `${ifaceName}.${name}`
  const type = attr(node, "type")
  if (type !== undefined && type !== "destructor") fail(file, where, `unknown message type "${type}"`)
  const args = children(node, "arg").map((a) => parseArg(file, where, a))
  const seen = new Set<string>()
  for (const a of args) {
    if (seen.has(a.name)) fail(file, where, `two arguments named "${a.name}" after sanitizing`)
    seen.add(a.name)
  }
  if (args.filter((a) => a.type === "new_id").length > 1) fail(file, where, "more than one new_id argument")
  return {
    name,
    since: positiveInt(file, where, attr(node, "since"), 1),
    destructor: type === "destructor",
    summary: summaryOf(node),
    args
  }
}

const parseValue = (file: string, where: string, text: string): { value: number; literal: string } => {
  const t = text.trim()
  const hex = /^0[xX][0-9a-fA-F]+$/.test(t)
  if (!hex && !/^-?[0-9]+$/.test(t)) fail(file, where, `bad enum value "${text}"`)
  const value = hex ? parseInt(t.slice(2), 16) : parseInt(t, 10)
  if (!Number.isSafeInteger(value) || value < -0x80000000 || value > 0xffffffff) {
    fail(file, where, `enum value out of 32-bit range "${text}"`)
  }
  return { value, literal: hex ? `0x${value.toString(16)}` : String(value) }
}

const parseEnum = (file: string, ifaceName: string, node: XmlNode): ParsedEnum => {
  const name = required(file, `${ifaceName} enum`, node, "name")
  const where = `${ifaceName}.${name}`
  const bitfield = attr(node, "bitfield")
  if (bitfield !== undefined && bitfield !== "true" && bitfield !== "false") {
    fail(file, where, `bad bitfield "${bitfield}"`)
  }
  return {
    name,
    since: positiveInt(file, where, attr(node, "since"), 1),
    bitfield: bitfield === "true",
    entries: children(node, "entry").map((e) => {
      const entryName = required(file, `${where} entry`, e, "name")
      const at = `${where}.${entryName}`
      const { value, literal } = parseValue(file, at, required(file, at, e, "value"))
      return { name: entryName, value, literal, since: positiveInt(file, at, attr(e, "since"), 1) }
    })
  }
}

/** Parses one protocol XML file. `file` is its path under `protocols/` (used in messages and output). */
export const parseProtocol = (xmlText: string, file: string): ParsedProtocol => {
  const doc = parser.parse(xmlText) as XmlNode
  const root = doc["protocol"]
  if (root === null || typeof root !== "object") return fail(file, "document", "no <protocol> element")
  const proto = root as XmlNode
  const interfaces = children(proto, "interface").map((node): ParsedInterface => {
    const name = required(file, "interface", node, "name")
    return {
      name,
      version: positiveInt(file, name, required(file, name, node, "version"), 1),
      summary: summaryOf(node),
      requests: children(node, "request").map((m) => parseMessage(file, name, "request", m)),
      events: children(node, "event").map((m) => parseMessage(file, name, "event", m)),
      enums: children(node, "enum").map((e) => parseEnum(file, name, e))
    }
  })
  const seen = new Set<string>()
  for (const i of interfaces) {
    if (seen.has(i.name)) fail(file, i.name, "interface defined twice in one file")
    seen.add(i.name)
  }
  return { name: required(file, "protocol", proto, "name"), file, interfaces }
}

// ---------------------------------------------------------------------------------------------
// Emission

const q = (s: string): string => JSON.stringify(s)

const doc = (summary: string | null, indent = ""): string =>
  summary === null ? "" : `${indent}/** ${summary.replace(/\*\//g, "*\\/")} */\n`

/** `zwp_linux_dmabuf_v1` → `ZwpLinuxDmabufV1`. */
export const pascalCase = (name: string): string =>
  name
    .split(/[^A-Za-z0-9]+/)
    .filter((p) => p.length > 0)
    .map((p) => p[0]!.toUpperCase() + p.slice(1))
    .join("")

const maxLine = 110

/** `head(a, b)` on one line when short, else one item per line. */
const call = (indent: string, head: string, items: readonly string[], tail: string, sep = ","): string => {
  const flat = `${indent}${head}${items.join(`${sep} `)}${tail}`
  if (flat.length <= maxLine || items.length <= 1) return flat
  const lineEnd = sep === ";" ? "" : sep
  return `${indent}${head.trimEnd()}\n${items.map((i) => `${indent}  ${i}`).join(`${lineEnd}\n`)}\n${indent}${tail.trimStart()}`
}

const list = (items: readonly string[]): string =>
  items.length === 0 ? "[]" : `[\n${items.join(",\n")}\n]`

const emitArg = (a: ParsedArg): string => {
  const parts = [q(a.wireName), q(a.nullable ? `?${a.type}` : a.type)]
  if (a.interface !== null || a.enum !== null) parts.push(a.interface === null ? "null" : q(a.interface))
  if (a.enum !== null) parts.push(q(a.enum))
  return `a(${parts.join(", ")})`
}

const emitMessage = (m: ParsedMessage): string => {
  const rest = m.destructor ? `, ${m.since}, true)` : m.since !== 1 ? `, ${m.since})` : ")"
  return call("  ", `m(${q(m.name)}, [`, m.args.map(emitArg), `]${rest}`)
}

const emitEnum = (e: ParsedEnum): string => {
  const entries = e.entries.map((x) => `[${q(x.name)}, ${x.literal}${x.since !== 1 ? `, ${x.since}` : ""}]`)
  const rest = e.bitfield ? `, ${e.since}, true)` : e.since !== 1 ? `, ${e.since})` : ")"
  return call("  ", `e(${q(e.name)}, [`, entries, `]${rest}`)
}

/** TypeScript type of one decoded argument in a codec's struct. */
const fieldType = (a: ParsedArg): string => {
  switch (a.type) {
    case "int":
    case "uint":
    case "fixed":
    case "fd":
      return "number"
    case "string":
      return a.nullable ? "string | null" : "string"
    case "object":
      return a.nullable ? "number | null" : "number"
    case "new_id":
      return a.interface === null ? "UntypedNewId" : "number"
    case "array":
      return "Uint8Array"
  }
}

interface CodecName {
  readonly message: ParsedMessage
  readonly direction: Direction
  readonly opcode: number
  readonly value: string
  readonly type: string
}

const codecNames = (i: ParsedInterface, interfaceIds: ReadonlySet<string>): readonly CodecName[] => {
  const requestNames = new Set(i.requests.map((m) => m.name))
  const shared = new Set(i.events.map((m) => m.name).filter((n) => requestNames.has(n)))
  const name = (m: ParsedMessage, direction: Direction, opcode: number): CodecName => {
    const plain = safeIdentifier(`${i.name}_${m.name}`)
    const suffix = shared.has(m.name) || interfaceIds.has(plain) ? `_${direction}` : ""
    return {
      message: m,
      direction,
      opcode,
      value: safeIdentifier(`${i.name}_${m.name}${suffix}`),
      type: `${pascalCase(i.name)}${pascalCase(m.name)}${direction === "request" ? "Request" : "Event"}`
    }
  }
  return [
    ...i.requests.map((m, op) => name(m, "request", op)),
    ...i.events.map((m, op) => name(m, "event", op))
  ]
}

/** Names the generated module imports or declares itself; interface and codec names must avoid them. */
const fixedNames = [
  "a", "m", "e", "iface", "codec", "protocol", "MessageCodec", "InterfaceDesc", "ProtocolDesc", "UntypedNewId"
]

export const header = (file: string): string =>
  `// @generated by scripts/codegen.ts from protocols/${file} — do not edit\n`

/** Generates the module text for one parsed protocol. */
export const emitModule = (p: ParsedProtocol): string => {
  const taken = new Set(fixedNames)
  const claim = (id: string, what: string): string => {
    if (taken.has(id)) throw new Error(`${p.file}: generated name "${id}" (${what}) is used twice`)
    taken.add(id)
    return id
  }
  const ifaceIds = p.interfaces.map((i) => claim(safeIdentifier(i.name), `interface ${i.name}`))
  const ifaceIdSet = new Set(ifaceIds)
  const codecs = p.interfaces.map((i) =>
    codecNames(i, ifaceIdSet).map((c) => {
      claim(c.value, `codec of ${i.name}.${c.message.name}`)
      claim(c.type, `struct of ${i.name}.${c.message.name}`)
      return c
    })
  )

  const all = p.interfaces.flatMap((i) => [...i.requests, ...i.events])
  const usesEnums = p.interfaces.some((i) => i.enums.length > 0)
  const usesArgs = all.some((m) => m.args.length > 0)
  const usesUntyped = all.some((m) => m.args.some((a) => a.type === "new_id" && a.interface === null))
  const builders = [...(usesArgs ? ["arg as a"] : []), ...(usesEnums ? ["enm as e"] : []), "iface", "msg as m"]
  const types = ["InterfaceDesc", "ProtocolDesc", ...(usesUntyped ? ["UntypedNewId"] : [])]

  const out: string[] = []
  out.push(header(p.file))
  out.push(`import { ${builders.join(", ")} } from "../protocol/build.js"`)
  out.push(`import { codec, type MessageCodec } from "../protocol/codec.js"`)
  out.push(`import type { ${types.join(", ")} } from "../protocol/types.js"`)
  out.push("")

  p.interfaces.forEach((i, n) => {
    const head = `${doc(i.summary)}export const ${ifaceIds[n]!}: InterfaceDesc = iface(${q(i.name)}, ${i.version}, `
    const parts = [list(i.requests.map(emitMessage)), list(i.events.map(emitMessage))]
    if (i.enums.length > 0) parts.push(list(i.enums.map(emitEnum)))
    out.push(`${head}${parts.join(", ")})`)
    out.push("")
  })

  out.push(call("", `export const protocol: ProtocolDesc = { name: ${q(p.name)}, file: ${q(p.file)}, interfaces: [`,
    ifaceIds, "] }"))

  p.interfaces.forEach((i, n) => {
    out.push("")
    out.push(`// ${i.name}`)
    for (const c of codecs[n]!) {
      const fields = c.message.args.map((a) => `readonly ${a.name}: ${fieldType(a)}`)
      out.push("")
      out.push(doc(c.message.summary) + (fields.length === 0
        ? `export interface ${c.type} {}`
        : call("", `export interface ${c.type} { `, fields, " }", ";")))
      out.push(`export const ${c.value}: MessageCodec<${c.type}> = codec(${ifaceIds[n]!}, ${q(c.direction)}, ${c.opcode})`)
    }
  })
  out.push("")
  return out.join("\n")
}

/** The generator's core: XML text → module text. `file` is the path under `protocols/`. */
export const generateModule = (xmlText: string, file: string): string => emitModule(parseProtocol(xmlText, file))

// ---------------------------------------------------------------------------------------------
// Whole tree

/** Module names (without `.ts`) for XML paths under `protocols/`; see the top comment for clashes. */
export const moduleNames = (files: readonly string[]): ReadonlyMap<string, string> => {
  const base = (f: string): string => path.posix.basename(f, ".xml")
  const counts = new Map<string, number>()
  for (const f of files) counts.set(base(f), (counts.get(base(f)) ?? 0) + 1)
  const names = new Map<string, string>()
  const used = new Set<string>()
  for (const f of files) {
    const b = base(f)
    const name = (counts.get(b) ?? 0) > 1 || b === "index" ? `${f.split("/")[0]!}-${b}` : b
    if (used.has(name)) throw new Error(`protocols/${f}: module name "${name}" is used twice`)
    used.add(name)
    names.set(f, name)
  }
  return names
}

const byCodeUnits = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0)

/** All `*.xml` files under `dir`, as sorted `/`-separated paths relative to it. */
export const findProtocolFiles = (dir: string): readonly string[] => {
  const found: string[] = []
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const sub = rel === "" ? entry.name : `${rel}/${entry.name}`
      if (entry.isDirectory()) walk(sub)
      else if (entry.isFile() && entry.name.endsWith(".xml")) found.push(sub)
    }
  }
  walk("")
  return found.sort(byCodeUnits)
}

const emitIndex = (modules: readonly { readonly module: string; readonly id: string }[]): string => {
  const out: string[] = [header("**/*.xml")]
  out.push(`import type { InterfaceDesc, ProtocolDesc } from "../protocol/types.js"`)
  for (const m of modules) out.push(`import * as ${m.id} from "./${m.module}.js"`)
  out.push("")
  out.push(call("", "export { ", modules.map((m) => m.id), " }"))
  out.push("")
  out.push("/** Every protocol, sorted by XML path under `protocols/`. */")
  out.push(`export const allProtocols: readonly ProtocolDesc[] = ${list(modules.map((m) => `  ${m.id}.protocol`))}`)
  out.push("")
  out.push("/** Every interface of `allProtocols`, in order; a name defined by two files appears twice. */")
  out.push("export const allInterfaces: readonly InterfaceDesc[] = allProtocols.flatMap((p) => p.interfaces)")
  out.push("")
  return out.join("\n")
}

/** Generates every output file in memory: file name under `src/generated/` → contents. */
export const generateAll = (root: string): ReadonlyMap<string, string> => {
  const protocolsDir = path.join(root, "protocols")
  const files = findProtocolFiles(protocolsDir)
  if (files.length === 0) throw new Error(`no *.xml files under ${protocolsDir}`)
  const names = moduleNames(files)
  const out = new Map<string, string>()
  const modules: { module: string; id: string }[] = []
  const ids = new Set<string>(["allProtocols", "allInterfaces"])
  for (const f of files) {
    const module = names.get(f)!
    const id = safeIdentifier(module)
    if (ids.has(id)) throw new Error(`protocols/${f}: namespace name "${id}" is used twice in index.ts`)
    ids.add(id)
    out.set(`${module}.ts`, generateModule(fs.readFileSync(path.join(protocolsDir, f), "utf8"), f))
    modules.push({ module, id })
  }
  out.set("index.ts", emitIndex(modules))
  return out
}

export interface CheckResult {
  readonly stale: readonly string[]
  readonly missing: readonly string[]
  readonly extra: readonly string[]
  /** Per stale file, the first differing line. */
  readonly details: readonly string[]
}

const listGenerated = (dir: string): readonly string[] => {
  if (!fs.existsSync(dir)) return []
  const found: string[] = []
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const sub = rel === "" ? entry.name : `${rel}/${entry.name}`
      if (entry.isDirectory()) walk(sub)
      else found.push(sub)
    }
  }
  walk("")
  return found.sort(byCodeUnits)
}

const firstDifference = (file: string, want: string, have: string): string => {
  const w = want.split("\n")
  const h = have.split("\n")
  for (let i = 0; i < Math.max(w.length, h.length); i++) {
    if (w[i] !== h[i]) {
      const show = (s: string | undefined): string => (s === undefined ? "<end of file>" : s.slice(0, 160))
      return `${file}:${i + 1}\n  - committed: ${show(h[i])}\n  + generated: ${show(w[i])}`
    }
  }
  return `${file}: differs`
}

/** Compares a fresh in-memory generation with `src/generated/` under `root`. */
export const checkGenerated = (root: string): CheckResult => {
  const dir = path.join(root, "src", "generated")
  const want = generateAll(root)
  const have = new Set(listGenerated(dir))
  const stale: string[] = []
  const missing: string[] = []
  const details: string[] = []
  for (const [file, text] of want) {
    if (!have.has(file)) {
      missing.push(file)
      continue
    }
    const current = fs.readFileSync(path.join(dir, file), "utf8")
    if (current !== text) {
      stale.push(file)
      details.push(firstDifference(file, text, current))
    }
  }
  const extra = [...have].filter((f) => !want.has(f))
  return { stale, missing, extra, details }
}

/** Writes the generated tree under `root`, removing files that are no longer generated. */
export const writeGenerated = (root: string): { readonly written: number; readonly removed: readonly string[] } => {
  const dir = path.join(root, "src", "generated")
  const want = generateAll(root)
  fs.mkdirSync(dir, { recursive: true })
  let written = 0
  for (const [file, text] of want) {
    const target = path.join(dir, file)
    if (!fs.existsSync(target) || fs.readFileSync(target, "utf8") !== text) {
      fs.writeFileSync(target, text)
      written++
    }
  }
  const removed = listGenerated(dir).filter((f) => !want.has(f))
  for (const f of removed) fs.rmSync(path.join(dir, f))
  return { written, removed }
}

const main = (): number => {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
  if (process.argv.includes("--check")) {
    const r = checkGenerated(root)
    if (r.stale.length + r.missing.length + r.extra.length === 0) {
      console.log("src/generated/ is up to date")
      return 0
    }
    console.error("src/generated/ is out of date; run `npm run codegen`")
    for (const f of r.stale) console.error(`  stale:   src/generated/${f}`)
    for (const f of r.missing) console.error(`  missing: src/generated/${f}`)
    for (const f of r.extra) console.error(`  extra:   src/generated/${f}`)
    for (const d of r.details) console.error(d)
    return 1
  }
  const { written, removed } = writeGenerated(root)
  console.log(`src/generated/: ${written} file(s) written, ${removed.length} removed`)
  for (const f of removed) console.log(`  removed ${f}`)
  return 0
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = main()
}

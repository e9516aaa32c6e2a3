/**
 * The interface registry: interface name → descriptor, and (interface, opcode) → message,
 * over the generated tables. Also the `Protocols` service tag and its layer.
 *
 * Clashes: when two XML files define an interface with the same name (wayland-protocols keeps
 * e.g. an `unstable/` copy beside a `stable/` one), one definition is chosen and every clash is
 * listed in `clashes`. Precedence: the higher `version`; on a tie the file ranked first by
 * directory (`wayland/`, `stable/`, `staging/`, `unstable/`, anything else), then by path.
 * `compatible` says whether the other definition's messages have the same names and argument
 * codes as the chosen one for every opcode they share, i.e. whether the choice is invisible on
 * the wire up to the shadowed version.
 *
 * Not here: object ids and per-connection state (src/shadow/).
 */
import { Context, Layer } from "effect"
import { allProtocols } from "../generated/index.js"
import type { InterfaceDesc, MessageDesc, ProtocolDesc } from "./types.js"

export interface InterfaceClash {
  readonly name: string
  /** File (under `protocols/`) whose definition the registry uses. */
  readonly chosen: string
  /** The other files defining the same name. */
  readonly shadowed: readonly string[]
  /** True when every shadowed definition agrees with the chosen one on shared opcodes. */
  readonly compatible: boolean
}

export interface InterfaceRegistry {
  /** All interfaces, one per name. */
  readonly interfaces: ReadonlyMap<string, InterfaceDesc>
  readonly clashes: readonly InterfaceClash[]
  get(name: string): InterfaceDesc | undefined
  /** The request with this opcode, by interface name or descriptor. */
  request(iface: string | InterfaceDesc, opcode: number): MessageDesc | undefined
  /** The event with this opcode, by interface name or descriptor. */
  event(iface: string | InterfaceDesc, opcode: number): MessageDesc | undefined
}

const dirRank = (file: string): number => {
  const top = file.split("/")[0]
  const rank = ["wayland", "stable", "staging", "unstable"].indexOf(top ?? "")
  return rank === -1 ? 4 : rank
}

interface Candidate {
  readonly desc: InterfaceDesc
  readonly file: string
}

const better = (a: Candidate, b: Candidate): boolean => {
  if (a.desc.version !== b.desc.version) return a.desc.version > b.desc.version
  const ra = dirRank(a.file)
  const rb = dirRank(b.file)
  if (ra !== rb) return ra < rb
  return a.file < b.file
}

const sameMessages = (chosen: readonly MessageDesc[], other: readonly MessageDesc[]): boolean => {
  const n = Math.min(chosen.length, other.length)
  for (let i = 0; i < n; i++) {
    const a = chosen[i]!
    const b = other[i]!
    if (a.name !== b.name || a.codes.length !== b.codes.length) return false
    for (let k = 0; k < a.codes.length; k++) if (a.codes[k] !== b.codes[k]) return false
  }
  return true
}

const compatible = (chosen: InterfaceDesc, other: InterfaceDesc): boolean =>
  sameMessages(chosen.requests, other.requests) && sameMessages(chosen.events, other.events)

/** Builds a registry over these protocols, resolving name clashes as documented above. */
export const makeRegistry = (protocols: readonly ProtocolDesc[]): InterfaceRegistry => {
  const candidates = new Map<string, Candidate[]>()
  for (const p of protocols) {
    for (const desc of p.interfaces) {
      const list = candidates.get(desc.name)
      if (list === undefined) candidates.set(desc.name, [{ desc, file: p.file }])
      else list.push({ desc, file: p.file })
    }
  }
  const interfaces = new Map<string, InterfaceDesc>()
  const clashes: InterfaceClash[] = []
  for (const [name, list] of candidates) {
    let best = list[0]!
    for (const c of list) if (better(c, best)) best = c
    interfaces.set(name, best.desc)
    if (list.length > 1) {
      const others = list.filter((c) => c !== best)
      clashes.push({
        name,
        chosen: best.file,
        shadowed: others.map((c) => c.file),
        compatible: others.every((c) => compatible(best.desc, c.desc))
      })
    }
  }
  const lookup = (iface: string | InterfaceDesc): InterfaceDesc | undefined =>
    typeof iface === "string" ? interfaces.get(iface) : iface
  return {
    interfaces,
    clashes,
    get: (name) => interfaces.get(name),
    request: (iface, opcode) => lookup(iface)?.requests[opcode],
    event: (iface, opcode) => lookup(iface)?.events[opcode]
  }
}

let cached: InterfaceRegistry | undefined

/** The registry over every generated protocol (built once, on first use). */
export const defaultRegistry = (): InterfaceRegistry => (cached ??= makeRegistry(allProtocols))

export class Protocols extends Context.Tag("sommelier/Protocols")<Protocols, InterfaceRegistry>() {}

/** `Protocols` over every generated protocol. */
export const layer: Layer.Layer<Protocols> = Layer.sync(Protocols, defaultRegistry)

/** `Protocols` over a chosen set of protocols (tests, restricted proxies). */
export const layerFrom = (protocols: readonly ProtocolDesc[]): Layer.Layer<Protocols> =>
  Layer.sync(Protocols, () => makeRegistry(protocols))

/**
 * Fuzz cases from seed traffic: pick a session and a frame in it, replay the frames before it
 * unchanged, then send that frame mutated — size, opcode, sender, argument words, string and
 * array lengths, fd counts, truncations, extensions, bit flips, splices, duplicates, drops,
 * swaps — or random bytes, or the rest of the session cut into random chunks (which must pass).
 * Some cases also shrink a limit or stall a peer so the limit paths run too.
 *
 * Pure: a case is data (see `CaseSpec`), generated from a seeded `Rng`; harness.ts runs it in
 * memory, test/robustness/ runs the request side of it against a real compositor.
 */
import type { ConnectionLimits } from "../../src/proxy/connection.js"
import { ArgCode } from "../../src/protocol/types.js"
import { readU32, writeU32 } from "../../src/wire/index.js"
import { sessions, type Direction, type Frame, type Session } from "./corpus.js"
import type { Rng } from "./rng.js"

export type Step =
  /** Bytes (and `fds` fresh fds, riding on the first chunk) arriving from one side. */
  | { readonly kind: "data"; readonly direction: Direction; readonly bytes: Uint8Array; readonly fds: number; readonly chunks?: ReadonlyArray<number> }
  /** That side closes its socket: reads see EOF. */
  | { readonly kind: "eof"; readonly side: "client" | "host" }
  /** That side is gone: reads see EOF, writes fail with EPIPE (nothing is read until the next step). */
  | { readonly kind: "vanish"; readonly side: "client" | "host" }
  /** A stalled peer starts reading again. */
  | { readonly kind: "drain"; readonly side: "client" | "host" }

/** What the case's outcome must be, beyond the invariants every case checks. */
export type Oracle =
  /** Valid traffic: the connection must not end before the final client EOF. */
  | "survive"
  /** The first frame of the first step has a header libwayland rejects: the sender is cut. */
  | "badHeader"
  /** The first frame of the first step names a sender that does not exist (checked when it is sent). */
  | "unknownSender"

export interface CaseSpec {
  readonly label: string
  /** Seed session whose first `prefix` frames are replayed unchanged first. */
  readonly session: string
  readonly prefix: number
  readonly steps: ReadonlyArray<Step>
  readonly limits?: Partial<ConnectionLimits>
  /** Peers that do not read (their writes queue up) from the start. */
  readonly stall?: { readonly client?: boolean; readonly host?: boolean }
  readonly oracle?: Oracle
  /**
   * `steps[step..]` are the session's frames `[frame, frame + count)` unchanged (a real-socket
   * runner replays those with live serials and pacing instead of as raw bytes).
   */
  readonly rest?: { readonly step: number; readonly frame: number; readonly count: number }
}

export interface GenerateOptions {
  /** Only mutate frames of this direction (the real-socket fuzz sends requests only). */
  readonly direction?: Direction
  /** Only these seed sessions. */
  readonly sessions?: ReadonlyArray<string>
  /** No limit variants, stalls or peer EOFs (real sockets run with the server's limits). */
  readonly plain?: boolean
  /** Use only each session's first N frames. */
  readonly frameLimit?: number
}

const u32Interesting = [0, 1, 2, 3, 4, 7, 8, 0x7f, 0x80, 0xff, 0x100, 0xfff, 0x1000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffc, 0xfffffffd, 0xfffffffe, 0xffffffff, 0xff000000, 0xff000001, 0xfeffffff]

const setSize = (b: Uint8Array, size: number): void => {
  b[6] = size & 0xff
  b[7] = (size >>> 8) & 0xff
}
const sizeOf = (b: Uint8Array): number => b[6]! | (b[7]! << 8)
const opcodeOf = (b: Uint8Array): number => b[4]! | (b[5]! << 8)

/** Byte offsets (in the frame) of the length words of string and array arguments. */
const lengthWords = (f: Frame): number[] => {
  const desc = f.desc
  if (desc === null) return []
  const out: number[] = []
  const b = f.bytes
  let p = 8
  for (let i = 0; i < desc.codes.length && p + 4 <= b.length; i++) {
    const code = desc.codes[i]!
    if (code === ArgCode.String || code === ArgCode.Array || code === ArgCode.NewIdUntyped) {
      out.push(p)
      p += 4 + ((readU32(b, p) + 3) & ~3)
      if (code === ArgCode.NewIdUntyped) p += 8
    } else if (code !== ArgCode.Fd) {
      p += 4
    }
  }
  return out
}

const idCache = new Map<string, number[]>()

/** Ids the session used so far (senders of earlier frames): plausible but maybe wrong objects. */
const knownIds = (s: Session, k: number): number[] => {
  const key = `${s.name}:${k}`
  let out = idCache.get(key)
  if (out === undefined) {
    const ids = new Set<number>([1])
    for (let i = 0; i < k; i++) ids.add(readU32(s.frames[i]!.bytes, 0))
    idCache.set(key, (out = [...ids]))
  }
  return out
}

const randomChunks = (rng: Rng, length: number): number[] | undefined => {
  if (length < 2 || !rng.chance(0.3)) return undefined
  const n = rng.range(1, Math.min(6, length - 1))
  const cuts = new Set<number>()
  for (let i = 0; i < n; i++) cuts.add(rng.range(1, length - 1))
  return [...cuts].sort((a, b) => a - b)
}

const dataStep = (rng: Rng, direction: Direction, bytes: Uint8Array, fds: number): Step => {
  const chunks = randomChunks(rng, bytes.length)
  return chunks === undefined ? { kind: "data", direction, bytes, fds } : { kind: "data", direction, bytes, fds, chunks }
}

/** Consecutive frames of one direction as one step each (as one wake-up would read them). */
const framesAsSteps = (rng: Rng, frames: ReadonlyArray<Frame>, only?: Direction): Step[] => {
  const out: Step[] = []
  let i = 0
  while (i < frames.length) {
    const dir = frames[i]!.direction
    let j = i
    let len = 0
    let fds = 0
    while (j < frames.length && frames[j]!.direction === dir) {
      len += frames[j]!.bytes.length
      fds += frames[j]!.fds
      j++
    }
    if (only === undefined || only === dir) {
      const buf = new Uint8Array(len)
      let o = 0
      for (let x = i; x < j; x++) {
        buf.set(frames[x]!.bytes, o)
        o += frames[x]!.bytes.length
      }
      out.push(dataStep(rng, dir, buf, fds))
    }
    i = j
  }
  return out
}

type Mutator = (rng: Rng, f: Frame, s: Session, k: number) => { bytes: Uint8Array; fds: number; label: string; oracle?: Oracle }

const mutators: ReadonlyArray<readonly [string, number, Mutator]> = [
  [
    "size",
    12,
    (rng, f) => {
      const b = f.bytes.slice()
      const size = sizeOf(b)
      const v = rng.pick([0, 4, 6, size - 4, size - 1, size + 1, size + 2, size + 4, size + 64, 4092, 4096, 4100, 0xfffc, 0xffff, rng.int(0x10000)])
      const nv = Math.max(0, Math.min(0xffff, v))
      setSize(b, nv)
      const bad = nv < 8 || (nv & 3) !== 0 || nv > 4096
      return { bytes: b, fds: f.fds, label: `size ${size}→${nv}`, ...(bad ? { oracle: "badHeader" as const } : {}) }
    }
  ],
  [
    "opcode",
    8,
    (rng, f) => {
      const b = f.bytes.slice()
      const op = opcodeOf(b)
      const v = rng.pick([op + 1, Math.max(0, op - 1), rng.int(16), 0xffff, (f.desc?.opcode ?? op) + 2])
      b[4] = v & 0xff
      b[5] = (v >>> 8) & 0xff
      return { bytes: b, fds: f.fds, label: `opcode ${op}→${v}` }
    }
  ],
  [
    "sender",
    8,
    (rng, f, s, k) => {
      const b = f.bytes.slice()
      const old = readU32(b, 0)
      const v = rng.pick([0, 1, 2, old + 1, old - 1, 0xff000000, 0xffffffff, rng.u32(), rng.pick(knownIds(s, k))]) >>> 0
      writeU32(b, 0, v)
      return { bytes: b, fds: f.fds, label: `sender ${old}→${v}`, oracle: "unknownSender" }
    }
  ],
  [
    "word",
    14,
    (rng, f, s, k) => {
      const b = f.bytes.slice()
      const words = (b.length - 8) >>> 2
      if (words === 0) return { bytes: b, fds: f.fds + 1, label: "no body: one fd too many" }
      const at = 8 + 4 * rng.int(words)
      const old = readU32(b, at)
      const v = rng.pick([...u32Interesting, old + 1, old - 1, old + 4, rng.pick(knownIds(s, k)), rng.u32()]) >>> 0
      writeU32(b, at, v)
      return { bytes: b, fds: f.fds, label: `word @${at} ${old}→${v}` }
    }
  ],
  [
    "length",
    12,
    (rng, f) => {
      const b = f.bytes.slice()
      const at = lengthWords(f)
      if (at.length === 0) {
        writeU32(b, b.length - 4 >= 8 ? b.length - 4 : 4, rng.pick(u32Interesting))
        return { bytes: b, fds: f.fds, label: "no length word: last word" }
      }
      const p = rng.pick(at)
      const old = readU32(b, p)
      const rest = b.length - p - 4
      const v = rng.pick([0, 1, old - 1, old + 1, old + 3, old + 4, old + 5, rest, rest + 1, rest - 1, 0xffffffff, 0xfffffffd, 0xfffffffc, 0x80000000]) >>> 0
      writeU32(b, p, v)
      return { bytes: b, fds: f.fds, label: `length @${p} ${old}→${v}` }
    }
  ],
  [
    "fds",
    8,
    (rng, f) => {
      // Now and then a flood around the default fds-in-flight limit (1024).
      const v = rng.chance(0.05) ? rng.range(1020, 1100) : Math.max(0, rng.pick([0, f.fds - 1, f.fds + 1, f.fds + 2, f.fds + rng.range(3, 60)]))
      return { bytes: f.bytes, fds: v, label: `fds ${f.fds}→${v}` }
    }
  ],
  [
    "truncate",
    8,
    (rng, f) => {
      const cut = rng.int(f.bytes.length)
      const b = f.bytes.slice(0, cut)
      if (cut >= 8 && rng.chance(0.5)) {
        const fixed = cut & ~3
        setSize(b, fixed)
        return { bytes: b.slice(0, fixed), fds: f.fds, label: `truncated to ${fixed}, size fixed` }
      }
      return { bytes: b, fds: f.fds, label: `truncated to ${cut}` }
    }
  ],
  [
    "extend",
    5,
    (rng, f) => {
      const n = rng.range(1, 8)
      const b = new Uint8Array(f.bytes.length + 4 * n)
      b.set(f.bytes)
      for (let i = 0; i < n; i++) writeU32(b, f.bytes.length + 4 * i, rng.pick(u32Interesting))
      setSize(b, Math.min(0xffff, b.length))
      return { bytes: b, fds: f.fds, label: `extended by ${n} words` }
    }
  ],
  [
    "bitflip",
    8,
    (rng, f) => {
      const b = f.bytes.slice()
      const n = rng.range(1, 4)
      for (let i = 0; i < n; i++) b[rng.int(b.length)]! ^= 1 << rng.int(8)
      return { bytes: b, fds: f.fds, label: `${n} bits flipped` }
    }
  ],
  [
    "splice",
    5,
    (rng, f) => {
      const b = f.bytes.slice()
      const at = rng.int(b.length)
      const len = rng.range(1, Math.max(1, b.length - at))
      b.set(rng.bytes(len).subarray(0, b.length - at), at)
      return { bytes: b, fds: f.fds, label: `${len} random bytes at ${at}` }
    }
  ],
  [
    "random",
    6,
    (rng) => {
      const b = rng.bytes(rng.range(1, 600))
      return { bytes: b, fds: rng.chance(0.2) ? rng.range(1, 4) : 0, label: `${b.length} random bytes` }
    }
  ],
  [
    "random-header",
    4,
    (rng, f, s, k) => {
      // A well-framed message of random content to a plausible object: exercises argument checks.
      const words = rng.range(0, 12)
      const b = new Uint8Array(8 + 4 * words)
      writeU32(b, 0, rng.pick(knownIds(s, k)))
      writeU32(b, 4, ((b.length << 16) | rng.int(8)) >>> 0)
      for (let i = 0; i < words; i++) writeU32(b, 8 + 4 * i, rng.chance(0.5) ? rng.pick(u32Interesting) : rng.u32())
      return { bytes: b, fds: rng.chance(0.2) ? 1 : 0, label: `random ${b.length}-byte message` }
    }
  ]
]
const totalWeight = mutators.reduce((n, [, w]) => n + w, 0)

const pickMutator = (rng: Rng): readonly [string, number, Mutator] => {
  let x = rng.int(totalWeight)
  for (const m of mutators) {
    if (x < m[1]) return m
    x -= m[1]
  }
  return mutators[0]!
}

const limitVariant = (rng: Rng): { limits: Partial<ConnectionLimits>; stall?: { client?: boolean; host?: boolean }; label: string } => {
  switch (rng.int(5)) {
    case 0: {
      const v = rng.pick([16, 32, 64, 128])
      return { limits: { maxMessageSize: v }, label: `maxMessageSize ${v}` }
    }
    case 1: {
      const v = rng.range(1, 12)
      return { limits: { maxObjects: v }, label: `maxObjects ${v}` }
    }
    case 2: {
      const v = rng.range(0, 2)
      return { limits: { maxFdsInFlight: v }, label: `maxFdsInFlight ${v}` }
    }
    case 3: {
      const v = rng.range(0, 512)
      return { limits: { maxClientBacklog: v }, stall: { client: true }, label: `client stalled, maxClientBacklog ${v}` }
    }
    default: {
      const v = rng.range(0, 512)
      return { limits: { maxHostBacklog: v }, stall: { host: true }, label: `host stalled, maxHostBacklog ${v}` }
    }
  }
}

/** One fuzz case from `rng`. */
export const generateCase = (rng: Rng, options: GenerateOptions = {}): CaseSpec => {
  const pool = sessions().filter((s) => options.sessions === undefined || options.sessions.includes(s.name))
  const picked = rng.pick(pool)
  const s: Session = options.frameLimit === undefined ? picked : { name: picked.name, frames: picked.frames.slice(0, options.frameLimit) }
  const candidates: number[] = []
  for (let i = 0; i < s.frames.length; i++) if (options.direction === undefined || s.frames[i]!.direction === options.direction) candidates.push(i)
  const k = rng.pick(candidates)
  const f = s.frames[k]!
  const only = options.direction
  /** `head`, then 0–12 unchanged frames from `from` on. */
  const withRest = (head: Step[], from: number): Pick<CaseSpec, "steps" | "rest"> => {
    const frames = s.frames.slice(from, from + rng.range(0, 12))
    return { steps: [...head, ...framesAsSteps(rng, frames, only)], rest: { step: head.length, frame: from, count: frames.length } }
  }

  const variant = options.plain !== true && rng.chance(0.1) ? limitVariant(rng) : null
  const extra = (spec: CaseSpec): CaseSpec => {
    if (variant === null) return spec
    const { oracle: _drop, ...rest } = spec
    return {
      ...rest,
      label: `${spec.label}; ${variant.label}`,
      limits: variant.limits,
      ...(variant.stall !== undefined ? { stall: variant.stall } : {}),
      steps: variant.stall !== undefined && rng.chance(0.5) ? [...spec.steps, { kind: "drain", side: variant.stall.client === true ? "client" : "host" }] : spec.steps
    }
  }

  const kind = rng.int(100)
  if (kind < 6) {
    // Valid traffic cut at random points must pass untouched.
    const steps = framesAsSteps(rng, s.frames.slice(k), only).map((st) =>
      st.kind === "data" && st.bytes.length > 1 ? { ...st, chunks: randomChunks(rng, st.bytes.length) ?? [rng.range(1, st.bytes.length - 1)] } : st
    )
    return extra({
      label: `${s.name}@${k}: rest of the session in random chunks`,
      session: s.name,
      prefix: k,
      steps,
      oracle: "survive",
      rest: { step: 0, frame: k, count: s.frames.length - k }
    })
  }
  if (kind < 10) {
    const body = withRest([dataStep(rng, f.direction, f.bytes, f.fds), dataStep(rng, f.direction, f.bytes, f.fds)], k + 1)
    return extra({ label: `${s.name}@${k}: duplicated`, session: s.name, prefix: k, ...body })
  }
  if (kind < 13) {
    return extra({ label: `${s.name}@${k}: dropped`, session: s.name, prefix: k, ...withRest([], k + 1) })
  }
  if (kind < 16 && k + 1 < s.frames.length) {
    const g = s.frames[k + 1]!
    const body = withRest([dataStep(rng, g.direction, g.bytes, g.fds), dataStep(rng, f.direction, f.bytes, f.fds)], k + 2)
    return extra({ label: `${s.name}@${k}: swapped with the next frame`, session: s.name, prefix: k, ...body })
  }
  if (kind < 20 && options.plain !== true) {
    // A peer goes away mid-message.
    const cut = rng.int(f.bytes.length)
    const side = f.direction === "request" ? "client" : "host"
    const gone = rng.chance(0.7) ? side : side === "client" ? "host" : "client"
    if (rng.chance(0.5)) {
      const steps: Step[] = [dataStep(rng, f.direction, f.bytes.slice(0, cut), f.fds), { kind: "eof", side: gone }]
      return extra({ label: `${s.name}@${k}: cut after ${cut} bytes, then EOF`, session: s.name, prefix: k, steps })
    }
    // The peer vanishes while the other side still has traffic for it.
    const after = framesAsSteps(rng, s.frames.slice(k + 1, k + 1 + rng.range(1, 8)))
    const steps: Step[] = [dataStep(rng, f.direction, f.bytes.slice(0, cut), f.fds), { kind: "vanish", side: gone }, ...after]
    return extra({ label: `${s.name}@${k}: cut after ${cut} bytes, then the ${gone} vanishes`, session: s.name, prefix: k, steps })
  }
  const n = kind < 90 ? 1 : rng.range(2, 4)
  let cur: Frame = f
  const labels: string[] = []
  let oracle: Oracle | undefined
  for (let i = 0; i < n; i++) {
    const [name, , m] = pickMutator(rng)
    const r = m(rng, cur, s, k)
    labels.push(`${name}: ${r.label}`)
    if (n === 1) oracle = r.oracle
    // Keep the annotation only while the bytes still are that message.
    cur = { ...cur, bytes: r.bytes, fds: r.fds, desc: r.bytes.length === cur.bytes.length ? cur.desc : null }
  }
  return extra({
    label: `${s.name}@${k} (${f.iface ?? "?"}.${f.desc?.name ?? "?"}, ${f.direction}): ${labels.join("; ")}`,
    session: s.name,
    prefix: k,
    ...withRest([dataStep(rng, f.direction, cur.bytes, cur.fds)], k + 1),
    ...(oracle !== undefined ? { oracle } : {})
  })
}

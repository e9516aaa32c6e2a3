/**
 * Replays the request side of a captured session against a live compositor through the proxy,
 * adjusting only what a live session must: global names in `wl_registry.bind` (by interface),
 * the serial in `xdg_surface.ack_configure` (the live configure's), shm pool fds (a memfd of the
 * size the request names), and waiting where the original client waited — for the globals before
 * a bind, for a configure before its ack, for `delete_id` before an id is reused.
 *
 * Then `sendRaw` sends the fuzz case's own bytes untouched, and `finish` ends with a
 * `wl_display.sync` and waits for its `done` (the client survived) or for EOF (it was cut).
 * Uses the protocol tables to know message shapes; what the client received is judged by
 * test/e2e/raw-client.ts's independent decoder.
 */
import { Effect } from "effect"
import { registry, type Frame, type Session } from "../fuzz/corpus.js"
import { ArgCode } from "../../src/protocol/types.js"
import { memfdCreate } from "../../src/transport/memfd.js"
import { readU32, writeU32 } from "../../src/wire/index.js"
import type { FdClient } from "./raw.js"

const SERVER_IDS = 0xff000000

const readStr = (b: Uint8Array, p: number): { s: string; next: number } => {
  const len = readU32(b, p)
  return { s: Buffer.from(b.subarray(p + 4, p + 4 + Math.max(0, len - 1))).toString("latin1"), next: p + 4 + ((len + 3) & ~3) }
}

/** Capture global name → (interface, occurrence) from the session's own registry events. */
const captureGlobals = (s: Session): Map<number, { iface: string; nth: number }> => {
  const out = new Map<number, { iface: string; nth: number }>()
  const seen = new Map<string, number>()
  for (const f of s.frames) {
    if (f.direction !== "event" || f.iface !== "wl_registry" || f.desc?.name !== "global") continue
    const name = readU32(f.bytes, 8)
    const iface = readStr(f.bytes, 12).s
    const nth = seen.get(iface) ?? 0
    seen.set(iface, nth + 1)
    out.set(name, { iface, nth })
  }
  return out
}

export type ReplayResult = "ok" | "stuck" | "cut"

/**
 * How a byte stream that starts at a frame boundary frames: every header acceptable and the
 * last frame complete, a header libwayland rejects, or a last frame still waiting for bytes
 * (then whatever the client sends next becomes part of it).
 */
export const framing = (b: Uint8Array, maxSize = 4096): "complete" | "bad" | "partial" => {
  let o = 0
  while (o < b.length) {
    if (b.length - o < 8) return "partial"
    const size = readU32(b, o + 4) >>> 16
    if (size < 8 || (size & 3) !== 0 || size > maxSize) return "bad"
    if (b.length - o < size) return "partial"
    o += size
  }
  return "complete"
}

export class Replayer {
  private readonly ifaces = new Map<number, string>([[1, "wl_display"]])
  private readonly zombies = new Set<number>()
  private readonly globals = new Map<string, number[]>()
  private readonly configures = new Map<number, number>()
  private readonly capGlobals: Map<number, { iface: string; nth: number }>
  private seen = 0
  maxId = 1
  /** Everything sent since `record()` (for framing the case's bytes). */
  private recorded: Uint8Array[] | null = null

  constructor(
    readonly client: FdClient,
    readonly session: Session,
    private readonly waitMs = 3000
  ) {
    this.capGlobals = captureGlobals(session)
  }

  /** Folds newly received events into the live state. */
  private sync(): void {
    const ms = this.client.messages
    for (; this.seen < ms.length; this.seen++) {
      const m = ms[this.seen]!
      const iface = this.ifaces.get(m.objectId)
      if (m.objectId === 1 && m.opcode === 1 && m.body.length >= 4) {
        const id = m.body.readUInt32LE(0)
        this.zombies.delete(id)
        this.ifaces.delete(id)
      } else if (iface === "wl_registry" && m.opcode === 0 && m.body.length >= 8) {
        const g = readStr(m.body, 4)
        const list = this.globals.get(g.s) ?? []
        list.push(m.body.readUInt32LE(0))
        this.globals.set(g.s, list)
      } else if (iface === "xdg_surface" && m.opcode === 0 && m.body.length >= 4) {
        this.configures.set(m.objectId, m.body.readUInt32LE(0))
      } else if (iface === "wl_callback" && m.opcode === 0) {
        this.zombies.add(m.objectId)
      }
    }
  }

  private wait(cond: () => boolean): Effect.Effect<boolean> {
    return this.client.waitFor(() => {
      this.sync()
      return cond()
    }, this.waitMs)
  }

  /** The capture's first `n` frames' requests, adjusted and paced. */
  replayPrefix(n: number): Effect.Effect<ReplayResult> {
    const self = this
    return Effect.gen(function* () {
      for (const f of self.session.frames.slice(0, n)) {
        if (f.direction !== "request") continue
        const r = yield* self.replayFrame(f)
        if (r !== "ok") return r
      }
      return "ok" as const
    })
  }

  private replayFrame(f: Frame): Effect.Effect<ReplayResult> {
    const self = this
    return Effect.gen(function* () {
      const desc = f.desc
      const b = f.bytes.slice()
      const sender = readU32(b, 0)
      if (desc === null) return "stuck" as const
      if (f.iface === "wl_registry" && desc.name === "bind") {
        const cap = self.capGlobals.get(readU32(b, 8))
        if (cap === undefined) return "stuck" as const
        if (!(yield* self.wait(() => (self.globals.get(cap.iface)?.length ?? 0) > cap.nth))) return self.client.eof ? "cut" : "stuck"
        writeU32(b, 8, self.globals.get(cap.iface)![cap.nth]!)
      }
      if (f.iface === "xdg_surface" && desc.name === "ack_configure") {
        if (!(yield* self.wait(() => self.configures.has(sender)))) return self.client.eof ? "cut" : "stuck"
        writeU32(b, 8, self.configures.get(sender)!)
        self.configures.delete(sender)
      }
      // New ids: wait until a reused id is free again (its delete_id arrived), then record it.
      let p = 8
      for (let i = 0; i < desc.codes.length; i++) {
        const code = desc.codes[i]!
        if (code === ArgCode.String || code === ArgCode.Array) p += 4 + ((readU32(b, p) + 3) & ~3)
        else if (code === ArgCode.NewIdUntyped) {
          const s = readStr(b, p)
          const id = readU32(b, s.next + 4)
          if (!(yield* self.wait(() => !self.ifaces.has(id)))) return self.client.eof ? "cut" : "stuck"
          self.ifaces.set(id, s.s)
          self.maxId = Math.max(self.maxId, id)
          p = s.next + 8
        } else if (code === ArgCode.NewId) {
          const id = readU32(b, p)
          if (!(yield* self.wait(() => !self.ifaces.has(id)))) return self.client.eof ? "cut" : "stuck"
          self.ifaces.set(id, desc.argInterfaces[i] ?? "?")
          self.maxId = Math.max(self.maxId, id)
          p += 4
        } else if (code !== ArgCode.Fd) p += 4
      }
      if (desc.destructor && sender < SERVER_IDS) self.zombies.add(sender)
      const fds: number[] = []
      for (let i = 0; i < f.fds; i++) {
        const size = f.iface === "wl_shm" && desc.name === "create_pool" ? Math.max(0, Math.min(readU32(b, 12), 64 << 20)) : 4096
        fds.push(memfdCreate("sommelier-fuzz", size))
      }
      self.recorded?.push(b)
      if (!self.client.send(b, fds)) return "cut" as const
      return "ok" as const
    })
  }

  /** From now on, keep what is sent. */
  record(): void {
    this.recorded = []
  }

  get sentSinceRecord(): Uint8Array {
    return Buffer.concat((this.recorded ?? []).map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength)))
  }

  /** Replays session frames `[from, from + count)` (requests only), adjusted and paced like the prefix. */
  replayFrames(from: number, count: number): Effect.Effect<ReplayResult> {
    const self = this
    return Effect.gen(function* () {
      for (const f of self.session.frames.slice(from, from + count)) {
        if (f.direction !== "request") continue
        // Behind an incomplete frame nothing reaches the compositor: waiting would only time out.
        if (framing(self.sentSinceRecord) !== "complete") {
          self.sendRaw(f.bytes, f.fds)
          continue
        }
        const r = yield* self.replayFrame(f)
        if (r !== "ok") return r
      }
      return "ok" as const
    })
  }

  /** Best effort: learn the new ids in well-framed raw bytes, so the final sync uses a fresh one. */
  private learn(bytes: Uint8Array): void {
    let o = 0
    while (bytes.length - o >= 8) {
      const size = readU32(bytes, o + 4) >>> 16
      if (size < 8 || bytes.length - o < size) return
      const iface = registry.get(this.ifaces.get(readU32(bytes, o)) ?? "")
      const desc = iface?.requests[readU32(bytes, o + 4) & 0xffff]
      if (desc !== undefined) {
        let p = o + 8
        for (let i = 0; i < desc.codes.length && p + 4 <= o + size; i++) {
          const code = desc.codes[i]!
          if (code === ArgCode.NewId) {
            const id = readU32(bytes, p)
            if (id < SERVER_IDS) {
              this.maxId = Math.max(this.maxId, id)
              this.ifaces.set(id, desc.argInterfaces[i] ?? "?")
            }
          }
          if (code === ArgCode.String || code === ArgCode.Array) p += 4 + ((readU32(bytes, p) + 3) & ~3)
          else if (code !== ArgCode.Fd) p += 4
        }
      }
      o += size
    }
  }

  /** Sends bytes exactly as given, `fds` memfds riding on the first chunk. */
  sendRaw(bytes: Uint8Array, fdCount: number, chunks: ReadonlyArray<number> = []): boolean {
    this.learn(bytes)
    // The kernel carries at most 28 fds per sendmsg and the endpoint needs a byte per batch.
    const n = Math.min(fdCount, 28 * Math.max(0, bytes.length - 1) + (bytes.length > 0 ? 28 : 0))
    const fds: number[] = []
    for (let i = 0; i < n; i++) fds.push(memfdCreate("sommelier-fuzz", 4096))
    this.recorded?.push(bytes)
    const cuts = [...chunks.filter((c) => c > 0 && c < bytes.length), bytes.length]
    let from = 0
    for (let i = 0; i < cuts.length; i++) {
      const part = bytes.subarray(from, cuts[i]!)
      from = cuts[i]!
      if (part.length === 0) continue
      if (!this.client.send(part, i === 0 ? fds : [])) return false
    }
    return true
  }

  /** A final roundtrip: "survived" when its done arrives, "cut" at EOF, "hung" otherwise. */
  finish(timeoutMs = 5000): Effect.Effect<"survived" | "cut" | "hung"> {
    const self = this
    return Effect.gen(function* () {
      const id = self.maxId + 1
      const sync = new Uint8Array(12)
      writeU32(sync, 0, 1)
      writeU32(sync, 4, (12 << 16) | 0)
      writeU32(sync, 8, id)
      self.client.send(sync)
      const ok = yield* self.client.waitFor(() => self.client.messages.some((m) => m.objectId === id && m.opcode === 0), timeoutMs)
      if (ok) return "survived" as const
      if (self.client.eof) return "cut" as const
      return "hung" as const
    })
  }
}

/**
 * Data-path throughput over captured real traffic (test/golden/wire/*.json, recorded from
 * wayland-info and weston-simple-shm talking to weston): the proxy's default table-driven path
 * (frame, check, map ids through the shadow table, attribute fds, copy to the output batch) run
 * by the real `Connection` over in-memory endpoints, one core, no syscalls. Next to it the cost of
 * decoding the same messages fully with the wire codec and with the generated Effect Schema
 * codecs, so the choice of where Schema runs is measured.
 *
 * Run: npx tsx scripts/bench/codec.ts  (the bench runner imports runCodecBench)
 */
import { Schema } from "effect"
import { readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { codec } from "../../src/protocol/codec.js"
import { defaultRegistry } from "../../src/protocol/registry.js"
import type { MessageDesc } from "../../src/protocol/types.js"
import { Connection, defaultLimits, setFdCloser } from "../../src/proxy/connection.js"
import { MemoryEndpoint } from "../../src/proxy/memory.js"
import type { ObjectEntry } from "../../src/shadow/table.js"
import { decodeArgs } from "../../src/wire/index.js"

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")

interface Frame {
  readonly direction: "request" | "event"
  readonly bytes: Uint8Array
  readonly fds: number
}

const loadCapture = (name: string): Frame[] => {
  const raw = JSON.parse(readFileSync(join(root, "test", "golden", "wire", `${name}.json`), "utf8")) as Array<{
    direction: "request" | "event"
    hex: string
    fds: number
  }>
  return raw.map((f) => ({ direction: f.direction, bytes: Uint8Array.from(Buffer.from(f.hex, "hex")), fds: f.fds }))
}

/** Consecutive frames of one direction form one batch, as one wake-up would read them. */
const batches = (frames: readonly Frame[]): Array<{ direction: "request" | "event"; buf: Uint8Array; fds: number; count: number }> => {
  const out: Array<{ direction: "request" | "event"; buf: Uint8Array; fds: number; count: number }> = []
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
    const buf = new Uint8Array(len)
    let o = 0
    for (let k = i; k < j; k++) {
      buf.set(frames[k]!.bytes, o)
      o += frames[k]!.bytes.length
    }
    out.push({ direction: dir, buf, fds, count: j - i })
    i = j
  }
  return out
}

const newConnection = (client: MemoryEndpoint, host: MemoryEndpoint): Connection =>
  new Connection(client, host, {
    id: 0,
    registry: defaultRegistry(),
    deniedGlobals: new Set(),
    limits: defaultLimits,
    trace: null,
    onBatch: null,
    onEnd: (r) => {
      throw new Error(`bench connection ended: ${JSON.stringify(r)}`)
    }
  })

/** Resolves each frame's descriptor by replaying the capture one frame per batch. */
const describeFrames = (frames: readonly Frame[]): Array<{ frame: Frame; desc: MessageDesc; iface: string; direction: "request" | "event" }> => {
  const client = new MemoryEndpoint()
  const host = new MemoryEndpoint()
  const conn = newConnection(client, host)
  const out: Array<{ frame: Frame; desc: MessageDesc; iface: string; direction: "request" | "event" }> = []
  for (const f of frames) {
    const sender = f.bytes[0]! | (f.bytes[1]! << 8) | (f.bytes[2]! << 16) | (f.bytes[3]! * 0x1000000)
    const opcode = f.bytes[4]! | (f.bytes[5]! << 8)
    const entry: ObjectEntry | undefined = f.direction === "request" ? conn.shadow.byClient(sender) : conn.shadow.byHost(sender)
    if (entry !== undefined) {
      const desc = f.direction === "request" ? entry.iface.requests[opcode] : entry.iface.events[opcode]
      if (desc !== undefined) out.push({ frame: f, desc, iface: entry.iface.name, direction: f.direction })
    }
    if (f.direction === "request") {
      client.feed(f.bytes, f.fds)
      conn.onClientReadable()
    } else {
      host.feed(f.bytes, f.fds)
      conn.onHostReadable()
    }
  }
  return out
}

export interface CodecBenchRow {
  readonly path: string
  readonly messagesPerSecond: number
  readonly nsPerMessage: number
}

const timeIt = (minMs: number, body: () => number): { perSec: number; ns: number } => {
  // Warm up the JIT, then run whole rounds until minMs has passed.
  for (let i = 0; i < 20; i++) body()
  let n = 0
  const t0 = process.hrtime.bigint()
  let t = t0
  while (Number(t - t0) / 1e6 < minMs) {
    n += body()
    t = process.hrtime.bigint()
  }
  const ns = Number(t - t0) / n
  return { perSec: 1e9 / ns, ns }
}

export const runCodecBench = (options: { readonly minMs?: number } = {}): CodecBenchRow[] => {
  setFdCloser(() => {})
  const minMs = options.minMs ?? 1500
  const infoBatches = batches(loadCapture("wayland-info"))
  const shmBatches = batches(loadCapture("weston-simple-shm"))
  const client = new MemoryEndpoint()
  const host = new MemoryEndpoint()

  // The default path: a fresh connection per replay (the captures start at connect).
  const proxyPath = timeIt(minMs, () => {
    let msgs = 0
    for (const bs of [infoBatches, shmBatches]) {
      const conn = newConnection(client, host)
      for (const b of bs) {
        if (b.direction === "request") {
          client.feed(b.buf, b.fds)
          conn.onClientReadable()
        } else {
          host.feed(b.buf, b.fds)
          conn.onHostReadable()
        }
        msgs += b.count
      }
      client.inFds.length = 0
      host.inFds.length = 0
    }
    return msgs
  })

  const described = [...describeFrames(loadCapture("wayland-info")), ...describeFrames(loadCapture("weston-simple-shm"))]
  const fdQueue = { n: 0, length: 1 << 30, shift(): number { return 1000 } }
  const wireDecode = timeIt(minMs, () => {
    for (const d of described) {
      const r = decodeArgs(d.desc, 1, d.frame.bytes, 8, d.frame.bytes.length - 8, fdQueue)
      if (r._tag !== "Ok") throw new Error(`decode failed: ${r.error.message}`)
    }
    return described.length
  })

  const registry = defaultRegistry()
  const withSchema = described.map((d) => {
    const iface = registry.get(d.iface)!
    const c = codec<unknown>(iface, d.direction, d.desc.opcode)
    const decode = Schema.decodeSync(c.schema)
    const fds = Array.from({ length: d.desc.fdCount }, (_, i) => 1000 + i)
    return { decode, input: { body: d.frame.bytes.subarray(8), fds } }
  })
  const schemaDecode = timeIt(minMs, () => {
    for (const d of withSchema) d.decode(d.input)
    return withSchema.length
  })

  return [
    { path: "proxy default path (frame, check, map ids, fds, batch copy)", messagesPerSecond: proxyPath.perSec, nsPerMessage: proxyPath.ns },
    { path: "wire codec full decode (decodeArgs)", messagesPerSecond: wireDecode.perSec, nsPerMessage: wireDecode.ns },
    { path: "Effect Schema codec decode (generated)", messagesPerSecond: schemaDecode.perSec, nsPerMessage: schemaDecode.ns }
  ]
}

export const formatCodecTable = (rows: readonly CodecBenchRow[]): string => {
  const lines = ["| path (one core, captured real traffic) | messages/s | ns/message |", "|---|---:|---:|"]
  for (const r of rows) lines.push(`| ${r.path} | ${(r.messagesPerSecond / 1e6).toFixed(2)} M | ${r.nsPerMessage.toFixed(0)} |`)
  return lines.join("\n")
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  console.log(formatCodecTable(runCodecBench()))
}

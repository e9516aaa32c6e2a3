/**
 * Micro-benchmark of the wire codec over the captured golden traffic (test/golden/wire/*.json).
 * Run: npx tsx scripts/bench/wire.ts [frames]   (default 1 000 000 frames per measurement)
 *
 * Prints readFrame throughput, decodeArgs alone, encodeArgs alone, and a full
 * decode + re-encode, each as the median of 5 runs. In-memory only; no sockets.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { allProtocols } from "../../src/generated/index.js"
import { ArgCode, type ArgValue, type InterfaceDesc, type MessageDesc, type UntypedNewId } from "../../src/protocol/types.js"
import { decodeArgs, decodeMessage, DEFAULT_MAX_MESSAGE_SIZE, encodeArgs, readFrame } from "../../src/wire/index.js"

const TARGET = Number(process.argv[2] ?? 1_000_000)
const goldenDir = join(import.meta.dirname, "../../test/golden/wire")

interface Frame {
  readonly direction: "request" | "event"
  readonly hex: string
  readonly fds: number
}

const byName = new Map<string, InterfaceDesc>()
for (const p of allProtocols) for (const i of p.interfaces) if (!byName.has(i.name)) byName.set(i.name, i)

// Resolve each captured frame's descriptor by following the conversation, as the golden test does.
const frames: { bytes: Uint8Array; desc: MessageDesc; fds: number }[] = []
for (const file of readdirSync(goldenDir).filter((f) => f.endsWith(".json")).sort()) {
  const objects = new Map<number, InterfaceDesc>([[1, byName.get("wl_display")!]])
  for (const f of JSON.parse(readFileSync(join(goldenDir, file), "utf8")) as Frame[]) {
    const bytes = new Uint8Array(Buffer.from(f.hex, "hex"))
    const fr = readFrame(bytes, 0, bytes.length, DEFAULT_MAX_MESSAGE_SIZE)
    if (fr._tag !== "Frame") throw new Error("bad golden frame")
    const iface = objects.get(fr.objectId)!
    const desc = (f.direction === "request" ? iface.requests : iface.events)[fr.opcode]!
    const r = decodeArgs(desc, fr.objectId, bytes, 8, bytes.length - 8, Array.from({ length: f.fds }, () => 0))
    if (r._tag !== "Ok") throw new Error(r.error.message)
    desc.codes.forEach((c, i) => {
      if (c === ArgCode.NewId) objects.set(r.args[i] as number, byName.get(desc.argInterfaces[i]!)!)
      if (c === ArgCode.NewIdUntyped) {
        const v = r.args[i] as UntypedNewId
        objects.set(v.id, byName.get(v.interface)!)
      }
    })
    frames.push({ bytes, desc, fds: f.fds })
  }
}

// One receive-buffer-sized stream (~64 KiB) of the captured frames repeated, with a parallel
// table of (offset, desc) so the decode loops do not pay for a lookup structure.
const streamFrames: { offset: number; size: number; desc: MessageDesc; fds: number }[] = []
let total = 0
while (total < 64 * 1024) {
  for (const f of frames) {
    streamFrames.push({ offset: total, size: f.bytes.length, desc: f.desc, fds: f.fds })
    total += f.bytes.length
  }
}
const stream = new Uint8Array(total)
for (let i = 0; i < streamFrames.length; i++) stream.set(frames[i % frames.length]!.bytes, streamFrames[i]!.offset)
const perPass = streamFrames.length
const passes = Math.ceil(TARGET / perPass)
const n = passes * perPass

const fdQueue: number[] = []
const refill = (k: number) => {
  for (let i = 0; i < k; i++) fdQueue.push(7)
}

const measure = (name: string, unit: string, bytesPerRun: number, run: () => number) => {
  run() // warm-up
  const times: number[] = []
  let sink = 0
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint()
    sink += run()
    times.push(Number(process.hrtime.bigint() - t0) / 1e9)
  }
  times.sort((a, b) => a - b)
  const t = times[2]!
  const mb = bytesPerRun > 0 ? `, ${((bytesPerRun / t) / 1e6).toFixed(0)} MB/s` : ""
  // `sink` keeps the results observable so the loops are not optimised away.
  if (sink === 0) console.log(`${name}: measured nothing`)
  console.log(`${name.padEnd(44)} ${(n / t / 1e6).toFixed(2).padStart(7)} M ${unit}/s  (${((t / n) * 1e9).toFixed(0)} ns each${mb})`)
}

console.log(`golden frames: ${frames.length}, stream ${total} bytes = ${perPass} frames, ${n} frames per measurement`)

measure("readFrame", "frames", passes * total, () => {
  let count = 0
  for (let p = 0; p < passes; p++) {
    let off = 0
    for (;;) {
      const r = readFrame(stream, off, total, DEFAULT_MAX_MESSAGE_SIZE)
      if (r._tag !== "Frame") break
      off += r.size
      count++
    }
  }
  return count
})

measure("decodeArgs", "msgs", passes * total, () => {
  let count = 0
  for (let p = 0; p < passes; p++) {
    for (let i = 0; i < perPass; i++) {
      const f = streamFrames[i]!
      if (f.fds > 0) refill(f.fds)
      const r = decodeArgs(f.desc, 1, stream, f.offset + 8, f.size - 8, fdQueue)
      if (r._tag === "Ok") count += r.args.length
    }
  }
  return count
})

const decoded: ArgValue[][] = streamFrames.map((f) => {
  refill(f.fds)
  const r = decodeArgs(f.desc, 1, stream, f.offset + 8, f.size - 8, fdQueue)
  if (r._tag !== "Ok") throw new Error(r.error.message)
  return r.args
})
const out = new Uint8Array(DEFAULT_MAX_MESSAGE_SIZE * 2)
const fdsOut: number[] = []

measure("encodeArgs", "msgs", passes * total, () => {
  let bytes = 0
  for (let p = 0; p < passes; p++) {
    for (let i = 0; i < perPass; i++) {
      bytes += encodeArgs(streamFrames[i]!.desc, decoded[i]!, out, 8, fdsOut)
      fdsOut.length = 0
    }
  }
  return bytes
})

measure("decodeArgs + encodeArgs (full re-encode)", "msgs", passes * total, () => {
  let bytes = 0
  for (let p = 0; p < passes; p++) {
    for (let i = 0; i < perPass; i++) {
      const f = streamFrames[i]!
      if (f.fds > 0) refill(f.fds)
      const r = decodeArgs(f.desc, 1, stream, f.offset + 8, f.size - 8, fdQueue)
      if (r._tag !== "Ok") throw new Error(r.error.message)
      bytes += encodeArgs(f.desc, r.args, out, 8, fdsOut)
      fdsOut.length = 0
    }
  }
  return bytes
})

// decodeMessage with a lookup closure, as the proxy would call it (the closure reads a table).
let cursor = 0
const lookup = (): MessageDesc => streamFrames[cursor]!.desc
measure("decodeMessage (header + lookup + args)", "msgs", passes * total, () => {
  let count = 0
  for (let p = 0; p < passes; p++) {
    let off = 0
    for (cursor = 0; cursor < perPass; cursor++) {
      const f = streamFrames[cursor]!
      if (f.fds > 0) refill(f.fds)
      const r = decodeMessage(stream, off, total, DEFAULT_MAX_MESSAGE_SIZE, lookup, fdQueue)
      if (r._tag !== "Ok") throw new Error(r._tag)
      off += r.size
      count++
    }
  }
  return count
})

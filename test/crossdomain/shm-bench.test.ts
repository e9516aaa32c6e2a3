/**
 * Copy throughput of the shm path: 1024×768 ARGB frames, full damage, committed through the real
 * data path (Connection in mapped mode, hooks installed, memfd pool and memfd "blob" mapped once)
 * so the figure includes the hook's own per-commit work, not just the memcpy. Two layouts: equal
 * strides (one span per frame) and a padded guest stride (one copy per row). Also a quarter-size
 * partial damage for the per-commit overhead. The bench target is ≥ 1500 MB/s of frame data
 * (waypipe's copying path measured 1468): asserted with SHM_BENCH_STRICT=1 on a quiet machine;
 * otherwise only a floor that a loaded 2-vCPU machine still clears (the figures are printed).
 */
import { describe, expect, it } from "@effect/vitest"
import { F_DUPFD_CLOEXEC, sys } from "../../src/ffi/libc.js"
import { defaultRegistry } from "../../src/protocol/registry.js"
import type { ArgValue } from "../../src/protocol/types.js"
import { Connection, defaultDeniedGlobals, defaultLimits, setFdCloser } from "../../src/proxy/connection.js"
import { MemoryEndpoint } from "../../src/proxy/memory.js"
import { hostOnlyIds } from "../../src/transport/crossdomain/hooks.js"
import type { HookTable } from "../../src/transport/crossdomain/module.js"
import { shmCopy, type HostImage, type ImageAllocator, type ShmState } from "../../src/transport/crossdomain/shm.js"
import { mapShared, memfdCreate } from "../../src/transport/memfd.js"
import { encodeMessage } from "../../src/wire/index.js"

const registry = defaultRegistry()
const req = (id: number, i: string, name: string, args: ArgValue[]) => encodeMessage(id, registry.get(i)!.requests.find((m) => m.name === name)!, args, [])
const ev = (id: number, i: string, name: string, args: ArgValue[]) => encodeMessage(id, registry.get(i)!.events.find((m) => m.name === name)!, args, [])

setFdCloser((fd) => void sys.close(fd))

const W = 1024
const H = 768

const run = (guestStride: number, frames: number, damage: [number, number, number, number] | null) => {
  const client = new MemoryEndpoint(false)
  const host = new MemoryEndpoint(true)
  const cleanup: Array<() => void> = []
  const allocator: ImageAllocator = {
    allocate: (w, h): HostImage => {
      const size = Math.ceil((w * 4 * h) / 4096) * 4096
      const fd = memfdCreate("bench-blob", size)
      const map = mapShared(fd, size, { populate: true })
      cleanup.push(() => (map.unmap(), sys.close(fd)))
      return { offset: 0, stride: w * 4, modifier: 0n, size, view: map.view, exportFd: () => sys.fcntl(fd, F_DUPFD_CLOEXEC, 0), release: () => {} }
    }
  }
  let state: ShmState | null = null
  const table: HookTable = { requests: new Map(), events: new Map() }
  const ctx = { channel: null as never, registry, mappedIds: true, warn: () => {} }
  hostOnlyIds.install(ctx, table)
  shmCopy({ allocator, onState: (s) => (state = s) }).install(ctx, table)
  const conn = new Connection(client, host, {
    id: 1,
    registry,
    deniedGlobals: defaultDeniedGlobals,
    limits: defaultLimits,
    trace: null,
    onBatch: null,
    onEnd: () => {},
    hooks: table,
    mappedIds: true
  })
  const send = (...m: Uint8Array[]) => {
    for (const x of m) client.feed(x)
    conn.onClientReadable()
  }
  send(req(1, "wl_display", "get_registry", [2]))
  host.feed(Buffer.concat([ev(2, "wl_registry", "global", [1, "wl_compositor", 4]), ev(2, "wl_registry", "global", [2, "wl_shm", 1])]))
  conn.onHostReadable()
  send(req(2, "wl_registry", "bind", [1, { interface: "wl_compositor", version: 4, id: 3 }]), req(2, "wl_registry", "bind", [2, { interface: "wl_shm", version: 1, id: 4 }]))
  const size = guestStride * H
  const poolFd = memfdCreate("bench-pool", size)
  const pool = mapShared(poolFd, size, { populate: true })
  pool.view.fill(0x5a)
  client.feed(req(4, "wl_shm", "create_pool", [5, poolFd, size]), [sys.fcntl(poolFd, F_DUPFD_CLOEXEC, 0)])
  conn.onClientReadable()
  send(req(5, "wl_shm_pool", "create_buffer", [6, 0, W, H, guestStride, 0]), req(3, "wl_compositor", "create_surface", [7]))
  // First commit: the whole new buffer (page faults of the blob are paid here, outside the timing).
  send(req(7, "wl_surface", "attach", [6, 0, 0]), req(7, "wl_surface", "commit", []))
  const d = damage ?? [0, 0, W, H]
  const frame = Buffer.concat([req(7, "wl_surface", "attach", [6, 0, 0]), req(7, "wl_surface", "damage", d), req(7, "wl_surface", "commit", [])])
  const bytes0 = conn.stats.copiedBytes
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < frames; i++) {
    client.feed(frame)
    conn.onClientReadable()
  }
  const ns = Number(process.hrtime.bigint() - t0)
  const copied = conn.stats.copiedBytes - bytes0
  conn.end({ _tag: "Shutdown" })
  state!.release()
  for (const f of cleanup) f()
  for (const fd of host.sentFds) sys.close(fd)
  pool.unmap()
  sys.close(poolFd)
  host.chunks.length = 0
  return { mbPerS: (d[2] * d[3] * 4 * frames) / 1e6 / (ns / 1e9), usPerFrame: ns / 1e3 / frames, copied }
}

describe("shm copy throughput (1024×768 ARGB)", () => {
  it("full damage, equal strides and padded guest stride; partial damage", async () => {
    const results: string[] = []
    // Best of 3; the test yields between runs so vitest's worker stays responsive.
    const best = async (f: () => ReturnType<typeof run>) => {
      let r = f()
      for (let i = 0; i < 2; i++) {
        await new Promise((resolve) => setImmediate(resolve))
        const n = f()
        if (n.mbPerS > r.mbPerS) r = n
      }
      return r
    }
    const equal = await best(() => run(W * 4, 100, null))
    const padded = await best(() => run(W * 4 + 64, 100, null))
    const partial = await best(() => run(W * 4, 1000, [W / 4, H / 4, W / 4, H / 4]))
    expect(equal.copied).toBe(100 * W * H * 4)
    expect(padded.copied).toBe(100 * W * H * 4)
    expect(partial.copied).toBe(1000 * (W / 4) * (H / 4) * 4)
    results.push(`full damage, equal strides: ${equal.mbPerS.toFixed(0)} MB/s (${equal.usPerFrame.toFixed(0)} µs/frame)`)
    results.push(`full damage, guest stride +64: ${padded.mbPerS.toFixed(0)} MB/s (${padded.usPerFrame.toFixed(0)} µs/frame)`)
    results.push(`partial 256×192: ${partial.mbPerS.toFixed(0)} MB/s (${partial.usPerFrame.toFixed(1)} µs/frame)`)
    console.log(results.join("\n"))
    const floor = process.env.SHM_BENCH_STRICT === "1" ? 1500 : 300
    expect(equal.mbPerS).toBeGreaterThan(floor)
    expect(padded.mbPerS).toBeGreaterThan(floor)
  })
})

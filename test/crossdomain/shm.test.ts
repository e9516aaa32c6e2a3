/**
 * The shm copy path (shm.ts) through the real data path: a `Connection` in mapped-ids mode with
 * both sides in memory, the hook modules installed, and host images from memfds (the layout the
 * emulator's system allocator computes), so no device is involved. What the host receives is
 * decoded message by message; blob contents are compared with the guest pool.
 *
 * Proves: the guest pool never reaches the host; each buffer becomes create_pool + create_buffer
 * + destroy on a proxy-owned pool with dense host ids (pool id below the buffer's); release and
 * delete_id map back; the pool's destroy is answered by the proxy; only damaged rows are copied
 * (byte counts), including with scale, transform and viewport; buffers reused by a client
 * (double and triple buffering with buffer-age repair, random damage) always end equal to the
 * frame; formats the host did not announce, bad strides and a truncated pool are protocol errors
 * naming the request; nothing leaks.
 */
import { afterEach, beforeEach, describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { F_DUPFD_CLOEXEC, sys } from "../../src/ffi/libc.js"
import { defaultRegistry } from "../../src/protocol/registry.js"
import type { ArgValue, InterfaceDesc, UntypedNewId } from "../../src/protocol/types.js"
import { Connection, defaultDeniedGlobals, defaultLimits, setFdCloser } from "../../src/proxy/connection.js"
import type { ConnectionEndReason } from "../../src/proxy/errors.js"
import { MemoryEndpoint } from "../../src/proxy/memory.js"
import { hostOnlyIds } from "../../src/transport/crossdomain/hooks.js"
import type { HookTable } from "../../src/transport/crossdomain/module.js"
import { shmCopy, type HostImage, type ImageAllocator, type ShmState } from "../../src/transport/crossdomain/shm.js"
import { mapShared, memfdCreate, type SharedMapping } from "../../src/transport/memfd.js"
import { decodeArgs, encodeMessage, readU32 } from "../../src/wire/index.js"
import { openFds } from "../helpers/fds.js"

const registry = defaultRegistry()
const iface = (n: string): InterfaceDesc => registry.get(n)!
const reqDesc = (i: string, name: string) => iface(i).requests.find((m) => m.name === name)!
const evDesc = (i: string, name: string) => iface(i).events.find((m) => m.name === name)!
const req = (id: number, i: string, name: string, args: ArgValue[], fds: number[] = []) => encodeMessage(id, reqDesc(i, name), args, fds)
const ev = (id: number, i: string, name: string, args: ArgValue[]) => encodeMessage(id, evDesc(i, name), args, [])

setFdCloser((fd) => void sys.close(fd))

let before: number[] = []
beforeEach(() => {
  before = openFds()
})
afterEach(() => {
  expect(openFds()).toEqual(before)
})

const ARGB = 0
const XRGB = 1
const RGB565 = 0x36314752 // 'RG16'

/** Host images as the system allocator lays them out: stride = bpp × width, page-rounded size. */
class MemfdAllocator implements ImageAllocator {
  readonly live = new Set<{ fd: number; map: SharedMapping }>()
  allocations = 0
  failNext: string | null = null
  allocate(width: number, height: number, drmFormat: number): HostImage {
    if (this.failNext !== null) throw new Error(this.failNext)
    const bpp = drmFormat === RGB565 ? 2 : 4
    const stride = width * bpp
    const size = Math.ceil((stride * height) / 4096) * 4096
    const fd = memfdCreate("test-blob", size)
    const map = mapShared(fd, size)
    const rec = { fd, map }
    this.live.add(rec)
    this.allocations++
    let live = true
    return {
      offset: 0,
      stride,
      modifier: 0n,
      size,
      view: map.view,
      exportFd: () => sys.fcntl(fd, F_DUPFD_CLOEXEC, 0),
      release: () => {
        if (!live) return
        live = false
        map.unmap()
        sys.close(fd)
        this.live.delete(rec)
      }
    }
  }
}

interface HostMsg {
  readonly objectId: number
  readonly iface: string
  readonly name: string
  readonly args: ArgValue[]
}

/** Decodes what the host received, following new ids to know each object's interface. */
class HostView {
  readonly ifaces = new Map<number, InterfaceDesc>([[1, iface("wl_display")]])
  private read = 0
  constructor(readonly host: MemoryEndpoint) {}
  next(): HostMsg[] {
    const out = this.host.output()
    const msgs: HostMsg[] = []
    let fdAt = 0
    // fds are not needed here; pass a source that yields their numbers in order.
    const allFds = this.host.sentFds
    let p = 0
    while (p + 8 <= out.length) {
      const id = readU32(out, p)
      const w = readU32(out, p + 4)
      const size = w >>> 16
      const i = this.ifaces.get(id)
      if (i === undefined) throw new Error(`host got a message for unknown object ${id}`)
      const desc = i.requests[w & 0xffff]!
      const fdSource = { length: desc.fdCount, shift: () => allFds[fdAt++] }
      const r = decodeArgs(desc, id, out, p + 8, size - 8, fdSource)
      if (r._tag !== "Ok") throw new Error(`undecodable ${i.name}.${desc.name}`)
      desc.args.forEach((a, k) => {
        if (a.type === "new_id") {
          if (a.interface !== null) this.ifaces.set(r.args[k] as number, iface(a.interface))
          else {
            const nid = r.args[k] as UntypedNewId
            this.ifaces.set(nid.id, iface(nid.interface))
          }
        }
      })
      if (p >= this.read) msgs.push({ objectId: id, iface: i.name, name: desc.name, args: r.args })
      p += size
    }
    this.read = out.length
    return msgs
  }
}

/** Client-side decoding of what the proxy sent the client: (objectId, opcode, words). */
const clientFrames = (client: MemoryEndpoint, from = 0): Array<{ id: number; opcode: number; words: number[] }> => {
  const out = client.output()
  const frames: Array<{ id: number; opcode: number; words: number[] }> = []
  let p = from
  while (p + 8 <= out.length) {
    const size = readU32(out, p + 4) >>> 16
    const words: number[] = []
    for (let q = p + 8; q < p + size; q += 4) words.push(readU32(out, q))
    frames.push({ id: readU32(out, p), opcode: readU32(out, p + 4) & 0xffff, words })
    p += size
  }
  return frames
}

const setup = () => {
  const client = new MemoryEndpoint(true)
  const host = new MemoryEndpoint(true)
  const allocator = new MemfdAllocator()
  let state: ShmState | null = null
  const warnings: string[] = []
  const table: HookTable = { requests: new Map(), events: new Map() }
  const ctx = { channel: null as never, registry, mappedIds: true, warn: (w: string) => warnings.push(w) }
  hostOnlyIds.install(ctx, table)
  shmCopy({ allocator, onState: (s) => (state = s) }).install(ctx, table)
  const ends: ConnectionEndReason[] = []
  const conn = new Connection(client, host, {
    id: 1,
    registry,
    deniedGlobals: defaultDeniedGlobals,
    limits: defaultLimits,
    trace: null,
    onBatch: null,
    onEnd: (r) => ends.push(r),
    hooks: table,
    mappedIds: true
  })
  const view = new HostView(host)
  const send = (...msgs: Uint8Array[]): boolean => {
    for (const m of msgs) client.feed(m)
    return conn.onClientReadable()
  }
  const sendFd = (msg: Uint8Array, fd: number): boolean => {
    client.feed(msg, [fd])
    return conn.onClientReadable()
  }
  const deliver = (...msgs: Uint8Array[]): boolean => {
    const all = new Uint8Array(msgs.reduce((n, m) => n + m.length, 0))
    let o = 0
    for (const m of msgs) {
      all.set(m, o)
      o += m.length
    }
    host.feed(all)
    return conn.onHostReadable()
  }
  // Registry 2; wl_compositor 3 (v4), wl_shm 4, wp_viewporter 5; host announces ARGB, XRGB, RGB565.
  send(req(1, "wl_display", "get_registry", [2]))
  deliver(ev(2, "wl_registry", "global", [1, "wl_compositor", 4]), ev(2, "wl_registry", "global", [2, "wl_shm", 1]), ev(2, "wl_registry", "global", [3, "wp_viewporter", 1]))
  send(
    req(2, "wl_registry", "bind", [1, { interface: "wl_compositor", version: 4, id: 3 }]),
    req(2, "wl_registry", "bind", [2, { interface: "wl_shm", version: 1, id: 4 }]),
    req(2, "wl_registry", "bind", [3, { interface: "wp_viewporter", version: 1, id: 5 }])
  )
  deliver(ev(4, "wl_shm", "format", [ARGB]), ev(4, "wl_shm", "format", [XRGB]), ev(4, "wl_shm", "format", [RGB565]))
  view.next()
  const pools: Array<{ fd: number; map: SharedMapping }> = []
  /** A guest pool: a memfd the test writes pixels into through its own mapping. */
  const guestPool = (size: number) => {
    const fd = memfdCreate("guest-pool", size)
    const p = { fd, map: mapShared(fd, size) }
    pools.push(p)
    return p
  }
  const done = () => {
    conn.end({ _tag: "Shutdown" })
    state!.release()
    for (const p of pools) {
      p.map.unmap()
      sys.close(p.fd)
    }
    for (const fd of host.sentFds) sys.close(fd)
    for (const fd of client.sentFds) sys.close(fd)
    expect(allocator.live.size).toBe(0)
  }
  return { client, host, conn, allocator, state: () => state!, view, send, sendFd, deliver, guestPool, ends, warnings, done }
}

/** The host blob behind the host buffer `hostBuffer`, via the fd the host received for its pool. */
const blobOf = (t: ReturnType<typeof setup>, msgs: HostMsg[]): { view: Uint8Array; stride: number; unmap: () => void } => {
  const cp = msgs.find((m) => m.iface === "wl_shm" && m.name === "create_pool")!
  const cb = msgs.find((m) => m.iface === "wl_shm_pool" && m.name === "create_buffer")!
  const fd = cp.args[1] as number
  const size = cp.args[2] as number
  const map = mapShared(fd, size, { readOnly: true })
  void t
  return { view: map.view, stride: cb.args[4] as number, unmap: () => map.unmap() }
}

const fill = (v: Uint8Array, seed: number) => {
  let s = seed >>> 0 || 1
  for (let i = 0; i < v.length; i++) {
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    v[i] = s & 0xff
  }
}

const sameRows = (pool: Uint8Array, off: number, gs: number, blob: Uint8Array, hs: number, w: number, h: number, bpp: number): boolean => {
  for (let y = 0; y < h; y++) {
    const a = pool.subarray(off + y * gs, off + y * gs + w * bpp)
    const b = blob.subarray(y * hs, y * hs + w * bpp)
    if (Buffer.compare(Buffer.from(a), Buffer.from(b)) !== 0) return false
  }
  return true
}

describe("shm copy path over the data path", () => {
  it("create_pool stays in the proxy; create_buffer becomes create_pool + create_buffer + destroy on a proxy-owned pool with dense host ids", () => {
    const t = setup()
    const W = 64
    const H = 48
    const stride = W * 4 + 32
    const pool = t.guestPool(stride * H + 4096)
    expect(t.sendFd(req(4, "wl_shm", "create_pool", [6, pool.fd, stride * H + 4096], []), pool.fd)).toBe(true)
    expect(t.view.next()).toEqual([])
    expect(t.conn.shadow.byClient(6)?.hostId).toBe(0)
    expect(t.send(req(6, "wl_shm_pool", "create_buffer", [7, 4096, W, H, stride, ARGB]), req(3, "wl_compositor", "create_surface", [8]))).toBe(true)
    const msgs = t.view.next()
    expect(msgs.map((m) => `${m.iface}@${m.objectId}.${m.name}`)).toEqual(["wl_shm@4.create_pool", "wl_shm_pool@6.create_buffer", "wl_shm_pool@6.destroy", "wl_compositor@3.create_surface"])
    // Host pool 6 < host buffer 7; the surface gets the next id, 8.
    expect(msgs[0]!.args[0]).toBe(6)
    expect(msgs[1]!.args).toEqual([7, 0, W, H, W * 4, ARGB])
    expect(msgs[3]!.args[0]).toBe(8)
    expect(msgs[0]!.args[2]).toBe(Math.ceil((W * 4 * H) / 4096) * 4096)
    // The guest pool's fd never crossed: the only fd the host got is the blob's.
    expect(t.host.sentFds.length).toBe(1)
    expect(t.host.sentFds[0]).not.toBe(pool.fd)

    // Draw, attach, damage everything, commit: the blob holds the buffer.
    fill(pool.map.view, 1)
    t.send(req(8, "wl_surface", "attach", [7, 0, 0]), req(8, "wl_surface", "damage", [0, 0, 0x7fffffff, 0x7fffffff]), req(8, "wl_surface", "commit", []))
    expect(t.view.next().map((m) => m.name)).toEqual(["attach", "damage", "commit"])
    const blob = blobOf(t, msgs)
    expect(sameRows(pool.map.view, 4096, stride, blob.view, blob.stride, W, H, 4)).toBe(true)
    expect(t.conn.stats.copiedBytes).toBe(W * H * 4)
    expect(t.conn.stats.copyCommits).toBe(1)

    // The host's release of buffer 7 reaches the client's buffer 7; the host pool's delete_id does not.
    const mark = t.client.output().length
    t.deliver(ev(7, "wl_buffer", "release", []), ev(1, "wl_display", "delete_id", [6]))
    expect(clientFrames(t.client, mark)).toEqual([{ id: 7, opcode: 0, words: [] }])
    expect(t.conn.shadow.hostOnly).toBe(0)
    blob.unmap()
    expect(t.ends).toEqual([])
    t.done()
  })

  it("partial damage copies only the damaged rows; damage_buffer and scale 2 too", () => {
    const t = setup()
    const W = 100
    const H = 80
    const pool = t.guestPool(W * 4 * H)
    t.sendFd(req(4, "wl_shm", "create_pool", [6, pool.fd, W * 4 * H]), pool.fd)
    t.send(req(6, "wl_shm_pool", "create_buffer", [7, 0, W, H, W * 4, XRGB]), req(3, "wl_compositor", "create_surface", [8]))
    const msgs = t.view.next()
    fill(pool.map.view, 2)
    t.send(req(8, "wl_surface", "attach", [7, 0, 0]), req(8, "wl_surface", "commit", []))
    // A new buffer is copied whole even without damage.
    expect(t.conn.stats.copiedBytes).toBe(W * H * 4)
    const blob = blobOf(t, msgs)
    // Surface damage 10×5 at (20, 30): 5 rows of 40 bytes.
    fill(pool.map.view, 3)
    t.send(req(8, "wl_surface", "attach", [7, 0, 0]), req(8, "wl_surface", "damage", [20, 30, 10, 5]), req(8, "wl_surface", "commit", []))
    expect(t.conn.stats.copiedBytes - W * H * 4).toBe(5 * 10 * 4)
    expect(t.state().counts.rows).toBe(H + 5)
    // Exactly that rectangle changed in the blob.
    // Exactly that rectangle changed in the blob: the new pixels inside, the first frame's outside.
    const old = new Uint8Array(W * 4 * H)
    fill(old, 2)
    const wrong: string[] = []
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++) {
        const inside = x >= 20 && x < 30 && y >= 30 && y < 35
        const o = y * W * 4 + x * 4
        const want = (inside ? pool.map.view : old).subarray(o, o + 4)
        if (Buffer.compare(Buffer.from(blob.view.subarray(o, o + 4)), Buffer.from(want)) !== 0) wrong.push(`${x},${y}`)
      }
    expect(wrong).toEqual([])
    // damage_buffer in buffer pixels; then scale 2 makes surface (5, 5, 2, 2) buffer (10, 10, 4, 4).
    const base = t.conn.stats.copiedBytes
    t.send(req(8, "wl_surface", "damage_buffer", [0, 79, 100, 1]), req(8, "wl_surface", "commit", []))
    expect(t.conn.stats.copiedBytes - base).toBe(W * 4)
    t.send(req(8, "wl_surface", "set_buffer_scale", [2]), req(8, "wl_surface", "commit", []))
    const afterScale = t.conn.stats.copiedBytes
    // Changing the scale copies the whole buffer once (the geometry changed).
    expect(afterScale - base - W * 4).toBe(W * H * 4)
    t.send(req(8, "wl_surface", "damage", [5, 5, 2, 2]), req(8, "wl_surface", "commit", []))
    expect(t.conn.stats.copiedBytes - afterScale).toBe(4 * 4 * 4)
    blob.unmap()
    t.done()
  })

  it("transform 90 and a viewport: the converted rows only", () => {
    const t = setup()
    const W = 40
    const H = 20
    const pool = t.guestPool(W * 4 * H)
    t.sendFd(req(4, "wl_shm", "create_pool", [6, pool.fd, W * 4 * H]), pool.fd)
    t.send(
      req(6, "wl_shm_pool", "create_buffer", [7, 0, W, H, W * 4, ARGB]),
      req(3, "wl_compositor", "create_surface", [8]),
      req(5, "wp_viewporter", "get_viewport", [9, 8]),
      req(8, "wl_surface", "set_buffer_transform", [1]),
      req(8, "wl_surface", "attach", [7, 0, 0]),
      req(8, "wl_surface", "commit", [])
    )
    const first = t.conn.stats.copiedBytes
    expect(first).toBe(W * H * 4)
    // Transform 90: the surface is 20×40; surface rect (0, 0, 20, 4) is buffer columns 36..40, all rows.
    t.send(req(8, "wl_surface", "damage", [0, 0, 20, 4]), req(8, "wl_surface", "commit", []))
    expect(t.conn.stats.copiedBytes - first).toBe(H * 4 * 4)
    // Viewport: source (0, 0, 10, 20) of the 20×40 surface shown at 20×40 (×2): surface (0, 0, 2, 2) → logical (0, 0, 1, 1) → buffer (39, 0)..(40, 1).
    t.send(req(9, "wp_viewport", "set_source", [0, 0, 10, 20]), req(9, "wp_viewport", "set_destination", [20, 40]), req(8, "wl_surface", "commit", []))
    const afterVp = t.conn.stats.copiedBytes
    t.send(req(8, "wl_surface", "damage", [0, 0, 2, 2]), req(8, "wl_surface", "commit", []))
    expect(t.conn.stats.copiedBytes - afterVp).toBe(4)
    t.done()
  })

  for (const nbuf of [2, 3]) {
    it(`${nbuf} buffers reused with buffer-age repair and random damage: every blob equals the frame after its commit`, () => {
      const t = setup()
      const W = 57
      const H = 43
      const stride = W * 4 + 8
      const size = stride * H * nbuf
      const pool = t.guestPool(size)
      t.sendFd(req(4, "wl_shm", "create_pool", [6, pool.fd, size]), pool.fd)
      t.send(req(3, "wl_compositor", "create_surface", [20]))
      const blobs: Array<{ view: Uint8Array; stride: number; unmap: () => void }> = []
      for (let b = 0; b < nbuf; b++) {
        t.send(req(6, "wl_shm_pool", "create_buffer", [7 + b, b * stride * H, W, H, stride, ARGB]))
        blobs.push(blobOf(t, t.view.next()))
      }
      // The "frame" the client shows, and per buffer the damage since it was last shown.
      const frame = new Uint8Array(W * H * 4)
      const since: Array<Array<[number, number, number, number]>> = Array.from({ length: nbuf }, () => [])
      let seed = 12345
      const r = (n: number) => {
        seed ^= seed << 13
        seed >>>= 0
        seed ^= seed >>> 17
        seed ^= seed << 5
        seed >>>= 0
        return seed % n
      }
      let copied = 0
      let fresh = new Set<number>(Array.from({ length: nbuf }, (_, i) => i))
      for (let f = 0; f < 120; f++) {
        const b = f % nbuf
        // New damage this frame: change the frame there.
        const rects: Array<[number, number, number, number]> = []
        for (let k = 0, n = 1 + r(3); k < n; k++) {
          const x = r(W)
          const y = r(H)
          rects.push([x, y, 1 + r(Math.min(12, W - x)), 1 + r(Math.min(9, H - y))])
        }
        for (const [x, y, w, h] of rects) for (let yy = y; yy < y + h; yy++) for (let xx = x; xx < x + w; xx++) frame.fill((f * 7 + b) & 0xff, (yy * W + xx) * 4, (yy * W + xx) * 4 + 4)
        for (const s of since) s.push(...rects)
        // The client repairs buffer b: copies the frame into it where it changed since b was shown (all of it the first time).
        const off = b * stride * H
        const repair = fresh.has(b) ? [[0, 0, W, H] as [number, number, number, number]] : since[b]!
        for (const [x, y, w, h] of repair) for (let yy = y; yy < y + h; yy++) pool.map.view.set(frame.subarray((yy * W + x) * 4, (yy * W + x + w) * 4), off + yy * stride + x * 4)
        since[b] = []
        fresh.delete(b)
        const before = t.conn.stats.copiedBytes
        t.send(req(20, "wl_surface", "attach", [7 + b, 0, 0]), ...rects.map(([x, y, w, h]) => req(20, "wl_surface", "damage", [x, y, w, h])), req(20, "wl_surface", "commit", []))
        copied += t.conn.stats.copiedBytes - before
        const blob = blobs[b]!
        expect(sameRows(frame, 0, W * 4, blob.view, blob.stride, W, H, 4), `frame ${f}, buffer ${b}`).toBe(true)
      }
      // Far less than whole frames after the first copies (each buffer carries ≤ nbuf frames of damage).
      expect(copied).toBeLessThan(nbuf * W * H * 4 + 120 * W * H * 4 * 0.5)
      void fresh
      for (const b of blobs) b.unmap()
      t.done()
    })
  }

  it("the client's wl_shm_pool.destroy is answered by the proxy (delete_id), buffers keep the memory; resize remaps", () => {
    const t = setup()
    const W = 16
    const H = 16
    const pool = t.guestPool(W * 4 * H)
    t.sendFd(req(4, "wl_shm", "create_pool", [6, pool.fd, W * 4 * H]), pool.fd)
    t.send(req(6, "wl_shm_pool", "create_buffer", [7, 0, W, H, W * 4, ARGB]))
    // Grow the pool and make a buffer in the new part.
    sys.ftruncate(pool.fd, 2 * W * 4 * H)
    pool.map.unmap()
    pool.map = mapShared(pool.fd, 2 * W * 4 * H)
    t.send(req(6, "wl_shm_pool", "resize", [2 * W * 4 * H]), req(6, "wl_shm_pool", "create_buffer", [8, W * 4 * H, W, H, W * 4, ARGB]))
    expect(t.ends).toEqual([])
    expect(t.state().buffers()).toBe(2)
    const mark = t.client.output().length
    t.send(req(6, "wl_shm_pool", "destroy", []))
    // delete_id(6) from the proxy; nothing went to the host for the guest pool.
    expect(clientFrames(t.client, mark)).toEqual([{ id: 1, opcode: 1, words: [6] }])
    expect(t.view.next().filter((m) => m.iface === "wl_shm_pool" && m.name !== "create_buffer" && m.name !== "destroy")).toEqual([])
    expect(t.conn.shadow.byClient(6)).toBeUndefined()
    expect(t.state().pools()).toBe(1)
    // The client reuses id 6 for a surface: fine.
    expect(t.send(req(3, "wl_compositor", "create_surface", [6]))).toBe(true)
    fill(pool.map.view, 9)
    t.send(req(6, "wl_surface", "attach", [8, 0, 0]), req(6, "wl_surface", "commit", []))
    expect(t.conn.stats.copiedBytes).toBe(W * H * 4)
    // Destroying the buffers forwards to the host and frees the pool.
    t.send(req(7, "wl_buffer", "destroy", []), req(8, "wl_buffer", "destroy", []))
    expect(t.state().buffers()).toBe(0)
    expect(t.state().pools()).toBe(0)
    expect(t.allocator.live.size).toBe(0)
    t.done()
  })

  it("a client gone when its wl_shm_pool.destroy is answered ends as closed (EPIPE) or as an I/O error, never as its protocol error", async () => {
    for (const [code, expected] of [
      ["EPIPE", { _tag: "ClientClosed" }],
      ["ECONNRESET", { _tag: "ClientClosed" }],
      ["EBADF", { _tag: "IoError", message: "client write failed: sendmsg: Bad file descriptor (EBADF): fd 28" }]
    ] as const) {
      const t = setup()
      const pool = t.guestPool(4096)
      t.sendFd(req(4, "wl_shm", "create_pool", [6, pool.fd, 4096]), pool.fd)
      // What the socket endpoint throws once the client closed its end (foot at exit).
      t.client.write = () => {
        throw Object.assign(new Error(`sendmsg: ${code === "EBADF" ? "Bad file descriptor" : "Broken pipe"} (${code}): fd 28`), { code })
      }
      // The batch is walked to its end (the request after the destroy still reaches the host)…
      expect(t.send(req(6, "wl_shm_pool", "destroy", []), req(3, "wl_compositor", "create_surface", [8]))).toBe(true)
      expect(t.ends).toEqual([])
      expect(t.view.next().map((m) => `${m.iface}.${m.name}`)).toEqual(["wl_compositor.create_surface"])
      // …then the connection ends, once the reactor callback is over.
      await Promise.resolve()
      expect(t.ends).toEqual([expected])
      expect(t.state().pools()).toBe(0)
      t.done()
    }
  })

  it("a pool shrunk and regrown by another process while commits copy it: each commit copies or ends the client with the error, the proxy never faults", async () => {
    const W = 256
    const H = 256
    const size = W * 4 * H
    const pool = memfdCreate("racing-pool", size)
    // Another process flips the file between 4 KiB and its full size as fast as it can.
    const flipper = spawn("sh", ["-c", `while :; do truncate -s 4096 /proc/${process.pid}/fd/${pool}; truncate -s ${size} /proc/${process.pid}/fd/${pool}; done`], { stdio: "ignore" })
    const outcomes = { copied: 0, refused: 0 }
    try {
      const deadline = Date.now() + 1500
      while (Date.now() < deadline) {
        const t = setup()
        const dup = sys.fcntl(pool, F_DUPFD_CLOEXEC, 0)
        t.sendFd(req(4, "wl_shm", "create_pool", [6, dup, size]), dup)
        t.send(req(6, "wl_shm_pool", "create_buffer", [7, 0, W, H, W * 4, ARGB]), req(3, "wl_compositor", "create_surface", [8]))
        for (let i = 0; i < 20 && t.ends.length === 0; i++) {
          t.send(req(8, "wl_surface", "attach", [7, 0, 0]), req(8, "wl_surface", "damage", [0, 0, W, H]), req(8, "wl_surface", "commit", []))
          if (t.ends.length === 0) outcomes.copied++
        }
        if (t.ends.length > 0) {
          expect(t.ends[0]!._tag).toBe("ClientViolation")
          outcomes.refused++
        }
        t.done()
        // Let the flipper run.
        await new Promise((r) => setTimeout(r, 1))
      }
    } finally {
      flipper.kill("SIGKILL")
      await new Promise((r) => flipper.once("exit", r))
      sys.close(pool)
    }
    // Alive, and the race was real: some commits found the file short.
    expect(outcomes.copied).toBeGreaterThan(0)
    expect(outcomes.refused).toBeGreaterThan(0)
  }, 30_000)

  it("protocol errors name the request: unknown format, format the host did not announce, bad stride, no host memory, truncated pool", () => {
    const errorOf = (t: ReturnType<typeof setup>) => {
      const f = clientFrames(t.client).filter((x) => x.id === 1 && x.opcode === 0).at(-1)!
      const out = t.client.output()
      void out
      // wl_display.error(object, code, string): words = [object, code, len, ...bytes]
      const bytes = new Uint8Array(new Uint32Array(f.words.slice(3)).buffer)
      return { object: f.words[0], code: f.words[1], message: new TextDecoder().decode(bytes.subarray(0, f.words[2]! - 1)) }
    }
    type T = ReturnType<typeof setup> & { ownPool?: number }
    const cases: Array<[string, (t: T) => void, RegExp, number]> = [
      ["unannounced", (t) => t.send(req(6, "wl_shm_pool", "create_buffer", [7, 0, 8, 8, 32, 0x34324241 /* AB24 */])), /^wl_shm_pool@6\.create_buffer: unsupported format 0x34324241/, 0],
      ["unknown", (t) => t.send(req(6, "wl_shm_pool", "create_buffer", [7, 0, 8, 8, 32, 0x3231564e /* NV12 */])), /^wl_shm_pool@6\.create_buffer: format 0x3231564e cannot be copied/, 0],
      ["stride", (t) => t.send(req(6, "wl_shm_pool", "create_buffer", [7, 0, 8, 8, 16, ARGB])), /^wl_shm_pool@6\.create_buffer: invalid width, height or stride/, 1],
      ["too big", (t) => t.send(req(6, "wl_shm_pool", "create_buffer", [7, 4096, 8, 8, 32, ARGB])), /^wl_shm_pool@6\.create_buffer: invalid width, height or stride/, 1],
      [
        "host memory",
        (t) => {
          t.allocator.failNext = "the host cannot allocate it"
          t.send(req(6, "wl_shm_pool", "create_buffer", [7, 0, 8, 8, 32, ARGB]))
        },
        /^wl_shm_pool@6\.create_buffer: no host memory for a 8x8 buffer: the host cannot allocate it/,
        0
      ],
      [
        "truncated",
        (t) => {
          t.send(req(6, "wl_shm_pool", "create_buffer", [7, 0, 8, 8, 32, ARGB]), req(3, "wl_compositor", "create_surface", [8]))
          sys.ftruncate(t.ownPool!, 100)
          t.send(req(8, "wl_surface", "attach", [7, 0, 0]), req(8, "wl_surface", "commit", []))
        },
        /^wl_surface@8\.commit: the wl_shm pool of wl_buffer@7 was truncated to 100 bytes/,
        2
      ]
    ]
    for (const [what, act, msg, code] of cases) {
      const t: T = setup()
      const pool = t.guestPool(4096)
      t.ownPool = pool.fd
      t.sendFd(req(4, "wl_shm", "create_pool", [6, pool.fd, 4096]), pool.fd)
      act(t)
      expect(t.ends.map((e) => e._tag), what).toEqual(["ClientViolation"])
      const err = errorOf(t)
      expect(err.message, what).toMatch(msg)
      expect(err.code, what).toBe(code)
      t.done()
    }
  })

  it("wl_shm.format: formats the copy cannot lay out (NV12) are not shown to the client", () => {
    const t = setup()
    const mark = t.client.output().length
    t.deliver(ev(4, "wl_shm", "format", [0x3231564e]), ev(4, "wl_shm", "format", [0x34324241]))
    // Only AB24 (packed, 4 bytes) reached the client.
    expect(clientFrames(t.client, mark)).toEqual([{ id: 4, opcode: 0, words: [0x34324241] }])
    t.done()
  })

  it("create_pool with a size of 0 or an fd that cannot be mapped is wl_shm.error", () => {
    const t = setup()
    const ends = new Int32Array(2)
    sys.pipe2(ends, 0o2000000)
    t.sendFd(req(4, "wl_shm", "create_pool", [6, ends[0]!, 4096]), ends[0]!)
    sys.close(ends[1]!)
    expect(t.ends[0]?._tag).toBe("ClientViolation")
    const v = (t.ends[0] as { violation: { message: string; code: number } }).violation
    expect(v.message).toMatch(/^wl_shm@4\.create_pool: failed mmap fd/)
    expect(v.code).toBe(2)
    t.done()
    const u = setup()
    const fd = memfdCreate("zero", 4096)
    u.sendFd(req(4, "wl_shm", "create_pool", [6, fd, 0]), fd)
    expect((u.ends[0] as { violation: { message: string } }).violation.message).toMatch(/^wl_shm@4\.create_pool: invalid size \(0\)/)
    u.done()
  })
})

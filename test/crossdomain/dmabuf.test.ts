/**
 * linux-dmabuf in cross-domain mode (dmabuf.ts) through the data path, host side a
 * `CrossDomainEndpoint` over the fake device: with `supports_dmabuf = 0` the global is hidden
 * (global and global_remove dropped, a bind by a guessed name refused); with dma-buf support a
 * `zwp_linux_buffer_params_v1.add` of a blob of this device crosses as its resource id, and any
 * other fd ends the client with an error naming the request before anything is sent — unless a
 * guest GPU (gbm) can import it: then (with a fake gbm over memfds here; libgbm itself needs a
 * GPU this machine lacks) the host gets a blob of the same format as the buffer's one plane and
 * the damaged rows are copied from the gbm mapping at each commit.
 */
import { afterEach, beforeEach, describe, expect, it } from "@effect/vitest"
import { sys } from "../../src/ffi/libc.js"
import { defaultRegistry } from "../../src/protocol/registry.js"
import type { ArgValue } from "../../src/protocol/types.js"
import { Connection, defaultDeniedGlobals, defaultLimits, setFdCloser } from "../../src/proxy/connection.js"
import type { ConnectionEndReason } from "../../src/proxy/errors.js"
import { MemoryEndpoint } from "../../src/proxy/memory.js"
import { CrossDomainChannel } from "../../src/transport/crossdomain/channel.js"
import { CrossDomainEndpoint } from "../../src/transport/crossdomain/endpoint.js"
import { buildHooks, fdCheck, hostOnlyIds } from "../../src/transport/crossdomain/hooks.js"
import { dmabuf } from "../../src/transport/crossdomain/dmabuf.js"
import { shmCopy, type HostImage, type ImageAllocator } from "../../src/transport/crossdomain/shm.js"
import type { HookModule } from "../../src/transport/crossdomain/module.js"
import { loadGbm, openGbmDevice, type GbmBo, type GbmDevice } from "../../src/ffi/gbm.js"
import { mapShared, type SharedMapping } from "../../src/transport/memfd.js"
import { F_DUPFD_CLOEXEC } from "../../src/ffi/libc.js"
import * as P from "../../src/transport/crossdomain/protocol.js"
import { memfdCreate } from "../../src/transport/memfd.js"
import { encodeMessage, readU32 } from "../../src/wire/index.js"
import { openFds } from "../helpers/fds.js"
import { FakeDevice, FakeWatcher } from "./fake-device.js"

const registry = defaultRegistry()
const reqDesc = (i: string, name: string) => registry.get(i)!.requests.find((m) => m.name === name)!
const evDesc = (i: string, name: string) => registry.get(i)!.events.find((m) => m.name === name)!
const req = (id: number, i: string, name: string, args: ArgValue[]) => encodeMessage(id, reqDesc(i, name), args, [])
const ev = (id: number, i: string, name: string, args: ArgValue[]) => encodeMessage(id, evDesc(i, name), args, [])

setFdCloser((fd) => void sys.close(fd))

let before: number[] = []
beforeEach(() => {
  before = openFds()
})
afterEach(() => {
  expect(openFds()).toEqual(before)
})

const setup = (supportsDmabuf: boolean, modules?: (device: FakeDevice) => ReadonlyArray<HookModule>) => {
  const device = new FakeDevice()
  device.caps = P.encodeCapabilities({ version: 1, supportedChannels: 1 << P.CHANNEL_TYPE_WAYLAND, supportsDmabuf, supportsExternalGpuMemory: false })
  const watcher = new FakeWatcher()
  const channel = CrossDomainChannel.open(device, { reactor: watcher, rearm: "now" })
  const host = new CrossDomainEndpoint(channel)
  const client = new MemoryEndpoint(true)
  const ends: ConnectionEndReason[] = []
  const releases: Array<() => void> = []
  const conn = new Connection(client, host, {
    id: 1,
    registry,
    deniedGlobals: defaultDeniedGlobals,
    limits: defaultLimits,
    trace: null,
    onBatch: null,
    onEnd: (r) => ends.push(r),
    hooks: buildHooks({ channel, registry, mappedIds: true, warn: () => {}, onClose: (r) => void releases.push(r) }, modules?.(device)),
    mappedIds: true
  })
  host.onFatal = (r) => conn.end(r)
  client.feed(req(1, "wl_display", "get_registry", [2]))
  conn.onClientReadable()
  device.deliver(
    P.encodeReceive(
      [],
      Buffer.concat([ev(2, "wl_registry", "global", [1, "wl_shm", 1]), ev(2, "wl_registry", "global", [2, "zwp_linux_dmabuf_v1", 4]), ev(2, "wl_registry", "global", [3, "wl_compositor", 4])])
    )
  )
  conn.onHostReadable()
  const done = () => {
    conn.end({ _tag: "Shutdown" })
    for (const r of releases.reverse()) r()
    device.close()
    for (const fd of client.sentFds) sys.close(fd)
  }
  return { device, client, conn, ends, done, host }
}

/** Interface names of the wl_registry.global events the client got. */
const shownGlobals = (client: MemoryEndpoint): string[] => {
  const out = client.output()
  const names: string[] = []
  for (let p = 0; p + 8 <= out.length; ) {
    const size = readU32(out, p + 4) >>> 16
    if (readU32(out, p) === 2 && (readU32(out, p + 4) & 0xffff) === 0) {
      const len = readU32(out, p + 12)
      names.push(new TextDecoder().decode(out.subarray(p + 16, p + 16 + len - 1)))
    }
    p += size
  }
  return names
}

describe("linux-dmabuf in cross-domain mode", () => {
  it("supports_dmabuf = 0: the global is hidden, its removal too, and a bind by its name is refused", () => {
    const { device, client, conn, ends, done } = setup(false)
    expect(shownGlobals(client)).toEqual(["wl_shm", "wl_compositor"])
    const mark = client.output().length
    device.deliver(P.encodeReceive([], ev(2, "wl_registry", "global_remove", [2])))
    conn.onHostReadable()
    expect(client.output().length).toBe(mark)
    // The host removed it; announce it again and let the client guess its name.
    device.deliver(P.encodeReceive([], ev(2, "wl_registry", "global", [4, "zwp_linux_dmabuf_v1", 4])))
    conn.onHostReadable()
    const sendsBefore = device.execs.length
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [4, { interface: "zwp_linux_dmabuf_v1", version: 3, id: 3 }], []))
    expect(conn.onClientReadable()).toBe(false)
    expect(device.execs.length).toBe(sendsBefore)
    expect(ends[0]?._tag).toBe("ClientViolation")
    const v = (ends[0] as { violation: { message: string; objectId: number } }).violation
    expect(v.objectId).toBe(2)
    expect(v.message).toMatch(/^wl_registry@2\.bind: invalid global 4 \(zwp_linux_dmabuf_v1\): linux-dmabuf is not offered in cross-domain mode/)
    done()
  })

  it("supports_dmabuf = 1: the global is shown; params.add of a blob of this device crosses as its resource id", () => {
    const { device, client, conn, ends, done } = setup(true)
    expect(shownGlobals(client)).toEqual(["wl_shm", "zwp_linux_dmabuf_v1", "wl_compositor"])
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [2, { interface: "zwp_linux_dmabuf_v1", version: 3, id: 3 }], []))
    client.feed(req(3, "zwp_linux_dmabuf_v1", "create_params", [4]))
    conn.onClientReadable()
    const blob = device.guestBlob(77)
    const mark = device.execs.length
    client.feed(encodeMessage(4, reqDesc("zwp_linux_buffer_params_v1", "add"), [blob, 0, 0, 256, 0, 0], []), [blob])
    expect(conn.onClientReadable()).toBe(true)
    const sends = device
      .sent(mark)
      .filter((e) => e.cmd === P.CMD_SEND)
      .map((e) => P.decodeTransfer(e.command) as P.Transfer)
    expect(sends.length).toBe(1)
    expect(sends[0]!.identifiers).toEqual([{ id: 77, type: P.ID_TYPE_VIRTGPU_BLOB, size: 0 }])
    expect(ends).toEqual([])
    done()
  })

  it("supports_dmabuf = 1: params.add of any other fd is refused naming the request; nothing is sent", () => {
    const { device, client, conn, ends, done } = setup(true)
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [2, { interface: "zwp_linux_dmabuf_v1", version: 3, id: 3 }], []))
    client.feed(req(3, "zwp_linux_dmabuf_v1", "create_params", [4]))
    conn.onClientReadable()
    const mark = device.execs.length
    const fd = memfdCreate("not-a-dmabuf", 4096)
    client.feed(encodeMessage(4, reqDesc("zwp_linux_buffer_params_v1", "add"), [fd, 0, 0, 256, 0, 0], []), [fd])
    expect(conn.onClientReadable()).toBe(false)
    expect(device.sent(mark).filter((e) => e.cmd === P.CMD_SEND)).toEqual([])
    const v = (ends[0] as { violation: { message: string; objectId: number } }).violation
    expect(v.objectId).toBe(4)
    expect(v.message).toMatch(/^zwp_linux_buffer_params_v1@4\.add: the dma-buf is not a buffer of this virtio-gpu device/)
    done()
  })
})

/** A gbm stand-in: "imports" a memfd by mapping it; the mapping is the read view. */
class FakeGbm implements GbmDevice {
  readonly path = "fake"
  readonly backend = "fake"
  readonly imports: Array<{ width: number; height: number; format: number; stride: number; modifier: bigint }> = []
  live = 0
  isFormatSupported(): boolean {
    return true
  }
  importDmabuf(width: number, height: number, format: number, planes: ReadonlyArray<{ fd: number; offset: number; stride: number }>, modifier: bigint): GbmBo {
    const pl = planes[0]!
    this.imports.push({ width, height, format, stride: pl.stride, modifier })
    const size = pl.offset + pl.stride * height
    const map = mapShared(pl.fd, size, { readOnly: true })
    this.live++
    let mapped = 0
    return {
      width,
      height,
      mapRead: () => {
        mapped++
        return { view: map.view.subarray(pl.offset), stride: pl.stride }
      },
      unmap: () => {
        mapped = Math.max(0, mapped - 1)
      },
      destroy: () => {
        map.unmap()
        this.live--
      }
    }
  }
  close(): void {}
}

/** Host images the fake device can import (its "blobs"), laid out like the system allocator. */
const blobAllocator = (device: FakeDevice): ImageAllocator & { live: Set<SharedMapping> } => {
  let res = 500
  const live = new Set<SharedMapping>()
  return {
    live,
    allocate: (width, height): HostImage => {
      const stride = width * 4
      const size = Math.ceil((stride * height) / 4096) * 4096
      const fd = device.guestBlob(res++, size)
      const map = mapShared(fd, size)
      live.add(map)
      return {
        offset: 0,
        stride,
        modifier: 0n,
        size,
        view: map.view,
        exportFd: () => sys.fcntl(fd, F_DUPFD_CLOEXEC, 0),
        release: () => {
          if (!live.delete(map)) return
          map.unmap()
          sys.close(fd)
        }
      }
    }
  }
}

const XR24 = 0x34325258

describe("dma-bufs the host cannot import, copied through a guest GPU (fake gbm)", () => {
  it("add keeps the plane; create_immed sends a host blob as the only plane; commits copy the damaged rows from the gbm mapping", () => {
    const gbm = new FakeGbm()
    let alloc: ReturnType<typeof blobAllocator> | null = null
    const t = setup(true, (device) => {
      alloc = blobAllocator(device)
      return [fdCheck, hostOnlyIds, shmCopy({ allocator: alloc }), dmabuf({ gbm: () => gbm, allocator: alloc })]
    })
    const { device, client, conn, ends } = t
    const W = 64
    const H = 32
    const stride = W * 4 + 64
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [2, { interface: "zwp_linux_dmabuf_v1", version: 3, id: 3 }], []))
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [3, { interface: "wl_compositor", version: 4, id: 4 }], []))
    client.feed(req(3, "zwp_linux_dmabuf_v1", "create_params", [5]))
    conn.onClientReadable()
    // The client's dma-buf from "another GPU": a memfd the device does not know.
    const foreign = memfdCreate("foreign-dmabuf", stride * H)
    const fmap = mapShared(foreign, stride * H)
    const px = new Uint32Array(fmap.view.buffer, fmap.view.byteOffset, (stride * H) / 4)
    px.fill(0xff336699)
    const mark = device.execs.length
    client.feed(encodeMessage(5, reqDesc("zwp_linux_buffer_params_v1", "add"), [foreign, 0, 0, stride, 0, 0], []), [foreign])
    expect(conn.onClientReadable()).toBe(true)
    expect(device.sent(mark).filter((e) => e.cmd === P.CMD_SEND)).toEqual([])
    client.feed(req(5, "zwp_linux_buffer_params_v1", "create_immed", [6, W, H, XR24, 0]))
    client.feed(req(4, "wl_compositor", "create_surface", [7]))
    expect(conn.onClientReadable()).toBe(true)
    expect(ends).toEqual([])
    expect(gbm.imports).toEqual([{ width: W, height: H, format: XR24, stride, modifier: 0n }])
    const sends = device
      .sent(mark)
      .filter((e) => e.cmd === P.CMD_SEND)
      .map((e) => P.decodeTransfer(e.command) as P.Transfer)
    expect(sends.flatMap((s) => s.identifiers)).toEqual([{ id: 500, type: P.ID_TYPE_VIRTGPU_BLOB, size: 0 }])
    const data = Buffer.concat(sends.map((s) => Buffer.from(s.data)))
    // params 5 (host 5).add(blob, plane 0, offset 0, host stride W*4, modifier 0), then create_immed(6, …)
    expect([readU32(data, 0), readU32(data, 4) & 0xffff, readU32(data, 8), readU32(data, 12), readU32(data, 16)]).toEqual([5, 1, 0, 0, W * 4])
    const second = readU32(data, 4) >>> 16
    expect([readU32(data, second), readU32(data, second + 4) & 0xffff, readU32(data, second + 8)]).toEqual([5, 3, 6])
    // Commit: the whole new buffer; then a partial damage copies its rows only.
    client.feed(req(7, "wl_surface", "attach", [6, 0, 0]))
    client.feed(req(7, "wl_surface", "damage", [0, 0, W, H]))
    client.feed(req(7, "wl_surface", "commit", []))
    expect(conn.onClientReadable()).toBe(true)
    expect(conn.stats.copiedBytes).toBe(W * H * 4)
    const blob = [...alloc!.live][0]!
    const hostPx = new Uint32Array(blob.view.buffer, blob.view.byteOffset, W * H)
    expect(hostPx.every((v) => v === 0xff336699)).toBe(true)
    for (let y = 10; y < 14; y++) px.fill(0xffaa0000, (y * stride) / 4 + 8, (y * stride) / 4 + 16)
    client.feed(req(7, "wl_surface", "attach", [6, 0, 0]))
    client.feed(req(7, "wl_surface", "damage", [8, 10, 8, 4]))
    client.feed(req(7, "wl_surface", "commit", []))
    conn.onClientReadable()
    expect(conn.stats.copiedBytes - W * H * 4).toBe(8 * 4 * 4)
    expect(hostPx[10 * W + 8]).toBe(0xffaa0000)
    expect(hostPx.filter((v) => v === 0xffaa0000).length).toBe(32)
    // Destroying the buffer releases the import and the host image.
    client.feed(req(6, "wl_buffer", "destroy", []))
    conn.onClientReadable()
    expect(gbm.live).toBe(0)
    expect(alloc!.live.size).toBe(0)
    fmap.unmap()
    t.done()
  })

  it("a multi-plane format cannot be copied: protocol error naming create_immed", () => {
    const gbm = new FakeGbm()
    const t = setup(true, (device) => {
      const alloc = blobAllocator(device)
      return [fdCheck, hostOnlyIds, shmCopy({ allocator: alloc }), dmabuf({ gbm: () => gbm, allocator: alloc })]
    })
    t.client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [2, { interface: "zwp_linux_dmabuf_v1", version: 3, id: 3 }], []))
    t.client.feed(req(3, "zwp_linux_dmabuf_v1", "create_params", [5]))
    t.conn.onClientReadable()
    const a = memfdCreate("y", 4096)
    const b = memfdCreate("uv", 4096)
    t.client.feed(encodeMessage(5, reqDesc("zwp_linux_buffer_params_v1", "add"), [a, 0, 0, 64, 0, 0], []), [a])
    t.client.feed(encodeMessage(5, reqDesc("zwp_linux_buffer_params_v1", "add"), [b, 1, 0, 64, 0, 0], []), [b])
    t.client.feed(req(5, "zwp_linux_buffer_params_v1", "create_immed", [6, 64, 32, 0x3231564e, 0]))
    expect(t.conn.onClientReadable()).toBe(false)
    const v = (t.ends[0] as { violation: { message: string } }).violation
    expect(v.message).toMatch(/^zwp_linux_buffer_params_v1@5\.create_immed: format 0x3231564e with 2 plane\(s\) cannot be copied/)
    t.done()
  })
})

describe("libgbm binding", () => {
  it("loads libgbm when installed; without a GPU no device opens (the copy path is off, not broken)", () => {
    const lib = loadGbm()
    // libgbm-dev is installed on this machine; a missing library would simply be null.
    expect(lib === null || typeof lib.createDevice === "function").toBe(true)
    const dev = openGbmDevice("/dev/dri/renderD-none")
    expect(dev).toBeNull()
    const any = openGbmDevice()
    if (any !== null) any.close() // a machine with a GPU
  })
})

/**
 * The emulated virtio-gpu end to end: a real `sommelier emulate-host` process whose Wayland
 * channel is a real headless weston, driven through the guest-side emulated backend. Checks the
 * device-file rules (§1.5/§5), blobs crossing the process boundary, the cross-domain host (§4)
 * against a real compositor, and the empty RECEIVE at compositor EOF (last test: kills weston).
 * Every test checks the guest process leaked no fds.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { fstatSync } from "node:fs"
import { Errno } from "../../src/ffi/errno.js"
import { startWeston, type Weston } from "../../src/host/weston.js"
import * as Reactor from "../../src/transport/reactor.js"
import { memfdCreate } from "../../src/transport/memfd.js"
import { sys } from "../../src/ffi/libc.js"
import {
  BLOB_FLAG_USE_MAPPABLE,
  BLOB_FLAG_USE_SHAREABLE,
  BLOB_MEM_GUEST,
  BLOB_MEM_HOST3D,
  CAPSET_CROSS_DOMAIN,
  EVENT_FENCE_SIGNALED,
  VirtGpuError
} from "../../src/virtgpu/device.js"
import { EmulatedDevice } from "../../src/virtgpu/emulated.js"
import { DRM_FORMAT } from "../../src/emulator/formats.js"
import { checkFds, describeFd, expectNoFdLeak, openFds } from "../helpers/fds.js"
import { CD, parseGlobal, sendCmd, sleep, startEmulatorProcess, TestGuest, until, wlEvents, wlMessage, type EmulatorProcess } from "./fixture.js"

let scope: Scope.CloseableScope
let weston: Weston
let emu: EmulatorProcess

beforeAll(async () => {
  scope = Effect.runSync(Scope.make())
  weston = await Effect.runPromise(Scope.extend(startWeston({}), scope))
  emu = await startEmulatorProcess(weston.socketPath)
}, 60_000)

afterAll(async () => {
  await emu?.stop()
  await Effect.runPromise(Scope.close(scope, Exit.void))
})

/** Runs `body` and fails if the guest (this process) leaked an fd. */
const noLeak = async (body: () => Promise<void> | void): Promise<void> => {
  const before = openFds()
  await body()
  await checkFds(before)
}

/** Only new fds count (when the test itself ends a child process, its pipes close). */
const noNewFds = async (body: () => Promise<void>): Promise<void> => {
  const before = new Set(openFds())
  await body()
  await sleep(50)
  const leaked = openFds().filter((fd) => !before.has(fd))
  expect(leaked.map((fd) => `${fd}→${describeFd(fd)}`)).toEqual([])
}

const errnoOf = (f: () => unknown): string => {
  try {
    f()
  } catch (e) {
    if (e instanceof VirtGpuError) return `${e.reason}:${e.errno}`
    throw e
  }
  return "ok"
}

const guestBlob = (dev: EmulatedDevice, size = 4096) =>
  dev.createBlob({ blobMem: BLOB_MEM_GUEST, blobFlags: BLOB_FLAG_USE_MAPPABLE, size, blobId: 0n })

/** get_registry(2) + sync(3) on wl_display. */
const registryAndSync = (): Uint8Array => {
  const a = wlMessage(1, 1, [2])
  const b = wlMessage(1, 0, [3])
  const out = new Uint8Array(a.length + b.length)
  out.set(a)
  out.set(b, a.length)
  return out
}

/** POLL/RECEIVE until wl_callback(3).done; returns every event and how many RECEIVEs it took. */
const collectUntilDone = async (g: TestGuest, already: ReturnType<typeof wlEvents> = []) => {
  const events: ReturnType<typeof wlEvents> = [...already]
  let receives = 0
  while (!events.some((e) => e.objectId === 3 && e.opcode === 0)) {
    g.poll()
    const m = await g.next()
    expect(m.cmd).toBe(CD.RECEIVE)
    if (m.cmd !== CD.RECEIVE || !("data" in m)) throw new Error("not a RECEIVE")
    receives++
    events.push(...wlEvents(m.data))
    if (receives > 20) throw new Error("no wl_callback.done")
  }
  return { events, receives }
}

describe("emulated virtio-gpu against emulate-host + weston", () => {
  it("GETPARAM, GET_CAPS and CONTEXT_INIT follow the kernel's rules", () =>
    noLeak(() => {
      const dev = new EmulatedDevice(emu.socketPath)
      try {
        expect(dev.backend).toBe("emulated")
        expect(dev.version().name).toBe("virtio_gpu")
        for (let p = 1; p <= 6; p++) expect(dev.getParam(p)).toBe(1)
        expect(dev.getParam(7)).toBe(1 << 5)
        expect(errnoOf(() => dev.getParam(8))).toBe("Ioctl:22")
        expect(errnoOf(() => dev.getParam(0))).toBe("Ioctl:22")
        expect([...dev.getCaps(5, 0, 16)]).toEqual([1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        expect([...dev.getCaps(5, 0, 8)]).toEqual([1, 0, 0, 0, 2, 0, 0, 0])
        expect(errnoOf(() => dev.getCaps(5, 1, 16))).toBe("Unsupported:22")
        expect(errnoOf(() => dev.getCaps(4, 0, 16))).toBe("Unsupported:22")
        // Bad parameters are refused without creating the context.
        expect(errnoOf(() => dev.contextInit(4, 2, 0b10))).toBe("Unsupported:22")
        expect(errnoOf(() => dev.contextInit(CAPSET_CROSS_DOMAIN, 2, 0b100))).toBe("Unsupported:22")
        expect(errnoOf(() => dev.contextInit(CAPSET_CROSS_DOMAIN, 65, 0))).toBe("Unsupported:22")
        // RING_IDX needs a context with that ring.
        expect(errnoOf(() => dev.execbuffer({ command: new Uint8Array(16), ringIdx: 1 }))).toBe("Ioctl:22")
        dev.contextInit(CAPSET_CROSS_DOMAIN, 2, 0b10)
        expect(errnoOf(() => dev.contextInit(CAPSET_CROSS_DOMAIN, 2, 0b10))).toBe("Ioctl:17")
        expect(errnoOf(() => dev.execbuffer({ command: new Uint8Array(16), ringIdx: 2 }))).toBe("Ioctl:22")
      } finally {
        dev.close()
      }
      // The context is also created implicitly by blob creation: CONTEXT_INIT afterwards is EEXIST.
      const dev2 = new EmulatedDevice(emu.socketPath)
      try {
        guestBlob(dev2)
        expect(errnoOf(() => dev2.contextInit(CAPSET_CROSS_DOMAIN, 2, 0b10))).toBe("Ioctl:17")
      } finally {
        dev2.close()
      }
    }))

  it("GUEST blobs: device-global res ids, per-file handles from 1, page rounding, guest writes seen by the host", () =>
    noLeak(() => {
      const a = new EmulatedDevice(emu.socketPath)
      const b = new EmulatedDevice(emu.socketPath)
      try {
        a.contextInit(CAPSET_CROSS_DOMAIN, 2, 0b10)
        b.contextInit(CAPSET_CROSS_DOMAIN, 2, 0b10)
        const a1 = guestBlob(a, 100)
        const b1 = guestBlob(b)
        const a2 = guestBlob(a, 4097)
        expect([a1.handle, a2.handle, b1.handle]).toEqual([1, 2, 1])
        expect(new Set([a1.resId, a2.resId, b1.resId]).size).toBe(3)
        expect(a.resourceInfo(a1.handle)).toEqual({ resId: a1.resId, size: 4096, blobMem: BLOB_MEM_GUEST })
        expect(a.resourceInfo(a2.handle).size).toBe(8192)
        const m = a.map(a1.handle, 4096)
        expect(m.view.every((x) => x === 0)).toBe(true)
        m.view.set([0xde, 0xad, 0xbe, 0xef], 100)
        expect([...a.debugRead(a1.resId, 100, 4)]).toEqual([0xde, 0xad, 0xbe, 0xef])
        m.unmap()
        expect(errnoOf(() => a.map(a1.handle, 8192))).toBe("Ioctl:22")
        // Handles are reused lowest-first, like the kernel's idr.
        a.gemClose(a1.handle)
        expect(errnoOf(() => a.gemClose(a1.handle))).toBe("Ioctl:22")
        expect(errnoOf(() => a.resourceInfo(a1.handle))).toBe("Ioctl:2")
        expect(guestBlob(a).handle).toBe(1)
        // Invalid creations.
        expect(errnoOf(() => a.createBlob({ blobMem: BLOB_MEM_GUEST, blobFlags: 8, size: 4096, blobId: 0n }))).toBe("Ioctl:22")
        expect(errnoOf(() => a.createBlob({ blobMem: BLOB_MEM_GUEST, blobFlags: 1, size: 4096, blobId: 7n }))).toBe("Ioctl:22")
        expect(errnoOf(() => a.createBlob({ blobMem: 9, blobFlags: 1, size: 4096, blobId: 0n }))).toBe("Ioctl:22")
      } finally {
        a.close()
        b.close()
      }
    }))

  it("PRIME: export gives the memfd, import finds the same resource (also from another file), foreign fds are refused", () =>
    noLeak(() => {
      const a = new EmulatedDevice(emu.socketPath)
      const b = new EmulatedDevice(emu.socketPath)
      try {
        a.contextInit(CAPSET_CROSS_DOMAIN, 2, 0b10)
        b.contextInit(CAPSET_CROSS_DOMAIN, 2, 0b10)
        const blob = guestBlob(a)
        const m = a.map(blob.handle, 4096)
        m.view.set([1, 2, 3], 0)
        const fd = a.primeHandleToFd(blob.handle)
        expect(describeFd(fd)).toMatch(/^\/memfd:/)
        expect(fstatSync(fd).size).toBe(4096)
        expect(a.primeFdToHandle(fd)).toBe(blob.handle)
        const hb = b.primeFdToHandle(fd)
        expect(b.resourceInfo(hb).resId).toBe(blob.resId)
        expect(b.primeFdToHandle(fd)).toBe(hb)
        const mb = b.map(hb, 4096)
        expect([...mb.view.subarray(0, 3)]).toEqual([1, 2, 3])
        mb.unmap()
        m.unmap()
        // Exported and every handle closed: the dma-buf (here the memfd) still names the resource.
        a.gemClose(blob.handle)
        b.gemClose(hb)
        const again = a.primeFdToHandle(fd)
        expect(a.resourceInfo(again).resId).toBe(blob.resId)
        sys.close(fd)
        const foreign = memfdCreate("not-a-blob", 4096)
        expect(errnoOf(() => a.primeFdToHandle(foreign))).toBe("Ioctl:22")
        sys.close(foreign)
      } finally {
        a.close()
        b.close()
      }
    }))

  it.effect("INIT + POLL + SEND(get_registry, sync) → RECEIVE of weston's globals; the fence event makes eventFd readable", () =>
    expectNoFdLeak(Effect.scoped(Effect.gen(function* () {
      const reactor = yield* Reactor.make
      const g = new TestGuest(emu.socketPath)
      yield* Effect.addFinalizer(() => Effect.sync(() => g.close()))
      g.submit(sendCmd(registryAndSync()))
      g.poll()
      // eventFd polls readable once the host has written the ring and signalled the fence.
      yield* Effect.async<void>((resume) => {
        const w = reactor.watch(g.dev.eventFd, Reactor.EPOLLIN, () => {
          w.close()
          resume(Effect.void)
        })
      }).pipe(Effect.timeout("5 seconds"))
      expect(g.dev.readEvents()).toEqual([EVENT_FENCE_SIGNALED])
      expect(g.dev.readEvents()).toEqual([])
      const first = g.channel.map.view
      expect(first[0]).toBe(CD.RECEIVE)
      const firstEvents = wlEvents(first.slice(352, 352 + new DataView(first.buffer, first.byteOffset).getUint32(12, true)))
      expect(firstEvents[0]?.objectId).toBe(2) // wl_registry.global
      // One message per POLL: nothing more until re-armed.
      expect(yield* Effect.promise(() => g.quiet(150))).toBe(true)
      const rest = yield* Effect.promise(() => collectUntilDone(g, firstEvents))
      const globals = rest.events.filter((e) => e.objectId === 2 && e.opcode === 0).map((e) => parseGlobal(e.body).iface)
      expect(globals).toContain("wl_compositor")
      expect(globals).toContain("wl_shm")
    }))))

  it("GET_IMAGE_REQUIREMENTS: system allocator layouts written at the query ring", () =>
    noLeak(() => {
      const g = new TestGuest(emu.socketPath)
      try {
        const x = g.imageRequirements(640, 480, DRM_FORMAT.XRGB8888)
        expect(x.strides).toEqual([2560, 0, 0, 0])
        expect(x.offsets).toEqual([0, 0, 0, 0])
        expect(x.size).toBe(1228800)
        expect(x.modifier).toBe(0n)
        expect(x.mapInfo).toBe(1)
        expect([x.memoryIdx, x.physicalDeviceIdx]).toEqual([-1, -1])
        expect(x.blobId).toBe(2) // rutabaga 2026: one counter, pre-incremented from 1
        const nv12 = g.imageRequirements(640, 480, DRM_FORMAT.NV12)
        expect(nv12.strides).toEqual([640, 640, 0, 0])
        expect(nv12.offsets).toEqual([0, 307200, 0, 0])
        expect(nv12.size).toBe(462848) // 460800 rounded up to a page
        expect(nv12.blobId).toBe(3)
        const yv12 = g.imageRequirements(10, 10, DRM_FORMAT.YVU420)
        expect(yv12.strides).toEqual([10, 5, 5, 0])
        expect(yv12.offsets).toEqual([0, 100, 125, 0])
        expect(yv12.size).toBe(4096)
        const bgr = g.imageRequirements(641, 3, DRM_FORMAT.BGR888)
        expect(bgr.strides[0]).toBe(1923)
        // Unknown format: nothing is written, the ring-0 fence still signals (wait returns).
        const unknown = g.imageRequirements(64, 64, 0x12345678)
        expect(unknown.size).toBe(0)
        expect(unknown.blobId).toBe(0)
      } finally {
        g.close()
      }
    }))

  it("HOST3D blob from image requirements: the guest's writes are the host's memory, and weston takes it as a wl_shm pool", () =>
    noLeak(async () => {
      const g = new TestGuest(emu.socketPath)
      try {
        const reqs = g.imageRequirements(64, 64, DRM_FORMAT.XRGB8888)
        expect(reqs.size).toBe(16384)
        const flags = BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE
        // The size must be the requirements' exactly: a mismatch fails on the host (mmap then fails).
        const bad = g.dev.createBlob({ blobMem: BLOB_MEM_HOST3D, blobFlags: flags, size: 8192, blobId: BigInt(reqs.blobId) })
        expect(errnoOf(() => g.dev.map(bad.handle, 8192))).toBe("Ioctl:22")
        g.dev.gemClose(bad.handle)
        const blob = g.dev.createBlob({ blobMem: BLOB_MEM_HOST3D, blobFlags: flags, size: reqs.size, blobId: BigInt(reqs.blobId) })
        expect(g.dev.resourceInfo(blob.handle)).toEqual({ resId: blob.resId, size: 16384, blobMem: BLOB_MEM_HOST3D })
        const m = g.dev.map(blob.handle, reqs.size)
        m.view.fill(0x7f, 0, 16384)
        m.view.set([1, 2, 3, 4], 4096)
        expect([...g.dev.debugRead(blob.resId, 4094, 6)]).toEqual([0x7f, 0x7f, 1, 2, 3, 4])
        m.unmap()
        // The requirements item is kept: a second allocation from the same blob_id works.
        const twin = g.dev.createBlob({ blobMem: BLOB_MEM_HOST3D, blobFlags: flags, size: reqs.size, blobId: BigInt(reqs.blobId) })
        g.dev.map(twin.handle, reqs.size).unmap()
        // Hand it to weston: registry → bind wl_shm → create_pool(blob) → create_buffer → sync.
        g.submit(sendCmd(registryAndSync()))
        const { events } = await collectUntilDone(g)
        const shm = events.filter((e) => e.objectId === 2 && e.opcode === 0).map((e) => parseGlobal(e.body)).find((x) => x.iface === "wl_shm")!
        const msgs = [
          wlMessage(2, 0, [shm.name, "wl_shm", 1, 4]), // bind → wl_shm 4
          wlMessage(4, 0, [5, 16384]), // create_pool(new_id 5, fd, size)
          wlMessage(5, 0, [6, 0, 64, 64, 256, 1]), // create_buffer(6, offset, w, h, stride, XRGB8888)
          wlMessage(1, 0, [7]) // sync → wl_callback 7
        ]
        const data = new Uint8Array(msgs.reduce((n, x) => n + x.length, 0))
        msgs.reduce((off, x) => (data.set(x, off), off + x.length), 0)
        g.submit(sendCmd(data, [[blob.resId, CD.ID_VIRTGPU_BLOB]]))
        let done = false
        for (let i = 0; i < 20 && !done; i++) {
          g.poll()
          const r = await g.next()
          if (!("data" in r)) throw new Error("expected RECEIVE")
          for (const e of wlEvents(r.data)) {
            expect(e.objectId === 1 && e.opcode === 0, "no wl_display.error").toBe(false)
            if (e.objectId === 7) done = true
          }
        }
        expect(done).toBe(true)
      } finally {
        g.close()
      }
    }))

  it("serves many device files at once, each with its own compositor connection", () =>
    noLeak(async () => {
      const guests = Array.from({ length: 4 }, () => new TestGuest(emu.socketPath))
      try {
        guests.forEach((g) => g.submit(sendCmd(registryAndSync())))
        const results = await Promise.all(guests.map((g) => collectUntilDone(g)))
        for (const r of results) expect(r.events.filter((e) => e.objectId === 2).length).toBeGreaterThan(5)
        const files = guests[0]!.dev.debugState().files.filter((f) => f.context?.crossDomain?.["connected"] === true)
        expect(files.length).toBeGreaterThanOrEqual(4)
      } finally {
        guests.forEach((g) => g.close())
      }
    }))

  it("closing the device file tears down the host context and its compositor connection", () =>
    noLeak(async () => {
      const g = new TestGuest(emu.socketPath)
      const observer = new EmulatedDevice(emu.socketPath)
      try {
        g.submit(sendCmd(registryAndSync()))
        await collectUntilDone(g)
        const mine = observer.debugState().files.find((f) => f.context?.crossDomain?.["connected"] === true)
        expect(mine).toBeDefined()
        const before = observer.debugState().files.length
        g.close()
        await until(() => (observer.debugState().files.length === before - 1 ? true : undefined), "the host to drop the file")
        expect(observer.debugState().files.some((f) => f.id === mine!.id)).toBe(false)
      } finally {
        g.close()
        observer.close()
      }
    }))

  it("one-way EXECBUFFER: a submission the emulator refuses fails the device at its next wake-up or request; later ones are dropped", () =>
    noLeak(async () => {
      const observer = new EmulatedDevice(emu.socketPath)
      const g = new TestGuest(emu.socketPath) // submission #1: INIT
      try {
        g.dev.debugFailNextSubmission(Errno.EINVAL)
        g.submit(sendCmd(registryAndSync())) // #2: refused
        g.poll() // #3: sent before the guest knows; dropped by the emulator
        const failure = await until(() => {
          try {
            g.dev.readEvents()
            return undefined
          } catch (e) {
            return e
          }
        }, "the event fd to report the failure")
        expect(failure).toBeInstanceOf(VirtGpuError)
        expect((failure as VirtGpuError).message).toMatch(/^VIRTGPU_EXECBUFFER: .*the emulator refused submission #2 of 3 \(emulated:.*\); the device is unusable$/)
        // Sticky: every later call throws the same error without talking to the emulator.
        expect(errnoOf(() => g.dev.getParam(1))).toBe("Protocol:22")
        expect(errnoOf(() => g.dev.execbuffer({ command: new Uint8Array(16), ringIdx: 1 }))).toBe("Protocol:22")
        expect(errnoOf(() => g.dev.readEvents())).toBe("Protocol:22")
        await until(() => (/file \d+: EXECBUFFER #2 \(flags 0x0, ring 0\) refused with errno 22; the file is failed/.test(emu.stderr()) ? true : undefined), "the emulator's log line")
        // The POLL after the refused SEND made no fence (it would wait: the compositor got nothing).
        const files = observer.debugState().files.filter((f) => f.context?.crossDomain?.["initialized"] === true)
        expect(files.map((f) => f.context?.crossDomain?.["pendingFences"])).toEqual([0])
      } finally {
        g.close()
      }
      // Surfaced by the next request when no wake-up was looked at first.
      const g2 = new TestGuest(emu.socketPath)
      try {
        g2.dev.debugFailNextSubmission(Errno.EIO)
        g2.poll() // #2: refused, ring 1
        expect(errnoOf(() => g2.dev.getParam(1))).toBe("Protocol:5")
        try {
          g2.dev.readEvents()
          expect.unreachable()
        } catch (e) {
          expect((e as VirtGpuError).message).toMatch(/refused submission #2 of 2, ring 1 /)
        }
      } finally {
        g2.close()
        observer.close()
      }
    }))

  it("compositor EOF (weston killed): an empty RECEIVE, and again for every later POLL", () =>
    noNewFds(async () => {
      const g = new TestGuest(emu.socketPath)
      try {
        g.submit(sendCmd(registryAndSync()))
        await collectUntilDone(g)
        weston.process.kill("SIGKILL")
        for (let i = 0; i < 3; i++) {
          g.poll()
          const m = await g.next()
          expect(m).toEqual({ cmd: CD.RECEIVE, ids: [], data: new Uint8Array(0) })
        }
        await until(() => (/compositor closed the connection/.test(emu.stderr()) ? true : undefined), "the host's log")
      } finally {
        g.close()
      }
    }))
})

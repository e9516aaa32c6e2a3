/**
 * An in-process fake `VirtGpuDevice` plus a tiny host script, for unit tests of the channel only
 * (the emulated backend is what integration tests use). It records every EXECBUFFER, keeps GUEST
 * ring pages as plain arrays, and lets a test play the host: `deliver` writes one message into
 * the channel ring and signals the outstanding POLL fence (refusing when none is armed, the way
 * a real host can only answer a POLL). Blob fds are real memfds so tests can read them and the
 * fd-leak checks see them.
 *
 * Also `FakeWatcher`, a reactor stand-in whose readiness the test fires by hand.
 */
import { fstatSync, writeSync } from "node:fs"
import { EFD_CLOEXEC, EFD_NONBLOCK, sys } from "../../src/ffi/libc.js"
import type { Watch } from "../../src/transport/reactor.js"
import { memfdCreate } from "../../src/transport/memfd.js"
import * as P from "../../src/transport/crossdomain/protocol.js"
import {
  BLOB_MEM_GUEST,
  BLOB_MEM_HOST3D,
  EVENT_FENCE_SIGNALED,
  VirtGpuError,
  type Blob,
  type CreateBlobArgs,
  type DriverVersion,
  type ExecbufferArgs,
  type Mapping,
  type ResourceInfo,
  type VirtGpuDevice
} from "../../src/virtgpu/device.js"

interface Resource {
  readonly resId: number
  readonly blobMem: number
  readonly size: number
  readonly mem: Uint8Array
}

export interface Exec {
  readonly command: Uint8Array
  readonly ringIdx: number | undefined
}

const inode = (fd: number): string => {
  const st = fstatSync(fd)
  return `${st.dev}:${st.ino}`
}

const ioctlError = (op: string, errno: number): VirtGpuError => new VirtGpuError({ reason: "Ioctl", op, errno, message: `${op} failed (errno ${errno})` })

export class FakeDevice implements VirtGpuDevice {
  readonly backend = "emulated" as const
  readonly name = "fake"
  readonly eventFd: number
  caps = P.encodeCapabilities({ version: 1, supportedChannels: 1 << P.CHANNEL_TYPE_WAYLAND, supportsDmabuf: false, supportsExternalGpuMemory: false })
  contextInits: Array<[number, number, number]> = []
  readonly execs: Exec[] = []
  readonly gemClosed: number[] = []
  /** Host-side items a HOST3D CREATE_BLOB may name: blob_id → contents. */
  readonly hostItems = new Map<number, Uint8Array>()
  /** Guest buffers PRIME import recognises (stand-ins for dma-bufs): inode → resource id. */
  readonly importable = new Map<string, number>()
  outstandingPolls = 0
  closed = false
  #nextRes = 1
  #nextHandle = 1
  readonly #resources = new Map<number, Resource>()
  readonly #handles = new Map<number, number>() // handle → resId
  readonly #events: number[] = []
  #channelRing: number | null = null

  constructor() {
    this.eventFd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
  }

  getParam(): number {
    return 1
  }
  getCaps(capsetId: number, _version: number, size: number): Uint8Array {
    if (capsetId !== P.CAPSET_CROSS_DOMAIN) throw ioctlError("GET_CAPS", 22)
    return this.caps.slice(0, size)
  }
  contextInit(capsetId: number, numRings: number, mask: number): void {
    if (this.contextInits.length > 0) throw ioctlError("CONTEXT_INIT", 17)
    this.contextInits.push([capsetId, numRings, mask])
  }

  #newHandle(resId: number): number {
    for (const [h, r] of this.#handles) if (r === resId) return h
    const h = this.#nextHandle++
    this.#handles.set(h, resId)
    return h
  }

  createBlob(args: CreateBlobArgs): Blob {
    const size = Math.ceil(args.size / 4096) * 4096
    let mem: Uint8Array
    if (args.blobMem === BLOB_MEM_GUEST) mem = new Uint8Array(size)
    else if (args.blobMem === BLOB_MEM_HOST3D) {
      const item = this.hostItems.get(Number(args.blobId))
      if (item === undefined) throw ioctlError("RESOURCE_CREATE_BLOB", 22)
      this.hostItems.delete(Number(args.blobId)) // received descriptors are one-shot (spec §4.6)
      mem = new Uint8Array(size)
      mem.set(item)
    } else throw ioctlError("RESOURCE_CREATE_BLOB", 22)
    const resId = this.#nextRes++
    this.#resources.set(resId, { resId, blobMem: args.blobMem, size, mem })
    return { handle: this.#newHandle(resId), resId }
  }

  #res(handle: number): Resource {
    const resId = this.#handles.get(handle)
    const r = resId === undefined ? undefined : this.#resources.get(resId)
    if (r === undefined) throw ioctlError("handle", 2)
    return r
  }

  map(handle: number, size: number): Mapping {
    const r = this.#res(handle)
    return { view: r.mem.subarray(0, size), unmap: () => {} }
  }

  execbuffer(args: ExecbufferArgs): void {
    const command = args.command.slice()
    this.execs.push({ command, ringIdx: args.ringIdx })
    const h = P.readHeader(command)
    if (h?.cmd === P.CMD_INIT) this.#channelRing = new DataView(command.buffer).getUint32(12, true)
    // The host answers the ring-1 fence, whatever the buffer holds (a SEND may carry the POLL).
    if (args.ringIdx === P.CHANNEL_RING) this.outstandingPolls++
  }

  readEvents(): number[] {
    const buf = new BigUint64Array(1)
    sys.read(this.eventFd, buf, 8)
    return this.#events.splice(0)
  }

  resourceInfo(handle: number): ResourceInfo {
    const r = this.#res(handle)
    return { resId: r.resId, size: r.size, blobMem: r.blobMem }
  }

  primeHandleToFd(handle: number): number {
    const r = this.#res(handle)
    const fd = memfdCreate("fake-blob", r.size)
    writeSync(fd, r.mem)
    this.importable.set(inode(fd), r.resId)
    return fd
  }

  primeFdToHandle(fd: number): number {
    let key: string
    try {
      key = inode(fd)
    } catch {
      throw ioctlError("PRIME_FD_TO_HANDLE", 9)
    }
    const resId = this.importable.get(key)
    if (resId === undefined) throw ioctlError("PRIME_FD_TO_HANDLE", 22)
    if (!this.#resources.has(resId)) this.#resources.set(resId, { resId, blobMem: BLOB_MEM_HOST3D, size: 4096, mem: new Uint8Array(4096) })
    return this.#newHandle(resId)
  }

  wait(): boolean {
    return true
  }

  version(): DriverVersion {
    return { name: "virtio_gpu", major: 0, minor: 1, patchlevel: 0, date: "0", desc: "fake" }
  }

  gemClose(handle: number): void {
    this.gemClosed.push(handle)
    this.#handles.delete(handle)
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    sys.close(this.eventFd)
  }

  // ---------------------------------------------------------------------------------------------
  // The test plays the host

  /** A guest buffer PRIME import accepts, as resource `resId` (a memfd standing in for a dma-buf). */
  guestBlob(resId: number, size = 4096): number {
    const fd = memfdCreate("fake-guest-blob", size)
    this.importable.set(inode(fd), resId)
    this.#resources.set(resId, { resId, blobMem: BLOB_MEM_HOST3D, size, mem: new Uint8Array(size) })
    return fd
  }

  /** Writes `message` into the channel ring and signals the POLL fence. Throws without a POLL. */
  deliver(message: Uint8Array): void {
    if (this.outstandingPolls === 0) throw new Error("host: no POLL outstanding, nothing may be delivered")
    if (this.#channelRing === null) throw new Error("host: no INIT yet")
    const ring = this.#resources.get(this.#channelRing)!
    ring.mem.fill(0)
    ring.mem.set(message)
    this.outstandingPolls--
    this.#events.push(EVENT_FENCE_SIGNALED)
    sys.write(this.eventFd, new BigUint64Array([1n]), 8)
  }

  /** Execs after index `from`, decoded by command. */
  sent(from = 0): Array<{ cmd: number; ringIdx: number | undefined; command: Uint8Array }> {
    return this.execs.slice(from).map((e) => ({ cmd: e.command[0]!, ringIdx: e.ringIdx, command: e.command }))
  }
}

export class FakeWatcher {
  readonly live = new Map<number, { events: number; onReady: (ev: number) => void }>()
  readonly watch = (fd: number, events: number, onReady: (ev: number) => void): Watch => {
    if (this.live.has(fd)) throw new Error(`fd ${fd} already watched`)
    const entry = { events, onReady }
    this.live.set(fd, entry)
    return {
      fd,
      setEvents: (e: number) => {
        entry.events = e
      },
      close: () => {
        if (this.live.get(fd) === entry) this.live.delete(fd)
      }
    }
  }
  fire(fd: number, events: number): void {
    const w = this.live.get(fd)
    if (w === undefined) throw new Error(`fd ${fd} not watched`)
    w.onReady(events)
  }
}

/**
 * The emulated virtio-gpu device: what the guest kernel's virtio_gpu driver and the VMM's device
 * model do between the guest's ioctls and rutabaga's contexts (spec §1.5 and §5).
 *
 * - One `GpuFile` per opened device file: GEM handles (lowest free from 1), the context
 *   (CONTEXT_INIT once, EEXIST afterwards; implicitly created with capset 0 by EXECBUFFER and blob
 *   creation), per-ring fences, and the file's event counter (an eventfd incremented once per
 *   `drm_event{FENCE_SIGNALED}` when a fence on a polled ring signals).
 * - Resources are device-global (res ids lowest free from 1). Memory is a memfd: GUEST blobs
 *   are zeroed pages the emulator maps too (the host writes the rings through that mapping);
 *   HOST3D blobs come from the context's `context_create_blob` (cross-domain items).
 * - A GEM handle's creation/closing attaches/detaches the resource to/from the file's context,
 *   like CTX_ATTACH_RESOURCE / CTX_DETACH_RESOURCE.
 * - PRIME export hands out the memfd; PRIME import recognizes an fd by (st_dev, st_ino) among the
 *   device's resources, including exported ones whose last handle is gone (the kernel keeps those
 *   alive through the dma-buf); anything else is EINVAL, as for a file that is not a dma-buf.
 *
 * Results follow the -errno convention; nothing here throws for guest mistakes.
 * Not here: the socket protocol (`server.ts`), the cross-domain host (`crossdomain.ts`).
 */
import { fstatSync, readSync } from "node:fs"
import { Errno } from "../ffi/errno.js"
import { sys, EFD_CLOEXEC, EFD_NONBLOCK, MFD_ALLOW_SEALING, MFD_CLOEXEC } from "../ffi/libc.js"
import { mapShared, type SharedMapping } from "../transport/memfd.js"
import {
  BLOB_FLAG_USE_CROSS_DEVICE,
  BLOB_FLAG_USE_MAPPABLE,
  BLOB_FLAG_USE_SHAREABLE,
  BLOB_MEM_GUEST,
  BLOB_MEM_HOST3D,
  BLOB_MEM_HOST3D_GUEST,
  CAPSET_CROSS_DOMAIN,
  CONTEXT_PARAM_CAPSET_ID,
  CONTEXT_PARAM_NUM_RINGS,
  CONTEXT_PARAM_POLL_RINGS_MASK,
  EXECBUF_FENCE_FD_IN,
  EXECBUF_FENCE_FD_OUT,
  EXECBUF_RING_IDX,
  PARAM_SUPPORTED_CAPSET_IDS,
  WAIT_NOWAIT
} from "../virtgpu/device.js"
import { CrossDomainContext, type CrossDomainHost, type Fence } from "./crossdomain.js"
import { roundUpToPage } from "./formats.js"

const CONTEXT_PARAM_DEBUG_NAME = 4
const MAX_CAPSET_ID = 63
const MAX_RINGS = 64
const WAIT_TIMEOUT_MS = 15_000
/** Capset 5: max_version 0, 16 bytes of capabilities. */
const CROSS_DOMAIN_CAPSET_MAX_VERSION = 0

interface Resource {
  readonly resId: number
  readonly blobMem: number
  readonly size: number
  /** Host memory; -1 when creation failed on the host or after the last handle of an exported blob closed. */
  fd: number
  dev: number
  ino: number
  /** The emulator's own mapping of GUEST blobs (the "guest pages" the host writes). */
  mapping: SharedMapping | null
  /** GEM handles over all files. */
  handles: number
  exported: boolean
  /** Unsignalled fences of submissions that listed this resource. */
  busy: number
}

interface GpuFence extends Fence {
  readonly file: GpuFile
  readonly ringIdx: number
  readonly resources: readonly Resource[]
  signalled: boolean
}

interface Context {
  readonly capsetId: number
  readonly numRings: number
  readonly pollMask: number
  readonly crossDomain: CrossDomainContext<GpuFence> | null
}

interface Waiter {
  readonly file: GpuFile
  readonly resource: Resource
  readonly reply: (status: number) => void
  readonly timer: ReturnType<typeof setTimeout>
}

export interface GpuOptions extends CrossDomainHost {}

/** Whether ring `idx` is in a poll mask (masks go up to 64 rings: above bit 30 by arithmetic). */
const ringPolled = (mask: number, idx: number): boolean => (idx < 31 ? (mask & (1 << idx)) !== 0 : Math.floor(mask / 2 ** idx) % 2 === 1)

export class GpuFile {
  readonly id: number
  readonly handles = new Map<number, Resource>()
  readonly byRes = new Map<number, number>()
  context: Context | null = null
  /** The guest's copy of this eventfd is its `eventFd`. */
  readonly eventFd: number
  closed = false

  constructor(id: number, eventFd: number) {
    this.id = id
    this.eventFd = eventFd
  }
}

const one = new BigUint64Array([1n])
/** Shared by submissions that list no BO (never written to). */
const noResources: Resource[] = []

export class Gpu {
  readonly #o: GpuOptions
  readonly #resources = new Map<number, Resource>()
  readonly #byInode = new Map<string, Resource>()
  readonly #files = new Set<GpuFile>()
  #waiters: Waiter[] = []
  #nextFile = 1
  #nextFence = 1

  constructor(options: GpuOptions) {
    this.#o = options
  }

  // -----------------------------------------------------------------------------------------------
  // Files

  /** A new device file, or -errno. */
  openFile(): GpuFile | number {
    const efd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
    if (efd < 0) return efd
    const f = new GpuFile(this.#nextFile++, efd)
    this.#files.add(f)
    return f
  }

  /** Closing the DRM file: every handle closed (detach), context destroyed, waits cancelled. */
  closeFile(f: GpuFile): void {
    if (f.closed) return
    f.closed = true
    for (const w of this.#waiters.filter((w) => w.file === f)) clearTimeout(w.timer)
    this.#waiters = this.#waiters.filter((w) => w.file !== f)
    for (const handle of [...f.handles.keys()]) this.gemClose(f, handle)
    f.context?.crossDomain?.destroy()
    f.context = null
    sys.close(f.eventFd)
    this.#files.delete(f)
  }

  // -----------------------------------------------------------------------------------------------
  // Parameters and capsets

  get #capsetMask(): number {
    return 1 << CAPSET_CROSS_DOMAIN
  }

  getParam(param: number): number {
    if (param >= 1 && param <= 6) return 1
    if (param === PARAM_SUPPORTED_CAPSET_IDS) return this.#capsetMask
    return -Errno.EINVAL
  }

  /** The capset bytes truncated to `size`, or -errno. */
  getCaps(id: number, version: number, size: number): Uint8Array | number {
    if (size === 0) return -Errno.EINVAL
    if (id !== CAPSET_CROSS_DOMAIN || version > CROSS_DOMAIN_CAPSET_MAX_VERSION) return -Errno.EINVAL
    const caps = new DataView(new ArrayBuffer(16))
    let channels = 0
    for (const type of this.#o.channels.keys()) channels |= 1 << type
    caps.setUint32(0, 1, true) // version
    caps.setUint32(4, channels >>> 0, true)
    caps.setUint32(8, 0, true) // supports_dmabuf: memfd allocator
    caps.setUint32(12, 0, true) // supports_external_gpu_memory
    return new Uint8Array(caps.buffer).slice(0, Math.min(size, 16))
  }

  // -----------------------------------------------------------------------------------------------
  // Contexts

  contextInit(f: GpuFile, params: ReadonlyArray<readonly [number, number]>): number {
    if (params.length < 1 || params.length > 4) return -Errno.EINVAL
    if (f.context !== null) return -Errno.EEXIST
    let capsetId = 0
    let numRings = 0
    let pollMask = 0
    let sawCapset = false
    let sawRings = false
    let sawMask = false
    for (const [param, value] of params) {
      switch (param) {
        case CONTEXT_PARAM_CAPSET_ID:
          if (value === 0 || value > MAX_CAPSET_ID || sawCapset) return -Errno.EINVAL
          if ((this.#capsetMask & (2 ** value)) === 0) return -Errno.EINVAL
          capsetId = value
          sawCapset = true
          break
        case CONTEXT_PARAM_NUM_RINGS:
          if (value > MAX_RINGS || sawRings) return -Errno.EINVAL
          numRings = value
          sawRings = true
          break
        case CONTEXT_PARAM_POLL_RINGS_MASK:
          if (sawMask) return -Errno.EINVAL
          pollMask = value
          sawMask = true
          break
        case CONTEXT_PARAM_DEBUG_NAME:
          break
        default:
          return -Errno.EINVAL
      }
    }
    // Every polled ring must exist.
    if (pollMask !== 0 && (numRings >= 53 ? false : pollMask >= 2 ** numRings)) return -Errno.EINVAL
    this.#createContext(f, capsetId, numRings, pollMask)
    return 0
  }

  #createContext(f: GpuFile, capsetId: number, numRings: number, pollMask: number): Context {
    const crossDomain =
      capsetId === CAPSET_CROSS_DOMAIN ? new CrossDomainContext<GpuFence>(f.id, this.#o, (fence) => this.#signal(fence)) : null
    const ctx: Context = { capsetId, numRings, pollMask, crossDomain }
    f.context = ctx
    return ctx
  }

  /** The kernel creates a capset-0 context on first use when CONTEXT_INIT was not called. */
  #ensureContext(f: GpuFile): Context {
    return f.context ?? this.#createContext(f, 0, 0, 0)
  }

  // -----------------------------------------------------------------------------------------------
  // Resources and handles

  #newResId(): number {
    let id = 1
    while (this.#resources.has(id)) id++
    return id
  }

  #newHandle(f: GpuFile, r: Resource): number {
    let h = 1
    while (f.handles.has(h)) h++
    f.handles.set(h, r)
    f.byRes.set(r.resId, h)
    r.handles++
    // CTX_ATTACH_RESOURCE
    f.context?.crossDomain?.attach({ resId: r.resId, fd: r.blobMem === BLOB_MEM_GUEST ? -1 : r.fd, guestView: r.mapping?.view ?? null })
    return h
  }

  #identify(r: Resource): void {
    if (r.fd < 0) return
    try {
      const st = fstatSync(r.fd)
      r.dev = st.dev
      r.ino = st.ino
      this.#byInode.set(`${st.dev}:${st.ino}`, r)
    } catch {
      // an fd fstat cannot see cannot be imported back; nothing else depends on it
    }
  }

  createBlob(f: GpuFile, blobMem: number, blobFlags: number, size: number, blobId: bigint): { handle: number; resId: number } | number {
    if ((blobFlags & ~(BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE | BLOB_FLAG_USE_CROSS_DEVICE)) !== 0) return -Errno.EINVAL
    if (blobMem !== BLOB_MEM_GUEST && blobMem !== BLOB_MEM_HOST3D && blobMem !== BLOB_MEM_HOST3D_GUEST) return -Errno.EINVAL
    if (blobMem === BLOB_MEM_GUEST && blobId !== 0n) return -Errno.EINVAL
    if (!(size > 0)) return -Errno.EINVAL
    const ctx = this.#ensureContext(f)
    const rounded = roundUpToPage(size)
    const resId = this.#newResId()
    const r: Resource = { resId, blobMem, size: rounded, fd: -1, dev: 0, ino: 0, mapping: null, handles: 0, exported: false, busy: 0 }
    if (blobMem === BLOB_MEM_GUEST) {
      // Guest pages: zeroed shared memory, also mapped here because the host writes into it.
      const fd = sys.memfd_create(`virtgpu-guest-${resId}`, MFD_CLOEXEC | MFD_ALLOW_SEALING)
      if (fd < 0) return fd
      const t = sys.ftruncate(fd, rounded)
      if (t < 0) {
        sys.close(fd)
        return t
      }
      try {
        r.mapping = mapShared(fd, rounded)
      } catch {
        sys.close(fd)
        return -Errno.ENOMEM
      }
      r.fd = fd
    } else {
      // Routed to the context (rutabaga sends every blob create with a ctx_id there). A host
      // failure is not reported by the ioctl: the guest sees it when mapping or exporting.
      const made = ctx.crossDomain?.createBlob(resId, blobId, rounded) ?? `context (capset ${ctx.capsetId}) has no blob allocator`
      if (typeof made === "string") this.#o.log(`RESOURCE_CREATE_BLOB res ${resId}: ${made}`)
      else r.fd = made.fd
    }
    this.#resources.set(resId, r)
    this.#identify(r)
    const handle = this.#newHandle(f, r)
    return { handle, resId }
  }

  /** The fd to map and the object size, or -errno. The fd stays ours (SCM_RIGHTS duplicates it). */
  mapFd(f: GpuFile, handle: number): { fd: number; size: number } | number {
    const r = f.handles.get(handle)
    if (r === undefined) return -Errno.ENOENT
    if (r.fd < 0) return -Errno.EINVAL
    return { fd: r.fd, size: r.size }
  }

  resourceInfo(f: GpuFile, handle: number): { resId: number; size: number; blobMem: number } | number {
    const r = f.handles.get(handle)
    if (r === undefined) return -Errno.ENOENT
    return { resId: r.resId, size: r.size, blobMem: r.blobMem }
  }

  primeExport(f: GpuFile, handle: number): number {
    const r = f.handles.get(handle)
    if (r === undefined) return -Errno.ENOENT
    if (r.fd < 0) return -Errno.EINVAL
    r.exported = true
    return r.fd
  }

  /** Takes ownership of `fd`. The handle, or -errno. */
  primeImport(f: GpuFile, fd: number): number {
    let key: string
    try {
      const st = fstatSync(fd)
      key = `${st.dev}:${st.ino}`
    } catch {
      sys.close(fd)
      return -Errno.EBADF
    }
    const r = this.#byInode.get(key)
    if (r === undefined || !this.#resources.has(r.resId)) {
      sys.close(fd)
      return -Errno.EINVAL
    }
    if (r.fd < 0) r.fd = fd // an exported blob coming back after its handles were gone
    else sys.close(fd)
    const existing = f.byRes.get(r.resId)
    if (existing !== undefined) return existing
    if (f.context === null) this.#ensureContext(f) // older kernels create it on any GEM handle
    return this.#newHandle(f, r)
  }

  gemClose(f: GpuFile, handle: number): number {
    const r = f.handles.get(handle)
    if (r === undefined) return -Errno.EINVAL
    f.handles.delete(handle)
    f.byRes.delete(r.resId)
    // CTX_DETACH_RESOURCE
    f.context?.crossDomain?.detach(r.resId)
    r.handles--
    if (r.handles === 0) this.#release(r)
    return 0
  }

  /** Last handle gone: an unexported resource is destroyed; an exported one keeps its id and inode. */
  #release(r: Resource): void {
    r.mapping?.unmap()
    r.mapping = null
    if (r.fd >= 0) sys.close(r.fd)
    r.fd = -1
    if (!r.exported) {
      this.#resources.delete(r.resId)
      const key = `${r.dev}:${r.ino}`
      if (this.#byInode.get(key) === r) this.#byInode.delete(key)
    }
  }

  // -----------------------------------------------------------------------------------------------
  // Submission, fences, events

  execbuffer(f: GpuFile, flags: number, ringIdx: number, boHandles: readonly number[], command: Uint8Array): number {
    if ((flags & ~(EXECBUF_FENCE_FD_IN | EXECBUF_FENCE_FD_OUT | EXECBUF_RING_IDX)) !== 0) return -Errno.EINVAL
    // Sync-file fences have no counterpart in this protocol.
    if ((flags & (EXECBUF_FENCE_FD_IN | EXECBUF_FENCE_FD_OUT)) !== 0) return -Errno.EINVAL
    const withRing = (flags & EXECBUF_RING_IDX) !== 0
    if (withRing && (f.context === null || ringIdx >= f.context.numRings)) return -Errno.EINVAL
    const resources: Resource[] = boHandles.length === 0 ? noResources : []
    for (const h of boHandles) {
      const r = f.handles.get(h)
      if (r === undefined) return -Errno.ENOENT
      resources.push(r)
    }
    const ctx = this.#ensureContext(f)
    if (ctx.crossDomain !== null) ctx.crossDomain.submitCmd(command)
    else this.#o.log(`SUBMIT_3D on file ${f.id}: context with capset ${ctx.capsetId} has no component to run it`)
    const polled = withRing && ringPolled(ctx.pollMask, ringIdx)
    if (!polled && resources.length === 0) return 0
    const fence: GpuFence = { id: this.#nextFence++, file: f, ringIdx: withRing ? ringIdx : -1, resources, signalled: false }
    for (const r of resources) r.busy++
    if (withRing && ctx.crossDomain !== null) ctx.crossDomain.createFence(fence, ringIdx)
    else this.#signal(fence) // global timeline: the host signals once the command is processed
    return 0
  }

  #signal(fence: GpuFence): void {
    if (fence.signalled) return
    fence.signalled = true
    for (const r of fence.resources) r.busy--
    const f = fence.file
    const ctx = f.context
    if (!f.closed && ctx !== null && fence.ringIdx >= 0 && ringPolled(ctx.pollMask, fence.ringIdx)) {
      // One drm_event{FENCE_SIGNALED, 8} queued on the file.
      sys.write(f.eventFd, one, 8)
    }
    if (this.#waiters.length > 0 && fence.resources.length > 0) this.#wakeWaiters()
  }

  #wakeWaiters(): void {
    const still: Waiter[] = []
    for (const w of this.#waiters) {
      if (w.resource.busy === 0) {
        clearTimeout(w.timer)
        w.reply(0)
      } else still.push(w)
    }
    this.#waiters = still
  }

  /** VIRTGPU_WAIT: `reply(status)` now or once the object is idle (EBUSY after 15 s, or at once with NOWAIT). */
  wait(f: GpuFile, handle: number, flags: number, reply: (status: number) => void): void {
    const r = f.handles.get(handle)
    if (r === undefined) return reply(-Errno.ENOENT)
    if (r.busy === 0) return reply(0)
    if ((flags & WAIT_NOWAIT) !== 0) return reply(-Errno.EBUSY)
    const timer = setTimeout(() => {
      this.#waiters = this.#waiters.filter((w) => w !== waiter)
      reply(-Errno.EBUSY)
    }, WAIT_TIMEOUT_MS)
    const waiter: Waiter = { file: f, resource: r, reply, timer }
    this.#waiters.push(waiter)
  }

  // -----------------------------------------------------------------------------------------------
  // Inspection (tests, DEBUG_*)

  /** The host's view of a resource's bytes (GUEST: the emulator's mapping; HOST3D: pread of the fd). */
  debugRead(resId: number, offset: number, length: number): Uint8Array | number {
    const r = this.#resources.get(resId)
    if (r === undefined || r.fd < 0) return -Errno.ENOENT
    if (offset + length > r.size) return -Errno.EINVAL
    if (r.mapping !== null) return r.mapping.view.slice(offset, offset + length)
    const out = new Uint8Array(length)
    try {
      // Node's readSync takes a raw fd and a position (pread): the file offset is left alone.
      const got = readSync(r.fd, out, 0, length, offset)
      return out.subarray(0, got)
    } catch {
      return -Errno.EIO
    }
  }

  debugState(): Record<string, unknown> {
    return {
      files: [...this.#files].map((f) => ({
        id: f.id,
        handles: [...f.handles.entries()].map(([h, r]) => [h, r.resId]),
        context:
          f.context === null
            ? null
            : {
                capsetId: f.context.capsetId,
                numRings: f.context.numRings,
                pollMask: f.context.pollMask,
                crossDomain: f.context.crossDomain?.debugState() ?? null
              }
      })),
      resources: [...this.#resources.values()].map((r) => ({
        resId: r.resId,
        blobMem: r.blobMem,
        size: r.size,
        handles: r.handles,
        exported: r.exported,
        hasMemory: r.fd >= 0
      }))
    }
  }

  /** Everything closed (server shutdown). */
  shutdown(): void {
    for (const f of [...this.#files]) this.closeFile(f)
    for (const r of this.#resources.values()) {
      r.mapping?.unmap()
      if (r.fd >= 0) sys.close(r.fd)
      r.fd = -1
    }
    this.#resources.clear()
    this.#byInode.clear()
  }
}

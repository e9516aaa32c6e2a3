/**
 * The kernel backend of `VirtGpu`: DRM/virtgpu ioctls on a render node (/dev/dri/renderD128…190).
 * One `open` = one DRM file = one context, as in the kernel.
 *
 * Finding the node: the first render node whose DRM_IOCTL_VERSION name is `virtio_gpu`, or an
 * explicit path. The fd is made O_NONBLOCK after opening so that `readEvents` can drain the event
 * queue without blocking (read() on a DRM fd waits for an event otherwise); ioctls ignore the flag.
 *
 * Hot path: `execbuffer` copies the command into a preallocated buffer whose address is taken once,
 * so a SEND costs one copy and one ioctl, no allocation.
 *
 * Not here: the cross-domain protocol; the emulator (`emulated.ts`).
 */
import { Effect, Layer } from "effect"
import { existsSync } from "node:fs"
import { Errno } from "../ffi/errno.js"
import {
  addressOf,
  sys,
  viewOf,
  F_GETFL,
  F_SETFL,
  MAP_SHARED,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDWR,
  PROT_READ,
  PROT_WRITE
} from "../ffi/libc.js"
import {
  argBuffer,
  DRM_CLOEXEC,
  DRM_RDWR,
  drmIoctl,
  drmVersion,
  getField,
  getFieldSigned,
  Layouts,
  Requests,
  setField,
  setField64,
  setPointer
} from "../ffi/drm.js"
import {
  CONTEXT_PARAM_CAPSET_ID,
  CONTEXT_PARAM_NUM_RINGS,
  CONTEXT_PARAM_POLL_RINGS_MASK,
  EXECBUF_RING_IDX,
  VirtGpu,
  VirtGpuError,
  WAIT_NOWAIT,
  type Blob,
  type CreateBlobArgs,
  type DriverVersion,
  type ExecbufferArgs,
  type Mapping,
  type ResourceInfo,
  type VirtGpuDevice,
  type VirtGpuService
} from "./device.js"
import { closedError, unsupportedCapset, virtGpuError } from "./errors.js"

export const RENDER_NODE_FIRST = 128
export const RENDER_NODE_LAST = 190
export const renderNodePath = (n: number): string => `/dev/dri/renderD${n}`
export const VIRTIO_GPU_DRIVER = "virtio_gpu"

/** open(O_RDWR|O_CLOEXEC) with errors worded for users. Returns the fd or throws. */
const openNode = (path: string): number => {
  const fd = sys.open(path, O_RDWR | O_CLOEXEC)
  if (fd >= 0) return fd
  const errno = -fd
  if (errno === Errno.ENOENT || errno === Errno.ENODEV || errno === Errno.ENXIO)
    throw virtGpuError("open", errno, `${path}: no such render node`, "NoDevice")
  if (errno === Errno.EACCES || errno === Errno.EPERM)
    throw virtGpuError("open", errno, `${path}: add your user to the group that owns it (ls -l ${path}; usually "render")`, "Permission")
  throw virtGpuError("open", errno, path, "NoDevice")
}

export interface NodeScan {
  /** Render nodes that exist, with what was found. */
  readonly nodes: ReadonlyArray<{ readonly path: string; readonly driver: string | null; readonly errno: number }>
  /** The first virtio_gpu node, if any. */
  readonly virtio: string | null
}

/** Every /dev/dri/renderD128…190 that exists: its driver name, or the errno that stopped us. */
export const scanRenderNodes = (): NodeScan => {
  const nodes: Array<{ path: string; driver: string | null; errno: number }> = []
  let virtio: string | null = null
  for (let n = RENDER_NODE_FIRST; n <= RENDER_NODE_LAST; n++) {
    const path = renderNodePath(n)
    if (!existsSync(path)) continue
    const fd = sys.open(path, O_RDWR | O_CLOEXEC)
    if (fd < 0) {
      nodes.push({ path, driver: null, errno: -fd })
      continue
    }
    const v = drmVersion(fd)
    sys.close(fd)
    if (typeof v === "number") nodes.push({ path, driver: null, errno: -v })
    else {
      nodes.push({ path, driver: v.name, errno: 0 })
      if (virtio === null && v.name === VIRTIO_GPU_DRIVER) virtio = path
    }
  }
  return { nodes, virtio }
}

/** The first virtio-gpu render node, or a VirtGpuError saying why there is none. */
export const findRenderNode = (): string => {
  const scan = scanRenderNodes()
  if (scan.virtio !== null) return scan.virtio
  const denied = scan.nodes.find((n) => n.errno === Errno.EACCES || n.errno === Errno.EPERM)
  if (denied !== undefined)
    throw virtGpuError(
      "open",
      denied.errno,
      `${denied.path}: cannot check whether it is virtio-gpu; add your user to the group that owns it (usually "render")`,
      "Permission"
    )
  const others = scan.nodes.map((n) => `${n.path}${n.driver !== null ? ` (${n.driver})` : ""}`).join(", ")
  throw new VirtGpuError({
    reason: "NoDevice",
    op: "open",
    errno: Errno.ENOENT,
    message: `no virtio-gpu render node in /dev/dri (renderD${RENDER_NODE_FIRST}–renderD${RENDER_NODE_LAST})${others === "" ? "" : `; found only ${others}`}: run sommelier inside a VM with a virtio-gpu device`
  })
}

const PAGE = 4096

/** A growable off-heap buffer whose address is cached (native code reads it by address). */
class NativeBuffer {
  bytes: Uint8Array
  address: number
  constructor(size: number) {
    this.bytes = new Uint8Array(new ArrayBuffer(size))
    this.address = addressOf(this.bytes)
  }
  ensure(size: number): void {
    if (size <= this.bytes.length) return
    let n = this.bytes.length
    while (n < size) n *= 2
    this.bytes = new Uint8Array(new ArrayBuffer(n))
    this.address = addressOf(this.bytes)
  }
}

export class KernelDevice implements VirtGpuDevice {
  readonly backend = "kernel" as const
  readonly name: string
  readonly eventFd: number
  #fd: number
  readonly #exec = argBuffer("drm_virtgpu_execbuffer")
  readonly #cmd = new NativeBuffer(PAGE)
  readonly #bos = new NativeBuffer(64)
  readonly #events = new Uint8Array(new ArrayBuffer(1024))
  readonly #eventView = new DataView(this.#events.buffer)

  /** Opens `path` and checks that it is virtio_gpu. Throws VirtGpuError. */
  constructor(path: string) {
    this.name = path
    const fd = openNode(path)
    const v = drmVersion(fd)
    if (typeof v === "number") {
      sys.close(fd)
      throw virtGpuError("DRM_IOCTL_VERSION", -v, path, "NotVirtGpu")
    }
    if (v.name !== VIRTIO_GPU_DRIVER) {
      sys.close(fd)
      throw new VirtGpuError({
        reason: "NotVirtGpu",
        op: "DRM_IOCTL_VERSION",
        errno: Errno.ENODEV,
        message: `${path} is driven by ${v.name}, not virtio_gpu`
      })
    }
    const fl = sys.fcntl(fd, F_GETFL)
    if (fl >= 0) sys.fcntl(fd, F_SETFL, fl | O_NONBLOCK)
    this.#fd = fd
    this.eventFd = fd
  }

  #live(op: string): number {
    if (this.#fd < 0) throw closedError(op, this.name)
    return this.#fd
  }

  #ioctl(op: string, request: number, arg: DataView, detail?: string): void {
    const r = drmIoctl(this.#live(op), request, arg)
    if (r < 0) throw virtGpuError(op, -r, detail)
  }

  version(): DriverVersion {
    const v = drmVersion(this.#live("DRM_IOCTL_VERSION"))
    if (typeof v === "number") throw virtGpuError("DRM_IOCTL_VERSION", -v, this.name)
    return v
  }

  getParam(param: number): number {
    const out = new Int32Array(new ArrayBuffer(8))
    const a = argBuffer("drm_virtgpu_getparam")
    setField(a, "drm_virtgpu_getparam", "param", param)
    setPointer(a, "drm_virtgpu_getparam", "value", out)
    this.#ioctl("VIRTGPU_GETPARAM", Requests.DRM_IOCTL_VIRTGPU_GETPARAM, a, `param ${param}`)
    // The kernel writes a C int; the capset mask is a 32-bit mask.
    return out[0]! >>> 0
  }

  getCaps(capsetId: number, capsetVersion: number, size: number): Uint8Array {
    const out = new Uint8Array(new ArrayBuffer(Math.max(size, 1)))
    const a = argBuffer("drm_virtgpu_get_caps")
    setField(a, "drm_virtgpu_get_caps", "cap_set_id", capsetId)
    setField(a, "drm_virtgpu_get_caps", "cap_set_ver", capsetVersion)
    setPointer(a, "drm_virtgpu_get_caps", "addr", out)
    setField(a, "drm_virtgpu_get_caps", "size", size)
    const r = drmIoctl(this.#live("VIRTGPU_GET_CAPS"), Requests.DRM_IOCTL_VIRTGPU_GET_CAPS, a)
    if (r === -Errno.EINVAL && size > 0) throw unsupportedCapset("VIRTGPU_GET_CAPS", Errno.EINVAL, capsetId, `version ${capsetVersion}`)
    if (r < 0) throw virtGpuError("VIRTGPU_GET_CAPS", -r, `capset ${capsetId}`)
    return out.subarray(0, size)
  }

  contextInit(capsetId: number, numRings: number, pollRingsMask: number): void {
    const P = Layouts.drm_virtgpu_context_set_param.size
    const params = new DataView(new ArrayBuffer(3 * P))
    const put = (i: number, param: number, value: number): void => {
      params.setBigUint64(i * P + Layouts.drm_virtgpu_context_set_param.fields.param[0], BigInt(param), true)
      params.setBigUint64(i * P + Layouts.drm_virtgpu_context_set_param.fields.value[0], BigInt(value), true)
    }
    put(0, CONTEXT_PARAM_CAPSET_ID, capsetId)
    put(1, CONTEXT_PARAM_NUM_RINGS, numRings)
    put(2, CONTEXT_PARAM_POLL_RINGS_MASK, pollRingsMask)
    const a = argBuffer("drm_virtgpu_context_init")
    setField(a, "drm_virtgpu_context_init", "num_params", 3)
    setPointer(a, "drm_virtgpu_context_init", "ctx_set_params", params)
    const r = drmIoctl(this.#live("VIRTGPU_CONTEXT_INIT"), Requests.DRM_IOCTL_VIRTGPU_CONTEXT_INIT, a)
    if (r === -Errno.EINVAL)
      throw unsupportedCapset("VIRTGPU_CONTEXT_INIT", Errno.EINVAL, capsetId, `or ${numRings} rings / poll mask 0x${pollRingsMask.toString(16)} rejected`)
    if (r === -Errno.EEXIST) throw virtGpuError("VIRTGPU_CONTEXT_INIT", Errno.EEXIST, "this device file already has a context")
    if (r < 0) throw virtGpuError("VIRTGPU_CONTEXT_INIT", -r)
  }

  createBlob(args: CreateBlobArgs): Blob {
    const S = "drm_virtgpu_resource_create_blob"
    const a = argBuffer(S)
    setField(a, S, "blob_mem", args.blobMem)
    setField(a, S, "blob_flags", args.blobFlags)
    setField(a, S, "size", args.size)
    setField64(a, S, "blob_id", args.blobId)
    this.#ioctl("VIRTGPU_RESOURCE_CREATE_BLOB", Requests.DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB, a, `mem ${args.blobMem}, size ${args.size}, blob_id ${args.blobId}`)
    return { handle: getField(a, S, "bo_handle"), resId: getField(a, S, "res_handle") }
  }

  map(handle: number, size: number): Mapping {
    const a = argBuffer("drm_virtgpu_map")
    setField(a, "drm_virtgpu_map", "handle", handle)
    this.#ioctl("VIRTGPU_MAP", Requests.DRM_IOCTL_VIRTGPU_MAP, a, `handle ${handle}`)
    const offset = getField(a, "drm_virtgpu_map", "offset")
    const address = sys.mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, this.#fd, offset)
    if (address < 0) throw virtGpuError("mmap", -address, `handle ${handle}, ${size} bytes`)
    const view = new Uint8Array(viewOf(address, size))
    let mapped = true
    return {
      view,
      unmap: () => {
        if (!mapped) return
        mapped = false
        sys.munmap(address, size)
      }
    }
  }

  execbuffer(args: ExecbufferArgs): void {
    const fd = this.#live("VIRTGPU_EXECBUFFER")
    const S = "drm_virtgpu_execbuffer"
    const a = this.#exec
    const cmd = args.command
    this.#cmd.ensure(cmd.length)
    this.#cmd.bytes.set(cmd)
    const bos = args.boHandles ?? []
    this.#bos.ensure(bos.length * 4)
    const bo = new Uint32Array(this.#bos.bytes.buffer, 0, bos.length)
    for (let i = 0; i < bos.length; i++) bo[i] = bos[i]!
    setField(a, S, "flags", args.ringIdx !== undefined ? EXECBUF_RING_IDX : 0)
    setField(a, S, "size", cmd.length)
    setField(a, S, "command", this.#cmd.address)
    setField(a, S, "bo_handles", bos.length > 0 ? this.#bos.address : 0)
    setField(a, S, "num_bo_handles", bos.length)
    a.setInt32(Layouts[S].fields.fence_fd[0], -1, true)
    setField(a, S, "ring_idx", args.ringIdx ?? 0)
    const r = drmIoctl(fd, Requests.DRM_IOCTL_VIRTGPU_EXECBUFFER, a)
    if (r < 0) throw virtGpuError("VIRTGPU_EXECBUFFER", -r, args.ringIdx !== undefined ? `ring ${args.ringIdx}` : undefined)
  }

  readEvents(): number[] {
    const fd = this.#live("read events")
    const types: number[] = []
    const L = Layouts.drm_event.fields
    for (;;) {
      const n = sys.read(fd, this.#events, this.#events.length)
      if (n === -Errno.EINTR) continue
      if (n === -Errno.EAGAIN || n === 0) return types
      if (n < 0) throw virtGpuError("read events", -n, this.name)
      // read() returns whole events; walk them by their length.
      for (let off = 0; off + Layouts.drm_event.size <= n; ) {
        types.push(this.#eventView.getUint32(off + L.type[0], true))
        const len = this.#eventView.getUint32(off + L.length[0], true)
        off += Math.max(len, Layouts.drm_event.size)
      }
    }
  }

  resourceInfo(handle: number): ResourceInfo {
    const S = "drm_virtgpu_resource_info"
    const a = argBuffer(S) // zeroed: blob_mem is left as passed in for non-blob objects
    setField(a, S, "bo_handle", handle)
    this.#ioctl("VIRTGPU_RESOURCE_INFO", Requests.DRM_IOCTL_VIRTGPU_RESOURCE_INFO, a, `handle ${handle}`)
    return { resId: getField(a, S, "res_handle"), size: getField(a, S, "size"), blobMem: getField(a, S, "blob_mem") }
  }

  primeHandleToFd(handle: number): number {
    const S = "drm_prime_handle"
    const a = argBuffer(S)
    setField(a, S, "handle", handle)
    setField(a, S, "flags", DRM_CLOEXEC | DRM_RDWR)
    a.setInt32(Layouts[S].fields.fd[0], -1, true)
    this.#ioctl("PRIME_HANDLE_TO_FD", Requests.DRM_IOCTL_PRIME_HANDLE_TO_FD, a, `handle ${handle}`)
    return getFieldSigned(a, S, "fd")
  }

  primeFdToHandle(fd: number): number {
    const S = "drm_prime_handle"
    const a = argBuffer(S)
    a.setInt32(Layouts[S].fields.fd[0], fd, true)
    this.#ioctl("PRIME_FD_TO_HANDLE", Requests.DRM_IOCTL_PRIME_FD_TO_HANDLE, a, `fd ${fd}`)
    return getField(a, S, "handle")
  }

  gemClose(handle: number): void {
    const a = argBuffer("drm_gem_close")
    setField(a, "drm_gem_close", "handle", handle)
    this.#ioctl("GEM_CLOSE", Requests.DRM_IOCTL_GEM_CLOSE, a, `handle ${handle}`)
  }

  wait(handle: number, nowait = false): boolean {
    const a = argBuffer("drm_virtgpu_3d_wait")
    setField(a, "drm_virtgpu_3d_wait", "handle", handle)
    setField(a, "drm_virtgpu_3d_wait", "flags", nowait ? WAIT_NOWAIT : 0)
    const r = drmIoctl(this.#live("VIRTGPU_WAIT"), Requests.DRM_IOCTL_VIRTGPU_WAIT, a)
    if (r === -Errno.EBUSY && nowait) return false
    if (r < 0) throw virtGpuError("VIRTGPU_WAIT", -r, `handle ${handle}`)
    return true
  }

  /** Idempotent. The kernel destroys the context (and the host its connection) with the file. */
  close(): void {
    if (this.#fd < 0) return
    sys.close(this.#fd)
    this.#fd = -1
  }
}

/** Opens one device file. Throws VirtGpuError. */
export const openKernelDevice = (path: string): KernelDevice => new KernelDevice(path)

const attempt = <A>(f: () => A): Effect.Effect<A, VirtGpuError> =>
  Effect.try({
    try: f,
    catch: (e) =>
      e instanceof VirtGpuError ? e : new VirtGpuError({ reason: "Ioctl", op: "open", errno: Errno.EIO, message: String(e) })
  })

/**
 * The kernel service for `path`, or for the first virtio-gpu render node. Checks once, when built,
 * that the node opens and is virtio_gpu, so a missing device fails at startup.
 */
export const makeKernel = (path?: string): Effect.Effect<VirtGpuService, VirtGpuError> =>
  attempt(() => {
    const node = path ?? findRenderNode()
    new KernelDevice(node).close()
    return node
  }).pipe(
    Effect.map(
      (node): VirtGpuService => ({
        open: Effect.acquireRelease(attempt(() => openKernelDevice(node)), (d) => Effect.sync(() => d.close())),
        openSync: () => openKernelDevice(node)
      })
    )
  )

export const kernelLayer = (path?: string): Layer.Layer<VirtGpu, VirtGpuError> => Layer.effect(VirtGpu, makeKernel(path))

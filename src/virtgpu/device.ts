/**
 * The virtio-gpu device as the guest proxy sees it: the kernel's DRM/virtgpu operations, one
 * opened device per guest client (one DRM file = one context = one host-compositor connection).
 * Two backends implement it: `kernel` (ioctls on /dev/dri/renderD*) and `emulated` (a separate
 * `sommelier emulate-host` process standing in for kernel + VMM).
 *
 * The operations are synchronous, like the ioctls they model: the data path calls `execbuffer`
 * once per SEND and must not pay an Effect step for it. Opening and closing are Effect (scoped).
 *
 * Not here: the cross-domain protocol (src/transport/crossdomain/).
 */
import { Context, Data, type Effect, type Scope } from "effect"

// uAPI constants (drm/virtgpu_drm.h)
export const PARAM_3D_FEATURES = 1
export const PARAM_CAPSET_QUERY_FIX = 2
export const PARAM_RESOURCE_BLOB = 3
export const PARAM_HOST_VISIBLE = 4
export const PARAM_CROSS_DEVICE = 5
export const PARAM_CONTEXT_INIT = 6
export const PARAM_SUPPORTED_CAPSET_IDS = 7
export const PARAM_EXPLICIT_DEBUG_NAME = 8
export const CONTEXT_PARAM_CAPSET_ID = 1
export const CONTEXT_PARAM_NUM_RINGS = 2
export const CONTEXT_PARAM_POLL_RINGS_MASK = 3
export const BLOB_MEM_GUEST = 1
export const BLOB_MEM_HOST3D = 2
export const BLOB_MEM_HOST3D_GUEST = 3
export const BLOB_FLAG_USE_MAPPABLE = 1
export const BLOB_FLAG_USE_SHAREABLE = 2
export const BLOB_FLAG_USE_CROSS_DEVICE = 4
export const EXECBUF_FENCE_FD_IN = 1
export const EXECBUF_FENCE_FD_OUT = 2
export const EXECBUF_RING_IDX = 4
export const WAIT_NOWAIT = 1
export const EVENT_FENCE_SIGNALED = 0x90000000
export const CAPSET_CROSS_DOMAIN = 5

export class VirtGpuError extends Data.TaggedError("VirtGpuError")<{
  readonly reason: "NoDevice" | "NotVirtGpu" | "Unsupported" | "Permission" | "Ioctl" | "Protocol" | "Closed"
  /** The operation, e.g. "CONTEXT_INIT". */
  readonly op: string
  readonly errno: number
  readonly message: string
}> {}

export interface CreateBlobArgs {
  readonly blobMem: number
  readonly blobFlags: number
  readonly size: number
  readonly blobId: bigint
}

export interface Blob {
  /** GEM handle in this device file. */
  readonly handle: number
  /** Host resource id (device-global). */
  readonly resId: number
}

/** A mapped view of a blob; `view` must not be touched after `unmap`. */
export interface Mapping {
  readonly view: Uint8Array
  unmap(): void
}

export interface ExecbufferArgs {
  readonly command: Uint8Array
  /** With RING_IDX: the context ring the fence is on. */
  readonly ringIdx?: number
  readonly boHandles?: readonly number[]
}

/** DRM_IOCTL_VERSION. */
export interface DriverVersion {
  /** "virtio_gpu" for virtio-gpu (the emulator reports the same). */
  readonly name: string
  readonly major: number
  readonly minor: number
  readonly patchlevel: number
  readonly date: string
  readonly desc: string
}

export interface ResourceInfo {
  readonly resId: number
  readonly size: number
  readonly blobMem: number
}

/** One opened device file with (at most) one context. Throws VirtGpuError on failure. */
export interface VirtGpuDevice {
  readonly backend: "kernel" | "emulated"
  /** Human name for messages, e.g. "/dev/dri/renderD128" or "emulated:/run/emu.sock". */
  readonly name: string
  getParam(param: number): number
  getCaps(capsetId: number, capsetVersion: number, size: number): Uint8Array
  contextInit(capsetId: number, numRings: number, pollRingsMask: number): void
  createBlob(args: CreateBlobArgs): Blob
  map(handle: number, size: number): Mapping
  execbuffer(args: ExecbufferArgs): void
  /** Readable (EPOLLIN) while fence events are queued: watch it with the reactor. */
  readonly eventFd: number
  /**
   * Emulated devices only: the connection to the emulator, which hangs up (EPOLLRDHUP) when the
   * VMM side is gone, even killed. Watch it for that alone; its traffic belongs to the device.
   * (A real VMM going away takes the guest with it.)
   */
  readonly hangupFd?: number
  /** Drains queued events without blocking; each is a `drm_event` type (FENCE_SIGNALED). */
  readEvents(): readonly number[]
  resourceInfo(handle: number): ResourceInfo
  /** Exports a GEM handle as a dma-buf (kernel) or memfd (emulated) fd, CLOEXEC|RDWR. */
  primeHandleToFd(handle: number): number
  /** Imports an fd; returns the existing handle when the same buffer is imported again. */
  primeFdToHandle(fd: number): number
  gemClose(handle: number): void
  /**
   * VIRTGPU_WAIT: blocks until the fences of submissions that listed `handle` in `boHandles`
   * have signalled (e.g. the query ring after GET_IMAGE_REQUIREMENTS). true when idle; with
   * `nowait`, false instead of blocking. Throws VirtGpuError (errno EBUSY) after the kernel's 15 s.
   */
  wait(handle: number, nowait?: boolean): boolean
  /** DRM_IOCTL_VERSION of the device file. */
  version(): DriverVersion
  close(): void
}

export interface VirtGpuService {
  /** Opens a device file (one per guest client); closed with the scope. */
  readonly open: Effect.Effect<VirtGpuDevice, VirtGpuError, Scope.Scope>
  /** The same in plain code (the caller closes the device). Throws VirtGpuError. */
  readonly openSync: () => VirtGpuDevice
}

export class VirtGpu extends Context.Tag("sommelier/VirtGpu")<VirtGpu, VirtGpuService>() {}

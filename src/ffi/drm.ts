/**
 * DRM core and virtio-gpu ioctls over raw buffers (x86-64 / aarch64 LP64 layouts), on top of
 * libc's `ioctl` binding. The layout tables and request codes are exported so that
 * test/virtgpu/layout.test.ts can compare them with a C compiler's view of the vendored
 * `test/fixtures/virtgpu_drm.h` (sizeof, offsetof, _IOWR); the code below reads and writes
 * fields only through these tables.
 *
 * Convention (see `errno.ts`): `drmIoctl` returns ≥ 0 or -errno and never throws.
 *
 * Not here: the VirtGpuDevice semantics and error mapping (`src/virtgpu/kernel.ts`).
 */
import { sys, addressOf } from "./libc.js"
import { Errno } from "./errno.js"

// -------------------------------------------------------------------------------------------------
// Request codes: dir<<30 | size<<16 | type<<8 | nr (asm-generic/ioctl.h)

const IOC_WRITE = 1
const IOC_READ = 2
const DRM_TYPE = 0x64 // 'd'
/** First driver-private ioctl number (DRM_COMMAND_BASE). */
export const DRM_COMMAND_BASE = 0x40

const ioc = (dir: number, nr: number, size: number): number => ((dir << 30) | (size << 16) | (DRM_TYPE << 8) | nr) >>> 0
export const drmIOWR = (nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, nr, size)
export const drmIOW = (nr: number, size: number): number => ioc(IOC_WRITE, nr, size)

// -------------------------------------------------------------------------------------------------
// Struct layouts: field → [offset, size]

export interface StructLayout {
  readonly size: number
  readonly fields: Readonly<Record<string, readonly [offset: number, size: number]>>
}

export const Layouts = {
  drm_version: {
    size: 64,
    fields: {
      version_major: [0, 4],
      version_minor: [4, 4],
      version_patchlevel: [8, 4],
      name_len: [16, 8],
      name: [24, 8],
      date_len: [32, 8],
      date: [40, 8],
      desc_len: [48, 8],
      desc: [56, 8]
    }
  },
  drm_gem_close: { size: 8, fields: { handle: [0, 4], pad: [4, 4] } },
  drm_prime_handle: { size: 12, fields: { handle: [0, 4], flags: [4, 4], fd: [8, 4] } },
  drm_event: { size: 8, fields: { type: [0, 4], length: [4, 4] } },
  drm_virtgpu_map: { size: 16, fields: { offset: [0, 8], handle: [8, 4], pad: [12, 4] } },
  drm_virtgpu_execbuffer: {
    size: 64,
    fields: {
      flags: [0, 4],
      size: [4, 4],
      command: [8, 8],
      bo_handles: [16, 8],
      num_bo_handles: [24, 4],
      fence_fd: [28, 4],
      ring_idx: [32, 4],
      syncobj_stride: [36, 4],
      num_in_syncobjs: [40, 4],
      num_out_syncobjs: [44, 4],
      in_syncobjs: [48, 8],
      out_syncobjs: [56, 8]
    }
  },
  drm_virtgpu_getparam: { size: 16, fields: { param: [0, 8], value: [8, 8] } },
  drm_virtgpu_resource_info: { size: 16, fields: { bo_handle: [0, 4], res_handle: [4, 4], size: [8, 4], blob_mem: [12, 4] } },
  drm_virtgpu_3d_wait: { size: 8, fields: { handle: [0, 4], flags: [4, 4] } },
  drm_virtgpu_get_caps: { size: 24, fields: { cap_set_id: [0, 4], cap_set_ver: [4, 4], addr: [8, 8], size: [16, 4], pad: [20, 4] } },
  drm_virtgpu_resource_create_blob: {
    size: 48,
    fields: {
      blob_mem: [0, 4],
      blob_flags: [4, 4],
      bo_handle: [8, 4],
      res_handle: [12, 4],
      size: [16, 8],
      pad: [24, 4],
      cmd_size: [28, 4],
      cmd: [32, 8],
      blob_id: [40, 8]
    }
  },
  drm_virtgpu_context_set_param: { size: 16, fields: { param: [0, 8], value: [8, 8] } },
  drm_virtgpu_context_init: { size: 16, fields: { num_params: [0, 4], pad: [4, 4], ctx_set_params: [8, 8] } }
} as const satisfies Record<string, StructLayout>

export type StructName = keyof typeof Layouts

const L = Layouts

/** ioctl name → [nr, argument struct, direction]; the request code is derived from the struct size. */
export const IoctlTable = {
  DRM_IOCTL_VERSION: [0x00, "drm_version", "IOWR"],
  DRM_IOCTL_GEM_CLOSE: [0x09, "drm_gem_close", "IOW"],
  DRM_IOCTL_PRIME_HANDLE_TO_FD: [0x2d, "drm_prime_handle", "IOWR"],
  DRM_IOCTL_PRIME_FD_TO_HANDLE: [0x2e, "drm_prime_handle", "IOWR"],
  DRM_IOCTL_VIRTGPU_MAP: [DRM_COMMAND_BASE + 0x01, "drm_virtgpu_map", "IOWR"],
  DRM_IOCTL_VIRTGPU_EXECBUFFER: [DRM_COMMAND_BASE + 0x02, "drm_virtgpu_execbuffer", "IOWR"],
  DRM_IOCTL_VIRTGPU_GETPARAM: [DRM_COMMAND_BASE + 0x03, "drm_virtgpu_getparam", "IOWR"],
  DRM_IOCTL_VIRTGPU_RESOURCE_INFO: [DRM_COMMAND_BASE + 0x05, "drm_virtgpu_resource_info", "IOWR"],
  DRM_IOCTL_VIRTGPU_WAIT: [DRM_COMMAND_BASE + 0x08, "drm_virtgpu_3d_wait", "IOWR"],
  DRM_IOCTL_VIRTGPU_GET_CAPS: [DRM_COMMAND_BASE + 0x09, "drm_virtgpu_get_caps", "IOWR"],
  DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB: [DRM_COMMAND_BASE + 0x0a, "drm_virtgpu_resource_create_blob", "IOWR"],
  DRM_IOCTL_VIRTGPU_CONTEXT_INIT: [DRM_COMMAND_BASE + 0x0b, "drm_virtgpu_context_init", "IOWR"]
} as const satisfies Record<string, readonly [number, StructName, "IOWR" | "IOW"]>

export type IoctlName = keyof typeof IoctlTable

const request = (name: IoctlName): number => {
  const [nr, struct, dir] = IoctlTable[name]
  return dir === "IOW" ? drmIOW(nr, L[struct].size) : drmIOWR(nr, L[struct].size)
}

/** Request codes (x86-64), e.g. DRM_IOCTL_VIRTGPU_EXECBUFFER = 0xC0406442 (the 64-byte form). */
export const Requests: Readonly<Record<IoctlName, number>> = Object.fromEntries(
  (Object.keys(IoctlTable) as IoctlName[]).map((name) => [name, request(name)])
) as Record<IoctlName, number>

// Flags (drm.h)
export const DRM_CLOEXEC = 0o2000000
export const DRM_RDWR = 0o2

// -------------------------------------------------------------------------------------------------
// Field access over a raw struct buffer

/** A zeroed argument buffer for `struct`. Off-heap memory: the kernel writes into it. */
export const argBuffer = (struct: StructName): DataView => new DataView(new ArrayBuffer(L[struct].size))

const fieldOf = (struct: StructName, field: string): readonly [number, number] => {
  const f = (L[struct].fields as Record<string, readonly [number, number]>)[field]
  if (f === undefined) throw new Error(`no field ${field} in ${struct}`)
  return f
}

/** Write an integer field (4 or 8 bytes; 8-byte values must fit in 2^53). */
export const setField = (view: DataView, struct: StructName, field: string, value: number): void => {
  const [off, size] = fieldOf(struct, field)
  if (size === 4) view.setUint32(off, value >>> 0, true)
  else view.setBigUint64(off, BigInt.asUintN(64, BigInt(value)), true)
}

export const setField64 = (view: DataView, struct: StructName, field: string, value: bigint): void => {
  const [off, size] = fieldOf(struct, field)
  if (size !== 8) throw new Error(`${struct}.${field} is not 64-bit`)
  view.setBigUint64(off, BigInt.asUintN(64, value), true)
}

/** Read an unsigned integer field (8-byte values as numbers: offsets and sizes fit in 2^53). */
export const getField = (view: DataView, struct: StructName, field: string): number => {
  const [off, size] = fieldOf(struct, field)
  return size === 4 ? view.getUint32(off, true) : Number(view.getBigUint64(off, true))
}

export const getFieldSigned = (view: DataView, struct: StructName, field: string): number => {
  const [off, size] = fieldOf(struct, field)
  return size === 4 ? view.getInt32(off, true) : Number(view.getBigInt64(off, true))
}

/** Store the address of `target` in a pointer field. `target` must stay alive during the call. */
export const setPointer = (view: DataView, struct: StructName, field: string, target: ArrayBufferView | null): void =>
  setField(view, struct, field, target === null || target.byteLength === 0 ? 0 : addressOf(target))

// -------------------------------------------------------------------------------------------------
// ioctl

/**
 * ioctl(fd, request, arg) restarting on EINTR and (a bounded number of times) EAGAIN, like
 * libdrm's drmIoctl. Returns the result (≥ 0) or -errno.
 */
export const drmIoctl = (fd: number, requestCode: number, arg: DataView): number => {
  let again = 0
  for (;;) {
    const r = sys.ioctl(fd, requestCode, arg)
    if (r >= 0) return r
    if (r === -Errno.EINTR) continue
    if (r === -Errno.EAGAIN && again++ < 100) continue
    return r
  }
}

/** DRM_IOCTL_VERSION, two calls (lengths, then strings). Returns -errno on failure. */
export const drmVersion = (
  fd: number
): { name: string; major: number; minor: number; patchlevel: number; date: string; desc: string } | number => {
  const v = argBuffer("drm_version")
  let r = drmIoctl(fd, Requests.DRM_IOCTL_VERSION, v)
  if (r < 0) return r
  const nameLen = getField(v, "drm_version", "name_len")
  const dateLen = getField(v, "drm_version", "date_len")
  const descLen = getField(v, "drm_version", "desc_len")
  // +1: room for a terminator the kernel never writes; keeps a zero length from passing NULL.
  const name = new Uint8Array(new ArrayBuffer(nameLen + 1))
  const date = new Uint8Array(new ArrayBuffer(dateLen + 1))
  const desc = new Uint8Array(new ArrayBuffer(descLen + 1))
  setPointer(v, "drm_version", "name", name)
  setPointer(v, "drm_version", "date", date)
  setPointer(v, "drm_version", "desc", desc)
  r = drmIoctl(fd, Requests.DRM_IOCTL_VERSION, v)
  if (r < 0) return r
  const text = (b: Uint8Array, field: "name_len" | "date_len" | "desc_len"): string =>
    Buffer.from(b.subarray(0, Math.min(getField(v, "drm_version", field), b.length - 1))).toString("latin1")
  return {
    name: text(name, "name_len"),
    major: getFieldSigned(v, "drm_version", "version_major"),
    minor: getFieldSigned(v, "drm_version", "version_minor"),
    patchlevel: getFieldSigned(v, "drm_version", "version_patchlevel"),
    date: text(date, "date_len"),
    desc: text(desc, "desc_len")
  }
}
